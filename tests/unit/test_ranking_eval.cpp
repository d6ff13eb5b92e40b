// train/ranking_eval.hpp and models/baselines.hpp: the drivers on hand examples under both
// protocols (sampled candidates, full ranking with the history masked) and the session
// protocol; the baselines' similarities by hand; and the real-data checks: most_popular
// and item_knn on ml-100k (leave-latest-out, 99 sampled negatives), session kNN beside
// popularity on rsc15_100k.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "support/data.hpp"
#include "support/temp_file.hpp"
#include "xrec/data/interactions.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/metrics/ranking.hpp"
#include "xrec/models/baselines.hpp"
#include "xrec/train/ranking_eval.hpp"

namespace xd = xrec::data;
namespace xm = xrec::metrics;
namespace xt = xrec::train;
namespace xmod = xrec::models;

namespace {
// 6 items; user 0: [0 1 | 2], user 1: [5 4 | 3] (train | test).
xd::loo_split tiny_split() {
    xd::sequences s;
    s.n_items = 6;
    s.push_row(std::vector<std::int32_t>{0, 1, 2});
    s.push_row(std::vector<std::int32_t>{5, 4, 3});
    return xd::leave_last_out(s, false);
}
}  // namespace

TEST_CASE("ranking eval: sampled protocol on a hand example; candidates are a pure function of (seed, user)") {
    const auto sp = tiny_split();
    xd::negative_sampler ns(6, xd::sampling::uniform);
    // 3 negatives out of the 3 items each user never touched: user 0 gets {3 4 5}, user 1 {0 1 2}.
    const auto c = xt::make_sampled_candidates(sp, ns, 3, 11);
    REQUIRE(c.size() == 2);
    CHECK(c.row(0)[0] == 2);  // the target first
    CHECK(c.row(1)[0] == 3);
    CHECK(std::set<std::int32_t>(c.row(0).begin() + 1, c.row(0).end()) == std::set<std::int32_t>{3, 4, 5});
    CHECK(std::set<std::int32_t>(c.row(1).begin() + 1, c.row(1).end()) == std::set<std::int32_t>{0, 1, 2});
    CHECK(xt::make_sampled_candidates(sp, ns, 3, 11).items == c.items);

    // Scorer: score = item id. User 0: target 2 below 3, 4, 5 -> rank 3. User 1: target 3
    // above 0, 1, 2 -> rank 0.
    auto by_id = [](std::int64_t, std::span<const std::int32_t> items, std::span<float> out) {
        for (std::size_t j = 0; j < items.size(); ++j) out[j] = static_cast<float>(items[j]);
    };
    const auto m = xt::evaluate_sampled(sp, ns, 3, 11, by_id, {1, 3, 4});
    // K=1 and K=3: only user 1 hits (rank 0): HR 1/2, NDCG 1/2, MRR 1/2.
    CHECK(m[0].hr == doctest::Approx(0.5));
    CHECK(m[0].ndcg == doctest::Approx(0.5));
    CHECK(m[1].hr == doctest::Approx(0.5));
    CHECK(m[1].mrr == doctest::Approx(0.5));
    // K=4: both hit; NDCG (1/log2(5) + 1)/2 = (0.430677 + 1)/2 = 0.715338; MRR (1/4 + 1)/2 = 0.625.
    CHECK(m[2].hr == doctest::Approx(1.0));
    CHECK(m[2].ndcg == doctest::Approx(0.715338).epsilon(1e-5));
    CHECK(m[2].mrr == doctest::Approx(0.625));
    // Top-1 lists among the candidates: user 0 -> 5, user 1 -> 3: coverage@1 = 2/6.
    CHECK(m[0].coverage == doctest::Approx(2.0 / 6));

    // Exported for a PyTorch peer: the same matrix comes back.
    xrec_test::temp_file f("cands.safetensors", "");
    xt::save_candidates(c, f.str(), 11, "uniform");
    const auto st = xrec::io::safetensors_file::open(f.str());
    CHECK(st.read<std::int32_t>("items") == c.items);
    CHECK(st.read<std::int64_t>("users") == c.users);
    CHECK(st.metadata().at("negatives") == "3");

    // With 99 negatives on 1000 items, each user's negatives depend on (seed, user) only:
    // evaluating users in another split that shares user 1's data gives user 1 the same ones.
    xd::sequences big;
    big.n_items = 1000;
    for (int u = 0; u < 5; ++u) big.push_row(std::vector<std::int32_t>{u, u + 10, u + 20});
    const auto a = xt::make_sampled_candidates(xd::leave_last_out(big, false), xd::negative_sampler(1000, xd::sampling::uniform), 99, 5);
    xd::sequences other = big;
    other.items[0] = 500;  // user 0 changes
    const auto b = xt::make_sampled_candidates(xd::leave_last_out(other, false), xd::negative_sampler(1000, xd::sampling::uniform), 99, 5);
    CHECK(std::vector<std::int32_t>(a.row(1).begin(), a.row(1).end()) == std::vector<std::int32_t>(b.row(1).begin(), b.row(1).end()));
    for (std::int64_t r = 0; r < a.size(); ++r) {
        const auto row = a.row(r);
        const std::set<std::int32_t> distinct(row.begin(), row.end());
        CHECK(distinct.size() == 100);
        for (std::size_t j = 1; j < row.size(); ++j)
            for (auto seen : big.row(r)) CHECK(row[j] != seen);
    }
}

