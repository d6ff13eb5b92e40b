#pragma once
// Kernels of the cpu backend: xsimd loops for elementwise work, activations, reductions,
// gathers and scatters; Eigen maps for GEMM. Every function is templated on the xsimd
// architecture through the tag. Single-threaded: ops split work over the context's pool.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>  // pmuludq for the vector Philox of dropout_mask
#endif

#include <Eigen/Core>
#include <xsimd/xsimd.hpp>

#include "xrec/backend/activation.hpp"
#include "xrec/backend/kernels.hpp"
#include "xrec/backend/policy.hpp"
#include "xrec/backend/tags.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/reduced_precision.hpp"
#include "xrec/core/rng.hpp"

namespace xrec {

namespace kernels {

namespace detail {
template <class T, class A>
using batch = xsimd::batch<T, A>;

// Applies f to full SIMD batches and g to the scalar tail.
template <class T, class A, class F, class G>
inline void simd_loop(std::int64_t n, F&& f, G&& g) {
    constexpr std::int64_t w = static_cast<std::int64_t>(batch<T, A>::size);
    std::int64_t i = 0;
    for (; i + w <= n; i += w) f(i);
    for (; i < n; ++i) g(i);
}

template <class T>
inline T scalar_act(activation a, T x) {
    switch (a) {
        case activation::identity: return x;
        case activation::relu: return x > T(0) ? x : T(0);
        case activation::sigmoid: return T(1) / (T(1) + std::exp(-x));
        case activation::tanh: return std::tanh(x);
        case activation::gelu: return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
    }
    return x;
}
// Derivative given the input x and the output y.
template <class T>
inline T scalar_dact(activation a, T x, T y) {
    switch (a) {
        case activation::identity: return T(1);
        case activation::relu: return x > T(0) ? T(1) : T(0);
        case activation::sigmoid: return y * (T(1) - y);
        case activation::tanh: return T(1) - y * y;
        case activation::gelu: {
            const T cdf = T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440)));
            const T pdf = std::exp(T(-0.5) * x * x) * T(0.39894228040143267794);
            return cdf + x * pdf;
        }
    }
    return T(1);
}
}  // namespace detail

namespace detail {
// Where xsimd::haddp puts the sum of each input batch: slot[r] = the output lane of row r,
// or all -1 when its result is not a permutation of the row sums. Measured once per
// architecture because xsimd 8.1's AVX-512 haddp returns the sums of rows 2-5 and 10-13 in
// a swapped order (sse2 and avx2 are in order); the measurement keeps the kernel right
// whichever xsimd it is built with.
template <class T, class A>
const std::array<int, batch<T, A>::size>& haddp_slots() {
    using bt = batch<T, A>;
    constexpr int w = static_cast<int>(bt::size);
    static const std::array<int, w> slots = [] {
        constexpr int n = static_cast<int>(batch<T, A>::size);  // not w: clang 14 wants w captured
        std::array<int, n> out{};
        batch<T, A> rows[n];
        for (int r = 0; r < n; ++r) rows[r] = batch<T, A>(T(r + 1));
        alignas(64) T sums[n];
        xsimd::haddp(rows).store_aligned(sums);
        std::array<bool, n> seen{};
        for (int i = 0; i < n; ++i) {
            const int r = static_cast<int>(sums[i] / T(n)) - 1;
            if (r < 0 || r >= n || sums[i] != T(n * (r + 1)) || seen[static_cast<std::size_t>(r)]) {
                out.fill(-1);
                return out;
            }
            seen[static_cast<std::size_t>(r)] = true;
            out[static_cast<std::size_t>(r)] = i;
        }
        return out;
    }();
    return slots;
}

// C[m x n] (+)= alpha * A B^T with A [m x k] and B [n x k] both row-major: every C
// element is a dot product of two contiguous rows. Register-blocked 4 x 4: sixteen SIMD
// accumulators over k, then one horizontal sum each. Reads A and B in place (no packing,
// no allocation): this is the shape of every linear layer's forward (x W^T).
template <class T, class A>
void gemm_nt_dots(std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda,
                  const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
    using bt = batch<T, A>;
    constexpr std::int64_t w = static_cast<std::int64_t>(bt::size);
    constexpr std::int64_t mr = 4, nr = 4;
    const std::int64_t kv = k / w * w;
    auto store = [&](std::int64_t i, std::int64_t j, T v) {
        T& dst = c[i * ldc + j];
        dst = beta == T(0) ? alpha * v : alpha * v + beta * dst;
    };
    std::int64_t i = 0;
    for (; i + mr <= m; i += mr) {
        const T* a0 = a + i * lda;
        std::int64_t j = 0;
        for (; j + nr <= n; j += nr) {
            const T* b0 = b + j * ldb;
            bt acc[mr][nr];
            for (auto& r : acc)
                for (auto& v : r) v = bt(T(0));
            for (std::int64_t p = 0; p < kv; p += w) {
                bt bv[nr];
                for (std::int64_t jj = 0; jj < nr; ++jj) bv[jj] = bt::load_unaligned(b0 + jj * ldb + p);
                for (std::int64_t ii = 0; ii < mr; ++ii) {
                    const bt av = bt::load_unaligned(a0 + ii * lda + p);
                    for (std::int64_t jj = 0; jj < nr; ++jj) acc[ii][jj] = xsimd::fma(av, bv[jj], acc[ii][jj]);
                }
            }
            for (std::int64_t ii = 0; ii < mr; ++ii)
                for (std::int64_t jj = 0; jj < nr; ++jj) {
                    T v = xsimd::hadd(acc[ii][jj]);
                    for (std::int64_t p = kv; p < k; ++p) v += a0[ii * lda + p] * b0[jj * ldb + p];
                    store(i + ii, j + jj, v);
                }
        }
        for (; j < n; ++j) {
            const T* b0 = b + j * ldb;
            bt acc[mr];
            for (auto& v : acc) v = bt(T(0));
            for (std::int64_t p = 0; p < kv; p += w) {
                const bt bv = bt::load_unaligned(b0 + p);
                for (std::int64_t ii = 0; ii < mr; ++ii) acc[ii] = xsimd::fma(bt::load_unaligned(a0 + ii * lda + p), bv, acc[ii]);
            }
            for (std::int64_t ii = 0; ii < mr; ++ii) {
                T v = xsimd::hadd(acc[ii]);
                for (std::int64_t p = kv; p < k; ++p) v += a0[ii * lda + p] * b0[p];
                store(i + ii, j, v);
            }
        }
    }
    // Remaining rows: one row against 4 B rows at a time (the batch-1 GEMV path). The
    // accumulators of w consecutive outputs are kept and reduced together by one parallel
    // horizontal add (xsimd::haddp: a transpose-and-add tree), not w separate hadds, whose
    // shuffles cost about as much as the FMAs of a 400-wide dot; the loads stay 4 streams.
    for (; i < m; ++i) {
        const T* a0 = a + i * lda;
        std::int64_t j = 0;
        if constexpr (w % nr == 0) {
            for (; j + w <= n; j += w) {
                bt stash[w];
                for (std::int64_t g = 0; g < w; g += nr) {
                    const T* b0 = b + (j + g) * ldb;
                    bt acc[nr];
                    for (auto& v : acc) v = bt(T(0));
                    for (std::int64_t p = 0; p < kv; p += w) {
                        const bt av = bt::load_unaligned(a0 + p);
                        for (std::int64_t jj = 0; jj < nr; ++jj) acc[jj] = xsimd::fma(av, bt::load_unaligned(b0 + jj * ldb + p), acc[jj]);
                    }
                    for (std::int64_t jj = 0; jj < nr; ++jj) stash[g + jj] = acc[jj];
                }
                alignas(64) T sums[w];
                const auto& slot = haddp_slots<T, A>();
                if (slot[0] >= 0)
                    xsimd::haddp(stash).store_aligned(sums);
                for (std::int64_t jj = 0; jj < w; ++jj) {
                    T v = slot[0] >= 0 ? sums[slot[static_cast<std::size_t>(jj)]] : xsimd::hadd(stash[jj]);
                    for (std::int64_t p = kv; p < k; ++p) v += a0[p] * b[(j + jj) * ldb + p];
                    store(i, j + jj, v);
                }
            }
        }
        for (; j + nr <= n; j += nr) {
            const T* b0 = b + j * ldb;
            bt acc[nr];
            for (auto& v : acc) v = bt(T(0));
            for (std::int64_t p = 0; p < kv; p += w) {
                const bt av = bt::load_unaligned(a0 + p);
                for (std::int64_t jj = 0; jj < nr; ++jj) acc[jj] = xsimd::fma(av, bt::load_unaligned(b0 + jj * ldb + p), acc[jj]);
            }
            for (std::int64_t jj = 0; jj < nr; ++jj) {
                T v = xsimd::hadd(acc[jj]);
                for (std::int64_t p = kv; p < k; ++p) v += a0[p] * b0[jj * ldb + p];
                store(i, j + jj, v);
            }
        }
        for (; j < n; ++j) {
            const T* b0 = b + j * ldb;
            bt acc(T(0));
            for (std::int64_t p = 0; p < kv; p += w) acc = xsimd::fma(bt::load_unaligned(a0 + p), bt::load_unaligned(b0 + p), acc);
            T v = xsimd::hadd(acc);
            for (std::int64_t p = kv; p < k; ++p) v += a0[p] * b0[p];
            store(i, j, v);
        }
    }
}
}  // namespace detail

namespace detail {
// Eigen's blocking descriptor over buffers we own, so its packed GEMM never allocates.
template <class T>
struct borrowed_blocking : Eigen::internal::level3_blocking<T, T> {
    borrowed_blocking(T* a, T* b, Eigen::Index mc, Eigen::Index nc, Eigen::Index kc) {
        this->m_blockA = a;
        this->m_blockB = b;
        this->m_mc = mc;
        this->m_nc = nc;
        this->m_kc = kc;
    }
};
// Per-thread packing buffer of the cpu GEMM, grown to the largest request and then reused:
// zero allocations in steady state without threading a workspace through every kernel.
// Keyed by the architecture so that TUs built for different ISAs own different buffers.
template <class T, class A>
T* gemm_pack_buffer(std::size_t n) {
    thread_local std::vector<T, Eigen::aligned_allocator<T>> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}
}  // namespace detail

