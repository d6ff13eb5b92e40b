#pragma once
// Adam and AdamW over the dense flat buffer.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "xrec/optim/common.hpp"

namespace xrec::kernels {

XREC_KERNEL_FALLBACK(adam_update)

/// The elementwise update of optim::adam over n elements (p values, g gradients, m and v
/// moments), one vectorised loop split over `pool`:
///   g = g + wd p (l2);  p = p shrink (decay);  m = m + b1c (g - m);  v = b2 v + b2c g^2;
///   p = p - step_size m / (sqrt(v) / bc2_sqrt + eps)
/// No FMA: a vector lane and the scalar tail round alike (and so does the cuda twin).
template <class T, class A>
void adam_update(cpu<A>, thread_pool* pool, std::int64_t n, T* p, const T* gr, T* m, T* v, T step_size, T bc2_sqrt,
                 T b1c, T b2, T b2c, T eps, T wd, T shrink, bool l2, bool decay) {
    optim::detail::dense_loop<T, cpu<A>>(pool, n, [&](auto tag, std::int64_t i) {
        using V = typename decltype(tag)::type;
        V x = optim::detail::load<V>(p + i);
        V g = optim::detail::load<V>(gr + i);
        if (l2) g = g + V(wd) * x;
        if (decay) x = x * V(shrink);
        V mi = optim::detail::load<V>(m + i);
        mi = mi + V(b1c) * (g - mi);
        V vi = optim::detail::load<V>(v + i) * V(b2) + V(b2c) * (g * g);
        optim::detail::store(m + i, mi);
        optim::detail::store(v + i, vi);
        const V denom = xsimd::sqrt(vi) / V(bc2_sqrt) + V(eps);
        optim::detail::store(p + i, x - V(step_size) * (mi / denom));
    });
}

}  // namespace xrec::kernels

namespace xrec::optim {

/// Options of `adam` and `adamw`, with PyTorch's meaning (torch.optim.Adam / AdamW).
/// `decoupled` false: weight_decay is an L2 term added to the gradient (Adam);
/// true: the weights shrink by lr * weight_decay before the step (AdamW).
struct adam_options {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0;
    bool decoupled = false;
};

/// Adam (Kingma & Ba, 2015) on every dense parameter of a store, step for step as
/// torch.optim.Adam (amsgrad off). At step t (counting from 1):
///
///     g  = grad + weight_decay * p              (L2, decoupled == false)
///     p  = p * (1 - lr * weight_decay)          (decoupled == true, AdamW)
///     m  = m + (1 - beta1) * (g - m)
///     v  = beta2 * v + (1 - beta2) * g^2
///     p  = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
///
/// One vectorised loop over the store's flat buffer (elementwise, so the result does not
/// depend on the thread count); embedding tables are left to a sparse optimizer. State:
/// "<name>.<param>.exp_avg", "<name>.<param>.exp_avg_sq" (name "adam" or "adamw") and the
/// step counter "<name>.step" that the bias corrections use.
template <class T, class B>
class adam {
public:
    explicit adam(param_store<T, B>& store, adam_options o = {}) : adam(store, o, "adam") {}

    /// One update of every dense parameter from the store's gradients.
    void step() {
        ensure_state();
        const std::int64_t t = step_.advance();
        const double bc1 = 1 - std::pow(o_.beta1, static_cast<double>(t));
        const double bc2 = 1 - std::pow(o_.beta2, static_cast<double>(t));
        const T step_size = static_cast<T>(o_.lr / bc1), bc2_sqrt = static_cast<T>(std::sqrt(bc2));
        const T b1c = static_cast<T>(1 - o_.beta1), b2 = static_cast<T>(o_.beta2), b2c = static_cast<T>(1 - o_.beta2),
                eps = static_cast<T>(o_.eps), wd = static_cast<T>(o_.weight_decay),
                shrink = static_cast<T>(1 - o_.lr * o_.weight_decay);
        const bool l2 = o_.weight_decay != 0 && !o_.decoupled, decay = o_.weight_decay != 0 && o_.decoupled;
        kernels::adam_update(B{}, pool_, store_->dense_size(), store_->values(), static_cast<const T*>(store_->grads()),
                             m_.data(), v_.data(), step_size, bc2_sqrt, b1c, b2, b2c, eps, wd, shrink, l2, decay);
    }

    double lr() const noexcept { return o_.lr; }
    void set_lr(double lr) noexcept { o_.lr = lr; }
    const adam_options& options() const noexcept { return o_; }
    /// Threads for the update (null: the calling thread). The result does not depend on it.
    void set_pool(thread_pool* pool) noexcept { pool_ = pool; }

    /// The step counter and each parameter's first and second moments.
    std::vector<named_tensor<T>> state() {
        ensure_state();
        std::vector<named_tensor<T>> out{step_.named(name_)};
        detail::append_dense_views(out, *store_, name_, "exp_avg", m_.data());
        detail::append_dense_views(out, *store_, name_, "exp_avg_sq", v_.data());
        return out;
    }
    std::int64_t steps() const { return step_.get(); }

protected:
    adam(param_store<T, B>& store, adam_options o, const char* name) : store_(&store), o_(o), name_(name) {
        XREC_CHECK(o.lr >= 0 && o.eps >= 0 && o.weight_decay >= 0, name, ": lr ", o.lr, ", eps ", o.eps,
                   " and weight_decay ", o.weight_decay, " must be >= 0");
        XREC_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1, name, ": betas (", o.beta1, ", ",
                   o.beta2, ") must lie in [0, 1)");
        ensure_state();
    }

private:
    void ensure_state() {
        if (m_.size() < store_->dense_size()) {
            m_.resize(store_->dense_size());
            v_.resize(store_->dense_size());
        }
    }

    param_store<T, B>* store_;
    adam_options o_;
    std::string name_;
    buffer<T, B> m_, v_;
    detail::step_counter<T, B> step_;
    thread_pool* pool_ = nullptr;
};

/// The defaults of torch.optim.AdamW: Adam's, with weight_decay 0.01, decoupled.
inline adam_options adamw_defaults() { return {1e-3, 0.9, 0.999, 1e-8, 1e-2, true}; }

/// AdamW (Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019): Adam
/// whose weight decay shrinks the weights, p = p * (1 - lr * weight_decay), instead of
/// entering the gradient; as torch.optim.AdamW. `decoupled` is forced on. State names start
/// with "adamw.".
template <class T, class B>
class adamw : public adam<T, B> {
public:
    explicit adamw(param_store<T, B>& store, adam_options o = adamw_defaults())
        : adam<T, B>(store, force_decoupled(o), "adamw") {}

private:
    static adam_options force_decoupled(adam_options o) {
        o.decoupled = true;
        return o;
    }
};

}  // namespace xrec::optim
