#pragma once
// Non-owning tensor views and jagged (values + offsets) inputs.
#include <cstdint>
#include <span>
#include <type_traits>

#include "xrec/core/shape.hpp"

namespace xrec {

/// A non-owning row-major view: `data` holds `s.numel()` elements, the last extent
/// contiguous. Views never own memory; owners are arenas, stores and the caller.
template <class T>
struct tensor_view {
    T* data = nullptr;
    shape s;

    std::int64_t numel() const { return s.numel(); }
    std::int64_t rows() const { return s.rows(); }
    std::int64_t cols() const { return s.cols(); }
    T* row(std::int64_t i) const { return data + i * s.cols(); }
    T& operator()(std::int64_t i, std::int64_t j) const { return data[i * s.cols() + j]; }
    T& operator[](std::int64_t i) const { return data[i]; }
    // A template, so that tensor_view<const T> declares no conversion to itself.
    template <class U = T>
        requires(!std::is_const_v<U>)
    operator tensor_view<const U>() const {
        return {data, s};
    }
    std::span<T> span() const { return {data, static_cast<std::size_t>(s.numel())}; }
};

/// Jagged ids: bag `b` holds `values[offsets[b] .. offsets[b+1])`. `offsets` has
/// batch()+1 entries, starts at 0 and never decreases (PyTorch's include_last_offset
/// layout). Optional per-id `weights` (same length as `values`) live beside it in the
/// layers that take them. Validate with `check()` at API boundaries.
struct jagged_ids {
    std::span<const std::int64_t> values;
    std::span<const std::int64_t> offsets;

    std::int64_t batch() const { return offsets.empty() ? 0 : static_cast<std::int64_t>(offsets.size()) - 1; }
    std::int64_t nnz() const { return static_cast<std::int64_t>(values.size()); }
    std::int64_t begin(std::int64_t b) const { return offsets[static_cast<std::size_t>(b)]; }
    std::int64_t end(std::int64_t b) const { return offsets[static_cast<std::size_t>(b + 1)]; }

    /// Throws xrec::error naming `who` unless the offsets are well formed and every id
    /// lies in [0, rows).
    void check(const char* who, std::int64_t rows) const {
        XREC_CHECK(!offsets.empty(), who, ": jagged input needs batch+1 offsets, got none");
        XREC_CHECK(offsets.front() == 0, who, ": offsets[0] must be 0, got ", offsets.front());
        for (std::size_t b = 1; b < offsets.size(); ++b)
            XREC_CHECK(offsets[b] >= offsets[b - 1], who, ": offsets decrease at bag ", b - 1, " (",
                       offsets[b - 1], " > ", offsets[b], ")");
        XREC_CHECK(offsets.back() == nnz(), who, ": last offset ", offsets.back(), " != number of values ",
                   nnz());
        for (std::size_t i = 0; i < values.size(); ++i)
            XREC_CHECK(values[i] >= 0 && values[i] < rows, who, ": id ", values[i], " at position ", i,
                       " is outside the table's ", rows, " rows");
    }
};

}  // namespace xrec
