#pragma once
// Candidate ranking with the user side computed once: serve::predictor::rank scores C
// candidates for one user row. A candidate differs from the user row only in the
// `candidate_fields` (item id, category, ...); everything else (user fields, behaviour
// histories, dense context) is the same for all C rows, so the work that depends on it
// alone is done once per request instead of C times.
//
// ranker<Model, T, B> is the strategy for one model type:
//  - check_plan(model, plan): refuses (xrec::error) a candidate field set the strategy
//    cannot serve; called when the predictor is built.
//  - cache: values derived from the weights that every request needs (packed weight
//    columns, folded weight blocks); build(model, plan) runs at each publish, so a request
//    reads them with the weights of its own slot.
//  - run(ctx, model, cache, plan, user, cand, C) -> logits [C, tasks] on the infer_ctx.
// The primary template serves any model by building the C-row batch (the user row
// repeated, candidate ids substituted) and calling its forward: correct, but with no
// saving. deepfm and din have their own (below), which compute the same function up to
// the order of float sums (the tests compare them with the batched forward).
#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "xrec/backend/cpu_kernels.hpp"
#include "xrec/backend/kernels.hpp"
#include "xrec/backend/policy.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/models/din.hpp"
#include "xrec/ops/attention.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/embedding.hpp"

namespace xrec::serve {

/// The candidate side of a rank call: which sparse fields (layout indices, in the column
/// order of the candidate id matrix) each candidate gives.
struct rank_plan {
    std::vector<std::int64_t> candidate_fields;
    /// Position of sparse field f among candidate_fields, or -1.
    std::int64_t candidate_index(std::int64_t f) const {
        for (std::size_t j = 0; j < candidate_fields.size(); ++j)
            if (candidate_fields[j] == f) return static_cast<std::int64_t>(j);
        return -1;
    }
};

namespace detail {

/// The user row repeated C times with candidate c's ids in the candidate fields: the batch
/// a plain forward needs. Host scratch of the context (no heap allocation).
template <class Ctx, class T>
batch<T> repeat_user(Ctx& ctx, const feature_layout& l, const rank_plan& p, const batch<T>& user, const std::int64_t* cand,
                     std::int64_t C) {
    const std::int64_t F = l.num_sparse(), Dn = l.num_dense(), S = l.num_sequences();
    const std::int64_t Fc = static_cast<std::int64_t>(p.candidate_fields.size());
    auto* ids = ctx.template host_scratch<std::int64_t>(C * F);
    auto* dense = ctx.template host_scratch<T>(C * Dn);
    for (std::int64_t c = 0; c < C; ++c) {
        std::copy(user.sparse.data, user.sparse.data + F, ids + c * F);
        for (std::int64_t j = 0; j < Fc; ++j) ids[c * F + p.candidate_fields[static_cast<std::size_t>(j)]] = cand[c * Fc + j];
        std::copy(user.dense.data, user.dense.data + Dn, dense + c * Dn);
    }
    auto* seqs = ctx.template host_scratch<jagged_ids>(S);
    auto* wspans = ctx.template host_scratch<std::span<const T>>(S);
    for (std::int64_t k = 0; k < S; ++k) {
        const auto& in = user.sequences[static_cast<std::size_t>(k)];
        const std::int64_t L = in.nnz();
        auto* v = ctx.template host_scratch<std::int64_t>(C * L);
        auto* o = ctx.template host_scratch<std::int64_t>(C + 1);
        for (std::int64_t c = 0; c <= C; ++c) o[c] = c * L;
        for (std::int64_t c = 0; c < C; ++c) std::copy(in.values.begin(), in.values.end(), v + c * L);
        seqs[k] = {{v, static_cast<std::size_t>(C * L)}, {o, static_cast<std::size_t>(C + 1)}};
        wspans[k] = {};
        if (!user.sequence_weights.empty() && !user.sequence_weights[static_cast<std::size_t>(k)].empty()) {
            auto* w = ctx.template host_scratch<T>(C * L);
            const auto& uw = user.sequence_weights[static_cast<std::size_t>(k)];
            for (std::int64_t c = 0; c < C; ++c) std::copy(uw.begin(), uw.end(), w + c * L);
            wspans[k] = {w, static_cast<std::size_t>(C * L)};
        }
    }
    batch<T> b;
    b.rows = C;
    b.sparse = {ids, shape{C, F}};
    b.dense = {dense, shape{C, Dn}};
    b.sequences = {seqs, static_cast<std::size_t>(S)};
    if (!user.sequence_weights.empty()) b.sequence_weights = {wspans, static_cast<std::size_t>(S)};
    return b;
}

/// Packs the columns [pos_j D, pos_j D + D) of w [rows, ld] for each j into out [rows, J D].
template <class T>
void pack_column_blocks(const T* w, std::int64_t rows, std::int64_t ld, std::span<const std::int64_t> pos, std::int64_t D,
                        std::vector<T>& out) {
    const std::int64_t J = static_cast<std::int64_t>(pos.size());
    out.assign(static_cast<std::size_t>(rows * J * D), T(0));
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t j = 0; j < J; ++j)
            std::copy(w + r * ld + pos[static_cast<std::size_t>(j)] * D, w + r * ld + pos[static_cast<std::size_t>(j)] * D + D,
                      out.data() + r * J * D + j * D);
}

/// An activation of a unit layer (relu .. dice) as target_attention and act_tower apply it.
template <class Ctx, class T, class Prelus, class Dices>
var<T> unit_activate(Ctx& ctx, layers::unit_activation act, const Prelus& prelus, const Dices& dices, std::size_t i,
                     const var<T>& h) {
    using ua = layers::unit_activation;
    switch (act) {
        case ua::relu: return ops::apply(ctx, activation::relu, h);
        case ua::sigmoid: return ops::apply(ctx, activation::sigmoid, h);
        case ua::tanh: return ops::apply(ctx, activation::tanh, h);
        case ua::gelu: return ops::apply(ctx, activation::gelu, h);
        case ua::identity: return h;
        case ua::prelu: return prelus[i](ctx, h);
        case ua::dice: return dices[i](ctx, h);
    }
    return h;
}

}  // namespace detail

