#pragma once
// Streaming readers of text data files: Criteo TSV, CSV/TSV with a header, libsvm and libffm.
// A file is read in fixed-size chunks and never loaded whole; each call yields one raw record
// (string_view columns into a buffer the reader owns) with the file name, the line number and
// each column's byte column, so whoever interprets a column (the schema) can report a bad
// value as "file:line:column: expected ..., got ...".
#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"
#include "xrec/core/json.hpp"

namespace xrec::data {

/// What a reader (or the schema reading its records) does with a bad line: `stop` throws
/// xrec::error "file:line:column: expected ..., got ..."; `skip` drops the line, counts it
/// under its reason and goes on.
enum class on_error { stop, skip };

/// Why a line was refused.
enum class bad_line : int {
    field_count,  // a delimited line with the wrong number of fields
    number,       // a column that must be a number is not one (or is not finite)
    token,        // a malformed token: libsvm idx:val, libffm field:idx:val, a CSV quote
    too_long,     // a line longer than reader_options::max_line_bytes
    encoding,     // a line that is not valid UTF-8
    value,        // a value the schema refuses (a timestamp that is not an integer, ...)
};
inline constexpr int bad_line_reasons = 6;

inline const char* bad_line_name(bad_line r) {
    switch (r) {
        case bad_line::field_count: return "field_count";
        case bad_line::number: return "number";
        case bad_line::token: return "token";
        case bad_line::too_long: return "too_long";
        case bad_line::encoding: return "encoding";
        case bad_line::value: return "value";
    }
    return "?";
}

/// Options every reader takes. Memory held by a reader is about chunk_bytes + max_line_bytes,
/// whatever the size of the file.
struct reader_options {
    std::size_t chunk_bytes = std::size_t{1} << 20;     // bytes per read from the file
    std::size_t max_line_bytes = std::size_t{1} << 20;  // longer lines are bad (too_long)
    on_error errors = on_error::stop;
    bool check_utf8 = true;  // refuse lines that are not valid UTF-8 (encoding)
};

/// Counts of skipped lines by reason (under on_error::skip), and the first message, for logs.
struct bad_line_counts {
    std::array<std::int64_t, bad_line_reasons> by_reason{};
    std::string first_message;

    std::int64_t operator[](bad_line r) const { return by_reason[static_cast<std::size_t>(r)]; }
    std::int64_t total() const {
        std::int64_t t = 0;
        for (auto c : by_reason) t += c;
        return t;
    }
};

namespace detail {

/// At most 40 bytes of `s`, with control bytes and non-ASCII bytes written as \xNN, so a
/// message about a bad line is short and printable whatever the line held.
inline std::string show(std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    const std::size_t n = std::min<std::size_t>(s.size(), 40);
    for (std::size_t i = 0; i < n; ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c >= 0x7f) {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        } else {
            out += static_cast<char>(c);
        }
    }
    if (s.size() > n) out += "...";
    return out;
}

/// Concatenation by appending (GCC 12 warns falsely (-Wrestrict) on "literal" + std::string&&).
template <class... A>
std::string cat(const A&... a) {
    std::string s;
    (s.append(std::string_view(a)), ...);
    return s;
}
/// show(v) in single quotes.
inline std::string quote(std::string_view v) { return cat("'", show(v), "'"); }

}  // namespace detail

/// Where bad lines go: the policy and the counts. A reader owns one; records point to it so
/// that the schema's refusals are counted beside the reader's own.
class error_sink {
public:
    explicit error_sink(on_error p = on_error::stop) : policy_(p) {}

    on_error policy() const noexcept { return policy_; }
    const bad_line_counts& counts() const noexcept { return counts_; }
    void clear() { counts_ = {}; }

    /// Throws "file:line:column: expected <expected>, got <got>" under `stop`; counts the line
    /// under `skip`. Returns false (the line is not used) so callers can `return reject(...)`.
    bool reject(std::string_view file, std::int64_t line, std::int64_t column, bad_line why, std::string_view expected,
                std::string_view got) {
        std::string msg;
        msg.append(file).append(":").append(std::to_string(line)).append(":").append(std::to_string(column));
        msg.append(": expected ").append(expected).append(", got ").append(got);
        if (policy_ == on_error::stop) throw xrec::error(msg, __FILE__, __LINE__);
        if (counts_.total() == 0) counts_.first_message = msg;
        ++counts_.by_reason[static_cast<std::size_t>(why)];
        return false;
    }

private:
    on_error policy_;
    bad_line_counts counts_;
};

