// Feature schema: fitting and encoding real Criteo / DeepCTR files, unseen values -> 0, stable
// hashing, growing vocabularies (admission, LRU eviction), shared tables, JSON round trip
// (a loaded schema encodes bit-identically), serving requests, bad values with file:line:column.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>


#include "support/checks.hpp"
#include "support/data.hpp"
#include "support/temp_file.hpp"
#include "xrec/data/hash.hpp"
#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"

using namespace xrec::data;
namespace fs = std::filesystem;

namespace {

using xrec_test::temp_file;

template <class T>
void check_same(const ctr_dataset<T>& a, const ctr_dataset<T>& b) {
    REQUIRE(a.size() == b.size());
    CHECK(a.sparse_column() == b.sparse_column());
    CHECK(a.dense_column() == b.dense_column());  // bit-identical floats
    CHECK(a.label_column() == b.label_column());
    CHECK(a.group_column() == b.group_column());
    for (std::int64_t k = 0; k < a.layout().num_sequences(); ++k) {
        CHECK(a.sequence_column_of(k).values == b.sequence_column_of(k).values);
        CHECK(a.sequence_column_of(k).offsets == b.sequence_column_of(k).offsets);
        CHECK(a.sequence_column_of(k).weights == b.sequence_column_of(k).weights);
    }
}

// Every id lies in its own table (batch::check through a batcher over all rows).
template <class T>
void check_ids(const ctr_dataset<T>& d) {
    batcher<T> b(d, std::max<std::int64_t>(d.size(), 1));
    b.start_epoch(0);
    xrec::batch<T> bt;
    REQUIRE(b.next(bt));
    CHECK_NOTHROW(bt.check("test", d.layout()));
}

}  // namespace

TEST_CASE("criteo_schema: fit on criteo_train, encode dev; unseen values -> 0; log dense; JSON round trip is bit-identical") {
    auto dir = xrec_test::data_dir("criteo");
    if (!dir) return;
    auto s = criteo_schema(1);
    auto tr = criteo_reader((*dir / "criteo_train.tsv").string());
    s.fit(tr);
    const auto& L = s.layout();
    CHECK(L.num_sparse() == 26);
    CHECK(L.num_dense() == 13);
    CHECK(L.num_tasks() == 1);
    CHECK(L.tasks[0] == "click");
    CHECK(L.tables.size() == 26);
    std::int64_t vocab_total = 0;
    for (auto& t : L.tables) vocab_total += t.rows;
    CHECK(L.total_rows() == vocab_total);

    tr.rewind();
    auto train = s.encode_all<float>(tr);
    CHECK(train.rows.size() == 7200);
    double pos = 0;
    for (auto y : train.rows.label_column()) pos += y;
    CHECK(pos / 7200 == doctest::Approx(0.215).epsilon(0.01));  // SOURCE.txt: 21.5% positives
    // On the training file, only missing values (empty) map to 0.
    std::int64_t train_zero = 0;
    for (std::int64_t i = 0; i < train.rows.size(); ++i)
        for (std::int64_t f = 0; f < 26; ++f)
            if (train.rows.sparse_row(i)[static_cast<std::size_t>(f)] == L.tables[static_cast<std::size_t>(f)].offset) ++train_zero;

    auto dv = criteo_reader((*dir / "criteo_dev.tsv").string());
    auto dev = s.encode_all<float>(dv);
    CHECK(dev.rows.size() == 409);
    check_ids(dev.rows);
    std::int64_t dev_zero = 0;
    for (std::int64_t i = 0; i < dev.rows.size(); ++i)
        for (std::int64_t f = 0; f < 26; ++f)
            if (dev.rows.sparse_row(i)[static_cast<std::size_t>(f)] == L.tables[static_cast<std::size_t>(f)].offset) ++dev_zero;
    CHECK(dev_zero > 0);  // unseen values of dev map to row 0 of their table
    // dev line 1: label 0, I1 = 3, I2 = -1 (sign-log: -log 2), I3 and I12 missing -> 0
    CHECK(dev.rows.label(0) == 0.0f);
    CHECK(dev.rows.dense_row(0)[0] == static_cast<float>(std::log1p(3.0)));
    CHECK(dev.rows.dense_row(0)[1] == static_cast<float>(-std::log1p(1.0)));
    CHECK(dev.rows.dense_row(0)[2] == 0.0f);
    CHECK(dev.rows.dense_row(0)[11] == 0.0f);

    // min_count 2 gives smaller vocabularies: fewer rows, more zeros on dev.
    auto s2 = criteo_schema(2);
    tr.rewind();
    s2.fit(tr);
    CHECK(s2.layout().total_rows() < L.total_rows());

    // JSON round trip
    const std::string js = s.to_json();
    auto back = schema::from_json(js);
    CHECK(back.to_json() == js);
    CHECK(back.layout().total_rows() == L.total_rows());
    auto dv2 = criteo_reader((*dir / "criteo_dev.tsv").string());
    auto dev2 = back.encode_all<float>(dv2);
    check_same(dev.rows, dev2.rows);

    // Serving: one raw row encodes as the file encoder did (same code path).
    auto dv3 = criteo_reader((*dir / "criteo_dev.tsv").string());
    raw_record rec;
    REQUIRE(dv3.next(rec));
    std::vector<std::string_view> cols(rec.columns.begin(), rec.columns.end());
    encoded_row<float> row;
    back.encode_request<float>(cols, row);
    CHECK(std::vector<std::int64_t>(row.sparse) ==
          std::vector<std::int64_t>(dev.rows.sparse_row(0).begin(), dev.rows.sparse_row(0).end()));
    CHECK(std::vector<float>(row.dense) == std::vector<float>(dev.rows.dense_row(0).begin(), dev.rows.dense_row(0).end()));
    // A request by name, label absent, one unseen categorical and everything else missing.
    back.encode_request_named<float>({{"C1", "never-seen"}, {"I1", "3"}}, row);
    CHECK(row.labels[0] == 0.0f);
    CHECK(row.sparse[0] == L.tables[0].offset);
    CHECK(row.dense[0] == static_cast<float>(std::log1p(3.0)));
    xrec_test::expect_error([&] { back.encode_request_named<float>({{"I2", "x1"}}, row); },
                            {"request:1:3: expected a number or an empty field in column 'I2', got 'x1'"});
    MESSAGE("criteo: " << L.total_rows() << " ids over 26 vocabularies (min_count 1), " << s2.layout().total_rows()
                       << " with min_count 2; missing ids on train " << train_zero << ", missing/unseen on dev " << dev_zero
                       << " of " << 409 * 26 << "; schema JSON " << js.size() << " bytes");
}

