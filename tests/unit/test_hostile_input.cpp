// Hostile input: checkpoints that are corrupt, truncated, oversized or lying, a committed
// checkpoint of another format version, and the regressions of the fuzz targets
// (tests/fuzz/). Every refusal is checked by its message, not only by the throw: the
// message must name the file (or the field) and the problem.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "support/temp_file.hpp"
#include "xrec/backend/tags.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/data/interactions.hpp"
#include "xrec/data/schema.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/safetensors.hpp"

namespace xd = xrec::data;
using xrec::io::load_checkpoint;
using xrec::io::safetensors_file;

namespace {

std::string le64(std::uint64_t n) {
    std::string s(8, '\0');
    for (int k = 0; k < 8; ++k) s[static_cast<std::size_t>(k)] = static_cast<char>(n >> (8 * k));
    return s;
}
// A safetensors file: length, header, `data` bytes.
std::string make_file(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }
std::string floats(std::vector<float> v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4); }

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const xrec::error& e) {
        return e.what();
    }
    return "";
}

// The store every checkpoint case below targets: "w" [2, 3] and "b" [2].
struct tiny {
    xrec::param_store<float, xrec::cpu<>> store{3};
    tiny() {
        store.add("w", {2, 3}, xrec::init::uniform(-1, 1));
        store.add("b", {2}, xrec::init::uniform(-1, 1));
    }
    std::vector<float> values() {
        std::vector<float> out;
        for (auto& t : store.named_tensors()) out.insert(out.end(), t.data, t.data + t.s.numel());
        return out;
    }
};

const std::string meta = R"("__metadata__":{"xrec_format_version":"1"})";
const std::string w_entry = R"("w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]})";
const std::string b_entry = R"("b":{"dtype":"F32","shape":[2],"data_offsets":[24,32]})";
const std::string good_data = floats({1, 2, 3, 4, 5, 6, 7, 8});
const std::string good_header = "{" + meta + "," + w_entry + "," + b_entry + "}";

}  // namespace

