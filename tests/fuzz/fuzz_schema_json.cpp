// libFuzzer target: schema::from_json (and the JSON parser under it) on arbitrary text.
// A schema it accepts must then behave: to_json() reads back to the same text (the
// round trip the serving side relies on), and encoding a few requests, in serve mode and
// in train mode (growing tables admit and evict), gives rows whose ids lie inside their
// tables (check_row). Refusals are xrec::error.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_encoded_row.hpp"
#include "fuzz_support.hpp"
#include "xrec/data/schema.hpp"

namespace xd = xrec::data;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    xd::schema s;
    try {
        s = xd::schema::from_json(text);
    } catch (const xrec::error&) {
        return 0;
    }
    // The round trip: what was accepted is saved and reloaded identically.
    std::string again;
    try {
        again = s.to_json();
        if (xd::schema::from_json(again).to_json() != again) __builtin_trap();
    } catch (const xrec::error&) {
        __builtin_trap();  // an accepted schema whose own output is refused
    }
    const std::size_t n = s.columns().size();
    if (n > 64) return 0;  // keep the requests below small
    xd::encoded_row<float> row;
    const char* values[] = {"", "1", "a", "1:2", "0:1:1", "a|b|a", "7"};
    for (const char* v : values) {
        const std::vector<std::string_view> cols(n, v);
        try {
            s.encode_request<float>(cols, row);
            xrec_fuzz::check_row(s.layout(), row);
        } catch (const xrec::error&) {
        }
        // train mode on the (mutable) schema: growing tables observe, admit and evict
        for (int rep = 0; rep < 3; ++rep) {
            try {
                xd::request_record rr(std::vector<std::string>(n, v));
                if (s.encode(rr.record(), row)) xrec_fuzz::check_row(s.layout(), row);
            } catch (const xrec::error&) {
            }
        }
    }
    return 0;
}
