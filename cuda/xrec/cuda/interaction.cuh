#pragma once
// Feature-interaction and normalisation kernels of the cuda backend: FM, FwFM,
// bi-interaction, the DCN / DCN-V2 cross kernels, PReLU, Dice, batch-norm columns, and the
// GEMM-with-epilogue entry points the cross layers and static-size linear layers call.
// Overloads on the cuda tag with the signatures of the cpu kernels in the layer headers
// (layers/fm.hpp, fwfm.hpp, bi_interaction.hpp, cross_net.hpp, prelu.hpp, dice.hpp,
// batch_norm.hpp), which this header does not include (they need xsimd).
//
// Determinism: no atomics. Row reductions run in one block (reduce.cuh's fixed tree), sums
// over rows run one thread per column walking the rows in order (the cpu kernels' order).
// Float sums accumulate in double (see reduce.cuh).
#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "xrec/backend/activation.hpp"
#include "xrec/backend/cuda_tag.hpp"
#include "xrec/core/error.hpp"
#include "xrec/cuda/check.cuh"
#include "xrec/cuda/kernels.cuh"
#include "xrec/cuda/reduce.cuh"
#include "xrec/cuda/stream.cuh"

namespace xrec::kernels {

namespace cuda_detail {

__device__ inline float dev_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ inline double dev_fma(double a, double b, double c) { return ::fma(a, b, c); }

// ---- FM ------------------------------------------------------------------------------------

// The lanes of the G-thread group (G a power of two up to 32) the calling thread is in.
template <int G>
__device__ inline unsigned lane_group_mask() {
    return G == 32 ? 0xffffffffu : (((1u << G) - 1u) << ((threadIdx.x % 32) / G * G));
}

// G threads per row (G covers dim up to 32; a block of 256 threads holds 256 / G rows).
// Thread t takes columns d = t, t + G, ... and walks the fields in order (acc += x * s,
// s += x: the cpu kernel's pairwise sum); the group's partial sums meet in a fixed
// butterfly. A block per row left 240 of 256 threads idle at dim 16.
template <class T, int G>
__global__ void __launch_bounds__(256)
    fm_fwd_kernel(std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v, const T* first,
                  std::int64_t first_cols, T* y) {
    using A = acc_t<T>;
    const int t = static_cast<int>(threadIdx.x % G);
    const std::int64_t per_block = 256 / G, groups = static_cast<std::int64_t>(gridDim.x) * per_block;
    const unsigned mask = lane_group_mask<G>();
    for (std::int64_t r = blockIdx.x * per_block + threadIdx.x / G; r < rows; r += groups) {
        const T* vr = v + r * fields * dim;
        A acc = 0;
        for (std::int64_t d = t; d < dim; d += G) {
            A s = 0;
            for (std::int64_t f = 0; f < fields; ++f) {
                const A x = vr[f * dim + d];
                acc += x * s;
                s += x;
            }
        }
#pragma unroll
        for (int o = G / 2; o > 0; o /= 2) acc += __shfl_xor_sync(mask, acc, o, G);
        if (t == 0) {
            T out = static_cast<T>(acc);
            if (first)
                for (std::int64_t c = 0; c < first_cols; ++c)
                    out += first[r * first_cols + c];
            y[r] = out;
        }
    }
}

// One thread per (row, d): the column's total S over the fields, then
// gv[f] += gy (S - v[f]) = gy sum_{g != f} v[g] (one read-modify-write of gv).
template <class T>
__global__ void fm_bwd_v_kernel(std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v, const T* gy,
                                T* gv) {
    for (std::int64_t i = first_index(); i < rows * dim; i += grid_stride()) {
        const std::int64_t r = i / dim, d = i - r * dim;
        using A = acc_t<T>;
        const T g = gy[r];
        const T* vr = v + r * fields * dim;
        T* gvr = gv + r * fields * dim;
        A tot = 0;
        for (std::int64_t f = 0; f < fields; ++f) tot += vr[f * dim + d];
        for (std::int64_t f = 0; f < fields; ++f) gvr[f * dim + d] += g * static_cast<T>(tot - vr[f * dim + d]);
    }
}
template <class T>
__global__ void fm_bwd_first_kernel(std::int64_t rows, std::int64_t first_cols, const T* gy, T* gfirst) {
    for (std::int64_t i = first_index(); i < rows * first_cols; i += grid_stride())
        gfirst[i] += gy[i / first_cols];
}

// ---- FwFM ----------------------------------------------------------------------------------

template <class T>
__global__ void __launch_bounds__(row_threads)
    fwfm_fwd_kernel(std::int64_t rows, std::int64_t F, std::int64_t dim, const T* v, const T* Ru, T* y) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* vr = v + r * F * dim;
        A acc = 0;
        for (std::int64_t d = threadIdx.x; d < dim; d += blockDim.x)
            for (std::int64_t i = 0; i + 1 < F; ++i) {
                A w = 0;
                for (std::int64_t j = i + 1; j < F; ++j)
                    w += static_cast<A>(Ru[i * F + j]) * static_cast<A>(vr[j * dim + d]);
                acc += static_cast<A>(vr[i * dim + d]) * w;
            }
        const A tot = block_sum(acc, sh);
        if (threadIdx.x == 0)
            y[r] = static_cast<T>(tot);
    }
}

