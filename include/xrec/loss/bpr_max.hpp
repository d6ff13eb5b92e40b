#pragma once
// BPR-max, the ranking loss of GRU4Rec with many negatives (Hidasi & Karatzoglou,
// "Recurrent Neural Networks with Top-k Gains for Session-based Recommendations", CIKM 2018).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/var.hpp"
#include "xrec/loss/common.hpp"

namespace xrec::loss {

namespace detail {
/// Backward of bpr_max. Saves the scores x, a copy of the targets and, per row, the
/// negative-softmax normaliser (max m_i and sum Z_i), S_i and R_i, so that with
/// s_j = exp(x_j - m_i) / Z_i (j != t), sigma_j = sigmoid(x_t - x_j):
///   dL/dx_t = -(1 / (S + eps)) sum_j s_j sigma_j (1 - sigma_j)
///   dL/dx_k = -(s_k / (S + eps)) (sigma_k^2 - S) + lambda s_k (x_k^2 - R + 2 x_k)   (k != t)
/// all divided by N (the mean over rows).
template <class Ctx>
struct bpr_max_node : tape_node {
    using T = typename Ctx::value_type;
    var<T> x, out;
    const std::int64_t* targets;
    const double* row;  // per row: m, Z, S, R
    double reg;
    static void backward(tape_node* self, void* c) {
        auto& nd = *static_cast<bpr_max_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gout = nd.out.g->grad;
        T* gx = ctx.grad(nd.x);
        if (!gout || !gx) return;
        const std::int64_t rows = nd.x.rows(), cols = nd.x.cols();
        const double scale = static_cast<double>(gout[0]) / static_cast<double>(rows);
        for (std::int64_t r = 0; r < rows; ++r) {
            const T* xr = nd.x.data + r * cols;
            T* gr = gx + r * cols;
            const std::int64_t t = nd.targets[r];
            const double m = nd.row[4 * r], z = nd.row[4 * r + 1], S = nd.row[4 * r + 2], R = nd.row[4 * r + 3];
            const double xt = static_cast<double>(xr[t]);
            const double inv = 1.0 / (S + bpr_max_eps);
            double gt = 0;
            for (std::int64_t j = 0; j < cols; ++j) {
                if (j == t) continue;
                const double xj = static_cast<double>(xr[j]);
                const double s = std::exp(xj - m) / z;
                const double sg = sigmoid(xt - xj);
                gt -= inv * s * sg * (1 - sg);
                const double g = -s * inv * (sg * sg - S) + nd.reg * s * (xj * xj - R + 2 * xj);
                gr[j] += static_cast<T>(scale * g);
            }
            gr[t] += static_cast<T>(scale * gt);
        }
    }
    static constexpr double bpr_max_eps = 1e-24;
};
}  // namespace detail

/// BPR-max with score regularisation, averaged over rows:
///
///     s_ij  = softmax over the negatives j != t_i of x_ij
///     L_i   = -log( sum_{j != t_i} s_ij sigmoid(x_{i t_i} - x_ij) + 1e-24 )
///             + lambda sum_{j != t_i} s_ij x_ij^2
///     L     = 1/N sum_i L_i
///
/// `scores` is [N, C] (row i: the scores of C candidates, its positive at column t_i, every
/// other column a negative: in GRU4Rec the other sessions' targets plus shared sampled
/// items); `targets` has N column indices in [0, C); C >= 2. The softmax weights focus the
/// loss on the highest-scoring negatives; the regulariser (GRU4Rec's bpreg) keeps their
/// scores from growing. Values are computed in double. Returns a var of shape {1}.
/// Backward saves the scores, the targets (copied) and four doubles per row.
template <class Ctx, class T = typename Ctx::value_type>
var<T> bpr_max(Ctx& ctx, const var<T>& scores, std::span<const std::int64_t> targets, double reg) {
    static_assert(detail::host_ok<typename Ctx::backend>, "loss::bpr_max needs host-readable memory");
    ctx.check(scores);
    XREC_CHECK(scores.s.rank >= 1 && scores.cols() >= 2, "bpr_max: scores must be [N, C] with C >= 2, got ",
               scores.s.str());
    const std::int64_t rows = scores.rows(), cols = scores.cols();
    XREC_CHECK(static_cast<std::int64_t>(targets.size()) == rows, "bpr_max: scores ", scores.s.str(), " have ", rows,
               " rows but ", targets.size(), " targets were given");
    XREC_CHECK(reg >= 0, "bpr_max: the regularisation must be >= 0, got ", reg);
    for (std::size_t r = 0; r < targets.size(); ++r)
        XREC_CHECK(targets[r] >= 0 && targets[r] < cols, "bpr_max: target ", targets[r], " of row ", r,
                   " is outside the ", cols, " columns of scores ", scores.s.str());
    double* row = ctx.template scratch<double>(4 * rows);
    double acc = 0;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* xr = scores.data + r * cols;
        const std::int64_t t = targets[static_cast<std::size_t>(r)];
        double m = -INFINITY;
        for (std::int64_t j = 0; j < cols; ++j)
            if (j != t) m = std::max(m, static_cast<double>(xr[j]));
        double z = 0;
        for (std::int64_t j = 0; j < cols; ++j)
            if (j != t) z += std::exp(static_cast<double>(xr[j]) - m);
        double S = 0, R = 0;
        const double xt = static_cast<double>(xr[t]);
        for (std::int64_t j = 0; j < cols; ++j) {
            if (j == t) continue;
            const double xj = static_cast<double>(xr[j]);
            const double s = std::exp(xj - m) / z;
            S += s * detail::sigmoid(xt - xj);
            R += s * xj * xj;
        }
        row[4 * r] = m;
        row[4 * r + 1] = z;
        row[4 * r + 2] = S;
        row[4 * r + 3] = R;
        acc += -std::log(S + detail::bpr_max_node<Ctx>::bpr_max_eps) + reg * R;
    }
    var<T> out = detail::scalar_result(ctx, scores.requires_grad());
    out.data[0] = static_cast<T>(acc / static_cast<double>(rows));
    if constexpr (Ctx::records) {
        if (out.requires_grad()) {
            auto* tg = ctx.template scratch<std::int64_t>(rows);
            for (std::int64_t r = 0; r < rows; ++r) tg[r] = targets[static_cast<std::size_t>(r)];
            auto& nd = ctx.template record<detail::bpr_max_node<Ctx>>();
            nd.x = scores;
            nd.out = out;
            nd.targets = tg;
            nd.row = row;
            nd.reg = reg;
        }
    }
    return out;
}

}  // namespace xrec::loss
