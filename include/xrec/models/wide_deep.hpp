#pragma once
// Wide & Deep (Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016): a
// linear model over all sparse features, cross features included, plus an MLP over the
// embeddings of the ordinary fields and the dense features.
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/layers/linear.hpp"
#include "xrec/layers/mlp.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/concat.hpp"

namespace xrec::models {

/// Options of wide_deep (DeepCTR-Torch WDL defaults): embedding width 8, DNN 256-128 with
/// ReLU, no dropout. `dnn.hidden` must not be empty and `dnn.out` must be 0. `name` prefixes
/// every parameter.
struct wide_deep_options {
    std::string name = "wide_deep";
    std::int64_t dim = 8;
    layers::mlp_options dnn{.hidden = {256, 128}};
    init embedding_init = init::normal(0, 1e-2);
};

/// Wide & Deep, as DeepCTR-Torch's WDL with the wide columns = every sparse field (the
/// layout's wide_only cross features included) and the deep columns = every sparse field
/// that is not wide_only, plus the dense features.
///
/// Maths, per row, with ids i_f of all sparse fields, e_1..e_F the embeddings of the
/// non-wide_only sparse fields and the pooled sequence fields, x the dense values [Dn]:
///   wide  = sum_f w[i_f] + sum_k pool_k(w[seq k]) + <x, a> + b   (wide_only fields only here)
///   h     = MLP([e_1; ..; e_F; x])                       [F D + Dn] -> [H_last]
///   logit = wide + w_out^T h
/// Shapes: fields [rows, F, D] -> [rows, F D] ++ dense [rows, Dn] -> MLP [rows, H_last]
/// -> [rows, 1]; logits [rows, 1].
/// Parameters: "<name>.embedding" [total_rows, D] (rows of wide_only tables are never
/// looked up, so they keep their initial values), "<name>.linear" [total_rows, 1] (the wide
/// weights), "<name>.dense_linear.weight" [1, Dn] (Dn > 0), "<name>.dense_linear.bias" [1],
/// "<name>.dnn.<i>.weight" / ".bias", "<name>.dnn_linear.weight" [1, H_last] (no bias).
/// Backward: the ops' nodes; sparse row gradients into "<name>.linear" for every field and
/// into "<name>.embedding" for the deep fields.
/// DeepCTR-Torch differences: one table over the global id space (a wide_only field's
/// table still gets embedding rows, which never train: sharing one id space is worth that
/// memory); the global bias in dense_linear.bias; initialisation as deepfm's. The paper's
/// FTRL-for-wide / AdaGrad-for-deep split is the trainer's business (sparse vs dense
/// optimizer), not the model's.
/// Multi-task layouts are refused.
template <class T = float, class B = cpu<>>
struct wide_deep {
    using options = wide_deep_options;

    feature_layout layout;
    options opt;
    ctr_inputs<T, B> inputs;
    layers::mlp<T, B> dnn;
    layers::linear<T, B> dnn_linear;

    wide_deep(param_store<T, B>& store, const feature_layout& l, options o = {})
        : layout(l), opt(checked(std::move(o), l)),
          inputs(store, opt.name, l,
                 input_options{.dim = opt.dim, .first_order = true, .embedding_init = opt.embedding_init}),
          dnn(store, opt.name + ".dnn", inputs.num_fields() * opt.dim + l.num_dense(), opt.dnn),
          dnn_linear(store, opt.name + ".dnn_linear", dnn.out_features(), 1, false) {
        XREC_CHECK(inputs.num_fields() >= 1, "wide_deep '", opt.name,
                   "': the deep part has no field (all are wide_only)");
    }

    /// logits [b.rows, 1].
    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        const std::int64_t n = b.rows;
        const var<T> wide = inputs.first_order(ctx, b);
        const var<T> e = inputs.fields(ctx, b);
        var<T> x = ops::reshape(ctx, e, shape{n, e.s[1] * e.s[2]});
        if (layout.num_dense() > 0) {
            const std::array<var<T>, 2> parts{x, inputs.dense(ctx, b)};
            x = ops::concat(ctx, std::span<const var<T>>(parts));
        }
        return ops::add(ctx, wide, dnn_linear(ctx, dnn(ctx, x)));
    }

    std::string_view kind() const { return "wide_deep"; }

private:
    static options checked(options o, const feature_layout& l) {
        XREC_CHECK(l.num_tasks() == 1, "wide_deep '", o.name, "': a single-task model, but the layout has ",
                   l.num_tasks(), " tasks");
        XREC_CHECK(!o.dnn.hidden.empty() && o.dnn.out == 0, "wide_deep '", o.name,
                   "': needs a deep part (dnn.hidden not empty) and dnn.out 0 (the model adds its own output linear)");
        return o;
    }
};

}  // namespace xrec::models
