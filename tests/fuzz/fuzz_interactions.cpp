// libFuzzer target: the implicit-feedback loaders of data/interactions.hpp and what is built
// on what they return: load_movielens -> to_sequences -> leave_last_out / time_split;
// load_user_sequences -> leave_last_out -> seen_items, item_counts; load_sessions on a
// growing vocabulary, then again frozen (the test-file protocol).
//
// Input: byte 0 picks the loader (value % 3) and its options (bit 7), the rest is the file.
// Checks besides the sanitizers: every dense id the loaders return lies in [0, n), and the
// CSR offsets are monotone and end at the number of events.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_support.hpp"
#include "xrec/data/interactions.hpp"

namespace xd = xrec::data;

namespace {

void check(const xd::sequences& s) {
    if (s.offsets.empty() || s.offsets.front() != 0 || s.offsets.back() != s.events()) __builtin_trap();
    for (std::size_t r = 1; r < s.offsets.size(); ++r)
        if (s.offsets[r] < s.offsets[r - 1]) __builtin_trap();
    for (auto i : s.items)
        if (i < 0 || i >= s.n_items) __builtin_trap();
    if (!s.times.empty() && s.times.size() != s.items.size()) __builtin_trap();
}

void exercise(const xd::sequences& s) {
    check(s);
    for (const bool valid : {false, true}) {
        const auto split = xd::leave_last_out(s, valid);
        check(split.train);
        for (std::int64_t r = 0; r < split.rows(); ++r) {
            const auto seen = xd::seen_items(split, r);
            xrec_fuzz::keep(seen);
        }
    }
    const auto counts = xd::item_counts(s);
    xrec_fuzz::keep(counts);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::uint8_t sel = xrec_fuzz::take_selector(data, size);
    const std::string& path = xrec_fuzz::input_file().write(data, size);
    try {
        switch (sel % 3) {
            case 0: {
                const auto d = xd::load_movielens(path, (sel & 128) ? 3.5 : 0.0);
                for (std::size_t e = 0; e < d.user.size(); ++e)
                    if (d.user[e] < 0 || d.user[e] >= d.n_users || d.item[e] < 0 || d.item[e] >= d.n_items) __builtin_trap();
                exercise(xd::to_sequences(d));
                const auto t = xd::time_split(d, 0.8);
                xrec_fuzz::keep(t.cut);
                break;
            }
            case 1: exercise(xd::load_user_sequences(path)); break;
            default: {
                xd::item_vocab v;
                xd::session_options o;
                o.min_length = (sel & 128) ? 2 : 1;
                exercise(xd::load_sessions(path, v, o));
                o.extend_vocab = false;  // the test file: items unknown to the vocabulary drop out
                exercise(xd::load_sessions(path, v, o));
                break;
            }
        }
    } catch (const xrec::error&) {
    }
    return 0;
}
