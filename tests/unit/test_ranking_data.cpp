// data/interactions.hpp: loaders (tiny files and the real data sets with their known
// counts), bad input naming file:line, to_sequences, leave_last_out, time_split, and the
// negative samplers (never a seen item, distinct, deterministic per (seed, user)).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "support/data.hpp"
#include "support/temp_file.hpp"
#include "xrec/data/interactions.hpp"

namespace xd = xrec::data;

namespace {
std::vector<std::int32_t> vec(std::span<const std::int32_t> s) { return {s.begin(), s.end()}; }

template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const xrec::error& e) {
        return e.what();
    }
    return "";
}
}  // namespace

TEST_CASE("ranking data: load_movielens maps ids densely in raw order, drops low ratings") {
    // raw users 7, 3; raw items 50, 10, 30. Dense users: 3 -> 0, 7 -> 1; items 10 -> 0, 30 -> 1, 50 -> 2.
    xrec_test::temp_file f("u.data", "7\t50\t5\t300\n3\t10\t1\t100\n7\t30\t4\t200\n3\t50\t3\t50\n");
    const auto d = xd::load_movielens(f.path);
    CHECK(d.n_users == 2);
    CHECK(d.n_items == 3);
    CHECK(d.user == std::vector<std::int32_t>{1, 0, 1, 0});
    CHECK(d.item == std::vector<std::int32_t>{2, 0, 1, 2});
    CHECK(d.time == std::vector<double>{300, 100, 200, 50});
    CHECK(d.raw_user == std::vector<std::int64_t>{3, 7});
    CHECK(d.raw_item == std::vector<std::int64_t>{10, 30, 50});
    const auto h = xd::load_movielens(f.path, 3.5);  // keeps ratings 5 and 4: user 7 only
    CHECK(h.size() == 2);
    CHECK(h.n_users == 1);
    CHECK(h.raw_item == std::vector<std::int64_t>{30, 50});

    // to_sequences orders each user's items by time: user 3 (dense 0): t=50 item 50, t=100
    // item 10 -> [2, 0]; user 7 (dense 1): t=200 item 30, t=300 item 50 -> [1, 2].
    const auto s = xd::to_sequences(d);
    REQUIRE(s.rows() == 2);
    CHECK(vec(s.row(0)) == std::vector<std::int32_t>{2, 0});
    CHECK(vec(s.row(1)) == std::vector<std::int32_t>{1, 2});
    CHECK(s.row_times(1)[0] == 200);
}

TEST_CASE("ranking data: bad input names the file and the line") {
    xrec_test::temp_file a("bad.data", "1\t2\t3\t4\n1\t2\t3\n");
    auto e = error_of([&] { xd::load_movielens(a.path); });
    CHECK(e.find(a.str() + ":2:") != std::string::npos);
    CHECK(e.find("expected 4 fields") != std::string::npos);
    xrec_test::temp_file b("bad2.data", "1\t2\t3\t4\n1\tx2\t3\t4\n");
    e = error_of([&] { xd::load_movielens(b.path); });
    CHECK(e.find(b.str() + ":2: item id 'x2'") != std::string::npos);
    xrec_test::temp_file c("seq.txt", "1 1 2 3\n2 4 0\n");
    e = error_of([&] { xd::load_user_sequences(c.path); });
    CHECK(e.find(c.str() + ":2: item id 0 out of range") != std::string::npos);
    xrec_test::temp_file d("sess.tsv", "SessionId\tItemId\tTime\n1\t5\t1.5\n1\t6\tnan\n");
    xd::item_vocab v;
    e = error_of([&] { xd::load_sessions(d.path, v); });
    CHECK(e.find(d.str() + ":3: Time 'nan'") != std::string::npos);
    xrec_test::temp_file h("sess2.tsv", "Session\tItemId\tTime\n");
    e = error_of([&] { xd::load_sessions(h.path, v); });
    CHECK(e.find(h.str() + ":1: header") != std::string::npos);
    e = error_of([&] { xd::load_movielens("/nonexistent/u.data"); });
    CHECK(e.find("cannot open '/nonexistent/u.data'") != std::string::npos);
}

