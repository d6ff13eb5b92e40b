#pragma once
// embedding_bag on the cuda tag: the pooled lookup over jagged ids, and its backward as a
// deterministic segmented reduction fused with the row-wise Adagrad update.
//
// Layout: table [rows, dim] row-major; ids [nnz] (int64), bag b holds ids[offsets[b] ..
// offsets[b+1]) (offsets [batch + 1], PyTorch's include_last_offset form); optional per-id
// weights [nnz]; out [batch, dim].
//
// Forward: a group of G threads per bag, each thread owning V consecutive columns, loaded
// V-wide (16 bytes for float with V = 4). G is the power of two covering dim / V, capped at
// 32; wider rows loop over column tiles. Each thread issues U row loads before it adds any,
// so a warp keeps U x 32 x 16 bytes in flight: random rows are latency bound otherwise.
//
// Backward + update (embedding_bag_adagrad_step): positions are sorted by id (CUB radix sort
// on the significant bits of the id only, stable, so each id's positions stay in ascending
// order), run-length encoded into unique ids, and one group per unique id sums its
// positions' contributions in that order, then applies row-wise Adagrad to its row. No
// atomics: the result is bit-identical from run to run. The number of unique ids stays on
// the device (the update kernel walks a grid-stride loop up to it), so the step never waits
// for the host and can be captured into a CUDA graph.
//
// ops::embedding_bag (the tape's op, any optimizer) runs on the cuda tag through the
// batched kernels at the end of this file: bag_pool_fwd (the forward above), bag_grad_rows
// (the table's sparse gradient rows, one warp per position), bag_grad_weights (the per-id
// weights' gradient) and bag_max_mark (max pooling's winners, copied to the host to number
// the sparse rows).
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda_runtime.h>

#include "xrec/backend/cuda_tag.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/parallel.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/cuda/check.cuh"
#include "xrec/cuda/kernels.cuh"
#include "xrec/cuda/memory.cuh"
#include "xrec/cuda/stream.cuh"

namespace xrec {

/// Tuning values of the cuda embedding_bag kernels (CUB-style policy members).
struct embedding_bag_cuda_policy {
    /// Threads per block of the forward and of the update, and rows each thread of the
    /// forward loads before it adds any (memory-level parallelism). Swept on the H100
    /// (bench/cuda `sweep/`, 10M x 64 table, 65,536 bags of 32, 2026-11-23): 128 or 256
    /// threads with 4 rows in flight ran 0.204 ms, 8 rows 0.207, 16 rows 0.209; block size
    /// made no difference (128..512 within 1%).
    static constexpr int block_threads = 256;
    static constexpr int unroll = 4;
    /// Forward row loads ask L2 for the whole row (ld.global.nc.L1::no_allocate.L2::256B or
    /// 128B) when rows are 256 or 128 bytes apart. Off: on the H100 (bench/cuda sweep,
    /// 2026-11-23) it made D = 64 slower, 0.211 vs 0.207 ms with uniform ids and 0.109 vs
    /// 0.084 ms with Zipf ids (hot rows then miss L1).
    static constexpr bool l2_row_hint = false;
    /// Blocks per SM of the grid-stride update over unique ids.
    static constexpr int update_blocks_per_sm = 8;
    /// Column tiles of G x V each that one update group keeps in registers, so the widest
    /// row the fused update takes is update_tiles * 32 * V (512 floats with float4 access,
    /// 128 with scalar access).
    static constexpr int update_tiles = 4;
    /// Sorted positions per piece of a run in the fused backward: a run of up to `piece`
    /// positions (nearly every id with uniform ids) is summed and applied by one group; a
    /// longer run (a hot id) is cut into pieces summed in parallel, then added in order by a
    /// block. With 32 the block adding a Zipf(1.05) hot id's 4,000 partial rows took 140 us
    /// of a 0.58 ms step (ncu, H100, D = 64); 128 cuts those rows 4x.
    static constexpr int piece = 128;
    /// Gradient rows (and partial rows) each update thread loads before adding any, and the
    /// minimum resident blocks per SM asked of the compiler for the update kernel (its
    /// __launch_bounds__, a register cap). Swept on the H100 (bench/cuda
    /// `sweep/embedding_bag_adagrad`, 10M x 64, 65,536 bags of 32, medians of 3, 2026-11-23):
    /// min blocks / unroll 1/4 (80 registers): 1054 us uniform, 546 us Zipf; 3/2: 880, 502;
    /// 4/4: 1002, 516; 4/2: 770, 477; 6/2: 1176, 566; 8/1: 1267, 616.
    static constexpr int update_unroll = 2;
    static constexpr int update_min_blocks = 4;
};

namespace kernels {
namespace cuda_detail {

template <class T, int V>
struct vec_of;
template <>
struct vec_of<float, 4> {
    using type = float4;
};
template <>
struct vec_of<float, 2> {
    using type = float2;
};
template <>
struct vec_of<double, 2> {
    using type = double2;
};
template <class T>
struct vec_of<T, 1> {
    using type = T;
};

template <class T, int V>
__device__ inline void vload(const T* p, T (&x)[V]) {
    if constexpr (V == 1) {
        x[0] = __ldg(p);
    } else {
        using vt = typename vec_of<T, V>::type;
        const vt v = __ldg(reinterpret_cast<const vt*>(p));
        if constexpr (V == 2) {
            x[0] = v.x;
            x[1] = v.y;
        } else {
            x[0] = v.x;
            x[1] = v.y;
            x[2] = v.z;
            x[3] = v.w;
        }
    }
}
// A 16-byte read-only load that skips L1 and asks L2 to fetch Hint bytes around it (the whole
// row when a row is Hint bytes and rows are Hint-aligned: one DRAM burst instead of two or
// four sector misses). Hint 0: a plain __ldg.
template <int Hint>
__device__ inline float4 ldg_hint(const float4* p) {
    float4 v;
    if constexpr (Hint == 256) {
        asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.f32 {%0, %1, %2, %3}, [%4];"
                     : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                     : "l"(p));
    } else if constexpr (Hint == 128) {
        asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.f32 {%0, %1, %2, %3}, [%4];"
                     : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                     : "l"(p));
    } else {
        v = __ldg(p);
    }
    return v;
}

template <class T, int V, int Hint>
__device__ inline void vload_row(const T* p, T (&x)[V]) {
    if constexpr (Hint != 0 && std::is_same_v<T, float> && V == 4) {
        const float4 v = ldg_hint<Hint>(reinterpret_cast<const float4*>(p));
        x[0] = v.x;
        x[1] = v.y;
        x[2] = v.z;
        x[3] = v.w;
    } else {
        vload<T, V>(p, x);
    }
}

template <class T, int V>
__device__ inline void vstore(T* p, const T (&x)[V]) {
    if constexpr (V == 1) {
        p[0] = x[0];
    } else {
        using vt = typename vec_of<T, V>::type;
        vt v;
        if constexpr (V == 2) {
            v.x = x[0];
            v.y = x[1];
        } else {
            v.x = x[0];
            v.y = x[1];
            v.z = x[2];
            v.w = x[3];
        }
        *reinterpret_cast<vt*>(p) = v;
    }
}

// One group of G threads per bag; thread t of the group owns columns [c, c + V) of each
// column tile, c = tile * G * V + t * V. Sum and mean: out = scale * sum w_i row_i; max:
// out = max_i w_i row_i with the bag-local index of the first maximum in arg (-1 and 0 for
// an empty bag), which the backward routes the gradient through.
template <class T, int V, int G, int U, bool Max, int Threads, int Hint>
__global__ void __launch_bounds__(Threads)
    bag_fwd_kernel(const T* __restrict__ table, std::int64_t dim, const std::int64_t* __restrict__ ids,
                   const std::int64_t* __restrict__ offsets, std::int64_t batch, const T* __restrict__ w,
                   bool mean, T* __restrict__ out, std::int32_t* __restrict__ arg) {
    const std::int64_t groups_per_block = blockDim.x / G;
    const std::int64_t bag = static_cast<std::int64_t>(blockIdx.x) * groups_per_block + threadIdx.x / G;
    if (bag >= batch) return;
    const int t = static_cast<int>(threadIdx.x % G);
    const std::int64_t beg = offsets[bag], end = offsets[bag + 1];
    for (std::int64_t c = static_cast<std::int64_t>(t) * V; c < dim; c += static_cast<std::int64_t>(G) * V) {
        T acc[V];
        std::int32_t am[V];
        for (int v = 0; v < V; ++v) {
            acc[v] = T(0);
            am[v] = -1;
        }
        std::int64_t i = beg;
        bool first = true;
        for (; i + U <= end; i += U) {
            std::int64_t r[U];
            T x[U][V];
#pragma unroll
            for (int u = 0; u < U; ++u) r[u] = __ldg(ids + i + u);
#pragma unroll
            for (int u = 0; u < U; ++u) vload_row<T, V, Hint>(table + r[u] * dim + c, x[u]);
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const T wu = w ? __ldg(w + i + u) : T(1);
#pragma unroll
                for (int v = 0; v < V; ++v) {
                    const T y = wu * x[u][v];
                    if constexpr (Max) {
                        const bool gt = first || y > acc[v];
                        acc[v] = gt ? y : acc[v];
                        am[v] = gt ? static_cast<std::int32_t>(i + u - beg) : am[v];
                    } else {
                        acc[v] = w ? fma(wu, x[u][v], acc[v]) : acc[v] + x[u][v];
                    }
                }
                first = false;
            }
        }
        for (; i < end; ++i) {
            T x[V];
            vload_row<T, V, Hint>(table + __ldg(ids + i) * dim + c, x);
            const T wu = w ? __ldg(w + i) : T(1);
#pragma unroll
            for (int v = 0; v < V; ++v) {
                if constexpr (Max) {
                    const T y = wu * x[v];
                    const bool gt = first || y > acc[v];
                    acc[v] = gt ? y : acc[v];
                    am[v] = gt ? static_cast<std::int32_t>(i - beg) : am[v];
                } else {
                    acc[v] = w ? fma(wu, x[v], acc[v]) : acc[v] + x[v];
                }
            }
            first = false;
        }
        if (!Max && mean && end > beg) {
            const T s = T(1) / static_cast<T>(end - beg);
            for (int v = 0; v < V; ++v) acc[v] *= s;
        }
        vstore<T, V>(out + bag * dim + c, acc);
        if constexpr (Max) {
            if (arg)
                for (int v = 0; v < V; ++v) arg[bag * dim + c + v] = am[v];
        }
    }
}

