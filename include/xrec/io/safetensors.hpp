#pragma once
// safetensors: a validating, memory-mapped reader and an atomic writer.
//
// File layout (https://github.com/huggingface/safetensors):
//   u64 little-endian N | N bytes of UTF-8 JSON header | byte buffer
// The header is one JSON object: an optional "__metadata__" object of string -> string,
// and for every tensor  "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]}
// where [b, e) is a byte range of the buffer (offsets relative to the buffer start),
// little-endian, row-major, and e - b == numel * dtype size.
//
// Reader policy (every violation throws xrec::error "safetensors: '<path>': <problem>",
// naming the tensor where there is one):
//   - the file holds at least the 8-byte length, N <= 100'000'000 (the reference
//     implementation's limit) and 8 + N <= file size;
//   - the header is valid UTF-8 JSON, an object, optionally followed by spaces (writers pad
//     it to 8 bytes), with no duplicate keys at any level;
//   - "__metadata__", when present, is an object whose values are all strings;
//   - each tensor entry is an object with a known "dtype", a "shape" of at most
//     xrec::max_rank non-negative integers, and "data_offsets" of two non-negative integers
//     with begin <= end <= buffer size and end - begin == numel * dtype size (unknown extra
//     keys in an entry are ignored, as the reference implementation does);
//   - the tensors tile the buffer exactly, as the format requires: no two overlap, there is
//     no gap between them, and there are no trailing bytes after the last one. A file cut
//     short, or with garbage appended, is therefore refused rather than half-read.
// The file is mapped read-only and never read whole: opening touches the 8 bytes and the
// header; a tensor's pages are touched when it is read. Changing or truncating the file
// while it is mapped is undefined (as for any mmap reader). safetensors_file::from_bytes
// applies the same validation, with the same messages, to bytes already in memory (a copy
// it owns): the checkpoint fuzz target reads through it (tests/fuzz/).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"
#include "xrec/core/shape.hpp"
#include "xrec/core/json.hpp"

namespace xrec::io {

static_assert(std::endian::native == std::endian::little,
              "xrec::io::safetensors assumes a little-endian host (the format is little-endian)");

/// Element types of the safetensors format. `bool_` is "BOOL" (one byte, 0 or 1).
enum class dtype : std::uint8_t { f64, f32, f16, bf16, f8_e4m3, f8_e5m2, i64, i32, i16, i8, u64, u32, u16, u8, bool_ };

/// The format's name of a dtype ("F32", ...).
inline const char* dtype_name(dtype d) {
    constexpr const char* names[] = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32",
                                     "I16", "I8",  "U64", "U32", "U16", "U8",   "BOOL"};
    return names[static_cast<int>(d)];
}
/// Bytes per element.
inline std::size_t dtype_size(dtype d) {
    constexpr std::size_t sizes[] = {8, 4, 2, 2, 1, 1, 8, 4, 2, 1, 8, 4, 2, 1, 1};
    return sizes[static_cast<int>(d)];
}
/// Looks a dtype up by its format name; false when unknown.
inline bool parse_dtype(std::string_view name, dtype& out) {
    for (int i = 0; i <= static_cast<int>(dtype::bool_); ++i)
        if (name == dtype_name(static_cast<dtype>(i))) {
            out = static_cast<dtype>(i);
            return true;
        }
    return false;
}
inline bool is_floating(dtype d) { return d <= dtype::f8_e5m2; }

/// The dtype a C++ element type is written as: double F64, float F32, integers by width
/// and signedness, bool BOOL.
template <class U>
constexpr dtype dtype_of() {
    static_assert(std::is_arithmetic_v<U>, "safetensors: element type must be arithmetic");
    if constexpr (std::is_same_v<U, bool>) return dtype::bool_;
    else if constexpr (std::is_same_v<U, double>) return dtype::f64;
    else if constexpr (std::is_same_v<U, float>) return dtype::f32;
    else {
        static_assert(std::is_integral_v<U>, "safetensors: no dtype for this floating type");
        constexpr std::size_t n = sizeof(U);
        if constexpr (std::is_signed_v<U>) return n == 8 ? dtype::i64 : n == 4 ? dtype::i32 : n == 2 ? dtype::i16 : dtype::i8;
        else return n == 8 ? dtype::u64 : n == 4 ? dtype::u32 : n == 2 ? dtype::u16 : dtype::u8;
    }
}

