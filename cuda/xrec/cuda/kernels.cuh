#pragma once
// Kernels of the cuda backend: overloads on the cuda tag with the signatures of the cpu
// kernels (backend/cpu_kernels.hpp), so code written against kernels::name(B{}, ...) runs on
// the GPU when B is xrec::cuda. Only for CUDA translation units; needs core/ and the CUDA
// runtime, never Eigen or xsimd.
//
// All pointers are device pointers. Every kernel is queued on the tag's stream and
// returns without waiting: launch errors are checked at once, errors while running surface
// at the next synchronising call (device::synchronize, device::download). Deterministic:
// no atomics, every output element is written by one thread, and sums run in a fixed order.
// gemm is cuBLAS (blas.cuh).
#include <cstdint>

#include <cuda_runtime.h>

#include "xrec/backend/activation.hpp"
#include "xrec/backend/cuda_tag.hpp"
#include "xrec/core/error.hpp"
#include "xrec/cuda/blas.cuh"
#include "xrec/cuda/check.cuh"
#include "xrec/cuda/memory.cuh"
#include "xrec/cuda/stream.cuh"

namespace xrec::kernels {

namespace cuda_detail {

inline constexpr int threads = 256;

// Grid for a grid-stride loop over n elements: at most 4096 blocks, the loop covers the rest.
inline unsigned blocks_for(std::int64_t n) {
    const std::int64_t b = (n + threads - 1) / threads;
    return static_cast<unsigned>(b < 4096 ? b : 4096);
}

__device__ inline std::int64_t first_index() {
    return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline std::int64_t grid_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

__device__ inline float dev_exp(float x) { return expf(x); }
__device__ inline double dev_exp(double x) { return ::exp(x); }
__device__ inline float dev_tanh(float x) { return tanhf(x); }
__device__ inline double dev_tanh(double x) { return ::tanh(x); }
__device__ inline float dev_erf(float x) { return erff(x); }
__device__ inline double dev_erf(double x) { return ::erf(x); }

// The same formulas as the cpu kernels' scalar tails.
template <class T>
__device__ T act(activation a, T x) {
    switch (a) {
        case activation::identity:
            return x;
        case activation::relu:
            return x > T(0) ? x : T(0);
        case activation::sigmoid:
            return T(1) / (T(1) + dev_exp(-x));
        case activation::tanh:
            return dev_tanh(x);
        case activation::gelu:
            return T(0.5) * x * (T(1) + dev_erf(x * T(0.70710678118654752440)));
    }
    return x;
}
// Derivative given the input x and the output y.
template <class T>
__device__ T dact(activation a, T x, T y) {
    switch (a) {
        case activation::identity:
            return T(1);
        case activation::relu:
            return x > T(0) ? T(1) : T(0);
        case activation::sigmoid:
            return y * (T(1) - y);
        case activation::tanh:
            return T(1) - y * y;
        case activation::gelu: {
            const T cdf = T(0.5) * (T(1) + dev_erf(x * T(0.70710678118654752440)));
            const T pdf = dev_exp(T(-0.5) * x * x) * T(0.39894228040143267794);
            return cdf + x * pdf;
        }
    }
    return T(1);
}

enum class binary_op { add, sub, mul };

template <class T>
__global__ void fill_kernel(std::int64_t n, T v, T* y) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride())
        y[i] = v;
}
template <class T>
__global__ void binary_kernel(binary_op op, std::int64_t n, const T* a, const T* b, T* y) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
        switch (op) {
            case binary_op::add:
                y[i] = a[i] + b[i];
                break;
            case binary_op::sub:
                y[i] = a[i] - b[i];
                break;
            case binary_op::mul:
                y[i] = a[i] * b[i];
                break;
        }
    }
}
template <class T>
__global__ void axpy_kernel(std::int64_t n, T alpha, const T* x, T* y) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride())
        y[i] += alpha * x[i];
}
template <class T>
__global__ void scale_kernel(std::int64_t n, T alpha, const T* x, T* y) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride())
        y[i] = alpha * x[i];
}
template <class T>
__global__ void add_row_bias_kernel(std::int64_t rows, std::int64_t cols, const T* bias, T* y) {
    for (std::int64_t i = first_index(); i < rows * cols; i += grid_stride())
        y[i] += bias[i % cols];
}
// Column sums in two fixed-order passes, no atomics: block (tile, chunk) sums rows
// [chunk R, chunk R + R) of 32 columns, each of its 8 warps taking every 8th row (a warp
// reads 32 consecutive floats of a row), the warps' sums added in warp order; with one
// chunk the block adds straight into acc, else into part[chunk, col], which
// col_final_kernel adds to acc in chunk order. One thread per column walking all rows
// (the cpu order) left 13 blocks busy for 400 columns: 6 ms at 65,536 rows on the H100.
template <class T>
__global__ void __launch_bounds__(256) col_part_kernel(std::int64_t rows, std::int64_t cols, std::int64_t R, const T* x,
                                                       T* part, bool direct) {
    __shared__ T sh[8][32];
    const int c = static_cast<int>(threadIdx.x % 32), l = static_cast<int>(threadIdx.x / 32);
    const std::int64_t col = static_cast<std::int64_t>(blockIdx.x) * 32 + c;
    const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * R, r1 = r0 + R < rows ? r0 + R : rows;
    T s = 0;
    if (col < cols)
        for (std::int64_t r = r0 + l; r < r1; r += 8) s += x[r * cols + col];
    sh[l][c] = s;
    __syncthreads();
    if (l == 0 && col < cols) {
        T t = sh[0][c];
        for (int k = 1; k < 8; ++k) t += sh[k][c];
        if (direct)
            part[col] += t;
        else
            part[static_cast<std::int64_t>(blockIdx.y) * cols + col] = t;
    }
}
template <class T>
__global__ void col_final_kernel(std::int64_t chunks, std::int64_t cols, const T* part, T* acc) {
    for (std::int64_t j = first_index(); j < cols; j += grid_stride()) {
        T s = acc[j];
        for (std::int64_t k = 0; k < chunks; ++k) s += part[k * cols + j];
        acc[j] = s;
    }
}
template <class T>
__global__ void activation_fwd_kernel(activation a, std::int64_t n, const T* x, T* y) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride())
        y[i] = act(a, x[i]);
}
template <class T>
__global__ void activation_bwd_kernel(activation a, std::int64_t n, const T* x, const T* y, const T* dy, T* dx) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride())
        dx[i] += dy[i] * dact(a, x[i], y[i]);
}

