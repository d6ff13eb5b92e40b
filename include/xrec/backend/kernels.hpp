#pragma once
// Kernel dispatch: every kernel is an overload on the backend tag. This header declares
// the catch-all overloads that turn a missing (kernel, backend) pair into one
// static_assert sentence at compile time; each backend's header adds the real overloads.
// The catch-all takes C varargs so that any real overload wins overload resolution.
#include <cstdint>

#include "xrec/backend/tags.hpp"

#define XREC_KERNEL_FALLBACK(name)                                                              \
    template <class B>                                                                          \
    void name(const B&, ...) {                                                                  \
        static_assert(::xrec::always_false<B>, "xrec: kernel '" #name                           \
                      "' has no implementation for this backend tag; include that backend's "  \
                      "kernel header or add an overload kernels::" #name "(tag, ...)");         \
    }

namespace xrec::kernels {
XREC_KERNEL_FALLBACK(gemm)
XREC_KERNEL_FALLBACK(gemm_then)
XREC_KERNEL_FALLBACK(gemm_produce_then)
XREC_KERNEL_FALLBACK(fill)
XREC_KERNEL_FALLBACK(copy)
XREC_KERNEL_FALLBACK(add)
XREC_KERNEL_FALLBACK(sub)
XREC_KERNEL_FALLBACK(mul)
XREC_KERNEL_FALLBACK(axpy)
XREC_KERNEL_FALLBACK(scale)
XREC_KERNEL_FALLBACK(add_row_bias)
XREC_KERNEL_FALLBACK(col_sums_acc)
XREC_KERNEL_FALLBACK(dot)
XREC_KERNEL_FALLBACK(sum)
XREC_KERNEL_FALLBACK(activation_fwd)
XREC_KERNEL_FALLBACK(activation_bwd)
XREC_KERNEL_FALLBACK(gather_rows)
XREC_KERNEL_FALLBACK(scatter_add_rows)
XREC_KERNEL_FALLBACK(mul_acc)
XREC_KERNEL_FALLBACK(add_scalar)
XREC_KERNEL_FALLBACK(max_value)
XREC_KERNEL_FALLBACK(exp_shifted)
XREC_KERNEL_FALLBACK(softmax_rows)
XREC_KERNEL_FALLBACK(softmax_bwd_rows)
XREC_KERNEL_FALLBACK(row_moments)
XREC_KERNEL_FALLBACK(layer_norm_fwd)
XREC_KERNEL_FALLBACK(layer_norm_bwd)
XREC_KERNEL_FALLBACK(dropout_mask)
XREC_KERNEL_FALLBACK(bag_sum)
XREC_KERNEL_FALLBACK(bag_max)
// Training-path kernels (cpu: cpu_kernels.hpp; cuda: cuda/xrec/cuda/train.cuh).
XREC_KERNEL_FALLBACK(copy_block)
XREC_KERNEL_FALLBACK(add_block)
XREC_KERNEL_FALLBACK(reduce_axis)
XREC_KERNEL_FALLBACK(reduce_axis_bwd)
XREC_KERNEL_FALLBACK(upload_ids)
XREC_KERNEL_FALLBACK(first_id_outside)
XREC_KERNEL_FALLBACK(first_nonfinite)
XREC_KERNEL_FALLBACK(first_nonfinite_rows)

// linear_fixed carries its sizes as template arguments, so it needs its own catch-all.
template <std::int64_t In, std::int64_t Out, class B>
void linear_fixed(const B&, ...) {
    static_assert(::xrec::always_false<B>,
                  "xrec: kernel 'linear_fixed' has no implementation for this backend tag; include that "
                  "backend's kernel header or add an overload kernels::linear_fixed<In, Out>(tag, ...)");
}
}  // namespace xrec::kernels
