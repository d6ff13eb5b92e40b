#pragma once
// Sum and mean over one axis.
#include <cstdint>

#include "xrec/ops/common.hpp"

namespace xrec::ops {

namespace detail {

/// A tensor seen as [outer, n, inner] around the reduced axis of extent n.
struct axis_view {
    std::int64_t outer = 1, n = 1, inner = 1;
    shape out;  // the input shape with the axis removed
};

inline axis_view view_around_axis(const char* op, const shape& s, int axis) {
    XREC_CHECK(s.rank >= 1, op, ": cannot reduce a scalar (shape ", s.str(), ")");
    XREC_CHECK(axis >= -s.rank && axis < s.rank, op, ": axis ", axis, " is out of range for shape ", s.str());
    if (axis < 0) axis += s.rank;
    axis_view v;
    for (int i = 0; i < axis; ++i) v.outer *= s[i];
    v.n = s[axis];
    for (int i = axis + 1; i < s.rank; ++i) v.inner *= s[i];
    for (int i = 0; i < s.rank; ++i)
        if (i != axis) v.out.dims[static_cast<std::size_t>(v.out.rank++)] = s[i];
    return v;
}

/// Runs f(o0, o1, i0, i1) over [outer, inner] blocks: rows of `outer` split over the pool,
/// or, when there are fewer outer rows than threads (a sum over the batch axis), columns of
/// `inner`. Each output element is owned by one thread, so results never depend on threads.
template <class B, class F>
void split_work(thread_pool* pool, std::int64_t outer, std::int64_t n, std::int64_t inner, F&& f) {
    if (outer * n * inner < policy<B>::elementwise_parallel_min) pool = nullptr;
    if (pool && outer < pool->size() && inner > 1)
        parallel_for(pool, inner, 2, [&](std::int64_t i0, std::int64_t i1, int) { f(0, outer, i0, i1); });
    else
        parallel_for(pool, outer, 2, [&](std::int64_t o0, std::int64_t o1, int) { f(o0, o1, 0, inner); });
}

/// y[o, :] = scale * sum_k x[o, k, :]. Backward saves nothing but x's and y's handles:
/// dx[o, k, :] += scale * dy[o, :].
template <class Ctx>
struct reduce_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x, y;
    std::int64_t outer, n, inner;
    T scale;
    static void backward(tape_node* self, void* c) {
        auto& nd = *static_cast<reduce_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = nd.y.g->grad;
        T* gx = ctx.grad(nd.x);
        if (!gy || !gx) return;
        const std::int64_t n = nd.n, inner = nd.inner;
        const T s = nd.scale;
        auto rows = [&](std::int64_t o0, std::int64_t o1, std::int64_t i0, std::int64_t i1) {
            kernels::reduce_axis_bwd(B{}, o0, o1, n, inner, i0, i1, s, gy, gx);
        };
        split_work<B>(ctx.pool(), nd.outer, n, inner, rows);
    }
};

template <class Ctx, class T>
var<T> reduce(Ctx& ctx, const char* op, const var<T>& x, int axis, bool mean) {
    using B = typename Ctx::backend;
    ctx.check(x);
    const axis_view v = view_around_axis(op, x.s, axis);
    XREC_CHECK(!mean || v.n > 0, op, ": mean over an empty axis ", axis, " of shape ", x.s.str());
    const T s = mean ? T(1) / static_cast<T>(v.n) : T(1);
    var<T> y = ctx.make(v.out, x.requires_grad());
    const std::int64_t n = v.n, inner = v.inner;
    // Rows of the reduced axis are added in order, so every element sums in one fixed order.
    auto rows = [&](std::int64_t o0, std::int64_t o1, std::int64_t i0, std::int64_t i1) {
        kernels::reduce_axis(B{}, o0, o1, n, inner, i0, i1, s, mean, static_cast<const T*>(x.data), y.data);
    };
    split_work<B>(ctx.pool(), v.outer, n, inner, rows);
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& nd = ctx.template record<reduce_node<Ctx>>();
            nd.x = x;
            nd.y = y;
            nd.outer = v.outer;
            nd.n = v.n;
            nd.inner = v.inner;
            nd.scale = s;
        }
    }
    return y;
}
}  // namespace detail

/// y = sum of x over `axis` (negative counts from the end); the axis is removed from the
/// shape, so a rank-1 input gives a scalar (rank 0, one element). Backward broadcasts dy.
template <class Ctx, class T = typename Ctx::value_type>
var<T> sum(Ctx& ctx, const var<T>& x, int axis) {
    return detail::reduce(ctx, "sum", x, axis, false);
}
/// y = mean of x over `axis` (negative counts from the end; the axis is removed). An
/// empty axis is refused (the mean of nothing is undefined).
template <class Ctx, class T = typename Ctx::value_type>
var<T> mean(Ctx& ctx, const var<T>& x, int axis) {
    return detail::reduce(ctx, "mean", x, axis, true);
}

}  // namespace xrec::ops