/// One raw record: the columns of one line as views into the reader's buffer (valid until the
/// reader's next call), the file and 1-based line number, the 1-based byte column where each
/// column starts, and the sink that refuses it. A serving request is a record too (file
/// "request", line 1, column = field number).
struct raw_record {
    std::string_view file;
    std::int64_t line = 0;
    std::span<const std::string_view> columns;
    std::span<const std::int64_t> starts;  // parallel to columns
    error_sink* sink = nullptr;            // null: refusals throw

    std::size_t size() const noexcept { return columns.size(); }
    std::string_view operator[](std::size_t k) const { return columns[k]; }
    std::int64_t column_of(std::size_t k) const {
        return k < starts.size() ? starts[k] : static_cast<std::int64_t>(k) + 1;
    }
    /// Refuses the record because of column k (byte `offset` inside it): throws or counts, see
    /// error_sink::reject. Always returns false.
    bool reject(std::size_t k, std::size_t offset, bad_line why, std::string_view expected, std::string_view got) const {
        const std::int64_t col = column_of(k) + static_cast<std::int64_t>(offset);
        if (sink) return sink->reject(file, line, col, why, expected, got);
        error_sink stop;
        return stop.reject(file, line, col, why, expected, got);
    }
};

/// A request to encode at serving time: owns its column strings and hands out a raw_record
/// whose "columns" are the field numbers (a bad value throws "request:1:<field>: ...").
class request_record {
public:
    explicit request_record(std::vector<std::string> columns) : cols_(std::move(columns)) {
        views_.assign(cols_.begin(), cols_.end());
    }
    raw_record record() const { return raw_record{"request", 1, views_, {}, nullptr}; }

private:
    std::vector<std::string> cols_;
    std::vector<std::string_view> views_;
};

/// Strict number parsing shared by readers and schema: the whole text must be the number
/// (an optional leading '+' is allowed), no spaces, finite.
inline bool parse_double(std::string_view s, double& out) {
    if (!s.empty() && s.front() == '+') s.remove_prefix(1);
    if (s.empty()) return false;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
    return r.ec == std::errc{} && r.ptr == s.data() + s.size() && std::isfinite(out);
}
inline bool parse_int64(std::string_view s, std::int64_t& out) {
    if (!s.empty() && s.front() == '+') s.remove_prefix(1);
    if (s.empty()) return false;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
    return r.ec == std::errc{} && r.ptr == s.data() + s.size();
}

/// Lines of a file, read in chunks of chunk_bytes. A line ends at '\n'; a '\r' before it is
/// dropped (CRLF files read like LF files); the last line needs no '\n'. Blank lines are passed
/// over (counted in the line numbers). Lines longer than max_line_bytes and lines that are not
/// UTF-8 are refused through the sink; a skipped over-long line is discarded without ever
/// holding more than max_line_bytes + chunk_bytes bytes. The returned bytes are mutable (a CSV
/// reader unescapes quotes in place) and valid until the next call.
class line_source {
public:
    line_source(std::string path, const reader_options& opt) : path_(std::move(path)), opt_(opt), sink_(opt.errors) {
        XREC_CHECK(opt.chunk_bytes > 0 && opt.max_line_bytes > 0, "reader '", path_,
                   "': chunk_bytes and max_line_bytes must be positive");
        open_();
    }

    const std::string& path() const noexcept { return path_; }
    error_sink& sink() noexcept { return sink_; }
    const error_sink& sink() const noexcept { return sink_; }
    /// Line number of the last line returned (1-based).
    std::int64_t line() const noexcept { return line_; }
    /// Bytes consumed from the file so far (for progress reports).
    std::int64_t bytes_read() const noexcept { return read_; }

    /// Reopens the file at its start; line numbers and counts start again.
    void rewind() {
        open_();
        sink_.clear();
    }

