#pragma once
// DIN: Deep Interest Network (Zhou et al., "Deep Interest Network for Click-Through Rate
// Prediction", KDD 2018).
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/layers/target_attention.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/models/seq_mt_inputs.hpp"
#include "xrec/ops/concat.hpp"

namespace xrec::models {

/// Deep Interest Network. For row b with candidate q_b = [e(c_1), .., e(c_P)] [P D] (the
/// candidate fields of `pairs`) and behaviours k_j [P D], j in the row's history (the paired
/// sequence fields, oldest first; see behaviour_fields):
///   s_j  = out(MLP_att([q_b, k_j, q_b - k_j, q_b * k_j]))   (the activation unit)
///   w_j  = s_j, or softmax_{j in b}(s_j) with attention.softmax   (the paper: no softmax)
///   u_b  = sum_{j in b} w_j k_j        [P D]   (an empty history gives u_b = 0)
///   x_b  = [u_b, rest_b]               rest = every non-wide sparse field (candidates too),
///                                      the other sequence fields pooled, the dense features
///   logit_b = tower(x_b)               [tasks]  (hidden layers with dice / prelu / relu ...)
/// Shapes: batch of B rows -> logits [B, layout.num_tasks()] (one output unit per task).
/// Parameters: "din.embedding" [total_rows, D] (ctr_inputs), the activation unit
/// "din.attention.*" (layers::target_attention: ".0.weight" [H0, 4 P D], ...,
/// ".out.weight" [1, H_last]), the tower "din.mlp.*" (act_tower: ".<i>.weight", ".<i>.bias",
/// ".<i>.act.alpha" / ".weight", ".out.weight" [tasks, h_last], ".out.bias").
/// DeepCTR-Torch's DIN is the same model with att_activation = dice, att_weight_normalization
/// = softmax option and dnn_activation; differences: DeepCTR pads histories to max_len and
/// masks (here histories are jagged, nothing is padded, so Dice statistics in the unit cover
/// real behaviours only), pools non-history sequence fields (here: their layout pooling),
/// and puts dense features into the DNN the same way. The paper's code uses a sigmoid unit
/// (the default here) and Dice in the tower (default here too).
/// Per-id weights of a history field (layout weighted) are not used by the attention: a
/// behaviour's weight is what the unit computes.
/// Backward: that of the layers (ops::din_unit_input fuses the unit's first layer).
template <class T = float, class B = cpu<>>
struct din {
    struct options {
        input_options inputs{};
        std::vector<behaviour_pair> pairs{{"item_id", "hist_item_id"}};
        layers::target_attention_options attention{};
        act_tower_options mlp{{200, 80}, layers::unit_activation::dice, 0, {}};
    };

    ctr_inputs<T, B> inputs;
    behaviour_fields<T, B> beh;
    layers::target_attention<T, B> attention;
    act_tower<T, B> mlp;
    std::int64_t tasks = 1;

    din(param_store<T, B>& s, const feature_layout& layout, options o)
        : inputs(s, "din", layout, o.inputs),
          beh(inputs, o.pairs, "din"),
          attention(s, "din.attention", beh.width(), o.attention),
          mlp(s, "din.mlp", beh.width() + beh.rest_width(), layout.num_tasks(), o.mlp),
          tasks(layout.num_tasks()) {}

    std::string_view kind() const { return "din"; }

    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        auto off = beh.offsets(b, "din");
        const var<T> q = beh.query(ctx, inputs, b);
        const var<T> k = beh.keys(ctx, inputs, b);
        const var<T> parts[2] = {attention(ctx, q, k, off), beh.rest(ctx, inputs, b)};
        return mlp(ctx, ops::concat(ctx, std::span<const var<T>>(parts, 2)));
    }
};

}  // namespace xrec::models
