#include <doctest/doctest.h>
#include <sys/stat.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "xrec/io/safetensors.hpp"

namespace fs = std::filesystem;
using xrec::error;
using xrec::shape;
using xrec::io::safetensors_file;
using xrec::io::safetensors_writer;

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
struct temp_dir {
    fs::path path;
    temp_dir() {
        std::random_device rd;
        path = fs::temp_directory_path() / ("xrec_st_test_" + std::to_string(rd()) + "_" + std::to_string(rd()));
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string file(const std::string& name) const { return (path / name).string(); }
    std::vector<std::string> entries() const {
        std::vector<std::string> out;
        for (auto& e : fs::directory_iterator(path)) out.push_back(e.path().filename().string());
        return out;
    }
};

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(std::uint64_t n) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
    return s;
}

// A safetensors file from a header text and a buffer of `buffer_bytes` bytes.
std::string make_file(const std::string& header, std::size_t buffer_bytes) {
    return le64(header.size()) + header + std::string(buffer_bytes, '\x01');
}

// Opens `bytes` written to a file and returns the error message ("" if it opened).
std::string open_error(const temp_dir& d, const std::string& bytes) {
    const std::string p = d.file("hostile.safetensors");
    write_bytes(p, bytes);
    try {
        (void)safetensors_file::open(p);
    } catch (const error& e) {
        return e.what();
    }
    return "";
}

template <class U>
bool bitwise_equal(const std::vector<U>& a, const std::vector<U>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(U)) == 0);
}

}  // namespace

TEST_CASE("safetensors: reads the fixture written by Python safetensors (values, dtypes, shapes, metadata)") {
    const auto f = safetensors_file::open(XREC_FIXTURE_DIR "/safetensors_basic.safetensors");
    CHECK(f.tensors().size() == 17);
    // header order is preserved (the reference writer puts I64 first here)
    CHECK(f.tensors().front().name == "i64");

    const auto& m = f.metadata();
    CHECK(m.size() == 3);
    CHECK(m.at("source") == "gen_safetensors_fixture.py");
    CHECK(m.at("unicode") == "d\xC3\xA9j\xC3\xA0 vu \xE2\x9C\x93");
    CHECK(m.at("empty").empty());

    REQUIRE(f.find("f64"));
    CHECK(f.find("f64")->dtype == "F64");
    CHECK(f.shape_of("f64") == shape{2, 3});
    std::vector<double> f64 = f.read<double>("f64");
    for (int i = 0; i < 6; ++i) CHECK(f64[static_cast<std::size_t>(i)] == 0.5 * i - 1.25);
    CHECK(bitwise_equal(f.read<double>("f64_pi"), std::vector<double>{3.141592653589793, -2.718281828459045, 1e-300}));

    CHECK(f.find("f32")->dtype == "F32");
    CHECK(bitwise_equal(f.read<float>("f32"), std::vector<float>{0.125f, 0.25f, 0.375f, 0.5f}));
    CHECK(f.read<double>("f32") == std::vector<double>{0.125, 0.25, 0.375, 0.5});

    CHECK(f.find("i64")->dtype == "I64");
    CHECK(f.read<std::int64_t>("i64") == std::vector<std::int64_t>{-(std::int64_t{1} << 40) - 3, 0, (std::int64_t{1} << 53) + 1});
    CHECK(f.find("i32")->dtype == "I32");
    CHECK(f.shape_of("i32") == shape{2, 2});
    CHECK(f.read<std::int32_t>("i32") == std::vector<std::int32_t>{-7, 8, 2147483647, -2147483647 - 1});
    CHECK(f.read<std::int64_t>("i32") == std::vector<std::int64_t>{-7, 8, 2147483647, -2147483648LL});

    CHECK(f.shape_of("scalar").rank == 0);
    CHECK(f.read<double>("scalar") == std::vector<double>{42.5});
    CHECK(f.read<float>("scalar") == std::vector<float>{42.5f});

    CHECK(f.shape_of("empty") == shape{0, 3});
    CHECK(f.read<float>("empty").empty());
    CHECK(f.bytes("empty").empty());

    CHECK(f.read<float>("f16") == std::vector<float>{1.5f, -2.0f, 0.0999755859375f, 65504.0f});
    CHECK(f.read<double>("bf16") == std::vector<double>{1.5, -2.0, 0.10009765625, 3.00405527047391e+38});
    CHECK(f.read<int>("u8") == std::vector<int>{0, 1, 255});
    CHECK(f.read<std::uint8_t>("flag") == std::vector<std::uint8_t>{1, 0, 1});
    CHECK(f.read<float>("flag") == std::vector<float>{1, 0, 1});

    // conversions that would lose information are refused, naming file, tensor and dtype
    CHECK_THROWS_WITH_AS(f.read<std::int64_t>("f32"), doctest::Contains("tensor 'f32' (F32): cannot convert floating"), error);
    CHECK_THROWS_WITH_AS(f.read<std::int32_t>("i64"), doctest::Contains("out of range"), error);
    CHECK_THROWS_WITH_AS(f.read<std::int8_t>("u8"), doctest::Contains("element 2 = 255 is out of range"), error);
    CHECK_THROWS_WITH_AS(f.read<float>("nope"), doctest::Contains("no tensor named 'nope'"), error);
    std::vector<float> dst(3);
    CHECK_THROWS_WITH_AS(f.read_into("f32", dst.data(), 3), doctest::Contains("has 4 elements, the destination 3"), error);
}

