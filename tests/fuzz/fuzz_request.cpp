// libFuzzer target: the request encoder (schema::encode_request / encode_request_named) of a
// schema fitted here, once, on a few rows: labels, log + standardised dense fields, vocab,
// hashed and growing sparse tables, a split multi-hot field, a weighted one sharing a table,
// group and time; and of a fitted libffm schema (tokens).
//
// Input: byte 0 picks the mode (bits 0-1) and a column (bits 2-7), the rest is the request:
//   0  the request split on '\t' into columns, in order (any count)
//   1  lines "column=value" for encode_request_named (unknown names are refused)
//   2  a valid request with column (bits 2-7) % n replaced by the whole rest: arbitrary
//      bytes (not UTF-8, NULs, separators) as one column's text
//   3  libffm tokens split on ' ' (column 0 the label)
// Refusals are xrec::error; an encoded row must satisfy check_row (ids inside their tables).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fuzz_encoded_row.hpp"
#include "fuzz_schemas.hpp"
#include "fuzz_support.hpp"
#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"

namespace xd = xrec::data;

namespace {

std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> out;
    std::size_t a = 0;
    for (;;) {
        const std::size_t b = s.find(sep, a);
        out.push_back(s.substr(a, b == std::string_view::npos ? std::string_view::npos : b - a));
        if (b == std::string_view::npos) return out;
        a = b + 1;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const xd::schema main_schema = xrec_fuzz::fit_main();
    static const xd::schema ffm_schema = xrec_fuzz::fit_ffm();
    const std::uint8_t sel = xrec_fuzz::take_selector(data, size);
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    xd::encoded_row<float> row;
    const xd::schema* used = &main_schema;
    try {
        switch (sel & 3) {
            case 0: {
                const auto cols = split(text, '\t');
                main_schema.encode_request<float>(cols, row);
                break;
            }
            case 1: {
                std::vector<std::pair<std::string, std::string>> named;
                for (auto line : split(text, '\n')) {
                    const std::size_t eq = line.find('=');
                    named.emplace_back(std::string(line.substr(0, eq)),
                                       eq == std::string_view::npos ? std::string() : std::string(line.substr(eq + 1)));
                }
                main_schema.encode_request_named<float>(named, row);
                break;
            }
            case 2: {
                std::vector<std::string_view> cols(xrec_fuzz::train_rows[0].begin(), xrec_fuzz::train_rows[0].end());
                cols[(sel >> 2) % cols.size()] = text;
                main_schema.encode_request<float>(cols, row);
                break;
            }
            default: {
                used = &ffm_schema;
                const auto cols = split(text, ' ');
                ffm_schema.encode_request<float>(cols, row);
                break;
            }
        }
    } catch (const xrec::error&) {
        return 0;
    }
    xrec_fuzz::check_row(used->layout(), row);
    return 0;
}