inline void check_launch() { XREC_CUDA_CHECK(cudaGetLastError()); }

}  // namespace cuda_detail

template <class T>
void fill(cuda tag, std::int64_t n, T v, T* y);
template <class T>
void scale(cuda tag, std::int64_t n, T alpha, const T* x, T* y);

/// C[m x n] = alpha * op(A) * op(B) + beta * C, all row-major with leading dimensions
/// lda, ldb, ldc; op(A) is m x k, op(B) is k x n. beta == 0 overwrites C. Through cuBLAS
/// (float stays float: no TF32).
template <class T>
void gemm(cuda tag, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
          std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
    if (m == 0 || n == 0)
        return;
    if (k == 0) {  // cuBLAS wants leading dimensions >= 1 even then; C = beta C is all there is
        XREC_CHECK(ldc == n, "kernels::gemm(cuda): k == 0 with ldc ", ldc, " != n ", n, " is not supported");
        if (beta == T(0))
            fill(tag, m * n, T(0), c);
        else
            scale(tag, m * n, beta, c, c);
        return;
    }
    device::gemm_row_major(device::stream_of(tag), trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/// y[i] = v for i < n
template <class T>
void fill(cuda tag, std::int64_t n, T v, T* y) {
    if (n <= 0)
        return;
    cuda_detail::fill_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(n, v, y);
    cuda_detail::check_launch();
}
/// y = x (device to device)
template <class T>
void copy(cuda tag, std::int64_t n, const T* x, T* y) {
    if (n > 0)
        XREC_CUDA_CHECK(cudaMemcpyAsync(y, x, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyDeviceToDevice,
                                        device::stream_of(tag)));
}

namespace cuda_detail {
template <class T>
void binary(cuda tag, binary_op op, std::int64_t n, const T* a, const T* b, T* y) {
    if (n <= 0)
        return;
    binary_kernel<T><<<blocks_for(n), threads, 0, device::stream_of(tag)>>>(op, n, a, b, y);
    check_launch();
}
}  // namespace cuda_detail

/// y = a + b
template <class T>
void add(cuda tag, std::int64_t n, const T* a, const T* b, T* y) {
    cuda_detail::binary(tag, cuda_detail::binary_op::add, n, a, b, y);
}
/// y = a - b
template <class T>
void sub(cuda tag, std::int64_t n, const T* a, const T* b, T* y) {
    cuda_detail::binary(tag, cuda_detail::binary_op::sub, n, a, b, y);
}
/// y = a * b (elementwise)
template <class T>
void mul(cuda tag, std::int64_t n, const T* a, const T* b, T* y) {
    cuda_detail::binary(tag, cuda_detail::binary_op::mul, n, a, b, y);
}
/// y += alpha * x
template <class T>
void axpy(cuda tag, std::int64_t n, T alpha, const T* x, T* y) {
    if (n <= 0)
        return;
    cuda_detail::axpy_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(n, alpha, x, y);
    cuda_detail::check_launch();
}
/// y = alpha * x
template <class T>
void scale(cuda tag, std::int64_t n, T alpha, const T* x, T* y) {
    if (n <= 0)
        return;
    cuda_detail::scale_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(n, alpha, x, y);
    cuda_detail::check_launch();
}
/// y[r, :] += bias for each of `rows` rows of width `cols`.
template <class T>
void add_row_bias(cuda tag, std::int64_t rows, std::int64_t cols, const T* bias, T* y) {
    if (rows <= 0 || cols <= 0)
        return;
    cuda_detail::add_row_bias_kernel<T>
        <<<cuda_detail::blocks_for(rows * cols), cuda_detail::threads, 0, device::stream_of(tag)>>>(rows, cols, bias,
                                                                                                    y);
    cuda_detail::check_launch();
}
/// acc[j] += sum_r x[r, j]: column sums in a fixed order (chunks of rows summed by row
/// lanes, then the chunks in order; see col_part_kernel), so the result is the same from
/// run to run; it differs from the cpu's row-by-row order by rounding only.
template <class T>
void col_sums_acc(cuda tag, std::int64_t rows, std::int64_t cols, const T* x, T* acc) {
    if (rows <= 0 || cols <= 0)
        return;
    const cudaStream_t s = device::stream_of(tag);
    std::int64_t R = 1024;
    while ((rows + R - 1) / R > 65535) R *= 2;
    const std::int64_t chunks = (rows + R - 1) / R;
    const dim3 grid(static_cast<unsigned>((cols + 31) / 32), static_cast<unsigned>(chunks));
    if (chunks == 1) {
        cuda_detail::col_part_kernel<T><<<grid, 256, 0, s>>>(rows, cols, R, x, acc, true);
        cuda_detail::check_launch();
        return;
    }
    const device::stream_scratch part(static_cast<std::size_t>(chunks * cols) * sizeof(T), s);
    cuda_detail::col_part_kernel<T><<<grid, 256, 0, s>>>(rows, cols, R, x, part.as<T>(), false);
    cuda_detail::check_launch();
    cuda_detail::col_final_kernel<T>
        <<<cuda_detail::blocks_for(cols), cuda_detail::threads, 0, s>>>(chunks, cols, part.as<T>(), acc);
    cuda_detail::check_launch();
}
/// y = act(x)
template <class T>
void activation_fwd(cuda tag, activation act, std::int64_t n, const T* x, T* y) {
    if (n <= 0)
        return;
    cuda_detail::activation_fwd_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(act, n, x, y);
    cuda_detail::check_launch();
}
/// dx += dy * act'(x), given input x and output y of the forward.
template <class T>
void activation_bwd(cuda tag, activation act, std::int64_t n, const T* x, const T* y, const T* dy, T* dx) {
    if (n <= 0)
        return;
    cuda_detail::activation_bwd_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(act, n, x, y, dy, dx);
    cuda_detail::check_launch();
}

}  // namespace xrec::kernels

#include "xrec/cuda/reduce.cuh"
#include "xrec/cuda/interaction.cuh"
#include "xrec/cuda/sequence.cuh"

// The training path (losses, optimizers, sparse gradient merge, trainer checks).
#include "xrec/cuda/train.cuh"
#include "xrec/cuda/embedding_bag.cuh"