TEST_CASE("ranking eval: full ranking masks the history (hand example)") {
    const auto sp = tiny_split();
    // Scorer: score = -id (small ids first). User 0: history {0, 1} masked; the target 2 beats
    // the remaining 3, 4, 5 -> rank 0 (unmasked it would be rank 2). User 1: history {4, 5}
    // masked; 0, 1, 2 beat the target 3 -> rank 3.
    auto neg_id = [](std::int64_t, std::span<float> out) {
        for (std::size_t i = 0; i < out.size(); ++i) out[i] = -static_cast<float>(i);
    };
    const std::vector<double> pop{1, 1, 1, 1, 1, 1};
    const auto m = xt::evaluate_full(sp, neg_id, {1, 4}, pop);
    // K=1: HR 1/2, NDCG 1/2, MRR 1/2; top-1 lists [2] and [0]: coverage 2/6.
    CHECK(m[0].hr == doctest::Approx(0.5));
    CHECK(m[0].ndcg == doctest::Approx(0.5));
    CHECK(m[0].coverage == doctest::Approx(2.0 / 6));
    // K=4: HR 1, NDCG (1 + 1/log2(5))/2 = 0.715338, MRR (1 + 1/4)/2 = 0.625.
    //   Lists [2 3 4 5] and [0 1 2 3]: every item listed, coverage 1; counts 1 1 2 2 1 1, sorted
    //   1 1 1 1 2 2 (n = 6, sum 8): Gini = (-5 - 3 - 1 + 1 + 3*2 + 5*2)/(6*8) = 8/48 = 0.166667.
    CHECK(m[1].hr == doctest::Approx(1.0));
    CHECK(m[1].ndcg == doctest::Approx(0.715338).epsilon(1e-5));
    CHECK(m[1].mrr == doctest::Approx(0.625));
    CHECK(m[1].coverage == doctest::Approx(1.0));
    CHECK(m[1].gini == doctest::Approx(1.0 / 6));
    CHECK(m[1].avg_popularity == doctest::Approx(1.0));

    // Validation target: rows [0 1 2 3] with valid: train [0 1], valid 2, test 3. On the valid
    // target the history is {0, 1}; on the test target {0, 1, 2}.
    xd::sequences s;
    s.n_items = 6;
    s.push_row(std::vector<std::int32_t>{0, 1, 2, 3});
    const auto vs = xd::leave_last_out(s, true);
    // score = -id: valid target 2 ranks 0 after masking 0, 1; test target 3 ranks 0 after masking 0, 1, 2.
    CHECK(xt::evaluate_full(vs, neg_id, {1}, {}, xt::eval_target::valid)[0].hr == 1.0);
    CHECK(xt::evaluate_full(vs, neg_id, {1}, {}, xt::eval_target::test)[0].hr == 1.0);
    // A constant scorer gets nothing (ties count against the target).
    auto flat = [](std::int64_t, std::span<float> out) { std::fill(out.begin(), out.end(), 1.0f); };
    CHECK(xt::evaluate_full(sp, flat, {3})[0].hr == 0.0);
}

