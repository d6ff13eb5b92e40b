// metrics/ranking.hpp against examples worked out by hand (the arithmetic is in the
// comments), under both protocols: full ranking (ranked lists, several relevant items) and
// sampled candidates (target_rank with pessimistic ties, add_rank).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "xrec/metrics/ranking.hpp"

namespace xm = xrec::metrics;

TEST_CASE("ranking metrics: full-ranking lists, several relevant items, K = 3 and 5 (hand-computed)") {
    // 10 items, popularity of item i = 10 - i.
    std::vector<double> pop{10, 9, 8, 7, 6, 5, 4, 3, 2, 1};
    xm::ranking_accumulator acc({3, 5}, 10, pop);
    // User A: list [3 1 7 5 9], relevant {1, 5, 8} (|R| = 3).
    //   K=3: [3 1 7] hits item 1 at position 1. HR 1, Recall 1/3, Prec 1/3,
    //        DCG = 1/log2(3) = 0.630930, IDCG = 1 + 1/log2(3) + 1/log2(4) = 2.130930,
    //        NDCG = 0.296082, MRR = 1/2, AP = (1/2) / min(3, 3) = 0.166667.
    //   K=5: hits at positions 1 and 3. HR 1, Recall 2/3, Prec 2/5,
    //        DCG = 0.630930 + 1/log2(5) = 0.630930 + 0.430677 = 1.061606, IDCG 2.130930,
    //        NDCG = 0.498189, MRR 1/2, AP = (1/2 + 2/4) / 3 = 0.333333.
    const std::vector<std::int32_t> la{3, 1, 7, 5, 9}, ra{8, 5, 1};
    acc.add(la, ra);
    // User B: list [2 4 6 8 0], relevant {0}.
    //   K=3: no hit, all 0.  K=5: hit at position 4: HR 1, Recall 1, Prec 1/5,
    //        NDCG = 1/log2(6) = 0.386853, MRR = 1/5, AP = (1/5)/1 = 0.2.
    const std::vector<std::int32_t> lb{2, 4, 6, 8, 0}, rb{0};
    acc.add(lb, rb);
    const auto m = acc.result();
    REQUIRE(m.size() == 2);
    // Means over the 2 users.
    // K=3: HR 1/2, Recall 1/6, Prec 1/6, NDCG 0.296082/2 = 0.148041, MRR 1/4, MAP 0.083333.
    CHECK(m[0].k == 3);
    CHECK(m[0].users == 2);
    CHECK(m[0].hr == doctest::Approx(0.5).epsilon(1e-12));
    CHECK(m[0].recall == doctest::Approx(1.0 / 6).epsilon(1e-12));
    CHECK(m[0].precision == doctest::Approx(1.0 / 6).epsilon(1e-12));
    CHECK(m[0].ndcg == doctest::Approx(0.148041).epsilon(1e-5));
    CHECK(m[0].mrr == doctest::Approx(0.25).epsilon(1e-12));
    CHECK(m[0].map == doctest::Approx(1.0 / 12).epsilon(1e-12));
    // K=5: HR 1, Recall (2/3 + 1)/2 = 5/6, Prec (2/5 + 1/5)/2 = 0.3,
    //      NDCG (0.498189 + 0.386853)/2 = 0.442521, MRR (1/2 + 1/5)/2 = 0.35,
    //      MAP (1/3 + 1/5)/2 = 0.266667.
    CHECK(m[1].hr == doctest::Approx(1.0).epsilon(1e-12));
    CHECK(m[1].recall == doctest::Approx(5.0 / 6).epsilon(1e-12));
    CHECK(m[1].precision == doctest::Approx(0.3).epsilon(1e-12));
    CHECK(m[1].ndcg == doctest::Approx(0.442521).epsilon(1e-5));
    CHECK(m[1].mrr == doctest::Approx(0.35).epsilon(1e-12));
    CHECK(m[1].map == doctest::Approx(4.0 / 15).epsilon(1e-12));
    // List measures.
    // K=3: lists [3 1 7] and [2 4 6]: items 1 2 3 4 6 7 once, 0 5 8 9 never.
    //   coverage 6/10 = 0.6; avg popularity ((7+9+3)/3 + (8+6+4)/3)/2 = (6.3333 + 6)/2 = 6.166667;
    //   Gini: counts ascending 0 0 0 0 1 1 1 1 1 1, n = 10, sum 6:
    //   sum_j (2j - 11) c_j over j = 5..10 = -1 + 1 + 3 + 5 + 7 + 9 = 24 -> 24/(10*6) = 0.4.
    CHECK(m[0].coverage == doctest::Approx(0.6).epsilon(1e-12));
    CHECK(m[0].avg_popularity == doctest::Approx(37.0 / 6).epsilon(1e-12));
    CHECK(m[0].gini == doctest::Approx(0.4).epsilon(1e-12));
    // K=5: all ten items once: coverage 1, Gini 0; avg popularity ((7+9+3+5+1)/5 + (8+6+4+2+10)/5)/2
    //   = (5 + 6)/2 = 5.5.
    CHECK(m[1].coverage == doctest::Approx(1.0).epsilon(1e-12));
    CHECK(m[1].gini == doctest::Approx(0.0));
    CHECK(m[1].avg_popularity == doctest::Approx(5.5).epsilon(1e-12));

    // A list shorter than K counts the missing places as misses (Precision still over K).
    xm::ranking_accumulator s({4}, 10);
    const std::vector<std::int32_t> shortl{1}, r1{1};
    s.add(shortl, r1);
    CHECK(s.result()[0].precision == doctest::Approx(0.25));
    CHECK(s.result()[0].hr == 1.0);
    CHECK(std::isnan(s.result()[0].avg_popularity));  // no popularity given

    // The same list twice: identical mean, and merge adds users in order.
    xm::ranking_accumulator x({3, 5}, 10, pop), y({3, 5}, 10, pop);
    x.add(la, ra);
    y.add(lb, rb);
    x.merge(y);
    CHECK(x.result()[1].ndcg == doctest::Approx(m[1].ndcg).epsilon(1e-15));
    CHECK(x.result()[0].gini == doctest::Approx(0.4).epsilon(1e-12));
}

