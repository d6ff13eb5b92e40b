// Streaming readers: real Criteo / DeepCTR files, lines straddling chunk borders, and bad input
// for every reader (each message carries file:line:column and what was expected).
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>


#include "support/checks.hpp"
#include "support/data.hpp"
#include "support/temp_file.hpp"
#include "xrec/data/readers.hpp"

using namespace xrec::data;
namespace fs = std::filesystem;

namespace {

// A file in the temp folder holding `bytes`, removed at the end of the test.
using xrec_test::temp_file;

template <class Reader>
std::vector<std::vector<std::string>> read_all(Reader& r) {
    std::vector<std::vector<std::string>> out;
    raw_record rec;
    while (r.next(rec)) {
        std::vector<std::string> row;
        for (auto c : rec.columns) row.emplace_back(c);
        out.push_back(std::move(row));
    }
    return out;
}

reader_options tiny(std::size_t chunk, on_error e = on_error::stop) {
    reader_options o;
    o.chunk_bytes = chunk;
    o.errors = e;
    return o;
}

}  // namespace

TEST_CASE("criteo_reader: the real Criteo files, whole and in 7-byte chunks, give the same records") {
    auto dir = xrec_test::data_dir("criteo");
    if (!dir) return;
    auto big = criteo_reader((*dir / "criteo_train.tsv").string());
    auto a = read_all(big);
    CHECK(a.size() == 7200);
    CHECK(big.header().size() == 40);
    CHECK(big.header()[14] == "C1");
    CHECK(a[0].size() == 40);
    CHECK(a[0][0] == "0");
    CHECK(a[0][14] == "68fd1e64");
    CHECK(a[0][13] == "2");   // I13 of the first line
    CHECK(a[0][12].empty());  // I12 is missing on the first line
    CHECK(big.skipped().total() == 0);
    CHECK(big.bytes_read() == static_cast<std::int64_t>(fs::file_size(*dir / "criteo_train.tsv")));

    auto small = criteo_reader((*dir / "criteo_dev.tsv").string(), tiny(7));
    auto b = read_all(small);
    auto whole = criteo_reader((*dir / "criteo_dev.tsv").string());
    CHECK(b == read_all(whole));
    CHECK(b.size() == 409);
    MESSAGE("criteo_train.tsv: " << a.size() << " records of 40 columns; criteo_dev.tsv identical with 7-byte chunks ("
                                 << b.size() << " records)");
}

TEST_CASE("delimited_reader: DeepCTR's CSV samples with a header and quoted titles") {
    auto dir = xrec_test::data_dir("deepctr_samples");
    if (!dir) return;
    delimited_reader r((*dir / "criteo_sample.txt").string());
    auto rows = read_all(r);
    CHECK(rows.size() == 200);
    CHECK(r.header().size() == 40);
    CHECK(r.header()[0] == "label");
    CHECK(rows[0][3] == "260.0");

    delimited_reader m((*dir / "movielens_sample.txt").string(), {}, tiny(64));
    auto mr = read_all(m);
    CHECK(mr.size() == 200);
    CHECK(m.header() == std::vector<std::string>{"user_id", "movie_id", "rating", "timestamp", "title", "genres", "gender",
                                                 "age", "occupation", "zip"});
    // A quoted title with a comma stays one field, quotes removed.
    bool saw_comma = false;
    for (auto& row : mr) {
        REQUIRE(row.size() == 10);
        if (row[4].find(',') != std::string::npos) saw_comma = true;
        CHECK(row[4].find('"') == std::string::npos);
    }
    CHECK(saw_comma);
}

