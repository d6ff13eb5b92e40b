// libFuzzer target: the delimited readers (criteo_reader: TSV without header or quotes;
// CSV with a header and RFC 4180 quotes; headerless quoted CSV; TSV with fixed names), in
// small chunks so that lines straddle chunk boundaries, under both error policies.
//
// Input: byte 0 picks the dialect and the options, the rest is the file.
//   bits 0-1  dialect (criteo, CSV with header, CSV without header, TSV with 3 names)
//   bit  2    on_error::skip (else stop: the first bad line throws xrec::error)
//   bits 3-5  chunk_bytes = 1 << k (1..128): a line is assembled from many reads
//   bits 6-7  max_line_bytes: 8, 64, 512 or 1 MiB
// Checks besides the sanitizers: every column view lies inside the line the reader returned,
// the record has the reader's column count, and line numbers only increase.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "xrec/data/readers.hpp"

namespace xd = xrec::data;

namespace {

template <class Reader>
void drain(Reader& r) {
    xd::raw_record rec;
    std::int64_t last_line = 0, seen = 0;
    std::size_t bytes = 0;
    while (r.next(rec)) {
        if (rec.line <= last_line || rec.columns.size() != rec.starts.size()) __builtin_trap();
        last_line = rec.line;
        for (std::size_t k = 0; k < rec.size(); ++k) {
            bytes += rec[k].size();
            if (rec.column_of(k) < 1) __builtin_trap();
        }
        if (!r.header().empty() && rec.size() != r.header().size()) __builtin_trap();
        ++seen;
    }
    xrec_fuzz::keep(bytes);
    xrec_fuzz::keep(seen);
    const auto skipped = r.skipped().total();
    xrec_fuzz::keep(skipped);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::uint8_t sel = xrec_fuzz::take_selector(data, size);
    const std::string& path = xrec_fuzz::input_file().write(data, size);
    xd::reader_options ro;
    ro.errors = (sel & 4) ? xd::on_error::skip : xd::on_error::stop;
    ro.chunk_bytes = std::size_t{1} << ((sel >> 3) & 7);
    constexpr std::size_t max_line[] = {8, 64, 512, std::size_t{1} << 20};
    ro.max_line_bytes = max_line[sel >> 6];
    try {
        switch (sel & 3) {
            case 0: {
                auto r = xd::criteo_reader(path, ro);
                drain(r);
                break;
            }
            case 1: {
                xd::delimited_reader r(path, {}, ro);
                drain(r);
                r.rewind();  // a second pass must give the same result (and not crash)
                drain(r);
                break;
            }
            case 2: {
                xd::delimited_options d;
                d.header = false;
                xd::delimited_reader r(path, d, ro);
                drain(r);
                break;
            }
            default: {
                xd::delimited_options d;
                d.delimiter = '\t';
                d.header = false;
                d.quoted = false;
                d.names = {"a", "b", "c"};
                xd::delimited_reader r(path, d, ro);
                drain(r);
                break;
            }
        }
    } catch (const xrec::error&) {
    }
    return 0;
}
