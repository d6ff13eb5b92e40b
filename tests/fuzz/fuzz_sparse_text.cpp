// libFuzzer target: the libsvm and libffm readers (sparse_text_reader), followed, for the
// lines they accept, by the libsvm / libffm schemas that fit on them and encode them: the
// reader promises the schema well-formed tokens, and this target holds it to that.
//
// Input: byte 0 picks the options, the rest is the file.
//   bit  0    libffm (else libsvm)
//   bit  1    on_error::skip (else stop)
//   bits 2-4  chunk_bytes = 1 << k (1..128)
//   bits 5-6  max_line_bytes: 8, 64, 512 or 1 MiB
//   bit  7    hashed table (else a vocabulary fitted on the file)
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "fuzz_support.hpp"
#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"

namespace xd = xrec::data;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::uint8_t sel = xrec_fuzz::take_selector(data, size);
    const std::string& path = xrec_fuzz::input_file().write(data, size);
    const bool ffm = sel & 1;
    xd::reader_options ro;
    ro.errors = (sel & 2) ? xd::on_error::skip : xd::on_error::stop;
    ro.chunk_bytes = std::size_t{1} << ((sel >> 2) & 7);
    constexpr std::size_t max_line[] = {8, 64, 512, std::size_t{1} << 20};
    ro.max_line_bytes = max_line[(sel >> 5) & 3];
    const auto table = (sel & 128) ? xd::table_options::hashed(16) : xd::table_options::vocab();
    auto r = [&] {
        try {
            return std::optional(ffm ? xd::libffm_reader(path, ro) : xd::libsvm_reader(path, ro));
        } catch (const xrec::error&) {
            return std::optional<xd::sparse_text_reader>();
        }
    }();
    if (!r) return 0;
    xd::raw_record rec;
    std::int64_t n = 0;
    try {
        while (r->next(rec)) {
            if (rec.size() < 1) __builtin_trap();  // the label is always there
            ++n;
        }
    } catch (const xrec::error&) {
        return 0;  // on_error::stop: a bad line, refused
    }
    const std::int64_t skipped = r->skipped().total();
    if (n == 0) return 0;
    // Every line the reader accepted must encode: the reader checks the tokens so that the
    // schema can trust them. A refusal now (stop) or a different skip count (skip) is a
    // reader/schema disagreement, i.e. a finding.
    try {
        r->rewind();
        auto s = ffm ? xd::libffm_schema(3, table) : xd::libsvm_schema(table);
        s.fit(*r);
        if (r->skipped().total() != skipped) __builtin_trap();
        r->rewind();
        const auto enc = s.encode_all<float>(*r);
        if (enc.rows.size() != n || r->skipped().total() != skipped) __builtin_trap();
    } catch (const xrec::error&) {
        __builtin_trap();
    }
    return 0;
}