TEST_CASE("delimited_reader: quoting, trailing empty fields, CRLF and a last line without newline") {
    temp_file lf("lf.csv", "a,b,c\n1,\"x,\"\"y\"\"\",\n2,,z");
    temp_file crlf("crlf.csv", "a,b,c\r\n1,\"x,\"\"y\"\"\",\r\n\r\n2,,z\r\n");
    delimited_reader r1(lf.str()), r2(crlf.str());
    auto a = read_all(r1), b = read_all(r2);
    CHECK(a == b);
    REQUIRE(a.size() == 2);
    CHECK(a[0] == std::vector<std::string>{"1", "x,\"y\"", ""});
    CHECK(a[1] == std::vector<std::string>{"2", "", "z"});
    CHECK(r2.header() == std::vector<std::string>{"a", "b", "c"});
}

TEST_CASE("delimited_reader: byte columns and line numbers point at the field") {
    temp_file f("pos.tsv", "h1\th2\th3\nx\tyy\tzzz\n\nq\tw\te\n");
    delimited_options d;
    d.delimiter = '\t';
    delimited_reader r(f.str(), d);
    raw_record rec;
    REQUIRE(r.next(rec));
    CHECK(rec.line == 2);
    CHECK(rec.column_of(0) == 1);
    CHECK(rec.column_of(1) == 3);
    CHECK(rec.column_of(2) == 6);
    REQUIRE(r.next(rec));
    CHECK(rec.line == 4);  // the blank line 3 is passed over but counted
    CHECK_FALSE(r.next(rec));
}

TEST_CASE("delimited_reader: wrong field count stops with file:line:column, or is skipped and counted") {
    temp_file f("count.csv", "a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n");
    xrec_test::expect_error(
        [&] {
            delimited_reader r(f.str());
            read_all(r);
        },
        {f.str() + ":3:4: expected 3 fields, got 2"});
    reader_options skip;
    skip.errors = on_error::skip;
    delimited_reader r(f.str(), {}, skip);
    auto rows = read_all(r);
    CHECK(rows.size() == 2);
    CHECK(r.skipped()[bad_line::field_count] == 2);
    CHECK(r.skipped().total() == 2);
    CHECK(r.skipped().first_message == f.str() + ":3:4: expected 3 fields, got 2");
    // Too many fields: the column of the first extra field.
    xrec_test::expect_error(
        [&] {
            temp_file g("count2.csv", "a,b,c\n6,7,8,9\n");
            delimited_reader r2(g.str());
            read_all(r2);
        },
        {":2:7: expected 3 fields, got 4"});
}

TEST_CASE("criteo_reader: bad input messages (field count, over-long, bad UTF-8, unterminated quote)") {
    std::string good = "0";
    for (int i = 1; i < 40; ++i) good.append(1, '\t').append(std::to_string(i));  // not "\t" + s: GCC 12 -Wrestrict false positive
    std::string line39 = "1";
    for (int i = 1; i < 39; ++i) line39.append(1, '\t').append(std::to_string(i));
    temp_file f("crit.tsv", good + "\n" + line39 + "\n");
    xrec_test::expect_error(
        [&] {
            auto r = criteo_reader(f.str());
            read_all(r);
        },
        {f.str() + ":2:", "expected 40 fields, got 39"});

    // over-long: a 200-byte line with max_line_bytes 64, in 16-byte chunks; skip goes on after it
    temp_file g("long.tsv", "a\tb\n" + std::string(200, 'x') + "\nc\td\n");
    reader_options o = tiny(16);
    o.max_line_bytes = 64;
    delimited_options d;
    d.delimiter = '\t';
    d.header = false;
    xrec_test::expect_error(
        [&] {
            delimited_reader r(g.str(), d, o);
            read_all(r);
        },
        {g.str() + ":2:65: expected a line of at most 64 bytes, got a longer line"});
    o.errors = on_error::skip;
    delimited_reader r(g.str(), d, o);
    raw_record rec;
    REQUIRE(r.next(rec));
    CHECK(rec.line == 1);
    REQUIRE(r.next(rec));
    CHECK(rec.line == 3);
    CHECK(std::string(rec[0]) == "c");
    CHECK_FALSE(r.next(rec));
    CHECK(r.skipped()[bad_line::too_long] == 1);
    CHECK(r.skipped().total() == 1);

    // bad UTF-8 at byte 3 of line 2
    temp_file u("utf8.tsv", good + "\n" + "1\t\xff\xfe" + good.substr(3) + "\n");
    xrec_test::expect_error(
        [&] {
            auto rr = criteo_reader(u.str());
            read_all(rr);
        },
        {u.str() + ":2:3: expected UTF-8 text, got byte 0xff"});

    temp_file q("quote.csv", "a,b\n\"open,1\n");
    xrec_test::expect_error(
        [&] {
            delimited_reader rq(q.str());
            read_all(rq);
        },
        {q.str() + ":2:1: expected a closing quote on the same line, got end of line"});
}

