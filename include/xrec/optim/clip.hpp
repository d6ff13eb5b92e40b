#pragma once
// Gradient clipping by the global norm.
#include <cmath>
#include <cstdint>

#include "xrec/optim/common.hpp"

namespace xrec::optim {

/// Clips the gradients of a store by their global L2 norm, as
/// torch.nn.utils.clip_grad_norm_ does, and returns the norm before clipping.
///
///     norm = sqrt( sum of dense grad^2  +  sum of merged sparse row grad^2 )
///     c = max_norm / (norm + 1e-6);   if c < 1: every gradient *= c
///
/// The sparse gradients of the tables are merged in place first (`coalesce`: duplicate ids
/// summed in emission order), so the norm is that of the gradient the optimizer will apply,
/// not of the raw emitted rows; the optimizer's own merge then finds nothing left to do.
/// The sum of squares runs in double in a fixed order (dense buffer, then tables in
/// registration order, rows by ascending id), so the result does not depend on threads.
/// A non-finite norm (an inf or NaN gradient) is returned and the gradients are left as
/// they are, so that the caller can skip the step.
template <class T, class B>
double clip_grad_norm(param_store<T, B>& store, double max_norm) {
    XREC_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got ", max_norm);
    coalesce_scratch<T, B> scratch;
    double sq = 0;
    const T* g = store.grads();
    for (std::int64_t i = 0; i < store.dense_size(); ++i) sq += static_cast<double>(g[i]) * static_cast<double>(g[i]);
    for (std::int64_t ti = 0; ti < store.table_count(); ++ti) {
        auto& t = store.table(ti);
        coalesce(t, scratch);
        const T* r = t.grad.rows.data();
        for (std::int64_t i = 0; i < t.grad.count() * t.dim; ++i) sq += static_cast<double>(r[i]) * static_cast<double>(r[i]);
    }
    const double norm = std::sqrt(sq);
    const double c = max_norm / (norm + 1e-6);  // PyTorch's coefficient, clamped to 1 below
    if (!std::isfinite(norm) || c >= 1) return norm;
    const T coef = static_cast<T>(c);
    T* gd = store.grads();
    for (std::int64_t i = 0; i < store.dense_size(); ++i) gd[i] *= coef;
    for (std::int64_t ti = 0; ti < store.table_count(); ++ti) {
        auto& t = store.table(ti);
        T* r = t.grad.rows.data();
        for (std::int64_t i = 0; i < t.grad.count() * t.dim; ++i) r[i] *= coef;
    }
    return norm;
}

/// Not yet on the cuda backend (the norm needs a deterministic device reduction in double):
/// refuses at run time, so that a trainer on the cuda tag compiles and runs with
/// clip_grad_norm off.
template <class T>
double clip_grad_norm(param_store<T, cuda>&, double) {
    XREC_FAIL("clip_grad_norm: not implemented on the cuda backend yet; train with clip_grad_norm = 0");
}

}  // namespace xrec::optim
