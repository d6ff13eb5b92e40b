// Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/ (run from
// the repository root; the output is committed, so this runs only when a seed changes):
//   cmake --build build/fuzz --target xrec_fuzz_gen_corpus && build/fuzz/tests/fuzz/xrec_fuzz_gen_corpus
// or, without CMake:
//   clang++-14 -std=c++20 -Iinclude -isystem /usr/include/eigen3 tests/fuzz/gen_corpus.cpp -o /tmp/gen && /tmp/gen
// Seeds are valid inputs and slightly broken ones, each a few hundred bytes. The text seeds
// are written by hand here (no real data set is copied); the binary and JSON ones are made
// by the library's own writers, so they track the formats.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "fuzz_schemas.hpp"
#include "xrec/backend/tags.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/safetensors.hpp"

namespace fs = std::filesystem;
namespace xd = xrec::data;

namespace {

const fs::path root = "tests/fuzz/corpus";

void put(const std::string& target, const std::string& name, const std::string& bytes) {
    fs::create_directories(root / target);
    std::ofstream f(root / target / name, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
std::string slurp(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
// One selector byte (the target's option bits) and the file.
std::string sel(unsigned char s, const std::string& body) { return std::string(1, static_cast<char>(s)) + body; }

void safetensors_seeds() {
    const fs::path tmp = fs::temp_directory_path() / "xrec_gen_corpus.safetensors";
    // The store of fuzz_safetensors.cpp, with values, saved as a checkpoint.
    xrec::param_store<float, xrec::cpu<>> store(7);
    store.add("w", {2, 3}, xrec::init::uniform(-1, 1));
    store.add("b", {3}, xrec::init::uniform(-1, 1));
    store.add_table("emb", 4, 2, xrec::init::normal(0, 0.1));
    std::vector<float> step{3};
    xrec::io::save_checkpoint(tmp.string(), store, {{"model", "tiny"}}, {{"step", {1}, step.data()}});
    const std::string ok = slurp(tmp);
    put("fuzz_safetensors", "checkpoint_ok", ok);
    put("fuzz_safetensors", "checkpoint_truncated", ok.substr(0, ok.size() - 5));
    // The same checkpoint with a NaN in "step" (the last 4 bytes: tensors are laid out in
    // insertion order within one dtype).
    std::string nan = ok;
    const float q = std::numeric_limits<float>::quiet_NaN();
    nan.replace(nan.size() - 4, 4, reinterpret_cast<const char*>(&q), 4);
    put("fuzz_safetensors", "checkpoint_nan", nan);

    // Every dtype family, and metadata, in one plain safetensors file.
    xrec::io::safetensors_writer w;
    const std::vector<double> d{1.5, -2, 1e300};
    const std::vector<std::int32_t> i{-1, 2, 2147483647, 0};
    const std::vector<std::uint8_t> u{0, 1, 255};
    const std::vector<std::uint16_t> h{0x3C00, 0x7C00, 0xFC00, 0x0001};  // F16 / BF16 bit patterns
    const std::vector<std::uint8_t> f8{0x7F, 0x38, 0x80};
    w.add("d", {3}, d.data());
    w.add("i", {2, 2}, i.data());
    w.add("u", {3}, u.data());
    w.add("h", "F16", {4}, h.data());
    w.add("bf", "BF16", {2, 2}, h.data());
    w.add("e4", "F8_E4M3", {3}, f8.data());
    w.add("e5", "F8_E5M2", {3}, f8.data());
    w.add("flag", "BOOL", {3}, u.data());
    w.add("empty", {0, 5}, static_cast<const float*>(nullptr));
    w.set_metadata("k", "v");
    w.write(tmp.string());
    put("fuzz_safetensors", "dtypes", slurp(tmp));
    fs::remove(tmp);

    auto le64 = [](std::uint64_t n) {
        std::string s(8, '\0');
        for (int k = 0; k < 8; ++k) s[static_cast<std::size_t>(k)] = static_cast<char>(n >> (8 * k));
        return s;
    };
    auto file = [&](const std::string& header, std::size_t data) { return le64(header.size()) + header + std::string(data, '\x01'); };
    put("fuzz_safetensors", "overlap",
        file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12));
    put("fuzz_safetensors", "header_too_long", le64(4096) + "{}");
    put("fuzz_safetensors", "zero_extent",
        file(R"({"__metadata__":{"xrec_format_version":"1"},"z":{"dtype":"I64","shape":[3,0,7],"data_offsets":[0,0]}})", 0));
}

void delimited_seeds() {
    // selector: bits 0-1 dialect, bit 2 skip, bits 3-5 log2 chunk, bits 6-7 max line
    std::string criteo;
    for (int r = 0; r < 3; ++r) {
        criteo += r == 1 ? "1" : "0";
        for (int k = 1; k <= 13; ++k) criteo += "\t" + (k % 4 == r ? std::string() : std::to_string(k * (r + 1)));
        for (int k = 1; k <= 26; ++k) criteo += "\t" + (k % 7 == r ? std::string() : "68fd1e6" + std::to_string(k % 10));
        criteo += "\n";
    }
    put("fuzz_delimited", "criteo", sel(0xC0 | (3 << 3), criteo));
    put("fuzz_delimited", "criteo_short_line_skip", sel(0xC0 | (2 << 3) | 4, criteo + "1\t2\t3\n" + criteo));
    put("fuzz_delimited", "csv_quoted",
        sel(0xC0 | (1 << 3) | 1,
            "movie_id,title,genres\r\n1,\"Toy Story (1995)\",Animation|Comedy\r\n2,\"Say \"\"hi\"\"\",\r\n3,plain,\"a,b\"\n"));
    put("fuzz_delimited", "csv_bad_quote", sel(0x80 | (4 << 3) | 1 | 4, "a,b\n\"x,1\n\"y\"z,2\n3,4,5\n\xff\xfe,1\n"));
    put("fuzz_delimited", "csv_noheader", sel(0x40 | (0 << 3) | 2, "1,2,3\n4,,6,\n\n7,8\n"));
    put("fuzz_delimited", "tsv_names_long_line", sel(0x40 | (5 << 3) | 3 | 4, "a\tb\tc\n" + std::string(100, 'x') + "\n1\t2\t3"));
}

void sparse_text_seeds() {
    // selector: bit 0 libffm, bit 1 skip, bits 2-4 log2 chunk, bits 5-6 max line, bit 7 hashed
    put("fuzz_sparse_text", "libsvm", sel(0x60 | (3 << 2), "+1 1:0.5 3:1 10:-2\n-1 2:1e-3\n0\n1 7:1\t9:2\n"));
    put("fuzz_sparse_text", "libsvm_bad_skip", sel(0x60 | (1 << 2) | 2, "1 1:0.5\nx 2:1\n1 3\n1 -4:1\n1 5:nan\n1 6:1:2\n"));
    put("fuzz_sparse_text", "libffm", sel(0x60 | (4 << 2) | 1, "1 0:5:1 1:7:0.5 2:9:1\n0 0:5:1 2:3:2\n1 3:1:1\n"));
    put("fuzz_sparse_text", "libffm_hashed_bad", sel(0xE0 | (2 << 2) | 1 | 2, "1 0:5:1\n0 0:5\n1 a:1:1\n0 1:2:x\r\n"));
}

void interactions_seeds() {
    // selector % 3: 0 movielens, 1 user sequences, 2 sessions; bit 7 an option
    put("fuzz_interactions", "movielens", sel(0, "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n22\t377\t5\t878887100\n"));
    put("fuzz_interactions", "movielens_min_rating", sel(132, "1 10 5 300\n1 20 2 100\n2 10 4 200\n"));  // 132: bit 7 set, 132 % 3 == 0
    put("fuzz_interactions", "movielens_bad", sel(3, "1\t2\t3\t4\n1\tx\t3\t4\n"));
    put("fuzz_interactions", "sequences", sel(1, "1 1 2 3 4\n2 2 5 3\n3 6 1\n"));
    put("fuzz_interactions", "sequences_bad", sel(4, "1 1 2\n2 0\n3 999\n"));
    put("fuzz_interactions", "sessions",
        sel(2, "SessionId\tItemId\tTime\n1\t214\t1396321.5\n1\t215\t1396300\n2\t214\t1396400\n2\t300\t1396401\n3\t5\t1\n"));
    put("fuzz_interactions", "sessions_min2_reordered", sel(128 + 2, "Time\tItemId\tSessionId\n5\t1\t9\n4\t2\t9\n1\t1\t3\n"));
}

void schema_seeds() {
    auto main_schema = xrec_fuzz::fit_main();
    put("fuzz_schema_json", "main", main_schema.to_json());
    put("fuzz_schema_json", "libffm", xrec_fuzz::fit_ffm().to_json());
    auto svm = xd::libsvm_schema(xd::table_options::hashed(32, 5), 0.0);
    svm.start_fit();
    svm.finish_fit();
    put("fuzz_schema_json", "libsvm_hashed", svm.to_json());
    std::string bad = main_schema.to_json();
    bad.replace(bad.find("\"version\":1"), 11, "\"version\":2");
    put("fuzz_schema_json", "bad_version", bad);
    put("fuzz_schema_json", "not_schema", R"({"format":"other"})");

    // request modes: 0 tab-separated columns, 1 name=value lines, 2 one column's bytes, 3 libffm tokens
    put("fuzz_request", "columns", sel(0, "1\t3.5\t20\tu1\ti2\ts1\ta|b|z\ti1:1,i9:0.25\t100"));
    put("fuzz_request", "columns_serve_empty", sel(0, "\t\t\t\t\t\t\t\t"));
    put("fuzz_request", "named", sel(1, "user=u2\nitem=i1\ntags=c|d\nts=5\nprice=-1e3"));
    put("fuzz_request", "one_column_bytes", sel(2 | (7 << 2), "i1:1,:2,i2:x,\xff:1"));
    put("fuzz_request", "libffm", sel(3, "1 0:5:1 1:7:0.5 2:9:1 2:11:3"));
}

}  // namespace

int main() {
    safetensors_seeds();
    delimited_seeds();
    sparse_text_seeds();
    interactions_seeds();
    schema_seeds();
    std::printf("seed corpora written under %s\n", root.c_str());
    return 0;
}