namespace detail {

/// IEEE binary16 -> float (exact).
inline float half_to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    std::uint32_t bits;
    if (exp == 0) {
        if (mant == 0) return std::bit_cast<float>(sign);
        const float v = std::ldexp(static_cast<float>(mant), -24);  // subnormal
        return sign ? -v : v;
    }
    if (exp == 31) bits = sign | 0x7F800000u | (mant << 13);
    else bits = sign | ((exp + 112u) << 23) | (mant << 13);
    return std::bit_cast<float>(bits);
}
/// bfloat16 -> float (exact: the top half of a float).
inline float bf16_to_float(std::uint16_t h) { return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16); }
/// float8 e5m2 -> float: the top byte of a binary16.
inline float f8_e5m2_to_float(std::uint8_t b) { return half_to_float(static_cast<std::uint16_t>(b << 8)); }
/// float8 e4m3fn -> float: bias 7, no infinities, S.1111.111 is NaN.
inline float f8_e4m3_to_float(std::uint8_t b) {
    const bool neg = b & 0x80u;
    const int exp = (b >> 3) & 0xF, mant = b & 0x7;
    float v;
    if (exp == 0xF && mant == 0x7) v = std::numeric_limits<float>::quiet_NaN();
    else if (exp == 0) v = std::ldexp(static_cast<float>(mant), -9);
    else v = std::ldexp(static_cast<float>(8 + mant), exp - 10);
    return neg ? -v : v;
}

template <class S>
S load(const std::byte* p) {
    S v;
    std::memcpy(&v, p, sizeof(S));  // the buffer need not be aligned for S
    return v;
}

/// Converts n elements of dtype d at src to U. Floating -> integer is refused (it would
/// truncate silently); integer -> integer checks the range. Returns false with `why` set.
template <class U>
bool convert(dtype d, const std::byte* src, std::size_t n, U* dst, std::string& why) {
    if (dtype_of<U>() == d) {
        if (n) std::memcpy(dst, src, n * sizeof(U));
        return true;
    }
    const std::size_t w = dtype_size(d);
    if constexpr (std::is_floating_point_v<U>) {
        // The switch is outside the loops so that each loop is a plain, vectorisable conversion.
        auto each = [&](auto tag, auto f) {
            using S = decltype(tag);
            for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<U>(f(load<S>(src + i * sizeof(S))));
        };
        auto id = [](auto v) { return v; };
        switch (d) {
            case dtype::f64: each(double{}, id); break;
            case dtype::f32: each(float{}, id); break;
            case dtype::f16: each(std::uint16_t{}, half_to_float); break;
            case dtype::bf16: each(std::uint16_t{}, bf16_to_float); break;
            case dtype::f8_e4m3: each(std::uint8_t{}, f8_e4m3_to_float); break;
            case dtype::f8_e5m2: each(std::uint8_t{}, f8_e5m2_to_float); break;
            case dtype::i64: each(std::int64_t{}, id); break;
            case dtype::i32: each(std::int32_t{}, id); break;
            case dtype::i16: each(std::int16_t{}, id); break;
            case dtype::i8: each(std::int8_t{}, id); break;
            case dtype::u64: each(std::uint64_t{}, id); break;
            case dtype::u32: each(std::uint32_t{}, id); break;
            case dtype::u16: each(std::uint16_t{}, id); break;
            case dtype::u8: each(std::uint8_t{}, id); break;
            case dtype::bool_: each(std::uint8_t{}, [](std::uint8_t v) { return v != 0; }); break;
        }
        (void)w;
        return true;
    } else {
        if (is_floating(d)) {
            why = std::string("cannot convert floating dtype ") + dtype_name(d) + " to an integer type";
            return false;
        }
        const bool src_signed = d == dtype::i64 || d == dtype::i32 || d == dtype::i16 || d == dtype::i8;
        const auto umax = static_cast<std::uint64_t>(std::numeric_limits<U>::max());
        const auto smin = static_cast<std::int64_t>(std::numeric_limits<U>::min());
        for (std::size_t i = 0; i < n; ++i) {
            const std::byte* p = src + i * w;
            if (src_signed) {
                std::int64_t v = 0;
                switch (d) {
                    case dtype::i64: v = load<std::int64_t>(p); break;
                    case dtype::i32: v = load<std::int32_t>(p); break;
                    case dtype::i16: v = load<std::int16_t>(p); break;
                    default: v = load<std::int8_t>(p); break;
                }
                if (v < smin || (v > 0 && static_cast<std::uint64_t>(v) > umax)) {
                    why = "element " + std::to_string(i) + " = " + std::to_string(v) + " is out of range of the target type";
                    return false;
                }
                dst[i] = static_cast<U>(v);
            } else {
                std::uint64_t v = 0;
                switch (d) {
                    case dtype::u64: v = load<std::uint64_t>(p); break;
                    case dtype::u32: v = load<std::uint32_t>(p); break;
                    case dtype::u16: v = load<std::uint16_t>(p); break;
                    default: v = load<std::uint8_t>(p); break;  // u8, bool
                }
                if (d == dtype::bool_) v = v != 0;
                if (v > umax) {
                    why = "element " + std::to_string(i) + " = " + std::to_string(v) + " is out of range of the target type";
                    return false;
                }
                dst[i] = static_cast<U>(v);
            }
        }
        return true;
    }
}

