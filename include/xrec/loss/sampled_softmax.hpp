#pragma once
// In-batch sampled softmax with the log-Q correction: the loss of two-tower retrieval models
// trained on the other items of the batch as negatives.
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>

#include "xrec/core/parallel.hpp"
#include "xrec/loss/common.hpp"

namespace xrec::loss {

/// Options of in_batch_softmax.
///  - temperature [1]: logits are <u_i, v_j> / temperature.
///  - log_q [empty]: N entries, log of the probability with which item j of the batch was
///    sampled (Yi et al. estimate it from item frequencies); subtracted from column j of
///    every row, the target's included. Empty: no correction.
///  - item_ids [empty]: N ids of the batch's items. When given, a column j != i whose item
///    equals row i's item (an "accidental hit": the positive appearing twice in the batch)
///    is removed from row i's softmax instead of being pushed down as a negative.
template <class T>
struct in_batch_softmax_options {
    double temperature = 1;
    std::span<const T> log_q{};
    std::span<const std::int64_t> item_ids{};
};

namespace detail {
/// <a, b> over n elements with 8 partial sums (lane l takes the elements k = l mod 8, then
/// the lanes are added in order): a fixed summation order that the compiler can keep in
/// one vector register, where a single running sum would stay scalar without -ffast-math.
template <class T>
inline T dot8(const T* a, const T* b, std::int64_t n) {
    T acc[8] = {};
    std::int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        for (int l = 0; l < 8; ++l) acc[l] += a[k + l] * b[k + l];
    for (; k < n; ++k) acc[k & 7] += a[k] * b[k];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/// Backward of in_batch_softmax. Saves the two towers' outputs U, V [N, D] and the N x N
/// softmax probabilities P (zero where masked) in the arena. With G = (P - I) / (N tau):
///     dU += G V,     dV += G^T U
/// Each thread owns whole rows of dU (resp. dV), summed in a fixed order: the result does
/// not depend on the thread count.
template <class Ctx>
struct in_batch_softmax_node : tape_node {
    using T = typename Ctx::value_type;
    var<T> u, v, out;
    const T* p;  // [N, N]
    T inv_tau;
    static void backward(tape_node* self, void* c) {
        auto& nd = *static_cast<in_batch_softmax_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gout = nd.out.g->grad;
        if (!gout) return;
        const std::int64_t n = nd.u.rows(), d = nd.u.cols();
        const T scale = gout[0] * nd.inv_tau / static_cast<T>(n);
        const std::int64_t min_rows = parallel_min_elements / (n * d + 1) + 1;
        if (T* gu = ctx.grad(nd.u))
            parallel_for(ctx.pool(), n, min_rows, [&](std::int64_t r0, std::int64_t r1, int) {
                for (std::int64_t i = r0; i < r1; ++i) {
                    T* g = gu + i * d;
                    for (std::int64_t j = 0; j < n; ++j) {
                        const T w = scale * (nd.p[i * n + j] - (i == j ? T(1) : T(0)));
                        if (w == T(0)) continue;
                        const T* vj = nd.v.data + j * d;
                        for (std::int64_t k = 0; k < d; ++k) g[k] += w * vj[k];
                    }
                }
            });
        if (T* gv = ctx.grad(nd.v))
            parallel_for(ctx.pool(), n, min_rows, [&](std::int64_t r0, std::int64_t r1, int) {
                for (std::int64_t j = r0; j < r1; ++j) {
                    T* g = gv + j * d;
                    for (std::int64_t i = 0; i < n; ++i) {
                        const T w = scale * (nd.p[i * n + j] - (i == j ? T(1) : T(0)));
                        if (w == T(0)) continue;
                        const T* ui = nd.u.data + i * d;
                        for (std::int64_t k = 0; k < d; ++k) g[k] += w * ui[k];
                    }
                }
            });
    }
};
}  // namespace detail

/// In-batch softmax cross-entropy with the log-Q correction (Yi et al., "Sampling-bias-
/// corrected neural modeling for large corpus item recommendations", RecSys 2019). Row i of
/// the batch is a (user, item) pair; the other N - 1 items of the batch are its negatives:
///
///     s_ij = <u_i, v_j> / tau - log q_j                       (j masked out: s_ij = -inf)
///     L    = 1/N sum_i [ logsumexp_j s_ij - s_ii ]
///
/// `users` and `items` are [N, D] (the towers' outputs, equal shapes, N > 0). Items that
/// appear in many batches are sampled as negatives more often; subtracting log q_j removes
/// that bias towards popular items, so the model estimates the full softmax. The row sums
/// are taken in double in row order, so the value does not depend on the thread count.
/// Returns a var of shape {1}. Backward saves U, V and the N x N probabilities (see the
/// node); log_q and item_ids receive no gradient.
template <class Ctx, class T = typename Ctx::value_type>
var<T> in_batch_softmax(Ctx& ctx, const var<T>& users, const var<T>& items,
                        in_batch_softmax_options<std::type_identity_t<T>> o = {}) {
    static_assert(detail::host_ok<typename Ctx::backend>, "loss::in_batch_softmax needs host-readable memory");
    ctx.check(users);
    ctx.check(items);
    XREC_CHECK(users.s.rank == 2 && users.s == items.s && users.rows() > 0, "in_batch_softmax: users ",
               users.s.str(), " and items ", items.s.str(), " must both be a non-empty [N, D]");
    const std::int64_t n = users.rows(), d = users.cols();
    XREC_CHECK(o.temperature > 0, "in_batch_softmax: temperature must be > 0, got ", o.temperature);
    XREC_CHECK(o.log_q.empty() || static_cast<std::int64_t>(o.log_q.size()) == n, "in_batch_softmax: log_q has ",
               o.log_q.size(), " entries for a batch of ", n, " rows");
    XREC_CHECK(o.item_ids.empty() || static_cast<std::int64_t>(o.item_ids.size()) == n,
               "in_batch_softmax: item_ids has ", o.item_ids.size(), " entries for a batch of ", n, " rows");
    const T inv_tau = static_cast<T>(1.0 / o.temperature);
    const T* lq = o.log_q.empty() ? nullptr : o.log_q.data();
    const std::int64_t* ids = o.item_ids.empty() ? nullptr : o.item_ids.data();

    T* p = ctx.template scratch<T>(n * n);
    double* row_loss = ctx.template scratch<double>(n);
    const std::int64_t min_rows = detail::parallel_min_elements / (n * d + 1) + 1;
    parallel_for(ctx.pool(), n, min_rows, [&](std::int64_t r0, std::int64_t r1, int) {
        for (std::int64_t i = r0; i < r1; ++i) {
            T* pr = p + i * n;
            const T* ui = users.data + i * d;
            T m = -std::numeric_limits<T>::infinity();
            for (std::int64_t j = 0; j < n; ++j) {
                if (ids && j != i && ids[j] == ids[i]) {
                    pr[j] = -std::numeric_limits<T>::infinity();
                    continue;
                }
                T s = detail::dot8(ui, items.data + j * d, d);
                s = s * inv_tau - (lq ? lq[j] : T(0));
                pr[j] = s;
                m = s > m ? s : m;
            }
            // Shifting by the row maximum keeps every exp in (0, 1]: no overflow.
            const T target = pr[i];
            T sum = 0;
            for (std::int64_t j = 0; j < n; ++j) {
                pr[j] = std::exp(pr[j] - m);  // exp(-inf) = 0: masked
                sum += pr[j];
            }
            const T lse = m + std::log(sum), inv = T(1) / sum;
            row_loss[i] = static_cast<double>(lse) - static_cast<double>(target);
            for (std::int64_t j = 0; j < n; ++j) pr[j] *= inv;
        }
    });
    double acc = 0;
    for (std::int64_t i = 0; i < n; ++i) acc += row_loss[i];
    const bool rg = users.requires_grad() || items.requires_grad();
    var<T> out = detail::scalar_result(ctx, rg);
    out.data[0] = static_cast<T>(acc / static_cast<double>(n));
    if constexpr (Ctx::records) {
        if (rg) {
            auto& nd = ctx.template record<detail::in_batch_softmax_node<Ctx>>();
            nd.u = users;
            nd.v = items;
            nd.out = out;
            nd.p = p;
            nd.inv_tau = inv_tau;
        }
    }
    return out;
}

/// log q_j for the items of a batch from item frequencies: q = count / total, the
/// probability that one draw from the training stream is this item (the batch-size factor
/// is the same for every column and cancels in the softmax). Items never counted get the
/// smallest positive count (1), so log q stays finite.
template <class T>
void log_q_from_counts(std::span<const std::int64_t> batch_items, std::span<const double> item_counts, double total,
                       std::span<T> out) {
    XREC_CHECK(out.size() == batch_items.size(), "log_q_from_counts: ", batch_items.size(), " items but room for ",
               out.size());
    XREC_CHECK(total > 0, "log_q_from_counts: total count must be > 0, got ", total);
    const double lt = std::log(total);
    for (std::size_t r = 0; r < batch_items.size(); ++r) {
        const std::int64_t it = batch_items[r];
        XREC_CHECK(it >= 0 && it < static_cast<std::int64_t>(item_counts.size()), "log_q_from_counts: item ", it,
                   " at position ", r, " outside the ", item_counts.size(), " counted items");
        const double c = item_counts[static_cast<std::size_t>(it)];
        out[r] = static_cast<T>(std::log(c > 0 ? c : 1.0) - lt);
    }
}

}  // namespace xrec::loss