/// Any model: the batched forward over the repeated user row (no saving; see above).
template <class Model, class T, class B>
struct ranker {
    struct cache {
        void build(const Model&, const rank_plan&) {}
    };
    static void check_plan(const Model&, const rank_plan&) {}
    template <class Ctx>
    static var<T> run(Ctx& ctx, const Model& m, const cache&, const rank_plan& p, const batch<T>& user,
                      const std::int64_t* cand, std::int64_t C) {
        return m(ctx, detail::repeat_user(ctx, layout_of(m), p, user, cand, C));
    }
    static const feature_layout& layout_of(const Model& m) {
        if constexpr (requires { m.layout; })
            return m.layout;
        else
            return m.inputs.layout;
    }
};

/// DeepFM. With U the user's field vectors (sparse fields that are no candidate field, and
/// the pooled sequences) and V_c candidate c's, FM splits into
///   sum_{i<j in U} <u_i, u_j>  +  <sum U, sum V_c>  +  sum_{i<j in V_c} <v_i, v_j>
/// (the first term once per request), the first-order part into the user's sum plus the
/// candidate's, and the MLP's first layer into W_U x_U + b (once) plus W_V x_V_c (a
/// [C, |V| D] x [|V| D, H0] GEMM over the packed candidate columns of W, the cache).
/// The other MLP layers run on the C rows as in the forward.
template <class T, class B>
struct ranker<models::deepfm<T, B>, T, B> {
    using model = models::deepfm<T, B>;
    struct cache {
        std::vector<std::int64_t> cand_deep;   // candidate columns j whose field is embedded (not wide_only)
        std::vector<std::int64_t> cand_pos;    // ... and that field's position among the deep fields
        std::vector<std::int64_t> user_deep;   // deep fields that are no candidate field
        std::vector<std::int64_t> user_pos;    // ... and their positions
        std::vector<std::int64_t> user_sparse; // all sparse fields that are no candidate field (first order)
        std::vector<T> w_cand;                 // [H0, |cand_deep| D]: the MLP's first weight over the candidate slots
        void build(const model& m, const rank_plan& p) {
            cand_deep.clear(), cand_pos.clear(), user_deep.clear(), user_pos.clear(), user_sparse.clear();
            const auto& deep = m.inputs.deep_fields;
            for (std::size_t pos = 0; pos < deep.size(); ++pos) {
                const std::int64_t j = p.candidate_index(deep[pos]);
                if (j >= 0) {
                    cand_deep.push_back(j);
                    cand_pos.push_back(static_cast<std::int64_t>(pos));
                } else {
                    user_deep.push_back(deep[pos]);
                    user_pos.push_back(static_cast<std::int64_t>(pos));
                }
            }
            for (std::int64_t f = 0; f < m.layout.num_sparse(); ++f)
                if (p.candidate_index(f) < 0) user_sparse.push_back(f);
            if (m.dnn) {
                const auto& l0 = m.dnn->layers[0];
                detail::pack_column_blocks(l0.weight.value(), l0.out, l0.in, cand_pos, m.inputs.dim(), w_cand);
            }
        }
    };
    static void check_plan(const model&, const rank_plan&) {}

