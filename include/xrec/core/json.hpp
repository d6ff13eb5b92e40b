#pragma once
// A minimal JSON reader and string escaper, enough for safetensors headers and checkpoint
// metadata. Not a general JSON library: it keeps numbers as their source text (the caller
// decides what a valid number is), keeps object members in file order (so duplicate keys
// can be refused instead of silently overwritten) and limits nesting depth.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"

namespace xrec::json {

struct member;

/// One parsed JSON value. `text` holds a string's decoded UTF-8 contents or a number's
/// source text; `items` the elements of an array; `members` the (key, value) pairs of an
/// object in the order they appear, duplicates included.
struct value {
    enum class kind { null, boolean, number, string, array, object };
    kind k = kind::null;
    bool flag = false;
    std::string text;
    std::vector<value> items;
    std::vector<member> members;  // a named struct, not std::pair: pair needs a complete value

    bool is_object() const noexcept { return k == kind::object; }
    bool is_array() const noexcept { return k == kind::array; }
    bool is_string() const noexcept { return k == kind::string; }
    bool is_number() const noexcept { return k == kind::number; }
};

/// One (key, value) pair of an object, named like std::pair's members.
struct member {
    std::string first;
    value second;
};

/// Name of a kind, for error messages.
inline const char* kind_name(value::kind k) {
    switch (k) {
        case value::kind::null: return "null";
        case value::kind::boolean: return "a boolean";
        case value::kind::number: return "a number";
        case value::kind::string: return "a string";
        case value::kind::array: return "an array";
        case value::kind::object: return "an object";
    }
    return "?";
}

/// Parses a number's source text as a non-negative integer that fits in std::uint64_t.
/// Returns false for fractions, exponents, signs and overflow (safetensors shapes and
/// offsets are plain non-negative integers).
inline bool to_uint64(const std::string& s, std::uint64_t& out) {
    if (s.empty() || s.size() > 20) return false;
    std::uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        const auto d = static_cast<std::uint64_t>(c - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    out = v;
    return true;
}

/// Checks that `s` is well-formed UTF-8 (no overlong forms, no surrogates, <= U+10FFFF).
/// Returns the byte offset of the first bad sequence, or npos.
inline std::size_t find_invalid_utf8(std::string_view s) {
    std::size_t i = 0;
    const std::size_t n = s.size();
    while (i < n) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            ++i;
            continue;
        }
        std::size_t len = 0;
        std::uint32_t cp = 0;
        if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1Fu;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0Fu;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07u;
        } else {
            return i;
        }
        if (i + len > n) return i;
        for (std::size_t j = 1; j < len; ++j) {
            const auto cc = static_cast<unsigned char>(s[i + j]);
            if ((cc & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (cc & 0x3Fu);
        }
        const std::uint32_t min_cp = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
        if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += len;
    }
    return std::string_view::npos;
}

namespace detail {

inline void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

/// Recursive-descent parser over a byte range. Errors carry the byte offset; the caller
/// prefixes the file name.
class parser {
public:
    explicit parser(std::string_view s) : s_(s) {}

    value parse_document() {
        skip_ws();
        value v = parse_value(0);
        skip_ws();
        if (pos_ != s_.size()) fail("unexpected character after the JSON value");
        return v;
    }

private:
    static constexpr int max_depth = 64;

    [[noreturn]] void fail(const char* what) const { XREC_FAIL("invalid JSON at byte ", pos_, ": ", what); }

    void skip_ws() {
        while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
    }
    bool eat(char c) {
        if (pos_ < s_.size() && s_[pos_] == c) {
            ++pos_;
            return true;
        }
        return false;
    }
    void expect_word(std::string_view w) {
        if (s_.substr(pos_, w.size()) != w) fail("unknown literal");
        pos_ += w.size();
    }

