#pragma once
// Deep & Cross Network (Wang et al., "Deep & Cross Network for Ad Click Predictions",
// ADKDD 2017): a cross network and an MLP side by side over the same input vector.
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

/// Options of dcn (DeepCTR-Torch DCN defaults): embedding width 8, 2 cross layers, DNN
/// 128-128 with ReLU, no dropout. An empty `dnn.hidden` leaves the cross network alone;
/// `dnn.out` must be 0. `name` prefixes every parameter.
struct dcn_options {
    std::string name = "dcn";
    std::int64_t dim = 8;
    std::int64_t cross_layers = 2;
    layers::mlp_options dnn{.hidden = {128, 128}};
    init embedding_init = init::normal(0, 1e-2);
};

/// DCN, as DeepCTR-Torch's DCN(cross_parameterization='vector'), which keeps the linear
/// (first-order) part of every DeepCTR model.
///
/// Maths, per row, with x0 = [e_1; ..; e_F; x] (the non-wide_only sparse field embeddings
/// and pooled sequence fields flattened, then the dense values), d = F D + Dn:
///   x_{l+1} = x0 <x_l, w_l> + b_l + x_l,  l = 0..L-1       (layers::cross_net)
///   h       = MLP(x0)                                       [d] -> [H_last]
///   logit   = lin + w_out^T [x_L; h]
/// with lin the first-order part (all sparse fields incl. wide_only, sequences, dense
/// linear, bias).
/// Shapes: x0 [rows, d]; x_L [rows, d]; h [rows, H_last]; logits [rows, 1].
/// Parameters: "<name>.embedding" [total_rows, D], "<name>.linear" [total_rows, 1],
/// "<name>.dense_linear.weight" [1, Dn] (Dn > 0), "<name>.dense_linear.bias" [1],
/// "<name>.cross.<l>.w" [d] (xavier normal), "<name>.cross.<l>.b" [d] (zeros),
/// "<name>.dnn.<i>.weight" / ".bias", "<name>.dnn_linear.weight" [1, d + H_last] (no bias;
/// [1, d] without a DNN).
/// Backward: one fused node per cross layer (saves x0, x_l and <x_l, w_l>), the MLP's and
/// concat's nodes; x0's gradient sums both branches.
/// DeepCTR-Torch differences: one table over the global id space; global bias in
/// dense_linear.bias; DeepCTR keeps its cross kernels as [L, d, 1] and biases as [L, d, 1]
/// (here one [d] vector per layer); initialisation of embeddings and DNN as deepfm's.
/// Multi-task layouts are refused.
template <class T = float, class B = cpu<>>
struct dcn {
    using options = dcn_options;

    feature_layout layout;
    options opt;
    ctr_inputs<T, B> inputs;
    layers::cross_net<T, B> cross;
    std::optional<layers::mlp<T, B>> dnn;  // absent when dnn.hidden is empty
    layers::linear<T, B> dnn_linear;

    dcn(param_store<T, B>& store, const feature_layout& l, options o = {})
        : layout(l), opt(checked(std::move(o), l)),
          inputs(store, opt.name, l,
                 input_options{.dim = opt.dim, .first_order = true, .embedding_init = opt.embedding_init}),
          cross(store, opt.name + ".cross", input_width(), opt.cross_layers),
          dnn(opt.dnn.hidden.empty()
                  ? std::nullopt
                  : std::optional<layers::mlp<T, B>>(std::in_place, store, opt.name + ".dnn", input_width(), opt.dnn)),
          dnn_linear(store, opt.name + ".dnn_linear", input_width() + (dnn ? dnn->out_features() : 0), 1, false) {}

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
        var<T> stack = cross(ctx, x0);
        if (dnn) {
            const std::array<var<T>, 2> parts{stack, (*dnn)(ctx, x0)};
            stack = ops::concat(ctx, std::span<const var<T>>(parts));
        }
        return ops::add(ctx, lin, dnn_linear(ctx, stack));
    }

    std::string_view kind() const { return "dcn"; }

private:
    static options checked(options o, const feature_layout& l) {
        XREC_CHECK(l.num_tasks() == 1, "dcn '", o.name, "': a single-task model, but the layout has ", l.num_tasks(),
                   " tasks");
        XREC_CHECK(o.dnn.out == 0,
                   "dcn '", o.name, "': dnn.out must be 0 (the model adds its own output linear), got ",
                   o.dnn.out);
        return o;
    }
};

}  // namespace xrec::models