/// A read-only private mapping of a whole file, unmapped on destruction.
class mapped_file {
public:
    mapped_file() = default;
    mapped_file(const mapped_file&) = delete;
    mapped_file& operator=(const mapped_file&) = delete;
    mapped_file(mapped_file&& o) noexcept { swap(o); }
    mapped_file& operator=(mapped_file&& o) noexcept {
        swap(o);
        return *this;
    }
    ~mapped_file() {
        if (p_) ::munmap(p_, n_);
    }
    /// Maps `path`; `prefix` starts every error message.
    static mapped_file open(const std::string& path, const std::string& prefix) {
        mapped_file m;
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        XREC_CHECK(fd >= 0, prefix, "cannot open: ", std::strerror(errno));
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            const int e = errno;
            ::close(fd);
            XREC_FAIL(prefix, "cannot stat: ", std::strerror(e));
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd);
            XREC_FAIL(prefix, "not a regular file");
        }
        m.n_ = static_cast<std::size_t>(st.st_size);
        if (m.n_ > 0) {
            void* p = ::mmap(nullptr, m.n_, PROT_READ, MAP_PRIVATE, fd, 0);
            const int e = errno;
            ::close(fd);
            XREC_CHECK(p != MAP_FAILED, prefix, "cannot map ", m.n_, " bytes: ", std::strerror(e));
            m.p_ = p;
        } else {
            ::close(fd);
        }
        return m;
    }
    const std::byte* data() const noexcept { return static_cast<const std::byte*>(p_); }
    std::size_t size() const noexcept { return n_; }

private:
    void swap(mapped_file& o) noexcept {
        std::swap(p_, o.p_);
        std::swap(n_, o.n_);
    }
    void* p_ = nullptr;
    std::size_t n_ = 0;
};

}  // namespace detail

/// A safetensors file opened for reading through a read-only memory map (see the policy at
/// the top of this header: everything is validated on open, so later reads cannot go out of
/// bounds). Movable, not copyable; the mapping lives as long as the object.
class safetensors_file {
public:
    /// Largest header accepted, as in the reference implementation.
    static constexpr std::uint64_t max_header_bytes = 100'000'000;

    /// One tensor of the header: name, dtype name, shape, and its byte range [begin, end)
    /// relative to the start of the data buffer; `code` is the parsed dtype.
    struct tensor_info {
        std::string name, dtype;
        shape s;
        std::size_t begin = 0, end = 0;
        io::dtype code = io::dtype::u8;
    };

    /// Maps and validates `path`. Throws xrec::error naming the path and the problem.
    static safetensors_file open(const std::string& path) {
        safetensors_file f;
        f.path_ = path;
        f.map_ = detail::mapped_file::open(path, "safetensors: '" + path + "': ");
        f.validate_(f.map_.data(), f.map_.size());
        return f;
    }

    /// Validates a copy of `bytes` (a whole file's contents, e.g. received over the network,
    /// or a fuzzer's input) exactly as open() validates a mapped file; `name` stands for the
    /// path in error messages and path(). The object owns the copy, so `bytes` need not
    /// outlive it. Same policy, same messages.
    static safetensors_file from_bytes(std::span<const std::byte> bytes, const std::string& name = "<memory>") {
        safetensors_file f;
        f.path_ = name;
        f.owned_.assign(bytes.begin(), bytes.end());
        f.validate_(f.owned_.data(), f.owned_.size());
        return f;
    }