TEST_CASE("ranking data: load_sessions orders events and sessions by time, test reuses the train vocabulary") {
    // Train: session 9 starts at t=1 (items 100 then 200 after sorting by time), session 4 at
    // t=5 (300 then 100). Vocabulary in first-appearance order of the file's lines: 200 -> 0,
    // 300 -> 1, 100 -> 2. So session 9 = [2, 0], session 4 = [1, 2].
    xrec_test::temp_file tr("tr.tsv", "SessionId\tItemId\tTime\n9\t200\t3\n4\t300\t5\n9\t100\t1\n4\t100\t6\n");
    xd::item_vocab v;
    const auto s = xd::load_sessions(tr.path, v);
    REQUIRE(s.rows() == 2);
    CHECK(s.row_id == std::vector<std::int64_t>{9, 4});
    CHECK(vec(s.row(0)) == std::vector<std::int32_t>{2, 0});
    CHECK(vec(s.row(1)) == std::vector<std::int32_t>{1, 2});
    CHECK(s.n_items == 3);
    CHECK(v.raw == std::vector<std::int64_t>{200, 300, 100});
    // Test: item 999 is unknown and dropped; session 2 is then one click long and dropped
    // (min_length 2); session 1 keeps [300, 200] -> [1, 0]. The vocabulary does not grow.
    xrec_test::temp_file te("te.tsv", "SessionId\tItemId\tTime\n1\t300\t10\n2\t999\t11\n1\t999\t12\n2\t100\t13\n1\t200\t14\n");
    const auto t = xd::load_sessions(te.path, v, {.extend_vocab = false, .min_length = 2});
    REQUIRE(t.rows() == 1);
    CHECK(t.row_id[0] == 1);
    CHECK(vec(t.row(0)) == std::vector<std::int32_t>{1, 0});
    CHECK(v.size() == 3);
    CHECK(t.n_items == 3);
}

TEST_CASE("ranking data: leave_last_out and seen_items on a hand example") {
    xd::sequences s;
    s.n_items = 10;
    s.push_row(std::vector<std::int32_t>{1, 2, 3, 4});
    s.push_row(std::vector<std::int32_t>{5, 6});
    s.push_row(std::vector<std::int32_t>{7});
    s.push_row(std::vector<std::int32_t>{2, 2, 9});
    // Without validation: row 0 -> train [1 2 3], test 4; row 1 -> [5], 6; row 2 (one item)
    // -> train only; row 3 -> [2 2], 9.
    const auto a = xd::leave_last_out(s, false);
    CHECK(vec(a.train.row(0)) == std::vector<std::int32_t>{1, 2, 3});
    CHECK(vec(a.train.row(1)) == std::vector<std::int32_t>{5});
    CHECK(vec(a.train.row(2)) == std::vector<std::int32_t>{7});
    CHECK(vec(a.train.row(3)) == std::vector<std::int32_t>{2, 2});
    CHECK(a.test == std::vector<std::int32_t>{4, 6, -1, 9});
    CHECK(a.valid == std::vector<std::int32_t>{-1, -1, -1, -1});
    // With validation: row 0 -> [1 2], valid 3, test 4; rows 1 and 2 (<= 2 items) train only;
    // row 3 -> [2], valid 2, test 9.
    const auto b = xd::leave_last_out(s, true);
    CHECK(vec(b.train.row(0)) == std::vector<std::int32_t>{1, 2});
    CHECK(vec(b.train.row(1)) == std::vector<std::int32_t>{5, 6});
    CHECK(vec(b.train.row(3)) == std::vector<std::int32_t>{2});
    CHECK(b.valid == std::vector<std::int32_t>{3, -1, -1, 2});
    CHECK(b.test == std::vector<std::int32_t>{4, -1, -1, 9});
    CHECK(xd::seen_items(b, 0) == std::vector<std::int32_t>{1, 2, 3});
    CHECK(xd::seen_items(b, 3) == std::vector<std::int32_t>{2});  // train 2 + valid 2, deduplicated
    CHECK(xd::item_counts(s)[2] == 3);
}