TEST_CASE("ranking metrics: sampled protocol, target_rank counts ties against the target (hand-computed)") {
    // Candidates: the target first, then negatives.
    // User 1: scores [0.5 | 0.9 0.5 0.1 0.7]: 0.9, 0.5 (a tie) and 0.7 are >= 0.5 -> rank 3.
    const std::vector<float> s1{0.5f, 0.9f, 0.5f, 0.1f, 0.7f};
    CHECK(xm::target_rank(s1, 0) == 3);
    // User 2: scores [2 | 1 1.5] -> rank 0.
    const std::vector<float> s2{2.0f, 1.0f, 1.5f};
    CHECK(xm::target_rank(s2, 0) == 0);
    // A constant scorer puts the target last: no credit.
    const std::vector<float> s3{1, 1, 1, 1};
    CHECK(xm::target_rank(s3, 0) == 3);
    CHECK(xm::target_rank(s3, 2) == 3);
    // A NaN among the others counts against the target; a NaN target is an error.
    const std::vector<float> s4{1.0f, std::nanf(""), 0.0f};
    CHECK(xm::target_rank(s4, 0) == 1);
    CHECK_THROWS_AS(xm::target_rank(s4, 1), xrec::error);

    xm::ranking_accumulator acc({1, 5}, 5);
    acc.add_rank(xm::target_rank(s1, 0));
    acc.add_rank(xm::target_rank(s2, 0));
    const auto m = acc.result();
    // K=1: user 1 misses (rank 3), user 2 hits at rank 0: HR = Recall = 1/2, Prec = 1/2,
    //      NDCG = (0 + 1/log2(2))/2 = 0.5, MRR = MAP = (0 + 1)/2 = 0.5.
    CHECK(m[0].hr == doctest::Approx(0.5));
    CHECK(m[0].recall == doctest::Approx(0.5));
    CHECK(m[0].precision == doctest::Approx(0.5));
    CHECK(m[0].ndcg == doctest::Approx(0.5));
    CHECK(m[0].mrr == doctest::Approx(0.5));
    CHECK(m[0].map == doctest::Approx(0.5));
    // K=5: both hit. HR 1, Prec (1/5 + 1/5)/2 = 0.2,
    //      NDCG (1/log2(5) + 1)/2 = (0.430677 + 1)/2 = 0.715338,
    //      MRR = MAP = (1/4 + 1)/2 = 0.625.
    CHECK(m[1].hr == doctest::Approx(1.0));
    CHECK(m[1].precision == doctest::Approx(0.2));
    CHECK(m[1].ndcg == doctest::Approx(0.715338).epsilon(1e-5));
    CHECK(m[1].mrr == doctest::Approx(0.625));
    CHECK(m[1].map == doctest::Approx(0.625));
    CHECK(std::isnan(m[1].coverage));  // no lists given

    // add_rank agrees with add on the list it implies: user 1's ranked candidates by score
    // (ties pessimistic: the target after the other 0.5) are [1 4 2 0 3] with items = indices.
    xm::ranking_accumulator a({1, 5}, 5), b({1, 5}, 5);
    const std::vector<std::int32_t> list{1, 4, 2, 0, 3}, rel{0};
    a.add(list, rel);
    b.add_rank(3, list);
    for (int j = 0; j < 2; ++j) {
        CHECK(a.result()[j].ndcg == doctest::Approx(b.result()[j].ndcg).epsilon(1e-15));
        CHECK(a.result()[j].mrr == doctest::Approx(b.result()[j].mrr).epsilon(1e-15));
        CHECK(a.result()[j].map == doctest::Approx(b.result()[j].map).epsilon(1e-15));
        CHECK(a.result()[j].precision == doctest::Approx(b.result()[j].precision).epsilon(1e-15));
        CHECK(a.result()[j].coverage == doctest::Approx(b.result()[j].coverage).epsilon(1e-15));
    }
}