    const std::string& path() const noexcept { return path_; }
    /// The tensors in header order.
    const std::vector<tensor_info>& tensors() const noexcept { return tensors_; }
    /// The tensor with this name, or nullptr.
    const tensor_info* find(const std::string& name) const {
        auto it = index_.find(name);
        return it == index_.end() ? nullptr : &tensors_[it->second];
    }
    /// The "__metadata__" map (empty when absent).
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
    /// Shape of a tensor; throws when absent.
    shape shape_of(const std::string& name) const { return get(name).s; }
    /// The raw little-endian bytes of a tensor, straight from the mapping.
    std::span<const std::byte> bytes(const std::string& name) const {
        const auto& t = get(name);
        return {buffer_ + t.begin, t.end - t.begin};
    }
    /// Converts a tensor to U: any dtype to float/double; integer and BOOL dtypes to integer
    /// types with a range check (floating -> integer is refused).
    template <class U>
    std::vector<U> read(const std::string& name) const {
        const auto& t = get(name);
        std::vector<U> out(static_cast<std::size_t>(t.s.numel()));
        convert_into(t, out.data());
        return out;
    }
    /// As read(), straight into `dst`, which must hold exactly `count` == numel elements.
    template <class U>
    void read_into(const std::string& name, U* dst, std::int64_t count) const {
        const auto& t = get(name);
        XREC_CHECK(count == t.s.numel(), "safetensors: '", path_, "': tensor '", name, "' has ", t.s.numel(),
                   " elements, the destination ", count);
        convert_into(t, dst);
    }

private:
    // The whole policy of the header comment, over the file's bytes [data, data + size):
    // shared by open() (a mapping) and from_bytes() (an owned copy). `data` must stay valid
    // as long as *this (it does: both owners keep their storage at a stable address when
    // the object moves).
    void validate_(const std::byte* data, std::size_t size) {
        const std::string pre = "safetensors: '" + path_ + "': ";
        XREC_CHECK(size >= 8, pre, "file is ", size, " bytes, shorter than the 8-byte header length");
        const auto n = detail::load<std::uint64_t>(data);
        XREC_CHECK(n <= max_header_bytes, pre, "header length ", n, " is absurdly large (limit ", max_header_bytes, " bytes)");
        XREC_CHECK(n <= size - 8, pre, "header length ", n, " exceeds the ", size - 8, " bytes after the length field");
        const std::string_view text(reinterpret_cast<const char*>(data + 8), static_cast<std::size_t>(n));
        buffer_ = data + 8 + n;
        buffer_size_ = size - 8 - static_cast<std::size_t>(n);

        json::value root;
        try {
            root = json::parse(text);
        } catch (const error& e) {
            XREC_FAIL(pre, "bad header: ", e.what());
        }
        XREC_CHECK(root.is_object(), pre, "header is ", json::kind_name(root.k), ", not a JSON object");

        for (auto& [key, val] : root.members) {
            if (key == "__metadata__") {
                XREC_CHECK(!seen_metadata_, pre, "duplicate key '__metadata__'");
                seen_metadata_ = true;
                XREC_CHECK(val.is_object(), pre, "__metadata__ is ", json::kind_name(val.k), ", not an object");
                for (auto& [mk, mv] : val.members) {
                    XREC_CHECK(mv.is_string(), pre, "metadata value of '", mk, "' is ", json::kind_name(mv.k), ", not a string");
                    XREC_CHECK(metadata_.emplace(mk, mv.text).second, pre, "duplicate metadata key '", mk, "'");
                }
                continue;
            }
            XREC_CHECK(!index_.count(key), pre, "duplicate tensor name '", key, "'");
            index_.emplace(key, tensors_.size());
            tensors_.push_back(parse_entry(pre, key, val, buffer_size_));
        }
        check_tiling(pre, tensors_, buffer_size_);
    }

    const tensor_info& get(const std::string& name) const {
        const tensor_info* t = find(name);
        XREC_CHECK(t, "safetensors: '", path_, "': no tensor named '", name, "'");
        return *t;
    }
    template <class U>
    void convert_into(const tensor_info& t, U* dst) const {
        std::string why;
        XREC_CHECK(detail::convert(t.code, buffer_ + t.begin, static_cast<std::size_t>(t.s.numel()), dst, why),
                   "safetensors: '", path_, "': tensor '", t.name, "' (", t.dtype, "): ", why);
    }

