#pragma once
// BST: Behavior Sequence Transformer (Chen et al., "Behavior Sequence Transformer for
// E-commerce Recommendation in Alibaba", DLP-KDD 2019).
#include <algorithm>
#include <cstdint>
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
#include "xrec/layers/mlp.hpp"
#include "xrec/layers/transformer_block.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/models/seq_mt_inputs.hpp"
#include "xrec/ops/attention.hpp"
#include "xrec/ops/concat.hpp"

namespace xrec::models {

/// What BST feeds the tower from the transformer's output sequence.
enum class bst_readout {
    candidate,  ///< the output at the candidate's position (t = 0)
    mean,       ///< the mean of the outputs over the valid positions (candidate + history)
    sum         ///< their sum: keeps how many behaviours match, which a mean divides away (a fixed
                ///< 1 / (max_len + 1) scale on it trained worse on the synthetic shop: 0.758 vs 0.787)
};

/// Behavior Sequence Transformer. Row b's sequence is the candidate followed by its
/// behaviours, newest first, so that position t is the distance to the candidate (BST's
/// positional feature is the time gap to the candidate; without timestamps the order gap
/// stands in for it):
///   s_b = [q_b, k_{b,n}, k_{b,n-1}, ..., k_{b,1}]   n = min(history length, max_len)
/// (q, k [P D] as in behaviour_fields: the paired fields' embeddings side by side; a history
/// longer than max_len keeps its newest max_len behaviours). The batch is padded to
/// T = 1 + the longest kept history with the table's padding row (local id 0), masked out as
/// keys (key lengths n_b + 1), and
///   h = blocks(s + pos[0..T))            pos: positional_embedding [max_len + 1, P D]
///   z_b = h_b[0]                (readout candidate)  or  mean_{t <= n_b} h_b[t]  (mean)
///                               or  sum_{t <= n_b} h_b[t]  (sum)
///   logit_b = mlp([z_b, rest_b])   [tasks]   rest as DIN: every non-wide sparse field, the
///                                  other sequence fields pooled, the dense features
/// Shapes: B rows -> logits [B, layout.num_tasks()].
/// Parameters: "bst.embedding" (ctr_inputs), "bst.positions.weight" [max_len + 1, P D],
/// "bst.blocks.<i>.*" (transformer_block: PyTorch's TransformerEncoderLayer names),
/// "bst.mlp.<i>.weight/bias", "bst.mlp.out.weight" [tasks, h_last], "bst.mlp.out.bias".
/// Differences from the paper: the paper feeds the concatenation of all positions' outputs
/// to the MLP and uses LeakyReLU there; here the readout is the candidate position (or the
/// mean) so that rows of any history length share one tower, and the tower activation is an
/// option (relu by default). DeepCTR-Torch has no BST.
/// Backward: that of the layers; the padding row receives (zero) gradient rows only through
/// padded positions, which reach the loss through no path.
template <class T = float, class B = cpu<>>
struct bst {
    struct options {
        input_options inputs{};
        std::vector<behaviour_pair> pairs{{"item_id", "hist_item_id"}};
        std::int64_t max_len = 0;  ///< 0: the largest layout max_len of the history fields
        std::int64_t blocks = 1;
        layers::transformer_options transformer{1, 0, 0.1, activation::relu, false, 1e-5};
        init position_init = init::normal(0, 1e-2);
        bst_readout readout = bst_readout::candidate;
        layers::mlp_options mlp{{1024, 512, 256}, activation::relu, 0, false, 0};
    };

    ctr_inputs<T, B> inputs;
    behaviour_fields<T, B> beh;
    std::int64_t max_len = 0;
    layers::positional_embedding<T, B> positions;
    std::vector<layers::transformer_block<T, B>> blocks;
    layers::mlp<T, B> mlp;
    bst_readout readout;

    bst(param_store<T, B>& s, const feature_layout& layout, options o)
        : inputs(s, "bst", layout, o.inputs),
          beh(inputs, o.pairs, "bst"),
          max_len(resolve_len(layout, beh, o.max_len)),
          positions(s, "bst.positions", max_len + 1, beh.width(), o.position_init),
          mlp(s, "bst.mlp", beh.width() + beh.rest_width(), with_out(o.mlp, layout.num_tasks())),
          readout(o.readout) {
        XREC_CHECK(o.blocks >= 1, "bst: needs at least one transformer block, got ", o.blocks);
        blocks.reserve(static_cast<std::size_t>(o.blocks));
        for (std::int64_t i = 0; i < o.blocks; ++i)
            blocks.emplace_back(s, "bst.blocks." + std::to_string(i), beh.width(), o.transformer);
    }

