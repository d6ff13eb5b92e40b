#pragma once
// Row-wise and reduction kernels of the cuda backend: dot, sum, max, shifted exponentials,
// softmax and its backward, layer-norm moments / forward / backward, row gathers and
// scatters, elementwise multiply-accumulate, dropout masks. Overloads on the cuda tag with
// the signatures of the cpu kernels (backend/cpu_kernels.hpp).
//
// Determinism: no atomics. A row is reduced by one block in a fixed order (each thread sums
// a fixed strided subset, then a fixed shared-memory tree); a column sum is one thread
// walking the rows in order, which is also the order of the cpu kernels. Float sums are
// accumulated in double (free on the bandwidth-bound kernels here, and it keeps the GPU's
// rounding well inside the parity tolerance of the cpu results).
//
// The kernels that return a value to the host (dot, sum, max_value, exp_shifted) wait for
// the stream: they exist for parity with the cpu signatures, not for hot loops.
#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include "xrec/backend/cuda_tag.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/cuda/check.cuh"
#include "xrec/cuda/memory.cuh"
#include "xrec/cuda/stream.cuh"

namespace xrec::kernels {

namespace cuda_detail {

/// The accumulator of sums of T: double for float, T otherwise.
template <class T>
struct acc_type {
    using type = T;
};
template <>
struct acc_type<float> {
    using type = double;
};
template <class T>
using acc_t = typename acc_type<T>::type;

/// Threads of the block-per-row kernels (a power of two: the reduction tree halves it).
inline constexpr int row_threads = 256;

/// Grid of a block-per-row kernel: one block per row up to 65535 blocks; the kernel loops
/// over the rest (row += gridDim.x).
inline unsigned row_blocks(std::int64_t rows) {
    return static_cast<unsigned>(rows < 65535 ? (rows > 0 ? rows : 1) : 65535);
}

/// Sum of v over the block in a fixed order (blockDim.x a power of two, at most
/// row_threads). Every thread gets the result; `sh` holds blockDim.x values. Must be
/// reached by all threads of the block.
template <class A>
__device__ A block_sum(A v, A* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    const A r = sh[0];
    __syncthreads();  // sh may be reused at once
    return r;
}

/// Max of v over the block (same contract as block_sum).
template <class A>
__device__ A block_max(A v, A* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const A o = sh[threadIdx.x + s];
            if (o > sh[threadIdx.x])
                sh[threadIdx.x] = o;
        }
        __syncthreads();
    }
    const A r = sh[0];
    __syncthreads();
    return r;
}

__device__ inline float dev_sqrt(float x) { return sqrtf(x); }
__device__ inline double dev_sqrt(double x) { return ::sqrt(x); }

/// Stream-ordered scratch device memory from the caching pool, freed (stream-ordered) when
/// it goes out of scope: temporaries of multi-kernel operations.
template <class T>
class stream_scratch {
public:
    stream_scratch(std::int64_t n, cudaStream_t s) : s_(s) {
        const std::size_t bytes = static_cast<std::size_t>(n > 0 ? n : 1) * sizeof(T);
        void* p = nullptr;
        XREC_CUDA_CHECK(cudaMallocFromPoolAsync(&p, bytes, device::caching_pool(), s));
        p_ = static_cast<T*>(p);
    }
    stream_scratch(const stream_scratch&) = delete;
    stream_scratch& operator=(const stream_scratch&) = delete;
    ~stream_scratch() { XREC_CUDA_CHECK_NOTHROW(cudaFreeAsync(p_, s_)); }
    T* get() const noexcept { return p_; }

private:
    T* p_ = nullptr;
    cudaStream_t s_;
};

/// Copies one value device -> host on the tag's stream and waits for it.
template <class T>
T fetch_scalar(cuda tag, const T* d) {
    T h{};
    XREC_CUDA_CHECK(cudaMemcpyAsync(&h, d, sizeof(T), cudaMemcpyDeviceToHost, device::stream_of(tag)));
    XREC_CUDA_CHECK(cudaStreamSynchronize(device::stream_of(tag)));
    return h;
}

}  // namespace cuda_detail
}  // namespace xrec::kernels

// The helpers above need nothing of kernels.cuh and come before it: kernels.cuh includes
// this file, interaction.cuh and sequence.cuh at its end, and those two use them, so they
// must be defined whichever of the headers a translation unit includes first.
#include "xrec/cuda/kernels.cuh"