TEST_CASE("schema: vocabulary order, min_count and max_size; unseen and empty -> 0") {
    temp_file f("v.csv", "y,c\n1,a\n0,b\n1,a\n0,c\n1,b\n0,a\n1,d\n0,\n");
    sparse_options o;
    o.table = table_options::vocab(2);
    schema s;
    s.label("y").sparse("c", o);
    delimited_reader r(f.str());
    s.fit(r);
    // counts a:3 b:2 c:1 d:1 -> ids a=1, b=2; c, d (once) and "" -> 0
    CHECK(s.vocabulary(0) == std::vector<std::string>{"a", "b"});
    CHECK(s.layout().tables[0].rows == 3);
    r.rewind();
    auto e = s.encode_all<double>(r);
    CHECK(e.rows.sparse_column() == std::vector<std::int64_t>{1, 2, 1, 0, 2, 1, 0, 0});
    schema s1;
    o.table = table_options::vocab(1, 3);  // max_size 3 keeps a, b, then c (ties by value)
    s1.label("y").sparse("c", o);
    r.rewind();
    s1.fit(r);
    CHECK(s1.vocabulary(0) == std::vector<std::string>{"a", "b", "c"});
}

TEST_CASE("schema: hashed fields are stable (pinned buckets) and identical after reload") {
    temp_file f("h.csv", "y,u,v\n1,alice,x\n0,bob,y\n1,,z\n");
    sparse_options o;
    o.table = table_options::hashed(1000, 7);
    schema s;
    s.label("y").sparse("u", o);
    o.table = table_options::hashed(50);
    s.sparse("v", o);
    delimited_reader r(f.str());
    s.fit(r);
    CHECK(s.layout().tables[0].rows == 1000);
    CHECK(s.layout().tables[1].offset == 1000);
    r.rewind();
    auto e = s.encode_all<float>(r);
    const auto& sp = e.rows.sparse_column();
    CHECK(sp[0] == hash_bucket("alice", 1000, 7));
    CHECK(sp[2] == hash_bucket("bob", 1000, 7));
    CHECK(sp[4] == 0);  // empty -> bucket 0
    CHECK(sp[1] == 1000 + hash_bucket("x", 50));
    auto back = schema::from_json(s.to_json());
    r.rewind();
    check_same(e.rows, back.encode_all<float>(r).rows);
    MESSAGE("hashed: alice -> " << sp[0] << ", bob -> " << sp[2] << " of 1000 (seed 7); x -> " << sp[1] - 1000 << " of 50");
}

