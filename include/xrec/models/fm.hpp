#pragma once
// Factorization machine (Rendle, ICDM 2010) as a CTR model: first-order part plus all
// pairwise inner products of the field embeddings.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/layers/fm.hpp"
#include "xrec/models/inputs.hpp"

namespace xrec::models {

/// Options of fm: the embedding width and initialisation; `name` prefixes every parameter.
struct fm_options {
    std::string name = "fm";
    std::int64_t dim = 8;
    init embedding_init = init::normal(0, 1e-2);
};

/// Factorization machine (DeepCTR-Torch: DeepFM with dnn_hidden_units=() , i.e. linear_model
/// + FM(); there is no separate FM model there).
///
/// Maths, per row, with e_1..e_F the embeddings of the non-wide_only sparse fields followed
/// by the pooled sequence fields (models::ctr_inputs::fields) and lin the first-order part
/// (models::lr: all sparse fields incl. wide_only, sequences, dense linear, global bias):
///   logit = lin + sum_{i<j} <e_i, e_j>
///         = lin + 0.5 * sum_d [ (sum_f e_fd)^2 - sum_f e_fd^2 ]   (O(F D); layers::fm)
/// Shapes: fields [rows, F, D], lin [rows, 1] -> logits [rows, 1].
/// Parameters: "<name>.embedding" [total_rows, D] (N(0, 0.01)), "<name>.linear"
/// [total_rows, 1], "<name>.dense_linear.weight" [1, Dn] (Dn > 0), "<name>.dense_linear.bias" [1].
/// Backward: one fused fm node (saves the field embeddings) above the input block's
/// lookups; sparse row gradients into both tables.
/// DeepCTR-Torch differences: one table over the global id space; the global bias in
/// dense_linear.bias; dense features enter only the first-order part (as in DeepCTR).
/// Multi-task layouts are refused.
template <class T = float, class B = cpu<>>
struct fm {
    using options = fm_options;

    feature_layout layout;
    options opt;
    ctr_inputs<T, B> inputs;
    layers::fm<T, B> interaction;

    fm(param_store<T, B>& store, const feature_layout& l, options o = {})
        : layout(l), opt(std::move(o)),
          inputs(store, opt.name, l,
                 input_options{.dim = opt.dim, .first_order = true, .embedding_init = opt.embedding_init}),
          interaction(store, opt.name + ".fm") {
        XREC_CHECK(l.num_tasks() == 1, "fm '", opt.name, "': a single-task model, but the layout has ", l.num_tasks(),
                   " tasks");
        XREC_CHECK(inputs.num_fields() >= 1, "fm '", opt.name, "': the layout has no embedded field");
    }

    /// logits [b.rows, 1].
    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        return interaction(ctx, inputs.fields(ctx, b), inputs.first_order(ctx, b));
    }

    std::string_view kind() const { return "fm"; }
};

}  // namespace xrec::models
