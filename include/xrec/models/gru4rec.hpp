#pragma once
// GRU4Rec: session-based recommendation with recurrent networks (Hidasi et al., ICLR 2016;
// Hidasi & Karatzoglou, CIKM 2018).
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/var.hpp"
#include "xrec/layers/gru.hpp"
#include "xrec/ops/rows.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/dropout.hpp"

namespace xrec::models {

/// Options of gru4rec.
///  - name ["gru4rec"]: prefix of every parameter name.
///  - n_items: items 0 .. n_items - 1.
///  - hidden [100], layers [1]: the GRU.
///  - embedding [0]: 0 feeds the GRU the item's row of the output embedding (GRU4Rec's
///    "constrained embedding", input width = hidden); > 0 a separate input embedding of this
///    width.
///  - dropout_embed [0] on the GRU input, dropout_hidden [0] on its output.
struct gru4rec_options {
    std::string name = "gru4rec";
    std::int64_t n_items = 0;
    std::int64_t hidden = 100;
    std::int64_t layers = 1;
    std::int64_t embedding = 0;
    double dropout_embed = 0;
    double dropout_hidden = 0;
};

/// GRU4Rec, one step at a time (session-parallel training and serving both advance every
/// session of a batch by one click).
///
///   x   = dropout(E_in[item])                  [B, E]   (E_in = W_out when embedding = 0)
///   h'  = GRU(x, h)                            [layers, B, H]   (zeros for a new session)
///   o   = dropout(h'[layers - 1])              [B, H]
///   score(item j) = <o, W_out[j]> + b_out[j]
///
/// step() returns (h', o); scores(o, candidates) gives [B, C] for candidate items (GRU4Rec
/// trains on the batch's own targets plus shared sampled negatives), score_all(o) [B,
/// n_items] for full ranking. item_embeddings() exports W_out [n_items, H] (top-K by dot
/// product; add the bias to rank exactly as score_all does).
///
/// Parameters: "<name>.item_emb" [n_items, E] (only with embedding > 0), "<name>.gru.*"
/// (layers::gru, PyTorch's names), "<name>.out_emb" [n_items, H], "<name>.out_bias"
/// [n_items] (zeros). Embeddings are Xavier uniform (GRU4Rec's own initialisation is a
/// uniform of the same scale); the GRU as torch.nn.GRU.
/// Backward: that of gather_rows, the GRU step, dropout and linear.
template <class T = float, class B = cpu<>>
struct gru4rec {
    /// The result of one step: the new state and the output that scores items.
    struct step_result {
        var<T> h, out;
    };

    gru4rec_options options;
    dense_param<T, B> item_emb;  ///< unused (store null) when options.embedding == 0
    layers::gru<T, B> gru;
    dense_param<T, B> out_emb, out_bias;

    gru4rec(param_store<T, B>& s, gru4rec_options o)
        : options(check(o)),
          item_emb(o.embedding > 0 ? s.add(o.name + ".item_emb", shape{o.n_items, o.embedding}, init::xavier_uniform(),
                                           o.n_items, o.embedding)
                                   : dense_param<T, B>{}),
          gru(s, o.name + ".gru", o.embedding > 0 ? o.embedding : o.hidden, o.hidden, o.layers),
          out_emb(s.add(o.name + ".out_emb", shape{o.n_items, o.hidden}, init::xavier_uniform(), o.n_items, o.hidden)),
          out_bias(s.add(o.name + ".out_bias", shape{o.n_items}, init::zeros())) {}

    std::int64_t n_items() const noexcept { return options.n_items; }
    std::int64_t hidden() const noexcept { return options.hidden; }
    std::int64_t layers() const noexcept { return options.layers; }

    /// W_out [n_items, H]: what serve::top_k ranks (scores add out_bias).
    tensor_view<const T> item_embeddings() const { return {out_emb.value(), shape{options.n_items, options.hidden}}; }
    /// b_out [n_items].
    tensor_view<const T> item_bias() const { return {out_bias.value(), shape{options.n_items}}; }

    /// One click of every session: items [B] (ids in [0, n_items)), h [layers, B, H] (the
    /// carried state; zero rows for sessions that start here).
    template <class Ctx>
    step_result step(Ctx& ctx, std::span<const std::int64_t> items, const var<T>& h) const {
        check_ctx<Ctx>();
        const auto nb = static_cast<std::int64_t>(items.size());
        XREC_CHECK(nb > 0, "gru4rec '", options.name, "': step needs at least one session");
        const var<T> table = options.embedding > 0 ? ctx.param(item_emb) : ctx.param(out_emb);
        const var<T> x = ops::dropout(ctx, ops::gather_rows(ctx, table, items), options.dropout_embed);
        const var<T> hn = gru.step(ctx, x, h);
        const std::int64_t H = options.hidden, L = options.layers;
        var<T> top = ops::reshape(ctx, hn, shape{L * nb, H});
        if (L > 1) {
            auto* idx = ctx.template scratch<std::int64_t>(nb);
            for (std::int64_t b = 0; b < nb; ++b) idx[b] = (L - 1) * nb + b;
            top = ops::gather_rows(ctx, top, std::span<const std::int64_t>(idx, static_cast<std::size_t>(nb)));
        }
        return {hn, ops::dropout(ctx, top, options.dropout_hidden)};
    }

    /// Scores of candidate items: out [B, H], candidates [C] -> [B, C].
    template <class Ctx>
    var<T> scores(Ctx& ctx, const var<T>& out, std::span<const std::int64_t> candidates) const {
        check_ctx<Ctx>();
        const var<T> w = ops::gather_rows(ctx, ctx.param(out_emb), candidates);
        const var<T> b = ops::gather_rows(ctx, ops::reshape(ctx, ctx.param(out_bias), shape{options.n_items, 1}),
                                             candidates);
        return ops::linear(ctx, out, w, ops::reshape(ctx, b, shape{b.s[0]}));
    }

    /// Scores of every item: out [B, H] -> [B, n_items].
    template <class Ctx>
    var<T> score_all(Ctx& ctx, const var<T>& out) const {
        check_ctx<Ctx>();
        return ops::linear(ctx, out, ctx.param(out_emb), ctx.param(out_bias));
    }

private:
    template <class Ctx>
    static void check_ctx() {
        static_assert(std::is_same_v<typename Ctx::value_type, T> && std::is_same_v<typename Ctx::backend, B>,
                      "gru4rec: the context's value type and backend must match the model's");
    }
    static gru4rec_options check(const gru4rec_options& o) {
        XREC_CHECK(o.n_items > 0 && o.hidden > 0 && o.layers > 0 && o.embedding >= 0, "gru4rec '", o.name,
                   "': needs n_items, hidden, layers > 0 and embedding >= 0, got ", o.n_items, ", ", o.hidden, ", ",
                   o.layers, ", ", o.embedding);
        XREC_CHECK(o.dropout_embed >= 0 && o.dropout_embed < 1 && o.dropout_hidden >= 0 && o.dropout_hidden < 1,
                   "gru4rec '", o.name, "': dropouts must be in [0, 1), got ", o.dropout_embed, " and ", o.dropout_hidden);
        return o;
    }
};

}  // namespace xrec::models