// gv[r, i, d] += gy[r] sum_j R[i, j] v[r, j, d]: one thread per (r, i, d).
template <class T>
__global__ void fwfm_bwd_v_kernel(std::int64_t rows, std::int64_t F, std::int64_t dim, const T* v, const T* R,
                                  const T* gy, T* gv) {
    for (std::int64_t e = first_index(); e < rows * F * dim; e += grid_stride()) {
        const std::int64_t r = e / (F * dim), rem = e - r * F * dim, i = rem / dim, d = rem - i * dim;
        const T* vr = v + r * F * dim;
        acc_t<T> w = 0;
        for (std::int64_t j = 0; j < F; ++j)
            w += static_cast<acc_t<T>>(R[i * F + j]) * static_cast<acc_t<T>>(vr[j * dim + d]);
        gv[e] += gy[r] * static_cast<T>(w);
    }
}

// gr[p] += sum_{r, d} gy[r] v[r, i, d] v[r, j, d] for pair p = (i, j): one block per pair.
template <class T>
__global__ void __launch_bounds__(row_threads)
    fwfm_bwd_r_kernel(std::int64_t rows, std::int64_t F, std::int64_t dim, const T* v, const T* gy, T* gr) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    const std::int64_t pairs = F * (F - 1) / 2;
    for (std::int64_t p = blockIdx.x; p < pairs; p += gridDim.x) {
        // Pair p -> (i, j), i < j, in the order (0,1), (0,2), .., (0,F-1), (1,2), ..
        std::int64_t i = 0, q = p;
        while (q >= F - 1 - i) {
            q -= F - 1 - i;
            ++i;
        }
        const std::int64_t j = i + 1 + q;
        A s = 0;
        for (std::int64_t e = threadIdx.x; e < rows * dim; e += blockDim.x) {
            const std::int64_t r = e / dim, d = e - r * dim;
            const T* vr = v + r * F * dim;
            s += static_cast<A>(gy[r]) * static_cast<A>(vr[i * dim + d]) * static_cast<A>(vr[j * dim + d]);
        }
        const A tot = block_sum(s, sh);
        if (threadIdx.x == 0)
            gr[p] += static_cast<T>(tot);
    }
}

template <class T>
__global__ void fwfm_pair_matrix_kernel(std::int64_t F, const T* r, T* R, T* Ru) {
    for (std::int64_t e = first_index(); e < F * F; e += grid_stride()) {
        const std::int64_t i = e / F, j = e - i * F;
        const std::int64_t a = i < j ? i : j, b = i < j ? j : i;
        // index of pair (a, b), a < b: the pairs of rows 0 .. a-1 come first
        const T w = a == b ? T(0) : r[a * F - a * (a + 1) / 2 + (b - a - 1)];
        R[e] = w;
        Ru[e] = j > i ? w : T(0);
    }
}

// ---- bi-interaction --------------------------------------------------------------------------

template <class T>
__global__ void bi_interaction_fwd_kernel(std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v, T* y) {
    for (std::int64_t e = first_index(); e < rows * dim; e += grid_stride()) {
        const std::int64_t r = e / dim, d = e - r * dim;
        const T* vr = v + r * fields * dim;
        acc_t<T> s = 0, acc = 0;
        for (std::int64_t f = 0; f < fields; ++f) {
            const acc_t<T> x = vr[f * dim + d];
            acc += x * s;
            s += x;
        }
        y[e] = static_cast<T>(acc);
    }
}
template <class T>
__global__ void bi_interaction_bwd_kernel(std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v,
                                          const T* gy, T* gv) {
    for (std::int64_t e = first_index(); e < rows * dim; e += grid_stride()) {
        const std::int64_t r = e / dim, d = e - r * dim;
        const T* vr = v + r * fields * dim;
        T* gvr = gv + r * fields * dim;
        const T g = gy[e];
        acc_t<T> pre = 0, suf = 0;
        for (std::int64_t f = 0; f < fields; ++f) {
            gvr[f * dim + d] += g * static_cast<T>(pre);
            pre += vr[f * dim + d];
        }
        for (std::int64_t f = fields - 1; f >= 0; --f) {
            gvr[f * dim + d] += g * static_cast<T>(suf);
            suf += vr[f * dim + d];
        }
    }
}

// ---- cross network ---------------------------------------------------------------------------

// One block per row: s = <xl, w>, y = x0 s + b + xl.
template <class T>
__global__ void __launch_bounds__(row_threads)
    cross_v1_fwd_kernel(std::int64_t rows, std::int64_t d, const T* x0, const T* xl, const T* w, const T* b, T* y,
                        T* s_out) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* a = x0 + r * d;
        const T* l = xl + r * d;
        T* o = y + r * d;
        A acc = 0;
        for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x)
            acc += static_cast<A>(l[i]) * static_cast<A>(w[i]);
        const T s = static_cast<T>(block_sum(acc, sh));
        if (s_out && threadIdx.x == 0)
            s_out[r] = s;
        for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x)
            o[i] = dev_fma(a[i], s, b[i] + l[i]);
    }
}

// One block per row: t = <dy, x0> (kept in t_out for the column sums), then
// gx0 += s dy, gxl += dy + t w. gx0 and gxl may be one buffer: each element is updated by
// one thread, gx0's term first, as on the cpu.
template <class T>
__global__ void __launch_bounds__(row_threads)
    cross_v1_bwd_rows_kernel(std::int64_t rows, std::int64_t d, const T* x0, const T* w, const T* s, const T* gy,
                             T* gx0, T* gxl, bool need_t, T* t_out) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* g = gy + r * d;
        const T* a = x0 + r * d;
        T t = 0;
        if (need_t) {
            A acc = 0;
            for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x)
                acc += static_cast<A>(g[i]) * static_cast<A>(a[i]);
            t = static_cast<T>(block_sum(acc, sh));
            if (t_out && threadIdx.x == 0)
                t_out[r] = t;
        }
        const T sr = s[r];
        for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) {
            if (gx0)
                gx0[r * d + i] = dev_fma(sr, g[i], gx0[r * d + i]);
            if (gxl)
                gxl[r * d + i] = dev_fma(t, w[i], gxl[r * d + i] + g[i]);
        }
    }
}