    template <class Ctx>
    static var<T> run(Ctx& ctx, const model& m, const cache& k, const rank_plan& p, const batch<T>& user,
                      const std::int64_t* cand, std::int64_t C) {
        const auto& in = m.inputs;
        const auto& l = m.layout;
        const std::int64_t D = in.dim(), F = l.num_sparse(), S = l.num_sequences(), Dn = l.num_dense();
        const std::int64_t Fc = static_cast<std::int64_t>(p.candidate_fields.size());
        const std::int64_t nu = static_cast<std::int64_t>(k.user_deep.size()), nc = static_cast<std::int64_t>(k.cand_deep.size());
        const std::int64_t* uid = user.sparse.data;

        // --- user side, once --------------------------------------------------------------
        auto* ids = ctx.template host_scratch<std::int64_t>(std::max<std::int64_t>(1, F));
        for (std::int64_t i = 0; i < nu; ++i) ids[i] = uid[k.user_deep[static_cast<std::size_t>(i)]];
        var<T> eu = nu > 0 ? ops::embedding_lookup(ctx, in.emb, std::span<const std::int64_t>(ids, static_cast<std::size_t>(nu))) : var<T>{};
        auto* pooled = ctx.template host_scratch<var<T>>(std::max<std::int64_t>(1, S));
        for (std::int64_t s = 0; s < S; ++s) pooled[s] = pool_(ctx, in, in.emb, user, s);
        // FM over the user's vectors (prefix sums, as the fm kernel forms them) and their sum.
        T* su = ctx.template scratch<T>(D);
        std::fill(su, su + D, T(0));
        T fm_user = 0;
        auto add_vec = [&](const T* v) {
            for (std::int64_t d = 0; d < D; ++d) fm_user += v[d] * su[d];
            for (std::int64_t d = 0; d < D; ++d) su[d] += v[d];
        };
        for (std::int64_t i = 0; i < nu; ++i) add_vec(eu.data + i * D);
        for (std::int64_t s = 0; s < S; ++s) add_vec(pooled[s].data);
        // First order of the user's fields, sequences, dense part and bias.
        T lin_user = 0;
        const std::int64_t nus = static_cast<std::int64_t>(k.user_sparse.size());
        for (std::int64_t i = 0; i < nus; ++i) ids[i] = uid[k.user_sparse[static_cast<std::size_t>(i)]];
        if (nus > 0) {
            const var<T> lu = ops::embedding_lookup(ctx, in.lin, std::span<const std::int64_t>(ids, static_cast<std::size_t>(nus)));
            for (std::int64_t i = 0; i < nus; ++i) lin_user += lu.data[i];
        }
        for (std::int64_t s = 0; s < S; ++s) lin_user += pool_(ctx, in, in.lin, user, s).data[0];
        lin_user += in.bias.value()[0];
        for (std::int64_t d = 0; d < Dn; ++d) lin_user += in.dense_w.value()[d] * user.dense.data[d];

        // MLP first layer, user part: W [x_U, 0 in the candidate slots] + b.
        var<T> zu;
        if (m.dnn) {
            const auto& l0 = m.dnn->layers[0];
            var<T> xu = ctx.make(shape{1, l0.in}, false);
            std::fill(xu.data, xu.data + l0.in, T(0));
            for (std::int64_t i = 0; i < nu; ++i)
                std::copy(eu.data + i * D, eu.data + i * D + D, xu.data + k.user_pos[static_cast<std::size_t>(i)] * D);
            const std::int64_t Fd = static_cast<std::int64_t>(in.deep_fields.size());
            for (std::int64_t s = 0; s < S; ++s) std::copy(pooled[s].data, pooled[s].data + D, xu.data + (Fd + s) * D);
            std::copy(user.dense.data, user.dense.data + Dn, xu.data + (Fd + S) * D);
            zu = l0(ctx, xu);
        }

        // --- candidates -----------------------------------------------------------------
        auto* cids = ctx.template host_scratch<std::int64_t>(std::max<std::int64_t>(1, C * std::max(nc, Fc)));
        var<T> out = ctx.make(shape{C, 1}, false);
        // First order of the candidate fields (wide_only included).
        for (std::int64_t i = 0; i < C * Fc; ++i) cids[i] = cand[i];
        const var<T> lc = ops::embedding_lookup(ctx, in.lin, std::span<const std::int64_t>(cids, static_cast<std::size_t>(C * Fc)));
        var<T> ec;
        if (nc > 0) {
            for (std::int64_t c = 0; c < C; ++c)
                for (std::int64_t j = 0; j < nc; ++j) cids[c * nc + j] = cand[c * Fc + k.cand_deep[static_cast<std::size_t>(j)]];
            ec = ops::embedding_lookup(ctx, in.emb, std::span<const std::int64_t>(cids, static_cast<std::size_t>(C * nc)));
        }
        for (std::int64_t c = 0; c < C; ++c) {
            T lin = lin_user, cross = 0, fm_cand = 0;
            for (std::int64_t j = 0; j < Fc; ++j) lin += lc.data[c * Fc + j];
            for (std::int64_t j = 0; j < nc; ++j) {
                const T* v = ec.data + (c * nc + j) * D;
                for (std::int64_t d = 0; d < D; ++d) cross += v[d] * su[d];
                for (std::int64_t i = 0; i < j; ++i) {
                    const T* w = ec.data + (c * nc + i) * D;
                    for (std::int64_t d = 0; d < D; ++d) fm_cand += v[d] * w[d];
                }
            }
            out.data[c] = lin + fm_user + cross + fm_cand;
        }
        if (!m.dnn) return out;

        // MLP: first layer from the packed candidate columns plus the user part, then the rest.
        const auto& mlp = *m.dnn;
        const std::int64_t H0 = mlp.layers[0].out;
        var<T> z = ctx.make(shape{C, H0}, false);
        if (nc > 0)
            kernels::gemm(B{}, false, true, C, H0, nc * D, T(1), ec.data, nc * D, k.w_cand.data(), nc * D, T(0), z.data, H0);
        else
            std::fill(z.data, z.data + C * H0, T(0));
        kernels::add_row_bias(B{}, C, H0, zu.data, z.data);
        var<T> x = z;
        for (std::size_t i = 0; i < mlp.layers.size(); ++i) {
            if (i > 0) x = mlp.layers[i](ctx, x);
            if (mlp.options.layer_norm) x = mlp.norms[i](ctx, x);
            x = ops::apply(ctx, mlp.options.act, x);
        }
        if (mlp.head) x = (*mlp.head)(ctx, x);
        const var<T> d = (*m.dnn_linear)(ctx, x);
        for (std::int64_t c = 0; c < C; ++c) out.data[c] += d.data[c];
        return out;
    }

private:
    template <class Ctx>
    static var<T> pool_(Ctx& ctx, const models::ctr_inputs<T, B>& in, const table_param<T, B>& t, const batch<T>& user,
                        std::int64_t s) {
        const auto& sf = in.layout.sequences[static_cast<std::size_t>(s)];
        var<T> w;
        if (sf.weighted && !user.sequence_weights.empty() && !user.sequence_weights[static_cast<std::size_t>(s)].empty()) {
            auto ws = user.sequence_weights[static_cast<std::size_t>(s)];
            w = ctx.input(tensor_view<const T>{ws.data(), shape{static_cast<std::int64_t>(ws.size())}});
        }
        return ops::embedding_bag(ctx, t, user.sequences[static_cast<std::size_t>(s)], sf.pooling, w);
    }
};

