// Splits (ratio with a seeded shuffle, time, leave-last-N-out per user) and the streaming batch
// source (file order = in-memory encoding; shuffle buffer deterministic per (seed, epoch)).
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>


#include "support/checks.hpp"
#include "support/data.hpp"
#include "support/temp_file.hpp"
#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"
#include "xrec/data/split.hpp"
#include "xrec/data/stream.hpp"

using namespace xrec::data;
namespace fs = std::filesystem;

namespace {

using xrec_test::temp_file;

void check_partition(const split_indices& s, std::int64_t n) {
    std::vector<std::int64_t> all;
    all.insert(all.end(), s.train.begin(), s.train.end());
    all.insert(all.end(), s.valid.begin(), s.valid.end());
    all.insert(all.end(), s.test.begin(), s.test.end());
    std::sort(all.begin(), all.end());
    std::vector<std::int64_t> want(static_cast<std::size_t>(n));
    std::iota(want.begin(), want.end(), std::int64_t{0});
    CHECK(all == want);
}

// The rows of one batch as (sparse ids, label) tuples, for comparing orders.
std::vector<std::vector<std::int64_t>> batch_rows(const xrec::batch<float>& b) {
    std::vector<std::vector<std::int64_t>> out;
    const auto F = b.sparse.s[1];
    for (std::int64_t r = 0; r < b.rows; ++r) {
        std::vector<std::int64_t> row(b.sparse.data + r * F, b.sparse.data + (r + 1) * F);
        row.push_back(static_cast<std::int64_t>(b.labels.data[r]));
        out.push_back(std::move(row));
    }
    return out;
}

template <class Source>
std::vector<std::vector<std::int64_t>> epoch_rows(Source& src, std::int64_t e, const xrec::feature_layout& L,
                                                  std::int64_t* batches = nullptr) {
    src.start_epoch(e);
    xrec::batch<float> b;
    std::vector<std::vector<std::int64_t>> out;
    std::int64_t nb = 0;
    while (src.next(b)) {
        b.check("stream test", L);
        auto r = batch_rows(b);
        out.insert(out.end(), r.begin(), r.end());
        ++nb;
    }
    if (batches) *batches = nb;
    return out;
}

}  // namespace

TEST_CASE("split_by_ratio: sizes, a partition, a pure function of the seed") {
    auto a = split_by_ratio(1000, 0.8, 0.1, 42);
    CHECK(a.train.size() == 800);
    CHECK(a.valid.size() == 100);
    CHECK(a.test.size() == 100);
    check_partition(a, 1000);
    CHECK(std::is_sorted(a.train.begin(), a.train.end()));
    auto b = split_by_ratio(1000, 0.8, 0.1, 42);
    CHECK(a.test == b.test);
    auto c = split_by_ratio(1000, 0.8, 0.1, 43);
    CHECK(a.test != c.test);
    // pinned: the first test rows for seed 42 never change (Philox Fisher-Yates)
    const auto p = shuffled_indices(10, 42);
    CHECK(p == std::vector<std::int64_t>{8, 0, 6, 9, 7, 3, 1, 5, 4, 2});
    auto d = split_by_ratio(10, 0.5, 0.2, 0, false);
    CHECK(d.train == std::vector<std::int64_t>{0, 1, 2, 3, 4});
    CHECK(d.valid == std::vector<std::int64_t>{5, 6});
    CHECK(d.test == std::vector<std::int64_t>{7, 8, 9});
    xrec_test::expect_error([] { split_by_ratio(10, 0.8, 0.3); }, {"split_by_ratio", "sum <= 1"});
    MESSAGE("shuffled_indices(10, 42) = " << [&] {
        std::string s;
        for (auto x : p) s += std::to_string(x) + " ";
        return s;
    }());
}

