#pragma once
// Input plumbing shared by the sequence models (din, bst) and the multi-task models
// (shared_bottom, mmoe, esmm): which sequence fields are behaviour histories of which
// candidate field, the "everything else" feature vector, and a tower whose hidden
// activation may be a learned one (PReLU, Dice).
#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/layers/dice.hpp"
#include "xrec/layers/linear.hpp"
#include "xrec/layers/prelu.hpp"
#include "xrec/layers/target_attention.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/concat.hpp"
#include "xrec/ops/dropout.hpp"
#include "xrec/ops/embedding.hpp"

namespace xrec::models {

/// A candidate sparse field and the behaviour sequence field that holds the same kind of
/// ids (the layout's sequence field must draw from the candidate's table, so both share
/// embedding rows), e.g. {"item_id", "hist_item_id"}, {"cate_id", "hist_cate_id"}.
struct behaviour_pair {
    std::string candidate;
    std::string history;
};

/// The behaviour side of DIN and BST. With P pairs (candidate field c_p, history field h_p)
/// and embedding width D, a row's candidate is q_b = [e(c_1), ..., e(c_P)] [P D] and its
/// behaviours are k_j = [e(h_1[j]), ..., e(h_P[j])] [P D] (the P histories of a row must be
/// equally long: the p-th history holds the p-th attribute of the same behaviours).
/// `rest` builds the feature vector of everything that is not a history:
///   [every non-wide_only sparse field (the candidates included), every other sequence
///    field pooled with its layout pooling (weighted when the layout says so), dense]
/// -> [rows, rest_width()].
template <class T = float, class B = cpu<>>
struct behaviour_fields {
    std::vector<std::int64_t> cand, hist;  // sparse / sequence field indices, pair by pair
    std::vector<std::int64_t> other_seq;   // sequence fields that are no history
    std::int64_t dim = 0;                  // embedding width D
    std::int64_t rest_width_ = 0;

    behaviour_fields() = default;
    behaviour_fields(const ctr_inputs<T, B>& in, const std::vector<behaviour_pair>& pairs, const char* who) {
        const feature_layout& l = in.layout;
        XREC_CHECK(!pairs.empty(), who, ": needs at least one (candidate, history) field pair");
        for (const auto& p : pairs) {
            const std::int64_t c = l.find_sparse(p.candidate), h = l.find_sequence(p.history);
            XREC_CHECK(c >= 0, who, ": candidate field '", p.candidate, "' is not a sparse field of the layout");
            XREC_CHECK(h >= 0, who, ": history field '", p.history, "' is not a sequence field of the layout");
            const auto ct = l.sparse[static_cast<std::size_t>(c)].table, ht = l.sequences[static_cast<std::size_t>(h)].table;
            XREC_CHECK(ct == ht, who, ": history '", p.history, "' draws from table '", l.tables[static_cast<std::size_t>(ht)].name,
                       "' but its candidate '", p.candidate, "' from '", l.tables[static_cast<std::size_t>(ct)].name,
                       "' (they must share a table)");
            for (auto k : hist) XREC_CHECK(k != h, who, ": history field '", p.history, "' is named twice");
            cand.push_back(c);
            hist.push_back(h);
        }
        for (std::int64_t k = 0; k < l.num_sequences(); ++k) {
            bool is_hist = false;
            for (auto h : hist) is_hist = is_hist || h == k;
            if (!is_hist) other_seq.push_back(k);
        }
        dim = in.dim();
        rest_width_ = (in.num_fields(false) + static_cast<std::int64_t>(other_seq.size())) * dim + l.num_dense();
    }