namespace detail {
// Eigen's packed GEMM on the raw pointers, with packing buffers from the per-thread buffer
// (so no call allocates once the buffer has grown to the largest shape). Semantics as
// kernels::gemm. Kept as the fallback for shapes the packed xsimd kernel does not win and
// as the baseline of bench/gemm.cpp.
template <class T, class A>
void gemm_eigen(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
                std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
    if (m == 0 || n == 0) return;
    for (std::int64_t i = 0; i < m; ++i) {
        T* row = c + i * ldc;
        if (beta == T(0))
            std::fill(row, row + n, T(0));
        else if (beta != T(1))
            for (std::int64_t j = 0; j < n; ++j) row[j] *= beta;
    }
    if (k == 0) return;
    namespace ei = Eigen::internal;
    using idx = Eigen::Index;
    // Eigen computes a row-major product as the column-major product of the transposes,
    // so its blocking sizes are those of the (n x m) problem.
    idx kc = k, mc = n, nc = m;
    ei::computeProductBlockingSizes<T, T, 1, idx>(kc, mc, nc, 1);
    // Eigen's heuristic only shrinks: mc <= n and nc <= m, while kc depends on k alone. Sizing
    // the buffer kc * (n + m) rather than kc * (mc + nc) makes the request monotone in the
    // batch m, so one call at the largest batch sizes it for every smaller one.
    constexpr std::size_t pad = 64 / sizeof(T);
    const std::size_t size_a = (static_cast<std::size_t>(kc * n) + pad - 1) / pad * pad;
    T* buf = gemm_pack_buffer<T, A>(size_a + static_cast<std::size_t>(kc * m));
    borrowed_blocking<T> blocking(buf, buf + size_a, mc, nc, kc);
    auto run = [&](auto lhs_order, auto rhs_order) {
        ei::general_matrix_matrix_product<idx, T, decltype(lhs_order)::value, false, T, decltype(rhs_order)::value, false,
                                          Eigen::RowMajor, 1>::run(m, n, k, a, lda, b, ldb, c, 1, ldc, alpha, blocking,
                                                                   nullptr);
    };
    using row = std::integral_constant<int, Eigen::RowMajor>;
    using col = std::integral_constant<int, Eigen::ColMajor>;
    if (!trans_a && !trans_b) run(row{}, row{});
    else if (!trans_a && trans_b) run(row{}, col{});
    else if (trans_a && !trans_b) run(col{}, row{});
    else run(col{}, col{});
}

// Register tile of the packed GEMM: mr rows of C by nr = nv SIMD batches of columns.
// mr x nv accumulators plus nv B batches plus one A broadcast must fit the register file:
// 12 x 2 (27 of 32 zmm) where the batch is 64 bytes (AVX-512), 6 x 2 (15 of 16) otherwise.
template <class T, class A>
struct gemm_tile {
    static constexpr std::int64_t w = static_cast<std::int64_t>(batch<T, A>::size);
    static constexpr std::int64_t nv = policy<cpu<A>>::gemm_nr_batches;
    static constexpr std::int64_t nr = nv * w;
    static constexpr std::int64_t mr = policy<cpu<A>>::template gemm_mr<T>;
};

// Packs rows [0, mb) x columns [0, kb) of op(A) (origin a, already offset) into panels of mr
// rows: panel r holds, for each p, the mr values A(r*mr + ii, p) contiguously; rows past mb
// are zero so the micro-kernel always runs the full tile.
template <class T, std::int64_t MR>
void gemm_pack_a(bool trans, const T* a, std::int64_t lda, std::int64_t mb, std::int64_t kb, T* dst) {
    if (trans) {
        // A(i, p) = a[p * lda + i]: read each p's row of mb values once, front to back, and
        // deal it out mr at a time to the panels (panel-major order would stride through
        // memory kb rows at a time per panel and run ~3x slower on a 4096 x 429 block).
        const std::int64_t full = mb / MR * MR;
        for (std::int64_t p = 0; p < kb; ++p) {
            const T* src = a + p * lda;
            T* d = dst + p * MR;
            std::int64_t ir = 0;
            for (; ir < full; ir += MR, d += MR * kb) std::memcpy(d, src + ir, sizeof(T) * MR);
            if (ir < mb) {
                std::int64_t ii = 0;
                for (; ir + ii < mb; ++ii) d[ii] = src[ir + ii];
                for (; ii < MR; ++ii) d[ii] = T(0);
            }
        }
        return;
    }
    for (std::int64_t ir = 0; ir < mb; ir += MR, dst += MR * kb) {
        const std::int64_t mm = std::min(MR, mb - ir);
        if (mm == MR) {  // A(i, p) = a[i * lda + p]: mr row streams, transposed
            const T* src = a + ir * lda;
            for (std::int64_t p = 0; p < kb; ++p) {
                T* d = dst + p * MR;
#pragma GCC unroll 16
                for (std::int64_t ii = 0; ii < MR; ++ii) d[ii] = src[ii * lda + p];
            }
        } else {
            const T* src = a + ir * lda;
            for (std::int64_t p = 0; p < kb; ++p) {
                T* d = dst + p * MR;
                std::int64_t ii = 0;
                for (; ii < mm; ++ii) d[ii] = src[ii * lda + p];
                for (; ii < MR; ++ii) d[ii] = T(0);
            }
        }
    }
}

// Packs rows [0, kb) x columns [0, nb) of op(B) (origin b, already offset) into panels of
// nr columns: panel r holds, for each p, the nr values B(p, r*nr + jj) contiguously; columns
// past nb are zero. A last panel of at most nr/2 columns is packed nr/2 wide, for the
// half-width micro-kernel (n = 400 or 429 at nr = 32 would otherwise compute 4% zeros).
template <class T, std::int64_t NR>
void gemm_pack_b(bool trans, const T* b, std::int64_t ldb, std::int64_t kb, std::int64_t nb, T* dst) {
    for (std::int64_t jr = 0; jr < nb; jr += NR, dst += NR * kb) {
        const std::int64_t nn = std::min(NR, nb - jr);
        const std::int64_t width = nn <= NR / 2 ? NR / 2 : NR;
        if (!trans) {  // B(p, j) = b[p * ldb + j]: each p is a contiguous run of nn values
            for (std::int64_t p = 0; p < kb; ++p) {
                const T* src = b + p * ldb + jr;
                if (nn == NR) {
                    std::memcpy(dst + p * NR, src, sizeof(T) * NR);
                } else {
                    T* d = dst + p * width;
                    std::int64_t jj = 0;
                    for (; jj < nn; ++jj) d[jj] = src[jj];
                    for (; jj < width; ++jj) d[jj] = T(0);
                }
            }
        } else {  // B(p, j) = b[j * ldb + p]: nr row streams, transposed
            const T* src = b + jr * ldb;
            if (nn == NR) {
                // In steps of q columns of p: copy a q-wide strip of each of the nr rows to
                // the stack (contiguous reads), then write it out transposed; about 25% faster
                // than gathering one element per row per p (400 x 384 block: 39 -> 29 us).
                constexpr std::int64_t q = 16;
                std::int64_t p = 0;
                for (; p + q <= kb; p += q) {
                    T t[NR][q];
                    for (std::int64_t jj = 0; jj < NR; ++jj) std::memcpy(t[jj], src + jj * ldb + p, sizeof(T) * q);
#pragma GCC unroll 16
                    for (std::int64_t pp = 0; pp < q; ++pp) {
                        T* d = dst + (p + pp) * NR;
#pragma GCC unroll 32
                        for (std::int64_t jj = 0; jj < NR; ++jj) d[jj] = t[jj][pp];
                    }
                }
                for (; p < kb; ++p) {
                    T* d = dst + p * NR;
#pragma GCC unroll 16
                    for (std::int64_t jj = 0; jj < NR; ++jj) d[jj] = src[jj * ldb + p];
                }
            } else {
                for (std::int64_t p = 0; p < kb; ++p) {
                    T* d = dst + p * width;
                    std::int64_t jj = 0;
                    for (; jj < nn; ++jj) d[jj] = src[jj * ldb + p];
                    for (; jj < width; ++jj) d[jj] = T(0);
                }
            }
        }
    }
}

// The micro-kernel: acc[mr x nr] = sum_p pa[p] (outer) pb[p] over kb packed steps, then
// C[mm x nn] = alpha * acc + beta * C for the valid part of the tile (beta == 0 writes
// without reading C). nv batches wide (gemm_tile::nv, or half that for a narrow last
// panel). Full tiles store straight from the registers; edge tiles go
// through a stack tile.
template <class T, class A, std::int64_t NV>
void gemm_micro(std::int64_t kb, const T* pa, const T* pb, T alpha, T beta, T* c, std::int64_t ldc,
                std::int64_t mm, std::int64_t nn) {
    using bt = batch<T, A>;
    using tile = gemm_tile<T, A>;
    constexpr std::int64_t w = tile::w, nv = NV, mr = tile::mr, nr = NV * w;
    // The C tile is touched only after the kb loop: start fetching its lines now (for write,
    // as they are always stored) so that the loop hides the misses of a C larger than L2.
#if defined(__GNUC__)
    for (std::int64_t i = 0; i < mm; ++i)
        for (std::int64_t j = 0; j < nn; j += 64 / static_cast<std::int64_t>(sizeof(T)))
            __builtin_prefetch(c + i * ldc + j, 1);
#endif
    bt acc[mr][nv];
#pragma GCC unroll 16
    for (std::int64_t i = 0; i < mr; ++i)
#pragma GCC unroll 4
        for (std::int64_t v = 0; v < nv; ++v) acc[i][v] = bt(T(0));
    for (std::int64_t p = 0; p < kb; ++p, pa += mr, pb += nr) {
        bt bv[nv];
#pragma GCC unroll 4
        for (std::int64_t v = 0; v < nv; ++v) bv[v] = bt::load_unaligned(pb + v * w);
#pragma GCC unroll 16
        for (std::int64_t i = 0; i < mr; ++i) {
            const bt av(pa[i]);
#pragma GCC unroll 4
            for (std::int64_t v = 0; v < nv; ++v) acc[i][v] = xsimd::fma(av, bv[v], acc[i][v]);
        }
    }
    const bt al(alpha);
    if (mm == mr && nn == nr) {
        const bt be(beta);
#pragma GCC unroll 16
        for (std::int64_t i = 0; i < mr; ++i)
#pragma GCC unroll 4
            for (std::int64_t v = 0; v < nv; ++v) {
                T* dst = c + i * ldc + v * w;
                const bt r = beta == T(0) ? al * acc[i][v] : xsimd::fma(be, bt::load_unaligned(dst), al * acc[i][v]);
                r.store_unaligned(dst);
            }
        return;
    }
    alignas(64) T t[mr * nr];
#pragma GCC unroll 16
    for (std::int64_t i = 0; i < mr; ++i)
#pragma GCC unroll 4
        for (std::int64_t v = 0; v < nv; ++v) (al * acc[i][v]).store_unaligned(t + i * nr + v * w);
    for (std::int64_t i = 0; i < mm; ++i) {
        T* dst = c + i * ldc;
        const T* src = t + i * nr;
        if (beta == T(0))
            for (std::int64_t j = 0; j < nn; ++j) dst[j] = src[j];
        else
            for (std::int64_t j = 0; j < nn; ++j) dst[j] = src[j] + beta * dst[j];
    }
}

// The epilogue of a plain GEMM: nothing.
struct gemm_no_epilogue {
    void operator()(std::int64_t, std::int64_t, std::int64_t, std::int64_t) const noexcept {}
};

// The A producer of a plain GEMM: none (A is read from memory).
struct gemm_no_producer {};

// Splits n into the fewest blocks of at most cap (a multiple of q) and returns the common
// block size rounded up to q: equal blocks instead of full ones plus a thin remainder.
inline std::int64_t gemm_even_block(std::int64_t n, std::int64_t cap, std::int64_t q) {
    const std::int64_t blocks = (n + cap - 1) / cap;
    const std::int64_t b = (n + blocks - 1) / blocks;
    return std::min(cap, (b + q - 1) / q * q);
}

// BLIS-style packed GEMM (see kernels::gemm): loops nc (columns of C), kc (depth), mc (rows),
// then nr x mr register tiles. Per (nc, kc) block op(B) is packed once into nr-column
// panels that stay in L1 one at a time (kc x nr) and in L2/L3 as a whole; per mc block op(A)
// is packed into mr-row panels that stay in L2. The first kc block applies beta, later ones
// accumulate, so every element of C is summed in the same order whatever m is.
// The blocking is a template argument (policy<cpu<A>> by default) so that a tuning sweep
// can instantiate other values.
// `epi(i0, j0, rows, cols)` runs on each finished mc x nc block of C right after its last kc
// step, while the block is still in L2 (see kernels::gemm_then); the blocks tile C once.
template <class T, class A, std::int64_t KC = policy<cpu<A>>::gemm_kc, std::int64_t MC = policy<cpu<A>>::gemm_mc,
          std::int64_t NC = policy<cpu<A>>::gemm_nc, class Epi = gemm_no_epilogue, class Prod = gemm_no_producer>
void gemm_packed(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
                 std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc, const Epi& epi = Epi{},
                 const Prod& prod = Prod{}) {
    using tile = gemm_tile<T, A>;
    constexpr std::int64_t mr = tile::mr, nr = tile::nr;
    constexpr std::int64_t mc_cap = std::max<std::int64_t>(MC / mr, 1) * mr;
    constexpr std::int64_t nc_cap = std::max<std::int64_t>(NC / nr, 1) * nr;
    const std::int64_t kc = gemm_even_block(k, KC, 1);
    const std::int64_t mc = gemm_even_block(m, mc_cap, mr);
    const std::int64_t nc = gemm_even_block(n, nc_cap, nr);
    // Buffer: kc x (mc rounded to mr) for A, kc x nc for B, each 64-byte aligned. The request
    // is monotone in m (mc never exceeds m rounded up to mr, nor mc_cap), so one call at the
    // largest batch sizes it for every smaller batch of the same layer.
    constexpr std::int64_t pad = 64 / static_cast<std::int64_t>(sizeof(T));
    const std::int64_t mrows = std::min((m + mr - 1) / mr * mr, mc_cap);
    const std::int64_t size_a = (kc * mrows + pad - 1) / pad * pad;
    T* buf = gemm_pack_buffer<T, A>(static_cast<std::size_t>(size_a + kc * nc + pad));
    T* pa = buf;
    T* pb = buf + size_a;
    for (std::int64_t jc = 0; jc < n; jc += nc) {
        const std::int64_t nb = std::min(nc, n - jc);
        for (std::int64_t pc = 0; pc < k; pc += kc) {
            const std::int64_t kb = std::min(kc, k - pc);
            const T beta_b = pc == 0 ? beta : T(1);
            gemm_pack_b<T, nr>(trans_b, trans_b ? b + jc * ldb + pc : b + pc * ldb + jc, ldb, kb, nb, pb);
            for (std::int64_t ic = 0; ic < m; ic += mc) {
                const std::int64_t mb = std::min(mc, m - ic);
                if constexpr (std::is_same_v<Prod, gemm_no_producer>) {
                    gemm_pack_a<T, mr>(trans_a, trans_a ? a + pc * lda + ic : a + ic * lda + pc, lda, mb, kb, pa);
                } else {  // one mr-row panel at a time, packed while the producer's rows are in L1
                    for (std::int64_t ir = 0; ir < mb; ir += mr) {
                        const std::int64_t mm = std::min(mr, mb - ir);
                        gemm_pack_a<T, mr>(false, prod(ic + ir, pc, mm, kb, jc == 0), lda, mm, kb, pa + ir * kb);
                    }
                }
                for (std::int64_t jr = 0; jr < nb; jr += nr) {
                    const std::int64_t nn = std::min(nr, nb - jr);
                    const bool narrow = tile::nv % 2 == 0 && nn <= nr / 2;
                    for (std::int64_t ir = 0; ir < mb; ir += mr) {
                        T* ct = c + (ic + ir) * ldc + jc + jr;
                        const std::int64_t mm = std::min(mr, mb - ir);
                        if constexpr (tile::nv % 2 == 0) {
                            if (narrow) {
                                gemm_micro<T, A, tile::nv / 2>(kb, pa + ir * kb, pb + jr * kb, alpha, beta_b, ct, ldc, mm, nn);
                                continue;
                            }
                        }
                        gemm_micro<T, A, tile::nv>(kb, pa + ir * kb, pb + jr * kb, alpha, beta_b, ct, ldc, mm, nn);
                    }
                }
                if (pc + kb == k) epi(ic, jc, mb, nb);
            }
        }
    }
}
}  // namespace detail

