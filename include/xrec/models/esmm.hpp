#pragma once
// ESMM: Entire Space Multi-task Model (Ma et al., "Entire Space Multi-Task Model: An
// Effective Approach for Estimating Post-Click Conversion Rate", SIGIR 2018).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "xrec/core/arena.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/tape.hpp"
#include "xrec/layers/mlp.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/models/seq_mt_inputs.hpp"
#include "xrec/ops/common.hpp"
#include "xrec/ops/concat.hpp"

namespace xrec::models {

namespace detail {

/// log(1 + e^x) without overflow.
template <class T>
T softplus(T x) {
    return std::max(x, T(0)) + std::log1p(std::exp(-std::fabs(x)));
}

/// Per row of ESMM's loss with a = CTR logit, c = CVR logit, u = -a, v = -c, y1 = click,
/// y2 = click and purchase: returns the row's loss and its derivatives in da, dc.
///   CTR:   max(a, 0) - a y1 + log1p(e^-|a|)                    (BCE with logits)
///   CTCVR: with p = s(a) s(c):  -log p = sp(u) + sp(v),
///          1 - p = (e^u + e^v + e^(u+v)) / ((1 + e^u)(1 + e^v)), so
///          -log(1 - p) = sp(u) + sp(v) - lse(u, v, u + v);
///          L = sp(u) + sp(v) - (1 - y2) lse(u, v, u + v)
///   with (w1, w2, w3) = softmax(u, v, u + v):
///          dL/da = -s(u) + (1 - y2)(w1 + w3),   dL/dc = -s(v) + (1 - y2)(w2 + w3)
/// Nothing overflows and nothing is clamped: log p and log(1 - p) are exact for any logits.
template <class T>
T esmm_row(T a, T c, T y1, T y2, T& da, T& dc) {
    const T u = -a, v = -c, uv = u + v;
    const T m = std::max({u, v, uv});
    const T e1 = std::exp(u - m), e2 = std::exp(v - m), e3 = std::exp(uv - m), z = e1 + e2 + e3;
    const T lse = m + std::log(z);
    const T su = T(1) / (T(1) + std::exp(-u)), sv = T(1) / (T(1) + std::exp(-v));  // s(-a), s(-c)
    const T ctr = std::max(a, T(0)) - a * y1 + std::log1p(std::exp(-std::fabs(a)));
    const T ctcvr = softplus(u) + softplus(v) - (T(1) - y2) * lse;
    da = (T(1) - su - y1) + (-su + (T(1) - y2) * (e1 + e3) / z);
    dc = -sv + (T(1) - y2) * (e2 + e3) / z;
    return ctr + ctcvr;
}

/// Tape node of esmm_loss: saves the logits and labels handles; recomputes the per-row
/// derivatives (cheap) and adds dL * d(row)/d(logit) / rows into the logits' gradient.
template <class Ctx>
struct esmm_loss_node : tape_node {
    using T = typename Ctx::value_type;
    var<T> logits, labels, y;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<esmm_loss_node*>(self);
        auto& ctx = ops::ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        T* gx = ctx.grad(n.logits);
        if (!gx) return;
        const std::int64_t rows = n.logits.s[0];
        const T s = gy[0] / static_cast<T>(rows);
        for (std::int64_t r = 0; r < rows; ++r) {
            const T click = n.labels.data[2 * r], buy = n.labels.data[2 * r + 1];
            T da, dc;
            esmm_row(n.logits.data[2 * r], n.logits.data[2 * r + 1], click, click * buy, da, dc);
            gx[2 * r] += s * da;
            gx[2 * r + 1] += s * dc;
        }
    }
};

}  // namespace detail

