#pragma once
// Two row ops on dense vars: a row gather by index (what the sequential recommenders sasrec
// and gru4rec read their item embeddings with, kept dense because full-softmax training
// touches every row) and a row-wise dot product (the score of one sequence state against one
// item). They lived in models/ as seqrec_ops.hpp; they are ops, and any model may use them.
#include <cstdint>
#include <span>

#include "xrec/ops/common.hpp"

namespace xrec::ops {

namespace detail {

/// y[i, :] = scale * x[idx[i], :] (zeros where idx[i] < 0). Saves the indices (copied to
/// the tape) and the scale: dx[idx[i], :] += scale * dy[i, :], in index order, so repeated
/// indices accumulate deterministically.
template <class Ctx>
struct gather_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x, y;
    const std::int64_t* idx;
    std::int64_t n;
    T scale;
    static void backward(tape_node* self, void* c) {
        auto& nd = *static_cast<gather_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = nd.y.g->grad;
        T* gx = ctx.grad(nd.x);
        if (!gy || !gx) return;
        const std::int64_t d = nd.x.cols();
        for (std::int64_t i = 0; i < nd.n; ++i)
            if (nd.idx[i] >= 0) kernels::axpy(B{}, d, nd.scale, gy + i * d, gx + nd.idx[i] * d);
    }
};

/// y[i] = <a[i, :], b[i, :]>. Saves a and b: da[i, :] += dy[i] b[i, :], db[i, :] += dy[i] a[i, :].
template <class Ctx>
struct row_dot_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> a, b, y;
    static void backward(tape_node* self, void* c) {
        auto& nd = *static_cast<row_dot_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = nd.y.g->grad;
        if (!gy) return;
        const std::int64_t n = nd.a.rows(), d = nd.a.cols();
        if (T* ga = ctx.grad(nd.a))
            for (std::int64_t i = 0; i < n; ++i) kernels::axpy(B{}, d, gy[i], nd.b.data + i * d, ga + i * d);
        if (T* gb = ctx.grad(nd.b))
            for (std::int64_t i = 0; i < n; ++i) kernels::axpy(B{}, d, gy[i], nd.a.data + i * d, gb + i * d);
    }
};

}  // namespace detail

/// Rows of a dense var: x [N, D] (any leading extents are flattened into N), idx n entries
/// in [-1, N); y [n, D] with y[i] = scale * x[idx[i]] and a zero row for idx[i] = -1 (the
/// padding of a left-padded sequence). Backward scatters scale * dy back into dx in index
/// order (dense gradient of x; one tape node). Out-of-range indices are refused naming the
/// position.
template <class Ctx, class T = typename Ctx::value_type>
var<T> gather_rows(Ctx& ctx, const var<T>& x, std::span<const std::int64_t> idx, T scale = T(1)) {
    using B = typename Ctx::backend;
    ctx.check(x);
    XREC_CHECK(x.s.rank >= 1, "gather_rows: input must be [N, D], got ", x.s.str());
    const std::int64_t N = x.rows(), d = x.cols(), n = static_cast<std::int64_t>(idx.size());
    for (std::int64_t i = 0; i < n; ++i)
        XREC_CHECK(idx[static_cast<std::size_t>(i)] >= -1 && idx[static_cast<std::size_t>(i)] < N, "gather_rows: index ",
                   idx[static_cast<std::size_t>(i)], " at position ", i, " is outside [-1, ", N, ") of input ",
                   x.s.str());
    var<T> y = ctx.make(shape{n, d}, x.requires_grad());
    for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t r = idx[static_cast<std::size_t>(i)];
        if (r < 0)
            kernels::fill(B{}, d, T(0), y.data + i * d);
        else
            kernels::scale(B{}, d, scale, x.data + r * d, y.data + i * d);
    }
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto* keep = ctx.template tape_scratch<std::int64_t>(n);
            for (std::int64_t i = 0; i < n; ++i) keep[i] = idx[static_cast<std::size_t>(i)];
            auto& nd = ctx.template record<detail::gather_node<Ctx>>();
            nd.x = x;
            nd.y = y;
            nd.idx = keep;
            nd.n = n;
            nd.scale = scale;
        }
    }
    return y;
}

/// y[i] = <a[i, :], b[i, :]> for a, b [n, D] (equal shapes; leading extents flattened);
/// y [n]. Backward saves a and b (one tape node).
template <class Ctx, class T = typename Ctx::value_type>
var<T> row_dot(Ctx& ctx, const var<T>& a, const var<T>& b) {
    using B = typename Ctx::backend;
    ctx.check(a);
    ctx.check(b);
    ops::check_same_shape("row_dot", a, b);
    const std::int64_t n = a.rows(), d = a.cols();
    var<T> y = ctx.make(shape{n}, a.requires_grad() || b.requires_grad());
    for (std::int64_t i = 0; i < n; ++i) y.data[i] = kernels::dot(B{}, d, a.data + i * d, b.data + i * d);
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& nd = ctx.template record<detail::row_dot_node<Ctx>>();
            nd.a = a;
            nd.b = b;
            nd.y = y;
        }
    }
    return y;
}

}  // namespace xrec::ops
