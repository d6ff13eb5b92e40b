#pragma once
// Kernels of the training path on the cuda tag: the data loops of ops (column blocks of
// concat, axis reductions, id uploads), of the BCE loss, of the dense optimizers (adam, sgd),
// the deterministic merge of sparse row gradients and row-wise Adagrad, and the trainer's
// NaN/Inf scans. Overloads of the cpu kernels beside the ops and optimizers (cpu_kernels.hpp,
// loss/bce.hpp, optim/*.hpp) with the same signatures, so the same trainer, model, loss and
// optimizer code runs on device memory when B is xrec::cuda.
//
// Only for CUDA translation units (included by kernels.cuh); needs core/ and the CUDA
// toolkit (CUB), never Eigen or xsimd. All tensor pointers are device pointers; ids that the
// cpu code keeps on the host (a batch's ids, the ids of a sparse gradient) are uploaded here.
//
// Determinism: no floating-point atomics. Every output element is written by one thread,
// sums run in a fixed order (the order of the cpu kernel where it is sequential), and the
// optimizer updates avoid fused multiply-adds (__f*_rn / __d*_rn intrinsics), so that for
// equal inputs they round exactly as the cpu's scalar code does. The NaN/Inf scans use an
// integer atomicMin, which is order-independent.
#include <cstdint>
#include <span>
#include <vector>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda_runtime.h>

#include "xrec/backend/cuda_tag.hpp"
#include "xrec/core/buffer.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/parallel.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/cuda/check.cuh"
#include "xrec/cuda/kernels.cuh"
#include "xrec/cuda/memory.cuh"
#include "xrec/cuda/stream.cuh"

namespace xrec::optim {
// Defined in optim/common.hpp (which needs xsimd); the cuda overloads below only name it.
template <class T, class B>
struct coalesce_scratch;
}  // namespace xrec::optim

namespace xrec::kernels {

namespace cuda_detail {

// Correctly rounded arithmetic that nvcc never contracts into an FMA, so that an update
// rounds as the cpu's scalar code does (which the default x86-64 build never contracts).
__device__ inline float rn_add(float a, float b) { return __fadd_rn(a, b); }
__device__ inline float rn_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ inline float rn_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ inline float rn_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ inline float rn_sqrt(float a) { return __fsqrt_rn(a); }
__device__ inline double rn_add(double a, double b) { return __dadd_rn(a, b); }
__device__ inline double rn_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ inline double rn_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ inline double rn_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ inline double rn_sqrt(double a) { return __dsqrt_rn(a); }

__device__ inline float dev_log1p(float x) { return log1pf(x); }
__device__ inline double dev_log1p(double x) { return ::log1p(x); }
__device__ inline float dev_fabs(float x) { return fabsf(x); }
__device__ inline double dev_fabs(double x) { return ::fabs(x); }

// The cpu's loss::detail::sigmoid: neither branch overflows.
template <class T>
__device__ T stable_sigmoid(T z) {
    if (z >= T(0))
        return T(1) / (T(1) + dev_exp(-z));
    const T e = dev_exp(z);
    return e / (T(1) + e);
}

template <class T>
__global__ void add_block_kernel(std::int64_t rows, std::int64_t w, const T* src, std::int64_t src_ld, T* dst,
                                 std::int64_t dst_ld) {
    for (std::int64_t i = first_index(); i < rows * w; i += grid_stride()) {
        const std::int64_t r = i / w, c = i - r * w;
        dst[r * dst_ld + c] += src[r * src_ld + c];
    }
}

// One thread per output element (o, i); the k run in order.
template <class T>
__global__ void reduce_axis_kernel(std::int64_t o0, std::int64_t no, std::int64_t n, std::int64_t inner,
                                   std::int64_t i0, std::int64_t ni, T s, bool scaled, const T* x, T* y) {
    for (std::int64_t e = first_index(); e < no * ni; e += grid_stride()) {
        const std::int64_t o = o0 + e / ni, i = i0 + e % ni;
        const T* xo = x + o * n * inner + i;
        T acc = T(0);
        for (std::int64_t k = 0; k < n; ++k)
            acc += xo[k * inner];
        y[o * inner + i] = scaled ? s * acc : acc;
    }
}
template <class T>
__global__ void reduce_axis_bwd_kernel(std::int64_t o0, std::int64_t no, std::int64_t n, std::int64_t inner,
                                       std::int64_t i0, std::int64_t ni, T s, const T* gy, T* gx) {
    const std::int64_t per_o = n * ni;
    for (std::int64_t e = first_index(); e < no * per_o; e += grid_stride()) {
        const std::int64_t o = o0 + e / per_o, r = e % per_o, k = r / ni, i = i0 + r % ni;
        gx[(o * n + k) * inner + i] += s * gy[o * inner + i];
    }
}

// The block's smallest candidate index m (~0: none), by a shared-memory tree, folded into
// *best with one integer atomicMin per block: the scans below share it.
__device__ inline void fold_first(unsigned long long m, unsigned long long* best) {
    __shared__ unsigned long long part[threads];
    part[threadIdx.x] = m;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half && part[threadIdx.x + half] < part[threadIdx.x])
            part[threadIdx.x] = part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0 && part[0] != ~0ull)
        atomicMin(best, part[0]);
}