TEST_CASE("ranking data: time_split cuts at the time quantile, ties go to test") {
    xd::interactions d;
    d.n_users = 2;
    d.n_items = 3;
    d.user = {0, 1, 0, 1, 0};
    d.item = {0, 1, 2, 0, 1};
    d.time = {5, 1, 3, 3, 9};
    // Sorted times 1 3 3 5 9; fraction 0.4 -> 2 events -> cut = the third time = 3: only the
    // event at t=1 is before it, the two at t=3 (tie) go to test with 5 and 9.
    const auto s = xd::time_split(d, 0.4);
    CHECK(s.cut == 3);
    CHECK(s.train.time == std::vector<double>{1});
    CHECK(s.test.time == std::vector<double>{5, 3, 3, 9});
    CHECK(s.test.user == std::vector<std::int32_t>{0, 0, 1, 0});
    CHECK(s.train.n_items == 3);
    CHECK(xd::time_split(d, 1.0).test.size() == 0);
    CHECK(xd::time_split(d, 0.0).train.size() == 0);
}

TEST_CASE("ranking data: negative samplers never return seen items, are distinct and deterministic per (seed, user)") {
    const std::int32_t n = 50;
    std::vector<double> pop(n);
    for (int i = 0; i < n; ++i) pop[static_cast<std::size_t>(i)] = (i % 7 == 3) ? 0.0 : 1.0 + i;  // some items never drawn
    for (auto kind : {xd::sampling::uniform, xd::sampling::popularity}) {
        CAPTURE(xd::sampling_name(kind));
        xd::negative_sampler ns(n, kind, pop);
        for (std::int64_t user = 0; user < 200; ++user) {
            std::vector<std::int32_t> seen;
            for (std::int32_t i = 0; i < n; ++i)
                if ((i * 31 + user * 17) % 5 < 2 + user % 3) seen.push_back(i);  // 40-80% seen: exercises the fallback
            std::int64_t unseen_ok = 0;
            for (std::int32_t i = 0; i < n; ++i)
                if (!std::binary_search(seen.begin(), seen.end(), i) && (kind == xd::sampling::uniform || pop[static_cast<std::size_t>(i)] > 0))
                    ++unseen_ok;
            const auto count = static_cast<std::int32_t>(std::min<std::int64_t>(unseen_ok, 1 + user % 12));
            std::vector<std::int32_t> a(static_cast<std::size_t>(count)), b(a.size()), c(a.size());
            ns.sample(seen, count, 7, user, a);
            ns.sample(seen, count, 7, user, b);
            ns.sample(seen, count, 8, user, c);
            CHECK(a == b);
            std::set<std::int32_t> distinct(a.begin(), a.end());
            CHECK(distinct.size() == a.size());
            for (auto i : a) {
                CHECK(i >= 0);
                CHECK(i < n);
                CHECK_FALSE(std::binary_search(seen.begin(), seen.end(), i));
                if (kind == xd::sampling::popularity) CHECK(pop[static_cast<std::size_t>(i)] > 0);
            }
            if (count >= 8 && unseen_ok >= 4 * count) CHECK(a != c);  // another seed, other negatives
        }
        // Asking for more than the unseen items is an error naming the numbers.
        std::vector<std::int32_t> seen(45), out(6);
        std::iota(seen.begin(), seen.end(), 0);
        CHECK_THROWS_WITH_AS(ns.sample(seen, 6, 1, 0, out), doctest::Contains("only 5 of 50 items are unseen"), xrec::error);
    }
    // Uniform frequencies: 20000 draws of one negative among 10 items with 0 and 1 seen: each
    // of the other 8 about 2500 (sd ~47).
    xd::negative_sampler u(10, xd::sampling::uniform);
    std::vector<int> freq(10, 0);
    const std::vector<std::int32_t> seen{0, 1};
    std::int32_t one = 0;
    for (std::int64_t user = 0; user < 20000; ++user) {
        u.sample(seen, 1, 3, user, std::span<std::int32_t>(&one, 1));
        ++freq[static_cast<std::size_t>(one)];
    }
    CHECK(freq[0] == 0);
    CHECK(freq[1] == 0);
    for (int i = 2; i < 10; ++i) CHECK(std::abs(freq[static_cast<std::size_t>(i)] - 2500) < 250);
    // Popularity frequencies follow the weights: items 0..3 with weights 1, 2, 3, 4 (item 0
    // seen): P(1) = 2/9, P(2) = 3/9, P(3) = 4/9.
    const std::vector<double> w{1, 2, 3, 4};
    xd::negative_sampler p(4, xd::sampling::popularity, w);
    std::vector<int> pf(4, 0);
    const std::vector<std::int32_t> seen0{0};
    for (std::int64_t user = 0; user < 18000; ++user) {
        p.sample(seen0, 1, 3, user, std::span<std::int32_t>(&one, 1));
        ++pf[static_cast<std::size_t>(one)];
    }
    CHECK(pf[0] == 0);
    CHECK(std::abs(pf[1] - 4000) < 300);
    CHECK(std::abs(pf[2] - 6000) < 300);
    CHECK(std::abs(pf[3] - 8000) < 300);
}