// gw[i] += sum_r t[r] xl[r, i], gb[i] += sum_r dy[r, i]: one thread per column, rows in order.
template <class T>
__global__ void cross_v1_bwd_cols_kernel(std::int64_t rows, std::int64_t d, const T* xl, const T* t, const T* gy, T* gw,
                                         T* gb) {
    for (std::int64_t i = first_index(); i < d; i += grid_stride()) {
        using A = acc_t<T>;
        A sw = gw ? gw[i] : T(0), sb = gb ? gb[i] : T(0);
        for (std::int64_t r = 0; r < rows; ++r) {
            if (gw)
                sw += static_cast<A>(t[r]) * static_cast<A>(xl[r * d + i]);
            if (gb)
                sb += gy[r * d + i];
        }
        if (gw)
            gw[i] = static_cast<T>(sw);
        if (gb)
            gb[i] = static_cast<T>(sb);
    }
}

template <class T>
__global__ void cross_combine_fwd_kernel(std::int64_t n, const T* x0, const T* z, const T* xl, T* y) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride())
        y[i] = dev_fma(x0[i], z[i], xl[i]);
}
template <class T>
__global__ void cross_bias_combine_fwd_kernel(std::int64_t n, const T* b, const T* x0, T* z, const T* xl, T* y,
                                              bool keep) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
        const T zz = z[i] + b[i];
        if (keep)
            z[i] = zz;
        y[i] = dev_fma(x0[i], zz, xl[i]);
    }
}
template <class T>
__global__ void cross_combine_bwd_elem_kernel(std::int64_t n, const T* x0, const T* z, const T* gy, T* dz, T* gx0) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
        const T g = gy[i];
        dz[i] = g * x0[i];
        if (gx0)
            gx0[i] = dev_fma(g, z[i], gx0[i]);
    }
}
// colsum[i] += sum_r dy[r, i] x0[r, i]: one thread per column, rows in order.
template <class T>
__global__ void cross_combine_colsum_kernel(std::int64_t rows, std::int64_t d, const T* x0, const T* gy, T* colsum) {
    for (std::int64_t i = first_index(); i < d; i += grid_stride()) {
        acc_t<T> s = colsum[i];
        for (std::int64_t r = 0; r < rows; ++r)
            s += gy[r * d + i] * x0[r * d + i];  // the cpu's dz value, summed in double
        colsum[i] = static_cast<T>(s);
    }
}

// One thread per row of K logits (K is the number of experts: small).
template <class T>
__global__ void cross_gate_softmax_kernel(std::int64_t rows, std::int64_t K, T* a) {
    for (std::int64_t r = first_index(); r < rows; r += grid_stride()) {
        T* row = a + r * K;
        T mx = row[0];
        for (std::int64_t k = 1; k < K; ++k)
            mx = row[k] > mx ? row[k] : mx;
        T sum = 0;
        for (std::int64_t k = 0; k < K; ++k)
            sum += (row[k] = dev_exp(row[k] - mx));
        const T inv = T(1) / sum;
        for (std::int64_t k = 0; k < K; ++k)
            row[k] *= inv;
    }
}

// One block per row: dpi_k = <dm, u_k> for each expert (written to da), then thread 0 turns
// them into da_k = pi_k (dpi_k - sum_j pi_j dpi_j).
template <class T>
__global__ void __launch_bounds__(row_threads)
    cross_gate_bwd_kernel(std::int64_t rows, std::int64_t d, std::int64_t K, const T* pi, const T* u, std::int64_t ld_u,
                          const T* dm, T* da) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        T* out = da + r * K;
        const T* g = dm + r * d;
        for (std::int64_t k = 0; k < K; ++k) {
            const T* uk = u + k * ld_u + r * d;
            A acc = 0;
            for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x)
                acc += static_cast<A>(g[i]) * static_cast<A>(uk[i]);
            const A tot = block_sum(acc, sh);
            if (threadIdx.x == 0)
                out[k] = static_cast<T>(tot);
        }
        if (threadIdx.x == 0) {
            const T* p = pi + r * K;
            T mean = 0;
            for (std::int64_t k = 0; k < K; ++k)
                mean += p[k] * out[k];
            for (std::int64_t k = 0; k < K; ++k)
                out[k] = p[k] * (out[k] - mean);
        }
    }
}

template <class T>
__global__ void cross_mix_rows_kernel(std::int64_t rows, std::int64_t d, std::int64_t K, std::int64_t k, const T* pi,
                                      const T* x, T* out, bool accumulate) {
    for (std::int64_t e = first_index(); e < rows * d; e += grid_stride()) {
        const T p = pi[(e / d) * K + k];
        out[e] = accumulate ? dev_fma(p, x[e], out[e]) : p * x[e];
    }
}

// ---- PReLU -----------------------------------------------------------------------------------