// Smallest index i < n with x[i] NaN or infinite, folded into *best by an integer atomicMin.
template <class T>
__global__ void first_nonfinite_kernel(std::int64_t n, const T* x, unsigned long long* best) {
    unsigned long long m = ~0ull;
    for (std::int64_t i = first_index(); i < n; i += grid_stride())
        if (!isfinite(x[i]) && static_cast<unsigned long long>(i) < m)
            m = static_cast<unsigned long long>(i);
    fold_first(m, best);
}
// Smallest position i < n with ids[i] outside [0, rows), folded into *best like the above.
template <class I>
__global__ void first_id_outside_kernel(std::int64_t n, const I* ids, std::int64_t rows, unsigned long long* best) {
    unsigned long long m = ~0ull;
    for (std::int64_t i = first_index(); i < n; i += grid_stride())
        if ((ids[i] < 0 || ids[i] >= rows) && static_cast<unsigned long long>(i) < m)
            m = static_cast<unsigned long long>(i);
    fold_first(m, best);
}
// The same over rows table[ids[k], :] of width dim, indexed k * dim + d.
template <class T>
__global__ void first_nonfinite_rows_kernel(const T* table, std::int64_t dim, const std::int64_t* ids, std::int64_t n,
                                            unsigned long long* best) {
    unsigned long long m = ~0ull;
    for (std::int64_t i = first_index(); i < n * dim; i += grid_stride()) {
        const std::int64_t k = i / dim, d = i - k * dim;
        if (!isfinite(table[ids[k] * dim + d]) && static_cast<unsigned long long>(i) < m)
            m = static_cast<unsigned long long>(i);
    }
    fold_first(m, best);
}

// BCE forward in one block: each thread sums its strided elements in double, then a fixed
// tree over the block; the same terms as the cpu kernel (computed in T, summed in double).
inline constexpr int bce_threads = 512;
template <class T>
__global__ void bce_fwd_kernel(std::int64_t n, const T* x, const T* y, T* out) {
    __shared__ double part[bce_threads];
    double acc = 0;
    for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const T xi = x[i];
        const T term = (xi > T(0) ? xi : T(0)) - xi * y[i] + dev_log1p(dev_exp(-dev_fabs(xi)));
        acc += static_cast<double>(term);
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half)
            part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        out[0] = static_cast<T>(part[0] / static_cast<double>(n));
}
template <class T>
__global__ void bce_bwd_kernel(std::int64_t n, const T* x, const T* y, const T* gout, T* gx, T* gy) {
    const T scale = gout[0] / static_cast<T>(n);
    for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
        if (gx)
            gx[i] = rn_add(gx[i], rn_mul(scale, rn_sub(stable_sigmoid(x[i]), y[i])));
        if (gy)
            gy[i] = rn_sub(gy[i], rn_mul(scale, x[i]));
    }
}