    /// The next line (without its end of line), or false at the end of the file.
    bool next(std::span<char>& out) {
        for (;;) {
            char* base = buf_.data();
            char* nl = beg_ < end_ ? static_cast<char*>(std::memchr(base + beg_, '\n', end_ - beg_)) : nullptr;
            if (discarding_) {  // the rest of a refused over-long line
                if (nl) {
                    beg_ = static_cast<std::size_t>(nl - base) + 1;
                    discarding_ = false;
                } else {
                    beg_ = end_ = 0;
                    if (eof_) return false;
                    fill_();
                }
                continue;
            }
            std::size_t len = 0;
            if (nl) {
                len = static_cast<std::size_t>(nl - base) - beg_;
            } else if (eof_) {
                if (beg_ >= end_) return false;
                len = end_ - beg_;
            } else if (end_ - beg_ > opt_.max_line_bytes + 1) {  // +1: a '\r' may still be dropped
                ++line_;  // no end of line within the limit: refuse, then drop up to the next '\n'
                too_long_();
                discarding_ = true;
                beg_ = end_ = 0;
                continue;
            } else {
                fill_();
                continue;
            }
            ++line_;
            char* s = base + beg_;
            beg_ += len + (nl ? 1 : 0);
            if (len > 0 && s[len - 1] == '\r') --len;
            if (len > opt_.max_line_bytes) {
                too_long_();
                continue;
            }
            if (len == 0) continue;
            if (opt_.check_utf8) {
                const std::size_t bad = json::find_invalid_utf8(std::string_view(s, len));
                if (bad != std::string_view::npos) {
                    char got[32];
                    std::snprintf(got, sizeof got, "byte 0x%02x", static_cast<unsigned>(static_cast<unsigned char>(s[bad])));
                    sink_.reject(path_, line_, static_cast<std::int64_t>(bad) + 1, bad_line::encoding, "UTF-8 text", got);
                    continue;
                }
            }
            out = std::span<char>(s, len);
            return true;
        }
    }

private:
    struct closer {
        void operator()(std::FILE* f) const noexcept { std::fclose(f); }
    };

    void open_() {
        f_.reset(std::fopen(path_.c_str(), "rb"));
        XREC_CHECK(f_ != nullptr, "reader: cannot open '", path_, "': ", std::strerror(errno));
        beg_ = end_ = 0;
        eof_ = discarding_ = false;
        line_ = read_ = 0;
    }
    void too_long_() {
        sink_.reject(path_, line_, static_cast<std::int64_t>(opt_.max_line_bytes) + 1, bad_line::too_long,
                     detail::cat("a line of at most ", std::to_string(opt_.max_line_bytes), " bytes"), "a longer line");
    }
    // Moves the unread bytes to the front and appends one chunk from the file.
    void fill_() {
        if (beg_ > 0) {
            std::memmove(buf_.data(), buf_.data() + beg_, end_ - beg_);
            end_ -= beg_;
            beg_ = 0;
        }
        if (buf_.size() < end_ + opt_.chunk_bytes) buf_.resize(end_ + opt_.chunk_bytes);
        const std::size_t n = std::fread(buf_.data() + end_, 1, opt_.chunk_bytes, f_.get());
        XREC_CHECK(!std::ferror(f_.get()), "reader: read error in '", path_, "' after ", read_, " bytes");
        end_ += n;
        read_ += static_cast<std::int64_t>(n);
        if (n == 0 || std::feof(f_.get())) eof_ = true;
    }

    std::string path_;
    reader_options opt_;
    error_sink sink_;
    std::unique_ptr<std::FILE, closer> f_;
    std::vector<char> buf_;
    std::size_t beg_ = 0, end_ = 0;
    bool eof_ = false, discarding_ = false;
    std::int64_t line_ = 0, read_ = 0;
};

/// Options of a delimited (CSV / TSV) file.
///  - delimiter: ',' for CSV, '\t' for TSV.
///  - header: the first line names the columns; otherwise `names` does (or "0", "1", ...).
///  - quoted: RFC 4180 quoting within one line: a field that starts with '"' runs to the next
///    '"' not doubled, "" stands for '"', and the closing quote must end the field. Quoted
///    fields spanning lines are not supported (the line is refused as a bad token).
///  - columns: the expected number of fields; 0 takes it from the header, from `names`, or
///    from the first line. A line with another count is refused (field_count).
struct delimited_options {
    char delimiter = ',';
    bool header = true;
    bool quoted = true;
    std::vector<std::string> names;
    std::size_t columns = 0;
};

/// A CSV/TSV reader yielding one raw_record per line: the fields (quotes removed) as views,
/// each with its 1-based byte column. See delimited_options for the dialect.
class delimited_reader {
public:
    delimited_reader(std::string path, delimited_options d = {}, reader_options r = {})
        : src_(std::move(path), r), d_(std::move(d)) {
        start_();
    }

    /// Column names (the header, `names`, or "0", "1", ...).
    const std::vector<std::string>& header() const noexcept { return header_; }
    const std::string& path() const noexcept { return src_.path(); }
    /// Lines skipped so far (on_error::skip), by reason; includes refusals by the schema.
    const bad_line_counts& skipped() const noexcept { return src_.sink().counts(); }
    std::int64_t bytes_read() const noexcept { return src_.bytes_read(); }