/// C[m x n] = alpha * op(A) * op(B) + beta * C, all row-major with leading dimensions
/// lda, ldb, ldc; op(A) is m x k, op(B) is k x n. beta == 0 overwrites C (NaNs in C are
/// not propagated). Up to policy::gemm_dot_max_rows rows of A B^T (batch-1 inference)
/// run the unpacked register-blocked dot kernel; everything else runs the BLIS-style packed
/// xsimd kernel (detail::gemm_packed, blocking from policy<cpu<A>>), with packing buffers
/// from a per-thread buffer, so no call allocates once the buffer has grown to the largest
/// shape.
template <class T, class A>
void gemm(cpu<A>, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha,
          const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
    if (m == 0 || n == 0) return;
    if (!trans_a && trans_b && m <= policy<cpu<A>>::gemm_dot_max_rows) {
        detail::gemm_nt_dots<T, A>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    // A one-column product (an output layer of one unit over many rows, x w^T): as C^T = w A^T
    // it is one row of dots, which the dot kernel runs at full SIMD width, where the packed
    // kernel would fill one lane of every register tile column.
    if (!trans_a && trans_b && n == 1 && ldc == 1 && k > 0) {
        detail::gemm_nt_dots<T, A>(1, m, k, alpha, b, ldb, a, lda, beta, c, m);
        return;
    }
    if (k == 0) {
        for (std::int64_t i = 0; i < m; ++i) {
            T* row = c + i * ldc;
            if (beta == T(0))
                std::fill(row, row + n, T(0));
            else if (beta != T(1))
                for (std::int64_t j = 0; j < n; ++j) row[j] *= beta;
        }
        return;
    }
    detail::gemm_packed<T, A>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/// kernels::gemm_then with A (m x k, row-major, leading dimension lda) computed on the fly:
/// `prod(i0, p0, rows, cols, first)` makes rows [i0, i0 + rows) x columns [p0, p0 + cols) of
/// A (at most gemm_mr rows and gemm_kc columns) and returns a pointer to A(i0, p0) in a
/// row-major array of leading dimension lda, which the kernel packs at once, while those rows
/// are in L1. Each block is asked for once per nc block of C; `first` is true on the first of
/// them, so side effects (a gradient the producer accumulates) happen once. A backward that
/// would otherwise make A in one pass over memory and read it back in another (cross_v2's
/// dz = dy * x0) saves that round trip.
template <class T, class A, class Prod, class Epi>
void gemm_produce_then(cpu<A>, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const Prod& prod,
                       std::int64_t lda, bool trans_b, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc,
                       const Epi& epi) {
    if (m == 0 || n == 0) return;
    if (k == 0) {  // nothing to produce: C = beta C, then the epilogue
        gemm(cpu<A>{}, false, trans_b, m, n, k, alpha, static_cast<const T*>(nullptr), lda, b, ldb, beta, c, ldc);
        epi(std::int64_t{0}, std::int64_t{0}, m, n);
        return;
    }
    detail::gemm_packed<T, A, policy<cpu<A>>::gemm_kc, policy<cpu<A>>::gemm_mc, policy<cpu<A>>::gemm_nc, Epi, Prod>(
        false, trans_b, m, n, k, alpha, static_cast<const T*>(nullptr), lda, b, ldb, beta, c, ldc, epi, prod);
}

/// kernels::gemm followed by `epi(i0, j0, rows, cols)` on blocks that tile C exactly once,
/// each called as soon as that block of C is final, while it is still in cache: an
/// elementwise epilogue (bias, activation, a residual) then costs no extra pass over C in
/// memory. The blocks are the packed kernel's mc x nc blocks (one block for the small
/// shapes that take the unpacked path); `epi` must only touch its block's rows and columns
/// of C and of arrays laid out like C.
template <class T, class A, class Epi>
void gemm_then(cpu<A>, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha,
               const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc,
               const Epi& epi) {
    if (m == 0 || n == 0) return;
    if (k == 0 || (!trans_a && trans_b && m <= policy<cpu<A>>::gemm_dot_max_rows)) {
        gemm(cpu<A>{}, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        epi(std::int64_t{0}, std::int64_t{0}, m, n);
        return;
    }
    detail::gemm_packed<T, A, policy<cpu<A>>::gemm_kc, policy<cpu<A>>::gemm_mc, policy<cpu<A>>::gemm_nc, Epi>(
        trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, epi);
}

template <class T, class A>
void fill(cpu<A>, std::int64_t n, T v, T* y) {
    std::fill(y, y + n, v);
}
template <class T, class A>
void copy(cpu<A>, std::int64_t n, const T* x, T* y) {
    if (n) std::memcpy(y, x, static_cast<std::size_t>(n) * sizeof(T));
}

/// y = a + b
template <class T, class A>
void add(cpu<A>, std::int64_t n, const T* a, const T* b, T* y) {
    using bt = detail::batch<T, A>;
    detail::simd_loop<T, A>(
        n, [&](std::int64_t i) { (bt::load_unaligned(a + i) + bt::load_unaligned(b + i)).store_unaligned(y + i); },
        [&](std::int64_t i) { y[i] = a[i] + b[i]; });
}
/// y = a - b
template <class T, class A>
void sub(cpu<A>, std::int64_t n, const T* a, const T* b, T* y) {
    using bt = detail::batch<T, A>;
    detail::simd_loop<T, A>(
        n, [&](std::int64_t i) { (bt::load_unaligned(a + i) - bt::load_unaligned(b + i)).store_unaligned(y + i); },
        [&](std::int64_t i) { y[i] = a[i] - b[i]; });
}
/// y = a * b (elementwise)
template <class T, class A>
void mul(cpu<A>, std::int64_t n, const T* a, const T* b, T* y) {
    using bt = detail::batch<T, A>;
    detail::simd_loop<T, A>(
        n, [&](std::int64_t i) { (bt::load_unaligned(a + i) * bt::load_unaligned(b + i)).store_unaligned(y + i); },
        [&](std::int64_t i) { y[i] = a[i] * b[i]; });
}
/// y += alpha * x
template <class T, class A>
void axpy(cpu<A>, std::int64_t n, T alpha, const T* x, T* y) {
    using bt = detail::batch<T, A>;
    const bt al(alpha);
    detail::simd_loop<T, A>(
        n, [&](std::int64_t i) { xsimd::fma(al, bt::load_unaligned(x + i), bt::load_unaligned(y + i)).store_unaligned(y + i); },
        [&](std::int64_t i) { y[i] += alpha * x[i]; });
}
/// y = alpha * x
template <class T, class A>
void scale(cpu<A>, std::int64_t n, T alpha, const T* x, T* y) {
    using bt = detail::batch<T, A>;
    const bt al(alpha);
    detail::simd_loop<T, A>(
        n, [&](std::int64_t i) { (al * bt::load_unaligned(x + i)).store_unaligned(y + i); },
        [&](std::int64_t i) { y[i] = alpha * x[i]; });
}
/// y[r, :] += bias for each of `rows` rows of width `cols`.
template <class T, class A>
void add_row_bias(cpu<A>, std::int64_t rows, std::int64_t cols, const T* bias, T* y) {
    for (std::int64_t r = 0; r < rows; ++r) add(cpu<A>{}, cols, y + r * cols, bias, y + r * cols);
}
/// acc[j] += sum_r x[r, j]: column sums, rows summed in order.
template <class T, class A>
void col_sums_acc(cpu<A>, std::int64_t rows, std::int64_t cols, const T* x, T* acc) {
    for (std::int64_t r = 0; r < rows; ++r) add(cpu<A>{}, cols, acc, x + r * cols, acc);
}
/// sum_i a[i] * b[i], accumulated in SIMD lanes then reduced.
template <class T, class A>
T dot(cpu<A>, std::int64_t n, const T* a, const T* b) {
    using bt = detail::batch<T, A>;
    bt acc(T(0));
    T tail = 0;
    detail::simd_loop<T, A>(
        n, [&](std::int64_t i) { acc = xsimd::fma(bt::load_unaligned(a + i), bt::load_unaligned(b + i), acc); },
        [&](std::int64_t i) { tail += a[i] * b[i]; });
    return xsimd::hadd(acc) + tail;
}
/// sum_i x[i]
template <class T, class A>
T sum(cpu<A>, std::int64_t n, const T* x) {
    using bt = detail::batch<T, A>;
    bt acc(T(0));
    T tail = 0;
    detail::simd_loop<T, A>(
        n, [&](std::int64_t i) { acc += bt::load_unaligned(x + i); }, [&](std::int64_t i) { tail += x[i]; });
    return xsimd::hadd(acc) + tail;
}

/// y = act(x)
template <class T, class A>
void activation_fwd(cpu<A>, activation act, std::int64_t n, const T* x, T* y) {
    using bt = detail::batch<T, A>;
    auto tail = [&](std::int64_t i) { y[i] = detail::scalar_act(act, x[i]); };
    switch (act) {
        case activation::identity:
            if (x != y) copy(cpu<A>{}, n, x, y);
            return;
        case activation::relu:
            detail::simd_loop<T, A>(
                n, [&](std::int64_t i) { xsimd::max(bt::load_unaligned(x + i), bt(T(0))).store_unaligned(y + i); }, tail);
            return;
        case activation::sigmoid:
            detail::simd_loop<T, A>(
                n, [&](std::int64_t i) { (bt(T(1)) / (bt(T(1)) + xsimd::exp(-bt::load_unaligned(x + i)))).store_unaligned(y + i); },
                tail);
            return;
        case activation::tanh:
            detail::simd_loop<T, A>(n, [&](std::int64_t i) { xsimd::tanh(bt::load_unaligned(x + i)).store_unaligned(y + i); }, tail);
            return;
        case activation::gelu:
            detail::simd_loop<T, A>(
                n,
                [&](std::int64_t i) {
                    const bt v = bt::load_unaligned(x + i);
                    (bt(T(0.5)) * v * (bt(T(1)) + xsimd::erf(v * bt(T(0.70710678118654752440))))).store_unaligned(y + i);
                },
                tail);
            return;
    }
}

/// dx += dy * act'(x), given input x and output y of the forward.
template <class T, class A>
void activation_bwd(cpu<A>, activation act, std::int64_t n, const T* x, const T* y, const T* dy, T* dx) {
    using bt = detail::batch<T, A>;
    auto tail = [&](std::int64_t i) { dx[i] += dy[i] * detail::scalar_dact(act, x[i], y[i]); };
    switch (act) {
        case activation::identity: add(cpu<A>{}, n, dx, dy, dx); return;
        case activation::relu:
            detail::simd_loop<T, A>(
                n,
                [&](std::int64_t i) {
                    const auto pos = bt::load_unaligned(x + i) > bt(T(0));
                    (bt::load_unaligned(dx + i) + xsimd::select(pos, bt::load_unaligned(dy + i), bt(T(0)))).store_unaligned(dx + i);
                },
                tail);
            return;
        case activation::sigmoid:
            detail::simd_loop<T, A>(
                n,
                [&](std::int64_t i) {
                    const bt s = bt::load_unaligned(y + i);
                    xsimd::fma(bt::load_unaligned(dy + i), s * (bt(T(1)) - s), bt::load_unaligned(dx + i)).store_unaligned(dx + i);
                },
                tail);
            return;
        case activation::tanh:
            detail::simd_loop<T, A>(
                n,
                [&](std::int64_t i) {
                    const bt t = bt::load_unaligned(y + i);
                    xsimd::fma(bt::load_unaligned(dy + i), bt(T(1)) - t * t, bt::load_unaligned(dx + i)).store_unaligned(dx + i);
                },
                tail);
            return;
        case activation::gelu:
            detail::simd_loop<T, A>(
                n,
                [&](std::int64_t i) {
                    const bt v = bt::load_unaligned(x + i);
                    const bt cdf = bt(T(0.5)) * (bt(T(1)) + xsimd::erf(v * bt(T(0.70710678118654752440))));
                    const bt pdf = xsimd::exp(bt(T(-0.5)) * v * v) * bt(T(0.39894228040143267794));
                    xsimd::fma(bt::load_unaligned(dy + i), xsimd::fma(v, pdf, cdf), bt::load_unaligned(dx + i)).store_unaligned(dx + i);
                },
                tail);
            return;
    }
}

/// out[i, :] = table[ids[i], :] for i < n (rows of width dim), prefetching ahead.
template <class T, class A>
void gather_rows(cpu<A>, const T* table, std::int64_t dim, const std::int64_t* ids, std::int64_t n, T* out) {
    constexpr int ahead = policy<cpu<A>>::gather_prefetch_rows;
    for (std::int64_t i = 0; i < n; ++i) {
        if (i + ahead < n) __builtin_prefetch(table + ids[i + ahead] * dim);
        copy(cpu<A>{}, dim, table + ids[i] * dim, out + i * dim);
    }
}
/// dst[ids[i], :] += src[i, :] for i < n, in order (duplicates accumulate in order).
template <class T, class A>
void scatter_add_rows(cpu<A>, const T* src, std::int64_t dim, const std::int64_t* ids, std::int64_t n, T* dst) {
    for (std::int64_t i = 0; i < n; ++i) add(cpu<A>{}, dim, dst + ids[i] * dim, src + i * dim, dst + ids[i] * dim);
}


/// y += a * b (elementwise)
template <class T, class A>
void mul_acc(cpu<A>, std::int64_t n, const T* a, const T* b, T* y) {
    using bt = detail::batch<T, A>;
    detail::simd_loop<T, A>(
        n,
        [&](std::int64_t i) {
            xsimd::fma(bt::load_unaligned(a + i), bt::load_unaligned(b + i), bt::load_unaligned(y + i)).store_unaligned(y + i);
        },
        [&](std::int64_t i) { y[i] += a[i] * b[i]; });
}
/// y += alpha (every element)
template <class T, class A>
void add_scalar(cpu<A>, std::int64_t n, T alpha, T* y) {
    using bt = detail::batch<T, A>;
    const bt al(alpha);
    detail::simd_loop<T, A>(
        n, [&](std::int64_t i) { (bt::load_unaligned(y + i) + al).store_unaligned(y + i); },
        [&](std::int64_t i) { y[i] += alpha; });
}
/// max_i x[i] for n >= 1.
template <class T, class A>
T max_value(cpu<A>, std::int64_t n, const T* x) {
    using bt = detail::batch<T, A>;
    constexpr std::int64_t w = static_cast<std::int64_t>(bt::size);
    T m = x[0];
    std::int64_t i = 0;
    if (n >= w) {
        bt acc = bt::load_unaligned(x);
        for (i = w; i + w <= n; i += w) acc = xsimd::max(acc, bt::load_unaligned(x + i));
        alignas(64) T lanes[bt::size];
        acc.store_aligned(lanes);
        for (std::size_t l = 0; l < bt::size; ++l) m = std::max(m, lanes[l]);
    }
    for (; i < n; ++i) m = std::max(m, x[i]);
    return m;
}
/// y = exp(x - shift); returns sum_i y[i] (lanes then tail, a fixed order).
template <class T, class A>
T exp_shifted(cpu<A>, std::int64_t n, const T* x, T shift, T* y) {
    using bt = detail::batch<T, A>;
    const bt sh(shift);
    bt acc(T(0));
    T tail = 0;
    detail::simd_loop<T, A>(
        n,
        [&](std::int64_t i) {
            const bt e = xsimd::exp(bt::load_unaligned(x + i) - sh);
            e.store_unaligned(y + i);
            acc += e;
        },
        [&](std::int64_t i) {
            y[i] = std::exp(x[i] - shift);
            tail += y[i];
        });
    return xsimd::hadd(acc) + tail;
}

/// Softmax over each of `rows` rows of width `cols`, restricted to the entries whose mask
/// byte is non-zero (`mask` null keeps all). Masked entries and fully masked rows give 0.
/// Masked inputs never reach the sum, so -inf, +inf or NaN there are harmless.
template <class T, class A>
void softmax_rows(cpu<A>, std::int64_t rows, std::int64_t cols, const T* x, const std::uint8_t* mask, T* y) {
    if (cols == 0) return;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        if (!mask) {
            const T m = max_value(cpu<A>{}, cols, xr);
            const T s = exp_shifted(cpu<A>{}, cols, xr, m, yr);
            scale(cpu<A>{}, cols, T(1) / s, yr, yr);
            continue;
        }
        const std::uint8_t* mr = mask + r * cols;
        bool any = false;
        T m = T(0);
        for (std::int64_t j = 0; j < cols; ++j)
            if (mr[j]) {
                m = any ? std::max(m, xr[j]) : xr[j];
                any = true;
            }
        if (!any) {
            std::fill(yr, yr + cols, T(0));
            continue;
        }
        exp_shifted(cpu<A>{}, cols, xr, m, yr);
        for (std::int64_t j = 0; j < cols; ++j)
            if (!mr[j]) yr[j] = T(0);
        const T s = sum(cpu<A>{}, cols, yr);
        scale(cpu<A>{}, cols, T(1) / s, yr, yr);
    }
}
/// dx += y * (dy - <y, dy>) row by row: the softmax Jacobian-vector product. Rows of y
/// that are all zero (fully masked) contribute nothing.
template <class T, class A>
void softmax_bwd_rows(cpu<A>, std::int64_t rows, std::int64_t cols, const T* y, const T* dy, T* dx) {
    using bt = detail::batch<T, A>;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* yr = y + r * cols;
        const T* gr = dy + r * cols;
        T* dr = dx + r * cols;
        const T d = dot(cpu<A>{}, cols, yr, gr);
        const bt db(d);
        detail::simd_loop<T, A>(
            cols,
            [&](std::int64_t i) {
                const bt yv = bt::load_unaligned(yr + i);
                xsimd::fma(yv, bt::load_unaligned(gr + i) - db, bt::load_unaligned(dr + i)).store_unaligned(dr + i);
            },
            [&](std::int64_t i) { dr[i] += yr[i] * (gr[i] - d); });
    }
}

/// Per row of width `cols`: mean and 1/sqrt(var + eps) with the biased variance (divide
/// by cols, as PyTorch's layer_norm), in two passes so large means cost no precision.
template <class T, class A>
void row_moments(cpu<A>, std::int64_t rows, std::int64_t cols, const T* x, T eps, T* mean, T* rstd) {
    using bt = detail::batch<T, A>;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * cols;
        const T mu = cols ? sum(cpu<A>{}, cols, xr) / static_cast<T>(cols) : T(0);
        const bt mb(mu);
        bt acc(T(0));
        T tail = 0;
        detail::simd_loop<T, A>(
            cols,
            [&](std::int64_t i) {
                const bt d = bt::load_unaligned(xr + i) - mb;
                acc = xsimd::fma(d, d, acc);
            },
            [&](std::int64_t i) { tail += (xr[i] - mu) * (xr[i] - mu); });
        const T var = cols ? (xsimd::hadd(acc) + tail) / static_cast<T>(cols) : T(0);
        mean[r] = mu;
        rstd[r] = T(1) / std::sqrt(var + eps);
    }
}
/// y = (x - mean) * rstd * gamma + beta per row; null gamma / beta mean 1 / 0.
template <class T, class A>
void layer_norm_fwd(cpu<A>, std::int64_t rows, std::int64_t cols, const T* x, const T* mean, const T* rstd,
                    const T* gamma, const T* beta, T* y) {
    using bt = detail::batch<T, A>;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        const T mu = mean[r], rs = rstd[r];
        const bt mb(mu), rb(rs);
        detail::simd_loop<T, A>(
            cols,
            [&](std::int64_t i) {
                bt v = (bt::load_unaligned(xr + i) - mb) * rb;
                if (gamma) v *= bt::load_unaligned(gamma + i);
                if (beta) v += bt::load_unaligned(beta + i);
                v.store_unaligned(yr + i);
            },
            [&](std::int64_t i) {
                T v = (xr[i] - mu) * rs;
                if (gamma) v *= gamma[i];
                if (beta) v += beta[i];
                yr[i] = v;
            });
    }
}
/// Layer-norm backward per row, with xhat = (x - mean) rstd and g = dy * gamma:
///   dx     += rstd * (g - mean(g) - xhat * mean(g * xhat))
///   dgamma += dy * xhat,  dbeta += dy   (accumulated over the rows given)
/// Any of dx, dgamma, dbeta may be null; null gamma means 1.
template <class T, class A>
void layer_norm_bwd(cpu<A>, std::int64_t rows, std::int64_t cols, const T* x, const T* mean, const T* rstd,
                    const T* gamma, const T* dy, T* dx, T* dgamma, T* dbeta) {
    using bt = detail::batch<T, A>;
    const T inv_n = cols ? T(1) / static_cast<T>(cols) : T(0);
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * cols;
        const T* gr = dy + r * cols;
        const T mu = mean[r], rs = rstd[r];
        const bt mb(mu), rb(rs);
        if (dx) {
            bt s1(T(0)), s2(T(0));
            T t1 = 0, t2 = 0;
            detail::simd_loop<T, A>(
                cols,
                [&](std::int64_t i) {
                    bt g = bt::load_unaligned(gr + i);
                    if (gamma) g *= bt::load_unaligned(gamma + i);
                    s1 += g;
                    s2 = xsimd::fma(g, (bt::load_unaligned(xr + i) - mb) * rb, s2);
                },
                [&](std::int64_t i) {
                    const T g = gamma ? gr[i] * gamma[i] : gr[i];
                    t1 += g;
                    t2 += g * (xr[i] - mu) * rs;
                });
            const T mg = (xsimd::hadd(s1) + t1) * inv_n, mgx = (xsimd::hadd(s2) + t2) * inv_n;
            const bt mgb(mg), mgxb(mgx);
            T* dr = dx + r * cols;
            detail::simd_loop<T, A>(
                cols,
                [&](std::int64_t i) {
                    bt g = bt::load_unaligned(gr + i);
                    if (gamma) g *= bt::load_unaligned(gamma + i);
                    const bt xh = (bt::load_unaligned(xr + i) - mb) * rb;
                    xsimd::fma(rb, g - mgb - xh * mgxb, bt::load_unaligned(dr + i)).store_unaligned(dr + i);
                },
                [&](std::int64_t i) {
                    const T g = gamma ? gr[i] * gamma[i] : gr[i];
                    dr[i] += rs * (g - mg - (xr[i] - mu) * rs * mgx);
                });
        }
        if (dgamma)
            detail::simd_loop<T, A>(
                cols,
                [&](std::int64_t i) {
                    const bt xh = (bt::load_unaligned(xr + i) - mb) * rb;
                    xsimd::fma(bt::load_unaligned(gr + i), xh, bt::load_unaligned(dgamma + i)).store_unaligned(dgamma + i);
                },
                [&](std::int64_t i) { dgamma[i] += gr[i] * (xr[i] - mu) * rs; });
        if (dbeta) add(cpu<A>{}, cols, dbeta, gr, dbeta);
    }
}