template <class T>
__global__ void prelu_fwd_kernel(std::int64_t rows, std::int64_t n, const T* x, const T* a, bool per_channel, T* y) {
    for (std::int64_t e = first_index(); e < rows * n; e += grid_stride()) {
        const T s = per_channel ? a[e % n] : a[0];
        y[e] = x[e] > T(0) ? x[e] : s * x[e];
    }
}
template <class T>
__global__ void prelu_bwd_dx_kernel(std::int64_t rows, std::int64_t n, const T* x, const T* a, bool per_channel,
                                    const T* dy, T* dx) {
    for (std::int64_t e = first_index(); e < rows * n; e += grid_stride()) {
        const T s = per_channel ? a[e % n] : a[0];
        dx[e] += x[e] > T(0) ? dy[e] : s * dy[e];
    }
}
// Per-channel slope gradient: one thread per column, rows in order.
template <class T>
__global__ void prelu_bwd_da_cols_kernel(std::int64_t rows, std::int64_t n, const T* x, const T* dy, T* da) {
    for (std::int64_t c = first_index(); c < n; c += grid_stride()) {
        acc_t<T> s = da[c];
        for (std::int64_t r = 0; r < rows; ++r) {
            const T v = x[r * n + c];
            if (!(v > T(0)))
                s += static_cast<acc_t<T>>(dy[r * n + c]) * static_cast<acc_t<T>>(v);
        }
        da[c] = static_cast<T>(s);
    }
}
// Shared slope gradient: one block sums all elements.
template <class T>
__global__ void __launch_bounds__(row_threads)
    prelu_bwd_da_all_kernel(std::int64_t total, const T* x, const T* dy, T* da) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    A s = 0;
    for (std::int64_t e = threadIdx.x; e < total; e += blockDim.x)
        if (!(x[e] > T(0)))
            s += static_cast<A>(dy[e]) * static_cast<A>(x[e]);
    const A tot = block_sum(s, sh);
    if (threadIdx.x == 0)
        da[0] += static_cast<T>(tot);
}

// ---- Dice and batch-norm columns ---------------------------------------------------------------

template <class T>
__global__ void dice_fwd_kernel(std::int64_t rows, std::int64_t n, const T* x, const T* m, const T* rstd,
                                const T* alpha, T* y, T* p_out) {
    for (std::int64_t e = first_index(); e < rows * n; e += grid_stride()) {
        const std::int64_t c = e % n;
        const T z = (x[e] - m[c]) * rstd[c];
        const T p = T(1) / (T(1) + dev_exp(-z));
        y[e] = x[e] * (alpha[c] + (T(1) - alpha[c]) * p);
        if (p_out)
            p_out[e] = p;
    }
}
template <class T>
__global__ void dice_bwd_elem_kernel(std::int64_t rows, std::int64_t n, const T* x, const T* p, const T* alpha,
                                     const T* dy, T* dx, T* dxhat) {
    for (std::int64_t e = first_index(); e < rows * n; e += grid_stride()) {
        const std::int64_t c = e % n;
        const T pv = p[e], a = alpha[c], g = dy[e];
        if (dx)
            dx[e] += g * (a + (T(1) - a) * pv);
        dxhat[e] = g * x[e] * (T(1) - a) * pv * (T(1) - pv);
    }
}
template <class T>
__global__ void dice_col_alpha_sums_kernel(std::int64_t rows, std::int64_t n, std::int64_t ld, const T* x, const T* p,
                                           const T* dy, T* sa) {
    for (std::int64_t c = first_index(); c < n; c += grid_stride()) {
        acc_t<T> s = sa[c];
        for (std::int64_t r = 0; r < rows; ++r) {
            const std::int64_t o = r * ld + c;
            s += static_cast<acc_t<T>>(dy[o]) * static_cast<acc_t<T>>(x[o]) * static_cast<acc_t<T>>(T(1) - p[o]);
        }
        sa[c] = static_cast<T>(s);
    }
}

template <class T>
__global__ void bn_col_moments_kernel(std::int64_t rows, std::int64_t n, std::int64_t ld, const T* x, T* mean, T* var) {
    using A = acc_t<T>;
    for (std::int64_t c = first_index(); c < n; c += grid_stride()) {
        A s = 0;
        for (std::int64_t r = 0; r < rows; ++r)
            s += x[r * ld + c];
        const T mu = static_cast<T>(s / static_cast<A>(rows));
        A v = 0;
        for (std::int64_t r = 0; r < rows; ++r) {
            const A d = static_cast<A>(x[r * ld + c]) - static_cast<A>(mu);
            v += d * d;
        }
        mean[c] = mu;
        var[c] = static_cast<T>(v / static_cast<A>(rows));
    }
}
template <class T>
__global__ void bn_col_apply_kernel(std::int64_t rows, std::int64_t n, const T* x, const T* m, const T* a, const T* b,
                                    T* y) {
    for (std::int64_t e = first_index(); e < rows * n; e += grid_stride()) {
        const std::int64_t c = e % n;
        T v = (x[e] - m[c]) * a[c];
        if (b)
            v += b[c];
        y[e] = v;
    }
}
template <class T>
__global__ void bn_col_grad_sums_kernel(std::int64_t rows, std::int64_t n, std::int64_t ld, const T* x, const T* m,
                                        const T* rstd, const T* g, T* s1, T* s2) {
    for (std::int64_t c = first_index(); c < n; c += grid_stride()) {
        acc_t<T> a1 = s1[c], a2 = s2[c];
        for (std::int64_t r = 0; r < rows; ++r) {
            const std::int64_t o = r * ld + c;
            const T xh = (x[o] - m[c]) * rstd[c];
            a1 += g[o];
            a2 += static_cast<acc_t<T>>(g[o]) * static_cast<acc_t<T>>(xh);
        }
        s1[c] = static_cast<T>(a1);
        s2[c] = static_cast<T>(a2);
    }
}
template <class T>
__global__ void bn_col_grad_apply_kernel(std::int64_t rows, std::int64_t n, const T* x, const T* m, const T* rstd,
                                         const T* g, const T* k, const T* u1, const T* u2, T* dx) {
    for (std::int64_t e = first_index(); e < rows * n; e += grid_stride()) {
        const std::int64_t c = e % n;
        const T xh = (x[e] - m[c]) * rstd[c];
        dx[e] += k[c] * (g[e] - u1[c] - xh * u2[c]);
    }
}
template <class T>
__global__ void bn_stats_from_batch_kernel(std::int64_t n, T mom, T unbias, T eps, const T* mean, T* var_rstd,
                                           T* running_mean, T* running_var) {
    for (std::int64_t c = first_index(); c < n; c += grid_stride()) {
        if (running_mean)
            running_mean[c] = (T(1) - mom) * running_mean[c] + mom * mean[c];
        if (running_var)
            running_var[c] = (T(1) - mom) * running_var[c] + mom * var_rstd[c] * unbias;
        var_rstd[c] = T(1) / dev_sqrt(var_rstd[c] + eps);
    }
}
template <class T>
__global__ void bn_stats_from_running_kernel(std::int64_t n, T eps, const T* running_mean, const T* running_var, T* mean,
                                             T* rstd) {
    for (std::int64_t c = first_index(); c < n; c += grid_stride()) {
        mean[c] = running_mean[c];
        rstd[c] = T(1) / dev_sqrt(running_var[c] + eps);
    }
}
template <class T>
__global__ void bn_scale_rstd_kernel(std::int64_t n, const T* gamma, const T* rstd, T* out) {
    for (std::int64_t c = first_index(); c < n; c += grid_stride())
        out[c] = (gamma ? gamma[c] : T(1)) * rstd[c];
}

}  // namespace cuda_detail