namespace xrec::kernels {

namespace cuda_detail {

// ---- whole-array reductions (one block) -------------------------------------------------

enum class reduce_kind { dot, sum, max, exp_shifted };

// One block reduces the whole array: out[0] = the result. exp_shifted also writes y.
template <class T>
__global__ void __launch_bounds__(row_threads)
    reduce_all_kernel(reduce_kind kind, std::int64_t n, const T* a, const T* b, T shift, T* y, T* out) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    if (kind == reduce_kind::max) {
        T m = a[0];
        for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x)
            m = a[i] > m ? a[i] : m;
        const A r = block_max(static_cast<A>(m), sh);
        if (threadIdx.x == 0)
            out[0] = static_cast<T>(r);
        return;
    }
    A s = 0;
    for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        switch (kind) {
            case reduce_kind::dot:
                s += static_cast<A>(a[i]) * static_cast<A>(b[i]);
                break;
            case reduce_kind::sum:
                s += static_cast<A>(a[i]);
                break;
            case reduce_kind::exp_shifted: {
                const T e = dev_exp(a[i] - shift);
                y[i] = e;
                s += static_cast<A>(e);
                break;
            }
            case reduce_kind::max:
                break;
        }
    }
    const A r = block_sum(s, sh);
    if (threadIdx.x == 0)
        out[0] = static_cast<T>(r);
}

template <class T>
T reduce_all(cuda tag, reduce_kind kind, std::int64_t n, const T* a, const T* b, T shift, T* y) {
    if (n <= 0)
        return T(0);
    stream_scratch<T> out(1, device::stream_of(tag));
    reduce_all_kernel<T><<<1, row_threads, 0, device::stream_of(tag)>>>(kind, n, a, b, shift, y, out.get());
    check_launch();
    return fetch_scalar(tag, out.get());
}

// ---- elementwise ---------------------------------------------------------------------------

template <class T>
__global__ void mul_acc_kernel(std::int64_t n, const T* a, const T* b, T* y) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride())
        y[i] += a[i] * b[i];
}
template <class T>
__global__ void add_scalar_kernel(std::int64_t n, T alpha, T* y) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride())
        y[i] += alpha;
}

// ---- softmax -------------------------------------------------------------------------------

// One block per row. Each thread touches the same columns in every pass, so y may alias x.
template <class T>
__global__ void __launch_bounds__(row_threads)
    softmax_rows_kernel(std::int64_t rows, std::int64_t cols, const T* x, const std::uint8_t* mask, T* y) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        const std::uint8_t* mr = mask ? mask + r * cols : nullptr;
        // Max over the kept entries; `any` counts them (a fully masked row gives zeros).
        bool any = false;
        T m = T(0);
        for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x)
            if (!mr || mr[j]) {
                m = any ? (xr[j] > m ? xr[j] : m) : xr[j];
                any = true;
            }
        const A n_any = block_sum(static_cast<A>(any ? 1 : 0), sh);
        if (n_any == A(0)) {
            for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x)
                yr[j] = T(0);
            continue;
        }
        // Threads without a kept entry must not win the max: give them the lowest value.
        const A mx = block_max(any ? static_cast<A>(m) : -static_cast<A>(INFINITY), sh);
        const T mt = static_cast<T>(mx);
        A s = 0;
        for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            const T e = (!mr || mr[j]) ? dev_exp(xr[j] - mt) : T(0);
            yr[j] = e;
            s += static_cast<A>(e);
        }
        const T inv = T(1) / static_cast<T>(block_sum(s, sh));
        for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x)
            yr[j] *= inv;
    }
}

template <class T>
__global__ void __launch_bounds__(row_threads)
    softmax_bwd_rows_kernel(std::int64_t rows, std::int64_t cols, const T* y, const T* dy, T* dx) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* yr = y + r * cols;
        const T* gr = dy + r * cols;
        T* dr = dx + r * cols;
        A s = 0;
        for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x)
            s += static_cast<A>(yr[j]) * static_cast<A>(gr[j]);
        const T d = static_cast<T>(block_sum(s, sh));
        for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x)
            dr[j] += yr[j] * (gr[j] - d);
    }
}

// ---- layer norm ------------------------------------------------------------------------------