namespace detail {
/// The scalar reference of `dropout_mask`: one 10-round Philox block per 4 elements. Kept
/// for the head and tail of the vector path, for architectures without it, and as the
/// baseline that tests and bench/dropout.cpp compare against.
template <class T>
void dropout_mask_scalar(const rng_stream& rs, std::uint64_t first, std::int64_t n, std::uint32_t threshold, T scale,
                         T* m) {
    std::uint64_t i = first;
    const std::uint64_t end = first + static_cast<std::uint64_t>(n);
    while (i < end) {
        const auto blk = rs.gen(rs.stream, i >> 2);
        for (std::uint64_t l = i & 3; l < 4 && i < end; ++l, ++i) m[i - first] = blk[l] >= threshold ? scale : T(0);
    }
}

/// Whether `philox_blocks` has a vector path for architecture A: it needs the unsigned
/// 32 x 32 -> 64-bit multiply of the low halves of 64-bit lanes (pmuludq), available as an
/// integer instruction at the width of A's registers on SSE2..SSE4.2, AVX2 and AVX-512F.
/// AVX without AVX2 has no 256-bit integer multiply, other ISAs have no such instruction
/// wrapped here: they take the scalar path.
template <class A>
inline constexpr bool philox_simd_v =
#if defined(__SSE2__)
    (std::is_base_of_v<xsimd::sse2, A> && !std::is_base_of_v<xsimd::avx, A>)
#else
    false
#endif
#if defined(__AVX2__)
    || std::is_base_of_v<xsimd::avx2, A>
#endif
#if defined(__AVX512F__)
    || std::is_base_of_v<xsimd::avx512f, A>
#endif
    ;

/// Lane-wise x * c for x < 2^32 in each 64-bit lane: the full 64-bit product (hi:lo) of
/// two 32-bit words, one instruction where philox_simd_v<A>.
template <class A>
inline batch<std::uint64_t, A> mul_wide_u32(const batch<std::uint64_t, A>& x, std::uint32_t c) {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
        // The zero-masked form with a full mask is the same instruction; the unmasked
        // intrinsic passes _mm512_undefined_epi32() through, which GCC 12 reports as
        // uninitialised once inlined (a false positive).
        return _mm512_maskz_mul_epu32(0xFF, x, _mm512_set1_epi64(static_cast<long long>(c)));
    } else
#endif
#if defined(__AVX2__)
    if constexpr (std::is_base_of_v<xsimd::avx2, A>) {
        return _mm256_mul_epu32(x, _mm256_set1_epi64x(static_cast<long long>(c)));
    } else
#endif
#if defined(__SSE2__)
    if constexpr (std::is_base_of_v<xsimd::sse2, A>) {
        return _mm_mul_epu32(x, _mm_set1_epi64x(static_cast<long long>(c)));
    } else
#endif
    {
        static_assert(always_false<A>, "mul_wide_u32: no vector 32x32->64 multiply for this architecture");
    }
}

