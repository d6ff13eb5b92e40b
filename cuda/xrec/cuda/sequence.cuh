#pragma once
// Sequence kernels of the cuda backend: the fused GRU cell (forward and backward, the gate
// maths of layers/gru.hpp) and the weighted sums over jagged segments of the attention ops
// (ops/attention.hpp). Overloads on the cuda tag with the signatures of the cpu kernels.
// Deterministic: every output element is written by one thread; dot products are one
// block's fixed-order sum (reduce.cuh).
#include <cstdint>

#include <cuda_runtime.h>

#include "xrec/backend/cuda_tag.hpp"
#include "xrec/cuda/check.cuh"
#include "xrec/cuda/kernels.cuh"
#include "xrec/cuda/reduce.cuh"
#include "xrec/cuda/stream.cuh"

namespace xrec::kernels {

namespace cuda_detail {

// One thread per (row, j) of the hidden width; gates in PyTorch's order r | z | n.
template <class T>
__global__ void gru_cell_fwd_kernel(std::int64_t rows, std::int64_t H, const T* gi, const T* gh, const T* b_ih,
                                    const T* b_hh, const T* h, T* h_out, T* save) {
    for (std::int64_t e = first_index(); e < rows * H; e += grid_stride()) {
        const std::int64_t row = e / H, j = e - row * H;
        const T* ig = gi + row * 3 * H;
        const T* hg = gh + row * 3 * H;
        const T ar = (ig[j] + b_ih[j]) + (hg[j] + b_hh[j]);
        const T az = (ig[H + j] + b_ih[H + j]) + (hg[H + j] + b_hh[H + j]);
        const T r = T(1) / (T(1) + dev_exp(-ar));
        const T z = T(1) / (T(1) + dev_exp(-az));
        const T a = hg[2 * H + j] + b_hh[2 * H + j];
        const T n = dev_tanh((ig[2 * H + j] + b_ih[2 * H + j]) + r * a);
        h_out[e] = z * (h[e] - n) + n;
        if (save) {
            T* sv = save + row * 4 * H;
            sv[j] = r;
            sv[H + j] = z;
            sv[2 * H + j] = n;
            sv[3 * H + j] = a;
        }
    }
}

template <class T>
__global__ void gru_cell_bwd_kernel(std::int64_t rows, std::int64_t H, const T* gout, T* carry, const T* h,
                                    const T* save, T* dgi, T* dgh) {
    for (std::int64_t e = first_index(); e < rows * H; e += grid_stride()) {
        const std::int64_t row = e / H, j = e - row * H;
        T g = carry[e];
        if (gout)
            g += gout[e];
        const T* sv = save + row * 4 * H;
        const T r = sv[j], z = sv[H + j], n = sv[2 * H + j], a = sv[3 * H + j];
        const T dz = g * (h[e] - n);
        const T dan = g * (T(1) - z) * (T(1) - n * n);
        const T dar = dan * a * r * (T(1) - r);
        const T daz = dz * z * (T(1) - z);
        T* di = dgi + row * 3 * H;
        T* dh = dgh + row * 3 * H;
        di[j] = dar;
        di[H + j] = daz;
        di[2 * H + j] = dan;
        dh[j] = dar;
        dh[H + j] = daz;
        dh[2 * H + j] = dan * r;
        carry[e] = g * z;
    }
}

// out[d] = sum_j w[j] x[j, d]: one thread per column, rows added in order.
template <class T>
__global__ void segment_weighted_sum_kernel(std::int64_t len, std::int64_t D, const T* w, const T* x, T* out) {
    for (std::int64_t d = first_index(); d < D; d += grid_stride()) {
        acc_t<T> s = 0;
        for (std::int64_t j = 0; j < len; ++j)
            s += static_cast<acc_t<T>>(w[j]) * static_cast<acc_t<T>>(x[j * D + d]);
        out[d] = static_cast<T>(s);
    }
}
template <class T>
__global__ void segment_weighted_sum_bwd_x_kernel(std::int64_t len, std::int64_t D, const T* w, const T* g, T* gx) {
    for (std::int64_t e = first_index(); e < len * D; e += grid_stride())
        gx[e] += w[e / D] * g[e % D];
}
// gw[j] += <g, x[j]>: one block per row j.
template <class T>
__global__ void __launch_bounds__(row_threads)
    segment_weighted_sum_bwd_w_kernel(std::int64_t len, std::int64_t D, const T* x, const T* g, T* gw) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    for (std::int64_t j = blockIdx.x; j < len; j += gridDim.x) {
        A s = 0;
        for (std::int64_t d = threadIdx.x; d < D; d += blockDim.x)
            s += static_cast<A>(g[d]) * static_cast<A>(x[j * D + d]);
        const A tot = block_sum(s, sh);
        if (threadIdx.x == 0)
            gw[j] += static_cast<T>(tot);
    }
}

}  // namespace cuda_detail