    std::string_view kind() const { return "bst"; }

    template <class Ctx>
    var<T> operator()(Ctx& ctx, const batch<T>& b) const {
        const auto off = beh.offsets(b, "bst");
        const std::int64_t n = b.rows, P = beh.pairs(), W = beh.width();
        std::int64_t longest = 0;
        for (std::int64_t r = 0; r < n; ++r)
            longest = std::max(longest, std::min(max_len, off[static_cast<std::size_t>(r + 1)] - off[static_cast<std::size_t>(r)]));
        const std::int64_t len = longest + 1;
        // Ids of every (row, position) per pair: candidate, newest .. oldest kept, padding.
        auto* lengths = ctx.template scratch<std::int64_t>(n);
        std::vector<std::span<const std::int64_t>> ids;
        for (std::int64_t p = 0; p < P; ++p) {
            const auto cand = beh.candidate_ids(ctx, b, p);
            const auto& seq = b.sequences[static_cast<std::size_t>(beh.hist[static_cast<std::size_t>(p)])];
            const auto& lt = inputs.layout.tables[static_cast<std::size_t>(
                inputs.layout.sequences[static_cast<std::size_t>(beh.hist[static_cast<std::size_t>(p)])].table)];
            auto* id = ctx.template scratch<std::int64_t>(n * len);
            for (std::int64_t r = 0; r < n; ++r) {
                const std::int64_t end = off[static_cast<std::size_t>(r + 1)];
                const std::int64_t kept = std::min(max_len, end - off[static_cast<std::size_t>(r)]);
                id[r * len] = cand[static_cast<std::size_t>(r)];
                for (std::int64_t t = 1; t < len; ++t) id[r * len + t] = t <= kept ? seq.values[static_cast<std::size_t>(end - t)] : lt.offset;
                lengths[r] = kept + 1;
            }
            ids.emplace_back(id, static_cast<std::size_t>(n * len));
        }
        var<T> x = ops::reshape(ctx, beh.gather(ctx, inputs, ids), shape{n, len, W});
        x = positions(ctx, x);
        ops::attention_mask mask;
        mask.lengths = {lengths, static_cast<std::size_t>(n)};
        for (const auto& blk : blocks) x = blk(ctx, x, mask);
        // Readout as a weighted sum over each row's positions (weights fixed, no gradient).
        T* w = ctx.template scratch<T>(n * len);
        auto* seg = ctx.template scratch<std::int64_t>(n + 1);
        for (std::int64_t r = 0; r <= n; ++r) seg[r] = r * len;
        for (std::int64_t r = 0; r < n; ++r)
            for (std::int64_t t = 0; t < len; ++t)
                w[r * len + t] = readout == bst_readout::candidate ? T(t == 0 ? 1 : 0)
                                 : t >= lengths[r]                  ? T(0)
                                 : readout == bst_readout::sum      ? T(1)
                                                                    : T(1) / static_cast<T>(lengths[r]);
        const var<T> wv = ctx.input(tensor_view<const T>{w, shape{n * len}});
        const var<T> z = ops::jagged_weighted_sum(ctx, wv, ops::reshape(ctx, x, shape{n * len, W}),
                                                  std::span<const std::int64_t>(seg, static_cast<std::size_t>(n + 1)));
        const var<T> parts[2] = {z, beh.rest(ctx, inputs, b)};
        return mlp(ctx, ops::concat(ctx, std::span<const var<T>>(parts, 2)));
    }

private:
    static std::int64_t resolve_len(const feature_layout& l, const behaviour_fields<T, B>& bf, std::int64_t want) {
        std::int64_t m = want;
        if (m == 0)
            for (auto h : bf.hist) m = std::max(m, l.sequences[static_cast<std::size_t>(h)].max_len);
        XREC_CHECK(m > 0, "bst: needs options.max_len > 0 or a layout max_len on the history fields, got ", m);
        return m;
    }
    static layers::mlp_options with_out(layers::mlp_options o, std::int64_t tasks) {
        o.out = tasks;
        return o;
    }
};

}  // namespace xrec::models