    value parse_value(int depth) {
        if (depth > max_depth) fail("nesting too deep");
        if (pos_ >= s_.size()) fail("unexpected end of input");
        value v;
        const char c = s_[pos_];
        if (c == '{') {
            v.k = value::kind::object;
            ++pos_;
            skip_ws();
            if (eat('}')) return v;
            for (;;) {
                skip_ws();
                if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a string key");
                std::string key = parse_string();
                skip_ws();
                if (!eat(':')) fail("expected ':'");
                skip_ws();
                v.members.push_back(member{std::move(key), parse_value(depth + 1)});
                skip_ws();
                if (eat(',')) continue;
                if (eat('}')) return v;
                fail("expected ',' or '}'");
            }
        }
        if (c == '[') {
            v.k = value::kind::array;
            ++pos_;
            skip_ws();
            if (eat(']')) return v;
            for (;;) {
                skip_ws();
                v.items.push_back(parse_value(depth + 1));
                skip_ws();
                if (eat(',')) continue;
                if (eat(']')) return v;
                fail("expected ',' or ']'");
            }
        }
        if (c == '"') {
            v.k = value::kind::string;
            v.text = parse_string();
            return v;
        }
        if (c == 't') {
            expect_word("true");
            v.k = value::kind::boolean;
            v.flag = true;
            return v;
        }
        if (c == 'f') {
            expect_word("false");
            v.k = value::kind::boolean;
            return v;
        }
        if (c == 'n') {
            expect_word("null");
            return v;
        }
        if (c == '-' || (c >= '0' && c <= '9')) {
            v.k = value::kind::number;
            v.text = parse_number();
            return v;
        }
        fail("unexpected character");
    }

    // RFC 8259 number grammar; returns the source text.
    std::string parse_number() {
        const std::size_t start = pos_;
        auto digit = [&] { return pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9'; };
        eat('-');
        if (eat('0')) {
        } else if (digit()) {
            while (digit()) ++pos_;
        } else {
            fail("bad number");
        }
        if (eat('.')) {
            if (!digit()) fail("bad number");
            while (digit()) ++pos_;
        }
        if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
            ++pos_;
            if (!eat('+')) eat('-');
            if (!digit()) fail("bad number");
            while (digit()) ++pos_;
        }
        return std::string(s_.substr(start, pos_ - start));
    }

    unsigned hex4() {
        if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
        unsigned v = 0;
        for (int i = 0; i < 4; ++i) {
            const char c = s_[pos_++];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
            else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
            else fail("bad \\u escape");
        }
        return v;
    }

    std::string parse_string() {
        ++pos_;  // opening quote
        std::string out;
        for (;;) {
            if (pos_ >= s_.size()) fail("unterminated string");
            const auto c = static_cast<unsigned char>(s_[pos_]);
            if (c == '"') {
                ++pos_;
                return out;
            }
            if (c < 0x20) fail("control character in string");
            if (c != '\\') {
                out += static_cast<char>(c);
                ++pos_;
                continue;
            }
            ++pos_;
            if (pos_ >= s_.size()) fail("unterminated escape");
            const char e = s_[pos_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    std::uint32_t cp = hex4();
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        if (!(eat('\\') && eat('u'))) fail("unpaired surrogate");
                        const std::uint32_t lo = hex4();
                        if (lo < 0xDC00 || lo > 0xDFFF) fail("unpaired surrogate");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        fail("unpaired surrogate");
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: fail("unknown escape");
            }
        }
    }

    std::string_view s_;
    std::size_t pos_ = 0;
};

}  // namespace detail

/// Parses one JSON document (surrounding whitespace allowed, nothing else). The input must
/// be valid UTF-8. Throws xrec::error "invalid JSON at byte K: ..." on any defect.
inline value parse(std::string_view text) {
    const std::size_t bad = find_invalid_utf8(text);
    XREC_CHECK(bad == std::string_view::npos, "invalid UTF-8 at byte ", bad);
    return detail::parser(text).parse_document();
}

/// Appends `s` to `out` as a quoted JSON string: '"', '\\' and control characters escaped,
/// everything else (UTF-8 included) copied as is.
inline void append_quoted(std::string& out, std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    out += '"';
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            default:
                if (c < 0x20) {
                    out += "\\u00";
                    out += hex[c >> 4];
                    out += hex[c & 0xF];
                } else {
                    out += ch;
                }
        }
    }
    out += '"';
}

}  // namespace xrec::json