    static std::uint64_t uint_of(const std::string& pre, const std::string& name, const char* field, const json::value& v) {
        std::uint64_t x = 0;
        XREC_CHECK(v.is_number() && json::to_uint64(v.text, x), pre, "tensor '", name, "': ", field,
                   " holds ", v.is_number() ? v.text : json::kind_name(v.k), ", not a non-negative integer");
        return x;
    }

    static tensor_info parse_entry(const std::string& pre, const std::string& name, const json::value& v,
                                   std::size_t buffer_size) {
        XREC_CHECK(v.is_object(), pre, "tensor '", name, "': entry is ", json::kind_name(v.k), ", not an object");
        const json::value *dt = nullptr, *sh = nullptr, *off = nullptr;
        for (auto& [k, m] : v.members) {
            const json::value** slot = k == "dtype" ? &dt : k == "shape" ? &sh : k == "data_offsets" ? &off : nullptr;
            if (!slot) continue;  // unknown keys are ignored, as in the reference implementation
            XREC_CHECK(*slot == nullptr, pre, "tensor '", name, "': duplicate key '", k, "'");
            *slot = &m;
        }
        XREC_CHECK(dt, pre, "tensor '", name, "': no \"dtype\"");
        XREC_CHECK(sh, pre, "tensor '", name, "': no \"shape\"");
        XREC_CHECK(off, pre, "tensor '", name, "': no \"data_offsets\"");
        tensor_info t;
        t.name = name;
        XREC_CHECK(dt->is_string(), pre, "tensor '", name, "': dtype is ", json::kind_name(dt->k), ", not a string");
        XREC_CHECK(parse_dtype(dt->text, t.code), pre, "tensor '", name, "': unknown dtype '", dt->text, "'");
        t.dtype = dt->text;

        XREC_CHECK(sh->is_array(), pre, "tensor '", name, "': shape is ", json::kind_name(sh->k), ", not an array");
        XREC_CHECK(sh->items.size() <= static_cast<std::size_t>(max_rank), pre, "tensor '", name, "': rank ",
                   sh->items.size(), " exceeds the maximum of ", max_rank);
        // The product of the NON-ZERO extents times the element size must fit in int64, even
        // when another extent is 0 and the tensor is empty: shape::numel() multiplies in
        // order, so [2^40, 2^40, 0] would overflow (undefined behaviour) before it reached the
        // 0. Checked step by step so that the check itself cannot overflow.
        const std::uint64_t elem = dtype_size(t.code);
        std::uint64_t nz = 1;
        bool has_zero = false;
        for (auto& d : sh->items) {
            const std::uint64_t e = uint_of(pre, name, "shape", d);
            if (e == 0) {
                has_zero = true;
                t.s.dims[static_cast<std::size_t>(t.s.rank++)] = 0;
                continue;
            }
            XREC_CHECK(nz <= static_cast<std::uint64_t>(INT64_MAX) / elem / e, pre, "tensor '", name,
                       "': shape overflows (more than 2^63 bytes, counting the non-zero extents)");
            nz *= e;
            t.s.dims[static_cast<std::size_t>(t.s.rank++)] = static_cast<std::int64_t>(e);
        }
        const std::uint64_t bytes = has_zero ? 0 : nz * elem;

        XREC_CHECK(off->is_array() && off->items.size() == 2, pre, "tensor '", name,
                   "': data_offsets must be an array of two integers");
        const std::uint64_t b = uint_of(pre, name, "data_offsets", off->items[0]);
        const std::uint64_t e = uint_of(pre, name, "data_offsets", off->items[1]);
        XREC_CHECK(b <= e, pre, "tensor '", name, "': data_offsets [", b, ", ", e, "] end before begin");
        XREC_CHECK(e <= buffer_size, pre, "tensor '", name, "': data_offsets [", b, ", ", e,
                   "] outside the data buffer of ", buffer_size, " bytes (file truncated?)");
        XREC_CHECK(bytes == e - b, pre, "tensor '", name, "': shape ", t.s.str(), " of ", t.dtype, " needs ", bytes,
                   " bytes but data_offsets [", b, ", ", e, "] span ", e - b);
        t.begin = static_cast<std::size_t>(b);
        t.end = static_cast<std::size_t>(e);
        return t;
    }

