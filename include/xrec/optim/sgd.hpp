#pragma once
// Stochastic gradient descent with momentum over the dense flat buffer.
#include <cstdint>
#include <string>
#include <vector>

#include "xrec/optim/common.hpp"

namespace xrec::kernels {

XREC_KERNEL_FALLBACK(sgd_update)

/// The elementwise update of optim::sgd over n elements (p values, g gradients, buf the
/// momentum buffer, used when use_mu), one vectorised loop split over `pool`:
///   g = g + wd p (use_wd);  b = first ? g : mu b + damp g;  g = nest ? g + mu b : b (use_mu);
///   p = p - lr g
template <class T, class A>
void sgd_update(cpu<A>, thread_pool* pool, std::int64_t n, T* p, const T* gr, T* buf, T lr, T wd, T mu, T damp,
                bool use_wd, bool use_mu, bool nest, bool first) {
    optim::detail::dense_loop<T, cpu<A>>(pool, n, [&](auto tag, std::int64_t i) {
        using V = typename decltype(tag)::type;
        V x = optim::detail::load<V>(p + i);
        V g = optim::detail::load<V>(gr + i);
        if (use_wd) g = g + V(wd) * x;
        if (use_mu) {
            V b = first ? g : V(mu) * optim::detail::load<V>(buf + i) + V(damp) * g;
            optim::detail::store(buf + i, b);
            g = nest ? g + V(mu) * b : b;
        }
        optim::detail::store(p + i, x - V(lr) * g);
    });
}

}  // namespace xrec::kernels

namespace xrec::optim {

/// Options of `sgd`, with PyTorch's meaning (torch.optim.SGD).
struct sgd_options {
    double lr = 0.01;
    double momentum = 0;
    double dampening = 0;
    double weight_decay = 0;  // L2: added to the gradient as weight_decay * p
    bool nesterov = false;
};

/// SGD with momentum on every dense parameter of a store, as torch.optim.SGD does it:
///
///     g   = grad + weight_decay * p
///     b   = g                                  on the first step
///     b   = momentum * b + (1 - dampening) * g  afterwards
///     g   = g + momentum * b   (nesterov)   or   g = b   (otherwise)
///     p   = p - lr * g
///
/// (with momentum 0 the buffer is not kept and g is used directly). One vectorised loop over
/// the store's flat buffer; embedding tables are left to a sparse optimizer. State: the
/// momentum buffer (flat, like the values) as "sgd.<param>.momentum_buffer" and the step
/// counter "sgd.step" (the first step copies g into the buffer). Nesterov needs momentum > 0
/// and dampening 0, as in PyTorch.
template <class T, class B>
class sgd {
public:
    explicit sgd(param_store<T, B>& store, sgd_options o = {}) : store_(&store), o_(o) {
        XREC_CHECK(o.lr >= 0 && o.momentum >= 0 && o.weight_decay >= 0, "sgd: lr ", o.lr, ", momentum ", o.momentum,
                   " and weight_decay ", o.weight_decay, " must be >= 0");
        XREC_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0),
                   "sgd: nesterov momentum needs momentum > 0 and dampening 0, got momentum ", o.momentum,
                   ", dampening ", o.dampening);
        ensure_state();
    }

    /// One update of every dense parameter from the store's gradients.
    void step() {
        ensure_state();
        const bool first = step_.get() == 0;
        step_.advance();
        const T lr = static_cast<T>(o_.lr), wd = static_cast<T>(o_.weight_decay), mu = static_cast<T>(o_.momentum),
                damp = static_cast<T>(1 - o_.dampening);
        const bool use_wd = o_.weight_decay != 0, use_mu = o_.momentum != 0, nest = o_.nesterov;
        kernels::sgd_update(B{}, pool_, store_->dense_size(), store_->values(), static_cast<const T*>(store_->grads()),
                            buf_.data(), lr, wd, mu, damp, use_wd, use_mu, nest, first);
    }

    double lr() const noexcept { return o_.lr; }
    void set_lr(double lr) noexcept { o_.lr = lr; }
    const sgd_options& options() const noexcept { return o_; }
    /// Threads for the update (null: the calling thread). The result does not depend on it.
    void set_pool(thread_pool* pool) noexcept { pool_ = pool; }

    /// The step counter and, with momentum, each parameter's momentum buffer.
    std::vector<named_tensor<T>> state() {
        ensure_state();
        std::vector<named_tensor<T>> out{step_.named("sgd")};
        if (o_.momentum != 0) detail::append_dense_views(out, *store_, "sgd", "momentum_buffer", buf_.data());
        return out;
    }
    std::int64_t steps() const { return step_.get(); }

private:
    void ensure_state() {
        if (o_.momentum != 0 && buf_.size() < store_->dense_size()) buf_.resize(store_->dense_size());
    }

    param_store<T, B>* store_;
    sgd_options o_;
    buffer<T, B> buf_;
    detail::step_counter<T, B> step_;
    thread_pool* pool_ = nullptr;
};

}  // namespace xrec::optim