template <class T>
__global__ void adam_kernel(std::int64_t n, T* p, const T* gr, T* m, T* v, T step_size, T bc2_sqrt, T b1c, T b2,
                            T b2c, T eps, T wd, T shrink, bool l2, bool decay) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
        T x = p[i];
        T g = gr[i];
        if (l2)
            g = rn_add(g, rn_mul(wd, x));
        if (decay)
            x = rn_mul(x, shrink);
        const T mi = rn_add(m[i], rn_mul(b1c, rn_sub(g, m[i])));
        const T vi = rn_add(rn_mul(v[i], b2), rn_mul(b2c, rn_mul(g, g)));
        m[i] = mi;
        v[i] = vi;
        const T denom = rn_add(rn_div(rn_sqrt(vi), bc2_sqrt), eps);
        p[i] = rn_sub(x, rn_mul(step_size, rn_div(mi, denom)));
    }
}
template <class T>
__global__ void sgd_kernel(std::int64_t n, T* p, const T* gr, T* buf, T lr, T wd, T mu, T damp, bool use_wd,
                           bool use_mu, bool nest, bool first) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
        const T x = p[i];
        T g = gr[i];
        if (use_wd)
            g = rn_add(g, rn_mul(wd, x));
        if (use_mu) {
            const T b = first ? g : rn_add(rn_mul(mu, buf[i]), rn_mul(damp, g));
            buf[i] = b;
            g = nest ? rn_add(g, rn_mul(mu, b)) : b;
        }
        p[i] = rn_sub(x, rn_mul(lr, g));
    }
}

template <class I>
__global__ void iota_kernel(std::int64_t n, I* y) {
    for (std::int64_t i = first_index(); i < n; i += grid_stride())
        y[i] = static_cast<I>(i);
}
// Merged row j of width dim: the rows of its id in emission order (pos sorted stably by id),
// the first copied and the others added one by one, as the cpu merge does.
template <class T>
__global__ void merge_rows_kernel(std::int64_t u, std::int64_t dim, const int* starts, const int* counts,
                                  const int* pos, const T* src, T* dst) {
    for (std::int64_t e = first_index(); e < u * dim; e += grid_stride()) {
        const std::int64_t j = e / dim, d = e - j * dim;
        const std::int64_t k0 = starts[j], k1 = k0 + counts[j];
        T acc = src[static_cast<std::int64_t>(pos[k0]) * dim + d];
        for (std::int64_t k = k0 + 1; k < k1; ++k)
            acc = rn_add(acc, src[static_cast<std::int64_t>(pos[k]) * dim + d]);
        dst[e] = acc;
    }
}


// The result word of the scans above, in pinned host memory written by the device, one per
// thread (the scans wait for their stream anyway): no allocation per call.
inline unsigned long long* scan_result() {
    struct holder {
        unsigned long long* p = nullptr;
        holder() { XREC_CUDA_CHECK(cudaHostAlloc(&p, sizeof *p, cudaHostAllocDefault)); }
        ~holder() { (void)cudaFreeHost(p); }
    };
    static thread_local holder h;
    return h.p;
}
// Starts a scan: the result word reset on the stream (a 64-bit store of all ones).
template <class U>
__global__ void reset_result_kernel(U* best) {
    *best = ~U{0};
}
inline unsigned long long* begin_scan(cudaStream_t s) {
    unsigned long long* b = scan_result();
    reset_result_kernel<unsigned long long><<<1, 1, 0, s>>>(b);
    check_launch();
    return b;
}
// Result of a scan: -1 for none. Waits for the stream.
inline std::int64_t read_first(const unsigned long long* best, cudaStream_t s) {
    XREC_CUDA_CHECK(cudaStreamSynchronize(s));
    const unsigned long long h = *static_cast<const volatile unsigned long long*>(best);
    return h == ~0ull ? -1 : static_cast<std::int64_t>(h);
}

inline std::size_t round8(std::size_t b) { return (b + 7) / 8 * 8; }

}  // namespace cuda_detail