/// Lane-wise x >> 32 on 64-bit lanes (the high word of a product).
template <class A>
inline batch<std::uint64_t, A> high_u32(const batch<std::uint64_t, A>& x) {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
        return _mm512_maskz_srli_epi64(0xFF, x, 32);  // see mul_wide_u32
    } else
#endif
    {
        return x >> 32;
    }
}

/// Lane-wise x << 32 on 64-bit lanes (a word moved to the high half).
template <class A>
inline batch<std::uint64_t, A> to_high_u32(const batch<std::uint64_t, A>& x) {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
        return _mm512_maskz_slli_epi64(0xFF, x, 32);  // see mul_wide_u32
    } else
#endif
    {
        return x << 32;
    }
}

/// Philox4x32-10 on U x W consecutive counters at once, W = batch<uint64_t, A>::size: block
/// k0 + j has words out[4 (k0 + j - k0) + l] = philox(stream, k0 + j)[l], bit-identical to
/// the scalar `philox`. Each 64-bit lane holds one 32-bit word of one block, so both
/// products of a round are one pmuludq each and their halves are a shift and a mask.
/// U independent groups keep the multiplier busy across the round's dependency chain.
template <int U, class A>
inline void philox_blocks(const philox& g, std::uint64_t stream, std::uint64_t k0, std::uint32_t* out) {
    using bu = batch<std::uint64_t, A>;
    constexpr int w = static_cast<int>(bu::size);
    const bu lo32(std::uint64_t{0xFFFFFFFFu});
    alignas(64) std::uint64_t iota[w];
    for (int j = 0; j < w; ++j) iota[j] = static_cast<std::uint64_t>(j);
    const bu step = bu::load_aligned(iota);
    bu c0[U], c1[U], c2[U], c3[U];
    for (int u = 0; u < U; ++u) {
        const bu k = bu(k0 + static_cast<std::uint64_t>(u * w)) + step;
        c0[u] = k & lo32;
        c1[u] = high_u32<A>(k);
        c2[u] = bu(stream & 0xFFFFFFFFu);
        c3[u] = bu(stream >> 32);
    }
    std::uint32_t key0 = static_cast<std::uint32_t>(g.key), key1 = static_cast<std::uint32_t>(g.key >> 32);
    for (int r = 0; r < 10; ++r) {
        const bu kb0(std::uint64_t{key0}), kb1(std::uint64_t{key1});
        for (int u = 0; u < U; ++u) {
            const bu p0 = mul_wide_u32<A>(c0[u], 0xD2511F53u);
            const bu p1 = mul_wide_u32<A>(c2[u], 0xCD9E8D57u);
            c0[u] = high_u32<A>(p1) ^ c1[u] ^ kb0;
            c2[u] = high_u32<A>(p0) ^ c3[u] ^ kb1;
            c1[u] = p1 & lo32;
            c3[u] = p0 & lo32;
        }
        key0 += 0x9E3779B9u;
        key1 += 0xBB67AE85u;
    }
    // Back to element order: block b's words are elements 4b .. 4b + 3, so on this
    // little-endian target c0 | c1 << 32 is the 64-bit pair of elements (4b, 4b + 1) and
    // c2 | c3 << 32 the pair (4b + 2, 4b + 3): interleaving two pair vectors is the transpose.
    alignas(64) std::uint64_t lo[w], hi[w];
    for (int u = 0; u < U; ++u) {
        (c0[u] | to_high_u32<A>(c1[u])).store_aligned(lo);
        (c2[u] | to_high_u32<A>(c3[u])).store_aligned(hi);
        std::uint32_t* o = out + 4 * u * w;
        for (int j = 0; j < w; ++j) {
            std::memcpy(o + 4 * j, lo + j, sizeof(std::uint64_t));
            std::memcpy(o + 4 * j + 2, hi + j, sizeof(std::uint64_t));
        }
    }
}

