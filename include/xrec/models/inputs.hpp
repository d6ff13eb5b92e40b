#pragma once
// The input block every CTR model starts with: one embedding table over the layout's whole id
// space, an optional first-order (linear) table beside it, and the dense features.
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/layers/linear.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/concat.hpp"
#include "xrec/ops/embedding.hpp"
#include "xrec/ops/reduce.hpp"

namespace xrec::models {

/// Options of the input block. `dim` is the embedding width shared by all fields;
/// `first_order` adds the linear part (a 1-wide table over the same ids plus a linear map of
/// the dense features with a bias), which lr, fm, deepfm and wide_deep use. `embeddings`
/// false leaves the embedding table out (a purely linear model such as lr would otherwise
/// carry an unused [total_rows, dim] table); fields(), sequence() and lookup() then refuse.
struct input_options {
    std::int64_t dim = 8;
    bool first_order = false;
    init embedding_init = init::normal(0, 1e-2);
    bool embeddings = true;  // false: no embedding table (lr needs only the linear part)
};

/// The shared input block of the CTR models (DeepCTR's "input_from_feature_columns").
///
/// Parameters: "<name>.embedding" [total_rows, dim] (one table for all fields; fields that
/// share a vocabulary share rows; absent when embeddings is false), and with first_order
/// "<name>.linear" [total_rows, 1] plus
/// "<name>.dense_linear.weight" [1, num_dense] and "<name>.dense_linear.bias" [1] (the model's
/// global bias; the weight exists only when there are dense fields).
///
/// fields(ctx, b) -> [rows, F', dim]: the embeddings of the sparse fields that are not
///   wide_only, in layout order, followed (when pool_sequences) by each sequence field pooled
///   with its layout pooling (an empty bag pools to zeros). One lookup of rows x F ids.
/// first_order(ctx, b) -> [rows, 1]: sum over all sparse fields (wide_only included) and all
///   sequence fields (pooled) of their 1-wide weights, plus dense · w + bias.
/// dense(ctx, b) -> [rows, num_dense] (an input, no gradient).
/// sequence(ctx, b, k) -> [nnz_k, dim]: the embeddings of sequence field k's ids, in order
///   (for attention over the history); b.sequences[k].offsets say which rows own them.
/// lookup(ctx, ids) -> [n, dim]: embeddings of arbitrary global ids.
/// Backward: sparse row gradients into the tables, dense gradients into the linear map.
template <class T = float, class B = cpu<>>
struct ctr_inputs {
    feature_layout layout;
    input_options opt;
    std::string name;
    table_param<T, B> emb, lin;
    bool has_lin = false;
    dense_param<T, B> dense_w, bias;
    std::vector<std::int64_t> deep_fields;  // sparse fields that get embeddings in fields()

    ctr_inputs(param_store<T, B>& s, const std::string& layer_name, const feature_layout& l, input_options o)
        : layout(l), opt(o), name(layer_name) {
        XREC_CHECK(layout.total_rows() > 0, "ctr_inputs '", name, "': the layout has no ids (call finish()?)");
        XREC_CHECK(o.dim > 0, "ctr_inputs '", name, "': embedding dim must be positive, got ", o.dim);
        XREC_CHECK(o.embeddings || o.first_order, "ctr_inputs '", name, "': neither embeddings nor a first-order part");
        if (o.embeddings) emb = s.add_table(name + ".embedding", layout.total_rows(), o.dim, o.embedding_init);
        if (o.first_order) {
            has_lin = true;
            lin = s.add_table(name + ".linear", layout.total_rows(), 1, init::zeros());
            if (layout.num_dense() > 0)
                dense_w = s.add(name + ".dense_linear.weight", shape{1, layout.num_dense()},
                                init::uniform(-1 / std::sqrt(double(layout.num_dense())), 1 / std::sqrt(double(layout.num_dense()))));
            bias = s.add(name + ".dense_linear.bias", shape{1}, init::zeros());
        }
        for (std::int64_t f = 0; f < layout.num_sparse(); ++f)
            if (!layout.sparse[static_cast<std::size_t>(f)].wide_only) deep_fields.push_back(f);
    }

    std::int64_t dim() const { return opt.dim; }
    /// Number of field vectors fields() returns.
    std::int64_t num_fields(bool pool_sequences = true) const {
        return static_cast<std::int64_t>(deep_fields.size()) + (pool_sequences ? layout.num_sequences() : 0);
    }

