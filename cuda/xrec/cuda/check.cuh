#pragma once
// XREC_CUDA_CHECK: every CUDA runtime call xrec makes goes through it, so a failure
// surfaces as an xrec::error naming the call, the file and the line.
#include <cstdio>

#include <cuda_runtime.h>

#include "xrec/core/error.hpp"

namespace xrec::detail {

[[noreturn]] inline void cuda_fail(cudaError_t e, const char* call, const char* file, int line) {
    raise(file, line, "CUDA call '", call, "' failed at ", file, ":", line, ": ", cudaGetErrorName(e), " (",
          cudaGetErrorString(e), ")");
}

// For destructors and other noexcept paths: report on stderr instead of throwing.
inline void cuda_report(cudaError_t e, const char* call, const char* file, int line) noexcept {
    std::fprintf(stderr, "xrec: CUDA call '%s' failed at %s:%d: %s (%s)\n", call, file, line, cudaGetErrorName(e),
                 cudaGetErrorString(e));
}

}  // namespace xrec::detail

/// Evaluates a CUDA runtime call once; throws xrec::error naming it, the file and the line
/// unless it returned cudaSuccess.
#define XREC_CUDA_CHECK(call)                                                        \
    do {                                                                             \
        const cudaError_t xrec_cuda_status_ = (call);                                \
        if (xrec_cuda_status_ != cudaSuccess)                                        \
            ::xrec::detail::cuda_fail(xrec_cuda_status_, #call, __FILE__, __LINE__); \
    } while (0)

/// Like XREC_CUDA_CHECK for paths that must not throw (destructors): reports on stderr.
#define XREC_CUDA_CHECK_NOTHROW(call)                                                  \
    do {                                                                               \
        const cudaError_t xrec_cuda_status_ = (call);                                  \
        if (xrec_cuda_status_ != cudaSuccess)                                          \
            ::xrec::detail::cuda_report(xrec_cuda_status_, #call, __FILE__, __LINE__); \
    } while (0)