/// dst[r, 0:w] = src[r, 0:w] for r < rows (one strided 2-d copy).
template <class T>
void copy_block(cuda tag, std::int64_t rows, std::int64_t w, const T* src, std::int64_t src_ld, T* dst,
                std::int64_t dst_ld) {
    if (rows <= 0 || w <= 0)
        return;
    XREC_CUDA_CHECK(cudaMemcpy2DAsync(dst, static_cast<std::size_t>(dst_ld) * sizeof(T), src,
                                      static_cast<std::size_t>(src_ld) * sizeof(T), static_cast<std::size_t>(w) * sizeof(T),
                                      static_cast<std::size_t>(rows), cudaMemcpyDeviceToDevice, device::stream_of(tag)));
}
/// dst[r, 0:w] += src[r, 0:w] for r < rows.
template <class T>
void add_block(cuda tag, std::int64_t rows, std::int64_t w, const T* src, std::int64_t src_ld, T* dst,
               std::int64_t dst_ld) {
    if (rows <= 0 || w <= 0)
        return;
    cuda_detail::add_block_kernel<T><<<cuda_detail::blocks_for(rows * w), cuda_detail::threads, 0,
                                       device::stream_of(tag)>>>(rows, w, src, src_ld, dst, dst_ld);
    cuda_detail::check_launch();
}

/// y[o, i] = s * sum_k x[o, k, i] over the block [o0, o1) x [i0, i1) (see the cpu kernel);
/// the k summed in order by one thread per output element.
template <class T>
void reduce_axis(cuda tag, std::int64_t o0, std::int64_t o1, std::int64_t n, std::int64_t inner, std::int64_t i0,
                 std::int64_t i1, T s, bool mean, const T* x, T* y) {
    const std::int64_t no = o1 - o0, ni = i1 - i0;
    if (no <= 0 || ni <= 0)
        return;
    cuda_detail::reduce_axis_kernel<T><<<cuda_detail::blocks_for(no * ni), cuda_detail::threads, 0,
                                         device::stream_of(tag)>>>(o0, no, n, inner, i0, ni, s, inner == 1 || mean, x, y);
    cuda_detail::check_launch();
}
/// gx[o, k, i] += s * gy[o, i] over the block.
template <class T>
void reduce_axis_bwd(cuda tag, std::int64_t o0, std::int64_t o1, std::int64_t n, std::int64_t inner, std::int64_t i0,
                     std::int64_t i1, T s, const T* gy, T* gx) {
    const std::int64_t no = o1 - o0, ni = i1 - i0;
    if (no <= 0 || ni <= 0 || n <= 0)
        return;
    cuda_detail::reduce_axis_bwd_kernel<T><<<cuda_detail::blocks_for(no * n * ni), cuda_detail::threads, 0,
                                             device::stream_of(tag)>>>(o0, no, n, inner, i0, ni, s, gy, gx);
    cuda_detail::check_launch();
}

/// Host ids copied into the context's (device) arena, valid until its reset; null for none.
/// The copy is queued on the tag's stream; the host ids may be reused when this returns.
template <class Ctx>
const std::int64_t* upload_ids(cuda tag, Ctx& ctx, std::span<const std::int64_t> ids) {
    const auto n = static_cast<std::int64_t>(ids.size());
    if (n == 0)
        return nullptr;
    std::int64_t* d = ctx.template scratch<std::int64_t>(n);
    XREC_CUDA_CHECK(cudaMemcpyAsync(d, ids.data(), static_cast<std::size_t>(n) * sizeof(std::int64_t),
                                    cudaMemcpyHostToDevice, device::stream_of(tag)));
    return d;
}

/// The position of the first id of ids[0, n) (device memory) outside [0, rows), or -1.
/// Waits for the result.
inline std::int64_t first_id_outside(cuda tag, std::int64_t n, const std::int64_t* ids, std::int64_t rows) {
    if (n <= 0)
        return -1;
    const cudaStream_t s = device::stream_of(tag);
    unsigned long long* b = cuda_detail::begin_scan(s);
    cuda_detail::first_id_outside_kernel<std::int64_t><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, s>>>(n, ids, rows, b);
    cuda_detail::check_launch();
    return cuda_detail::read_first(b, s);
}

/// The index of the first NaN or infinite element of x[0, n), or -1. Waits for the result.
template <class T>
std::int64_t first_nonfinite(cuda tag, std::int64_t n, const T* x) {
    if (n <= 0)
        return -1;
    const cudaStream_t s = device::stream_of(tag);
    unsigned long long* b = cuda_detail::begin_scan(s);
    cuda_detail::first_nonfinite_kernel<T><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, s>>>(n, x, b);
    cuda_detail::check_launch();
    return cuda_detail::read_first(b, s);
}
/// Rows table[ids[k], :] for k < n, ids in device memory: the first non-finite element as
/// k * dim + d, or -1. Waits for the result.
template <class T>
std::int64_t first_nonfinite_rows(cuda tag, const T* table, std::int64_t dim, const std::int64_t* ids, std::int64_t n) {
    if (n <= 0 || dim <= 0)
        return -1;
    const cudaStream_t s = device::stream_of(tag);
    unsigned long long* b = cuda_detail::begin_scan(s);
    cuda_detail::first_nonfinite_rows_kernel<T>
        <<<cuda_detail::blocks_for(n * dim), cuda_detail::threads, 0, s>>>(table, dim, ids, n, b);
    cuda_detail::check_launch();
    return cuda_detail::read_first(b, s);
}