TEST_CASE("safetensors: F8_E4M3, F8_E5M2 (every bit pattern) and F16 convert exactly as PyTorch does") {
    const auto f = safetensors_file::open(XREC_FIXTURE_DIR "/safetensors_basic.safetensors");
    for (const std::string name : {"f8_e4m3_all", "f8_e5m2_all", "f16_some"}) {
        const auto got = f.read<float>(name);
        const auto want = f.read<float>(name + "_as_f32");
        REQUIRE(got.size() == want.size());
        int mismatches = 0, nans = 0, infs = 0;
        for (std::size_t i = 0; i < got.size(); ++i) {
            if (std::isnan(want[i])) {
                ++nans;
                mismatches += !std::isnan(got[i]);
            } else {
                infs += std::isinf(want[i]);
                mismatches += std::bit_cast<std::uint32_t>(got[i]) != std::bit_cast<std::uint32_t>(want[i]);  // -0 too
            }
        }
        INFO(name);
        CHECK(mismatches == 0);
        MESSAGE(name, ": ", got.size(), " values, ", nans, " NaN, ", infs, " inf, ", mismatches, " mismatches vs PyTorch");
    }
    CHECK(f.find("f8_e4m3_all")->dtype == "F8_E4M3");
    CHECK(f.read<double>("f8_e4m3_all")[0x7E] == 448.0);
    CHECK(f.read<double>("f8_e5m2_all")[0x3C] == 1.0);
}

TEST_CASE("json: strings, escapes, numbers and structure") {
    namespace json = xrec::json;
    auto v = json::parse(R"( {"a\u00e9\ud83d\ude00\n\"":[1,-2.5e3,0,true,false,null,{}]} )");
    REQUIRE(v.is_object());
    REQUIRE(v.members.size() == 1);
    CHECK(v.members[0].first == "a\xC3\xA9\xF0\x9F\x98\x80\n\"");
    const auto& arr = v.members[0].second;
    REQUIRE(arr.items.size() == 7);
    CHECK(arr.items[1].text == "-2.5e3");
    std::uint64_t x = 0;
    CHECK(json::to_uint64("18446744073709551615", x));
    CHECK(x == ~std::uint64_t{0});
    CHECK_FALSE(json::to_uint64("18446744073709551616", x));
    CHECK_FALSE(json::to_uint64("-1", x));
    CHECK_FALSE(json::to_uint64("1e3", x));
    for (const char* bad : {"01", "1.", "-", "[1,]", "{\"a\":1,}", "\"\\ud800\"", "\"\\udc00\"", "\"\\x\"", "\"a\nb\"",
                            "tru", "{\"a\" 1}", "\"abc", "[1 2]", "", "  "})
        CHECK_THROWS_WITH_AS(json::parse(bad), doctest::Contains("invalid JSON"), error);
    CHECK_THROWS_WITH_AS(json::parse("\"\xED\xA0\x80\""), doctest::Contains("invalid UTF-8"), error);  // encoded surrogate
    CHECK_THROWS_WITH_AS(json::parse("\"\xC0\xAF\""), doctest::Contains("invalid UTF-8"), error);      // overlong '/'
    // the escaper's output parses back to the same string
    std::string all;
    for (int c = 1; c < 128; ++c) all += static_cast<char>(c);
    all += "\xC3\xA9";
    std::string quoted;
    json::append_quoted(quoted, all);
    CHECK(json::parse(quoted).text == all);
}

