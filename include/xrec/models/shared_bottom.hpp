#pragma once
// Shared-bottom multi-task network (Caruana, "Multitask Learning", 1997; the baseline of
// MMoE and ESMM).
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
#include "xrec/layers/mlp.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/models/seq_mt_inputs.hpp"
#include "xrec/ops/concat.hpp"

namespace xrec::models {

/// Shared bottom: one MLP shared by all tasks, then a tower per task.
///   x = [embeddings of the non-wide sparse fields, pooled sequence fields, dense]  [B, In]
///   h = bottom(x)                    [B, H]   (hidden layers, activation after each)
///   logit_t = tower_t(h)             [B, 1]   (hidden layers, then one output unit)
///   logits = [logit_1, ..., logit_K] [B, K],  K = layout.num_tasks() >= 2
/// Parameters: "shared_bottom.embedding" (ctr_inputs), "shared_bottom.bottom.<i>.weight/bias"
/// (layers::mlp), "shared_bottom.tower.<t>.<i>.weight/bias", "shared_bottom.tower.<t>.out.weight"
/// [1, h_last] and ".out.bias" [1] (t = task index).
/// DeepCTR-Torch: SharedBottom(bottom_dnn_hidden_units, tower_dnn_hidden_units); it returns
/// sigmoid outputs, this returns logits (the loss is mean BCE with logits over rows and tasks).
/// Backward: that of the layers.
template <class T = float, class B = cpu<>>
struct shared_bottom {
    struct options {
        input_options inputs{};
        layers::mlp_options bottom{{256, 128}, activation::relu, 0, false, 0};
        layers::mlp_options tower{{64}, activation::relu, 0, false, 0};
    };

    ctr_inputs<T, B> inputs;
    layers::mlp<T, B> bottom;
    std::vector<layers::mlp<T, B>> towers;

    shared_bottom(param_store<T, B>& s, const feature_layout& layout, options o)
        : inputs(s, "shared_bottom", layout, o.inputs), bottom(s, "shared_bottom.bottom", flat_width(inputs), o.bottom) {
        XREC_CHECK(layout.num_tasks() >= 2, "shared_bottom: needs a layout with 2 or more tasks, got ", layout.num_tasks());
        o.tower.out = 1;
        for (std::int64_t t = 0; t < layout.num_tasks(); ++t)
            towers.emplace_back(s, "shared_bottom.tower." + std::to_string(t), bottom.out_features(), o.tower);
    }

    std::string_view kind() const { return "shared_bottom"; }

    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        const var<T> h = bottom(ctx, flat_features(ctx, inputs, b));
        std::vector<var<T>> out;
        for (const auto& tw : towers) out.push_back(tw(ctx, h));
        return ops::concat(ctx, std::span<const var<T>>(out));
    }
};

}  // namespace xrec::models
