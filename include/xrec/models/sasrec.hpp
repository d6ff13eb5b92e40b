#pragma once
// SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).
#include <cmath>
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
#include "xrec/layers/layer_norm.hpp"
#include "xrec/layers/transformer_block.hpp"
#include "xrec/loss/bce.hpp"
#include "xrec/loss/softmax_cross_entropy.hpp"
#include "xrec/ops/rows.hpp"
#include "xrec/ops/attention.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/dropout.hpp"

namespace xrec::models {

/// The form of sasrec's transformer blocks (see sasrec's doc for the formulas).
///  - pre_norm: the textbook pre-norm block, torch.nn.TransformerEncoderLayer(norm_first=True).
///  - reference: the SASRec reference code's block (kang205/SASRec and pmixer's PyTorch
///    port): the layer norm on the query only, the attention output added to the normalised
///    query, then the point-wise feed-forward on its own normalised input with that input as
///    residual.
enum class sasrec_block { pre_norm, reference };

/// Options of sasrec (defaults: the SASRec paper's settings for the sparse Amazon sets).
///  - name ["sasrec"]: prefix of every parameter name.
///  - n_items: items are 0 .. n_items - 1; -1 marks padding in an input.
///  - dim [64], max_len T [50], blocks [2], heads [1], dropout [0.5] (embedding, attention
///    weights, feed-forward hidden layer and the residual branches), eps [1e-8] (every
///    layer norm, the reference code's value).
///  - block [pre_norm]: the block form (sasrec_block). Both forms have the same parameters
///    under the same names, so a checkpoint of one loads into the other.
struct sasrec_options {
    std::string name = "sasrec";
    std::int64_t n_items = 0;
    std::int64_t dim = 64;
    std::int64_t max_len = 50;
    std::int64_t blocks = 2;
    std::int64_t heads = 1;
    double dropout = 0.5;
    double eps = 1e-8;
    sasrec_block block = sasrec_block::pre_norm;
};

/// SASRec over left-padded item sequences.
///
/// Input: ids [B, T] (row-major, T = max_len), item ids in [0, n_items) or -1 for padding,
/// padding on the left so the most recent item sits at position T - 1.
///   x_0 = dropout(sqrt(D) E[ids] + P)                 E [n_items, D], P [T, D]; E[-1] = 0
///   x_l = block_l(x_{l-1})  (causal; padded positions masked as keys)
///   H   = layer_norm(x_L)                            [B, T, D]
/// where block is, by options.block (feed-forward width D, ReLU, MHA with its output
/// projection as torch.nn.MultiheadAttention, dropout on its attention weights):
///  - pre_norm (layers::transformer_block with norm_first = true, a stock
///    torch.nn.TransformerEncoderLayer(norm_first=True) in the peer):
///      h = x + drop(MHA(LN1(x)));  y = h + drop(W2 drop(relu(W1 LN2(h))))
///  - reference (the SASRec reference code, kang205/SASRec and pmixer's PyTorch port, which
///    normalise only the query, so keys, values and both residuals differ from pre-norm):
///      q = LN1(x);  h = q + MHA(q, x, x);  n = LN2(h);  y = n + drop(W2 drop(relu(W1 n)))
///    (no dropout on the attention branch, as the reference). It uses the same sub-layers
///    (and parameter names) as transformer_block: norm1, self_attn, norm2, linear1, linear2.
/// The final layer norm is the reference's. The reference also zeroes padded positions
/// after every block (its "timeline mask"); here padded positions are masked as keys
/// instead, so they never reach a real position (their own outputs are never read), which
/// makes the zeroing a no-op for every output that is read.
///
/// Leading columns that are padding in every row of a batch are skipped by state() and the
/// losses (positions keep their absolute index): the same outputs, at the cost of the
/// longest sequence of the batch instead of T.
///
/// Scores: the output at position t scores item i by <H[b, t], E[i]> (the input embedding
/// shared with the prediction layer, not scaled). Inference uses the last position:
/// scores(state(ids)) = H[:, T-1] E^T [B, n_items]; item_embeddings() exports E for top-K.
///
/// Losses (targets [B, T]: the next item of every position, -1 where there is none):
///  - bce_loss: the paper's, with one sampled negative per position:
///      L = mean_valid -log sigmoid(<H, E[pos]>) + mean_valid -log(1 - sigmoid(<H, E[neg]>))
///  - ce_loss: full softmax cross-entropy over all n_items at every valid position.
///
/// Parameters: "<name>.item_emb" [n_items, D] and "<name>.pos_emb.weight" [T, D] (Xavier
/// normal, as the reference code initialises every matrix), "<name>.blocks.<l>.*"
/// (transformer_block's PyTorch names), "<name>.last_norm.weight|bias" [D].
/// Backward: that of the ops it calls (gather, positional add, blocks, norms, row dots or
/// one GEMM against E, the loss).
template <class T = float, class B = cpu<>>
struct sasrec {
    sasrec_options options;
    dense_param<T, B> item_emb;
    layers::positional_embedding<T, B> pos_emb;
    std::vector<layers::transformer_block<T, B>> blocks;
    layers::layer_norm<T, B> last_norm;