TEST_CASE("ranking data: ml-100k, Beauty, Toys and rsc15_100k load with their known counts") {
    if (const auto dir = xrec_test::data_dir("ml-100k")) {
        const auto d = xd::load_movielens(*dir / "u.data");
        CHECK(d.size() == 100000);
        CHECK(d.n_users == 943);
        CHECK(d.n_items == 1682);
        CHECK(d.raw_user.front() == 1);
        CHECK(d.raw_item.back() == 1682);
        const auto s = xd::to_sequences(d);
        CHECK(s.rows() == 943);
        const auto split = xd::leave_last_out(s, false);
        // Every ml-100k user has at least 20 ratings: all 943 have a test item.
        CHECK(std::count(split.test.begin(), split.test.end(), -1) == 0);
        CHECK(split.train.events() == 100000 - 943);
    }
    if (const auto dir = xrec_test::data_dir("sequences")) {
        // S3-Rec's preprocessing: Beauty 22,363 users, 12,101 items, 198,502 interactions;
        // Toys 19,412 users, 11,924 items, 167,597 interactions.
        const auto b = xd::load_user_sequences(*dir / "Beauty.txt");
        CHECK(b.rows() == 22363);
        CHECK(b.n_items == 12101);
        CHECK(b.events() == 198502);
        CHECK(b.row_id.front() == 1);
        CHECK(vec(b.row(0)) == std::vector<std::int32_t>{0, 1, 2, 3, 4});  // "1 1 2 3 4 5"
        const auto t = xd::load_user_sequences(*dir / "Toys_and_Games.txt");
        CHECK(t.rows() == 19412);
        CHECK(t.n_items == 11924);
        CHECK(t.events() == 167597);
    }
    if (const auto dir = xrec_test::data_dir("rsc15_100k")) {
        // Counted independently (Python csv): train_full 70,278 clicks in 17,794 sessions over
        // 2,933 items; test 13,568 clicks in 3,416 sessions, every item known to train and
        // every session at least 2 clicks long. The earliest train session is 5182, starting
        // with item 214821026.
        xd::item_vocab v;
        const auto tr = xd::load_sessions(*dir / "yoochoose-clicks-100k_train_full.txt", v);
        CHECK(tr.events() == 70278);
        CHECK(tr.rows() == 17794);
        CHECK(tr.n_items == 2933);
        CHECK(tr.row_id.front() == 5182);
        CHECK(v.raw[static_cast<std::size_t>(tr.row(0)[0])] == 214821026);
        const auto te = xd::load_sessions(*dir / "yoochoose-clicks-100k_test.txt", v, {.extend_vocab = false, .min_length = 2});
        CHECK(te.events() == 13568);
        CHECK(te.rows() == 3416);
        CHECK(v.size() == 2933);
        for (std::int64_t r = 1; r < te.rows(); ++r) CHECK(te.row_times(r)[0] >= te.row_times(r - 1)[0]);
    }
}