    template <class Ctx>
    var<T> fields(Ctx& ctx, const batch<T>& b, bool pool_sequences = true) const {
        XREC_CHECK(opt.embeddings, "ctr_inputs '", name, "': fields() needs input_options.embeddings");
        const std::int64_t n = b.rows, F = static_cast<std::int64_t>(deep_fields.size()), D = opt.dim;
        // The parts live in the context's (host) arena: no heap allocation per request.
        var<T>* parts = ctx.template host_scratch<var<T>>(1 + layout.num_sequences());
        std::size_t np = 0;
        if (F > 0) {
            std::span<const std::int64_t> ids(b.sparse.data, static_cast<std::size_t>(b.sparse.numel()));
            if (F != layout.num_sparse()) {
                XREC_CHECK(b.memory == memory_space::host || backend_memory<B>::host_accessible, "ctr_inputs '", name,
                           "': a batch in device memory needs every sparse field embedded (", layout.num_sparse() - F,
                           " are wide-only here); pass this model host batches");
                auto* sel = ctx.template host_scratch<std::int64_t>(n * F);
                for (std::int64_t r = 0; r < n; ++r)
                    for (std::int64_t j = 0; j < F; ++j)
                        sel[r * F + j] = b.sparse.data[r * layout.num_sparse() + deep_fields[static_cast<std::size_t>(j)]];
                ids = {sel, static_cast<std::size_t>(n * F)};
            }
            parts[np++] = ops::reshape(ctx, ops::embedding_lookup(ctx, emb, ids, b.memory), shape{n, F * D});
        }
        if (pool_sequences)
            for (std::int64_t k = 0; k < layout.num_sequences(); ++k) parts[np++] = pooled(ctx, b, emb, k);
        XREC_CHECK(np > 0, "ctr_inputs '", name, "': no fields to embed");
        var<T> flat = np == 1 ? parts[0] : ops::concat(ctx, std::span<const var<T>>(parts, np));
        return ops::reshape(ctx, flat, shape{n, flat.cols() / D, D});
    }

    template <class Ctx>
    var<T> first_order(Ctx& ctx, const batch<T>& b) const {
        XREC_CHECK(has_lin, "ctr_inputs '", name, "': first_order() needs input_options.first_order");
        const std::int64_t n = b.rows;
        var<T> acc;
        if (layout.num_sparse() > 0) {
            std::span<const std::int64_t> ids(b.sparse.data, static_cast<std::size_t>(b.sparse.numel()));
            acc = ops::sum(ctx, ops::reshape(ctx, ops::embedding_lookup(ctx, lin, ids, b.memory), shape{n, layout.num_sparse()}),
                           1);
            acc = ops::reshape(ctx, acc, shape{n, 1});
        }
        for (std::int64_t k = 0; k < layout.num_sequences(); ++k) {
            var<T> p = pooled(ctx, b, lin, k);
            acc = acc.data ? ops::add(ctx, acc, p) : p;
        }
        var<T> d = layout.num_dense() > 0 ? ops::linear(ctx, dense(ctx, b), ctx.param(dense_w), ctx.param(bias))
                                          : broadcast_bias(ctx, n);
        return acc.data ? ops::add(ctx, acc, d) : d;
    }

    template <class Ctx>
    var<T> dense(Ctx& ctx, const batch<T>& b) const {
        return ctx.input(b.dense, b.memory);
    }

    template <class Ctx>
    var<T> sequence(Ctx& ctx, const batch<T>& b, std::int64_t k) const {
        XREC_CHECK(opt.embeddings, "ctr_inputs '", name, "': sequence() needs input_options.embeddings");
        return ops::embedding_lookup(ctx, emb, b.sequences[static_cast<std::size_t>(k)].values);
    }

    template <class Ctx>
    var<T> lookup(Ctx& ctx, std::span<const std::int64_t> ids) const {
        XREC_CHECK(opt.embeddings, "ctr_inputs '", name, "': lookup() needs input_options.embeddings");
        return ops::embedding_lookup(ctx, emb, ids);
    }

private:
    template <class Ctx>
    var<T> pooled(Ctx& ctx, const batch<T>& b, const table_param<T, B>& t, std::int64_t k) const {
        const auto& sf = layout.sequences[static_cast<std::size_t>(k)];
        var<T> w;
        if (sf.weighted && !b.sequence_weights.empty() && !b.sequence_weights[static_cast<std::size_t>(k)].empty()) {
            auto ws = b.sequence_weights[static_cast<std::size_t>(k)];
            w = ctx.input(tensor_view<const T>{ws.data(), shape{static_cast<std::int64_t>(ws.size())}});
        }
        return ops::embedding_bag(ctx, t, b.sequences[static_cast<std::size_t>(k)], sf.pooling, w);
    }
    // The bias alone as [n, 1] (no dense features): 0 + bias through linear on a zero column.
    template <class Ctx>
    var<T> broadcast_bias(Ctx& ctx, std::int64_t n) const {
        var<T> z = ctx.make(shape{n, 1}, false);
        kernels::fill(B{}, n, T(0), z.data);
        var<T> one = ctx.make(shape{1, 1}, false);
        kernels::fill(B{}, 1, T(0), one.data);
        return ops::linear(ctx, z, one, ctx.param(bias));
    }
};

}  // namespace xrec::models