    sasrec(param_store<T, B>& s, sasrec_options o)
        : options(check(o)),
          item_emb(s.add(o.name + ".item_emb", shape{o.n_items, o.dim}, init::xavier_normal(), o.n_items, o.dim)),
          pos_emb(s, o.name + ".pos_emb", o.max_len, o.dim, init::xavier_normal()),
          last_norm(make_blocks(s, o, blocks), o.name + ".last_norm", o.dim, o.eps) {}

    std::int64_t n_items() const noexcept { return options.n_items; }
    std::int64_t dim() const noexcept { return options.dim; }
    std::int64_t max_len() const noexcept { return options.max_len; }

    /// The item embeddings E [n_items, D] (row i scores item i): what serve::top_k ranks.
    tensor_view<const T> item_embeddings() const { return {item_emb.value(), shape{options.n_items, options.dim}}; }

    /// H [B, T, D] for ids [B * T] (see the type's doc).
    template <class Ctx>
    var<T> encode(Ctx& ctx, std::span<const std::int64_t> ids) const {
        return encode_window(ctx, ids, 0);
    }

    /// The sequence states [B, D]: H at the last position (the most recent item).
    template <class Ctx>
    var<T> state(Ctx& ctx, std::span<const std::int64_t> ids) const {
        const std::int64_t first = first_column(ids);
        const var<T> h = encode_window(ctx, ids, first);
        const std::int64_t nb = h.s[0], w = h.s[1];
        auto* last = ctx.template scratch<std::int64_t>(nb);
        for (std::int64_t b = 0; b < nb; ++b) last[b] = b * w + w - 1;
        return ops::gather_rows(ctx, ops::reshape(ctx, h, shape{nb * w, options.dim}),
                                   std::span<const std::int64_t>(last, static_cast<std::size_t>(nb)));
    }

    /// Scores of every item for states [B, D]: [B, n_items] = states E^T.
    template <class Ctx>
    var<T> scores(Ctx& ctx, const var<T>& states) const {
        return ops::linear(ctx, states, ctx.param(item_emb));
    }

    /// The paper's loss: BCE with one negative per position. ids, targets and negatives are
    /// [B * T]; positions with target -1 are skipped (negatives there are ignored); a target
    /// needs an input item at its position.
    template <class Ctx>
    var<T> bce_loss(Ctx& ctx, std::span<const std::int64_t> ids, std::span<const std::int64_t> targets,
                    std::span<const std::int64_t> negatives) const {
        XREC_CHECK(targets.size() == ids.size() && negatives.size() == ids.size(), "sasrec '", options.name,
                   "': bce_loss needs ids, targets and negatives of one size, got ", ids.size(), ", ", targets.size(),
                   ", ", negatives.size());
        const var<T> hv = valid_states(ctx, ids, targets);
        const std::int64_t m = hv.s[0];
        auto* pos = ctx.template scratch<std::int64_t>(m);
        auto* neg = ctx.template scratch<std::int64_t>(m);
        for (std::int64_t i = 0, k = 0; i < static_cast<std::int64_t>(ids.size()); ++i)
            if (targets[static_cast<std::size_t>(i)] >= 0) {
                pos[k] = targets[static_cast<std::size_t>(i)];
                neg[k++] = negatives[static_cast<std::size_t>(i)];
            }
        const auto n = static_cast<std::size_t>(m);
        const var<T> e = ctx.param(item_emb);
        const var<T> lp = ops::row_dot(ctx, hv, ops::gather_rows(ctx, e, std::span<const std::int64_t>(pos, n)));
        const var<T> ln = ops::row_dot(ctx, hv, ops::gather_rows(ctx, e, std::span<const std::int64_t>(neg, n)));
        T* ones = ctx.template scratch<T>(m);
        T* zeros = ctx.template scratch<T>(m);
        for (std::int64_t i = 0; i < m; ++i) {
            ones[i] = T(1);
            zeros[i] = T(0);
        }
        return ops::add(ctx, loss::bce_with_logits(ctx, lp, ctx.input(tensor_view<const T>{ones, shape{m}})),
                        loss::bce_with_logits(ctx, ln, ctx.input(tensor_view<const T>{zeros, shape{m}})));
    }