    // The byte ranges, sorted, must cover [0, buffer_size) exactly once.
    static void check_tiling(const std::string& pre, const std::vector<tensor_info>& ts, std::size_t buffer_size) {
        std::vector<const tensor_info*> order;
        order.reserve(ts.size());
        for (auto& t : ts) order.push_back(&t);
        std::sort(order.begin(), order.end(), [](const tensor_info* a, const tensor_info* b) {
            return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
        });
        std::size_t pos = 0;
        const tensor_info* prev = nullptr;
        for (const tensor_info* t : order) {
            XREC_CHECK(t->begin >= pos, pre, "tensors '", prev ? prev->name : "", "' and '", t->name, "' overlap (bytes [",
                       prev ? prev->begin : 0, ", ", pos, ") and [", t->begin, ", ", t->end, "))");
            XREC_CHECK(t->begin == pos, pre, "gap of ", t->begin - pos, " bytes before tensor '", t->name,
                       "' (the buffer must have no holes)");
            pos = t->end;
            prev = t;
        }
        XREC_CHECK(pos == buffer_size, pre, buffer_size - pos, " trailing bytes after the last tensor (buffer of ",
                   buffer_size, " bytes, tensors end at ", pos, ")");
    }

    std::string path_;
    detail::mapped_file map_;           // open(): the mapping
    std::vector<std::byte> owned_;      // from_bytes(): the copy (a moved vector keeps its storage)
    const std::byte* buffer_ = nullptr;
    std::size_t buffer_size_ = 0;
    bool seen_metadata_ = false;
    std::vector<tensor_info> tensors_;
    std::unordered_map<std::string, std::size_t> index_;
    std::map<std::string, std::string> metadata_;
};

/// Builds a safetensors file from tensors the caller owns and writes it atomically.
///
/// `add` records a pointer, not a copy (a checkpoint of large tables must not double the
/// memory): the data must stay valid and unchanged until write() returns. The header lists
/// the tensors in the order they were added; in the buffer they are laid out in that order
/// too, stably grouped by decreasing element size, so that every tensor is naturally
/// aligned in the file (the header is padded with spaces to a multiple of 8 bytes, as the
/// reference writer does). Metadata keys are written in sorted order.
///
/// write() creates "<path>.xrec-tmp-<pid>-<n>" in the target's directory, writes, fsyncs,
/// renames it over `path` (atomic on POSIX) and fsyncs the directory: a crash leaves
/// either the old file or the new one, never a half-written one. On any failure the
/// temporary file is removed and xrec::error names the path and the system error.
class safetensors_writer {
public:
    /// Adds a tensor of `dtype_name` ("F32", ...) with shape `s` whose numel * size bytes
    /// start at `data` (may be null only when empty).
    void add(std::string name, std::string dtype_name, shape s, const void* data) {
        dtype d;
        XREC_CHECK(parse_dtype(dtype_name, d), "safetensors_writer: tensor '", name, "': unknown dtype '", dtype_name, "'");
        add_impl(std::move(name), d, s, data);
    }
    /// Adds a tensor of C++ element type U (dtype from dtype_of<U>()).
    template <class U>
    void add(std::string name, shape s, const U* data) {
        add_impl(std::move(name), dtype_of<U>(), s, data);
    }
    /// Sets (or replaces) one "__metadata__" entry.
    void set_metadata(std::string k, std::string v) {
        XREC_CHECK(json::find_invalid_utf8(k) == std::string::npos && json::find_invalid_utf8(v) == std::string::npos,
                   "safetensors_writer: metadata key '", k, "': key and value must be valid UTF-8");
        metadata_[std::move(k)] = std::move(v);
    }
    /// The complete header: JSON padded with spaces to a multiple of 8 bytes.
    std::string header() const {
        std::vector<std::size_t> begin(items_.size());
        std::size_t pos = 0;
        for (std::size_t i : layout_order()) {
            begin[i] = pos;
            pos += items_[i].bytes;
        }
        std::string h = "{";
        if (!metadata_.empty()) {
            h += "\"__metadata__\":{";
            bool first = true;
            for (auto& [k, v] : metadata_) {
                if (!first) h += ',';
                first = false;
                json::append_quoted(h, k);
                h += ':';
                json::append_quoted(h, v);
            }
            h += '}';
        }
        for (std::size_t i = 0; i < items_.size(); ++i) {
            const item& it = items_[i];
            if (i || !metadata_.empty()) h += ',';
            json::append_quoted(h, it.name);
            h += ":{\"dtype\":\"";
            h += dtype_name(it.code);
            h += "\",\"shape\":[";
            for (int r = 0; r < it.s.rank; ++r) {
                if (r) h += ',';
                h += std::to_string(it.s[r]);
            }
            h += "],\"data_offsets\":[" + std::to_string(begin[i]) + "," + std::to_string(begin[i] + it.bytes) + "]}";
        }
        h += '}';
        h.append((8 - h.size() % 8) % 8, ' ');
        return h;
    }
    /// Writes the file atomically (see the class comment).
    void write(const std::string& path) const {
        const std::string h = header();
        const std::string tmp = make_temp_name(path);
        const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        XREC_CHECK(fd >= 0, "safetensors_writer: '", path, "': cannot create temporary file '", tmp, "': ", std::strerror(errno));
        auto fail = [&](const char* what, int err, bool opened) {
            if (opened) ::close(fd);
            ::unlink(tmp.c_str());
            XREC_FAIL("safetensors_writer: '", path, "': ", what, ": ", std::strerror(err));
        };
        const std::uint64_t n = h.size();
        unsigned char len[8];
        for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
        if (!write_all(fd, len, 8) || !write_all(fd, h.data(), h.size())) fail("write failed", errno, true);
        for (std::size_t i : layout_order())
            if (!write_all(fd, items_[i].data, items_[i].bytes)) fail("write failed", errno, true);
        if (::fsync(fd) != 0) fail("fsync failed", errno, true);
        if (::close(fd) != 0) fail("close failed", errno, false);
        if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename of the temporary file failed", errno, false);
        // Make the rename itself durable. Best effort: some file systems refuse fsync on a directory.
        std::string dir = std::filesystem::path(path).parent_path().string();
        if (dir.empty()) dir = ".";
        const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)::fsync(dfd);
            ::close(dfd);
        }
    }
    std::size_t size() const noexcept { return items_.size(); }