TEST_CASE("ranking eval: session protocol scores every next click (hand example)") {
    xd::sequences test;
    test.n_items = 3;
    test.push_row(std::vector<std::int32_t>{0, 1, 2});
    // Fixed scores [0.1 0.5 0.3]: prefix [0] -> target 1 (0.5) rank 0; prefix [0 1] -> target 2
    // (0.3), item 1 above -> rank 1. K=1: HR 1/2, MRR 1/2. K=2: HR 1, MRR (1 + 1/2)/2 = 0.75.
    int calls = 0;
    auto fixed = [&](std::int64_t, std::span<const std::int32_t> prefix, std::span<float> out) {
        CHECK(prefix.size() == static_cast<std::size_t>(++calls));
        out[0] = 0.1f;
        out[1] = 0.5f;
        out[2] = 0.3f;
    };
    const auto m = xt::evaluate_sessions(test, fixed, {1, 2});
    CHECK(m[0].users == 2);
    CHECK(m[0].hr == doctest::Approx(0.5));
    CHECK(m[0].mrr == doctest::Approx(0.5));
    CHECK(m[1].recall == doctest::Approx(1.0));
    CHECK(m[1].mrr == doctest::Approx(0.75));
}

TEST_CASE("baselines: most_popular, item_knn and session_knn on hand examples") {
    // Users (rows): u0 {0 1}, u1 {0 1 2}, u2 {2 3}; u0 lists item 0 twice (counted once by kNN).
    const std::vector<std::int64_t> off{0, 3, 6, 8};
    const std::vector<std::int32_t> items{0, 1, 0, 0, 1, 2, 2, 3};
    xmod::most_popular pop(4, off, items);
    std::vector<float> sc(4);
    pop.score_all(sc);
    CHECK(sc == std::vector<float>{3, 2, 2, 1});
    // Item users: 0: {u0 u1}, 1: {u0 u1}, 2: {u1 u2}, 3: {u2}.
    // co(0,1) = 2 -> 2/sqrt(2*2) = 1; co(0,2) = 1 -> 1/2; co(1,2) = 1 -> 1/2; co(2,3) = 1 -> 1/sqrt(2) = 0.707107.
    xmod::item_knn knn(4, off, items, {.neighbours = 2, .shrink = 0});
    CHECK(std::vector<std::int32_t>(knn.neighbours(0).begin(), knn.neighbours(0).end()) == std::vector<std::int32_t>{1, 2});
    CHECK(knn.similarities(0)[0] == doctest::Approx(1.0));
    CHECK(knn.similarities(0)[1] == doctest::Approx(0.5));
    // Item 2's neighbours: 3 (0.707107), then 0 and 1 tie at 0.5: the smaller id (0) is kept.
    CHECK(std::vector<std::int32_t>(knn.neighbours(2).begin(), knn.neighbours(2).end()) == std::vector<std::int32_t>{3, 0});
    CHECK(knn.similarities(2)[0] == doctest::Approx(0.707107).epsilon(1e-5));
    // History {0, 0}: the neighbours of 0 once: scores [0 1 0.5 0].
    const std::vector<std::int32_t> h{0, 0};
    knn.score_all(h, sc);
    CHECK(sc == std::vector<float>{0, 1, 0.5f, 0});
    const std::vector<std::int32_t> cands{2, 1};
    std::vector<float> cs(2);
    knn.score(h, cands, cs);
    CHECK(cs == std::vector<float>{0.5f, 1});

    // Sessions, oldest first: s0 [0 1], s1 [1 2], s2 [2 3]. Current session [1 2].
    const std::vector<std::int64_t> so{0, 2, 4, 6};
    const std::vector<std::int32_t> si{0, 1, 1, 2, 2, 3};
    // V-SkNN (linear decay): weights 1 -> 1/2, 2 -> 2/2 = 1; |s| = 2. sim(s0) = 0.5/2 = 0.25,
    // sim(s1) = 1.5/2 = 0.75, sim(s2) = 1/2 = 0.5. k = 2 keeps s1, s2:
    // scores: 0 -> 0, 1 -> 0.75, 2 -> 0.75 + 0.5 = 1.25, 3 -> 0.5.
    const std::vector<std::int32_t> cur{1, 2};
    xmod::session_knn v(4, so, si, {.mode = xmod::session_knn_options::weighting::linear_decay, .k = 2, .sample_size = 0});
    v.score_all(cur, sc);
    CHECK(sc[0] == 0.0f);
    CHECK(sc[1] == doctest::Approx(0.75));
    CHECK(sc[2] == doctest::Approx(1.25));
    CHECK(sc[3] == doctest::Approx(0.5));
    // S-SkNN (cosine): sim(s0) = 1/sqrt(2*2) = 0.5, sim(s1) = 2/2 = 1, sim(s2) = 0.5; k = 2 keeps
    // s1 and, of the tie s0/s2, the more recent s2: scores 0 -> 0, 1 -> 1, 2 -> 1.5, 3 -> 0.5.
    xmod::session_knn c(4, so, si, {.mode = xmod::session_knn_options::weighting::cosine, .k = 2, .sample_size = 0});
    c.score_all(cur, sc);
    CHECK(sc == std::vector<float>{0, 1, 1.5f, 0.5f});
    // sample_size 1: only the most recent session sharing an item (s2) is a neighbour.
    xmod::session_knn r(4, so, si, {.mode = xmod::session_knn_options::weighting::linear_decay, .k = 2, .sample_size = 1});
    r.score_all(cur, sc);
    CHECK(sc == std::vector<float>{0, 0, 0.5f, 0.5f});

    const std::vector<std::int64_t> bad_off{0, 2};
    CHECK_THROWS_WITH_AS(xmod::most_popular(4, bad_off, items), doctest::Contains("CSR offsets"), xrec::error);
}