    /// Full softmax cross-entropy over all items at every position whose target is not -1.
    template <class Ctx>
    var<T> ce_loss(Ctx& ctx, std::span<const std::int64_t> ids, std::span<const std::int64_t> targets) const {
        XREC_CHECK(targets.size() == ids.size(), "sasrec '", options.name, "': ce_loss needs ids and targets of one size, got ",
                   ids.size(), " and ", targets.size());
        const var<T> hv = valid_states(ctx, ids, targets);
        const std::int64_t m = hv.s[0];
        auto* tg = ctx.template scratch<std::int64_t>(m);
        for (std::int64_t i = 0, k = 0; i < static_cast<std::int64_t>(ids.size()); ++i)
            if (targets[static_cast<std::size_t>(i)] >= 0) tg[k++] = targets[static_cast<std::size_t>(i)];
        return loss::softmax_cross_entropy(ctx, scores(ctx, hv), std::span<const std::int64_t>(tg, static_cast<std::size_t>(m)));
    }

    /// Writes the last `max_len` items of `history` (oldest first) into out [max_len],
    /// left-padded with -1: the input row of one sequence.
    template <class I>
    void input_row(std::span<const I> history, std::span<std::int64_t> out) const {
        const auto L = static_cast<std::size_t>(options.max_len);
        XREC_CHECK(out.size() == L, "sasrec '", options.name, "': input row needs ", L, " slots, got ", out.size());
        const std::size_t n = history.size() < L ? history.size() : L;
        for (std::size_t i = 0; i < L - n; ++i) out[i] = -1;
        for (std::size_t i = 0; i < n; ++i) out[L - n + i] = static_cast<std::int64_t>(history[history.size() - n + i]);
    }

private:
    template <class Ctx>
    static void check_ctx() {
        static_assert(std::is_same_v<typename Ctx::value_type, T> && std::is_same_v<typename Ctx::backend, B>,
                      "sasrec: the context's value type and backend must match the model's");
    }
    static sasrec_options check(const sasrec_options& o) {
        XREC_CHECK(o.n_items > 0 && o.dim > 0 && o.max_len > 0 && o.blocks >= 0 && o.heads > 0 && o.dim % o.heads == 0,
                   "sasrec '", o.name, "': needs n_items, dim, max_len > 0, blocks >= 0 and heads dividing dim, got ",
                   o.n_items, ", ", o.dim, ", ", o.max_len, ", ", o.blocks, ", ", o.heads);
        return o;
    }
    // Registers the blocks between the positional embedding and the last norm (state_dict
    // order) and hands the store on to last_norm's constructor.
    static param_store<T, B>& make_blocks(param_store<T, B>& s, const sasrec_options& o,
                                          std::vector<layers::transformer_block<T, B>>& out) {
        layers::transformer_options t;
        t.heads = o.heads;
        t.ff_dim = o.dim;
        t.dropout = o.dropout;
        t.act = activation::relu;
        t.norm_first = true;
        t.eps = o.eps;
        for (std::int64_t l = 0; l < o.blocks; ++l) out.emplace_back(s, o.name + ".blocks." + std::to_string(l), o.dim, t);
        return s;
    }
    // The first column that is not padding in some row (T - 1 when every row is empty).
    // Columns before it are padding everywhere: masked as keys and never read, so
    // encode_window skips them, which gives the same outputs at a fraction of the cost on
    // short sequences.
    std::int64_t first_column(std::span<const std::int64_t> ids) const {
        const std::int64_t L = options.max_len;
        XREC_CHECK(!ids.empty() && static_cast<std::int64_t>(ids.size()) % L == 0, "sasrec '", options.name, "': ",
                   ids.size(), " ids are not a whole number of sequences of max_len ", L);
        const std::int64_t nb = static_cast<std::int64_t>(ids.size()) / L;
        std::int64_t first = L - 1;
        for (std::int64_t b = 0; b < nb; ++b)
            for (std::int64_t t = 0; t < first; ++t)
                if (ids[static_cast<std::size_t>(b * L + t)] >= 0) {
                    first = t;
                    break;
                }
        return first;
    }