private:
    struct item {
        std::string name;
        dtype code;
        shape s;
        const void* data;
        std::size_t bytes;
    };

    void add_impl(std::string name, dtype d, shape s, const void* data) {
        XREC_CHECK(!name.empty(), "safetensors_writer: a tensor needs a name");
        XREC_CHECK(name != "__metadata__", "safetensors_writer: '__metadata__' is reserved, not a tensor name");
        XREC_CHECK(json::find_invalid_utf8(name) == std::string::npos, "safetensors_writer: tensor name is not valid UTF-8");
        for (auto& it : items_) XREC_CHECK(it.name != name, "safetensors_writer: duplicate tensor name '", name, "'");
        const std::size_t bytes = static_cast<std::size_t>(s.numel()) * dtype_size(d);
        XREC_CHECK(data || bytes == 0, "safetensors_writer: tensor '", name, "' has no data");
        items_.push_back({std::move(name), d, s, data, bytes});
    }

    // Insertion order, stably grouped by decreasing element size.
    std::vector<std::size_t> layout_order() const {
        std::vector<std::size_t> o(items_.size());
        for (std::size_t i = 0; i < o.size(); ++i) o[i] = i;
        std::stable_sort(o.begin(), o.end(),
                         [&](std::size_t a, std::size_t b) { return dtype_size(items_[a].code) > dtype_size(items_[b].code); });
        return o;
    }

    static std::string make_temp_name(const std::string& path) {
        static std::atomic<unsigned> counter{0};
        return path + ".xrec-tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
    }

    static bool write_all(int fd, const void* p, std::size_t n) {
        const char* c = static_cast<const char*>(p);
        while (n > 0) {
            const std::size_t chunk = std::min<std::size_t>(n, std::size_t{1} << 30);
            const ssize_t w = ::write(fd, c, chunk);
            if (w < 0) {
                if (errno == EINTR) continue;
                return false;
            }
            if (w == 0) {
                errno = EIO;
                return false;
            }
            c += w;
            n -= static_cast<std::size_t>(w);
        }
        return true;
    }

    std::vector<item> items_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace xrec::io