TEST_CASE("baselines on ml-100k: leave-latest-out, 99 sampled negatives, HR@10 and NDCG@10") {
    const auto dir = xrec_test::data_dir("ml-100k");
    if (!dir) return;
    const auto t0 = std::chrono::steady_clock::now();
    const auto split = xd::leave_last_out(xd::to_sequences(xd::load_movielens(*dir / "u.data")), false);
    const auto counts = xd::item_counts(split.train);
    xd::negative_sampler ns(split.n_items(), xd::sampling::uniform);
    const auto cands = xt::make_sampled_candidates(split, ns, 99, 1);
    REQUIRE(cands.size() == 943);

    const auto& tr = split.train;
    xmod::most_popular pop(tr.n_items, tr.offsets, tr.items);
    auto pop_score = [&](std::int64_t, std::span<const std::int32_t> c, std::span<float> out) { pop.score(c, out); };
    const auto mp = xt::evaluate_sampled(cands, split.n_items(), pop_score, {10}, counts);

    xmod::item_knn knn(tr.n_items, tr.offsets, tr.items, {.neighbours = 100, .shrink = 0});
    auto knn_score = [&](std::int64_t u, std::span<const std::int32_t> c, std::span<float> out) { knn.score(tr.row(u), c, out); };
    const auto mk = xt::evaluate_sampled(cands, split.n_items(), knn_score, {10}, counts);

    xm::ranking_protocol p;
    p.mode = xm::ranking_protocol::kind::sampled;
    p.negatives = 99;
    p.sampler = "uniform";
    p.split = "leave-latest-out (test = each user's latest rating)";
    p.note = "ml-100k, seed 1";
    MESSAGE(xm::format_table(p, {{"most_popular", mp}, {"item_knn(100)", mk}}));
    MESSAGE("ml-100k baselines took "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s");
    // Popularity is typically HR@10 ~0.4-0.45 on this protocol; item-kNN above it.
    CHECK(mp[0].hr > 0.35);
    CHECK(mp[0].hr < 0.55);
    CHECK(mp[0].ndcg > 0.18);
    CHECK(mk[0].hr > mp[0].hr + 0.05);
    CHECK(mk[0].ndcg > mp[0].ndcg);
}

TEST_CASE("baselines on rsc15_100k: session kNN beats popularity on every next click (Recall@20, MRR@20)") {
    const auto dir = xrec_test::data_dir("rsc15_100k");
    if (!dir) return;
    const auto t0 = std::chrono::steady_clock::now();
    xd::item_vocab v;
    const auto tr = xd::load_sessions(*dir / "yoochoose-clicks-100k_train_full.txt", v);
    const auto te = xd::load_sessions(*dir / "yoochoose-clicks-100k_test.txt", v, {.extend_vocab = false, .min_length = 2});
    const auto counts = xd::item_counts(tr);
    xmod::most_popular pop(tr.n_items, tr.offsets, tr.items);
    auto pop_score = [&](std::int64_t, std::span<const std::int32_t>, std::span<float> out) { pop.score_all(out); };
    const auto mp = xt::evaluate_sessions(te, pop_score, {20}, counts);
    xmod::session_knn sk(tr.n_items, tr.offsets, tr.items, {});
    auto sk_score = [&](std::int64_t, std::span<const std::int32_t> prefix, std::span<float> out) { sk.score_all(prefix, out); };
    const auto ms = xt::evaluate_sessions(te, sk_score, {20}, counts);
    xmod::item_knn ik(tr.n_items, tr.offsets, tr.items, {});
    // Item kNN for sessions: the last click's neighbours (GRU4Rec's item-kNN baseline).
    auto ik_score = [&](std::int64_t, std::span<const std::int32_t> prefix, std::span<float> out) {
        ik.score_all(prefix.last(1), out);
    };
    const auto mi = xt::evaluate_sessions(te, ik_score, {20}, counts);
    xm::ranking_protocol p;
    p.mode = xm::ranking_protocol::kind::full;
    p.history_masked = false;
    p.n_items = tr.n_items;
    p.split = "rsc15_100k train_full / test, every next click of each test session";
    MESSAGE(xm::format_table(p, {{"most_popular", mp}, {"item_knn(last click)", mi}, {"v-sknn(100, 500)", ms}}));
    MESSAGE("rsc15 baselines took " << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s");
    CHECK(mp[0].users == 13568 - 3416);
    CHECK(ms[0].recall > mp[0].recall + 0.1);
    CHECK(ms[0].mrr > mp[0].mrr);
    CHECK(mi[0].recall > mp[0].recall + 0.1);
}

TEST_CASE("baselines on Beauty: full ranking, history masked, HR@10 and NDCG@10") {
    const auto dir = xrec_test::data_dir("sequences");
    if (!dir) return;
    const auto t0 = std::chrono::steady_clock::now();
    const auto split = xd::leave_last_out(xd::load_user_sequences(*dir / "Beauty.txt"), true);
    const auto& tr = split.train;
    // Popularity and neighbours from train + valid (what a model sees before the test item).
    xd::sequences seen = tr;
    seen.items.clear();
    seen.offsets.assign(1, 0);
    for (std::int64_t u = 0; u < tr.rows(); ++u) seen.push_row(xd::seen_items(split, u));
    const auto counts = xd::item_counts(seen);
    xmod::most_popular pop(seen.n_items, seen.offsets, seen.items);
    auto pop_score = [&](std::int64_t, std::span<float> out) { pop.score_all(out); };
    const auto mp = xt::evaluate_full(split, pop_score, {10, 20}, counts);
    xmod::item_knn knn(seen.n_items, seen.offsets, seen.items, {.neighbours = 100, .shrink = 0});
    auto knn_score = [&](std::int64_t u, std::span<float> out) { knn.score_all(seen.row(u), out); };
    const auto mk = xt::evaluate_full(split, knn_score, {10, 20}, counts);
    xm::ranking_protocol p;
    p.mode = xm::ranking_protocol::kind::full;
    p.history_masked = true;
    p.n_items = split.n_items();
    p.split = "leave-last-out (test = last item, valid = second last; history = train + valid)";
    p.note = "Beauty";
    MESSAGE(xm::format_table(p, {{"most_popular", mp}, {"item_knn(100)", mk}}));
    MESSAGE("Beauty baselines took " << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s");
    CHECK(mp[0].users == 22363);
    CHECK(mp[0].hr > 0.003);
    CHECK(mk[0].hr > 2 * mp[0].hr);
    CHECK(mk[0].ndcg > mp[0].ndcg);
}
