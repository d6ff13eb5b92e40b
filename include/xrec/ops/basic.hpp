#pragma once
// Elementwise arithmetic, activations and the linear map: the ops an MLP is made of.
#include "xrec/ops/common.hpp"

namespace xrec::ops {

namespace detail {
enum class binary_kind { add, sub, mul };

/// y = a (+|-|*) b. Backward saves a, b (for mul) and y's gradient cell.
template <class Ctx>
struct binary_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> a, b, y;
    binary_kind kind;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<binary_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        const std::int64_t len = n.y.numel();
        if (T* ga = ctx.grad(n.a)) {
            if (n.kind == binary_kind::mul)
                kernels::mul_acc(B{}, len, gy, n.b.data, ga);
            else
                kernels::add(B{}, len, ga, gy, ga);
        }
        if (T* gb = ctx.grad(n.b)) {
            if (n.kind == binary_kind::add)
                kernels::add(B{}, len, gb, gy, gb);
            else if (n.kind == binary_kind::sub)
                kernels::sub(B{}, len, gb, gy, gb);
            else
                kernels::mul_acc(B{}, len, gy, n.a.data, gb);
        }
    }
};

template <class Ctx, class T>
var<T> binary(Ctx& ctx, const char* name, binary_kind kind, const var<T>& a, const var<T>& b) {
    ctx.check(a);
    ctx.check(b);
    check_same_shape(name, a, b);
    var<T> y = ctx.make(a.s, a.requires_grad() || b.requires_grad());
    using B = typename Ctx::backend;
    switch (kind) {
        case binary_kind::add: kernels::add(B{}, a.numel(), a.data, b.data, y.data); break;
        case binary_kind::sub: kernels::sub(B{}, a.numel(), a.data, b.data, y.data); break;
        case binary_kind::mul: kernels::mul(B{}, a.numel(), a.data, b.data, y.data); break;
    }
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<binary_node<Ctx>>();
            n.a = a;
            n.b = b;
            n.y = y;
            n.kind = kind;
        }
    }
    return y;
}
}  // namespace detail

/// y = a + b, equal shapes.
template <class Ctx, class T = typename Ctx::value_type>
var<T> add(Ctx& ctx, const var<T>& a, const var<T>& b) {
    return detail::binary(ctx, "add", detail::binary_kind::add, a, b);
}
/// y = a - b, equal shapes.
template <class Ctx, class T = typename Ctx::value_type>
var<T> sub(Ctx& ctx, const var<T>& a, const var<T>& b) {
    return detail::binary(ctx, "sub", detail::binary_kind::sub, a, b);
}
/// y = a * b elementwise, equal shapes. Backward saves a and b.
template <class Ctx, class T = typename Ctx::value_type>
var<T> mul(Ctx& ctx, const var<T>& a, const var<T>& b) {
    return detail::binary(ctx, "mul", detail::binary_kind::mul, a, b);
}

namespace detail {
/// y = act(x). Backward saves x and y (sigmoid and tanh differentiate through y).
template <class Ctx>
struct act_node : tape_node {
    using T = typename Ctx::value_type;
    var<T> x, y;
    activation act;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<act_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        T* gx = ctx.grad(n.x);
        if (!gy || !gx) return;
        const std::int64_t len = n.x.numel();
        parallel_for(ctx.pool(), len, policy<typename Ctx::backend>::elementwise_parallel_min,
                     [&](std::int64_t b, std::int64_t e, int) {
                         kernels::activation_bwd(typename Ctx::backend{}, n.act, e - b, n.x.data + b, n.y.data + b,
                                                 gy + b, gx + b);
                     });
    }
};
}  // namespace detail

/// y = act(x) elementwise (identity, relu, sigmoid, tanh, exact-erf gelu).
template <class Ctx, class T = typename Ctx::value_type>
var<T> apply(Ctx& ctx, activation act, const var<T>& x) {
    ctx.check(x);
    if (act == activation::identity) return x;
    var<T> y = ctx.make(x.s, x.requires_grad());
    parallel_for(ctx.pool(), x.numel(), policy<typename Ctx::backend>::elementwise_parallel_min,
                 [&](std::int64_t b, std::int64_t e, int) {
                     kernels::activation_fwd(typename Ctx::backend{}, act, e - b, x.data + b, y.data + b);
                 });
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::act_node<Ctx>>();
            n.x = x;
            n.y = y;
            n.act = act;
        }
    }
    return y;
}
template <class Ctx, class T = typename Ctx::value_type>
var<T> relu(Ctx& ctx, const var<T>& x) { return apply(ctx, activation::relu, x); }
template <class Ctx, class T = typename Ctx::value_type>
var<T> sigmoid(Ctx& ctx, const var<T>& x) { return apply(ctx, activation::sigmoid, x); }
template <class Ctx, class T = typename Ctx::value_type>
var<T> tanh(Ctx& ctx, const var<T>& x) { return apply(ctx, activation::tanh, x); }
template <class Ctx, class T = typename Ctx::value_type>
var<T> gelu(Ctx& ctx, const var<T>& x) { return apply(ctx, activation::gelu, x); }