template <class P, class T, int V, int G, bool Max>
void launch_bag_fwd(cudaStream_t s, const T* table, std::int64_t dim, const std::int64_t* ids,
                    const std::int64_t* offsets, std::int64_t batch, const T* w, bool mean, T* out,
                    std::int32_t* arg) {
    constexpr int threads = P::block_threads;
    constexpr int U = P::unroll;
    const std::int64_t bags_per_block = threads / G;
    const std::int64_t blocks = (batch + bags_per_block - 1) / bags_per_block;
    XREC_CHECK(blocks <= 2147483647, "kernels::embedding_bag_fwd(cuda): batch ", batch, " too large for one grid");
    // The L2 fetch hint: the whole row when rows are 256 (or 128) bytes apart and aligned.
    const std::int64_t row_bytes = dim * static_cast<std::int64_t>(sizeof(T));
    const bool aligned = reinterpret_cast<std::uintptr_t>(table) % 256 == 0;
    if (P::l2_row_hint && V * sizeof(T) == 16 && aligned && row_bytes % 256 == 0)
        bag_fwd_kernel<T, V, G, U, Max, threads, 256>
            <<<static_cast<unsigned>(blocks), threads, 0, s>>>(table, dim, ids, offsets, batch, w, mean, out, arg);
    else if (P::l2_row_hint && V * sizeof(T) == 16 && aligned && row_bytes % 128 == 0)
        bag_fwd_kernel<T, V, G, U, Max, threads, 128>
            <<<static_cast<unsigned>(blocks), threads, 0, s>>>(table, dim, ids, offsets, batch, w, mean, out, arg);
    else
        bag_fwd_kernel<T, V, G, U, Max, threads, 0>
            <<<static_cast<unsigned>(blocks), threads, 0, s>>>(table, dim, ids, offsets, batch, w, mean, out, arg);
    XREC_CUDA_CHECK(cudaGetLastError());
}

// Picks the group size: the power of two covering dim / V columns, at most 32.
template <class P, class T, int V, bool Max>
void dispatch_bag_fwd(cudaStream_t s, const T* table, std::int64_t dim, const std::int64_t* ids,
                      const std::int64_t* offsets, std::int64_t batch, const T* w, bool mean, T* out,
                      std::int32_t* arg) {
    const std::int64_t lanes = dim / V;
    if (lanes <= 1) return launch_bag_fwd<P, T, V, 1, Max>(s, table, dim, ids, offsets, batch, w, mean, out, arg);
    if (lanes <= 2) return launch_bag_fwd<P, T, V, 2, Max>(s, table, dim, ids, offsets, batch, w, mean, out, arg);
    if (lanes <= 4) return launch_bag_fwd<P, T, V, 4, Max>(s, table, dim, ids, offsets, batch, w, mean, out, arg);
    if (lanes <= 8) return launch_bag_fwd<P, T, V, 8, Max>(s, table, dim, ids, offsets, batch, w, mean, out, arg);
    if (lanes <= 16) return launch_bag_fwd<P, T, V, 16, Max>(s, table, dim, ids, offsets, batch, w, mean, out, arg);
    return launch_bag_fwd<P, T, V, 32, Max>(s, table, dim, ids, offsets, batch, w, mean, out, arg);
}

template <class P, class T, bool Max>
void dispatch_bag_vec(cudaStream_t s, const T* table, std::int64_t dim, const std::int64_t* ids,
                      const std::int64_t* offsets, std::int64_t batch, const T* w, bool mean, T* out,
                      std::int32_t* arg) {
    constexpr int V16 = static_cast<int>(16 / sizeof(T));  // 16-byte accesses: float4, double2
    const bool aligned = reinterpret_cast<std::uintptr_t>(table) % 16 == 0 &&
                         reinterpret_cast<std::uintptr_t>(out) % 16 == 0;
    if (aligned && dim % V16 == 0)
        return dispatch_bag_fwd<P, T, V16, Max>(s, table, dim, ids, offsets, batch, w, mean, out, arg);
    return dispatch_bag_fwd<P, T, 1, Max>(s, table, dim, ids, offsets, batch, w, mean, out, arg);
}

}  // namespace cuda_detail

/// Pooled lookup over jagged ids on the GPU:
///   sum:  out[b, :] = sum_{i in bag b} w_i table[ids[i], :]
///   mean: the same divided by the bag's size (an empty bag gives zeros)
///   max:  out[b, d] = max_i w_i table[ids[i], d]; arg[b, d] = bag-local index of the first
///         maximum (-1 for an empty bag, whose output is 0); arg may be null.
/// w (per-id weights, [nnz]) may be null (all ones). All pointers are device pointers; ids
/// must be valid rows (checked at the API boundary on the host, not here). P: the tuning
/// policy (block_threads, unroll), embedding_bag_cuda_policy unless a benchmark sweeps it.
template <class T, class P = embedding_bag_cuda_policy>
void embedding_bag_fwd(cuda tag, const T* table, std::int64_t dim, const std::int64_t* ids,
                       const std::int64_t* offsets, std::int64_t batch, const T* w, pooling mode, T* out,
                       std::int32_t* arg = nullptr) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "embedding_bag_fwd(cuda): float or double");
    if (batch <= 0 || dim <= 0) return;
    const cudaStream_t s = device::stream_of(tag);
    if (mode == pooling::max)
        cuda_detail::dispatch_bag_vec<P, T, true>(s, table, dim, ids, offsets, batch, w, false, out, arg);
    else
        cuda_detail::dispatch_bag_vec<P, T, false>(s, table, dim, ids, offsets, batch, w, mode == pooling::mean, out,
                                                nullptr);
}