/// m[j] = bits[j] >= threshold ? scale : 0 for j < n (n a multiple of the lane count).
/// For 32-bit T the compare is vectorised: an unsigned >= as a signed one after flipping
/// the sign bits, then a select of scale's bit pattern reinterpreted as T.
template <class T, class A>
inline void threshold_select(const std::uint32_t* bits, std::int64_t n, std::uint32_t threshold, T scale, T* m) {
    if constexpr (sizeof(T) == 4 && batch<T, A>::size == batch<std::int32_t, A>::size) {
        using bi = batch<std::int32_t, A>;
        constexpr std::int64_t w = static_cast<std::int64_t>(bi::size);
        std::int32_t scale_bits;
        std::memcpy(&scale_bits, &scale, sizeof scale_bits);
        const bi flip(std::numeric_limits<std::int32_t>::min()), thr(static_cast<std::int32_t>(threshold ^ 0x80000000u));
        const bi keep_v(scale_bits), zero(0);
        for (std::int64_t j = 0; j < n; j += w) {
            const bi v = bi::load_unaligned(reinterpret_cast<const std::int32_t*>(bits + j)) ^ flip;
            xsimd::bitwise_cast<batch<T, A>>(xsimd::select(v >= thr, keep_v, zero)).store_unaligned(m + j);
        }
    } else {
        for (std::int64_t j = 0; j < n; ++j) m[j] = bits[j] >= threshold ? scale : T(0);
    }
}
}  // namespace detail

/// Inverted-dropout multipliers for elements [first, first + n) of stream `rs`: m[i] is
/// `scale` where the element's 32 random bits are >= `threshold` (kept with probability
/// 1 - threshold / 2^32) and 0 elsewhere. Element i's bits are rs.bits(first + i), so the
/// mask is the same however the range is split over threads. One Philox block gives 4
/// elements; where the architecture has a vector 32x32->64 multiply (detail::philox_simd_v)
/// the blocks are computed U x W at a time, bit-identical to the scalar path, which still
/// does the unaligned head (up to the next block boundary) and the tail.
template <class T, class A>
void dropout_mask(cpu<A>, const rng_stream& rs, std::uint64_t first, std::int64_t n, std::uint32_t threshold, T scale,
                  T* m) {
    if constexpr (detail::philox_simd_v<A>) {
        constexpr int unroll = 4;
        constexpr std::int64_t group = 4 * unroll * static_cast<std::int64_t>(detail::batch<std::uint64_t, A>::size);
        // Head: scalar up to a block boundary (4-element aligned position).
        const std::int64_t head = std::min<std::int64_t>(n, static_cast<std::int64_t>((4 - (first & 3)) & 3));
        detail::dropout_mask_scalar(rs, first, head, threshold, scale, m);
        std::int64_t i = head;
        alignas(64) std::uint32_t bits[group];
        for (; i + group <= n; i += group) {
            detail::philox_blocks<unroll, A>(rs.gen, rs.stream, (first + static_cast<std::uint64_t>(i)) >> 2, bits);
            detail::threshold_select<T, A>(bits, group, threshold, scale, m + i);
        }
        detail::dropout_mask_scalar(rs, first + static_cast<std::uint64_t>(i), n - i, threshold, scale, m + i);
    } else {
        detail::dropout_mask_scalar(rs, first, n, threshold, scale, m);
    }
}

namespace detail {
// Prefetches every cache line of one table row (rows of D >= 32 floats span several lines;
// prefetching only the first leaves the rest to demand misses).
template <class T>
inline void prefetch_row(const T* row, std::int64_t dim) {
    const char* p = reinterpret_cast<const char*>(row);
    const std::int64_t bytes = dim * static_cast<std::int64_t>(sizeof(T));
    for (std::int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off);
}
}  // namespace detail

/// Sum pooling of one bag: out = scale * sum_i w_i * table[ids[i], :] (w null means 1),
/// rows added in order, prefetching `gather_prefetch_rows` ahead. n == 0 gives zeros.
namespace detail {
// bag_sum with the accumulator in R registers (dim == R * lanes): no load/store of the
// output per row, so the loop is bound by the gathered rows alone.
template <int R, class T, class A>
void bag_sum_regs(const T* table, std::int64_t dim, const std::int64_t* ids, const T* w, std::int64_t n, T scale_by,
                  T* out, std::int64_t avail, int ahead) {
    using bt = batch<T, A>;
    constexpr std::int64_t lanes = static_cast<std::int64_t>(bt::size);
    bt acc[R];
    for (auto& a : acc) a = bt(T(0));
    for (std::int64_t i = 0; i < n; ++i) {
        if (i + ahead < avail) prefetch_row(table + ids[i + ahead] * dim, dim);
        const T* row = table + ids[i] * dim;
        if (w) {
            const bt wi(w[i]);
            for (int r = 0; r < R; ++r) acc[r] = xsimd::fma(wi, bt::load_unaligned(row + r * lanes), acc[r]);
        } else {
            for (int r = 0; r < R; ++r) acc[r] += bt::load_unaligned(row + r * lanes);
        }
    }
    const bt sc(scale_by);
    for (int r = 0; r < R; ++r) (acc[r] * sc).store_unaligned(out + r * lanes);
}
}  // namespace detail