TEST_CASE("split_by_time and split_at_times: no training row is later than a validation or test row") {
    std::vector<std::int64_t> t{50, 10, 40, 10, 30, 20, 60, 70, 0, 90};
    auto s = split_by_time(t, 0.6, 0.2);
    check_partition(s, 10);
    CHECK(s.train == std::vector<std::int64_t>{8, 1, 3, 5, 4, 2});  // by (time, row)
    CHECK(s.valid == std::vector<std::int64_t>{0, 6});
    CHECK(s.test == std::vector<std::int64_t>{7, 9});
    auto f = split_at_times(t, 40, 70);
    CHECK(f.train == std::vector<std::int64_t>{1, 3, 4, 5, 8});
    CHECK(f.valid == std::vector<std::int64_t>{0, 2, 6});
    CHECK(f.test == std::vector<std::int64_t>{7, 9});
}

TEST_CASE("leave_last_n_out on MovieLens 100K: each user's latest rating tests, the one before validates") {
    auto dir = xrec_test::data_dir("ml-100k");
    if (!dir) return;
    delimited_options d;
    d.delimiter = '\t';
    d.header = false;
    d.quoted = false;
    d.names = {"user", "item", "rating", "ts"};
    delimited_reader r((*dir / "u.data").string(), d);
    auto s = schema::from_spec("rating=label(binarize=4); user=sparse; item=sparse; user=group; ts=time");
    s.fit(r);
    r.rewind();
    auto e = s.encode_all<float>(r);
    REQUIRE(e.rows.size() == 100000);
    const auto& g = e.rows.group_column();
    auto sp = leave_last_n_out(g, e.times, 1, 1);
    check_partition(sp, 100000);
    CHECK(sp.test.size() == 943);  // every ML-100K user has >= 20 ratings
    CHECK(sp.valid.size() == 943);
    std::map<std::int64_t, std::int64_t> last_train, first_held;
    for (auto i : sp.train) {
        auto& x = last_train[g[static_cast<std::size_t>(i)]];
        x = std::max(x, e.times[static_cast<std::size_t>(i)]);
    }
    bool ordered = true;
    std::set<std::int64_t> test_users;
    for (auto i : sp.test) {
        test_users.insert(g[static_cast<std::size_t>(i)]);
        ordered &= e.times[static_cast<std::size_t>(i)] >= last_train[g[static_cast<std::size_t>(i)]];
    }
    for (auto i : sp.valid) ordered &= e.times[static_cast<std::size_t>(i)] >= last_train[g[static_cast<std::size_t>(i)]];
    CHECK(ordered);
    CHECK(test_users.size() == 943);
    auto parts = apply_split(e.rows, sp);
    CHECK(parts.train.size() == 100000 - 2 * 943);
    CHECK(parts.test.group(0) == g[static_cast<std::size_t>(sp.test[0])]);
    CHECK(leave_last_n_out(g, e.times, 1, 1).test == sp.test);  // deterministic
    MESSAGE("ml-100k leave-last-1-out: train " << parts.train.size() << ", valid " << parts.valid.size() << ", test "
                                                << parts.test.size());
}

TEST_CASE("leave_last_n_out: short histories and unknown groups train; ties broken by row order") {
    std::vector<std::int64_t> g{1, 1, 1, 2, 2, -1, 1, 3, 3, 3};
    std::vector<std::int64_t> t{5, 1, 5, 1, 2, 0, 3, 7, 7, 7};
    auto s = leave_last_n_out(g, t, 1, 1);
    // user 1: rows 1(t1) 6(t3) 0(t5) 2(t5) -> test 2, valid 0; user 2 has 2 rows -> train;
    // user 3: rows 7 8 9 (ties) -> test 9, valid 8
    CHECK(s.test == std::vector<std::int64_t>{2, 9});
    CHECK(s.valid == std::vector<std::int64_t>{0, 8});
    CHECK(s.train == std::vector<std::int64_t>{1, 3, 4, 5, 6, 7});
    auto no_time = leave_last_n_out(g, {}, 2, 0);
    CHECK(no_time.test == std::vector<std::int64_t>{2, 6, 8, 9});
}