/// out[0] = mean BCE with logits over n elements (loss::bce_with_logits): one block, terms
/// summed in double in a fixed order.
template <class T>
void bce_with_logits_fwd(cuda tag, std::int64_t n, const T* x, const T* y, T* out) {
    if (n <= 0)
        return;
    cuda_detail::bce_fwd_kernel<T><<<1, cuda_detail::bce_threads, 0, device::stream_of(tag)>>>(n, x, y, out);
    cuda_detail::check_launch();
}
/// gx += s (sigmoid(x) - y), gy -= s x with s = gout[0] / n (gout read on the device).
template <class T>
void bce_with_logits_bwd(cuda tag, std::int64_t n, const T* x, const T* y, const T* gout, T* gx, T* gy) {
    if (n <= 0 || (!gx && !gy))
        return;
    cuda_detail::bce_bwd_kernel<T>
        <<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(n, x, y, gout, gx, gy);
    cuda_detail::check_launch();
}

/// optim::adam's elementwise update (see the cpu kernel in optim/adam.hpp); `pool` unused.
template <class T>
void adam_update(cuda tag, thread_pool* /*pool*/, std::int64_t n, T* p, const T* gr, T* m, T* v, T step_size,
                 T bc2_sqrt, T b1c, T b2, T b2c, T eps, T wd, T shrink, bool l2, bool decay) {
    if (n <= 0)
        return;
    cuda_detail::adam_kernel<T><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(
        n, p, gr, m, v, step_size, bc2_sqrt, b1c, b2, b2c, eps, wd, shrink, l2, decay);
    cuda_detail::check_launch();
}
/// optim::sgd's elementwise update (see the cpu kernel in optim/sgd.hpp); `pool` unused.
template <class T>
void sgd_update(cuda tag, thread_pool* /*pool*/, std::int64_t n, T* p, const T* gr, T* buf, T lr, T wd, T mu, T damp,
                bool use_wd, bool use_mu, bool nest, bool first) {
    if (n <= 0)
        return;
    cuda_detail::sgd_kernel<T><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, device::stream_of(tag)>>>(
        n, p, gr, buf, lr, wd, mu, damp, use_wd, use_mu, nest, first);
    cuda_detail::check_launch();
}

