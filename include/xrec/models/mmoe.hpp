#pragma once
// MMoE: Multi-gate Mixture-of-Experts (Ma et al., "Modeling Task Relationships in Multi-task
// Learning with Multi-gate Mixture-of-Experts", KDD 2018).
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/layers/linear.hpp"
#include "xrec/layers/mlp.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/models/seq_mt_inputs.hpp"
#include "xrec/ops/attention.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/concat.hpp"
#include "xrec/ops/softmax.hpp"

namespace xrec::models {

/// Multi-gate mixture of experts:
///   x = [embeddings of the non-wide sparse fields, pooled sequence fields, dense]  [B, In]
///   e_k = expert_k(x)                           [B, H]   k = 1..E (MLPs, activation after each layer)
///   g_t = softmax(x Wg_t^T (+ bg_t))            [B, E]   one gate per task
///   f_t = sum_k g_t[:, k] e_k                   [B, H]
///   logit_t = tower_t(f_t)                      [B, 1];  logits [B, K], K = layout.num_tasks() >= 2
/// Parameters: "mmoe.embedding" (ctr_inputs), "mmoe.expert.<k>.<i>.weight/bias"
/// (layers::mlp), "mmoe.gate.<t>.weight" [E, In] (and ".bias" [E] with gate_bias),
/// "mmoe.tower.<t>.<i>.weight/bias", "mmoe.tower.<t>.out.weight" [1, h_last], ".out.bias".
/// DeepCTR-Torch: MMOE(num_experts, expert_dnn_hidden_units, gate_dnn_hidden_units = (),
/// tower_dnn_hidden_units): its gate is nn.Linear(In, E, bias=False) then softmax, as here
/// (gate_bias off by default, as the paper's g(x) = softmax(W x)); it returns sigmoid
/// outputs, this returns logits. Gates here are a single linear layer (no gate DNN).
/// Backward: that of the layers; the mixture is one ops::jagged_weighted_sum over the
/// [B E, H] stacked experts (dg and de both flow).
template <class T = float, class B = cpu<>>
struct mmoe {
    struct options {
        input_options inputs{};
        std::int64_t experts = 4;
        layers::mlp_options expert{{256, 128}, activation::relu, 0, false, 0};
        bool gate_bias = false;
        layers::mlp_options tower{{64}, activation::relu, 0, false, 0};
    };

    ctr_inputs<T, B> inputs;
    std::vector<layers::mlp<T, B>> experts;
    std::vector<layers::linear<T, B>> gates;
    std::vector<layers::mlp<T, B>> towers;

    mmoe(param_store<T, B>& s, const feature_layout& layout, options o) : inputs(s, "mmoe", layout, o.inputs) {
        XREC_CHECK(layout.num_tasks() >= 2, "mmoe: needs a layout with 2 or more tasks, got ", layout.num_tasks());
        XREC_CHECK(o.experts >= 1, "mmoe: needs at least one expert, got ", o.experts);
        XREC_CHECK(!o.expert.hidden.empty() || o.expert.out > 0, "mmoe: experts need at least one layer");
        const std::int64_t in = flat_width(inputs);
        for (std::int64_t k = 0; k < o.experts; ++k) experts.emplace_back(s, "mmoe.expert." + std::to_string(k), in, o.expert);
        for (std::int64_t t = 0; t < layout.num_tasks(); ++t)
            gates.emplace_back(s, "mmoe.gate." + std::to_string(t), in, o.experts, o.gate_bias);
        o.tower.out = 1;
        for (std::int64_t t = 0; t < layout.num_tasks(); ++t)
            towers.emplace_back(s, "mmoe.tower." + std::to_string(t), experts[0].out_features(), o.tower);
    }

    std::string_view kind() const { return "mmoe"; }

    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        const std::int64_t n = b.rows, E = static_cast<std::int64_t>(experts.size()), H = experts[0].out_features();
        const var<T> x = flat_features(ctx, inputs, b);
        std::vector<var<T>> ex;
        for (const auto& e : experts) ex.push_back(e(ctx, x));
        // [B, E H] -> [B E, H]: row b E + k is expert k's output for row b.
        const var<T> stacked = ops::reshape(ctx, E == 1 ? ex[0] : ops::concat(ctx, std::span<const var<T>>(ex)), shape{n * E, H});
        auto* seg = ctx.template scratch<std::int64_t>(n + 1);
        for (std::int64_t r = 0; r <= n; ++r) seg[r] = r * E;
        const std::span<const std::int64_t> segs(seg, static_cast<std::size_t>(n + 1));
        std::vector<var<T>> out;
        for (std::size_t t = 0; t < towers.size(); ++t) {
            const var<T> g = ops::reshape(ctx, ops::softmax(ctx, gates[t](ctx, x)), shape{n * E});
            out.push_back(towers[t](ctx, ops::jagged_weighted_sum(ctx, g, stacked, segs)));
        }
        return ops::concat(ctx, std::span<const var<T>>(out));
    }
};

}  // namespace xrec::models
