#pragma once
// The CUDA backend tag on its own, so that CUDA translation units can name it without the
// xsimd headers that tags.hpp needs for the cpu tag.

namespace xrec {

/// The CUDA backend tag. Its kernels live in cuda/xrec/cuda/*.cuh and are visible only to
/// CUDA translation units; naming the tag needs no CUDA header.
///
/// Unlike the cpu tag it carries one value: the CUDA stream the kernels are queued on, as an
/// opaque pointer (a cudaStream_t; null is the legacy default stream), so that a caller
/// passes its stream explicitly with the tag, `kernels::gemm(cuda{s}, ...)`, and the code
/// written against `B{}` keeps working on the default stream. Kernels never synchronise the
/// stream they are given.
struct cuda {
    void* stream = nullptr;
};

}  // namespace xrec