    std::int64_t pairs() const { return static_cast<std::int64_t>(cand.size()); }
    /// Width P D of a candidate or behaviour vector.
    std::int64_t width() const { return pairs() * dim; }
    std::int64_t rest_width() const { return rest_width_; }
    /// The offsets shared by the histories (B+1 entries); refuses histories of unequal lengths.
    std::span<const std::int64_t> offsets(const batch<T>& b, const char* who) const {
        XREC_CHECK(b.sequences.size() > static_cast<std::size_t>(*std::max_element(hist.begin(), hist.end())), who,
                   ": the batch has ", b.sequences.size(), " sequence inputs, fewer than the layout's");
        XREC_CHECK(static_cast<std::int64_t>(b.sequences[static_cast<std::size_t>(hist[0])].offsets.size()) == b.rows + 1,
                   who, ": history offsets do not match the batch's ", b.rows, " rows");
        const auto& o = b.sequences[static_cast<std::size_t>(hist[0])].offsets;
        for (std::size_t p = 1; p < hist.size(); ++p) {
            const auto& op = b.sequences[static_cast<std::size_t>(hist[p])].offsets;
            bool same = op.size() == o.size();
            for (std::size_t i = 0; same && i < o.size(); ++i) same = op[i] == o[i];
            XREC_CHECK(same, who, ": history fields ", hist[0], " and ", hist[p],
                       " have different lengths in some row (paired histories must align)");
        }
        return o;
    }
    /// Candidate ids of pair p, one per row (arena copy of a column of b.sparse).
    template <class Ctx>
    std::span<const std::int64_t> candidate_ids(Ctx& ctx, const batch<T>& b, std::int64_t p) const {
        const std::int64_t n = b.rows, F = b.sparse.s.rank == 2 ? b.sparse.s[1] : 0, f = cand[static_cast<std::size_t>(p)];
        auto* ids = ctx.template scratch<std::int64_t>(n);
        for (std::int64_t r = 0; r < n; ++r) ids[r] = b.sparse.data[r * F + f];
        return {ids, static_cast<std::size_t>(n)};
    }
    /// q [rows, P D].
    template <class Ctx>
    var<T> query(Ctx& ctx, const ctr_inputs<T, B>& in, const batch<T>& b) const {
        var<T>* parts = ctx.template host_scratch<var<T>>(pairs());
        for (std::int64_t p = 0; p < pairs(); ++p) parts[p] = in.lookup(ctx, candidate_ids(ctx, b, p));
        return cat(ctx, std::span<const var<T>>(parts, static_cast<std::size_t>(pairs())));
    }
    /// Embeddings of arbitrary positions: ids[p] holds n global ids for pair p -> [n, P D].
    template <class Ctx>
    var<T> gather(Ctx& ctx, const ctr_inputs<T, B>& in, const std::vector<std::span<const std::int64_t>>& ids) const {
        var<T>* parts = ctx.template host_scratch<var<T>>(static_cast<std::int64_t>(ids.size()));
        for (std::size_t p = 0; p < ids.size(); ++p) parts[p] = in.lookup(ctx, ids[p]);
        return cat(ctx, std::span<const var<T>>(parts, ids.size()));
    }
    /// Behaviours of all rows back to back: [nnz, P D] (call offsets() for the row bounds).
    template <class Ctx>
    var<T> keys(Ctx& ctx, const ctr_inputs<T, B>& in, const batch<T>& b) const {
        var<T>* parts = ctx.template host_scratch<var<T>>(pairs());
        for (std::size_t p = 0; p < hist.size(); ++p) parts[p] = in.sequence(ctx, b, hist[p]);
        return cat(ctx, std::span<const var<T>>(parts, hist.size()));
    }
    /// Everything but the histories: [rows, rest_width()].
    template <class Ctx>
    var<T> rest(Ctx& ctx, const ctr_inputs<T, B>& in, const batch<T>& b) const {
        const std::int64_t n = b.rows;
        // The parts live in the context's host arena: no heap allocation per request.
        var<T>* parts = ctx.template host_scratch<var<T>>(2 + static_cast<std::int64_t>(other_seq.size()));
        std::size_t np = 0;
        if (in.num_fields(false) > 0) parts[np++] = ops::reshape(ctx, in.fields(ctx, b, false), shape{n, in.num_fields(false) * dim});
        for (auto k : other_seq) {
            const auto& sf = in.layout.sequences[static_cast<std::size_t>(k)];
            var<T> w;
            if (sf.weighted && !b.sequence_weights.empty() && !b.sequence_weights[static_cast<std::size_t>(k)].empty()) {
                auto ws = b.sequence_weights[static_cast<std::size_t>(k)];
                w = ctx.input(tensor_view<const T>{ws.data(), shape{static_cast<std::int64_t>(ws.size())}});
            }
            parts[np++] = ops::embedding_bag(ctx, in.emb, b.sequences[static_cast<std::size_t>(k)], sf.pooling, w);
        }
        if (in.layout.num_dense() > 0) parts[np++] = in.dense(ctx, b);
        XREC_CHECK(np > 0, "behaviour_fields: no features besides the histories");
        return cat(ctx, std::span<const var<T>>(parts, np));
    }