/// Options of the fused backward + row-wise Adagrad step (the update of
/// optim::rowwise_adagrad, L2 form: g += weight_decay w; a += mean_d g_d^2;
/// w -= lr / (sqrt(a) + eps) g).
struct rowwise_adagrad_step {
    double lr = 0.01;
    double eps = 1e-8;
    double weight_decay = 0;
};

namespace cuda_detail {

// keys[i] = ids[i] as 32-bit; vals[i] = b, the bag of position i, when the backward needs
// nothing but the bag (by_bag: no per-id weights, no max), else vals[i] = i and pos_bag[i] = b.
// One warp per bag, lanes striding its positions (coalesced writes).
__global__ void bag_positions_kernel(const std::int64_t* __restrict__ ids, const std::int64_t* __restrict__ offsets,
                                     std::int64_t batch, bool by_bag, std::int32_t* __restrict__ pos_bag,
                                     std::uint32_t* __restrict__ keys, std::int32_t* __restrict__ vals) {
    const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / 32);
    const int lane = static_cast<int>(threadIdx.x % 32);
    for (std::int64_t b = first_index() / 32; b < batch; b += warps) {
        const std::int64_t e = offsets[b + 1];
        for (std::int64_t i = offsets[b] + lane; i < e; i += 32) {
            keys[i] = static_cast<std::uint32_t>(ids[i]);
            if (by_bag) {
                vals[i] = static_cast<std::int32_t>(b);
            } else {
                pos_bag[i] = static_cast<std::int32_t>(b);
                vals[i] = static_cast<std::int32_t>(i);
            }
        }
    }
}

// The merged gradient of one piece of a run: entries [p_beg, p_end) of the sorted order,
// summed in that order into g (the columns thread t owns: c = k * G * V + t * V). sorted
// holds bags (by_bag) or positions (whose bags are in pos_bag).
template <class T, int V, int G, int Tiles, int UJ>
__device__ inline void sum_piece(T (&g)[Tiles][V], int t, std::int64_t dim, std::int32_t p_beg, std::int32_t p_end,
                                 bool by_bag, const std::int32_t* __restrict__ sorted,
                                 const std::int32_t* __restrict__ pos_bag, const std::int64_t* __restrict__ offsets,
                                 const T* __restrict__ gy, const T* __restrict__ w, int mode,
                                 const std::int32_t* __restrict__ arg) {
    for (int k = 0; k < Tiles; ++k)
        for (int v = 0; v < V; ++v) g[k][v] = T(0);
    std::int32_t j = p_beg;
    if (mode != 2) {
        // UJ rows' loads issued before any add (latency), added in position order (the same
        // sums, bit for bit, as the one-at-a-time loop below).
        for (; j + UJ <= p_end; j += UJ) {
            std::int32_t bb[UJ];
            T cf[UJ];
#pragma unroll
            for (int u = 0; u < UJ; ++u) {
                const std::int32_t p = sorted[j + u];
                bb[u] = by_bag ? p : pos_bag[p];
                cf[u] = w ? w[p] : T(1);
            }
            if (mode == 1)
#pragma unroll
                for (int u = 0; u < UJ; ++u) cf[u] /= static_cast<T>(offsets[bb[u] + 1] - offsets[bb[u]]);
            T x[UJ][Tiles][V];
#pragma unroll
            for (int u = 0; u < UJ; ++u)
#pragma unroll
                for (int k = 0; k < Tiles; ++k) {
                    const std::int64_t c = static_cast<std::int64_t>(k) * G * V + static_cast<std::int64_t>(t) * V;
                    if (c < dim) vload<T, V>(gy + static_cast<std::int64_t>(bb[u]) * dim + c, x[u][k]);
                }
#pragma unroll
            for (int u = 0; u < UJ; ++u)
#pragma unroll
                for (int k = 0; k < Tiles; ++k) {
                    const std::int64_t c = static_cast<std::int64_t>(k) * G * V + static_cast<std::int64_t>(t) * V;
                    if (c < dim)
#pragma unroll
                        for (int v = 0; v < V; ++v) g[k][v] += cf[u] * x[u][k][v];
                }
        }
    }
    for (; j < p_end; ++j) {
        const std::int32_t p = sorted[j];
        const std::int32_t b = by_bag ? p : pos_bag[p];
        T coef = w ? w[p] : T(1);
        if (mode == 1) coef /= static_cast<T>(offsets[b + 1] - offsets[b]);
        const T* grow = gy + static_cast<std::int64_t>(b) * dim;
#pragma unroll
        for (int k = 0; k < Tiles; ++k) {
            const std::int64_t c = static_cast<std::int64_t>(k) * G * V + static_cast<std::int64_t>(t) * V;
            if (c >= dim) break;
            T x[V];
            vload<T, V>(grow + c, x);
            if (mode == 2) {
                const std::int32_t local = p - static_cast<std::int32_t>(offsets[b]);
#pragma unroll
                for (int v = 0; v < V; ++v)
                    if (arg[static_cast<std::int64_t>(b) * dim + c + v] == local) g[k][v] += coef * x[v];
            } else {
#pragma unroll
                for (int v = 0; v < V; ++v) g[k][v] += coef * x[v];
            }
        }
    }
}

// Row-wise Adagrad on one row, given its merged gradient g spread over the G threads of a
// group (wv: the row's current values, loaded by the caller). The mean square is reduced over
// the group with a fixed butterfly, so the result depends on the data alone.
template <class T, int V, int G, int Tiles>
__device__ inline void adagrad_row(T (&g)[Tiles][V], T (&wv)[Tiles][V], T acc_old, int t, unsigned lane_mask,
                                   T* __restrict__ wrow, T* __restrict__ acc_row, std::int64_t dim, T lr, T eps, T l2,
                                   T shrink) {
    T sq = 0;
#pragma unroll
    for (int k = 0; k < Tiles; ++k) {
        const std::int64_t c = static_cast<std::int64_t>(k) * G * V + static_cast<std::int64_t>(t) * V;
        if (c >= dim) break;
#pragma unroll
        for (int v = 0; v < V; ++v) {
            g[k][v] += l2 * wv[k][v];
            sq += g[k][v] * g[k][v];
        }
    }
#pragma unroll
    for (int o = G / 2; o > 0; o /= 2) sq += __shfl_xor_sync(lane_mask, sq, o, G);
    const T a = acc_old + sq / static_cast<T>(dim);
    const T m = lr / (sqrt(a) + eps);
    if (t == 0) *acc_row = a;
#pragma unroll
    for (int k = 0; k < Tiles; ++k) {
        const std::int64_t c = static_cast<std::int64_t>(k) * G * V + static_cast<std::int64_t>(t) * V;
        if (c >= dim) break;
#pragma unroll
        for (int v = 0; v < V; ++v) wv[k][v] = shrink * wv[k][v] - m * g[k][v];
        vstore<T, V>(wrow + c, wv[k]);
    }
}

template <class T, int V, int Tiles>
__device__ inline void load_row(T (&wv)[Tiles][V], int t, int G, const T* __restrict__ wrow, std::int64_t dim) {
#pragma unroll
    for (int k = 0; k < Tiles; ++k) {
        const std::int64_t c = static_cast<std::int64_t>(k) * G * V + static_cast<std::int64_t>(t) * V;
        if (c >= dim) break;
        vload<T, V>(wrow + c, wv[k]);
    }
}