TEST_CASE("growing_vocabulary: admission after admit_count sightings, LRU eviction recycles rows, deterministic") {
    growing_vocabulary g(2, 2, 0);
    CHECK(g.observe("a") == 0);  // seen once: pending
    CHECK(g.observe("a") == 1);  // admitted, row 1
    CHECK(g.observe("b") == 0);
    CHECK(g.observe("b") == 2);
    CHECK(g.observe("a") == 1);  // a is now the most recently used
    CHECK(g.lookup("c") == 0);
    CHECK(g.observe("c") == 0);
    CHECK(g.observe("c") == 2);  // table full: b (least recently used) is evicted, c takes row 2
    CHECK(g.recycled() == std::vector<std::int64_t>{2});
    CHECK(g.evictions() == 1);
    CHECK(g.lookup("b") == 0);
    CHECK(g.lookup("a") == 1);
    CHECK(g.observe("") == 0);
    // A copy has its own consistent state.
    growing_vocabulary h = g;
    CHECK(h.observe("b") == 0);
    CHECK(h.observe("b") == 1);  // evicts a (LRU) in the copy only
    CHECK(g.lookup("a") == 1);
    CHECK(h.lookup("a") == 0);
    // Pending candidates are bounded: with pending_capacity 2 the oldest candidate is forgotten.
    growing_vocabulary p(4, 2, 2);
    p.observe("x");
    p.observe("y");
    p.observe("z");              // forgets x
    CHECK(p.observe("x") == 0);  // counted from 1 again
    CHECK(p.observe("x") == 1);
}

TEST_CASE("schema: a stream with growing and hashed fields; serving reads without admitting; JSON keeps the LRU state") {
    // 300 rows: item ids cycle through a widening window so that new items appear and old ones
    // fade; capacity 8, admit after 2 sightings.
    std::string text = "y,item,shop\n";
    for (int i = 0; i < 300; ++i) {
        text += std::to_string(i % 3 == 0 ? 1 : 0);
        text.append(",i").append(std::to_string(i / 10 + i % 5)).append(",s").append(std::to_string(i % 7)).append("\n");
    }
    temp_file f("g.csv", text);
    schema s = schema::from_spec("y=label; item=sparse(grow=8, admit=2); shop=sparse(hash=16)");
    delimited_reader r(f.str());
    s.fit(r);  // no-op for the growing table, fits nothing else: still needed to build the layout
    CHECK(s.layout().tables[0].rows == 9);
    CHECK(s.layout().tables[1].rows == 16);
    r.rewind();
    auto e = s.encode_all<float>(r);
    CHECK(e.rows.size() == 300);
    check_ids(e.rows);
    const auto& g = s.growing(0);
    CHECK(g.size() == 8);
    CHECK(g.evictions() > 0);
    auto rec = s.take_recycled();
    CHECK(static_cast<std::int64_t>(rec.size()) == g.evictions());
    CHECK(s.take_recycled().empty());
    std::int64_t zeros = 0;
    for (std::int64_t i = 0; i < e.rows.size(); ++i) zeros += e.rows.sparse_row(i)[0] == 0;
    CHECK(zeros > 0);  // first sightings map to 0 before admission
    // Same stream, same state (determinism).
    schema s2 = schema::from_spec("y=label; item=sparse(grow=8, admit=2); shop=sparse(hash=16)");
    r.rewind();
    s2.fit(r);
    r.rewind();
    check_same(e.rows, s2.encode_all<float>(r).rows);
    // Serving: the last admitted items keep their ids; unseen ones -> 0; nothing is admitted.
    const std::string js = s.to_json();
    auto back = schema::from_json(js);
    CHECK(back.to_json() == js);
    encoded_row<float> row;
    const std::string last_item = g.admitted().front().value;
    back.encode_request_named<float>({{"item", last_item}, {"shop", "s3"}}, row);
    CHECK(row.sparse[0] == g.admitted().front().id);
    CHECK(row.sparse[1] == 9 + hash_bucket("s3", 16));
    for (int k = 0; k < 3; ++k) back.encode_request_named<float>({{"item", "brand-new"}}, row);
    CHECK(row.sparse[0] == 0);
    CHECK(back.to_json() == js);  // serving changed nothing
    // Training goes on from the loaded state exactly as from the original.
    temp_file more("more.csv", "y,item,shop\n1,i99,s1\n1,i99,s1\n0,i3,s2\n");
    delimited_reader m1(more.str()), m2(more.str());
    auto a = s.encode_all<float>(m1);
    auto b = back.encode_all<float>(m2);
    check_same(a.rows, b.rows);
    CHECK(a.rows.sparse_row(1)[0] != 0);  // i99 admitted at its second sighting
    MESSAGE("growing table (capacity 8, admit 2) over 300 rows: " << g.evictions() << " evictions, " << zeros
                                                                  << " rows encoded 0 before admission");
}