/// DIN. With K [T, PD] the user's behaviours and q_c [PD] candidate c's query, the unit's
/// first layer on pair (c, j) is (ops::din_unit_input's split, one step further)
///   h_cj = q_c (Wq + Wd)^T + b  +  k_j (Wk - Wd)^T  +  (q_c * k_j) Wp^T
/// whose middle term is computed once per behaviour (not once per pair), leaving the pair
/// GEMM [C T, PD] x [PD, H0] (half of the batched forward's [C T, 2 PD] x [2 PD, H0]). The
/// user's histories are looked up once; the pooled interest of all candidates is one GEMM
/// [C, T] x [T, PD]; the tower's first layer splits into its user part (once), the interest
/// columns and the packed candidate columns. The rest runs on C T pairs / C rows as in the
/// forward.
template <class T, class B>
struct ranker<models::din<T, B>, T, B> {
    using model = models::din<T, B>;
    struct cache {
        std::vector<T> a, wkd;                  // [H0, PD]: Wq + Wd and Wk - Wd
        std::vector<std::int64_t> cand_deep;    // candidate columns j of embedded (non-wide) fields
        std::vector<std::int64_t> cand_pos;     // ... their positions among the deep fields
        std::vector<std::int64_t> user_deep, user_pos;
        std::vector<std::int64_t> pair_col;     // candidate column of each behaviour pair's candidate
        std::vector<T> w_cand;                  // tower layer 0 over the candidate slots [Ht0, |cand_deep| D]
        void build(const model& m, const rank_plan& p) {
            const std::int64_t PD = m.beh.width(), H0 = m.attention.first_weight.s[0];
            const T* w = m.attention.first_weight.value();
            a.resize(static_cast<std::size_t>(H0 * PD));
            wkd.resize(a.size());
            for (std::int64_t h = 0; h < H0; ++h)
                for (std::int64_t d = 0; d < PD; ++d) {
                    const T* r = w + h * 4 * PD;
                    a[static_cast<std::size_t>(h * PD + d)] = r[d] + r[2 * PD + d];
                    wkd[static_cast<std::size_t>(h * PD + d)] = r[PD + d] - r[2 * PD + d];
                }
            cand_deep.clear(), cand_pos.clear(), user_deep.clear(), user_pos.clear(), pair_col.clear();
            const auto& deep = m.inputs.deep_fields;
            for (std::size_t pos = 0; pos < deep.size(); ++pos) {
                const std::int64_t j = p.candidate_index(deep[pos]);
                if (j >= 0) {
                    cand_deep.push_back(j);
                    cand_pos.push_back(static_cast<std::int64_t>(pos));
                } else {
                    user_deep.push_back(deep[pos]);
                    user_pos.push_back(static_cast<std::int64_t>(pos));
                }
            }
            for (auto f : m.beh.cand) pair_col.push_back(p.candidate_index(f));
            const auto& t0 = m.mlp.fc[0];
            // Tower input [u (PD), rest]: the rest's field slots start at column PD.
            std::vector<std::int64_t> slots(cand_pos.size());
            for (std::size_t i = 0; i < slots.size(); ++i) slots[i] = cand_pos[i];
            detail::pack_column_blocks(t0.weight.value() + PD, t0.out, t0.in, slots, m.inputs.dim(), w_cand);
        }
    };
    static void check_plan(const model& m, const rank_plan& p) {
        for (auto f : m.beh.cand)
            XREC_CHECK(p.candidate_index(f) >= 0, "serve::ranker<din>: the behaviour pair's candidate field '",
                       m.inputs.layout.sparse[static_cast<std::size_t>(f)].name,
                       "' must be one of the predictor's candidate_fields (the query is the candidate's)");
    }

