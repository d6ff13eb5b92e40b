#pragma once
// The reduced-precision number formats of serving weights: bf16 values and row-wise int8
// rows (a float scale and bias per row). Scalar conversions only; the SIMD gathers that
// read these formats are in backend/cpu_kernels.hpp, the store-level conversion in
// serve/quantize.hpp.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace xrec {

/// How an embedding table's values are stored.
///  - full: T itself (the training format; the only one an optimizer or a tape may touch).
///  - bf16: each value as bfloat16 (the top 16 bits of an IEEE float: 8 exponent bits, 7
///    stored mantissa bits), rounded to nearest, ties to even. A row is 2 * dim bytes.
///  - int8_rowwise: FBGEMM's 8-bit row-wise format. Per row, bias = min_d x[d] and
///    scale = (max_d x[d] - bias) / 255; code q[d] = round((x[d] - bias) / scale) in
///    [0, 255] and the value read back is x'[d] = scale * q[d] + bias. A row is dim code
///    bytes followed by the float scale and the float bias (dim + 8 bytes, unaligned).
enum class table_precision : std::uint8_t { full, bf16, int8_rowwise };

inline const char* table_precision_name(table_precision p) {
    switch (p) {
        case table_precision::full: return "full";
        case table_precision::bf16: return "bf16";
        case table_precision::int8_rowwise: return "int8_rowwise";
    }
    return "?";
}

/// Bytes of one stored row of `dim` values of a reduced format (0 for full: that is
/// dim * sizeof(T) and lives in the table's T buffer).
inline constexpr std::int64_t reduced_row_bytes(table_precision p, std::int64_t dim) {
    return p == table_precision::bf16 ? 2 * dim : p == table_precision::int8_rowwise ? dim + 8 : 0;
}

/// float -> bf16 bits, rounded to nearest with ties to even (the rounding of an IEEE
/// conversion; adding 0x7fff plus the lowest kept bit and truncating does it). NaN stays a
/// (quiet) NaN instead of rounding into infinity; infinities and overflow to infinity
/// behave as IEEE rounding does. Relative error of a normal value: at most 2^-8 (the unit
/// roundoff of 8 significant bits: half an ulp 2^(e-8) over |x| >= 2^e).
inline std::uint16_t to_bf16(float x) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
}

/// bf16 bits -> float (exact: the bits become the top half of the float).
inline float from_bf16(std::uint16_t h) noexcept {
    const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}

/// x rounded to the nearest bf16 value, as a float.
inline float round_bf16(float x) noexcept { return from_bf16(to_bf16(x)); }

/// The (scale, bias) of one row in int8_rowwise, read from its stored bytes.
struct int8_row_params {
    float scale = 0, bias = 0;
};

inline int8_row_params read_int8_row_params(const std::uint8_t* row, std::int64_t dim) noexcept {
    int8_row_params p;
    std::memcpy(&p.scale, row + dim, 4);
    std::memcpy(&p.bias, row + dim + 4, 4);
    return p;
}

/// Packs one row of `dim` finite values into int8_rowwise bytes (dim + 8 at `out`).
/// A constant row gets scale 0 and codes 0: it is read back exactly. The code is computed
/// with a division (not a multiplication by 255 / range) so it is the nearest one:
/// |x - x'| <= scale / 2 up to the float rounding of scale * q + bias.
template <class T>
void quantize_row_int8(const T* x, std::int64_t dim, std::uint8_t* out) {
    float lo = static_cast<float>(x[0]), hi = lo;
    for (std::int64_t d = 1; d < dim; ++d) {
        lo = std::min(lo, static_cast<float>(x[d]));
        hi = std::max(hi, static_cast<float>(x[d]));
    }
    const float scale = (hi - lo) / 255.0f;
    for (std::int64_t d = 0; d < dim; ++d) {
        float q = scale > 0 ? std::nearbyint((static_cast<float>(x[d]) - lo) / scale) : 0.0f;
        q = std::clamp(q, 0.0f, 255.0f);
        out[d] = static_cast<std::uint8_t>(q);
    }
    std::memcpy(out + dim, &scale, 4);
    std::memcpy(out + dim + 4, &lo, 4);
}

/// One value of an int8_rowwise row read back: scale * q[d] + bias.
inline float dequantize_int8(const std::uint8_t* row, std::int64_t dim, std::int64_t d) noexcept {
    const int8_row_params p = read_int8_row_params(row, dim);
    return p.scale * static_cast<float>(row[d]) + p.bias;
}

}  // namespace xrec