/// Sum pooling of one bag: out = scale * sum_i w_i * table[ids[i], :] (w null means 1),
/// rows added in order, prefetching `gather_prefetch_rows` ahead (up to `avail` ids may be
/// read from `ids`, so a caller pooling consecutive bags lets the prefetch run across bag
/// boundaries). n == 0 gives zeros. Rows of 1, 2, 4 or 8 registers accumulate in registers.
template <class T, class A>
void bag_sum(cpu<A>, const T* table, std::int64_t dim, const std::int64_t* ids, const T* w, std::int64_t n, T scale_by,
             T* out, std::int64_t avail = -1) {
    constexpr int ahead = policy<cpu<A>>::gather_prefetch_rows;
    constexpr std::int64_t lanes = static_cast<std::int64_t>(detail::batch<T, A>::size);
    if (avail < n) avail = n;
    if (dim % lanes == 0) {
        switch (dim / lanes) {
            case 1: return detail::bag_sum_regs<1, T, A>(table, dim, ids, w, n, scale_by, out, avail, ahead);
            case 2: return detail::bag_sum_regs<2, T, A>(table, dim, ids, w, n, scale_by, out, avail, ahead);
            case 4: return detail::bag_sum_regs<4, T, A>(table, dim, ids, w, n, scale_by, out, avail, ahead);
            case 8: return detail::bag_sum_regs<8, T, A>(table, dim, ids, w, n, scale_by, out, avail, ahead);
            default: break;
        }
    }
    std::fill(out, out + dim, T(0));
    for (std::int64_t i = 0; i < n; ++i) {
        if (i + ahead < avail) detail::prefetch_row(table + ids[i + ahead] * dim, dim);
        const T* row = table + ids[i] * dim;
        if (w)
            axpy(cpu<A>{}, dim, w[i], row, out);
        else
            add(cpu<A>{}, dim, out, row, out);
    }
    if (scale_by != T(1)) scale(cpu<A>{}, dim, scale_by, out, out);
}
/// Max pooling of one bag: out[d] = max_i w_i * table[ids[i], d] (w null means 1). With
/// `arg` non-null, arg[d] is the bag-local index of the first i reaching the max (ties go to
/// the first occurrence). n == 0 gives zeros and arg -1.
template <class T, class A>
void bag_max(cpu<A>, const T* table, std::int64_t dim, const std::int64_t* ids, const T* w, std::int64_t n, T* out,
             std::int32_t* arg, std::int64_t avail = -1) {
    using bt = detail::batch<T, A>;
    constexpr int ahead = policy<cpu<A>>::gather_prefetch_rows;
    if (n == 0) {
        std::fill(out, out + dim, T(0));
        if (arg) std::fill(arg, arg + dim, std::int32_t{-1});
        return;
    }
    if (w)
        scale(cpu<A>{}, dim, w[0], table + ids[0] * dim, out);
    else
        copy(cpu<A>{}, dim, table + ids[0] * dim, out);
    if (arg) std::fill(arg, arg + dim, std::int32_t{0});
    if (avail < n) avail = n;
    for (std::int64_t i = 1; i < n; ++i) {
        if (i + ahead < avail) detail::prefetch_row(table + ids[i + ahead] * dim, dim);
        const T* row = table + ids[i] * dim;
        const T wi = w ? w[i] : T(1);
        if (arg) {
            // Strict > keeps the first occurrence on ties; the select form vectorises.
            const auto ii = static_cast<std::int32_t>(i);
            for (std::int64_t d = 0; d < dim; ++d) {
                const T v = wi * row[d];
                const bool gt = v > out[d];
                out[d] = gt ? v : out[d];
                arg[d] = gt ? ii : arg[d];
            }
        } else {
            const bt wb(wi);
            detail::simd_loop<T, A>(
                dim, [&](std::int64_t d) { xsimd::max(bt::load_unaligned(out + d), wb * bt::load_unaligned(row + d)).store_unaligned(out + d); },
                [&](std::int64_t d) {
                    const T v = wi * row[d];
                    out[d] = v > out[d] ? v : out[d];
                });
        }
    }
}

// ---------------------------------------------------------------------------------------
// Gathers from tables in a reduced serving format (core/reduced_precision.hpp): the rows are
// widened to float in registers as they are gathered, so a reduced table is never expanded
// in memory. Float output only (reduced tables serve float models).

namespace detail {
// `lanes` consecutive bf16 values at p -> one float batch (a bf16 is the top half of a
// float: widen to 32 bits and shift left by 16). Intrinsics where the architecture has the
// widening moves; elsewhere through a small buffer.
template <class A>
inline batch<float, A> widen_bf16(const std::uint8_t* p) noexcept {
    using bt = batch<float, A>;
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, A> && bt::size == 16) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        return bt(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    } else
#endif
#if defined(__AVX2__)
    if constexpr (std::is_base_of_v<xsimd::avx2, A> && bt::size == 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return bt(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    } else
#endif
#if defined(__SSE2__)
    if constexpr (std::is_base_of_v<xsimd::sse2, A> && bt::size == 4) {
        // Interleaving zeros below each 16-bit value builds the four floats directly.
        const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
        return bt(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h)));
    } else
#endif
    {
        alignas(64) float tmp[bt::size];
        for (std::size_t i = 0; i < bt::size; ++i) {
            std::uint16_t h;
            std::memcpy(&h, p + 2 * i, 2);
            tmp[i] = from_bf16(h);
        }
        return bt::load_aligned(tmp);
    }
}

// `lanes` consecutive uint8 codes at p -> one float batch of the codes (0..255).
template <class A>
inline batch<float, A> widen_u8(const std::uint8_t* p) noexcept {
    using bt = batch<float, A>;
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, A> && bt::size == 16) {
        const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return bt(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q)));
    } else
#endif
#if defined(__AVX2__)
    if constexpr (std::is_base_of_v<xsimd::avx2, A> && bt::size == 8) {
        const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
        return bt(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)));
    } else
#endif
#if defined(__SSE2__)
    if constexpr (std::is_base_of_v<xsimd::sse2, A> && bt::size == 4) {
        std::int32_t four;
        std::memcpy(&four, p, 4);
        const __m128i z = _mm_setzero_si128();
        const __m128i q = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(four), z), z);
        return bt(_mm_cvtepi32_ps(q));
    } else
#endif
    {
        alignas(64) float tmp[bt::size];
        for (std::size_t i = 0; i < bt::size; ++i) tmp[i] = static_cast<float>(p[i]);
        return bt::load_aligned(tmp);
    }
}

// The stored quantity of element d of a reduced row as float: the bf16 value, or the int8
// code (to be mapped through scale and bias by the caller).
template <table_precision P, class A>
inline batch<float, A> reduced_raw(const std::uint8_t* row, std::int64_t d) noexcept {
    if constexpr (P == table_precision::bf16)
        return widen_bf16<A>(row + 2 * d);
    else
        return widen_u8<A>(row + d);
}
template <table_precision P>
inline float reduced_raw1(const std::uint8_t* row, std::int64_t d) noexcept {
    if constexpr (P == table_precision::bf16) {
        std::uint16_t h;
        std::memcpy(&h, row + 2 * d, 2);
        return from_bf16(h);
    } else {
        return static_cast<float>(row[d]);
    }
}

template <table_precision P, class A>
void gather_reduced(const std::uint8_t* base, std::int64_t row_bytes, std::int64_t dim, const std::int64_t* ids,
                    std::int64_t n, float* out) {
    using bt = batch<float, A>;
    constexpr int ahead = policy<cpu<A>>::gather_prefetch_rows;
    for (std::int64_t i = 0; i < n; ++i) {
        if (i + ahead < n) prefetch_row(base + ids[i + ahead] * row_bytes, row_bytes);
        const std::uint8_t* row = base + ids[i] * row_bytes;
        float* o = out + i * dim;
        if constexpr (P == table_precision::bf16) {
            simd_loop<float, A>(
                dim, [&](std::int64_t d) { widen_bf16<A>(row + 2 * d).store_unaligned(o + d); },
                [&](std::int64_t d) { o[d] = reduced_raw1<P>(row, d); });
        } else {
            const int8_row_params p = read_int8_row_params(row, dim);
            const bt s(p.scale), b(p.bias);
            simd_loop<float, A>(
                dim, [&](std::int64_t d) { xsimd::fma(s, widen_u8<A>(row + d), b).store_unaligned(o + d); },
                [&](std::int64_t d) { o[d] = p.scale * static_cast<float>(row[d]) + p.bias; });
        }
    }
}

// Sum pooling over a reduced table. For int8 rows the affine map is folded out of the
// inner loop: sum_i w_i (s_i q_i + b_i) = sum_i (w_i s_i) q_i + sum_i w_i b_i, so each
// gathered element costs one fma, the same as a float row, and the biases one scalar.
template <table_precision P, class A>
void bag_sum_reduced_impl(const std::uint8_t* base, std::int64_t row_bytes, std::int64_t dim,
                          const std::int64_t* ids, const float* w, std::int64_t n, float scale_by, float* out,
                          std::int64_t avail) {
    using bt = batch<float, A>;
    constexpr int ahead = policy<cpu<A>>::gather_prefetch_rows;
    std::fill(out, out + dim, 0.0f);
    float bias_sum = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        if (i + ahead < avail) prefetch_row(base + ids[i + ahead] * row_bytes, row_bytes);
        const std::uint8_t* row = base + ids[i] * row_bytes;
        float a = w ? w[i] : 1.0f;
        if constexpr (P == table_precision::int8_rowwise) {
            const int8_row_params p = read_int8_row_params(row, dim);
            bias_sum += a * p.bias;
            a *= p.scale;
        }
        const bt av(a);
        simd_loop<float, A>(
            dim,
            [&](std::int64_t d) {
                xsimd::fma(av, reduced_raw<P, A>(row, d), bt::load_unaligned(out + d)).store_unaligned(out + d);
            },
            [&](std::int64_t d) { out[d] += a * reduced_raw1<P>(row, d); });
    }
    if (scale_by == 1.0f && bias_sum == 0.0f) return;
    const bt sc(scale_by), bs(bias_sum);
    simd_loop<float, A>(
        dim, [&](std::int64_t d) { ((bt::load_unaligned(out + d) + bs) * sc).store_unaligned(out + d); },
        [&](std::int64_t d) { out[d] = (out[d] + bias_sum) * scale_by; });
}