/// optim::coalesce on the device, the ids and rows where the tape left them (device memory):
/// CUB's stable radix sort of (id, position) on the ids' significant bits, run-length
/// encoding into the unique ids and their counts, an exclusive scan for the segment starts,
/// and one thread per (unique id, element) summing its rows in emission order. The merged
/// rows and unique ids replace the gradient's: the same representation, values and order as
/// the cpu merge. Scratch lives in s.work; waits once, for the number of unique ids (the
/// gradient's count is host state). Ids must lie in [0, rows) (the ops that append them
/// check). rowwise_adagrad does not come here: its update merges as it goes
/// (sparse_rows_adagrad) and never waits.
template <class T>
void coalesce_rows(cuda tag, embedding_table<T, cuda>& t, optim::coalesce_scratch<T, cuda>& s, thread_pool* /*pool*/) {
    auto& g = t.grad;
    const std::int64_t n = g.count();
    if (n == 0)
        return;
    XREC_CHECK(n < (std::int64_t{1} << 31), "optim: table '", t.name, "' has ", n,
               " gradient rows in one step; the device merge handles fewer than 2^31");
    const cudaStream_t st = device::stream_of(tag);
    const int ni = static_cast<int>(n);
    int end_bit = 1;  // ids < rows: sort only the bits they use
    while (end_bit < 63 && (std::int64_t{1} << end_bit) < t.rows)
        ++end_bit;

    using key = unsigned long long;  // ids are >= 0: the same order as int64
    std::size_t sort_bytes = 0, rle_bytes = 0, scan_bytes = 0;
    XREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const key*>(nullptr),
                                                    static_cast<key*>(nullptr), static_cast<const int*>(nullptr),
                                                    static_cast<int*>(nullptr), ni, 0, end_bit, st));
    XREC_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(nullptr, rle_bytes, static_cast<const key*>(nullptr),
                                                       static_cast<key*>(nullptr), static_cast<int*>(nullptr),
                                                       static_cast<int*>(nullptr), ni, st));
    XREC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<const int*>(nullptr),
                                                  static_cast<int*>(nullptr), ni, st));
    std::size_t temp_bytes = sort_bytes > rle_bytes ? sort_bytes : rle_bytes;
    temp_bytes = temp_bytes > scan_bytes ? temp_bytes : scan_bytes;

    // Layout of s.work (8-byte aligned pieces): sorted keys, unique keys, positions in/out,
    // counts, starts, the run count, CUB's temporary storage.
    const std::size_t nk = static_cast<std::size_t>(n) * sizeof(key), n32 = static_cast<std::size_t>(n) * sizeof(int);
    const std::size_t off_uniq = cuda_detail::round8(nk), off_pos_in = off_uniq + cuda_detail::round8(nk),
                      off_pos_out = off_pos_in + cuda_detail::round8(n32),
                      off_counts = off_pos_out + cuda_detail::round8(n32),
                      off_starts = off_counts + cuda_detail::round8(n32), off_runs = off_starts + cuda_detail::round8(n32),
                      off_temp = off_runs + 8, total = off_temp + cuda_detail::round8(temp_bytes);
    const auto need = static_cast<std::int64_t>(total / 8);
    if (s.work.size() < need)
        s.work = buffer<std::int64_t, cuda>(need + need / 4);  // fresh (no copy of the old scratch)
    char* base = reinterpret_cast<char*>(s.work.data());
    auto* keys_out = reinterpret_cast<key*>(base);
    auto* uniq = reinterpret_cast<key*>(base + off_uniq);
    auto* pos_in = reinterpret_cast<int*>(base + off_pos_in);
    auto* pos_out = reinterpret_cast<int*>(base + off_pos_out);
    auto* counts = reinterpret_cast<int*>(base + off_counts);
    auto* starts = reinterpret_cast<int*>(base + off_starts);
    auto* runs = reinterpret_cast<int*>(base + off_runs);
    void* temp = base + off_temp;

    cuda_detail::iota_kernel<int><<<cuda_detail::blocks_for(n), cuda_detail::threads, 0, st>>>(n, pos_in);
    cuda_detail::check_launch();
    std::size_t bytes = sort_bytes;
    XREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, reinterpret_cast<const key*>(g.ids.data()), keys_out,
                                                    static_cast<const int*>(pos_in), pos_out, ni, 0, end_bit, st));
    bytes = rle_bytes;
    XREC_CUDA_CHECK(
        cub::DeviceRunLengthEncode::Encode(temp, bytes, static_cast<const key*>(keys_out), uniq, counts, runs, ni, st));
    int u_host = 0;
    XREC_CUDA_CHECK(cudaMemcpyAsync(&u_host, runs, sizeof(int), cudaMemcpyDeviceToHost, st));
    XREC_CUDA_CHECK(cudaStreamSynchronize(st));
    const std::int64_t u = u_host, dim = t.dim;
    bytes = scan_bytes;
    XREC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp, bytes, static_cast<const int*>(counts), starts, u_host, st));
    if (s.rows.size() < u * dim)
        s.rows = buffer<T, cuda>(u * dim > g.rows.size() ? u * dim : g.rows.size());
    cuda_detail::merge_rows_kernel<T><<<cuda_detail::blocks_for(u * dim), cuda_detail::threads, 0, st>>>(
        u, dim, starts, counts, pos_out, g.rows.data(), s.rows.data());
    cuda_detail::check_launch();
    g.ids.clear();  // the sort has read them: the unique ids take their place
    g.ids.append(reinterpret_cast<const std::int64_t*>(uniq), u);
    g.rows.swap(s.rows);
}

}  // namespace xrec::kernels