// A group's lanes inside its warp, for the shuffles of adagrad_row.
template <int G>
__device__ inline unsigned group_mask() {
    return G == 32 ? 0xffffffffu : (((1u << G) - 1u) << ((threadIdx.x % 32) / G * G));
}

// The long-run bookkeeping of run r packed in 64 bits for one scan: low half = pieces of a
// run longer than one piece (else 0; scanned: its first partial row), high half = 1 for
// such a run (scanned: its index among the long runs).
__device__ inline std::int32_t lo32(std::uint64_t x) { return static_cast<std::int32_t>(x & 0xffffffffu); }
__device__ inline std::int32_t hi32(std::uint64_t x) { return static_cast<std::int32_t>(x >> 32); }

// For all n slots: counts past the number of runs set to 0 (the scans run over all n, whose
// length the host knows, and must see nothing there) and the packed long-run word.
__global__ void run_info_kernel(std::int32_t n, const std::int32_t* __restrict__ num_runs,
                                std::int32_t* __restrict__ counts, std::int32_t piece,
                                std::uint64_t* __restrict__ info) {
    const std::int32_t runs = *num_runs;
    for (std::int64_t r = first_index(); r < n; r += grid_stride()) {
        std::uint64_t x = 0;
        if (r < runs) {
            const std::int32_t c = counts[r], np = (c + piece - 1) / piece;
            if (np > 1) x = static_cast<std::uint64_t>(np) | (std::uint64_t{1} << 32);
        } else {
            counts[r] = 0;
        }
        info[r] = x;
    }
}

// For each long run r: piece_run[first partial + k] = r for its pieces, long_runs[its index] = r.
__global__ void long_map_kernel(const std::int32_t* __restrict__ num_runs, const std::uint64_t* __restrict__ info,
                                const std::uint64_t* __restrict__ scan, std::int32_t* __restrict__ piece_run,
                                std::int32_t* __restrict__ long_runs) {
    const std::int32_t runs = *num_runs;
    for (std::int64_t r = first_index(); r < runs; r += grid_stride()) {
        const std::uint64_t x = info[r];
        if (!x) continue;
        const std::uint64_t o = scan[r];
        for (std::int32_t k = 0; k < lo32(x); ++k) piece_run[lo32(o) + k] = static_cast<std::int32_t>(r);
        long_runs[hi32(o)] = static_cast<std::int32_t>(r);
    }
}

// Phase A, one group of G threads per work item: items [0, runs) are the runs, and a run of
// at most one piece (nearly every run with uniform ids) is summed and its row updated here;
// items [runs, runs + long pieces) are the pieces of the long runs (hot ids), whose sums go
// to their partial rows for phase B.
template <class P, class T, int V, int G, int Tiles>
__global__ void __launch_bounds__(P::block_threads, P::update_min_blocks)
    bag_pieces_kernel(T* __restrict__ table, T* __restrict__ accum, std::int64_t dim, std::int32_t L, std::int32_t n,
                      const std::uint32_t* __restrict__ uniq, const std::int32_t* __restrict__ num_runs,
                      const std::int32_t* __restrict__ counts, const std::int32_t* __restrict__ starts,
                      const std::uint64_t* __restrict__ info, const std::uint64_t* __restrict__ scan,
                      const std::int32_t* __restrict__ piece_run, T* __restrict__ partial, bool by_bag,
                      const std::int32_t* __restrict__ sorted, const std::int32_t* __restrict__ pos_bag,
                      const std::int64_t* __restrict__ offsets, const T* __restrict__ gy, const T* __restrict__ w,
                      int mode, const std::int32_t* __restrict__ arg, T lr, T eps, T l2, T shrink) {
    const int t = static_cast<int>(threadIdx.x % G);
    const std::int64_t groups = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / G);
    const std::int32_t runs = *num_runs;
    const std::int64_t total = runs + lo32(scan[n - 1]) + lo32(info[n - 1]);
    const unsigned mask = group_mask<G>();
    for (std::int64_t q = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G; q < total;
         q += groups) {
        T g[Tiles][V];
        if (q < runs) {
            if (info[q]) continue;  // a long run: its pieces are later items
            const std::int64_t row = uniq[q];
            T wv[Tiles][V];
            load_row<T, V, Tiles>(wv, t, G, table + row * dim, dim);  // row and accumulator in flight
            const T acc_old = accum[row];                             // during the sum
            const std::int32_t p_beg = starts[q];
            sum_piece<T, V, G, Tiles, P::update_unroll>(g, t, dim, p_beg, p_beg + counts[q], by_bag, sorted, pos_bag, offsets, gy, w,
                                      mode, arg);
            adagrad_row<T, V, G, Tiles>(g, wv, acc_old, t, mask, table + row * dim, accum + row, dim, lr, eps, l2, shrink);
        } else {
            const std::int32_t piece = static_cast<std::int32_t>(q - runs);
            const std::int32_t r = piece_run[piece];
            const std::int32_t k = piece - lo32(scan[r]);
            const std::int32_t run_end = starts[r] + counts[r];
            const std::int32_t p_beg = starts[r] + k * L;
            const std::int32_t p_end = p_beg + L < run_end ? p_beg + L : run_end;
            sum_piece<T, V, G, Tiles, P::update_unroll>(g, t, dim, p_beg, p_end, by_bag, sorted, pos_bag, offsets, gy, w, mode, arg);
            T* prow = partial + static_cast<std::int64_t>(piece) * dim;
#pragma unroll
            for (int kk = 0; kk < Tiles; ++kk) {
                const std::int64_t cc = static_cast<std::int64_t>(kk) * G * V + static_cast<std::int64_t>(t) * V;
                if (cc >= dim) break;
                vstore<T, V>(prow + cc, g[kk]);
            }
        }
    }
}