    /// Back to the first record.
    void rewind() {
        src_.rewind();
        start_();
    }

    /// The next record, or false at the end of the file.
    bool next(raw_record& rec) {
        std::span<char> line;
        while (src_.next(line)) {
            if (!split_(line)) continue;
            if (expected_ == 0) expected_ = cols_.size();
            if (cols_.size() != expected_) {
                const std::size_t k = std::min(cols_.size(), expected_);
                const std::int64_t col = cols_.size() > expected_ ? starts_[k] : static_cast<std::int64_t>(line.size()) + 1;
                src_.sink().reject(src_.path(), src_.line(), col, bad_line::field_count,
                                   std::to_string(expected_) + " fields", std::to_string(cols_.size()));
                continue;
            }
            rec = raw_record{src_.path(), src_.line(), cols_, starts_, &src_.sink()};
            return true;
        }
        return false;
    }

private:
    void start_() {
        expected_ = d_.columns;
        header_.clear();
        if (d_.header) {
            std::span<char> line;
            // A header is required: an empty file cannot be read under either policy.
            if (!src_.next(line)) XREC_FAIL(src_.path(), ":1:1: expected a header line, got an empty file");
            XREC_CHECK(split_(line), src_.path(), ":", src_.line(), ": the header line is malformed");
            for (auto c : cols_) header_.emplace_back(c);
            if (expected_ == 0) expected_ = header_.size();
        } else if (!d_.names.empty()) {
            header_ = d_.names;
            if (expected_ == 0) expected_ = header_.size();
        } else {
            for (std::size_t k = 0; k < expected_; ++k) header_.push_back(std::to_string(k));
        }
    }

    // Splits a line into cols_/starts_, unescaping quoted fields in place. False when a quote
    // is malformed (already refused through the sink).
    bool split_(std::span<char> line) {
        cols_.clear();
        starts_.clear();
        char* const s = line.data();
        const std::size_t n = line.size();
        std::size_t i = 0;
        for (;;) {
            starts_.push_back(static_cast<std::int64_t>(i) + 1);
            if (d_.quoted && i < n && s[i] == '"') {
                const std::size_t open = i;
                std::size_t w = i;  // write position: the unescaped field overwrites its source
                ++i;
                bool closed = false;
                while (i < n) {
                    if (s[i] == '"') {
                        if (i + 1 < n && s[i + 1] == '"') {
                            s[w++] = '"';
                            i += 2;
                            continue;
                        }
                        closed = true;
                        ++i;
                        break;
                    }
                    s[w++] = s[i++];
                }
                if (!closed)
                    return src_.sink().reject(src_.path(), src_.line(), static_cast<std::int64_t>(open) + 1,
                                              bad_line::token, "a closing quote on the same line", "end of line");
                if (i < n && s[i] != d_.delimiter)
                    return src_.sink().reject(src_.path(), src_.line(), static_cast<std::int64_t>(i) + 1,
                                              bad_line::token, "a delimiter after a closing quote",
                                              detail::quote(std::string_view(s + i, n - i)));
                cols_.emplace_back(s + open, w - open);
            } else {
                const char* e = static_cast<const char*>(std::memchr(s + i, d_.delimiter, n - i));
                const std::size_t j = e ? static_cast<std::size_t>(e - s) : n;
                cols_.emplace_back(s + i, j - i);
                i = j;
            }
            if (i >= n) break;
            ++i;  // the delimiter
            if (i == n) {  // a trailing delimiter opens one last, empty field
                starts_.push_back(static_cast<std::int64_t>(i) + 1);
                cols_.emplace_back(s + i, 0);
                break;
            }
        }
        return true;
    }

    line_source src_;
    delimited_options d_;
    std::vector<std::string> header_;
    std::size_t expected_ = 0;
    std::vector<std::string_view> cols_;
    std::vector<std::int64_t> starts_;
};

/// Column names of the Criteo display-advertising files: label, I1..I13, C1..C26.
inline std::vector<std::string> criteo_columns() {
    std::vector<std::string> n{"label"};
    for (int i = 1; i <= 13; ++i) n.push_back(detail::cat("I", std::to_string(i)));
    for (int i = 1; i <= 26; ++i) n.push_back(detail::cat("C", std::to_string(i)));
    return n;
}

