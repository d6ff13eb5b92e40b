#pragma once
// Logistic regression over the layout's features: the first-order (wide) part alone.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/models/inputs.hpp"

namespace xrec::models {

/// Options of lr. `name` prefixes every parameter (two models may share a store).
struct lr_options {
    std::string name = "lr";
};

/// Logistic regression (DeepCTR-Torch: a BaseModel with only its linear_model, i.e. the
/// "linear" part every DeepCTR model has, followed by the PredictionLayer bias).
///
/// Maths, per row with sparse ids i_1..i_F (all sparse fields, wide_only cross features
/// included), pooled sequence fields s_1..s_S and dense values x [Dn]:
///   logit = sum_f w[i_f] + sum_k pool_k(w[ids of s_k]) + <x, a> + b
/// Shapes: batch sparse [rows, F], dense [rows, Dn] -> logits [rows, 1].
/// Parameters (see models::ctr_inputs; no embedding table):
///   "<name>.linear" [total_rows, 1] (zeros; sparse gradients),
///   "<name>.dense_linear.weight" [1, Dn] (only when Dn > 0), "<name>.dense_linear.bias" [1].
/// Backward: sparse row gradients into "<name>.linear", dense gradients into a and b.
/// DeepCTR-Torch differences: one table over the global id space instead of one nn.Embedding
/// per feature (the same function); the global bias lives in dense_linear.bias instead of
/// PredictionLayer.bias; initialisation (zeros for w, U(+-1/sqrt(Dn)) for a, DeepCTR uses
/// N(0, 1e-4) for both).
/// Multi-task layouts are refused (one logit per row).
template <class T = float, class B = cpu<>>
struct lr {
    using options = lr_options;

    feature_layout layout;
    options opt;
    ctr_inputs<T, B> inputs;

    lr(param_store<T, B>& store, const feature_layout& l, options o = {})
        : layout(l), opt(std::move(o)),
          inputs(store, opt.name, l, input_options{.dim = 1, .first_order = true, .embeddings = false}) {
        XREC_CHECK(l.num_tasks() == 1, "lr '", opt.name, "': a single-task model, but the layout has ", l.num_tasks(),
                   " tasks");
    }

    /// logits [b.rows, 1].
    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        return inputs.first_order(ctx, b);
    }

    std::string_view kind() const { return "lr"; }
};

}  // namespace xrec::models