    template <class Ctx>
    static var<T> run(Ctx& ctx, const model& m, const cache& k, const rank_plan& p, const batch<T>& user,
                      const std::int64_t* cand, std::int64_t C) {
        const auto& in = m.inputs;
        const auto& att = m.attention;
        const auto& tower = m.mlp;
        const auto& l = in.layout;
        const std::int64_t D = in.dim(), PD = m.beh.width(), P = m.beh.pairs(), Dn = l.num_dense();
        const std::int64_t Fc = static_cast<std::int64_t>(p.candidate_fields.size());
        const std::int64_t nu = static_cast<std::int64_t>(k.user_deep.size()), nc = static_cast<std::int64_t>(k.cand_deep.size());
        const std::int64_t H0 = att.first_weight.s[0];
        const std::int64_t* uid = user.sparse.data;

        // --- user side, once --------------------------------------------------------------
        const auto off = m.beh.offsets(user, "din rank");
        const std::int64_t Tn = off[1];
        const var<T> K = m.beh.keys(ctx, in, user);  // [T, PD]
        T* kpart = ctx.template scratch<T>(std::max<std::int64_t>(1, Tn * H0));
        if (Tn > 0) kernels::gemm(B{}, false, true, Tn, H0, PD, T(1), K.data, PD, k.wkd.data(), PD, T(0), kpart, H0);
        // Tower layer 0 on [0 (interest), user rest with zeros in the candidate slots].
        const auto& t0 = tower.fc[0];
        var<T> xu = ctx.make(shape{1, t0.in}, false);
        std::fill(xu.data, xu.data + t0.in, T(0));
        auto* ids = ctx.template host_scratch<std::int64_t>(std::max<std::int64_t>(1, nu));
        for (std::int64_t i = 0; i < nu; ++i) ids[i] = uid[k.user_deep[static_cast<std::size_t>(i)]];
        if (nu > 0) {
            const var<T> eu = ops::embedding_lookup(ctx, in.emb, std::span<const std::int64_t>(ids, static_cast<std::size_t>(nu)));
            for (std::int64_t i = 0; i < nu; ++i)
                std::copy(eu.data + i * D, eu.data + i * D + D, xu.data + PD + k.user_pos[static_cast<std::size_t>(i)] * D);
        }
        std::int64_t col = PD + static_cast<std::int64_t>(in.deep_fields.size()) * D;
        for (auto s : m.beh.other_seq) {
            const auto& sf = l.sequences[static_cast<std::size_t>(s)];
            var<T> w;
            if (sf.weighted && !user.sequence_weights.empty() && !user.sequence_weights[static_cast<std::size_t>(s)].empty()) {
                auto ws = user.sequence_weights[static_cast<std::size_t>(s)];
                w = ctx.input(tensor_view<const T>{ws.data(), shape{static_cast<std::int64_t>(ws.size())}});
            }
            const var<T> pv = ops::embedding_bag(ctx, in.emb, user.sequences[static_cast<std::size_t>(s)], sf.pooling, w);
            std::copy(pv.data, pv.data + D, xu.data + col);
            col += D;
        }
        std::copy(user.dense.data, user.dense.data + Dn, xu.data + col);
        const var<T> zu = t0(ctx, xu);  // [1, Ht0], bias included

        // --- candidates -----------------------------------------------------------------
        auto* qids = ctx.template host_scratch<std::int64_t>(C * std::max(P, std::max<std::int64_t>(nc, 1)));
        for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t pp = 0; pp < P; ++pp) qids[c * P + pp] = cand[c * Fc + k.pair_col[static_cast<std::size_t>(pp)]];
        const var<T> q = ops::embedding_lookup(ctx, in.emb, std::span<const std::int64_t>(qids, static_cast<std::size_t>(C * P)));
        // q rows are [C P, D] = [C, PD] row-major.
        var<T> u = ctx.make(shape{C, PD}, false);
        if (Tn > 0) {
            T* qa = ctx.template scratch<T>(C * H0);
            kernels::gemm(B{}, false, true, C, H0, PD, T(1), q.data, PD, k.a.data(), PD, T(0), qa, H0);
            kernels::add_row_bias(B{}, C, H0, att.first_bias.value(), qa);
            // Pair layer 0 as one GEMM whose A rows (q_c * k_j) are made while they are packed,
            // with kpart_j + qa_c and an elementwise activation applied to each block of the
            // result while it is in cache: no [C T, PD] array, no extra pass over [C T, H0].
            const auto act0 = elementwise_(att.options.act);
            var<T> h = ctx.make(shape{C * Tn, H0}, false);
            T* xb = ctx.template scratch<T>(policy<B>::template gemm_mr<T> * PD);
            auto produce = [&](std::int64_t i0, std::int64_t p0, std::int64_t rows, std::int64_t cols, bool) -> const T* {
                for (std::int64_t r = 0; r < rows; ++r) {
                    const std::int64_t i = i0 + r, c = i / Tn, j = i - c * Tn;
                    kernels::mul(B{}, cols, q.data + c * PD + p0, K.data + j * PD + p0, xb + r * PD + p0);
                }
                return xb + p0;
            };
            auto epi0 = [&](std::int64_t i0, std::int64_t j0, std::int64_t rows, std::int64_t cols) {
                for (std::int64_t i = i0; i < i0 + rows; ++i) {
                    const std::int64_t c = i / Tn, j = i - c * Tn;
                    T* r = h.data + i * H0 + j0;
                    kernels::add(B{}, cols, r, kpart + j * H0 + j0, r);
                    kernels::add(B{}, cols, r, qa + c * H0 + j0, r);
                }
                if (act0) act_block_(*act0, h.data, H0, i0, j0, rows, cols);
            };
            kernels::gemm_produce_then(B{}, C * Tn, H0, PD, T(1), produce, PD, true, att.first_weight.value() + 3 * PD,
                                       4 * PD, T(0), h.data, H0, epi0);
            const std::size_t hidden = att.options.hidden.size();
            for (std::size_t i = 0; i < hidden; ++i) {
                if (i > 0) h = linear_act_(ctx, att.rest[i - 1], h, act0);
                if (!act0) h = detail::unit_activate(ctx, att.options.act, att.prelu_acts, att.dice_acts, i, h);
            }
            if (hidden > 0) h = att.rest.back()(ctx, h);
            var<T> w = ops::apply(ctx, att.options.output, h);  // [C T, 1]
            if (att.options.softmax) {
                auto* so = ctx.template host_scratch<std::int64_t>(C + 1);
                for (std::int64_t c = 0; c <= C; ++c) so[c] = c * Tn;
                w = ops::jagged_softmax(ctx, w, std::span<const std::int64_t>(so, static_cast<std::size_t>(C + 1)));
            }
            kernels::gemm(B{}, false, false, C, PD, Tn, T(1), w.data, Tn, K.data, PD, T(0), u.data, PD);
        } else {
            std::fill(u.data, u.data + C * PD, T(0));  // an empty history pools to zeros
        }