// Phase B: one block per long run. The block's groups sum the run's partial rows strided
// (group j takes partials j, j + groups, ...), in order; group 0 then adds the group sums in
// group order and updates the row. Fixed order throughout.
template <class P, class T, int V, int G, int Tiles>
__global__ void __launch_bounds__(P::block_threads)
    bag_long_kernel(T* __restrict__ table, T* __restrict__ accum, std::int64_t dim, std::int32_t n,
                    const std::uint32_t* __restrict__ uniq, const std::uint64_t* __restrict__ info,
                    const std::uint64_t* __restrict__ scan, const std::int32_t* __restrict__ long_runs,
                    const T* __restrict__ partial, T lr, T eps, T l2, T shrink) {
    constexpr int groups = P::block_threads / G;
    __shared__ T red[groups][Tiles * G * V];
    const int t = static_cast<int>(threadIdx.x % G), j = static_cast<int>(threadIdx.x / G);
    const std::int32_t num_long = hi32(scan[n - 1]) + hi32(info[n - 1]);
    for (std::int32_t m = static_cast<std::int32_t>(blockIdx.x); m < num_long; m += static_cast<std::int32_t>(gridDim.x)) {
        const std::int32_t r = long_runs[m];
        const std::int32_t np = lo32(info[r]), base = lo32(scan[r]);
        T g[Tiles][V];
        for (int k = 0; k < Tiles; ++k)
            for (int v = 0; v < V; ++v) g[k][v] = T(0);
        constexpr int UJ = P::update_unroll;
        std::int32_t q = j;
        for (; q + (UJ - 1) * groups < np; q += UJ * groups) {  // UJ partial rows in flight, added in order
            T x[UJ][Tiles][V];
#pragma unroll
            for (int u = 0; u < UJ; ++u)
#pragma unroll
                for (int k = 0; k < Tiles; ++k) {
                    const std::int64_t c = static_cast<std::int64_t>(k) * G * V + static_cast<std::int64_t>(t) * V;
                    if (c < dim) vload<T, V>(partial + static_cast<std::int64_t>(base + q + u * groups) * dim + c, x[u][k]);
                }
#pragma unroll
            for (int u = 0; u < UJ; ++u)
#pragma unroll
                for (int k = 0; k < Tiles; ++k) {
                    const std::int64_t c = static_cast<std::int64_t>(k) * G * V + static_cast<std::int64_t>(t) * V;
                    if (c < dim)
#pragma unroll
                        for (int v = 0; v < V; ++v) g[k][v] += x[u][k][v];
                }
        }
        for (; q < np; q += groups) {
            const T* prow = partial + static_cast<std::int64_t>(base + q) * dim;
#pragma unroll
            for (int k = 0; k < Tiles; ++k) {
                const std::int64_t c = static_cast<std::int64_t>(k) * G * V + static_cast<std::int64_t>(t) * V;
                if (c >= dim) break;
                T x[V];
                vload<T, V>(prow + c, x);
#pragma unroll
                for (int v = 0; v < V; ++v) g[k][v] += x[v];
            }
        }
#pragma unroll
        for (int k = 0; k < Tiles; ++k)
#pragma unroll
            for (int v = 0; v < V; ++v) red[j][k * G * V + t * V + v] = g[k][v];
        __syncthreads();
        if (j == 0) {
            for (int jj = 1; jj < groups; ++jj)
#pragma unroll
                for (int k = 0; k < Tiles; ++k)
#pragma unroll
                    for (int v = 0; v < V; ++v) g[k][v] += red[jj][k * G * V + t * V + v];
            const std::int64_t row = uniq[r];
            T wv[Tiles][V];
            load_row<T, V, Tiles>(wv, t, G, table + row * dim, dim);
            adagrad_row<T, V, G, Tiles>(g, wv, accum[row], t, group_mask<G>(), table + row * dim, accum + row, dim, lr,
                                        eps, l2, shrink);
        }
        __syncthreads();
    }
}

// Device pointers of the fused step's scratch, carved out of one workspace.
struct bag_step_scratch {
    std::int32_t *pos_bag, *vals_in, *vals_out, *counts, *starts, *num_runs, *piece_run, *long_runs;
    std::uint32_t *keys_in, *keys_out, *uniq;
    std::uint64_t *info, *scan;
    void* partial;
    void* cub_tmp;
    std::size_t cub_bytes;
};

inline int significant_bits(std::int64_t rows) {
    int b = 1;
    while (b < 32 && (std::int64_t{1} << b) < rows) ++b;
    return b;
}

inline std::size_t align256(std::size_t n) { return (n + 255) & ~std::size_t{255}; }

// Upper bound of the partial rows phase A writes: a run of c > L positions has
// ceil(c / L) < 2 c / L pieces, so all of them together have fewer than 2 nnz / L.
inline std::int64_t max_partials(std::int64_t nnz, std::int64_t L) { return 2 * nnz / L + 1; }

// The scratch layout for nnz ids; with base == nullptr only the size is computed.
template <class P, class T>
std::size_t carve(char* base, std::int64_t nnz, std::int64_t rows, std::int64_t dim, bag_step_scratch& sc) {
    const int n = static_cast<int>(nnz);
    std::size_t sort_b = 0, rle_b = 0, scan_b = 0;
    XREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_b, static_cast<const std::uint32_t*>(nullptr),
                                                    static_cast<std::uint32_t*>(nullptr),
                                                    static_cast<const std::int32_t*>(nullptr),
                                                    static_cast<std::int32_t*>(nullptr), n, 0,
                                                    significant_bits(rows)));
    XREC_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(
        nullptr, rle_b, static_cast<const std::uint32_t*>(nullptr), static_cast<std::uint32_t*>(nullptr),
        static_cast<std::int32_t*>(nullptr), static_cast<std::int32_t*>(nullptr), n));
    XREC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_b, static_cast<const std::int32_t*>(nullptr),
                                                  static_cast<std::int32_t*>(nullptr), n));
    std::size_t scan64_b = 0;
    XREC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan64_b, static_cast<const std::uint64_t*>(nullptr),
                                                  static_cast<std::uint64_t*>(nullptr), n));
    std::size_t cub_b = sort_b > rle_b ? sort_b : rle_b;
    if (scan_b > cub_b) cub_b = scan_b;
    if (scan64_b > cub_b) cub_b = scan64_b;
    const std::size_t n4 = static_cast<std::size_t>(nnz) * 4;
    std::size_t off = 0;
    auto take = [&](std::size_t bytes) {
        char* p = base ? base + off : nullptr;
        off += align256(bytes);
        return p;
    };
    sc.pos_bag = reinterpret_cast<std::int32_t*>(take(n4));
    sc.keys_in = reinterpret_cast<std::uint32_t*>(take(n4));
    sc.keys_out = reinterpret_cast<std::uint32_t*>(take(n4));
    sc.vals_in = reinterpret_cast<std::int32_t*>(take(n4));
    sc.vals_out = reinterpret_cast<std::int32_t*>(take(n4));
    sc.uniq = reinterpret_cast<std::uint32_t*>(take(n4));
    sc.counts = reinterpret_cast<std::int32_t*>(take(n4));
    sc.starts = reinterpret_cast<std::int32_t*>(take(n4));
    sc.num_runs = reinterpret_cast<std::int32_t*>(take(4));
    sc.info = reinterpret_cast<std::uint64_t*>(take(static_cast<std::size_t>(nnz) * 8));
    sc.scan = reinterpret_cast<std::uint64_t*>(take(static_cast<std::size_t>(nnz) * 8));
    // After the sort its inputs are free: the long-run maps reuse them.
    sc.piece_run = reinterpret_cast<std::int32_t*>(sc.keys_in);
    sc.long_runs = sc.vals_in;
    sc.partial = take(static_cast<std::size_t>(max_partials(nnz, P::piece) * dim) * sizeof(T));
    sc.cub_tmp = take(cub_b);
    sc.cub_bytes = cub_b;
    return off;
}

template <class P, class T, int V, int G, int Tiles>
void launch_bag_step(cudaStream_t s, int sms, T* table, T* accum, std::int64_t dim, const bag_step_scratch& sc,
                     bool by_bag, const std::int64_t* offsets, const T* gy, const T* w, int mode,
                     const std::int32_t* arg, T lr, T eps, T l2, T shrink, std::int64_t nnz) {
    constexpr int threads = P::block_threads;
    constexpr int L = P::piece;
    const int n = static_cast<int>(nnz);
    const std::int64_t per_block = threads / G;
    std::int64_t blocks = (nnz + per_block - 1) / per_block;
    const std::int64_t cap = static_cast<std::int64_t>(sms) * P::update_blocks_per_sm;
    blocks = blocks > cap ? cap : (blocks < 1 ? 1 : blocks);
    bag_pieces_kernel<P, T, V, G, Tiles><<<static_cast<unsigned>(blocks), threads, 0, s>>>(
        table, accum, dim, L, n, sc.uniq, sc.num_runs, sc.counts, sc.starts, sc.info, sc.scan, sc.piece_run,
        static_cast<T*>(sc.partial),
        by_bag, sc.vals_out, sc.pos_bag, offsets, gy, w, mode, arg, lr, eps, l2, shrink);
    XREC_CUDA_CHECK(cudaGetLastError());
    bag_long_kernel<P, T, V, G, Tiles><<<static_cast<unsigned>(sms) * 4, threads, 0, s>>>(
        table, accum, dim, n, sc.uniq, sc.info, sc.scan, sc.long_runs, static_cast<const T*>(sc.partial), lr, eps, l2,
        shrink);
    XREC_CUDA_CHECK(cudaGetLastError());
}