TEST_CASE("schema: DIN-style shared table, multi-hot with max_len and weights") {
    temp_file f("din.csv",
                "click,item,hist,tags\n"
                "1,i1,i2|i3|i1,a:0.5|b:2\n"
                "0,i2,i1|i9|i3|i2|i1,\n"
                "1,i3,,c:1\n");
    schema s = schema::from_spec(
        "click=label; item=sparse; hist=seq(share=item, max_len=3, pool=sum); tags=seq(weighted, pool=mean)");
    delimited_reader r(f.str());
    s.fit(r);
    const auto& L = s.layout();
    REQUIRE(L.tables.size() == 2);  // item (shared with hist) and tags
    CHECK(L.sequences[0].table == L.sparse[0].table);
    CHECK(L.sequences[0].max_len == 3);
    CHECK(L.sequences[0].pooling == xrec::pooling::sum);
    CHECK(L.sequences[1].weighted);
    // item counts from both fields: i1 4, i2 3, i3 3, i9 1 -> i1=1, i2=2, i3=3, i9=4
    CHECK(s.vocabulary(0) == std::vector<std::string>{"i1", "i2", "i3", "i9"});
    r.rewind();
    auto e = s.encode_all<float>(r);
    CHECK(e.rows.sparse_column() == std::vector<std::int64_t>{1, 2, 3});
    auto h1 = e.rows.sequence(0, 1);  // newest 3 of i1 i9 i3 i2 i1
    CHECK(std::vector<std::int64_t>(h1.begin(), h1.end()) == std::vector<std::int64_t>{3, 2, 1});
    CHECK(e.rows.sequence(0, 2).empty());
    const auto toff = L.tables[1].offset;
    auto t0 = e.rows.sequence(1, 0);
    CHECK(std::vector<std::int64_t>(t0.begin(), t0.end()) == std::vector<std::int64_t>{toff + 1, toff + 2});
    auto w0 = e.rows.sequence_weights(1, 0);
    CHECK(std::vector<float>(w0.begin(), w0.end()) == std::vector<float>{0.5f, 2.0f});
    check_ids(e.rows);
    // a weighted item without a weight is refused with its position
    temp_file g("din_bad.csv", "click,item,hist,tags\n1,i1,i2,a:0.5|b\n");
    delimited_reader rb(g.str());
    xrec_test::expect_error([&] { s.encode_all<float>(rb); },
                            {g.str() + ":2:15: expected an item value:weight in column 'tags', got 'b'"});
}

TEST_CASE("schema::from_spec on DeepCTR's MovieLens sample: labels, group, time, genres multi-hot") {
    auto dir = xrec_test::data_dir("deepctr_samples");
    if (!dir) return;
    auto s = schema::from_spec(
        "rating=label(binarize=4, task=like); user_id=sparse; user_id=group; movie_id=sparse; gender=sparse;"
        "age=sparse; occupation=sparse; zip=sparse(hash=100); genres=seq(sep=pipe, max_len=4, pool=mean); timestamp=time");
    delimited_reader r((*dir / "movielens_sample.txt").string());
    s.fit(r);
    const auto& L = s.layout();
    CHECK(L.tasks == std::vector<std::string>{"like"});
    CHECK(L.num_sparse() == 6);
    CHECK(L.num_sequences() == 1);
    r.rewind();
    auto e = s.encode_all<float>(r);
    CHECK(e.rows.size() == 200);
    CHECK(e.times.size() == 200);
    CHECK(e.times[0] == 968035345);
    CHECK(e.rows.group(0) == 3299);
    CHECK(e.rows.label(0) == 1.0f);  // rating 4
    CHECK(e.rows.label(1) == 0.0f);  // rating 3
    CHECK(e.rows.sequence(0, 0).size() == 2);  // Comedy|Drama
    check_ids(e.rows);
    auto back = schema::from_json(s.to_json());
    r.rewind();
    auto e2 = back.encode_all<float>(r);
    check_same(e.rows, e2.rows);
    CHECK(e.times == e2.times);

    xrec_test::expect_error([] { schema::from_spec("x=dense(log, scale=2)"); }, {"unknown dense argument 'scale'"});
    xrec_test::expect_error([] { schema::from_spec("x=blob"); }, {"unknown kind 'blob'"});
    xrec_test::expect_error([] { schema::from_spec("I3..I1=dense"); }, {"expected a range like I1..I13"});
    schema bad = schema::from_spec("rating=label; nosuch=sparse");
    delimited_reader r2((*dir / "movielens_sample.txt").string());
    xrec_test::expect_error([&] { bad.fit(r2); }, {"field 'nosuch' reads column 'nosuch', which is not among the columns"});
}