        // Tower layer 0: interest columns + candidate slots + the user part.
        const std::int64_t Ht0 = t0.out;
        var<T> z = ctx.make(shape{C, Ht0}, false);
        kernels::gemm(B{}, false, true, C, Ht0, PD, T(1), u.data, PD, t0.weight.value(), t0.in, T(0), z.data, Ht0);
        if (nc > 0) {
            for (std::int64_t c = 0; c < C; ++c)
                for (std::int64_t j = 0; j < nc; ++j) qids[c * nc + j] = cand[c * Fc + k.cand_deep[static_cast<std::size_t>(j)]];
            const var<T> ec = ops::embedding_lookup(ctx, in.emb, std::span<const std::int64_t>(qids, static_cast<std::size_t>(C * nc)));
            kernels::gemm(B{}, false, true, C, Ht0, nc * D, T(1), ec.data, nc * D, k.w_cand.data(), nc * D, T(1), z.data, Ht0);
        }
        kernels::add_row_bias(B{}, C, Ht0, zu.data, z.data);
        var<T> x = z;
        const std::size_t layers = tower.fc.size() - 1;  // hidden layers; fc.back() is the output
        for (std::size_t i = 0; i < layers; ++i) {
            if (i > 0) x = tower.fc[i](ctx, x);
            x = detail::unit_activate(ctx, tower.options.act, tower.prelus, tower.dices, i, x);
        }
        return layers > 0 ? tower.fc.back()(ctx, x) : x;
    }