TEST_CASE("readers: empty and missing files") {
    temp_file e("empty.csv", "");
    xrec_test::expect_error([&] { delimited_reader r(e.str()); }, {e.str() + ":1:1: expected a header line, got an empty file"});
    auto c = criteo_reader(e.str());  // no header expected: an empty file has no records
    raw_record rec;
    CHECK_FALSE(c.next(rec));
    xrec_test::expect_error([&] { auto r = criteo_reader("/nonexistent/dir/x.tsv"); },
                            {"cannot open '/nonexistent/dir/x.tsv'", "No such file"});
    xrec_test::expect_error([&] { auto r = libsvm_reader("/nonexistent/x.svm"); }, {"cannot open '/nonexistent/x.svm'"});
}

TEST_CASE("libsvm_reader: tokens with columns; bad label, token and value messages; skip counts") {
    temp_file f("a.svm", "+1 3:1 10:0.5\n-1  7:2\t9:1e-3\n0\n");
    auto r = libsvm_reader(f.str(), tiny(5));
    auto rows = read_all(r);
    REQUIRE(rows.size() == 3);
    CHECK(rows[0] == std::vector<std::string>{"+1", "3:1", "10:0.5"});
    CHECK(rows[1] == std::vector<std::string>{"-1", "7:2", "9:1e-3"});
    CHECK(rows[2] == std::vector<std::string>{"0"});
    CHECK(r.header() == std::vector<std::string>{"label", "features"});

    const std::string bad = "1 3:1\nyes 3:1\n1 3:1 4-1\n1 x:1\n1 3:abc\n1 -2:1\n1 3:1\n";
    temp_file g("bad.svm", bad);
    const std::vector<std::string> expected_msgs{
        ":2:1: expected a numeric label, got 'yes'",
        ":3:7: expected a token idx:val, got '4-1'",
        ":4:3: expected a non-negative index, got 'x:1'",
        ":5:3: expected a numeric value after ':', got '3:abc'",
        ":6:3: expected a non-negative index, got '-2:1'",
    };
    // Stop: each bad line alone gives its message.
    std::vector<std::string> lines{"yes 3:1", "1 3:1 4-1", "1 x:1", "1 3:abc", "1 -2:1"};
    for (std::size_t i = 0; i < lines.size(); ++i) {
        temp_file one("one.svm", "1 3:1\n" + lines[i] + "\n");
        xrec_test::expect_error(
            [&] {
                auto rr = libsvm_reader(one.str());
                read_all(rr);
            },
            {one.str() + ":2:" + expected_msgs[i].substr(expected_msgs[i].find(':', 1) + 1)});
    }
    reader_options o;
    o.errors = on_error::skip;
    auto s = libsvm_reader(g.str(), o);
    CHECK(read_all(s).size() == 2);
    CHECK(s.skipped()[bad_line::number] == 2);  // the label and the value
    CHECK(s.skipped()[bad_line::token] == 3);
    CHECK(s.skipped().first_message == g.str() + expected_msgs[0]);
}

