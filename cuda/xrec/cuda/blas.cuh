#pragma once
// cuBLAS for the cuda backend: one handle per thread and device, calls checked by name.
// Only for CUDA translation units; link CUDA::cublas (xrec::cuda carries it).
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "xrec/core/error.hpp"
#include "xrec/cuda/check.cuh"

namespace xrec::detail {

[[noreturn]] inline void cublas_fail(cublasStatus_t s, const char* call, const char* file, int line) {
    raise(file, line, "cuBLAS call '", call, "' failed at ", file, ":", line, ": ", cublasGetStatusName(s), " (",
          cublasGetStatusString(s), ")");
}

}  // namespace xrec::detail

/// Evaluates a cuBLAS call once; throws xrec::error naming it, the file and the line unless
/// it returned CUBLAS_STATUS_SUCCESS.
#define XREC_CUBLAS_CHECK(call)                                                          \
    do {                                                                                 \
        const cublasStatus_t xrec_cublas_status_ = (call);                               \
        if (xrec_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                \
            ::xrec::detail::cublas_fail(xrec_cublas_status_, #call, __FILE__, __LINE__); \
    } while (0)

namespace xrec::device {

/// The calling thread's cuBLAS handle for the current device, created on first use and
/// destroyed with the thread. Handles are not shared between threads (cuBLAS allows one
/// handle per thread without locking). Pointer mode is host; math mode is cuBLAS's default,
/// which keeps float products in float (no TF32), as PyTorch does by default, unless
/// set_gemm_tf32 says otherwise.
inline cublasHandle_t blas_handle() {
    struct handles {
        cublasHandle_t h[64] = {};
        ~handles() {
            for (auto& x : h)
                if (x)
                    (void)cublasDestroy(x);
        }
    };
    static thread_local handles hs;
    int dev = 0;
    XREC_CUDA_CHECK(cudaGetDevice(&dev));
    XREC_CHECK(dev >= 0 && dev < 64, "device::blas_handle: device index ", dev, " out of range");
    if (!hs.h[dev])
        XREC_CUBLAS_CHECK(cublasCreate(&hs.h[dev]));
    return hs.h[dev];
}

/// Whether float GEMMs may run on TF32 tensor cores (inputs rounded to 10 mantissa bits,
/// products accumulated in float). Off by default, as in PyTorch
/// (torch.backends.cuda.matmul.allow_tf32 = False): float stays float. Also switched on by
/// the environment variable XREC_GEMM_TF32=1. Process-wide; read at every product.
inline std::atomic<int>& gemm_tf32_flag() {
    static std::atomic<int> f{[] {
        const char* e = std::getenv("XREC_GEMM_TF32");
        return e && std::strcmp(e, "1") == 0 ? 1 : 0;
    }()};
    return f;
}
inline void set_gemm_tf32(bool on) { gemm_tf32_flag().store(on ? 1 : 0); }
inline bool gemm_tf32() { return gemm_tf32_flag().load() != 0; }

/// C[m x n] = alpha op(A) op(B) + beta C with row-major operands, on `stream`. cuBLAS is
/// column-major, and a row-major matrix read column-major is its transpose, so this computes
/// C^T = op(B)^T op(A)^T with the operands swapped.
template <class T>
void gemm_row_major(cudaStream_t stream, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                    T alpha, const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
                    std::int64_t ldc) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "device::gemm_row_major: float or double");
    constexpr std::int64_t lim = 2147483647;
    XREC_CHECK(m <= lim && n <= lim && k <= lim && lda <= lim && ldb <= lim && ldc <= lim, "kernels::gemm(cuda): ", m,
               " x ", n, " x ", k, " exceeds cuBLAS's 32-bit sizes");
    cublasHandle_t h = blas_handle();
    XREC_CUBLAS_CHECK(cublasSetStream(h, stream));
    if constexpr (std::is_same_v<T, float>)
        XREC_CUBLAS_CHECK(cublasSetMathMode(h, gemm_tf32() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    const cublasOperation_t oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
    if constexpr (std::is_same_v<T, float>)
        XREC_CUBLAS_CHECK(cublasSgemm(h, ob, oa, ni, mi, ki, &alpha, b, static_cast<int>(ldb), a, static_cast<int>(lda),
                                      &beta, c, static_cast<int>(ldc)));
    else
        XREC_CUBLAS_CHECK(cublasDgemm(h, ob, oa, ni, mi, ki, &alpha, b, static_cast<int>(ldb), a, static_cast<int>(lda),
                                      &beta, c, static_cast<int>(ldc)));
}

}  // namespace xrec::device