TEST_CASE("hostile checkpoints: each defect is refused with a message naming the file and the problem, store untouched") {
    // the base case loads
    {
        tiny m;
        xrec_test::temp_file f("good.safetensors", make_file(good_header, good_data));
        load_checkpoint(f.str(), m.store);
        CHECK(m.values() == std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8});
    }
    std::string corrupt = make_file(good_header, good_data);
    corrupt[8 + 20] = '\x07';  // a control byte inside the metadata's key
    std::string non_utf8 = good_header;
    non_utf8.replace(non_utf8.find("\"b\""), 3, "\"\xC3\x28\"");

    struct hostile {
        const char* what;
        std::string bytes;
        std::vector<std::string> expect;
    };
    const std::vector<hostile> cases = {
        {"corrupt header byte", corrupt, {"bad header: invalid JSON at byte", "control character in string"}},
        {"truncated in the data", make_file(good_header, good_data).substr(0, 8 + good_header.size() + 30),
         {"tensor 'b': data_offsets [24, 32] outside the data buffer of 30 bytes (file truncated?)"}},
        {"truncated in the header", make_file(good_header, good_data).substr(0, 40), {"header length", "exceeds the 32 bytes"}},
        {"oversized: bytes appended", make_file(good_header, good_data + "junk"), {"4 trailing bytes after the last tensor"}},
        {"offsets outside the file",
         make_file("{" + meta + R"(,"w":{"dtype":"F32","shape":[2,3],"data_offsets":[16,40]},)" + b_entry + "}", good_data),
         {"tensor 'w': data_offsets [16, 40] outside the data buffer of 32 bytes"}},
        {"offsets far outside the file",
         make_file("{" + meta + "," + w_entry + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4000000000,4000000008]}})", good_data),
         {"tensor 'b': data_offsets [4000000000, 4000000008] outside the data buffer of 32 bytes"}},
        {"overlapping tensors",
         make_file("{" + meta + "," + w_entry + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})", good_data.substr(0, 24)),
         {"tensors 'w' and 'b' overlap"}},
        {"shape does not match the data",
         make_file("{" + meta + R"(,"w":{"dtype":"F32","shape":[3,3],"data_offsets":[0,24]},)" + b_entry + "}", good_data),
         {"tensor 'w': shape [3, 3] of F32 needs 36 bytes but data_offsets [0, 24] span 24"}},
        {"unknown dtype",
         make_file("{" + meta + R"(,"w":{"dtype":"F17","shape":[2,3],"data_offsets":[0,24]},)" + b_entry + "}", good_data),
         {"tensor 'w': unknown dtype 'F17'"}},
        {"duplicate tensor names", make_file("{" + meta + "," + w_entry + "," + w_entry + "," + b_entry + "}", good_data),
         {"duplicate tensor name 'w'"}},
        {"header length larger than the file", le64(1000) + good_header + good_data,
         {"header length 1000 exceeds the", "bytes after the length field"}},
        {"header length of 2^64 - 1", le64(~std::uint64_t{0}) + good_header, {"is absurdly large"}},
        {"duplicate __metadata__", make_file("{" + meta + "," + meta + "," + w_entry + "," + b_entry + "}", good_data),
         {"duplicate key '__metadata__'"}},
        {"duplicate metadata key",
         make_file(R"({"__metadata__":{"xrec_format_version":"1","xrec_format_version":"2"},)" + w_entry + "," + b_entry + "}",
                   good_data),
         {"duplicate metadata key 'xrec_format_version'"}},
        {"non-UTF-8 tensor name", make_file(non_utf8, good_data), {"bad header: invalid UTF-8 at byte"}},
        {"no format version", make_file("{" + w_entry + "," + b_entry + "}", good_data),
         {"not an xrec checkpoint (no \"xrec_format_version\" in __metadata__)"}},
        {"integer dtype where floats are expected",
         make_file("{" + meta + R"(,"w":{"dtype":"I32","shape":[2,3],"data_offsets":[0,24]},)" + b_entry + "}", good_data),
         {"tensor 'w' has dtype I32, not convertible to float"}},
        {"NaN in the values", make_file(good_header, floats({1, 2, 3, 4, std::numeric_limits<float>::quiet_NaN(), 6, 7, 8})),
         {"tensor 'w' holds a non-finite value (NaN or infinity) at element 4"}},
        {"infinity in the values", make_file(good_header, floats({1, 2, 3, 4, 5, 6, 7, -std::numeric_limits<float>::infinity()})),
         {"tensor 'b' holds a non-finite value (NaN or infinity) at element 1"}},
        {"empty file", "", {"file is 0 bytes, shorter than the 8-byte header length"}},
    };
    for (const auto& c : cases) {
        tiny m;
        const auto before = m.values();
        xrec_test::temp_file f("hostile.safetensors", c.bytes);
        const std::string msg = error_of([&] { load_checkpoint(f.str(), m.store); });
        const std::string context = std::string(c.what) + ": " + msg;
        INFO(context);
        CHECK(msg.find("'" + f.str() + "'") != std::string::npos);
        for (const auto& e : c.expect) CHECK(msg.find(e) != std::string::npos);
        CHECK(m.values() == before);
        // the in-memory reader gives the same verdict, naming what it was given as the name
        const auto* p = reinterpret_cast<const std::byte*>(c.bytes.data());
        const std::string mem = error_of([&] {
            const auto sf = safetensors_file::from_bytes(std::span<const std::byte>(p, c.bytes.size()), "request.bin");
            load_checkpoint(sf, m.store);
        });
        CHECK(mem.find("'request.bin'") != std::string::npos);
        for (const auto& e : c.expect) CHECK(mem.find(e) != std::string::npos);
    }
}

TEST_CASE("hostile checkpoints: non-finite values load only with allow_nonfinite (the policy in checkpoint.hpp)") {
    tiny m;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    xrec_test::temp_file f("nan.safetensors", make_file(good_header, floats({nan, 2, 3, 4, 5, 6, 7, 8})));
    xrec::io::checkpoint_load_options opt;
    opt.allow_nonfinite = true;
    load_checkpoint(f.str(), m.store, {}, opt);
    const auto v = m.values();
    CHECK(std::isnan(v[0]));
    CHECK(v[7] == 8);
    // F16 and BF16 infinities are found too (converted, then checked)
    const std::uint16_t h[2] = {0x3C00, 0x7C00};  // F16 1.0, +inf
    xrec_test::temp_file g("f16.safetensors",
                           make_file(R"({"__metadata__":{"xrec_format_version":"1"},"b":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})",
                                     std::string(reinterpret_cast<const char*>(h), 4)));
    xrec::param_store<double, xrec::cpu<>> s2;
    s2.add("b", {2}, xrec::init::zeros());
    CHECK(error_of([&] { load_checkpoint(g.str(), s2); }).find("tensor 'b' holds a non-finite value") != std::string::npos);
}