TEST_CASE("ranking metrics: the protocol is printed with the table; bad input is refused") {
    xm::ranking_protocol sp;
    sp.mode = xm::ranking_protocol::kind::sampled;
    sp.negatives = 99;
    sp.sampler = "uniform";
    sp.history_masked = false;
    sp.split = "leave-latest-out";
    const auto d = sp.describe();
    CHECK(d.find("sampled ranking") != std::string::npos);
    CHECK(d.find("99 uniform negatives") != std::string::npos);
    CHECK(d.find("leave-latest-out") != std::string::npos);
    xm::ranking_protocol fp;
    fp.mode = xm::ranking_protocol::kind::full;
    fp.history_masked = true;
    fp.split = "leave-one-out";
    fp.n_items = 12101;
    CHECK(fp.describe().find("full ranking over all 12101 items, the user's history masked") != std::string::npos);
    xm::ranking_accumulator acc({10}, 20);
    acc.add_rank(0);
    const auto t = xm::format_table(fp, acc.result(), "pop");
    CHECK(t.rfind(fp.describe() + "\n", 0) == 0);  // the protocol line comes first
    CHECK(t.find("NDCG") != std::string::npos);
    CHECK(t.find("1.0000") != std::string::npos);
    MESSAGE(t);

    CHECK_THROWS_AS(xm::ranking_accumulator({0}, 10), xrec::error);
    CHECK_THROWS_AS(xm::ranking_accumulator({}, 10), xrec::error);
    const std::vector<double> p3{1, 2, 3};
    CHECK_THROWS_AS(xm::ranking_accumulator({5}, 10, p3), xrec::error);
    const std::vector<std::int32_t> l{1, 2}, none{}, dup{1, 1}, outside{21};
    CHECK_THROWS_AS(acc.add(l, none), xrec::error);
    CHECK_THROWS_AS(acc.add(l, dup), xrec::error);
    CHECK_THROWS_AS(acc.add(outside, l), xrec::error);
}