namespace detail {
/// y = x W^T + b with x [rows, in], W [out, in], b [out]. Backward saves x and W:
/// dx += dy W, dW += dy^T x, db += column sums of dy.
template <class Ctx>
struct linear_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x, w, b, y;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<linear_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        const std::int64_t rows = n.x.rows(), in = n.x.cols(), out = n.w.rows();
        constexpr std::int64_t min_rows = policy<B>::gemm_parallel_min_rows;
        if (T* gx = ctx.grad(n.x))
            parallel_for(ctx.pool(), rows, min_rows, [&](std::int64_t r0, std::int64_t r1, int) {
                kernels::gemm(B{}, false, false, r1 - r0, in, out, T(1), gy + r0 * out, out, n.w.data, in, T(1),
                              gx + r0 * in, in);
            });
        // Output features are split over threads: each dW row is one thread's, no reduction.
        if (T* gw = ctx.grad(n.w))
            parallel_for(ctx.pool(), out, min_rows, [&](std::int64_t o0, std::int64_t o1, int) {
                kernels::gemm(B{}, true, false, o1 - o0, in, rows, T(1), gy + o0, out, n.x.data, in, T(1), gw + o0 * in,
                              in);
            });
        if (n.b.data)
            if (T* gb = ctx.grad(n.b)) kernels::col_sums_acc(B{}, rows, out, gy, gb);
    }
};
}  // namespace detail

/// y = x W^T + b: x [..., in] (any leading extents), W [out, in] (PyTorch's layout),
/// b [out] or a default-constructed var for no bias. Result [..., out].
template <class Ctx, class T = typename Ctx::value_type>
var<T> linear(Ctx& ctx, const var<T>& x, const var<T>& w, const var<T>& b = {}) {
    using B = typename Ctx::backend;
    ctx.check(x);
    XREC_CHECK(w.s.rank == 2, "linear: weight must be [out, in], got ", w.s.str());
    XREC_CHECK(x.s.rank >= 1 && x.cols() == w.cols(), "linear: input ", x.s.str(), " does not match weight ",
               w.s.str(), " (last extent must be ", w.cols(), ")");
    XREC_CHECK(!b.data || (b.numel() == w.rows()), "linear: bias ", b.s.str(), " does not match ", w.rows(),
               " outputs");
    const std::int64_t rows = x.rows(), in = x.cols(), out = w.rows();
    shape ys = x.s;
    ys.dims[static_cast<std::size_t>(ys.rank - 1)] = out;
    var<T> y = ctx.make(ys, any_requires_grad<T>(x, w, b));
    parallel_for(ctx.pool(), rows, policy<B>::gemm_parallel_min_rows, [&](std::int64_t r0, std::int64_t r1, int) {
        kernels::gemm(B{}, false, true, r1 - r0, out, in, T(1), x.data + r0 * in, in, w.data, in, T(0),
                      y.data + r0 * out, out);
        if (b.data) kernels::add_row_bias(B{}, r1 - r0, out, b.data, y.data + r0 * out);
    });
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::linear_node<Ctx>>();
            n.x = x;
            n.w = w;
            n.b = b;
            n.y = y;
        }
    }
    return y;
}

/// The same values under another shape of equal numel: no copy, no tape node; the result
/// shares x's gradient cell, so gradients flow to x unchanged.
template <class Ctx, class T = typename Ctx::value_type>
var<T> reshape(Ctx& ctx, const var<T>& x, const shape& s) {
    ctx.check(x);
    XREC_CHECK(s.numel() == x.numel(), "reshape: ", x.s.str(), " has ", x.numel(), " elements, ", s.str(), " needs ",
               s.numel());
    return {x.data, s, x.g, x.epoch};
}

}  // namespace xrec::ops