TEST_CASE("checkpoint format version: the committed version-0 checkpoint is refused naming both versions") {
    // tests/fixtures/checkpoint_format_v0.safetensors, written by gen_checkpoint_format_v0.py:
    // a valid checkpoint of "w" [2, 3] whose metadata says format version "0".
    const std::string path = std::string(XREC_FIXTURE_DIR) + "/checkpoint_format_v0.safetensors";
    const auto f = safetensors_file::open(path);  // a well-formed file: only the version is wrong
    REQUIRE(f.metadata().at("xrec_format_version") == "0");
    REQUIRE(f.read<float>("w") == std::vector<float>{0, 1, 2, 3, 4, 5});
    xrec::param_store<float, xrec::cpu<>> store;
    store.add("w", {2, 3}, xrec::init::constant(9));
    const std::string msg = error_of([&] { load_checkpoint(path, store); });
    INFO(msg);
    CHECK(msg.find("checkpoint_format_v0.safetensors") != std::string::npos);
    CHECK(msg.find("checkpoint format version '0' is not the version '1'") != std::string::npos);
    for (int i = 0; i < 6; ++i) CHECK(store.named_tensors()[0].data[i] == 9.0f);
}

// ---- regressions of the fuzz targets and of the review that went with them --------------

TEST_CASE("fuzz regression: a shape with a zero extent after huge ones is refused (numel would overflow)") {
    // [2^32, 2^32, 0] holds 0 elements and 0 bytes, so it passed the size check, but
    // shape::numel() multiplies left to right and overflowed int64 (undefined behaviour,
    // an UBSan report in read()) before reaching the 0.
    const std::string h = R"({"z":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})";
    const std::string bytes = make_file(h, "");
    const std::string msg = error_of([&] {
        (void)safetensors_file::from_bytes(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())), "zero.st");
    });
    CHECK(msg.find("safetensors: 'zero.st': tensor 'z': shape overflows") != std::string::npos);
    // a modest empty tensor with a zero extent still reads
    const std::string ok = make_file(R"({"z":{"dtype":"F32","shape":[3,0,7],"data_offsets":[0,0]}})", "");
    const auto f = safetensors_file::from_bytes(std::as_bytes(std::span<const char>(ok.data(), ok.size())));
    CHECK(f.read<float>("z").empty());
    CHECK(f.shape_of("z").str() == "[3, 0, 7]");
}

TEST_CASE("fuzz regression (fuzz_interactions): a sequence file with a huge item id is refused, not allocated") {
    // The input the fuzzer found: "0\r266666666\r" sized raw_item to 266,666,666 entries
    // (2 GB) for a 13-byte file.
    xrec_test::temp_file f("seq.txt", "0\r266666666\r");
    const std::string msg = error_of([&] { (void)xd::load_user_sequences(f.path); });
    CHECK(msg.find("load_user_sequences: " + f.str() + ": item id 266666666 exceeds the 1 events of the file") !=
          std::string::npos);
    xrec_test::temp_file g("seq_ok.txt", "1 1 2 3\n2 3 2\n");
    const auto s = xd::load_user_sequences(g.path);
    CHECK(s.n_items == 3);
    CHECK(s.rows() == 2);
}