TEST_CASE("libffm_reader: field:idx:val tokens; malformed tokens refused") {
    temp_file f("a.ffm", "1 0:3:1 1:7:0.5\r\n0 2:1:1\r\n");
    auto r = libffm_reader(f.str());
    auto rows = read_all(r);
    REQUIRE(rows.size() == 2);
    CHECK(rows[0] == std::vector<std::string>{"1", "0:3:1", "1:7:0.5"});
    const std::vector<std::pair<std::string, std::string>> cases{
        {"1 3:1", ":1:3: expected a token field:idx:val, got '3:1'"},
        {"1 0:3:1:2", ":1:3: expected a token field:idx:val, got '0:3:1:2'"},
        {"1 a:3:1", ":1:3: expected a non-negative field number, got 'a:3:1'"},
        {"1 0:b:1", ":1:3: expected a non-negative index, got '0:b:1'"},
        {"1 0:3:z", ":1:3: expected a numeric value after ':', got '0:3:z'"},
        {"1 0:3:nan", ":1:3: expected a numeric value after ':', got '0:3:nan'"},
    };
    for (auto& [line, msg] : cases) {
        temp_file g("bad.ffm", line + "\n");
        xrec_test::expect_error(
            [&] {
                auto rr = libffm_reader(g.str());
                read_all(rr);
            },
            {g.str() + msg});
    }
}

TEST_CASE("line_source: memory stays bounded on a long file of long lines skipped in small chunks") {
    // 50 lines of 10 kB, max_line_bytes 1000, chunk 256: all refused as too long, none crashes,
    // and the short lines between them are read.
    std::string s;
    for (int i = 0; i < 50; ++i) s += std::string(10000, 'a') + "\nok\n";
    temp_file f("many.txt", s);
    reader_options o = tiny(256, on_error::skip);
    o.max_line_bytes = 1000;
    delimited_options d;
    d.header = false;
    delimited_reader r(f.str(), d, o);
    auto rows = read_all(r);
    CHECK(rows.size() == 50);
    CHECK(r.skipped()[bad_line::too_long] == 50);
    raw_record rec;
    r.rewind();
    REQUIRE(r.next(rec));
    CHECK(rec.line == 2);
}

TEST_CASE("readers: random garbage never crashes; stop throws xrec::error, skip counts every refused line") {
    // Seeded garbage: mostly printable text with tabs, commas, colons, quotes, CR/LF and bytes
    // >= 0x80 (so some lines are bad UTF-8), plus long lines.
    std::uint64_t x = 0x9e3779b97f4a7c15ull;
    auto next = [&] {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        return x;
    };
    const std::string alphabet = "abc019:.,\t \"\r\n-+eE\x80\xc3\xa9\xff";
    for (int trial = 0; trial < 40; ++trial) {
        std::string bytes;
        const auto len = 200 + next() % 3000;
        for (std::uint64_t i = 0; i < len; ++i) bytes += alphabet[next() % alphabet.size()];
        temp_file f("garbage" + std::to_string(trial), bytes);
        reader_options o = tiny(1 + next() % 64, on_error::skip);
        o.max_line_bytes = 16 + next() % 200;
        auto run = [&](auto make) {
            auto r = make(o);
            std::int64_t n = 0;
            raw_record rec;
            while (r.next(rec)) {
                ++n;
                for (std::size_t k = 0; k < rec.size(); ++k) CHECK(rec.column_of(k) >= 1);
            }
            CHECK(n + r.skipped().total() >= 0);
            reader_options stop = o;
            stop.errors = on_error::stop;
            try {
                auto rs = make(stop);
                while (rs.next(rec)) {
                }
            } catch (const xrec::error& e) {
                CHECK(std::string(e.what()).find(f.str() + ":") == 0);
            }
        };
        delimited_options d;
        d.header = false;
        d.delimiter = trial % 2 ? '\t' : ',';
        run([&](reader_options ro) { return delimited_reader(f.str(), d, ro); });
        run([&](reader_options ro) { return libsvm_reader(f.str(), ro); });
        run([&](reader_options ro) { return libffm_reader(f.str(), ro); });
    }
}