TEST_CASE("stream_source: file order equals the in-memory encoding; shuffle buffer is a deterministic permutation") {
    auto dir = xrec_test::data_dir("criteo");
    if (!dir) return;
    const auto path = (*dir / "criteo_dev.tsv").string();
    auto s = criteo_schema(1);
    auto fr = criteo_reader((*dir / "criteo_train.tsv").string());
    s.fit(fr);
    auto mem_reader = criteo_reader(path);
    auto mem = s.encode_all<float>(mem_reader);
    std::vector<std::vector<std::int64_t>> want;
    for (std::int64_t i = 0; i < mem.rows.size(); ++i) {
        auto sp = mem.rows.sparse_row(i);
        std::vector<std::int64_t> row(sp.begin(), sp.end());
        row.push_back(static_cast<std::int64_t>(mem.rows.label(i)));
        want.push_back(std::move(row));
    }

    reader_options small;
    small.chunk_bytes = 4096;  // many chunks for a 99 kB file
    auto rd = criteo_reader(path, small);
    stream_source<float, delimited_reader> plain(rd, s, {100, 0, 0, encode_mode::serve});
    std::int64_t nb = 0;
    CHECK(epoch_rows(plain, 0, s.layout(), &nb) == want);
    CHECK(nb == 5);  // 409 rows in batches of 100
    CHECK(epoch_rows(plain, 1, s.layout()) == want);  // a second epoch rewinds

    auto rd2 = criteo_reader(path, small);
    stream_source<float, delimited_reader> shuf(rd2, s, {64, 50, 9, encode_mode::serve});
    auto e0 = epoch_rows(shuf, 0, s.layout());
    auto e0b = epoch_rows(shuf, 0, s.layout());
    auto e1 = epoch_rows(shuf, 1, s.layout());
    CHECK(e0 == e0b);  // pure function of (seed, epoch)
    CHECK(e0 != e1);
    CHECK(e0 != want);
    auto sorted = [](auto v) {
        std::sort(v.begin(), v.end());
        return v;
    };
    CHECK(sorted(e0) == sorted(want));  // a permutation of the file's rows
    CHECK(sorted(e1) == sorted(want));
    // A local shuffle: a row cannot come out before it was read, so the row at output position i
    // is one of the file's first i + 50 rows.
    std::map<std::vector<std::int64_t>, std::size_t> where;
    for (std::size_t i = 0; i < want.size(); ++i) where.emplace(want[i], i);
    REQUIRE(where.size() == want.size());  // rows are distinct
    std::int64_t moved = 0;
    for (std::size_t i = 0; i < e0.size(); ++i) {
        moved += e0[i] != want[i];
        CHECK(where[e0[i]] < i + 50);
    }
    MESSAGE("stream over criteo_dev.tsv in 4 kB chunks: 409 rows = in-memory encoding; shuffle buffer 50 moved " << moved
                                                                                                              << " rows");
}

TEST_CASE("stream_source: a stream with unseen, hashed and growing ids encodes and batches without error") {
    // Training stream: users hashed, items growing (capacity 16, admit 2), a category vocab
    // fitted on the first file. The serving stream has unseen users, items and categories.
    std::string train = "click,user,item,cat\n", serve = "click,user,item,cat\n";
    for (int i = 0; i < 500; ++i) {
        train += std::to_string(i % 4 == 0);
        train.append(",u").append(std::to_string(i % 37)).append(",i").append(std::to_string((i * 7) % 41 + i / 50));
        train.append(",c").append(std::to_string(i % 5)).append("\n");
    }
    for (int i = 0; i < 40; ++i) {
        serve.append("0,new_u").append(std::to_string(i)).append(",i").append(std::to_string(i * 3));
        serve.append(",c").append(std::to_string(i % 8)).append("\n");
    }
    temp_file tf("stream_train.csv", train), sf("stream_serve.csv", serve);
    auto s = schema::from_spec("click=label; user=sparse(hash=64); item=sparse(grow=16, admit=2); cat=sparse; user=group");
    delimited_reader fr(tf.str());
    s.fit(fr);
    reader_options o;
    o.chunk_bytes = 333;
    delimited_reader tr(tf.str(), {}, o);
    stream_source<float, delimited_reader> train_src(tr, s, {32, 64, 1, encode_mode::train});
    std::int64_t rows = 0;
    for (int e = 0; e < 2; ++e) rows += static_cast<std::int64_t>(epoch_rows(train_src, e, s.layout()).size());
    CHECK(rows == 1000);
    const auto recycled = s.take_recycled();
    CHECK(!recycled.empty());  // the growing table evicted and recycled rows
    for (auto id : recycled) {
        CHECK(id >= s.layout().tables[1].offset);
        CHECK(id < s.layout().tables[1].offset + s.layout().tables[1].rows);
    }
    const std::string before = s.to_json();
    delimited_reader sr(sf.str());
    stream_source<float, delimited_reader> serve_src(sr, s, {8, 0, 0, encode_mode::serve});
    auto out = epoch_rows(serve_src, 0, s.layout());
    REQUIRE(out.size() == 40);
    const auto& L = s.layout();
    std::int64_t unseen_cat = 0;
    for (std::size_t i = 0; i < out.size(); ++i) {
        std::string u = "new_u";
        u += std::to_string(i);
        CHECK(out[i][0] == L.tables[0].offset + hash_bucket(u, 64));  // hashed: stable, no vocabulary
        unseen_cat += out[i][2] == L.tables[2].offset;                // c5..c7 never seen -> 0
    }
    CHECK(unseen_cat == 15);
    CHECK(s.to_json() == before);  // serving admitted nothing
    MESSAGE("stream: 2 epochs x 500 rows trained through a growing table (" << recycled.size()
                                                                           << " rows recycled); 40 serving rows, "
                                                                           << unseen_cat << " unseen categories -> 0");
}

