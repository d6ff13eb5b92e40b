#pragma once
// The model contract, written down once (every model in models/ follows it; the trainer,
// the predictor and the PyTorch peers rely on nothing else).
//
// A model is an ordinary struct of layers, `template <class T = float, class B = cpu<>>`,
// constructed as `M(param_store<T, B>& store, const feature_layout& layout, M::options o)`;
// it registers every parameter in `store` under "<model>.<layer>.<param>" and keeps views.
//
//   template <class Ctx> var<T> operator()(Ctx& ctx, const batch<T>& b) const;
//       -> logits [b.rows, layout.num_tasks()], one column per task. Written once for
//          train_ctx (records the tape) and infer_ctx (no tape, no allocation once reserved).
//   std::string_view kind() const;        e.g. "deepfm": saved in checkpoints
//
// Optional members, found by the helpers below when present:
//   template <class Ctx> var<T> loss(Ctx&, const var<T>& logits, const batch<T>& b) const;
//       the training loss (default: binary cross-entropy with logits, mean over rows and
//       tasks; ESMM replaces it by its CTR + CTCVR loss over the impression space).
//   void probabilities(const T* logits, std::int64_t rows, T* out) const;
//       per-task probabilities from logits (default: the logistic function of each column;
//       ESMM returns [pCTR, pCVR], pCTCVR being their product).
#include <cmath>
#include <concepts>
#include <cstdint>
#include <string_view>

#include "xrec/core/context.hpp"
#include "xrec/core/features.hpp"
#include "xrec/loss/bce.hpp"

namespace xrec::models {

/// A type that follows the contract above for value type T and backend B.
template <class M, class T, class B>
concept ctr_model = requires(const M& m, train_ctx<T, B>& tc, infer_ctx<T, B>& ic, const batch<T>& b) {
    { m(tc, b) } -> std::same_as<var<T>>;
    { m(ic, b) } -> std::same_as<var<T>>;
    { m.kind() } -> std::convertible_to<std::string_view>;
};

/// The model's loss if it defines one, else mean BCE with logits against b.labels.
template <class M, class Ctx, class T = typename Ctx::value_type>
var<T> model_loss(const M& m, Ctx& ctx, const var<T>& logits, const batch<T>& b) {
    if constexpr (requires { m.loss(ctx, logits, b); })
        return m.loss(ctx, logits, b);
    else
        return loss::bce_with_logits(ctx, logits, ctx.input(b.labels, b.memory));
}

/// Per-task probabilities from logits [rows, tasks] into out (same size).
template <class M, class T>
void model_probabilities(const M& m, const T* logits, std::int64_t rows, std::int64_t tasks, T* out) {
    if constexpr (requires { m.probabilities(logits, rows, out); })
        m.probabilities(logits, rows, out);
    else
        for (std::int64_t i = 0; i < rows * tasks; ++i) out[i] = T(1) / (T(1) + std::exp(-logits[i]));
}

}  // namespace xrec::models