// Group size G and column tiles: up to 8 V-wide columns one thread, up to 32 a group of 8
// threads with 2 or 4 tiles (fewer threads per row: more rows in flight per SM, which is
// what the latency-bound update needs), then 16 and 32 threads with 4 tiles.
template <class P, class T, int V>
void dispatch_bag_step(cudaStream_t s, int sms, T* table, T* accum, std::int64_t dim, const bag_step_scratch& sc,
                       bool by_bag, const std::int64_t* offsets, const T* gy, const T* w, int mode,
                       const std::int32_t* arg, T lr, T eps, T l2, T shrink, std::int64_t nnz) {
    const std::int64_t lanes = (dim + V - 1) / V;
#define XREC_BAG_STEP(G_, TILES_) \
    return launch_bag_step<P, T, V, G_, TILES_>(s, sms, table, accum, dim, sc, by_bag, offsets, gy, w, mode, arg, lr, eps, l2, shrink, nnz)
    if (lanes <= 1) XREC_BAG_STEP(1, 1);
    if (lanes <= 2) XREC_BAG_STEP(2, 1);
    if (lanes <= 4) XREC_BAG_STEP(4, 1);
    if (lanes <= 8) XREC_BAG_STEP(8, 1);
    if (lanes <= 16) XREC_BAG_STEP(8, 2);
    if (lanes <= 32) XREC_BAG_STEP(8, 4);
    if (lanes <= 64) XREC_BAG_STEP(16, 4);
    XREC_BAG_STEP(32, P::update_tiles);
#undef XREC_BAG_STEP
}

// The number of multiprocessors of the current device (asked once per thread and device).
inline int sm_count() {
    thread_local int dev_cached = -1, sms = 0;
    int dev = 0;
    XREC_CUDA_CHECK(cudaGetDevice(&dev));
    if (dev != dev_cached) {
        XREC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        dev_cached = dev;
    }
    return sms;
}

// keys[i] = ids[i] as 32-bit, vals[i] = i: every gradient row its own bag.
template <class I>
__global__ void row_positions_kernel(const I* __restrict__ ids, std::int64_t n, std::uint32_t* __restrict__ keys,
                                     std::int32_t* __restrict__ vals) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
        keys[i] = static_cast<std::uint32_t>(ids[i]);
        vals[i] = static_cast<std::int32_t>(i);
    }
}

// After keys_in / vals_in are filled: the stable sort by id (significant bits only), the
// run-length encoding, the per-run piece counts and both scans, and the long-run maps. All
// on the device; the number of runs stays there.
template <class P>
void sort_runs(cudaStream_t s, const bag_step_scratch& sc, std::int64_t nnz, std::int64_t rows) {
    const int n = static_cast<int>(nnz);
    std::size_t b = sc.cub_bytes;
    XREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sc.cub_tmp, b, sc.keys_in, sc.keys_out, sc.vals_in, sc.vals_out,
                                                    n, 0, significant_bits(rows), s));
    b = sc.cub_bytes;
    XREC_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(sc.cub_tmp, b, sc.keys_out, sc.uniq, sc.counts, sc.num_runs,
                                                       n, s));
    run_info_kernel<<<blocks_for(nnz), threads, 0, s>>>(n, sc.num_runs, sc.counts, P::piece, sc.info);
    XREC_CUDA_CHECK(cudaGetLastError());
    b = sc.cub_bytes;
    XREC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(sc.cub_tmp, b, sc.counts, sc.starts, n, s));
    b = sc.cub_bytes;
    XREC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(sc.cub_tmp, b, sc.info, sc.scan, n, s));
    long_map_kernel<<<blocks_for(nnz), threads, 0, s>>>(sc.num_runs, sc.info, sc.scan, sc.piece_run, sc.long_runs);
    XREC_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda_detail

/// Scratch bytes embedding_bag_adagrad needs for nnz ids over a `rows` x `dim` table (first
/// phase of the two-phase call; CUB's own temporary storage included).
template <class T, class P = embedding_bag_cuda_policy>
std::size_t embedding_bag_adagrad_workspace_bytes(std::int64_t nnz, std::int64_t rows, std::int64_t dim) {
    cuda_detail::bag_step_scratch sc{};
    return cuda_detail::carve<P, T>(nullptr, nnz > 0 ? nnz : 1, rows, dim, sc);
}

/// Backward of embedding_bag fused with the row-wise Adagrad update of its table:
///   grad_row[r] = sum over positions i with ids[i] == r, in ascending i, of
///                 coef_i * gy[bag(i), :]  (coef = w_i, divided by the bag size for mean;
///                 for max only the columns whose arg names position i)
///   g = grad_row + weight_decay * table[r]; accum[r] += mean(g^2);
///   table[r] -= lr / (sqrt(accum[r]) + eps) * g
/// for every id r present in the batch, in place, deterministically (no atomics): positions
/// are sorted by id (stable), each id's run is cut into pieces of
/// embedding_bag_cuda_policy::piece positions summed in order, and the pieces of a long run
/// (a hot id) are added in piece order. `ws` is grown to
/// embedding_bag_adagrad_workspace_bytes(nnz, rows, dim) when needed. Needs nnz below 2^31
/// and rows up to 2^32. `arg` is the forward's argmax (max pooling only). P: the tuning
/// policy (embedding_bag_cuda_policy unless a benchmark sweeps it).
template <class T, class P = embedding_bag_cuda_policy>
void embedding_bag_adagrad(cuda tag, T* table, T* accum, std::int64_t rows, std::int64_t dim, const std::int64_t* ids,
                           const std::int64_t* offsets, std::int64_t batch, std::int64_t nnz, const T* w,
                           pooling mode, const std::int32_t* arg, const T* gy, const rowwise_adagrad_step& opt,
                           device::workspace& ws) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "embedding_bag_adagrad(cuda): float or double");
    if (nnz <= 0 || batch <= 0 || dim <= 0) return;
    XREC_CHECK(nnz < 2147483647 / 2 && rows <= 4294967295LL, "embedding_bag_adagrad(cuda): ", nnz, " ids over ",
               rows, " rows exceed the 32-bit sort keys and positions");
    XREC_CHECK(mode != pooling::max || arg, "embedding_bag_adagrad(cuda): max pooling needs the forward's arg");
    constexpr int V16 = static_cast<int>(16 / sizeof(T));
    const bool vec = reinterpret_cast<std::uintptr_t>(table) % 16 == 0 &&
                     reinterpret_cast<std::uintptr_t>(gy) % 16 == 0 && dim % V16 == 0;
    const std::int64_t widest = std::int64_t{P::update_tiles} * 32 * (vec ? V16 : 1);
    XREC_CHECK(dim <= widest, "embedding_bag_adagrad(cuda): dim ", dim, " above ", widest,
               " (the fused update keeps a row in registers", vec ? "" : "; a dim that is a multiple of ",
               vec ? "" : std::to_string(V16), vec ? ")" : " raises the limit 4x)");
    const cudaStream_t s = device::stream_of(tag);
    cuda_detail::bag_step_scratch sc{};
    const std::size_t bytes = cuda_detail::carve<P, T>(nullptr, nnz, rows, dim, sc);
    cuda_detail::carve<P, T>(static_cast<char*>(ws.get(bytes)), nnz, rows, dim, sc);
    // Sort by id the bags (when the bag is all the update needs) or the positions.
    const bool by_bag = w == nullptr && mode != pooling::max;
    cuda_detail::bag_positions_kernel<<<cuda_detail::blocks_for(batch * 32), cuda_detail::threads, 0, s>>>(
        ids, offsets, batch, by_bag, sc.pos_bag, sc.keys_in, sc.vals_in);
    XREC_CUDA_CHECK(cudaGetLastError());
    cuda_detail::sort_runs<P>(s, sc, nnz, rows);
    const int m = mode == pooling::sum ? 0 : mode == pooling::mean ? 1 : 2;
    const T lr = static_cast<T>(opt.lr), eps = static_cast<T>(opt.eps), l2 = static_cast<T>(opt.weight_decay);
    const int sms = cuda_detail::sm_count();
    if (vec)
        cuda_detail::dispatch_bag_step<P, T, V16>(s, sms, table, accum, dim, sc, by_bag, offsets, gy, w, m, arg, lr,
                                                  eps, l2, T(1), nnz);
    else
        cuda_detail::dispatch_bag_step<P, T, 1>(s, sms, table, accum, dim, sc, by_bag, offsets, gy, w, m, arg, lr, eps,
                                                l2, T(1), nnz);
}