template <class T>
__global__ void __launch_bounds__(row_threads)
    row_moments_kernel(std::int64_t rows, std::int64_t cols, const T* x, T eps, T* mean, T* rstd) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * cols;
        A s = 0;
        for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x)
            s += static_cast<A>(xr[j]);
        const T mu = cols ? static_cast<T>(block_sum(s, sh) / static_cast<A>(cols)) : T(0);
        A v = 0;
        for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            const A d = static_cast<A>(xr[j]) - static_cast<A>(mu);
            v += d * d;
        }
        const T var = cols ? static_cast<T>(block_sum(v, sh) / static_cast<A>(cols)) : T(0);
        if (threadIdx.x == 0) {
            mean[r] = mu;
            rstd[r] = T(1) / dev_sqrt(var + eps);
        }
    }
}

template <class T>
__global__ void layer_norm_fwd_kernel(std::int64_t rows, std::int64_t cols, const T* x, const T* mean, const T* rstd,
                                      const T* gamma, const T* beta, T* y) {
    for (std::int64_t i = first_index(); i < rows * cols; i += grid_stride()) {
        const std::int64_t r = i / cols, c = i - r * cols;
        T v = (x[i] - mean[r]) * rstd[r];
        if (gamma)
            v *= gamma[c];
        if (beta)
            v += beta[c];
        y[i] = v;
    }
}

// dx part of the layer-norm backward: one block per row.
template <class T>
__global__ void __launch_bounds__(row_threads)
    layer_norm_bwd_dx_kernel(std::int64_t rows, std::int64_t cols, const T* x, const T* mean, const T* rstd,
                             const T* gamma, const T* dy, T* dx) {
    using A = acc_t<T>;
    __shared__ A sh[row_threads];
    const A inv_n = cols ? A(1) / static_cast<A>(cols) : A(0);
    for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * cols;
        const T* gr = dy + r * cols;
        T* dr = dx + r * cols;
        const T mu = mean[r], rs = rstd[r];
        A s1 = 0, s2 = 0;
        for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            const T g = gamma ? gr[j] * gamma[j] : gr[j];
            s1 += static_cast<A>(g);
            s2 += static_cast<A>(g) * static_cast<A>((xr[j] - mu) * rs);
        }
        const T mg = static_cast<T>(block_sum(s1, sh) * inv_n);
        const T mgx = static_cast<T>(block_sum(s2, sh) * inv_n);
        for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            const T g = gamma ? gr[j] * gamma[j] : gr[j];
            const T xh = (xr[j] - mu) * rs;
            dr[j] += rs * (g - mg - xh * mgx);
        }
    }
}

// dgamma / dbeta of the layer-norm backward: one thread per column, rows added in order.
template <class T>
__global__ void layer_norm_bwd_params_kernel(std::int64_t rows, std::int64_t cols, const T* x, const T* mean,
                                             const T* rstd, const T* dy, T* dgamma, T* dbeta) {
    for (std::int64_t c = first_index(); c < cols; c += grid_stride()) {
        using A = acc_t<T>;
        A sg = dgamma ? dgamma[c] : T(0), sb = dbeta ? dbeta[c] : T(0);
        for (std::int64_t r = 0; r < rows; ++r) {
            const T g = dy[r * cols + c];
            if (dgamma)
                sg += static_cast<A>(g) * static_cast<A>((x[r * cols + c] - mean[r]) * rstd[r]);
            if (dbeta)
                sb += g;
        }
        if (dgamma)
            dgamma[c] = static_cast<T>(sg);
        if (dbeta)
            dbeta[c] = static_cast<T>(sb);
    }
}

// ---- gathers and scatters ----------------------------------------------------------------

template <class T>
__global__ void gather_rows_kernel(const T* table, std::int64_t dim, const std::int64_t* ids, std::int64_t n, T* out) {
    for (std::int64_t i = first_index(); i < n * dim; i += grid_stride()) {
        const std::int64_t r = i / dim, d = i - r * dim;
        out[i] = table[ids[r] * dim + d];
    }
}
// One thread per column walks the ids in order: duplicates accumulate in the cpu's order,
// and no two threads ever write one element.
template <class T>
__global__ void scatter_add_rows_kernel(const T* src, std::int64_t dim, const std::int64_t* ids, std::int64_t n, T* dst) {
    for (std::int64_t d = first_index(); d < dim; d += grid_stride())
        for (std::int64_t i = 0; i < n; ++i)
            dst[ids[i] * dim + d] += src[i * dim + d];
}

// ---- dropout ---------------------------------------------------------------------------------

