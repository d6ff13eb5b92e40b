#pragma once
// AutoInt (Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive
// Neural Networks", CIKM 2019): stacked multi-head self-attention over the field embeddings,
// with residual connections, optionally beside an MLP.
#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/layers/linear.hpp"
#include "xrec/layers/mlp.hpp"
#include "xrec/layers/multi_head_attention.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/concat.hpp"

namespace xrec::models {

/// Options of autoint (DeepCTR-Torch AutoInt defaults): embedding width 8, 3 interacting
/// layers of 2 heads with residual connections, DNN 256-128 with ReLU beside them. An empty
/// `dnn.hidden` gives the pure AutoInt of the paper; `dnn.out` must be 0. `attention_bias`
/// adds the q/k/v and output projection biases (DeepCTR has none); `attention_dropout` is
/// the attention weights' dropout rate in training. `name` prefixes every parameter.
struct autoint_options {
    std::string name = "autoint";
    std::int64_t dim = 8;
    std::int64_t attention_layers = 3;
    std::int64_t heads = 2;
    bool residual = true;
    bool attention_bias = false;
    double attention_dropout = 0;
    layers::mlp_options dnn{.hidden = {256, 128}};
    init embedding_init = init::normal(0, 1e-2);
};

/// AutoInt+, as DeepCTR-Torch's AutoInt (which keeps DeepCTR's linear part).
///
/// Maths, per row, with E_0 = [e_1; ..; e_F] [F, D] the embeddings of the non-wide_only
/// sparse fields and pooled sequence fields, x the dense values [Dn]:
///   interacting layer l = 0..L-1:
///     A     = MultiHeadAttention_l(E_l, E_l, E_l)  (torch.nn.MultiheadAttention: q/k/v
///             projections, per-head softmax(q k^T / sqrt(D/H)) v, output projection)
///     E_l+1 = ReLU(A + E_l R_l^T)                  (R_l = residual projection; ReLU(A)
///                                                   without `residual`)
///   a     = flatten(E_L)                           [F D]
///   h     = MLP([e_1; ..; e_F; x])                 [F D + Dn] -> [H_last]
///   logit = lin + w_out^T [a; h]                   (w_out^T a without a DNN)
/// with lin the first-order part (all sparse fields incl. wide_only, sequences, dense
/// linear, bias). Dense features are NOT turned into attention fields: as in DeepCTR they
/// enter the MLP input (concatenated after the flattened embeddings) and the first-order
/// part; without a DNN they enter only the first-order part.
/// Shapes: E_l [rows, F, D]; a [rows, F D]; h [rows, H_last]; logits [rows, 1].
/// Parameters: "<name>.embedding" [total_rows, D], "<name>.linear" [total_rows, 1],
/// "<name>.dense_linear.weight" [1, Dn] (Dn > 0), "<name>.dense_linear.bias" [1]; per layer
/// l "<name>.att.<l>.in_proj_weight" [3D, D], "<name>.att.<l>.out_proj.weight" [D, D] (and
/// ".in_proj_bias" [3D], ".out_proj.bias" [D] with attention_bias), with residual
/// "<name>.att.<l>.res.weight" [D, D] (no bias); "<name>.dnn.<i>.weight" / ".bias";
/// "<name>.dnn_linear.weight" [1, F D + H_last] (no bias; [1, F D] without a DNN).
/// Backward: the attention's nodes (projection GEMMs and the attention core, which saves
/// the attention weights [rows, H, F, F]), the residual linear, ReLU and MLP nodes.
/// DeepCTR-Torch differences: DeepCTR's InteractingLayer has no output projection and by
/// default no 1/sqrt(D/H) scaling (scaling=False); here each layer is a full
/// torch.nn.MultiheadAttention (output projection, scaled scores). Its W_Query / W_key /
/// W_Value [D, D] are applied as x W (here in_proj_weight rows, applied as x W^T), and
/// W_Res likewise (here res.weight as x R^T). One table over the global id space; global
/// bias in dense_linear.bias.
/// Multi-task layouts are refused.
template <class T = float, class B = cpu<>>
struct autoint {
    using options = autoint_options;

    feature_layout layout;
    options opt;
    ctr_inputs<T, B> inputs;
    std::vector<layers::multi_head_attention<T, B>> att;
    std::vector<layers::linear<T, B>> res;  // one per layer with options.residual
    std::optional<layers::mlp<T, B>> dnn;   // absent when dnn.hidden is empty
    std::optional<layers::linear<T, B>> dnn_linear;

    autoint(param_store<T, B>& store, const feature_layout& l, options o = {})
        : layout(l), opt(checked(std::move(o), l)),
          inputs(store, opt.name, l,
                 input_options{.dim = opt.dim, .first_order = true, .embedding_init = opt.embedding_init}) {
        const std::int64_t F = inputs.num_fields(), D = opt.dim;
        XREC_CHECK(F >= 1, "autoint '", opt.name, "': the layout has no embedded field");
        for (std::int64_t i = 0; i < opt.attention_layers; ++i) {
            const std::string p = opt.name + ".att." + std::to_string(i);
            att.emplace_back(store, p, D, opt.heads, opt.attention_dropout, opt.attention_bias);
            if (opt.residual) res.emplace_back(store, p + ".res", D, D, false);
        }
        std::int64_t head = F * D;
        if (!opt.dnn.hidden.empty()) {
            dnn.emplace(store, opt.name + ".dnn", F * D + l.num_dense(), opt.dnn);
            head += dnn->out_features();
        }
        dnn_linear.emplace(store, opt.name + ".dnn_linear", head, 1, false);
    }

    /// logits [b.rows, 1].
    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        const std::int64_t n = b.rows;
        const var<T> lin = inputs.first_order(ctx, b);
        const var<T> e = inputs.fields(ctx, b);
        var<T> x = e;
        for (std::size_t i = 0; i < att.size(); ++i) {
            var<T> a = att[i](ctx, x);
            if (opt.residual) a = ops::add(ctx, a, res[i](ctx, x));
            x = ops::relu(ctx, a);
        }
        const std::int64_t FD = e.s[1] * e.s[2];
        var<T> stack = ops::reshape(ctx, x, shape{n, FD});
        if (dnn) {
            var<T> d = ops::reshape(ctx, e, shape{n, FD});
            if (layout.num_dense() > 0) {
                const std::array<var<T>, 2> parts{d, inputs.dense(ctx, b)};
                d = ops::concat(ctx, std::span<const var<T>>(parts));
            }
            const std::array<var<T>, 2> parts{stack, (*dnn)(ctx, d)};
            stack = ops::concat(ctx, std::span<const var<T>>(parts));
        }
        return ops::add(ctx, lin, (*dnn_linear)(ctx, stack));
    }

    std::string_view kind() const { return "autoint"; }

private:
    static options checked(options o, const feature_layout& l) {
        XREC_CHECK(l.num_tasks() == 1, "autoint '", o.name, "': a single-task model, but the layout has ",
                   l.num_tasks(), " tasks");
        XREC_CHECK(o.attention_layers >= 1, "autoint '", o.name, "': needs attention_layers >= 1, got ",
                   o.attention_layers);
        XREC_CHECK(o.dim % o.heads == 0 && o.heads >= 1, "autoint '", o.name, "': dim ", o.dim,
                   " must be a multiple of heads ", o.heads);
        XREC_CHECK(o.dnn.out == 0,
                   "autoint '", o.name, "': dnn.out must be 0 (the model adds its own output linear), got ",
                   o.dnn.out);
        return o;
    }
};

}  // namespace xrec::models