/// Scratch bytes sparse_rows_adagrad needs for n gradient rows (first phase of the call).
template <class T, class P = embedding_bag_cuda_policy>
std::size_t sparse_rows_adagrad_workspace_bytes(std::int64_t n, std::int64_t rows, std::int64_t dim) {
    return embedding_bag_adagrad_workspace_bytes<T, P>(n, rows, dim);
}

/// Row-wise Adagrad over a table's sparse gradient as the tape leaves it: n (id, row) pairs
/// in emission order, ids and rows in device memory, duplicates not merged. The rows of one
/// id are summed in emission order (the stable sort keeps it), then updated as
/// optim::rowwise_adagrad does: g += l2 w; a += mean_d g_d^2; w = shrink w - lr / (sqrt(a) +
/// eps) g. The machinery of embedding_bag_adagrad with every row its own bag: sorted,
/// run-length encoded and updated on the device, deterministically, with no atomics and
/// nothing read back, so a training step never waits here. ws: at least
/// sparse_rows_adagrad_workspace_bytes(n, rows, dim) bytes, 256-aligned. Ids must lie in
/// [0, rows) (the ops that append them check); n below 2^30 and rows up to 2^32.
template <class T, class P = embedding_bag_cuda_policy>
void sparse_rows_adagrad(cuda tag, T* table, T* accum, std::int64_t rows, std::int64_t dim, const std::int64_t* ids,
                         std::int64_t n, const T* grad_rows, T lr, T eps, T l2, T shrink, void* ws) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "sparse_rows_adagrad(cuda): float or double");
    if (n <= 0 || dim <= 0) return;
    XREC_CHECK(n < 2147483647 / 2 && rows <= 4294967295LL, "sparse_rows_adagrad(cuda): ", n, " gradient rows over ",
               rows, " table rows exceed the 32-bit sort keys and positions");
    constexpr int V16 = static_cast<int>(16 / sizeof(T));
    const bool vec = reinterpret_cast<std::uintptr_t>(table) % 16 == 0 &&
                     reinterpret_cast<std::uintptr_t>(grad_rows) % 16 == 0 && dim % V16 == 0;
    const std::int64_t widest = std::int64_t{P::update_tiles} * 32 * (vec ? V16 : 1);
    XREC_CHECK(dim <= widest, "sparse_rows_adagrad(cuda): dim ", dim, " above ", widest,
               " (the fused update keeps a row in registers)");
    const cudaStream_t s = device::stream_of(tag);
    cuda_detail::bag_step_scratch sc{};
    cuda_detail::carve<P, T>(static_cast<char*>(ws), n, rows, dim, sc);
    cuda_detail::row_positions_kernel<std::int64_t><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, s>>>(ids, n, sc.keys_in,
                                                                                                 sc.vals_in);
    XREC_CUDA_CHECK(cudaGetLastError());
    cuda_detail::sort_runs<P>(s, sc, n, rows);
    const int sms = cuda_detail::sm_count();
    if (vec)
        cuda_detail::dispatch_bag_step<P, T, V16>(s, sms, table, accum, dim, sc, true, nullptr, grad_rows, nullptr, 0,
                                                  nullptr, lr, eps, l2, shrink, n);
    else
        cuda_detail::dispatch_bag_step<P, T, 1>(s, sms, table, accum, dim, sc, true, nullptr, grad_rows, nullptr, 0,
                                                nullptr, lr, eps, l2, shrink, n);
}

}  // namespace kernels
}  // namespace xrec