/// ESMM's loss over the impression space, logits [B, 2] = [CTR logit a, CVR logit c],
/// labels [B, 2] = [click, purchase] (purchase counts only with a click: y_ctcvr = click *
/// purchase):
///   L = 1/B sum_b [ BCE(s(a_b), click_b) + BCE(s(a_b) s(c_b), click_b purchase_b) ]
/// computed from the logits in log space (see detail::esmm_row), so pCTCVR = pCTR pCVR never
/// rounds to 0 or 1 inside a log. Returns [1]. One tape node (host loop; saves the handles;
/// backward recomputes the per-row derivatives).
template <class Ctx, class T = typename Ctx::value_type>
var<T> esmm_loss(Ctx& ctx, const var<T>& logits, const var<T>& labels) {
    static_assert(backend_memory<typename Ctx::backend>::host_accessible,
                  "esmm_loss: runs on the host (its [rows, 2] loop is tiny); a device backend needs its own kernel");
    ctx.check(logits);
    XREC_CHECK(logits.s.rank == 2 && logits.s[1] == 2 && labels.numel() == logits.numel(), "esmm_loss: logits ",
               logits.s.str(), " and labels ", labels.s.str(), " must both be [rows, 2] (click, purchase)");
    XREC_CHECK(logits.s[0] > 0, "esmm_loss: no rows");
    const std::int64_t rows = logits.s[0];
    var<T> y = ctx.make(shape{1}, logits.requires_grad());
    T acc = 0;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T click = labels.data[2 * r], buy = labels.data[2 * r + 1];
        T da, dc;
        acc += detail::esmm_row(logits.data[2 * r], logits.data[2 * r + 1], click, click * buy, da, dc);
    }
    y.data[0] = acc / static_cast<T>(rows);
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::esmm_loss_node<Ctx>>();
            n.logits = logits;
            n.labels = labels;
            n.y = y;
        }
    }
    return y;
}

/// Entire Space Multi-task Model: shared embeddings, a CTR tower and a CVR tower,
///   x = [embeddings of the non-wide sparse fields, pooled sequence fields, dense]  [B, In]
///   a = ctr_tower(x), c = cvr_tower(x)      [B, 1] each (MLP, one output unit)
///   logits = [a, c] [B, 2];   pCTR = s(a), pCVR = s(c), pCTCVR = pCTR pCVR
/// trained on all impressions with loss() = esmm_loss (BCE of pCTR against click plus BCE
/// of pCTCVR against click and purchase): the CVR tower never sees a label of its own, so it
/// is learned over the entire space and is not biased by training on clicked rows only.
/// The layout must have exactly 2 tasks, {click, purchase} in that order.
/// probabilities() gives [pCTR, pCVR] per row; pCTCVR is their product (the caller's).
/// Parameters: "esmm.embedding" (ctr_inputs), "esmm.ctr.<i>.weight/bias",
/// "esmm.ctr.out.weight" [1, h_last], "esmm.ctr.out.bias", and the same under "esmm.cvr".
/// DeepCTR-Torch: ESMM(tower_dnn_hidden_units) returns [pCTR, pCTCVR] probabilities and is
/// trained with BCE on each; here the logits are [CTR, CVR] and the product is formed inside
/// the loss in log space.
/// Backward: that of the towers and one node for the loss.
template <class T = float, class B = cpu<>>
struct esmm {
    struct options {
        input_options inputs{};
        layers::mlp_options tower{{256, 128}, activation::relu, 0, false, 0};
    };

    ctr_inputs<T, B> inputs;
    layers::mlp<T, B> ctr, cvr;

    esmm(param_store<T, B>& s, const feature_layout& layout, options o)
        : inputs(s, "esmm", layout, o.inputs),
          ctr(s, "esmm.ctr", flat_width(inputs), with_out(o.tower, layout)),
          cvr(s, "esmm.cvr", flat_width(inputs), with_out(o.tower, layout)) {}

    std::string_view kind() const { return "esmm"; }

    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        const var<T> x = flat_features(ctx, inputs, b);
        const var<T> parts[2] = {ctr(ctx, x), cvr(ctx, x)};
        return ops::concat(ctx, std::span<const var<T>>(parts, 2));
    }

    template <class Ctx>
    var<T> loss(Ctx& ctx, const var<T>& logits, const batch<T>& b) const {
        return esmm_loss(ctx, logits, ctx.input(b.labels, b.memory));
    }

    /// out[r, 0] = pCTR = s(logit_ctr), out[r, 1] = pCVR = s(logit_cvr); pCTCVR = their product.
    void probabilities(const T* logits, std::int64_t rows, T* out) const {
        for (std::int64_t i = 0; i < 2 * rows; ++i) out[i] = T(1) / (T(1) + std::exp(-logits[i]));
    }

private:
    static layers::mlp_options with_out(layers::mlp_options o, const feature_layout& layout) {
        XREC_CHECK(layout.num_tasks() == 2, "esmm: needs a layout with exactly 2 tasks (click, purchase), got ",
                   layout.num_tasks());
        o.out = 1;
        return o;
    }
};

}  // namespace xrec::models