TEST_CASE("schema on DeepCTR's Criteo CSV: standardised dense fields have mean 0 and sd 1 on the training data") {
    auto dir = xrec_test::data_dir("deepctr_samples");
    if (!dir) return;
    auto s = schema::from_spec("label=label; I1..I13=dense(log, standard); C1..C26=sparse(min_count=2)");
    delimited_reader r((*dir / "criteo_sample.txt").string());
    s.fit(r);
    r.rewind();
    auto e = s.encode_all<double>(r);
    CHECK(e.rows.size() == 200);
    for (std::int64_t j = 0; j < 13; ++j) {
        double m = 0, q = 0;
        for (std::int64_t i = 0; i < 200; ++i) m += e.rows.dense_row(i)[static_cast<std::size_t>(j)];
        m /= 200;
        for (std::int64_t i = 0; i < 200; ++i) q += std::pow(e.rows.dense_row(i)[static_cast<std::size_t>(j)] - m, 2);
        CHECK(std::abs(m) < 1e-12);
        CHECK(std::sqrt(q / 200) == doctest::Approx(1.0).epsilon(1e-9));
    }
    // the fitted means and sds survive JSON to the last bit
    auto back = schema::from_json(s.to_json());
    r.rewind();
    check_same(e.rows, back.encode_all<double>(r).rows);
}

TEST_CASE("schema: bad values stop with file:line:column or are skipped and counted") {
    temp_file f("bad.csv",
                "y,x,c,t\n"
                "1,2.5,a,100\n"
                "0,abc,b,101\n"    // bad number: line 3, column 3
                "yes,1,c,102\n"    // bad label: line 4, column 1
                "1,1,d,1.5\n"      // bad timestamp: line 5, column 7
                "1,1e400,d,103\n"  // not finite
                "0,3,e,104\n");
    auto make = [] {
        schema s;
        s.label("y").dense("x").sparse("c").time("t");
        return s;
    };
    {
        auto s = make();
        delimited_reader r(f.str());
        xrec_test::expect_error([&] { s.fit(r); }, {f.str() + ":3:3: expected a number or an empty field in column 'x', got 'abc'"});
    }
    const std::vector<std::pair<std::string, std::string>> one_line{
        {"yes,1,c,102", ":2:1: expected a numeric label in column 'y', got 'yes'"},
        {"1,1,d,1.5", ":2:7: expected an integer timestamp in column 't', got '1.5'"},
        {"1,1e400,d,103", ":2:3: expected a number or an empty field in column 'x', got '1e400'"},
    };
    for (auto& [line, msg] : one_line) {
        temp_file g("bad1.csv", "y,x,c,t\n" + line + "\n");
        auto s = make();
        delimited_reader r(g.str());
        xrec_test::expect_error([&] { s.fit(r); }, {g.str() + msg});
    }
    reader_options skip;
    skip.errors = on_error::skip;
    auto s = make();
    delimited_reader r(f.str(), {}, skip);
    s.fit(r);
    CHECK(r.skipped()[bad_line::number] == 3);
    CHECK(r.skipped()[bad_line::value] == 1);
    CHECK(s.vocabulary(0) == std::vector<std::string>{"a", "e"});  // skipped lines count nothing
    r.rewind();
    auto e = s.encode_all<float>(r);
    CHECK(e.rows.size() == 2);
    CHECK(e.times == std::vector<std::int64_t>{100, 104});
    CHECK(r.skipped().total() == 4);
}