    // H over the columns first .. T-1 of ids [B * T]: [B, T - first, D], positions first ..
    // T-1 of the positional embedding.
    template <class Ctx>
    var<T> encode_window(Ctx& ctx, std::span<const std::int64_t> ids, std::int64_t first) const {
        check_ctx<Ctx>();
        const std::int64_t L = options.max_len, D = options.dim;
        XREC_CHECK(!ids.empty() && static_cast<std::int64_t>(ids.size()) % L == 0, "sasrec '", options.name, "': ",
                   ids.size(), " ids are not a whole number of sequences of max_len ", L);
        const std::int64_t nb = static_cast<std::int64_t>(ids.size()) / L, w = L - first;
        auto* win = ctx.template scratch<std::int64_t>(nb * w);
        for (std::int64_t b = 0; b < nb; ++b)
            for (std::int64_t t = 0; t < w; ++t) win[b * w + t] = ids[static_cast<std::size_t>(b * L + first + t)];
        const std::span<const std::int64_t> wids(win, static_cast<std::size_t>(nb * w));
        var<T> x = ops::gather_rows(ctx, ctx.param(item_emb), wids, static_cast<T>(std::sqrt(static_cast<double>(D))));
        const var<T> p = ctx.param(pos_emb.weight);
        var<T> pw;
        if constexpr (Ctx::records)
            pw = ctx.leaf(tensor_view<T>{p.data + first * D, shape{w, D}}, p.g->grad + first * D);
        else
            pw = ctx.input(tensor_view<const T>{p.data + first * D, shape{w, D}});
        x = ops::add_positions(ctx, ops::reshape(ctx, x, shape{nb, w, D}), pw);
        x = ops::dropout(ctx, x, options.dropout);
        auto* valid = ctx.template scratch<std::uint8_t>(nb * w);
        for (std::int64_t i = 0; i < nb * w; ++i) valid[i] = win[i] >= 0 ? 1 : 0;
        ops::attention_mask mask;
        mask.causal = true;
        mask.key_valid = {valid, static_cast<std::size_t>(nb * w)};
        for (const auto& blk : blocks)
            x = options.block == sasrec_block::reference ? reference_block(ctx, blk, x, mask) : blk(ctx, x, mask);
        return last_norm(ctx, x);
    }

    // The reference code's block (see the type's doc) over transformer_block's sub-layers.
    template <class Ctx>
    var<T> reference_block(Ctx& ctx, const layers::transformer_block<T, B>& blk, const var<T>& x,
                           const ops::attention_mask& mask) const {
        const double p = options.dropout;
        const var<T> q = blk.norm1(ctx, x);
        const var<T> h = ops::add(ctx, q, blk.self_attn(ctx, q, x, x, mask));
        const var<T> n = blk.norm2(ctx, h);
        const var<T> f = blk.linear2(ctx, ops::dropout(ctx, ops::apply(ctx, activation::relu, blk.linear1(ctx, n)), p));
        return ops::add(ctx, n, ops::dropout(ctx, f, p));
    }

    // H at the positions whose target is not -1, in row-major order: [M, D].
    template <class Ctx>
    var<T> valid_states(Ctx& ctx, std::span<const std::int64_t> ids, std::span<const std::int64_t> targets) const {
        const std::int64_t first = first_column(ids);
        const var<T> h = encode_window(ctx, ids, first);
        const std::int64_t L = options.max_len, nb = h.s[0], w = h.s[1];
        auto* idx = ctx.template scratch<std::int64_t>(nb * w);
        std::int64_t m = 0;
        for (std::int64_t b = 0; b < nb; ++b)
            for (std::int64_t t = 0; t < w; ++t)
                if (targets[static_cast<std::size_t>(b * L + first + t)] >= 0) idx[m++] = b * w + t;
        XREC_CHECK(m > 0, "sasrec '", options.name, "': no position has a target");
        for (std::size_t i = 0; i < targets.size(); ++i) {
            XREC_CHECK(targets[i] < 0 || ids[i] >= 0, "sasrec '", options.name, "': target ", targets[i], " at position ",
                       i, " has no input item (id -1)");
        }
        return ops::gather_rows(ctx, ops::reshape(ctx, h, shape{nb * w, options.dim}),
                                   std::span<const std::int64_t>(idx, static_cast<std::size_t>(m)));
    }
};

}  // namespace xrec::models