TEST_CASE("safetensors: our writer's output is read back bitwise, aligned, with metadata") {
    temp_dir d;
    std::vector<std::uint8_t> u8{1, 2, 3};
    std::vector<double> a(6);
    for (int i = 0; i < 6; ++i) a[static_cast<std::size_t>(i)] = 0.1 * i;
    std::vector<float> b{1.0f, -2.5f, 3.25f};
    std::vector<std::int64_t> c{-(std::int64_t{1} << 40), 7};
    std::int32_t dv = -5;
    std::vector<float> nanvals{std::bit_cast<float>(0x7FC01234u), -0.0f, 1e-45f};  // payload NaN, -0, subnormal

    safetensors_writer w;
    w.add("e", shape{3}, u8.data());  // added first, laid out last (1-byte elements)
    w.add("a", shape{2, 3}, a.data());
    w.add("b", "F32", shape{3}, b.data());
    w.add("c", shape{1, 2}, c.data());
    w.add("d", shape{}, &dv);
    w.add("odd \"name\"\n", shape{3}, nanvals.data());
    w.add("none", shape{0, 4}, static_cast<const float*>(nullptr));
    w.set_metadata("k", "v");
    w.set_metadata("quote\"key", "line\nbreak");
    CHECK(w.header().size() % 8 == 0);

    const std::string p = d.file("out.safetensors");
    w.write(p);
    CHECK(d.entries() == std::vector<std::string>{"out.safetensors"});  // no temp file left

    const auto f = safetensors_file::open(p);
    std::vector<std::string> names;
    for (auto& t : f.tensors()) {
        names.push_back(t.name);
        CHECK(t.begin % xrec::io::dtype_size(t.code) == 0);  // naturally aligned in the buffer
    }
    CHECK(names == std::vector<std::string>{"e", "a", "b", "c", "d", "odd \"name\"\n", "none"});
    CHECK(f.find("e")->begin > f.find("b")->begin);
    CHECK(f.metadata() == std::map<std::string, std::string>{{"k", "v"}, {"quote\"key", "line\nbreak"}});
    CHECK(f.find("a")->dtype == "F64");
    CHECK(f.find("c")->dtype == "I64");
    CHECK(f.find("d")->dtype == "I32");
    CHECK(f.find("e")->dtype == "U8");
    CHECK(bitwise_equal(f.read<double>("a"), a));
    CHECK(bitwise_equal(f.read<float>("b"), b));
    CHECK(f.read<std::int64_t>("c") == c);
    CHECK(f.shape_of("d").rank == 0);
    CHECK(f.read<std::int32_t>("d") == std::vector<std::int32_t>{-5});
    CHECK(f.read<std::uint8_t>("e") == u8);
    CHECK(bitwise_equal(f.read<float>("odd \"name\"\n"), nanvals));
    CHECK(f.shape_of("none") == shape{0, 4});

    // Writing again over the same path replaces the file atomically.
    safetensors_writer w2;
    w2.add("only", shape{2}, b.data());
    w2.write(p);
    CHECK(safetensors_file::open(p).tensors().size() == 1);
    CHECK(d.entries() == std::vector<std::string>{"out.safetensors"});
}