TEST_CASE("review regression: growing_vocabulary::restore refuses states observe() cannot handle") {
    using gv = xd::growing_vocabulary;
    auto restore_error = [](std::vector<gv::entry> admitted, std::vector<gv::entry> pending, std::int64_t next_id) {
        gv g(2, 2, 0);
        const std::string msg = error_of([&] { g.restore(std::move(admitted), std::move(pending), next_id, 0); });
        CHECK(g.size() == 0);  // a refused restore leaves nothing half-restored
        return msg;
    };
    // next_id past the capacity with nothing admitted: the next admission evicted
    // live_.back() of an empty list (undefined behaviour)
    CHECK(restore_error({}, {}, 3).find("0 admitted values but ids 1..2 handed out") != std::string::npos);
    CHECK(restore_error({}, {}, 0).find("next_id 0 outside 1..3") != std::string::npos);
    CHECK(restore_error({{"a", 1, 1}, {"b", 1, 1}}, {}, 3).find("id 1 held by two values") != std::string::npos);
    CHECK(restore_error({{"a", 1, 1}}, {{"a", 0, 1}}, 2).find("'a' is both admitted and pending") != std::string::npos);
    CHECK(restore_error({}, {{"p", 0, 1}, {"p", 0, 1}}, 1).find("value 'p' pending twice") != std::string::npos);
    CHECK(restore_error({}, {{"p", 0, 2}}, 1).find("count 2 (expected id 0 and a count in 1..1)") != std::string::npos);
    CHECK(restore_error({{"", 1, 1}}, {}, 2).find("is empty") != std::string::npos);
    CHECK(error_of([] { gv g(std::int64_t{1} << 62, 1, 0); }).find("exceeds the limit") != std::string::npos);
    // a reachable state restores and keeps working
    gv g(2, 2, 0);
    g.restore({{"b", 2, 3}, {"a", 1, 2}}, {{"c", 0, 1}}, 3, 1);
    CHECK(g.lookup("a") == 1);
    CHECK(g.observe("c") == 1);  // admitted on its 2nd sighting, evicting the LRU value "a"
    CHECK(g.lookup("a") == 0);
}

TEST_CASE("review regression: schema::from_json refuses fitted state that encoding would trust") {
    // A fitted schema with a hashed, a growing and a vocabulary table, a standardised dense
    // field and a split multi-hot field; each case edits its JSON.
    auto s = xd::schema::from_spec("y=label; x=dense(standard); h=sparse(hash=8); g=sparse(grow=2,admit=2); v=sparse; m=seq(max_len=2)");
    s.bind({"y", "x", "h", "g", "v", "m"});
    s.start_fit();
    for (const std::vector<std::string>& r : {std::vector<std::string>{"1", "2", "a", "b", "c", "d|e"},
                                              std::vector<std::string>{"0", "4", "a", "b", "e", "d"}}) {
        xd::request_record rr(r);
        s.fit_record(rr.record());
    }
    s.finish_fit();
    xd::encoded_row<float> row;
    for (int i = 0; i < 3; ++i) {
        xd::request_record rr({"1", "2", "a", i ? "b" : "z", "c", "d"});
        s.encode(rr.record(), row);
    }
    const std::string good = s.to_json();
    CHECK(xd::schema::from_json(good).to_json() == good);

    auto edited = [&](const std::string& from, const std::string& to) {
        std::string j = good;
        const auto at = j.find(from);
        REQUIRE_MESSAGE(at != std::string::npos, from);
        j.replace(at, from.size(), to);
        return error_of([&] { (void)xd::schema::from_json(j); });
    };
    CHECK(edited("\"buckets\":8", "\"buckets\":1").find("table 'h': 1 buckets (a hashed table has 2..2^62)") != std::string::npos);
    CHECK(edited("\"buckets\":8", "\"buckets\":9223372036854775807").find("buckets") != std::string::npos);
    CHECK(edited("\"capacity\":2", "\"capacity\":4611686018427387904").find("exceeds the limit") != std::string::npos);
    CHECK(edited("\"next_id\":2", "\"next_id\":3").find("1 admitted values but ids 1..2 handed out") != std::string::npos);
    CHECK(edited("\"values\":[\"c\",\"e\"]", "\"values\":[\"c\",\"c\"]").find("table 'v': a vocabulary value appears twice") !=
          std::string::npos);
    CHECK(edited("\"values\":[\"c\",\"e\"]", "\"values\":[\"\"]").find("an empty vocabulary value") != std::string::npos);
    CHECK(edited("\"sd\":1", "\"sd\":0").find("dense field 'x'") != std::string::npos);
    CHECK(edited("\"max_len\":2", "\"max_len\":-1").find("field 'm': negative max_len -1") != std::string::npos);
    CHECK(edited("\"source\":\"split\"", "\"source\":\"ffm\"").find("libffm field 'm' needs ffm_field >= 0") != std::string::npos);
}