// ---- FM ----------------------------------------------------------------------------------------

/// y[r] = sum_c first[r, c] + sum_f <v_f, sum_{g<f} v_g> per row (see the cpu fm_fwd).
template <class T>
void fm_fwd(cuda tag, std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v, const T* first,
            std::int64_t first_cols, T* y) {
    if (rows <= 0)
        return;
    const cudaStream_t s = device::stream_of(tag);
    const auto launch = [&](auto g) {
        constexpr int G = decltype(g)::value;
        const std::int64_t blocks = (rows + 256 / G - 1) / (256 / G);
        cuda_detail::fm_fwd_kernel<T, G><<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), 256, 0, s>>>(
            rows, fields, dim, v, first, first_cols, y);
    };
    if (dim <= 4)
        launch(std::integral_constant<int, 4>{});
    else if (dim <= 8)
        launch(std::integral_constant<int, 8>{});
    else if (dim <= 16)
        launch(std::integral_constant<int, 16>{});
    else
        launch(std::integral_constant<int, 32>{});
    cuda_detail::check_launch();
}
/// gv[r, f, :] += gy[r] sum_{g != f} v[r, g, :] (gv not null); gfirst[r, c] += gy[r].
template <class T>
void fm_bwd(cuda tag, std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v, const T* gy, T* gv, T* gfirst,
            std::int64_t first_cols) {
    if (rows <= 0)
        return;
    if (gfirst && first_cols > 0) {
        cuda_detail::fm_bwd_first_kernel<T><<<cuda_detail::blocks_for(rows * first_cols), cuda_detail::threads, 0,
                                              device::stream_of(tag)>>>(rows, first_cols, gy, gfirst);
        cuda_detail::check_launch();
    }
    if (gv && dim > 0) {
        cuda_detail::fm_bwd_v_kernel<T><<<cuda_detail::blocks_for(rows * dim), cuda_detail::threads, 0,
                                          device::stream_of(tag)>>>(rows, fields, dim, v, gy, gv);
        cuda_detail::check_launch();
    }
}

// ---- FwFM --------------------------------------------------------------------------------------

/// y[r] = sum_{i<j} Ru[i, j] <v_i, v_j> per row (Ru [F, F] strictly upper triangular).
template <class T>
void fwfm_fwd(cuda tag, std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v, const T* Ru, T* y) {
    if (rows <= 0)
        return;
    cuda_detail::fwfm_fwd_kernel<T><<<cuda_detail::row_blocks(rows), cuda_detail::row_threads, 0,
                                      device::stream_of(tag)>>>(rows, fields, dim, v, Ru, y);
    cuda_detail::check_launch();
}
/// Backward of fwfm_fwd (see the cpu kernel): gv += gy R v, gr[p(i, j)] += sum_r gy <v_i, v_j>.
/// `work` is not needed here (each pair is one block's fixed-order sum).
template <class T>
void fwfm_bwd(cuda tag, std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v, const T* R, const T* gy,
              T* gv, T* gr, T* /*work*/) {
    if (rows <= 0)
        return;
    if (gv && fields > 0 && dim > 0) {
        cuda_detail::fwfm_bwd_v_kernel<T><<<cuda_detail::blocks_for(rows * fields * dim), cuda_detail::threads, 0,
                                            device::stream_of(tag)>>>(rows, fields, dim, v, R, gy, gv);
        cuda_detail::check_launch();
    }
    const std::int64_t pairs = fields * (fields - 1) / 2;
    if (gr && pairs > 0) {
        cuda_detail::fwfm_bwd_r_kernel<T><<<cuda_detail::row_blocks(pairs), cuda_detail::row_threads, 0,
                                            device::stream_of(tag)>>>(rows, fields, dim, v, gy, gr);
        cuda_detail::check_launch();
    }
}
/// R [F, F] symmetric with zero diagonal and Ru its strict upper triangle, from the pair
/// weights r (see the cpu kernel in layers/fwfm.hpp).
template <class T>
void fwfm_pair_matrix(cuda tag, std::int64_t fields, const T* r, T* R, T* Ru) {
    if (fields <= 0)
        return;
    cuda_detail::fwfm_pair_matrix_kernel<T><<<cuda_detail::blocks_for(fields * fields), cuda_detail::threads, 0,
                                              device::stream_of(tag)>>>(fields, r, R, Ru);
    cuda_detail::check_launch();
}

