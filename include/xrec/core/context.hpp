#pragma once
// The two contexts a forward pass runs against: train_ctx records a tape, infer_ctx
// records nothing and allocates nothing in steady state.
#include <concepts>
#include <cstdint>
#include <memory>
#include <vector>

#include "xrec/core/arena.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/parallel.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/core/tape.hpp"
#include "xrec/core/tensor.hpp"
#include "xrec/core/var.hpp"

namespace xrec {

namespace detail {
inline void check_epoch(std::uint32_t made, std::uint32_t now) {
    XREC_CHECK(made == 0 || made == now, "xrec: a var made in context cycle ", made,
               " was used after the context was reset (now cycle ", now,
               "); its memory has been reused. Keep results only until the next reset().");
}

/// The var of a context input: the caller's (host) memory itself where the backend's memory
/// is host memory, else a copy in the context's arena (valid until its reset).
template <class B, class T>
var<T> input_var(arena<B>& mem, tensor_view<const T> x, memory_space where = memory_space::host) {
    if constexpr (backend_memory<B>::host_accessible) {
        (void)where;
        return {const_cast<T*>(x.data), x.s, nullptr, 0};
    } else {
        const std::int64_t n = x.numel();
        T* d = mem.template allocate_n<T>(n);
        const auto bytes = static_cast<std::size_t>(n) * sizeof(T);
        if (n > 0 && where == memory_space::host) backend_memory<B>::copy(d, x.data, bytes);
        if (n > 0 && where == memory_space::backend) backend_memory<B>::copy_async(d, x.data, bytes);  // no wait
        return {d, x.s, nullptr, mem.epoch()};
    }
}

}  // namespace detail

/// Training context: forward values and gradients come from an arena rewound by
/// `reset()` once per step, each op records one node on the tape, and `backward(loss)`
/// replays the tape in reverse. Owns the thread pool that ops split their work over
/// (`threads` in options; results depend only on the seed and the thread count) and the
/// counter-based random streams of dropout. One train_ctx per training thread.
template <class T, class B>
class train_ctx {
public:
    using value_type = T;
    using backend = B;
    static constexpr bool records = true;

    struct options {
        std::uint64_t seed = 0;
        int threads = 1;
        std::size_t reserve_bytes = 0;
    };

    train_ctx() : train_ctx(options{}) {}
    explicit train_ctx(options o)
        : opt_(o), values_(o.reserve_bytes), tape_(o.reserve_bytes / 8),
          pool_(o.threads > 1 ? std::make_unique<thread_pool>(o.threads) : nullptr) {}

    /// A var over caller memory that receives no gradient (features, labels). Caller memory
    /// is host memory; on a backend whose memory the host cannot address (cuda) the values
    /// are copied into the arena first (detail::input_var).
    var<T> input(tensor_view<const T> x) { return detail::input_var<B>(values_, x); }
    /// The same for memory that may already be the backend's (memory_space::backend: a batch
    /// staged on the device is copied there without a round trip).
    var<T> input(tensor_view<const T> x, memory_space where) { return detail::input_var<B>(values_, x, where); }
    /// A var over caller memory whose gradient is accumulated into `grad` (same size),
    /// e.g. for gradient checks or for inputs produced outside the tape.
    var<T> leaf(tensor_view<T> x, T* grad) {
        auto* c = tape_.scratch<grad_cell<T>>(1);
        c->grad = grad;
        return {x.data, x.s, c, 0};
    }
    /// A dense parameter: its value in the store, its gradient accumulated into the store.
    var<T> param(const dense_param<T, B>& p) {
        auto* c = tape_.scratch<grad_cell<T>>(1);
        c->grad = p.grad();
        return {p.value(), p.s, c, 0};
    }
    /// A new value of shape s from the arena; with `requires_grad` it gets a gradient cell.
    var<T> make(const shape& s, bool requires_grad) {
        var<T> v{values_.template allocate_n<T>(s.numel()), s, nullptr, epoch()};
        if (requires_grad) {
            v.g = tape_.scratch<grad_cell<T>>(1);
            v.g->grad = nullptr;
        }
        return v;
    }
    /// Arena memory for n elements of U, valid until reset (saved values, masks).
    template <class U>
    U* scratch(std::int64_t n) {
        return values_.template allocate_n<U>(n);
    }

    /// Host memory on the tape, valid until reset, whatever the backend: what a node keeps
    /// beyond its fixed fields (the var lists of concat/split, copies of host indices).
    template <class U>
    U* tape_scratch(std::int64_t n) {
        return tape_.template scratch<U>(n);
    }
    /// Host memory valid until reset, whatever the backend, for host-side bookkeeping of a
    /// forward (arrays of vars, selected ids): the value arena where it is host memory, else
    /// the tape's.
    template <class U>
    U* host_scratch(std::int64_t n) {
        if constexpr (backend_memory<B>::host_accessible)
            return values_.template allocate_n<U>(n);
        else
            return tape_.template scratch<U>(n);
    }

    /// The gradient buffer of v, materialised as zeros on first use; null if v needs none.
    T* grad(const var<T>& v) {
        if (!v.g) return nullptr;
        if (!v.g->grad) {
            v.g->grad = values_.template allocate_n<T>(v.numel());
            backend_memory<B>::zero(v.g->grad, static_cast<std::size_t>(v.numel()) * sizeof(T));
        }
        return v.g->grad;
    }