namespace xrec::kernels {

// ---- ops::embedding_bag on the cuda tag: the batched kernels the op calls on every backend
// ---- (cpu overloads in include/xrec/ops/embedding.hpp). ids and offsets are device copies
// ---- (kernels::upload_ids); tensors are device memory. kernels::bag_sum / bag_max, the cpu
// ---- backend's per-bag kernels, have no cuda overload (a launch per bag would be the wrong
// ---- design): calling them on the cuda tag stops at compile time (backend/kernels.hpp).

namespace cuda_detail {

// The bag of position i: the b in [0, batch) with offsets[b] <= i < offsets[b + 1], by
// binary search (offsets[0] = 0 <= i < offsets[batch] = nnz keeps the invariant
// offsets[lo] <= i < offsets[hi]; an empty bag can never satisfy it).
__device__ inline std::int64_t bag_of(const std::int64_t* __restrict__ offsets, std::int64_t batch, std::int64_t i) {
    std::int64_t lo = 0, hi = batch;
    while (hi - lo > 1) {
        const std::int64_t mid = lo + (hi - lo) / 2;
        if (offsets[mid] <= i)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

// mark[offsets[b] + arg[b, d]] = 1 for every element with arg >= 0 (mark zeroed before).
// Several threads may store the same byte, all the value 1: the result is the same in any
// order.
__global__ void bag_max_mark_kernel(std::int64_t dim, const std::int64_t* __restrict__ offsets, std::int64_t batch,
                                    const std::int32_t* __restrict__ arg, std::uint8_t* __restrict__ mark) {
    for (std::int64_t e = first_index(); e < batch * dim; e += grid_stride()) {
        const std::int32_t a = arg[e];
        if (a >= 0) mark[offsets[e / dim] + a] = 1;
    }
}

// One warp per position i (grid-stride over positions), the lanes over its row's elements
// (coalesced): sum / mean write rows[i, :] = s_b w_i gy[b, :]; max writes the whole row
// slot[i] (when >= 0): w_i gy[b, d] where arg[b, d] names i, 0 elsewhere.
template <class T>
__global__ void bag_grad_rows_kernel(std::int64_t dim, const std::int64_t* __restrict__ offsets, std::int64_t batch,
                                     std::int64_t nnz, const T* __restrict__ gy, const T* __restrict__ w, pooling mode,
                                     const std::int32_t* __restrict__ arg, const std::int64_t* __restrict__ slot,
                                     T* __restrict__ rows) {
    const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / 32);
    const std::int64_t lane = threadIdx.x % 32;
    for (std::int64_t i = first_index() / 32; i < nnz; i += warps) {
        const std::int64_t b = bag_of(offsets, batch, i), begin = offsets[b];
        const T* g = gy + b * dim;
        if (mode == pooling::max) {
            const std::int64_t r = slot[i];
            if (r < 0) continue;
            const std::int32_t local = static_cast<std::int32_t>(i - begin);
            const std::int32_t* a = arg + b * dim;
            T* row = rows + r * dim;
            for (std::int64_t d = lane; d < dim; d += 32)
                row[d] = a[d] == local ? (w ? w[i] * g[d] : g[d]) : T(0);
        } else {
            // The cpu's coefficient, rounded alike: s = 1 / |b| (the bag holds i: |b| >= 1).
            const T s = mode == pooling::mean ? T(1) / static_cast<T>(offsets[b + 1] - begin) : T(1);
            const T c = w ? w[i] * s : s;
            T* row = rows + i * dim;
            for (std::int64_t d = lane; d < dim; d += 32) row[d] = c * g[d];
        }
    }
}

// One warp per position i: the lanes sum strided products gy[b, d] table[ids[i], d] (for
// max only the elements whose arg names i), a fixed shuffle tree adds the lanes, and lane
// 0 adds the result (times s_b for sum / mean) to gw[i]: one writer per element.
template <class T>
__global__ void bag_grad_weights_kernel(const T* __restrict__ table, std::int64_t dim,
                                        const std::int64_t* __restrict__ ids, const std::int64_t* __restrict__ offsets,
                                        std::int64_t batch, std::int64_t nnz, const T* __restrict__ gy, pooling mode,
                                        const std::int32_t* __restrict__ arg, T* __restrict__ gw) {
    const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / 32);
    const std::int64_t lane = threadIdx.x % 32;
    for (std::int64_t i = first_index() / 32; i < nnz; i += warps) {
        const std::int64_t b = bag_of(offsets, batch, i), begin = offsets[b];
        const T* g = gy + b * dim;
        const T* e = table + ids[i] * dim;
        T acc = T(0);
        if (mode == pooling::max) {
            const std::int32_t local = static_cast<std::int32_t>(i - begin);
            const std::int32_t* a = arg + b * dim;
            for (std::int64_t d = lane; d < dim; d += 32)
                if (a[d] == local) acc += g[d] * e[d];
        } else {
            for (std::int64_t d = lane; d < dim; d += 32) acc += g[d] * e[d];
        }
        for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (lane == 0) {
            const T s = mode == pooling::mean ? T(1) / static_cast<T>(offsets[b + 1] - begin) : T(1);
            gw[i] += mode == pooling::max ? acc : s * acc;
        }
    }
}

// Blocks for one warp per item over n items (grid-stride beyond 4096 blocks).
inline unsigned warp_blocks_for(std::int64_t n) {
    constexpr std::int64_t warps_per_block = threads / 32;
    const std::int64_t b = (n + warps_per_block - 1) / warps_per_block;
    return static_cast<unsigned>(b < 4096 ? b : 4096);
}

}  // namespace cuda_detail

/// ops::embedding_bag's forward on the GPU: embedding_bag_fwd over the whole batch (see
/// the cpu overload for the maths; arg may be null). `pool` unused.
template <class T>
void bag_pool_fwd(cuda tag, thread_pool* /*pool*/, const T* table, std::int64_t dim, const std::int64_t* ids,
                  const std::int64_t* offsets, std::int64_t batch, const T* w, pooling mode, T* out,
                  std::int32_t* arg) {
    embedding_bag_fwd<T>(tag, table, dim, ids, offsets, batch, w, mode, out, arg);
}

/// Max pooling's winners (see the cpu overload): slot[i] = 0 on the host for every position
/// that arg names, -1 for the others. A byte per position is marked on the device, copied
/// to the host (this waits for the stream) and widened. Scratch from ctx's arenas.
template <class Ctx>
void bag_max_mark(cuda tag, Ctx& ctx, std::int64_t dim, const std::int64_t* offsets, std::int64_t batch,
                  std::int64_t nnz, const std::int32_t* arg, std::int64_t* slot) {
    if (nnz <= 0) return;
    const cudaStream_t s = device::stream_of(tag);
    std::uint8_t* mark = ctx.template scratch<std::uint8_t>(nnz);
    std::uint8_t* host = ctx.template host_scratch<std::uint8_t>(nnz);
    XREC_CUDA_CHECK(cudaMemsetAsync(mark, 0, static_cast<std::size_t>(nnz), s));
    if (batch > 0 && dim > 0) {
        cuda_detail::bag_max_mark_kernel<<<cuda_detail::blocks_for(batch * dim), cuda_detail::threads, 0, s>>>(
            dim, offsets, batch, arg, mark);
        cuda_detail::check_launch();
    }
    XREC_CUDA_CHECK(cudaMemcpyAsync(host, mark, static_cast<std::size_t>(nnz), cudaMemcpyDeviceToHost, s));
    XREC_CUDA_CHECK(cudaStreamSynchronize(s));
    for (std::int64_t i = 0; i < nnz; ++i) slot[i] = host[i] ? 0 : -1;
}

/// The table's sparse gradient rows of embedding_bag's backward (see the cpu overload):
/// one warp per position; for max, every element of a winner's row is written (the
/// caller's zeroing is not relied on). slot is a device array (max only). `pool` unused.
template <class T>
void bag_grad_rows(cuda tag, thread_pool* /*pool*/, std::int64_t dim, const std::int64_t* offsets, std::int64_t batch,
                   std::int64_t nnz, const T* gy, const T* w, pooling mode, const std::int32_t* arg,
                   const std::int64_t* slot, T* rows) {
    if (nnz <= 0 || batch <= 0 || dim <= 0) return;
    XREC_CHECK(mode != pooling::max || (arg && slot), "kernels::bag_grad_rows(cuda): max pooling needs arg and slot");
    cuda_detail::bag_grad_rows_kernel<T>
        <<<cuda_detail::warp_blocks_for(nnz), cuda_detail::threads, 0, device::stream_of(tag)>>>(
            dim, offsets, batch, nnz, gy, w, mode, arg, slot, rows);
    cuda_detail::check_launch();
}

/// The per-id weights' gradient of embedding_bag's backward (see the cpu overload): one warp
/// per position, lanes reduced by a fixed shuffle tree, one writer per gw[i]. `pool` unused.
template <class T>
void bag_grad_weights(cuda tag, thread_pool* /*pool*/, const T* table, std::int64_t dim, const std::int64_t* ids,
                      const std::int64_t* offsets, std::int64_t batch, std::int64_t nnz, const T* gy, pooling mode,
                      const std::int32_t* arg, T* gw) {
    if (nnz <= 0 || batch <= 0 || dim <= 0) return;
    XREC_CHECK(mode != pooling::max || arg, "kernels::bag_grad_weights(cuda): max pooling needs arg");
    cuda_detail::bag_grad_weights_kernel<T>
        <<<cuda_detail::warp_blocks_for(nnz), cuda_detail::threads, 0, device::stream_of(tag)>>>(
            table, dim, ids, offsets, batch, nnz, gy, mode, arg, gw);
    cuda_detail::check_launch();
}

}  // namespace xrec::kernels

namespace xrec::optim {
// Defined in optim/common.hpp (which needs xsimd); the overload below only names it.
template <class T, class B>
struct coalesce_scratch;
}  // namespace xrec::optim

namespace xrec::kernels {

/// optim::rowwise_adagrad's step on the device: per table, sparse_rows_adagrad over its
/// sparse gradient as the tape left it (merged in emission order while it updates), then the
/// gradient is cleared. Nothing waits for the device. Scratch in scratch.work. `pool` unused.
template <class T>
void rowwise_adagrad_update(cuda tag, param_store<T, cuda>& store, optim::coalesce_scratch<T, cuda>& scratch,
                            thread_pool* /*pool*/, std::vector<buffer<T, cuda>>& sums, T lr, T eps, T l2, T shrink) {
    for (std::int64_t ti = 0; ti < store.table_count(); ++ti) {
        auto& t = store.table(ti);
        const std::int64_t n = t.grad.count();
        if (n > 0) {
            const std::size_t bytes = sparse_rows_adagrad_workspace_bytes<T>(n, t.rows, t.dim);
            const auto need = static_cast<std::int64_t>((bytes + 7) / 8);
            if (scratch.work.size() < need)
                scratch.work = buffer<std::int64_t, cuda>(need + need / 4);  // fresh: nothing to keep
            sparse_rows_adagrad(tag, t.values.data(), sums[static_cast<std::size_t>(ti)].data(), t.rows, t.dim,
                                t.grad.ids.data(), n, t.grad.rows.data(), lr, eps, l2, shrink, scratch.work.data());
        }
        t.grad.clear();
    }
}

}  // namespace xrec::kernels