TEST_CASE("libsvm and libffm schemas: weighted multi-hot fields; binarised labels") {
    temp_file f("a.svm", "+1 3:1 10:0.5\n-1 7:2 3:0.25\n+1 3:1\n");
    auto s = libsvm_schema();
    auto r = libsvm_reader(f.str());
    s.fit(r);
    const auto& L = s.layout();
    CHECK(L.num_sequences() == 1);
    CHECK(L.sequences[0].weighted);
    CHECK(s.vocabulary(0) == std::vector<std::string>{"3", "10", "7"});
    r.rewind();
    auto e = s.encode_all<float>(r);
    CHECK(e.rows.label_column() == std::vector<float>{1, 0, 1});
    auto ids = e.rows.sequence(0, 1);
    CHECK(std::vector<std::int64_t>(ids.begin(), ids.end()) == std::vector<std::int64_t>{3, 1});
    auto w = e.rows.sequence_weights(0, 1);
    CHECK(std::vector<float>(w.begin(), w.end()) == std::vector<float>{2.0f, 0.25f});
    check_ids(e.rows);

    temp_file g("a.ffm", "1 0:5:1 1:7:0.5 1:8:1\n0 1:5:2\n");
    auto sf = libffm_schema(2, table_options::hashed(64));
    auto rf = libffm_reader(g.str());
    sf.fit(rf);
    CHECK(sf.layout().num_sequences() == 2);
    CHECK(sf.layout().tables.size() == 1);  // one table shared by the field groups
    rf.rewind();
    auto ef = sf.encode_all<float>(rf);
    CHECK(ef.rows.sequence(0, 0).size() == 1);
    CHECK(ef.rows.sequence(1, 0).size() == 2);
    CHECK(ef.rows.sequence(0, 1).empty());
    CHECK(ef.rows.sequence(1, 1)[0] == hash_bucket("5", 64));
    CHECK(ef.rows.sequence(0, 0)[0] == hash_bucket("5", 64));  // same index, same row across fields
    auto back = schema::from_json(sf.to_json());
    rf.rewind();
    check_same(ef.rows, back.encode_all<float>(rf).rows);
}

TEST_CASE("schema::from_json refuses malformed text") {
    xrec_test::expect_error([] { schema::from_json("{\"format\":\"other\"}"); }, {"not an xrec schema"});
    xrec_test::expect_error([] { schema::from_json("{\"format\":\"xrec.schema\",\"version\":1}"); }, {"missing member 'columns'"});
    xrec_test::expect_error([] { schema::from_json("[1,"); }, {"invalid JSON"});
}

TEST_CASE("schema: empty input, garbage input and truncated lines never crash") {
    temp_file empty("empty.tsv", "");
    auto s = criteo_schema(1);
    auto r = criteo_reader(empty.str());
    xrec_test::expect_error([&] { s.fit(r); }, {"schema::fit: '" + empty.str() + "' has no usable rows"});
    temp_file header_only("header.csv", "y,x\n");
    schema h;
    h.label("y").dense("x");
    delimited_reader hr(header_only.str());
    xrec_test::expect_error([&] { h.fit(hr); }, {"has no usable rows"});

    // A schema over a CSV with every kind of field, fed seeded garbage under skip and stop.
    temp_file good("good.csv", "y,x,c,s,t\n1,2,a,p|q,10\n0,3,b,q,11\n");
    auto g = schema::from_spec("y=label; x=dense(log, standard); c=sparse(grow=4, admit=1); s=seq(max_len=2); t=time");
    delimited_reader gr(good.str());
    g.fit(gr);
    std::uint64_t x = 12345;
    auto next = [&] {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        return x;
    };
    const std::string alphabet = "y019,,,|||::.-e \"\n\n\x80";
    for (int trial = 0; trial < 30; ++trial) {
        std::string bytes = "y,x,c,s,t\n";
        const auto len = 100 + next() % 1500;
        for (std::uint64_t i = 0; i < len; ++i) bytes += alphabet[next() % alphabet.size()];
        temp_file f("garbage.csv", bytes);
        reader_options o;
        o.chunk_bytes = 1 + next() % 50;
        o.max_line_bytes = 40;
        o.errors = on_error::skip;
        delimited_reader rs(f.str(), {}, o);
        auto e = g.encode_all<float>(rs);
        CHECK(e.rows.size() >= 0);
        o.errors = on_error::stop;
        delimited_reader rt(f.str(), {}, o);
        try {
            g.encode_all<float>(rt);
        } catch (const xrec::error& err) {
            CHECK(std::string(err.what()).find(f.str() + ":") == 0);
        }
    }
}