    template <class Ctx>
    static var<T> cat(Ctx& ctx, std::span<const var<T>> parts) {
        return parts.size() == 1 ? parts[0] : ops::concat(ctx, parts);
    }
};

/// All features of a row as one vector (the input of the multi-task models' bottoms):
/// [embeddings of the non-wide_only sparse fields, every sequence field pooled, dense]
/// -> [rows, flat_width(in)].
template <class T, class B>
std::int64_t flat_width(const ctr_inputs<T, B>& in) {
    return in.num_fields(true) * in.dim() + in.layout.num_dense();
}
template <class Ctx, class T, class B>
var<T> flat_features(Ctx& ctx, const ctr_inputs<T, B>& in, const batch<T>& b) {
    const std::int64_t n = b.rows;
    var<T> e = ops::reshape(ctx, in.fields(ctx, b, true), shape{n, in.num_fields(true) * in.dim()});
    if (in.layout.num_dense() == 0) return e;
    const var<T> parts[2] = {e, in.dense(ctx, b)};
    return ops::concat(ctx, std::span<const var<T>>(parts, 2));
}

/// Options of act_tower.
struct act_tower_options {
    std::vector<std::int64_t> hidden{200, 80};
    layers::unit_activation act = layers::unit_activation::relu;
    double dropout = 0;
    layers::dice_options dice{};
};

/// An MLP whose hidden activation may be learned: for each hidden width h_i,
///   x = act_i(x W_i^T + b_i)  (then dropout when > 0),  finally y = x W_out^T + b_out [.., out]
/// with act relu / sigmoid / tanh / gelu / identity, PReLU (one slope per unit, 0.25) or
/// Dice (DIN). Parameters "<name>.<i>.weight" [h_i, in_i], "<name>.<i>.bias" [h_i],
/// "<name>.<i>.act.weight" [h_i] (prelu) or "<name>.<i>.act.alpha" [h_i] plus the running
/// statistics tables "<name>.<i>.act.running_mean/_var" [1, h_i] (dice), "<name>.out.weight"
/// [out, h_last], "<name>.out.bias" [out]. Dice in training needs 2+ rows. Backward: that
/// of the layers (one node per linear, activation and dropout).
template <class T = float, class B = cpu<>>
struct act_tower {
    std::vector<layers::linear<T, B>> fc;
    std::vector<layers::prelu<T, B>> prelus;
    std::vector<layers::dice<T, B>> dices;
    act_tower_options options;

    act_tower(param_store<T, B>& s, const std::string& name, std::int64_t in, std::int64_t out, act_tower_options o)
        : options(std::move(o)) {
        std::int64_t w = in;
        for (std::size_t i = 0; i < options.hidden.size(); ++i) {
            const std::string li = name + "." + std::to_string(i);
            fc.emplace_back(s, li, w, options.hidden[i]);
            if (options.act == layers::unit_activation::prelu) prelus.emplace_back(s, li + ".act", options.hidden[i]);
            if (options.act == layers::unit_activation::dice) dices.emplace_back(s, li + ".act", options.hidden[i], options.dice);
            w = options.hidden[i];
        }
        fc.emplace_back(s, name + ".out", w, out);
    }

    template <class Ctx>
    var<T> operator()(Ctx& ctx, var<T> x) const {
        using ua = layers::unit_activation;
        for (std::size_t i = 0; i + 1 < fc.size(); ++i) {
            x = fc[i](ctx, x);
            switch (options.act) {
                case ua::relu: x = ops::apply(ctx, activation::relu, x); break;
                case ua::sigmoid: x = ops::apply(ctx, activation::sigmoid, x); break;
                case ua::tanh: x = ops::apply(ctx, activation::tanh, x); break;
                case ua::gelu: x = ops::apply(ctx, activation::gelu, x); break;
                case ua::identity: break;
                case ua::prelu: x = prelus[i](ctx, x); break;
                case ua::dice: x = dices[i](ctx, x); break;
            }
            if (options.dropout > 0) x = ops::dropout(ctx, x, options.dropout);
        }
        return fc.back()(ctx, x);
    }
};

}  // namespace xrec::models