/// A reader of Criteo TSV (Kaggle / Criteo 1TB layout: no header, 40 tab-separated fields,
/// an empty field is a missing value).
inline delimited_reader criteo_reader(std::string path, reader_options r = {}) {
    delimited_options d;
    d.delimiter = '\t';
    d.header = false;
    d.quoted = false;
    d.names = criteo_columns();
    return delimited_reader(std::move(path), std::move(d), r);
}

/// Which sparse text format a sparse_text_reader reads.
enum class sparse_format { libsvm, libffm };

/// A reader of libsvm ("label idx:val idx:val ...") or libffm ("label field:idx:val ...")
/// lines, tokens separated by spaces or tabs. Column 0 of a record is the label, columns 1..
/// are the tokens as written; the reader checks their syntax (label a number; idx and field
/// non-negative integers; val a number) so a schema can trust it. header() is
/// {"label", "features"}: a schema field on "features" takes all tokens.
class sparse_text_reader {
public:
    sparse_text_reader(std::string path, sparse_format f, reader_options r = {}) : src_(std::move(path), r), f_(f) {}

    const std::vector<std::string>& header() const noexcept { return header_; }
    const std::string& path() const noexcept { return src_.path(); }
    sparse_format format() const noexcept { return f_; }
    const bad_line_counts& skipped() const noexcept { return src_.sink().counts(); }
    std::int64_t bytes_read() const noexcept { return src_.bytes_read(); }
    void rewind() { src_.rewind(); }

    bool next(raw_record& rec) {
        std::span<char> line;
        while (src_.next(line)) {
            if (!split_(line)) continue;
            rec = raw_record{src_.path(), src_.line(), cols_, starts_, &src_.sink()};
            return true;
        }
        return false;
    }

    /// Splits a token "a:b[:c]" into its parts; false unless it has exactly `parts` parts.
    static bool split_token(std::string_view t, int parts, std::string_view out[3]) {
        for (int p = 0; p < parts; ++p) {
            const std::size_t c = p + 1 < parts ? t.find(':') : std::string_view::npos;
            if (p + 1 < parts && c == std::string_view::npos) return false;
            out[p] = t.substr(0, c);
            if (c != std::string_view::npos) t.remove_prefix(c + 1);
        }
        return out[parts - 1].find(':') == std::string_view::npos;
    }

private:
    bool split_(std::span<char> line) {
        cols_.clear();
        starts_.clear();
        const std::string_view s(line.data(), line.size());
        std::size_t i = 0;
        while (i < s.size()) {
            while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
            if (i >= s.size()) break;
            std::size_t j = i;
            while (j < s.size() && s[j] != ' ' && s[j] != '\t') ++j;
            cols_.push_back(s.substr(i, j - i));
            starts_.push_back(static_cast<std::int64_t>(i) + 1);
            i = j;
        }
        if (cols_.empty()) return false;
        double v = 0;
        if (!parse_double(cols_[0], v))
            return reject_(0, bad_line::number, "a numeric label", cols_[0]);
        const int parts = f_ == sparse_format::libsvm ? 2 : 3;
        const char* what = f_ == sparse_format::libsvm ? "a token idx:val" : "a token field:idx:val";
        for (std::size_t k = 1; k < cols_.size(); ++k) {
            std::string_view p[3];
            if (!split_token(cols_[k], parts, p)) return reject_(k, bad_line::token, what, cols_[k]);
            std::int64_t ix = 0;
            for (int q = 0; q + 1 < parts; ++q)
                if (!parse_int64(p[q], ix) || ix < 0)
                    return reject_(k, bad_line::token, q + 2 < parts ? "a non-negative field number" : "a non-negative index",
                                   cols_[k]);
            if (!parse_double(p[parts - 1], v)) return reject_(k, bad_line::number, "a numeric value after ':'", cols_[k]);
        }
        return true;
    }
    bool reject_(std::size_t k, bad_line why, const char* expected, std::string_view got) {
        return src_.sink().reject(src_.path(), src_.line(), starts_[k], why, expected, detail::quote(got));
    }

    line_source src_;
    sparse_format f_;
    std::vector<std::string> header_{"label", "features"};
    std::vector<std::string_view> cols_;
    std::vector<std::int64_t> starts_;
};

inline sparse_text_reader libsvm_reader(std::string path, reader_options r = {}) {
    return sparse_text_reader(std::move(path), sparse_format::libsvm, r);
}
inline sparse_text_reader libffm_reader(std::string path, reader_options r = {}) {
    return sparse_text_reader(std::move(path), sparse_format::libffm, r);
}

}  // namespace xrec::data