private:
    // The unit activations that are elementwise functions (fused into GEMM epilogues).
    static std::optional<activation> elementwise_(layers::unit_activation a) {
        using ua = layers::unit_activation;
        switch (a) {
            case ua::relu: return activation::relu;
            case ua::sigmoid: return activation::sigmoid;
            case ua::tanh: return activation::tanh;
            case ua::gelu: return activation::gelu;
            case ua::identity: return activation::identity;
            default: return std::nullopt;
        }
    }
    // act(x W^T + b) with the bias and an elementwise act applied per block of the GEMM.
    template <class Ctx, class L>
    static var<T> linear_act_(Ctx& ctx, const L& lin, const var<T>& x, std::optional<activation> act) {
        const std::int64_t M = x.s[0], N = lin.out, Kd = lin.in;
        var<T> y = ctx.make(shape{M, N}, false);
        const T* bias = lin.has_bias() ? lin.bias.value() : nullptr;
        kernels::gemm_then(B{}, false, true, M, N, Kd, T(1), x.data, Kd, lin.weight.value(), Kd, T(0), y.data, N,
                           [&](std::int64_t i0, std::int64_t j0, std::int64_t rows, std::int64_t cols) {
                               if (bias)
                                   for (std::int64_t i = i0; i < i0 + rows; ++i)
                                       kernels::add(B{}, cols, y.data + i * N + j0, bias + j0, y.data + i * N + j0);
                               if (act) act_block_(*act, y.data, N, i0, j0, rows, cols);
                           });
        return y;
    }
    // An activation over a block of c [.., ldc]: one call over the contiguous block when it
    // spans whole rows (so only the block's end, not every row, leaves a SIMD tail).
    static void act_block_(activation a, T* c, std::int64_t ldc, std::int64_t i0, std::int64_t j0, std::int64_t rows,
                           std::int64_t cols) {
        if (j0 == 0 && cols == ldc)
            kernels::activation_fwd(B{}, a, rows * cols, c + i0 * ldc, c + i0 * ldc);
        else
            for (std::int64_t i = i0; i < i0 + rows; ++i) kernels::activation_fwd(B{}, a, cols, c + i * ldc + j0, c + i * ldc + j0);
    }
};

}  // namespace xrec::serve
