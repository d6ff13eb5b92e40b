#pragma once
// Neural factorization machine (He & Chua, "Neural Factorization Machines for Sparse
// Predictive Analytics", SIGIR 2017): first-order part + an MLP over the bi-interaction
// pooling of the field embeddings.
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
#include "xrec/layers/batch_norm.hpp"
#include "xrec/layers/bi_interaction.hpp"
#include "xrec/layers/linear.hpp"
#include "xrec/layers/mlp.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/concat.hpp"
#include "xrec/ops/dropout.hpp"

namespace xrec::models {

/// Options of nfm (DeepCTR-Torch defaults): embedding width 8, DNN 128-128 with ReLU,
/// bi_dropout 0; `bi_batch_norm` adds the paper's batch norm on the pooled vector (DeepCTR
/// has none). An empty `dnn.hidden` leaves only the output linear over the pooled vector
/// (and the dense values); `dnn.out` must be 0. `name` prefixes every parameter.
struct nfm_options {
    std::string name = "nfm";
    std::int64_t dim = 8;
    layers::mlp_options dnn{.hidden = {128, 128}};
    bool bi_batch_norm = false;
    layers::batch_norm_options bn{};
    double bi_dropout = 0;
    init embedding_init = init::normal(0, 1e-2);
};

/// NFM, as DeepCTR-Torch's NFM (plus an optional batch norm after the pooling).
///
/// Maths, per row, with e_1..e_F the embeddings of the non-wide_only sparse fields and the
/// pooled sequence fields, x the dense values [Dn], lin the first-order part (all sparse
/// fields incl. wide_only, sequences, dense linear, bias):
///   p     = sum_{i<j} e_i (.) e_j                     [D]   (layers::bi_interaction)
///   p     = dropout(BN(p))                            (each optional; BN in training uses
///                                                      batch statistics, else running ones)
///   h     = MLP([p; x])                               [D + Dn] -> [H_last]
///   logit = lin + w_out^T h
/// Shapes: fields [rows, F, D] -> pooled [rows, D] ++ dense [rows, Dn] -> [rows, H_last]
/// -> [rows, 1]; logits [rows, 1].
/// Parameters: "<name>.embedding" [total_rows, D], "<name>.linear" [total_rows, 1],
/// "<name>.dense_linear.weight" [1, Dn] (Dn > 0), "<name>.dense_linear.bias" [1],
/// with bi_batch_norm "<name>.bi_bn.weight" / ".bias" [D] and the running statistics
/// "<name>.bi_bn.running_mean" / ".running_var" ([1, D] tables no optimizer touches),
/// "<name>.dnn.<i>.weight" / ".bias", "<name>.dnn_linear.weight" [1, H_last] (no bias).
/// Backward: the ops' nodes (bi-interaction saves the field embeddings).
/// DeepCTR-Torch differences: one table over the global id space; global bias in
/// dense_linear.bias; the optional batch norm; initialisation as deepfm's. As in DeepCTR,
/// the dense values join the pooled vector at the DNN input (the paper has no dense
/// features).
/// Multi-task layouts are refused.
template <class T = float, class B = cpu<>>
struct nfm {
    using options = nfm_options;

    feature_layout layout;
    options opt;
    ctr_inputs<T, B> inputs;
    layers::bi_interaction<T, B> bi;
    std::optional<layers::batch_norm<T, B>> bi_bn;  // with options.bi_batch_norm
    layers::mlp<T, B> dnn;
    layers::linear<T, B> dnn_linear;

    nfm(param_store<T, B>& store, const feature_layout& l, options o = {})
        : layout(l), opt(checked(std::move(o), l)),
          inputs(store, opt.name, l,
                 input_options{.dim = opt.dim, .first_order = true, .embedding_init = opt.embedding_init}),
          bi(store, opt.name + ".bi"),
          bi_bn(opt.bi_batch_norm ? std::optional<layers::batch_norm<T, B>>(std::in_place, store, opt.name + ".bi_bn",
                                                                            opt.dim, opt.bn)
                                  : std::nullopt),
          dnn(store, opt.name + ".dnn", opt.dim + l.num_dense(), opt.dnn),
          dnn_linear(store, opt.name + ".dnn_linear", dnn.out_features(), 1, false) {
        XREC_CHECK(inputs.num_fields() >= 1, "nfm '", opt.name, "': the layout has no embedded field");
    }

    /// logits [b.rows, 1].
    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        const var<T> lin = inputs.first_order(ctx, b);
        var<T> p = bi(ctx, inputs.fields(ctx, b));
        if (bi_bn) p = (*bi_bn)(ctx, p);
        if (opt.bi_dropout > 0) p = ops::dropout(ctx, p, opt.bi_dropout);
        if (layout.num_dense() > 0) {
            const std::array<var<T>, 2> parts{p, inputs.dense(ctx, b)};
            p = ops::concat(ctx, std::span<const var<T>>(parts));
        }
        return ops::add(ctx, lin, dnn_linear(ctx, dnn(ctx, p)));
    }

    std::string_view kind() const { return "nfm"; }

private:
    static options checked(options o, const feature_layout& l) {
        XREC_CHECK(l.num_tasks() == 1, "nfm '", o.name, "': a single-task model, but the layout has ", l.num_tasks(),
                   " tasks");
        XREC_CHECK(o.dnn.out == 0,
                   "nfm '", o.name, "': dnn.out must be 0 (the model adds its own output linear), got ",
                   o.dnn.out);
        XREC_CHECK(o.bi_dropout >= 0 && o.bi_dropout < 1, "nfm '", o.name, "': bi_dropout must be in [0, 1), got ",
                   o.bi_dropout);
        return o;
    }
};

}  // namespace xrec::models