template <table_precision P, class A>
void bag_max_reduced_impl(const std::uint8_t* base, std::int64_t row_bytes, std::int64_t dim,
                          const std::int64_t* ids, const float* w, std::int64_t n, float* out, std::int64_t avail) {
    using bt = batch<float, A>;
    constexpr int ahead = policy<cpu<A>>::gather_prefetch_rows;
    if (n == 0) {
        std::fill(out, out + dim, 0.0f);
        return;
    }
    for (std::int64_t i = 0; i < n; ++i) {
        if (i + ahead < avail) prefetch_row(base + ids[i + ahead] * row_bytes, row_bytes);
        const std::uint8_t* row = base + ids[i] * row_bytes;
        const float wi = w ? w[i] : 1.0f;
        // element value times w_i = a * raw + b (bf16: a = w_i, b = 0).
        float a = wi, b = 0;
        if constexpr (P == table_precision::int8_rowwise) {
            const int8_row_params p = read_int8_row_params(row, dim);
            a = wi * p.scale;
            b = wi * p.bias;
        }
        const bt av(a), bv(b);
        if (i == 0)
            simd_loop<float, A>(
                dim, [&](std::int64_t d) { xsimd::fma(av, reduced_raw<P, A>(row, d), bv).store_unaligned(out + d); },
                [&](std::int64_t d) { out[d] = a * reduced_raw1<P>(row, d) + b; });
        else
            simd_loop<float, A>(
                dim,
                [&](std::int64_t d) {
                    xsimd::max(bt::load_unaligned(out + d), xsimd::fma(av, reduced_raw<P, A>(row, d), bv))
                        .store_unaligned(out + d);
                },
                [&](std::int64_t d) { out[d] = std::max(out[d], a * reduced_raw1<P>(row, d) + b); });
    }
}
}  // namespace detail

/// out[i, :] = the float values of row ids[i] of a table stored in reduced format `p`
/// (bf16 or int8_rowwise; `base` holds rows of `row_bytes` bytes, see
/// core/reduced_precision.hpp), for i < n, dequantised while gathered, prefetching ahead.
/// Ids are trusted (validated by the op). A full-precision `p` is a caller error (refused).
template <class A>
void gather_rows_reduced(cpu<A>, table_precision p, const std::uint8_t* base, std::int64_t row_bytes,
                         std::int64_t dim, const std::int64_t* ids, std::int64_t n, float* out) {
    switch (p) {
        case table_precision::bf16: return detail::gather_reduced<table_precision::bf16, A>(base, row_bytes, dim, ids, n, out);
        case table_precision::int8_rowwise:
            return detail::gather_reduced<table_precision::int8_rowwise, A>(base, row_bytes, dim, ids, n, out);
        case table_precision::full: break;
    }
    XREC_FAIL("gather_rows_reduced: the table is not in a reduced format");
}

/// Sum pooling of one bag over a reduced table: out = scale_by * sum_i w_i x'[ids[i], :]
/// with x' the dequantised rows (w null means 1). Same contract as bag_sum (prefetch across
/// up to `avail` ids, n == 0 gives zeros); the int8 affine map is applied once per bag.
template <class A>
void bag_sum_reduced(cpu<A>, table_precision p, const std::uint8_t* base, std::int64_t row_bytes, std::int64_t dim,
                     const std::int64_t* ids, const float* w, std::int64_t n, float scale_by, float* out,
                     std::int64_t avail = -1) {
    if (avail < n) avail = n;
    switch (p) {
        case table_precision::bf16:
            return detail::bag_sum_reduced_impl<table_precision::bf16, A>(base, row_bytes, dim, ids, w, n, scale_by, out, avail);
        case table_precision::int8_rowwise:
            return detail::bag_sum_reduced_impl<table_precision::int8_rowwise, A>(base, row_bytes, dim, ids, w, n, scale_by,
                                                                                  out, avail);
        case table_precision::full: break;
    }
    XREC_FAIL("bag_sum_reduced: the table is not in a reduced format");
}

/// Max pooling of one bag over a reduced table: out[d] = max_i w_i x'[ids[i], d] (w null
/// means 1); n == 0 gives zeros. Inference only: no argmax is kept.
template <class A>
void bag_max_reduced(cpu<A>, table_precision p, const std::uint8_t* base, std::int64_t row_bytes, std::int64_t dim,
                     const std::int64_t* ids, const float* w, std::int64_t n, float* out, std::int64_t avail = -1) {
    if (avail < n) avail = n;
    switch (p) {
        case table_precision::bf16:
            return detail::bag_max_reduced_impl<table_precision::bf16, A>(base, row_bytes, dim, ids, w, n, out, avail);
        case table_precision::int8_rowwise:
            return detail::bag_max_reduced_impl<table_precision::int8_rowwise, A>(base, row_bytes, dim, ids, w, n, out, avail);
        case table_precision::full: break;
    }
    XREC_FAIL("bag_max_reduced: the table is not in a reduced format");
}

namespace detail {
template <int Rows, int Cols>
inline constexpr int eigen_layout = (Cols == 1 && Rows != 1) ? Eigen::ColMajor : Eigen::RowMajor;
}  // namespace detail

/// y[r, :] = W x[r, :] + b for `rows` rows with W [Out, In] known at compile time: Eigen
/// sees fixed inner sizes and unrolls / keeps W in registers for small layers. b may be null.
template <std::int64_t In, std::int64_t Out, class T, class A>
void linear_fixed(cpu<A>, std::int64_t rows, const T* x, const T* w, const T* b, T* y) {
    static_assert(In > 0 && Out > 0, "linear_fixed needs positive compile-time sizes");
    constexpr int in = static_cast<int>(In), out = static_cast<int>(Out);
    using xmat = Eigen::Matrix<T, Eigen::Dynamic, in, detail::eigen_layout<Eigen::Dynamic, in>>;
    using ymat = Eigen::Matrix<T, Eigen::Dynamic, out, detail::eigen_layout<Eigen::Dynamic, out>>;
    using wmat = Eigen::Matrix<T, out, in, detail::eigen_layout<out, in>>;
    using bvec = Eigen::Matrix<T, 1, out, Eigen::RowMajor>;
    if (rows == 0) return;
    Eigen::Map<const xmat> X(x, rows, in);
    Eigen::Map<const wmat> W(w);
    Eigen::Map<ymat> Y(y, rows, out);
    Y.noalias() = X * W.transpose();
    if (b) Y.rowwise() += Eigen::Map<const bvec>(b);
}

// ---- Training-path kernels: the data loops of ops, losses, optimizers and the trainer that
// ---- must run where the tensors live (their cuda twins are in cuda/xrec/cuda/train.cuh).

/// dst[r, 0:w] = src[r, 0:w] for r < rows, rows `src_ld` and `dst_ld` elements apart.
template <class T, class A>
void copy_block(cpu<A>, std::int64_t rows, std::int64_t w, const T* src, std::int64_t src_ld, T* dst,
                std::int64_t dst_ld) {
    for (std::int64_t r = 0; r < rows; ++r) copy(cpu<A>{}, w, src + r * src_ld, dst + r * dst_ld);
}
/// dst[r, 0:w] += src[r, 0:w] for r < rows, rows `src_ld` and `dst_ld` elements apart.
template <class T, class A>
void add_block(cpu<A>, std::int64_t rows, std::int64_t w, const T* src, std::int64_t src_ld, T* dst,
               std::int64_t dst_ld) {
    for (std::int64_t r = 0; r < rows; ++r) {
        T* d = dst + r * dst_ld;
        add(cpu<A>{}, w, d, src + r * src_ld, d);
    }
}

/// x seen as [outer, n, inner]: y[o, i] = s * sum_k x[o, k, i] for o in [o0, o1), i in [i0, i1),
/// the k summed in order (inner == 1: kernels::sum of the row, times s). `mean` says s is
/// 1/n (scaled after the sum) rather than 1.
template <class T, class A>
void reduce_axis(cpu<A>, std::int64_t o0, std::int64_t o1, std::int64_t n, std::int64_t inner, std::int64_t i0,
                 std::int64_t i1, T s, bool mean, const T* x, T* y) {
    for (std::int64_t o = o0; o < o1; ++o) {
        const T* xo = x + o * n * inner;
        T* yo = y + o * inner;
        if (inner == 1) {
            yo[0] = n ? s * sum(cpu<A>{}, n, xo) : T(0);
            continue;
        }
        fill(cpu<A>{}, i1 - i0, T(0), yo + i0);
        for (std::int64_t k = 0; k < n; ++k) add(cpu<A>{}, i1 - i0, yo + i0, xo + k * inner + i0, yo + i0);
        if (mean) scale(cpu<A>{}, i1 - i0, s, yo + i0, yo + i0);
    }
}
/// Backward of reduce_axis: gx[o, k, i] += s * gy[o, i] over the same block.
template <class T, class A>
void reduce_axis_bwd(cpu<A>, std::int64_t o0, std::int64_t o1, std::int64_t n, std::int64_t inner, std::int64_t i0,
                     std::int64_t i1, T s, const T* gy, T* gx) {
    for (std::int64_t o = o0; o < o1; ++o) {
        T* gxo = gx + o * n * inner;
        if (inner == 1)
            add_scalar(cpu<A>{}, n, s * gy[o], gxo);
        else
            for (std::int64_t k = 0; k < n; ++k) axpy(cpu<A>{}, i1 - i0, s, gy + o * inner + i0, gxo + k * inner + i0);
    }
}

/// Host ids (a batch's) where the backend's gathers read them: on the cpu the ids themselves
/// (no copy); a device backend copies them into the context's arena.
template <class A, class Ctx>
const std::int64_t* upload_ids(cpu<A>, Ctx&, std::span<const std::int64_t> ids) {
    return ids.data();
}

/// The position of the first id of ids[0, n) outside [0, rows), or -1 when all are inside.
template <class A>
std::int64_t first_id_outside(cpu<A>, std::int64_t n, const std::int64_t* ids, std::int64_t rows) {
    for (std::int64_t i = 0; i < n; ++i)
        if (ids[i] < 0 || ids[i] >= rows) return i;
    return -1;
}

/// The index of the first element of x[0, n) that is NaN or infinite, or -1 when all are finite.
template <class T, class A>
std::int64_t first_nonfinite(cpu<A>, std::int64_t n, const T* x) {
    for (std::int64_t i = 0; i < n; ++i)
        if (!std::isfinite(x[i])) return i;
    return -1;
}
/// Rows table[ids[k], :] (width dim) for k < n, ids in the backend's memory (the host's
/// here): the first non-finite element as k * dim + d, or -1 when all are finite.
template <class T, class A>
std::int64_t first_nonfinite_rows(cpu<A>, const T* table, std::int64_t dim, const std::int64_t* ids, std::int64_t n) {
    for (std::int64_t k = 0; k < n; ++k) {
        const T* r = table + ids[k] * dim;
        for (std::int64_t d = 0; d < dim; ++d)
            if (!std::isfinite(r[d])) return k * dim + d;
    }
    return -1;
}

}  // namespace kernels
}  // namespace xrec
