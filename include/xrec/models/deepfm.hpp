#pragma once
// DeepFM (Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR
// Prediction", IJCAI 2017): first-order part + FM + an MLP over the same field embeddings.
#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/layers/fm.hpp"
#include "xrec/layers/linear.hpp"
#include "xrec/layers/mlp.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/concat.hpp"

namespace xrec::models {

/// Options of deepfm (DeepCTR-Torch defaults): embedding width 8, DNN 256-128 with ReLU and
/// no dropout. `dnn.out` must stay 0 (the model adds its own bias-free output linear); an
/// empty `dnn.hidden` drops the deep part (the model is then fm). `name` prefixes every
/// parameter.
struct deepfm_options {
    std::string name = "deepfm";
    std::int64_t dim = 8;
    layers::mlp_options dnn{.hidden = {256, 128}};
    init embedding_init = init::normal(0, 1e-2);
};

/// DeepFM, as DeepCTR-Torch's DeepFM(use_fm=True).
///
/// Maths, per row, with e_1..e_F the embeddings of the non-wide_only sparse fields and the
/// pooled sequence fields (models::ctr_inputs::fields), x the dense values [Dn] and lin the
/// first-order part (all sparse fields incl. wide_only, sequences, dense linear, bias):
///   fm    = sum_{i<j} <e_i, e_j>                                   (layers::fm)
///   h     = MLP([e_1; ..; e_F; x])          [F D + Dn] -> [H_last]  (layers::mlp)
///   logit = lin + fm + w_out^T h
/// Shapes: fields [rows, F, D] -> flattened [rows, F D], concatenated with dense [rows, Dn],
/// MLP -> [rows, H_last], output linear -> [rows, 1]; logits [rows, 1].
/// Parameters: "<name>.embedding" [total_rows, D], "<name>.linear" [total_rows, 1],
/// "<name>.dense_linear.weight" [1, Dn] (Dn > 0), "<name>.dense_linear.bias" [1],
/// "<name>.dnn.<i>.weight" [H_i, H_{i-1}] / ".bias" [H_i] (layers::mlp), and
/// "<name>.dnn_linear.weight" [1, H_last] (no bias, as DeepCTR's dnn_linear).
/// Backward: the nodes of the ops called (fm node, linear nodes, concat); sparse row
/// gradients into both tables, the fields' rows receiving from FM and from the MLP.
/// DeepCTR-Torch differences: one table over the global id space; the global bias in
/// dense_linear.bias (DeepCTR's PredictionLayer bias); initialisation (embeddings N(0, 0.01)
/// here vs N(0, 1e-4); DNN weights as torch.nn.Linear here vs N(0, 1e-4)). The DNN input
/// order is DeepCTR's: all field embeddings flattened, then the dense values.
/// Multi-task layouts are refused.
template <class T = float, class B = cpu<>>
struct deepfm {
    using options = deepfm_options;

    feature_layout layout;
    options opt;
    ctr_inputs<T, B> inputs;
    layers::fm<T, B> interaction;
    std::optional<layers::mlp<T, B>> dnn;            // absent when dnn.hidden is empty
    std::optional<layers::linear<T, B>> dnn_linear;  // with dnn

    deepfm(param_store<T, B>& store, const feature_layout& l, options o = {})
        : layout(l), opt(checked(std::move(o), l)),
          inputs(store, opt.name, l,
                 input_options{.dim = opt.dim, .first_order = true, .embedding_init = opt.embedding_init}),
          interaction(store, opt.name + ".fm") {
        if (opt.dnn.hidden.empty()) return;
        dnn.emplace(store, opt.name + ".dnn", inputs.num_fields() * opt.dim + l.num_dense(), opt.dnn);
        dnn_linear.emplace(store, opt.name + ".dnn_linear", dnn->out_features(), 1, false);
    }

    /// logits [b.rows, 1].
    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        const std::int64_t n = b.rows;
        const var<T> e = inputs.fields(ctx, b);
        var<T> logit = interaction(ctx, e, inputs.first_order(ctx, b));
        if (!dnn) return logit;
        var<T> x = ops::reshape(ctx, e, shape{n, e.s[1] * e.s[2]});
        if (layout.num_dense() > 0) {
            const std::array<var<T>, 2> parts{x, inputs.dense(ctx, b)};
            x = ops::concat(ctx, std::span<const var<T>>(parts));
        }
        return ops::add(ctx, logit, (*dnn_linear)(ctx, (*dnn)(ctx, x)));
    }

    std::string_view kind() const { return "deepfm"; }

private:
    static options checked(options o, const feature_layout& l) {
        XREC_CHECK(l.num_tasks() == 1, "deepfm '", o.name, "': a single-task model, but the layout has ", l.num_tasks(),
                   " tasks");
        XREC_CHECK(o.dnn.out == 0,
                   "deepfm '", o.name, "': dnn.out must be 0 (the model adds its own output linear), got ",
                   o.dnn.out);
        return o;
    }
};

}  // namespace xrec::models