// ---- bi-interaction ----------------------------------------------------------------------------

/// y[r, :] = sum_f v_f * (sum_{g<f} v_g) per row, y [rows, D].
template <class T>
void bi_interaction_fwd(cuda tag, std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v, T* y) {
    if (rows <= 0 || dim <= 0)
        return;
    cuda_detail::bi_interaction_fwd_kernel<T><<<cuda_detail::blocks_for(rows * dim), cuda_detail::threads, 0,
                                                device::stream_of(tag)>>>(rows, fields, dim, v, y);
    cuda_detail::check_launch();
}
/// gv[r, f, :] += gy[r, :] * sum_{g != f} v[r, g, :].
template <class T>
void bi_interaction_bwd(cuda tag, std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v, const T* gy,
                        T* gv) {
    if (rows <= 0 || dim <= 0)
        return;
    cuda_detail::bi_interaction_bwd_kernel<T><<<cuda_detail::blocks_for(rows * dim), cuda_detail::threads, 0,
                                                device::stream_of(tag)>>>(rows, fields, dim, v, gy, gv);
    cuda_detail::check_launch();
}

// ---- cross network -------------------------------------------------------------------------------

/// DCN cross layer: s[r] = <xl[r], w>, y[r] = x0[r] s[r] + b + xl[r]; s to s_out if not null.
template <class T>
void cross_v1_fwd(cuda tag, std::int64_t rows, std::int64_t d, const T* x0, const T* xl, const T* w, const T* b, T* y,
                  T* s_out) {
    if (rows <= 0)
        return;
    cuda_detail::cross_v1_fwd_kernel<T><<<cuda_detail::row_blocks(rows), cuda_detail::row_threads, 0,
                                          device::stream_of(tag)>>>(rows, d, x0, xl, w, b, y, s_out);
    cuda_detail::check_launch();
}
/// Backward of cross_v1_fwd (see the cpu kernel): t = <dy, x0> per row, gx0 += s dy,
/// gxl += dy + t w, gw += sum_r t xl, gb += sum_r dy (each skipped when null; gx0 and gxl
/// may be one buffer).
template <class T>
void cross_v1_bwd(cuda tag, std::int64_t rows, std::int64_t d, const T* x0, const T* xl, const T* w, const T* s,
                  const T* gy, T* gx0, T* gxl, T* gw, T* gb) {
    if (rows <= 0 || d <= 0)
        return;
    const cudaStream_t st = device::stream_of(tag);
    const bool need_t = gxl || gw;
    cuda_detail::stream_scratch<T> t(gw ? rows : 1, st);
    cuda_detail::cross_v1_bwd_rows_kernel<T><<<cuda_detail::row_blocks(rows), cuda_detail::row_threads, 0, st>>>(
        rows, d, x0, w, s, gy, gx0, gxl, need_t, gw ? t.get() : nullptr);
    cuda_detail::check_launch();
    if (gw || gb) {
        cuda_detail::cross_v1_bwd_cols_kernel<T>
            <<<cuda_detail::blocks_for(d), cuda_detail::threads, 0, st>>>(rows, d, xl, t.get(), gy, gw, gb);
        cuda_detail::check_launch();
    }
}
/// y = x0 * z + xl elementwise over n values (y may alias z).
template <class T>
void cross_combine_fwd(cuda tag, std::int64_t n, const T* x0, const T* z, const T* xl, T* y) {
    if (n <= 0)
        return;
    cuda_detail::cross_combine_fwd_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(n, x0, z, xl, y);
    cuda_detail::check_launch();
}
/// z += b; y = x0 * z + xl over n values (y may alias z; then z is not kept).
template <class T>
void cross_bias_combine_fwd(cuda tag, std::int64_t n, const T* b, const T* x0, T* z, const T* xl, T* y) {
    if (n <= 0)
        return;
    cuda_detail::cross_bias_combine_fwd_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(n, b, x0, z, xl, y, z != y);
    cuda_detail::check_launch();
}
/// dz = dy * x0 (overwritten), gx0 += dy * z (gx0 not null), colsum += column sums of dz
/// (colsum not null), on `rows` rows of width d.
template <class T>
void cross_combine_bwd_rows(cuda tag, std::int64_t rows, std::int64_t d, const T* x0, const T* z, const T* gy, T* dz,
                            T* gx0, T* colsum) {
    if (rows <= 0 || d <= 0)
        return;
    const cudaStream_t st = device::stream_of(tag);
    cuda_detail::cross_combine_bwd_elem_kernel<T>
        <<<cuda_detail::blocks_for(rows * d), cuda_detail::threads, 0, st>>>(rows * d, x0, z, gy, dz, gx0);
    cuda_detail::check_launch();
    if (colsum) {
        cuda_detail::cross_combine_colsum_kernel<T>
            <<<cuda_detail::blocks_for(d), cuda_detail::threads, 0, st>>>(rows, d, x0, gy, colsum);
        cuda_detail::check_launch();
    }
}
/// dz = dy * x0 and, when gx0 is not null, gx0 += dy * z, over n values.
template <class T>
void cross_combine_bwd(cuda tag, std::int64_t n, const T* x0, const T* z, const T* gy, T* dz, T* gx0) {
    if (n <= 0)
        return;
    cuda_detail::cross_combine_bwd_elem_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(n, x0, z, gy, dz, gx0);
    cuda_detail::check_launch();
}
/// In-place softmax of each of `rows` rows of K gate logits.
template <class T>
void cross_gate_softmax(cuda tag, std::int64_t rows, std::int64_t K, T* a) {
    if (rows <= 0 || K <= 0)
        return;
    cuda_detail::cross_gate_softmax_kernel<T>
        <<<cuda_detail::blocks_for(rows), cuda_detail::threads, 0, device::stream_of(tag)>>>(rows, K, a);
    cuda_detail::check_launch();
}
/// da_k = pi_k (<dm, u_k> - sum_j pi_j <dm, u_j>) per row (see the cpu kernel).
template <class T>
void cross_gate_bwd(cuda tag, std::int64_t rows, std::int64_t d, std::int64_t K, const T* pi, const T* u, std::int64_t ld_u,
                    const T* dm, T* da) {
    if (rows <= 0 || K <= 0)
        return;
    cuda_detail::cross_gate_bwd_kernel<T><<<cuda_detail::row_blocks(rows), cuda_detail::row_threads, 0,
                                            device::stream_of(tag)>>>(rows, d, K, pi, u, ld_u, dm, da);
    cuda_detail::check_launch();
}
/// out[r] (+)= pi[r, k] * x[r] for `rows` rows of width d.
template <class T>
void cross_mix_rows(cuda tag, std::int64_t rows, std::int64_t d, std::int64_t K, std::int64_t k, const T* pi, const T* x,
                    T* out, bool accumulate) {
    if (rows <= 0 || d <= 0)
        return;
    cuda_detail::cross_mix_rows_kernel<T><<<cuda_detail::blocks_for(rows * d), cuda_detail::threads, 0,
                                            device::stream_of(tag)>>>(rows, d, K, k, pi, x, out, accumulate);
    cuda_detail::check_launch();
}

