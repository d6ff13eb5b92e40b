#pragma once
// Concatenation and splitting along the last axis.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "xrec/ops/common.hpp"

namespace xrec::ops {

namespace detail {

/// How column_block moves data between a [rows, total] tensor and a [rows, w] one.
enum class block_move { narrow_to_wide, wide_to_narrow, add_wide_to_narrow, add_narrow_to_wide };

/// Moves column block [off, off + w) of every row between `wide` ([rows, total]) and
/// `narrow` ([rows, w]); rows are split over the pool when the block is large.
template <class B, class T>
void column_block(thread_pool* pool, std::int64_t rows, std::int64_t total, std::int64_t off, std::int64_t w,
                  T* wide, T* narrow, block_move how) {
    if (w == 0) return;
    const bool big = rows * w >= policy<B>::elementwise_parallel_min;
    parallel_for(big ? pool : nullptr, rows, 2, [&](std::int64_t r0, std::int64_t r1, int) {
        T* a = wide + r0 * total + off;
        T* b = narrow + r0 * w;
        const std::int64_t n = r1 - r0;
        switch (how) {
            case block_move::narrow_to_wide: kernels::copy_block(B{}, n, w, static_cast<const T*>(b), w, a, total); break;
            case block_move::wide_to_narrow: kernels::copy_block(B{}, n, w, static_cast<const T*>(a), total, b, w); break;
            case block_move::add_wide_to_narrow: kernels::add_block(B{}, n, w, static_cast<const T*>(a), total, b, w); break;
            case block_move::add_narrow_to_wide: kernels::add_block(B{}, n, w, static_cast<const T*>(b), w, a, total); break;
        }
    });
}

/// y = [x_0, x_1, ...] along the last axis. Backward saves the input handles (a host
/// array on the tape): dx_k += the k-th column block of dy.
template <class Ctx>
struct concat_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    const var<T>* xs;
    std::int64_t count;
    var<T> y;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<concat_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        T* gy = n.y.g->grad;
        if (!gy) return;
        const std::int64_t rows = n.y.rows(), total = n.y.cols();
        std::int64_t off = 0;
        for (std::int64_t k = 0; k < n.count; ++k) {
            const var<T>& x = n.xs[k];
            if (T* gx = ctx.grad(x)) column_block<B>(ctx.pool(), rows, total, off, x.cols(), gy, gx, block_move::add_wide_to_narrow);
            off += x.cols();
        }
    }
};

/// [y_0, y_1, ...] = split of x along the last axis. Backward saves the output handles:
/// the k-th column block of dx += dy_k for every output whose gradient exists.
template <class Ctx>
struct split_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x;
    const var<T>* ys;
    std::int64_t count;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<split_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const std::int64_t rows = n.x.rows(), total = n.x.cols();
        T* gx = nullptr;
        std::int64_t off = 0;
        for (std::int64_t k = 0; k < n.count; ++k) {
            const var<T>& y = n.ys[k];
            if (T* gy = y.g->grad) {
                if (!gx) gx = ctx.grad(n.x);
                column_block<B>(ctx.pool(), rows, total, off, y.cols(), gx, gy, block_move::add_narrow_to_wide);
            }
            off += y.cols();
        }
    }
};

inline std::string shapes_str(std::span<const shape> ss) {
    std::string s;
    for (std::size_t i = 0; i < ss.size(); ++i) s += (i ? ", " : "") + ss[i].str();
    return s;
}
}  // namespace detail

/// y = concatenation of xs along the last axis. Every input has the same rank and the same
/// leading extents; y's last extent is the sum of theirs. Backward routes each column block
/// of dy to its input.
template <class Ctx>
var<typename Ctx::value_type> concat(Ctx& ctx, std::span<const var<typename Ctx::value_type>> xs) {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    XREC_CHECK(!xs.empty(), "concat: needs at least one input");
    const shape& s0 = xs[0].s;
    XREC_CHECK(s0.rank >= 1, "concat: inputs need rank >= 1, got ", s0.str());
    std::int64_t total = 0;
    bool grad = false;
    for (std::size_t k = 0; k < xs.size(); ++k) {
        ctx.check(xs[k]);
        const shape& sk = xs[k].s;
        bool same = sk.rank == s0.rank;
        for (int i = 0; same && i + 1 < s0.rank; ++i) same = sk[i] == s0[i];
        if (!same) {
            std::vector<shape> all;
            for (auto& x : xs) all.push_back(x.s);
            XREC_FAIL("concat: input ", k, " has shape ", sk.str(), " but input 0 has ", s0.str(),
                      " (all leading extents must match); inputs: ", detail::shapes_str(all));
        }
        total += sk.cols();
        grad = grad || xs[k].requires_grad();
    }
    shape ys = s0;
    ys.dims[static_cast<std::size_t>(ys.rank - 1)] = total;
    var<T> y = ctx.make(ys, grad);
    const std::int64_t rows = ys.rows();
    std::int64_t off = 0;
    for (auto& x : xs) {
        detail::column_block<B>(ctx.pool(), rows, total, off, x.cols(), y.data, x.data, detail::block_move::narrow_to_wide);
        off += x.cols();
    }
    if constexpr (Ctx::records) {
        if (grad) {
            const auto n = static_cast<std::int64_t>(xs.size());
            var<T>* saved = ctx.template tape_scratch<var<T>>(n);
            for (std::int64_t k = 0; k < n; ++k) saved[k] = xs[static_cast<std::size_t>(k)];
            auto& nd = ctx.template record<detail::concat_node<Ctx>>();
            nd.xs = saved;
            nd.count = n;
            nd.y = y;
        }
    }
    return y;
}

/// Splits x along the last axis into pieces of the given widths (which must sum to x's last
/// extent); piece k has x's leading extents and last extent widths[k]. The pieces are
/// copies. Backward adds each piece's gradient into its column block of dx.
template <class Ctx, class T = typename Ctx::value_type>
std::vector<var<T>> split(Ctx& ctx, const var<T>& x, std::span<const std::int64_t> widths) {
    using B = typename Ctx::backend;
    ctx.check(x);
    XREC_CHECK(x.s.rank >= 1, "split: input needs rank >= 1, got ", x.s.str());
    std::int64_t total = 0;
    for (std::size_t k = 0; k < widths.size(); ++k) {
        XREC_CHECK(widths[k] >= 0, "split: width ", k, " is negative (", widths[k], ")");
        total += widths[k];
    }
    XREC_CHECK(total == x.cols(), "split: widths sum to ", total, " but input ", x.s.str(), " has ", x.cols(),
               " columns");
    std::vector<var<T>> out;
    out.reserve(widths.size());
    const std::int64_t rows = x.rows();
    std::int64_t off = 0;
    for (auto w : widths) {
        shape s = x.s;
        s.dims[static_cast<std::size_t>(s.rank - 1)] = w;
        var<T> y = ctx.make(s, x.requires_grad());
        detail::column_block<B>(ctx.pool(), rows, total, off, w, x.data, y.data, detail::block_move::wide_to_narrow);
        out.push_back(y);
        off += w;
    }
    if constexpr (Ctx::records) {
        if (x.requires_grad()) {
            const auto n = static_cast<std::int64_t>(out.size());
            var<T>* saved = ctx.template tape_scratch<var<T>>(n);
            for (std::int64_t k = 0; k < n; ++k) saved[k] = out[static_cast<std::size_t>(k)];
            auto& nd = ctx.template record<detail::split_node<Ctx>>();
            nd.x = x;
            nd.ys = saved;
            nd.count = n;
        }
    }
    return out;
}

}  // namespace xrec::ops