/// Philox4x32-10 word `lane` (0..3) of block (hi = stream, lo = counter): rng.hpp's philox.
__device__ inline std::uint32_t philox_word(std::uint64_t key, std::uint64_t hi, std::uint64_t lo, unsigned lane) {
    std::uint32_t c0 = static_cast<std::uint32_t>(lo), c1 = static_cast<std::uint32_t>(lo >> 32);
    std::uint32_t c2 = static_cast<std::uint32_t>(hi), c3 = static_cast<std::uint32_t>(hi >> 32);
    std::uint32_t k0 = static_cast<std::uint32_t>(key), k1 = static_cast<std::uint32_t>(key >> 32);
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        const std::uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const std::uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        const std::uint32_t n0 = hi1 ^ c1 ^ k0;
        const std::uint32_t n2 = hi0 ^ c3 ^ k1;
        c1 = lo1;
        c3 = lo0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return lane == 0 ? c0 : lane == 1 ? c1 : lane == 2 ? c2 : c3;
}

template <class T>
__global__ void dropout_mask_kernel(std::uint64_t key, std::uint64_t stream, std::uint64_t first, std::int64_t n,
                                    std::uint32_t threshold, T scale, T* m) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
        const std::uint64_t e = first + static_cast<std::uint64_t>(i);
        const std::uint32_t bits = philox_word(key, stream, e >> 2, static_cast<unsigned>(e & 3));
        m[i] = bits >= threshold ? scale : T(0);
    }
}

}  // namespace cuda_detail

/// sum_i a[i] * b[i] (waits for the stream; the result comes back to the host).
template <class T>
T dot(cuda tag, std::int64_t n, const T* a, const T* b) {
    return cuda_detail::reduce_all(tag, cuda_detail::reduce_kind::dot, n, a, b, T(0), static_cast<T*>(nullptr));
}
/// sum_i x[i] (waits for the stream).
template <class T>
T sum(cuda tag, std::int64_t n, const T* x) {
    return cuda_detail::reduce_all(tag, cuda_detail::reduce_kind::sum, n, x, static_cast<const T*>(nullptr), T(0),
                                   static_cast<T*>(nullptr));
}
/// max_i x[i] for n >= 1 (waits for the stream).
template <class T>
T max_value(cuda tag, std::int64_t n, const T* x) {
    XREC_CHECK(n >= 1, "kernels::max_value(cuda): needs n >= 1, got ", n);
    return cuda_detail::reduce_all(tag, cuda_detail::reduce_kind::max, n, x, static_cast<const T*>(nullptr), T(0),
                                   static_cast<T*>(nullptr));
}
/// y = exp(x - shift); returns sum_i y[i] (waits for the stream).
template <class T>
T exp_shifted(cuda tag, std::int64_t n, const T* x, T shift, T* y) {
    return cuda_detail::reduce_all(tag, cuda_detail::reduce_kind::exp_shifted, n, x, static_cast<const T*>(nullptr),
                                   shift, y);
}

/// y += a * b (elementwise)
template <class T>
void mul_acc(cuda tag, std::int64_t n, const T* a, const T* b, T* y) {
    if (n <= 0)
        return;
    cuda_detail::mul_acc_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(n, a, b, y);
    cuda_detail::check_launch();
}
/// y += alpha (every element)
template <class T>
void add_scalar(cuda tag, std::int64_t n, T alpha, T* y) {
    if (n <= 0)
        return;
    cuda_detail::add_scalar_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(n, alpha, y);
    cuda_detail::check_launch();
}

/// Softmax over each of `rows` rows of width `cols`, restricted to the entries whose mask
/// byte (device memory) is non-zero (`mask` null keeps all); masked entries and fully masked
/// rows give 0. One block per row; y may be x.
template <class T>
void softmax_rows(cuda tag, std::int64_t rows, std::int64_t cols, const T* x, const std::uint8_t* mask, T* y) {
    if (rows <= 0 || cols <= 0)
        return;
    cuda_detail::softmax_rows_kernel<T><<<cuda_detail::row_blocks(rows), cuda_detail::row_threads, 0,
                                          device::stream_of(tag)>>>(rows, cols, x, mask, y);
    cuda_detail::check_launch();
}
/// dx += y * (dy - <y, dy>) row by row.
template <class T>
void softmax_bwd_rows(cuda tag, std::int64_t rows, std::int64_t cols, const T* y, const T* dy, T* dx) {
    if (rows <= 0 || cols <= 0)
        return;
    cuda_detail::softmax_bwd_rows_kernel<T><<<cuda_detail::row_blocks(rows), cuda_detail::row_threads, 0,
                                              device::stream_of(tag)>>>(rows, cols, y, dy, dx);
    cuda_detail::check_launch();
}

