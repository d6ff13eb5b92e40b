#pragma once
// Binary cross-entropy on logits, the loss of CTR models.
#include <cstdint>

#include "xrec/backend/kernels.hpp"
#include "xrec/backend/tags.hpp"
#include "xrec/loss/common.hpp"

namespace xrec::kernels {

XREC_KERNEL_FALLBACK(bce_with_logits_fwd)
XREC_KERNEL_FALLBACK(bce_with_logits_bwd)

/// out[0] = 1/n sum_i [ max(x_i, 0) - x_i y_i + log1p(exp(-|x_i|)) ], summed in double in
/// index order (loss::bce_with_logits).
template <class T, class A>
void bce_with_logits_fwd(cpu<A>, std::int64_t n, const T* x, const T* y, T* out) {
    double acc = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        const T xi = x[i];
        acc += static_cast<double>((xi > T(0) ? xi : T(0)) - xi * y[i] + std::log1p(std::exp(-std::fabs(xi))));
    }
    out[0] = static_cast<T>(acc / static_cast<double>(n));
}
/// Backward of bce_with_logits_fwd with s = gout[0] / n: gx_i += s (sigmoid(x_i) - y_i) when
/// gx is not null, gy_i -= s x_i when gy is not null.
template <class T, class A>
void bce_with_logits_bwd(cpu<A>, std::int64_t n, const T* x, const T* y, const T* gout, T* gx, T* gy) {
    const T scale = gout[0] / static_cast<T>(n);
    if (gx)
        for (std::int64_t i = 0; i < n; ++i) gx[i] += scale * (loss::detail::sigmoid(x[i]) - y[i]);
    if (gy)
        for (std::int64_t i = 0; i < n; ++i) gy[i] -= scale * x[i];
}

}  // namespace xrec::kernels

namespace xrec::loss {

namespace detail {
/// Backward of bce_with_logits. Saves the logits x, the labels y and the result L:
/// dL/dx_i = (sigmoid(x_i) - y_i) / n and, when the labels need a gradient, dL/dy_i = -x_i / n
/// (kernels::bce_with_logits_bwd, where the tensors live).
template <class Ctx>
struct bce_node : tape_node {
    using T = typename Ctx::value_type;
    var<T> x, y, out;
    static void backward(tape_node* self, void* c) {
        auto& nd = *static_cast<bce_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gout = nd.out.g->grad;
        if (!gout) return;
        T* gx = ctx.grad(nd.x);
        T* gy = ctx.grad(nd.y);
        if (gx || gy)
            kernels::bce_with_logits_bwd(typename Ctx::backend{}, nd.x.numel(), static_cast<const T*>(nd.x.data),
                                         static_cast<const T*>(nd.y.data), gout, gx, gy);
    }
};
}  // namespace detail

/// Binary cross-entropy with logits, averaged over all elements (PyTorch's
/// BCEWithLogitsLoss with reduction "mean"):
///
///     L = 1/n sum_i [ max(x_i, 0) - x_i y_i + log1p(exp(-|x_i|)) ]
///
/// which equals -[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))] but never overflows, so
/// logits of +-100 give finite values and gradients. `logits` and `labels` may have any
/// shapes with the same number n > 0 of elements; labels are usually 0/1 but soft labels in
/// [0, 1] are fine. Labels normally need no gradient; if they carry one it is -x/n.
/// Returns a var of shape {1}. Backward saves both inputs and no intermediate.
template <class Ctx, class T = typename Ctx::value_type>
var<T> bce_with_logits(Ctx& ctx, const var<T>& logits, const var<T>& labels) {
    ctx.check(logits);
    ctx.check(labels);
    const std::int64_t n = logits.numel();
    XREC_CHECK(n > 0, "bce_with_logits: empty logits ", logits.s.str());
    XREC_CHECK(labels.numel() == n, "bce_with_logits: logits ", logits.s.str(), " and labels ", labels.s.str(),
               " differ in size");
    var<T> out = detail::scalar_result(ctx, logits.requires_grad() || labels.requires_grad());
    kernels::bce_with_logits_fwd(typename Ctx::backend{}, n, static_cast<const T*>(logits.data),
                                 static_cast<const T*>(labels.data), out.data);
    if constexpr (Ctx::records) {
        if (out.requires_grad()) {
            auto& nd = ctx.template record<detail::bce_node<Ctx>>();
            nd.x = logits;
            nd.y = labels;
            nd.out = out;
        }
    }
    return out;
}

}  // namespace xrec::loss