/// One GRU step's gate maths for `rows` rows of hidden width H (see the cpu gru_cell_fwd in
/// layers/gru.hpp): h_out = n + z (h - n), and [r | z | n | a] to save when not null.
template <class T>
void gru_cell_fwd(cuda tag, std::int64_t rows, std::int64_t H, const T* gi, const T* gh, const T* b_ih, const T* b_hh,
                  const T* h, T* h_out, T* save) {
    if (rows <= 0 || H <= 0)
        return;
    cuda_detail::gru_cell_fwd_kernel<T><<<cuda_detail::blocks_for(rows * H), cuda_detail::threads, 0,
                                          device::stream_of(tag)>>>(rows, H, gi, gh, b_ih, b_hh, h, h_out, save);
    cuda_detail::check_launch();
}
/// Backward of gru_cell_fwd (see the cpu kernel): dgi, dgh [rows, 3H] overwritten, carry
/// replaced by g z with g = carry + gout (gout may be null).
template <class T>
void gru_cell_bwd(cuda tag, std::int64_t rows, std::int64_t H, const T* gout, T* carry, const T* h, const T* save, T* dgi,
                  T* dgh) {
    if (rows <= 0 || H <= 0)
        return;
    cuda_detail::gru_cell_bwd_kernel<T><<<cuda_detail::blocks_for(rows * H), cuda_detail::threads, 0,
                                          device::stream_of(tag)>>>(rows, H, gout, carry, h, save, dgi, dgh);
    cuda_detail::check_launch();
}

/// out = sum_j w[j] x[j, :] over one segment of len rows (zeros when len == 0).
template <class T>
void segment_weighted_sum(cuda tag, std::int64_t len, std::int64_t D, const T* w, const T* x, T* out) {
    if (D <= 0)
        return;
    cuda_detail::segment_weighted_sum_kernel<T>
        <<<cuda_detail::blocks_for(D), cuda_detail::threads, 0, device::stream_of(tag)>>>(len, D, w, x, out);
    cuda_detail::check_launch();
}
/// gx[j, :] += w[j] g (gx not null), gw[j] += <g, x[j, :]> (gw not null).
template <class T>
void segment_weighted_sum_bwd(cuda tag, std::int64_t len, std::int64_t D, const T* w, const T* x, const T* g, T* gx,
                              T* gw) {
    if (len <= 0 || D <= 0)
        return;
    const cudaStream_t st = device::stream_of(tag);
    if (gx) {
        cuda_detail::segment_weighted_sum_bwd_x_kernel<T>
            <<<cuda_detail::blocks_for(len * D), cuda_detail::threads, 0, st>>>(len, D, w, g, gx);
        cuda_detail::check_launch();
    }
    if (gw) {
        cuda_detail::segment_weighted_sum_bwd_w_kernel<T>
            <<<cuda_detail::row_blocks(len), cuda_detail::row_threads, 0, st>>>(len, D, x, g, gw);
        cuda_detail::check_launch();
    }
}

}  // namespace xrec::kernels