    /// Appends a node of type N to the tape.
    template <class N>
    N& record() {
        return tape_.template push<N>();
    }

    /// Refuses a var whose memory was rewound by reset().
    void check(const var<T>& v) const { detail::check_epoch(v.epoch, epoch()); }

    /// Seeds d(loss)/d(loss) = `seed` for every element of `loss` and replays the tape.
    void backward(const var<T>& loss, T seed = T(1)) {
        check(loss);
        XREC_CHECK(loss.requires_grad(), "train_ctx::backward: the loss does not depend on any parameter");
        T* g = grad(loss);
        if constexpr (backend_memory<B>::host_accessible) {
            for (std::int64_t i = 0; i < loss.numel(); ++i) g[i] += seed;
        } else if (seed != T(0)) {
            // Device memory: the host cannot add in place, so the (usually one-element)
            // gradient makes a round trip. A zero seed (the caller set the gradient) skips it.
            std::vector<T> h(static_cast<std::size_t>(loss.numel()));
            const std::size_t bytes = h.size() * sizeof(T);
            backend_memory<B>::copy(h.data(), g, bytes);
            for (T& v : h) v += seed;
            backend_memory<B>::copy(g, h.data(), bytes);
        }
        tape_.replay(this);
    }

    /// Ends the step: rewinds values, gradients and the tape, advances the random step.
    void reset() {
        tape_.reset();
        values_.reset();
        ++step_;
        random_ops_ = 0;
    }

    /// A fresh random stream for one random op of this step: a pure function of
    /// (seed, step, op index within the step), never of threads.
    rng_stream next_stream() {
        return rng_stream{philox{mix_seed(opt_.seed, 0x7261ull)}, (step_ << 24) | random_ops_++};
    }

    bool training() const noexcept { return training_; }
    /// Turns dropout and other train-only behaviour off (evaluation with a train_ctx).
    void set_training(bool on) noexcept { training_ = on; }
    thread_pool* pool() noexcept { return pool_.get(); }
    int threads() const noexcept { return pool_ ? pool_->size() : 1; }
    std::uint32_t epoch() const noexcept { return values_.epoch(); }
    std::uint64_t step() const noexcept { return step_; }
    std::size_t tape_size() const noexcept { return tape_.size(); }
    const arena<B>& value_arena() const noexcept { return values_; }

private:
    options opt_;
    arena<B> values_;
    tape tape_;
    std::unique_ptr<thread_pool> pool_;
    std::uint64_t step_ = 0;
    std::uint64_t random_ops_ = 0;
    bool training_ = true;
};

/// Inference context: no tape, no gradients, no threads of its own. Values come from a
/// workspace arena; `reset()` (call once per request) rewinds it, and after the first
/// request of the largest batch (or `reserve`) a call performs no heap allocation.
/// One infer_ctx per serving thread; the model itself is shared and read-only.
template <class T, class B>
class infer_ctx {
public:
    using value_type = T;
    using backend = B;
    static constexpr bool records = false;

    explicit infer_ctx(std::size_t reserve_bytes = 0) : ws_(reserve_bytes) {}

    var<T> input(tensor_view<const T> x) { return detail::input_var<B>(ws_, x); }
    var<T> input(tensor_view<const T> x, memory_space where) { return detail::input_var<B>(ws_, x, where); }
    var<T> param(const dense_param<T, B>& p) const { return {p.value(), p.s, nullptr, 0}; }
    var<T> make(const shape& s, bool /*requires_grad*/ = false) {
        return {ws_.template allocate_n<T>(s.numel()), s, nullptr, ws_.epoch()};
    }
    template <class U>
    U* scratch(std::int64_t n) {
        return ws_.template allocate_n<U>(n);
    }
    /// Host memory valid until reset, whatever the backend (see train_ctx::host_scratch): the
    /// workspace where it is host memory, else a host arena of its own.
    template <class U>
    U* host_scratch(std::int64_t n) {
        if constexpr (backend_memory<B>::host_accessible)
            return ws_.template allocate_n<U>(n);
        else
            return host_.template allocate_n<U>(n);
    }
    T* grad(const var<T>&) const noexcept { return nullptr; }
    void check(const var<T>& v) const { detail::check_epoch(v.epoch, ws_.epoch()); }

    /// Starts a new request: rewinds the workspace.
    void reset() {
        ws_.reset();
        if constexpr (!backend_memory<B>::host_accessible) host_.reset();
    }
    /// Reserves workspace so the first request allocates nothing either.
    void reserve(std::size_t bytes) { ws_.reserve(bytes); }

    static constexpr bool training() noexcept { return false; }
    static constexpr thread_pool* pool() noexcept { return nullptr; }
    static constexpr int threads() noexcept { return 1; }
    rng_stream next_stream() const { return {}; }
    std::uint32_t epoch() const noexcept { return ws_.epoch(); }
    const arena<B>& workspace() const noexcept { return ws_; }

private:
    arena<B> ws_;
    arena<> host_;  // host_scratch on a backend with device memory (unused on the cpu)
};

/// What every context provides; ops and layers are written against this.
template <class C>
concept context = requires(C& c, const var<typename C::value_type>& v, shape s) {
    typename C::value_type;
    typename C::backend;
    { C::records } -> std::convertible_to<bool>;
    { c.make(s, true) } -> std::same_as<var<typename C::value_type>>;
    c.check(v);
    c.reset();
};

}  // namespace xrec