// ---- GEMM with epilogues ---------------------------------------------------------------------------

/// kernels::gemm, then `epi(0, 0, m, n)` once on the whole of C (the cpu kernel calls it per
/// cache block; the contract, every element of C covered once after it is final, is kept).
/// The epilogue is host code that queues kernels on C.
template <class T, class Epi>
void gemm_then(cuda tag, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
               std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc, const Epi& epi) {
    if (m == 0 || n == 0)
        return;
    gemm(tag, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    epi(std::int64_t{0}, std::int64_t{0}, m, n);
}
/// kernels::gemm_then with A produced by `prod(0, 0, m, k, true)` in one call (device
/// memory, leading dimension lda), then the GEMM, then `epi(0, 0, m, n)`.
template <class T, class Prod, class Epi>
void gemm_produce_then(cuda tag, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const Prod& prod,
                       std::int64_t lda, bool trans_b, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc,
                       const Epi& epi) {
    if (m == 0 || n == 0)
        return;
    const T* a = nullptr;
    if (k > 0)
        a = prod(std::int64_t{0}, std::int64_t{0}, m, k, true);
    gemm(tag, false, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    epi(std::int64_t{0}, std::int64_t{0}, m, n);
}
/// y[r, :] = W x[r, :] + b with W [Out, In] (b may be null): cuBLAS, then the bias.
template <std::int64_t In, std::int64_t Out, class T>
void linear_fixed(cuda tag, std::int64_t rows, const T* x, const T* w, const T* b, T* y) {
    static_assert(In > 0 && Out > 0, "linear_fixed needs positive compile-time sizes");
    if (rows <= 0)
        return;
    gemm(tag, false, true, rows, Out, In, T(1), x, In, w, In, T(0), y, Out);
    if (b)
        add_row_bias(tag, rows, Out, b, y);
}

// ---- PReLU ---------------------------------------------------------------------------------------

/// y = x where x > 0, a x elsewhere (a[c] per column when per_channel, else a[0]).
template <class T>
void prelu_fwd(cuda tag, std::int64_t rows, std::int64_t n, const T* x, const T* a, bool per_channel, T* y) {
    if (rows <= 0 || n <= 0)
        return;
    cuda_detail::prelu_fwd_kernel<T><<<cuda_detail::blocks_for(rows * n), cuda_detail::threads, 0,
                                       device::stream_of(tag)>>>(rows, n, x, a, per_channel, y);
    cuda_detail::check_launch();
}
/// dx += dy where x > 0, a dy elsewhere (dx not null); da[c] (or da[0]) += sum of dy x over
/// x <= 0 (da not null).
template <class T>
void prelu_bwd(cuda tag, std::int64_t rows, std::int64_t n, const T* x, const T* a, bool per_channel, const T* dy, T* dx,
               T* da) {
    if (rows <= 0 || n <= 0)
        return;
    const cudaStream_t st = device::stream_of(tag);
    if (dx) {
        cuda_detail::prelu_bwd_dx_kernel<T>
            <<<cuda_detail::blocks_for(rows * n), cuda_detail::threads, 0, st>>>(rows, n, x, a, per_channel, dy, dx);
        cuda_detail::check_launch();
    }
    if (da) {
        if (per_channel)
            cuda_detail::prelu_bwd_da_cols_kernel<T>
                <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, st>>>(rows, n, x, dy, da);
        else
            cuda_detail::prelu_bwd_da_all_kernel<T><<<1, cuda_detail::row_threads, 0, st>>>(rows * n, x, dy, da);
        cuda_detail::check_launch();
    }
}

// ---- Dice ------------------------------------------------------------------------------------------

/// p = sigmoid((x - m) rstd), y = x (alpha + (1 - alpha) p) per column; p to p_out if not null.
template <class T>
void dice_fwd(cuda tag, std::int64_t rows, std::int64_t n, const T* x, const T* m, const T* rstd, const T* alpha, T* y,
              T* p_out) {
    if (rows <= 0 || n <= 0)
        return;
    cuda_detail::dice_fwd_kernel<T><<<cuda_detail::blocks_for(rows * n), cuda_detail::threads, 0,
                                      device::stream_of(tag)>>>(rows, n, x, m, rstd, alpha, y, p_out);
    cuda_detail::check_launch();
}
/// dx += dy (alpha + (1 - alpha) p) (dx not null); dxhat = dy x (1 - alpha) p (1 - p).
template <class T>
void dice_bwd_elem(cuda tag, std::int64_t rows, std::int64_t n, const T* x, const T* p, const T* alpha, const T* dy, T* dx,
                   T* dxhat) {
    if (rows <= 0 || n <= 0)
        return;
    cuda_detail::dice_bwd_elem_kernel<T><<<cuda_detail::blocks_for(rows * n), cuda_detail::threads, 0,
                                           device::stream_of(tag)>>>(rows, n, x, p, alpha, dy, dx, dxhat);
    cuda_detail::check_launch();
}
/// sa[c] += sum_r dy[r, c] x[r, c] (1 - p[r, c]) for columns [0, n), leading dimension ld.
template <class T>
void dice_col_alpha_sums(cuda tag, std::int64_t rows, std::int64_t n, std::int64_t ld, const T* x, const T* p, const T* dy,
                         T* sa) {
    if (n <= 0)
        return;
    cuda_detail::dice_col_alpha_sums_kernel<T><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0,
                                                 device::stream_of(tag)>>>(rows, n, ld, x, p, dy, sa);
    cuda_detail::check_launch();
}

// ---- batch-norm columns ------------------------------------------------------------------------------

/// Column mean and biased variance over `rows` rows (rows >= 1), columns [0, n), leading
/// dimension ld: one thread per column, rows in order (the cpu kernel's order).
template <class T>
void bn_col_moments(cuda tag, std::int64_t rows, std::int64_t n, std::int64_t ld, const T* x, T* mean, T* var) {
    if (n <= 0)
        return;
    XREC_CHECK(rows >= 1, "kernels::bn_col_moments(cuda): needs rows >= 1, got ", rows);
    cuda_detail::bn_col_moments_kernel<T><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0,
                                            device::stream_of(tag)>>>(rows, n, ld, x, mean, var);
    cuda_detail::check_launch();
}
/// y[r, c] = (x[r, c] - m[c]) a[c] + b[c] (b null means 0).
template <class T>
void bn_col_apply(cuda tag, std::int64_t rows, std::int64_t n, const T* x, const T* m, const T* a, const T* b, T* y) {
    if (rows <= 0 || n <= 0)
        return;
    cuda_detail::bn_col_apply_kernel<T><<<cuda_detail::blocks_for(rows * n), cuda_detail::threads, 0,
                                          device::stream_of(tag)>>>(rows, n, x, m, a, b, y);
    cuda_detail::check_launch();
}
/// s1[c] += sum_r g[r, c], s2[c] += sum_r g[r, c] xhat[r, c].
template <class T>
void bn_col_grad_sums(cuda tag, std::int64_t rows, std::int64_t n, std::int64_t ld, const T* x, const T* m, const T* rstd,
                      const T* g, T* s1, T* s2) {
    if (n <= 0)
        return;
    cuda_detail::bn_col_grad_sums_kernel<T><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0,
                                              device::stream_of(tag)>>>(rows, n, ld, x, m, rstd, g, s1, s2);
    cuda_detail::check_launch();
}
/// dx[r, c] += k[c] (g[r, c] - u1[c] - xhat[r, c] u2[c]).
template <class T>
void bn_col_grad_apply(cuda tag, std::int64_t rows, std::int64_t n, const T* x, const T* m, const T* rstd, const T* g,
                       const T* k, const T* u1, const T* u2, T* dx) {
    if (rows <= 0 || n <= 0)
        return;
    cuda_detail::bn_col_grad_apply_kernel<T><<<cuda_detail::blocks_for(rows * n), cuda_detail::threads, 0,
                                               device::stream_of(tag)>>>(rows, n, x, m, rstd, g, k, u1, u2, dx);
    cuda_detail::check_launch();
}
/// Running-average update and rstd from batch statistics (see the cpu kernel).
template <class T>
void bn_stats_from_batch(cuda tag, std::int64_t n, T mom, T unbias, T eps, const T* mean, T* var_rstd, T* running_mean,
                         T* running_var) {
    if (n <= 0)
        return;
    cuda_detail::bn_stats_from_batch_kernel<T><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0,
                                                 device::stream_of(tag)>>>(n, mom, unbias, eps, mean, var_rstd,
                                                                           running_mean, running_var);
    cuda_detail::check_launch();
}
/// mean = running_mean, rstd = 1 / sqrt(running_var + eps).
template <class T>
void bn_stats_from_running(cuda tag, std::int64_t n, T eps, const T* running_mean, const T* running_var, T* mean, T* rstd) {
    if (n <= 0)
        return;
    cuda_detail::bn_stats_from_running_kernel<T><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0,
                                                   device::stream_of(tag)>>>(n, eps, running_mean, running_var, mean,
                                                                             rstd);
    cuda_detail::check_launch();
}
/// out[c] = gamma[c] rstd[c] (gamma null means 1).
template <class T>
void bn_scale_rstd(cuda tag, std::int64_t n, const T* gamma, const T* rstd, T* out) {
    if (n <= 0)
        return;
    cuda_detail::bn_scale_rstd_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(n, gamma, rstd, out);
    cuda_detail::check_launch();
}

}  // namespace xrec::kernels