TEST_CASE("safetensors: writer output is readable by Python safetensors (skipped without python3)") {
    if (std::system("python3 -c 'import safetensors, numpy' >/dev/null 2>&1") != 0) {
        MESSAGE("python3 with safetensors and numpy not found: skipped");
        return;
    }
    temp_dir d;
    std::vector<double> a(6);
    for (int i = 0; i < 6; ++i) a[static_cast<std::size_t>(i)] = 0.1 * i;
    std::vector<float> b{1.0f, -2.5f, 3.25f};
    std::vector<std::int64_t> c{-(std::int64_t{1} << 40), 7};
    std::int32_t dv = -5;
    std::vector<std::uint8_t> e{1, 2, 3};
    safetensors_writer w;
    w.add("e", shape{3}, e.data());
    w.add("a", shape{2, 3}, a.data());
    w.add("b", shape{3}, b.data());
    w.add("c", shape{1, 2}, c.data());
    w.add("d", shape{}, &dv);
    w.set_metadata("k", "v");
    w.set_metadata("quote\"key", "line\nbreak");
    const std::string p = d.file("for_python.safetensors");
    w.write(p);
    const std::string cmd = "python3 " XREC_FIXTURE_DIR "/gen_safetensors_fixture.py --check '" + p + "'";
    CHECK(std::system(cmd.c_str()) == 0);
}

TEST_CASE("safetensors: writer refuses bad tensors and a failed write leaves no file") {
    temp_dir d;
    float x[2] = {1, 2};
    safetensors_writer w;
    w.add("x", shape{2}, x);
    CHECK_THROWS_WITH_AS(w.add("x", shape{2}, x), doctest::Contains("duplicate tensor name 'x'"), error);
    CHECK_THROWS_WITH_AS(w.add("y", "F31", shape{2}, x), doctest::Contains("unknown dtype 'F31'"), error);
    CHECK_THROWS_WITH_AS(w.add("__metadata__", shape{2}, x), doctest::Contains("reserved"), error);
    CHECK_THROWS_WITH_AS(w.add("", shape{2}, x), doctest::Contains("needs a name"), error);
    CHECK_THROWS_WITH_AS(w.add("z", shape{2}, static_cast<const float*>(nullptr)), doctest::Contains("'z' has no data"), error);
    CHECK_THROWS_WITH_AS(w.add("\xFF", shape{2}, x), doctest::Contains("UTF-8"), error);

    // a path in a missing directory
    CHECK_THROWS_WITH_AS(w.write(d.file("missing/dir/x.safetensors")), doctest::Contains("cannot create temporary file"), error);
    // the rename fails (the target is a non-empty directory): the temp file is removed
    fs::create_directories(d.path / "target" / "sub");
    CHECK_THROWS_WITH_AS(w.write(d.file("target")), doctest::Contains("rename"), error);
    auto entries = d.entries();
    CHECK(entries == std::vector<std::string>{"target"});
}