TEST_CASE("row_batch: encoded requests gathered into a batch equal the batcher's batch of the same rows") {
    temp_file f("rb.csv",
                "click,item,hist,tags\n"
                "1,i1,i2|i3|i1,a:0.5|b:2\n"
                "0,i2,i1|i9|i3|i2|i1,\n"
                "1,i3,,c:1\n");
    auto s = schema::from_spec("click=label; item=sparse; hist=seq(share=item, max_len=3); tags=seq(weighted)");
    delimited_reader r(f.str());
    s.fit(r);
    r.rewind();
    auto e = s.encode_all<float>(r);
    batcher<float> bt(e.rows, 3);
    bt.start_epoch(0);
    xrec::batch<float> want;
    REQUIRE(bt.next(want));

    row_batch<float> rb(s.layout());
    encoded_row<float> row;
    const std::vector<std::vector<std::pair<std::string, std::string>>> reqs{
        {{"click", "1"}, {"item", "i1"}, {"hist", "i2|i3|i1"}, {"tags", "a:0.5|b:2"}},
        {{"item", "i2"}, {"hist", "i1|i9|i3|i2|i1"}},
        {{"click", "1"}, {"item", "i3"}, {"tags", "c:1"}}};
    for (int pass = 0; pass < 2; ++pass) {  // a reused row_batch gives the same batch
        rb.clear();
        for (auto& q : reqs) {
            s.encode_request_named<float>(q, row);
            rb.add(row);
        }
        auto got = rb.view();
        got.check("row_batch", s.layout());
        CHECK(got.rows == 3);
        CHECK(std::vector<std::int64_t>(got.sparse.data, got.sparse.data + 3) ==
              std::vector<std::int64_t>(want.sparse.data, want.sparse.data + 3));
        CHECK(std::vector<float>(got.labels.data, got.labels.data + 3) ==
              std::vector<float>(want.labels.data, want.labels.data + 3));
        for (std::size_t k = 0; k < 2; ++k) {
            CHECK(std::vector<std::int64_t>(got.sequences[k].values.begin(), got.sequences[k].values.end()) ==
                  std::vector<std::int64_t>(want.sequences[k].values.begin(), want.sequences[k].values.end()));
            CHECK(std::vector<std::int64_t>(got.sequences[k].offsets.begin(), got.sequences[k].offsets.end()) ==
                  std::vector<std::int64_t>(want.sequences[k].offsets.begin(), want.sequences[k].offsets.end()));
        }
        CHECK(std::vector<float>(got.sequence_weights[1].begin(), got.sequence_weights[1].end()) ==
              std::vector<float>{0.5f, 2.0f, 1.0f});
    }
}