/// Per row: mean and 1/sqrt(var + eps) with the biased variance, in two passes.
template <class T>
void row_moments(cuda tag, std::int64_t rows, std::int64_t cols, const T* x, T eps, T* mean, T* rstd) {
    if (rows <= 0)
        return;
    cuda_detail::row_moments_kernel<T><<<cuda_detail::row_blocks(rows), cuda_detail::row_threads, 0,
                                         device::stream_of(tag)>>>(rows, cols, x, eps, mean, rstd);
    cuda_detail::check_launch();
}
/// y = (x - mean) * rstd * gamma + beta per row; null gamma / beta mean 1 / 0.
template <class T>
void layer_norm_fwd(cuda tag, std::int64_t rows, std::int64_t cols, const T* x, const T* mean, const T* rstd,
                    const T* gamma, const T* beta, T* y) {
    if (rows <= 0 || cols <= 0)
        return;
    cuda_detail::layer_norm_fwd_kernel<T><<<cuda_detail::blocks_for(rows * cols), cuda_detail::threads, 0,
                                            device::stream_of(tag)>>>(rows, cols, x, mean, rstd, gamma, beta, y);
    cuda_detail::check_launch();
}
/// Layer-norm backward (see the cpu kernel): dx += rstd (g - mean(g) - xhat mean(g xhat)),
/// dgamma += sum_rows dy xhat, dbeta += sum_rows dy; any of dx, dgamma, dbeta may be null.
template <class T>
void layer_norm_bwd(cuda tag, std::int64_t rows, std::int64_t cols, const T* x, const T* mean, const T* rstd,
                    const T* gamma, const T* dy, T* dx, T* dgamma, T* dbeta) {
    if (rows <= 0 || cols <= 0)
        return;
    if (dx) {
        cuda_detail::layer_norm_bwd_dx_kernel<T><<<cuda_detail::row_blocks(rows), cuda_detail::row_threads, 0,
                                                   device::stream_of(tag)>>>(rows, cols, x, mean, rstd, gamma, dy, dx);
        cuda_detail::check_launch();
    }
    if (dgamma || dbeta) {
        cuda_detail::layer_norm_bwd_params_kernel<T><<<cuda_detail::blocks_for(cols), cuda_detail::threads, 0,
                                                       device::stream_of(tag)>>>(rows, cols, x, mean, rstd, dy, dgamma,
                                                                                 dbeta);
        cuda_detail::check_launch();
    }
}

/// out[i, :] = table[ids[i], :] for i < n (ids in device memory).
template <class T>
void gather_rows(cuda tag, const T* table, std::int64_t dim, const std::int64_t* ids, std::int64_t n, T* out) {
    if (n <= 0 || dim <= 0)
        return;
    cuda_detail::gather_rows_kernel<T><<<cuda_detail::blocks_for(n * dim), cuda_detail::threads, 0,
                                         device::stream_of(tag)>>>(table, dim, ids, n, out);
    cuda_detail::check_launch();
}
/// dst[ids[i], :] += src[i, :] for i < n, in order (ids in device memory). One thread per
/// column walks the ids in order: deterministic, duplicates summed as on the cpu; the
/// parallelism is the row width only (a sort-based version would scale with n).
template <class T>
void scatter_add_rows(cuda tag, const T* src, std::int64_t dim, const std::int64_t* ids, std::int64_t n, T* dst) {
    if (n <= 0 || dim <= 0)
        return;
    cuda_detail::scatter_add_rows_kernel<T><<<cuda_detail::blocks_for(dim), cuda_detail::threads, 0,
                                              device::stream_of(tag)>>>(src, dim, ids, n, dst);
    cuda_detail::check_launch();
}

/// Inverted-dropout multipliers for elements [first, first + n) of stream `rs`: m[i] =
/// scale where rs.bits(first + i) >= threshold, else 0: bit for bit the cpu kernel's mask
/// (the same Philox4x32-10 word per element).
template <class T>
void dropout_mask(cuda tag, const rng_stream& rs, std::uint64_t first, std::int64_t n, std::uint32_t threshold, T scale,
                  T* m) {
    if (n <= 0)
        return;
    cuda_detail::dropout_mask_kernel<T><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(
        rs.gen.key, rs.stream, first, n, threshold, scale, m);
    cuda_detail::check_launch();
}

}  // namespace xrec::kernels
