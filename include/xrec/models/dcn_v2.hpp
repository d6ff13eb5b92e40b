#pragma once
// DCN-V2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
// Web-scale Learning to Rank Systems", WWW 2021): matrix cross layers (full rank, low rank
// or a mixture of low-rank experts) with an MLP beside them (parallel) or on top (stacked).
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
#include "xrec/layers/cross_net.hpp"
#include "xrec/layers/linear.hpp"
#include "xrec/layers/mlp.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/concat.hpp"

namespace xrec::models {

/// How the cross network and the MLP of dcn_v2 are combined.
enum class dcn_structure {
    parallel,  ///< logit from [x_L; MLP(x0)]     (DeepCTR-Torch DCN / DCNMix)
    stacked,   ///< logit from MLP(x_L)           (the paper's other variant)
};

/// Options of dcn_v2: embedding width 8; cross network `cross` (layers::cross_v2_options:
/// 2 full-rank layers by default; kind low_rank with `rank`, or mixture with `rank`,
/// `experts` and the expert activation = DeepCTR-Torch DCNMix, whose defaults are rank 32,
/// 4 experts, tanh); DNN 128-128 with ReLU; parallel structure. An empty `dnn.hidden`
/// leaves the cross network alone; `dnn.out` must be 0. `name` prefixes every parameter.
struct dcn_v2_options {
    std::string name = "dcn_v2";
    std::int64_t dim = 8;
    layers::cross_v2_options cross{};
    layers::mlp_options dnn{.hidden = {128, 128}};
    dcn_structure structure = dcn_structure::parallel;
    init embedding_init = init::normal(0, 1e-2);
};

/// DCN-V2, as DeepCTR-Torch's DCN(cross_parameterization='matrix') (full rank) and DCNMix
/// (mixture), both parallel and with DeepCTR's linear (first-order) part.
///
/// Maths, per row, with x0 = [e_1; ..; e_F; x] (the non-wide_only sparse field embeddings
/// and pooled sequence fields flattened, then the dense values), d = F D + Dn:
///   full:     x_{l+1} = x0 (.) (W_l x_l + b_l) + x_l
///   low rank: x_{l+1} = x0 (.) (U_l V_l^T x_l + b_l) + x_l
///   mixture:  x_{l+1} = sum_k softmax_k(G x_l) x0 (.) (U_lk g(C_lk g(V_lk^T x_l)) + b_l) + x_l
///   (layers::cross_net_v2), then
///   parallel: logit = lin + w_out^T [x_L; MLP(x0)]
///   stacked:  logit = lin + w_out^T MLP(x_L)
/// with lin the first-order part (all sparse fields incl. wide_only, sequences, dense
/// linear, bias). Without a DNN both are lin + w_out^T x_L.
/// Shapes: x0, x_L [rows, d]; MLP out [rows, H_last]; logits [rows, 1].
/// Parameters: "<name>.embedding" [total_rows, D], "<name>.linear" [total_rows, 1],
/// "<name>.dense_linear.weight" [1, Dn] (Dn > 0), "<name>.dense_linear.bias" [1], the cross
/// network's "<name>.cross.<l>.w" [d, d] | ".u", ".v" [d, r] | ".u", ".v" [K, d, r], ".c"
/// [K, r, r] and "<name>.cross.gate" [K, d], "<name>.cross.<l>.b" [d]; "<name>.dnn.<i>.weight"
/// / ".bias"; "<name>.dnn_linear.weight" [1, d + H_last] (parallel), [1, H_last] (stacked)
/// or [1, d] (no DNN), no bias.
/// Backward: one fused node per cross layer (see layers::cross_net_v2), the MLP's nodes.
/// DeepCTR-Torch differences: one table over the global id space; global bias in
/// dense_linear.bias; DeepCTR's full-rank kernels are [L, d, d] applied as W x (here
/// [d, d] per layer, [out, in] as nn.Linear: the same map); DCNMix's U, V, C are stacked
/// [L, K, ...] and its gate is one Linear(d, 1, bias=False) per expert (here one [K, d]
/// matrix); DeepCTR has no low-rank-only or stacked variant. Initialisation as deepfm's
/// for embeddings and DNN.
/// Multi-task layouts are refused.
template <class T = float, class B = cpu<>>
struct dcn_v2 {
    using options = dcn_v2_options;

    feature_layout layout;
    options opt;
    ctr_inputs<T, B> inputs;
    layers::cross_net_v2<T, B> cross;
    std::optional<layers::mlp<T, B>> dnn;  // absent when dnn.hidden is empty
    layers::linear<T, B> dnn_linear;

    dcn_v2(param_store<T, B>& store, const feature_layout& l, options o = {})
        : layout(l), opt(checked(std::move(o), l)),
          inputs(store, opt.name, l,
                 input_options{.dim = opt.dim, .first_order = true, .embedding_init = opt.embedding_init}),
          cross(store, opt.name + ".cross", input_width(), opt.cross),
          dnn(opt.dnn.hidden.empty()
                  ? std::nullopt
                  : std::optional<layers::mlp<T, B>>(std::in_place, store, opt.name + ".dnn", input_width(), opt.dnn)),
          dnn_linear(store, opt.name + ".dnn_linear", head_width(), 1, false) {}

    /// Width d of the cross network's input: F D + Dn.
    std::int64_t input_width() const { return inputs.num_fields() * opt.dim + layout.num_dense(); }

    /// logits [b.rows, 1].
    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        const std::int64_t n = b.rows;
        const var<T> lin = inputs.first_order(ctx, b);
        const var<T> e = inputs.fields(ctx, b);
        var<T> x0 = ops::reshape(ctx, e, shape{n, e.s[1] * e.s[2]});
        if (layout.num_dense() > 0) {
            const std::array<var<T>, 2> parts{x0, inputs.dense(ctx, b)};
            x0 = ops::concat(ctx, std::span<const var<T>>(parts));
        }
        var<T> h = cross(ctx, x0);
        if (dnn) {
            if (opt.structure == dcn_structure::stacked) {
                h = (*dnn)(ctx, h);
            } else {
                const std::array<var<T>, 2> parts{h, (*dnn)(ctx, x0)};
                h = ops::concat(ctx, std::span<const var<T>>(parts));
            }
        }
        return ops::add(ctx, lin, dnn_linear(ctx, h));
    }

    std::string_view kind() const { return "dcn_v2"; }

private:
    std::int64_t head_width() const {
        if (!dnn) return input_width();
        return opt.structure == dcn_structure::stacked ? dnn->out_features() : input_width() + dnn->out_features();
    }
    static options checked(options o, const feature_layout& l) {
        XREC_CHECK(l.num_tasks() == 1, "dcn_v2 '", o.name, "': a single-task model, but the layout has ", l.num_tasks(),
                   " tasks");
        XREC_CHECK(o.dnn.out == 0,
                   "dcn_v2 '", o.name, "': dnn.out must be 0 (the model adds its own output linear), got ",
                   o.dnn.out);
        return o;
    }
};

}  // namespace xrec::models