TEST_CASE("safetensors: hostile inputs are refused with a message naming the file and the problem") {
    temp_dir d;
    const std::string ok_t = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    // sanity: the base case opens
    CHECK(open_error(d, make_file("{" + ok_t + "}", 8)).empty());
    CHECK(open_error(d, make_file("{" + ok_t + "}    ", 8)).empty());  // space padding is fine
    CHECK(open_error(d, make_file("{}", 0)).empty());                   // no tensors at all

    struct hostile {
        const char* what;
        std::string bytes;
        std::vector<std::string> expect;
    };
    const std::vector<hostile> cases = {
        {"empty file", "", {"file is 0 bytes, shorter than the 8-byte header length"}},
        {"7 bytes", std::string(7, '\0'), {"file is 7 bytes"}},
        {"header length > file", le64(100) + "{}", {"header length 100 exceeds the 2 bytes"}},
        {"absurd header length", le64(std::uint64_t{1} << 62) + "{}", {"absurdly large"}},
        {"header length max u64", le64(~std::uint64_t{0}) + "{}", {"absurdly large"}},
        {"invalid JSON", make_file("{\"t\":", 0), {"bad header: invalid JSON"}},
        {"JSON garbage after object", make_file("{}x", 0), {"invalid JSON", "after the JSON value"}},
        {"NUL padding", make_file(std::string("{}\0\0", 4), 0), {"invalid JSON"}},
        {"invalid UTF-8", make_file("{\"\xC3\x28\":1}", 0), {"invalid UTF-8"}},
        {"not an object", make_file("[1,2]", 0), {"header is an array, not a JSON object"}},
        {"unknown dtype", make_file(R"({"t":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}})", 8), {"tensor 't'", "unknown dtype 'F31'"}},
        {"dtype not a string", make_file(R"({"t":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8), {"tensor 't'", "dtype is a number"}},
        {"size mismatch", make_file(R"({"t":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", 8),
         {"tensor 't'", "shape [2] of F64 needs 16 bytes but data_offsets [0, 8] span 8"}},
        {"offsets outside buffer", make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 8),
         {"tensor 't'", "outside the data buffer of 8 bytes"}},
        {"end before begin", make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), {"tensor 't'", "end before begin"}},
        {"overlap", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
         {"tensors 'a' and 'b' overlap"}},
        {"same range twice", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})", 8),
         {"overlap"}},
        {"gap", make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12),
         {"gap of 4 bytes before tensor 'b'"}},
        {"trailing garbage", make_file("{" + ok_t + "}", 9), {"1 trailing bytes after the last tensor"}},
        {"bytes but no tensors", make_file("{}", 3), {"3 trailing bytes"}},
        {"duplicate names", make_file("{" + ok_t + "," + ok_t + "}", 8), {"duplicate tensor name 't'"}},
        {"duplicate metadata", make_file(R"({"__metadata__":{},"__metadata__":{}})", 0), {"duplicate key '__metadata__'"}},
        {"duplicate metadata key", make_file(R"({"__metadata__":{"k":"a","k":"b"}})", 0), {"duplicate metadata key 'k'"}},
        {"non-string metadata", make_file(R"({"__metadata__":{"k":1}})", 0), {"metadata value of 'k' is a number, not a string"}},
        {"null metadata value", make_file(R"({"__metadata__":{"k":null}})", 0), {"metadata value of 'k' is null"}},
        {"metadata not object", make_file(R"({"__metadata__":["a"]})", 0), {"__metadata__ is an array, not an object"}},
        {"entry not object", make_file(R"({"t":[1]})", 0), {"tensor 't': entry is an array"}},
        {"missing dtype", make_file(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", 8), {"tensor 't': no \"dtype\""}},
        {"missing shape", make_file(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", 8), {"tensor 't': no \"shape\""}},
        {"missing offsets", make_file(R"({"t":{"dtype":"F32","shape":[2]}})", 8), {"tensor 't': no \"data_offsets\""}},
        {"three offsets", make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", 8), {"two integers"}},
        {"negative extent", make_file(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), {"shape holds -2, not a non-negative integer"}},
        {"fractional extent", make_file(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8), {"not a non-negative integer"}},
        {"string offset", make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":["0",8]}})", 8), {"data_offsets holds a string"}},
        {"huge offset", make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,99999999999999999999999]}})", 8), {"not a non-negative integer"}},
        {"rank 5", make_file(R"({"t":{"dtype":"F32","shape":[1,1,1,1,2],"data_offsets":[0,8]}})", 8), {"rank 5 exceeds the maximum of 4"}},
        {"shape overflow", make_file(R"({"t":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8), {"shape overflows"}},
        {"deep nesting", make_file(std::string(100, '[') + std::string(100, ']'), 0), {"nesting too deep"}},
    };
    for (auto& c : cases) {
        const std::string msg = open_error(d, c.bytes);
        INFO(c.what, ": ", msg);
        CHECK(msg.find("safetensors: '" + d.file("hostile.safetensors") + "'") != std::string::npos);
        for (auto& e : c.expect) CHECK(msg.find(e) != std::string::npos);
    }

    CHECK(open_error(d, "").size() > 0);
    try {
        (void)safetensors_file::open(d.file("does_not_exist"));
        FAIL("opened a missing file");
    } catch (const error& e) {
        CHECK(std::string(e.what()).find("does_not_exist': cannot open: No such file") != std::string::npos);
    }
    CHECK_THROWS_WITH_AS(safetensors_file::open(d.path.string()), doctest::Contains("not a regular file"), error);
}
