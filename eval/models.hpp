#pragma once
// The model zoo by name, with the hyper-parameters the evaluations fix in advance (shared by
// xrec_eval and the shopping-guide demo so that both train the same models).
#include <cstdint>
#include <string>
#include <vector>

#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/models/autoint.hpp"
#include "xrec/models/bst.hpp"
#include "xrec/models/dcn.hpp"
#include "xrec/models/dcn_v2.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/models/din.hpp"
#include "xrec/models/esmm.hpp"
#include "xrec/models/fm.hpp"
#include "xrec/models/lr.hpp"
#include "xrec/models/mmoe.hpp"
#include "xrec/models/nfm.hpp"
#include "xrec/models/shared_bottom.hpp"
#include "xrec/models/wide_deep.hpp"

namespace xrec_eval {

// xrec_eval is float32; xrec_eval_f64 (the same source with XREC_EVAL_F64) trains in double,
// for the parity runs whose float32 training is chaotic enough that rounding alone moves the
// result (BST: PyTorch float32 vs PyTorch float64 differ by 0.006 AUC on one seed).
#ifdef XREC_EVAL_F64
using T = double;
#else
using T = float;
#endif
using B = xrec::cpu<>;
using store_t = xrec::param_store<T, B>;

/// Hyper-parameters common to every model of one evaluation.
struct zoo_config {
    std::int64_t dim = 8;
    std::vector<std::int64_t> hidden{200, 200};
    std::int64_t cross_layers = 3;
    double embedding_sd = 1e-2;
    /// Sequence fields the models pair with a candidate (DIN, BST): {candidate, history}; the
    /// pairs whose two fields the layout has are used.
    std::vector<std::pair<std::string, std::string>> behaviour{
        {"item_id", "hist_item_id"}, {"category", "hist_category"}, {"brand", "hist_brand"}};
};

inline const std::vector<std::string>& ctr_model_names() {
    static const std::vector<std::string> n{"lr", "fm", "deepfm", "wide_deep", "nfm", "dcn", "dcn_v2", "autoint"};
    return n;
}

/// Builds model `name` on `layout` in `s` and calls f(model). Throws for an unknown name.
template <class F>
void with_model(const std::string& name, store_t& s, const xrec::feature_layout& layout, const zoo_config& c, F&& f) {
    namespace m = xrec::models;
    const xrec::layers::mlp_options dnn{.hidden = c.hidden};
    const auto emb = xrec::init::normal(0, c.embedding_sd);
    const m::input_options in{.dim = c.dim, .first_order = false, .embedding_init = emb};
    std::vector<m::behaviour_pair> pairs;
    for (auto& [q, h] : c.behaviour)
        if (layout.find_sparse(q) >= 0 && layout.find_sequence(h) >= 0) pairs.push_back({q, h});
    if (name == "lr") {
        m::lr<T, B> model(s, layout, {});
        f(model);
    } else if (name == "fm") {
        m::fm<T, B> model(s, layout, {.dim = c.dim, .embedding_init = emb});
        f(model);
    } else if (name == "deepfm") {
        m::deepfm<T, B> model(s, layout, {.dim = c.dim, .dnn = dnn, .embedding_init = emb});
        f(model);
    } else if (name == "wide_deep") {
        m::wide_deep<T, B> model(s, layout, {.dim = c.dim, .dnn = dnn, .embedding_init = emb});
        f(model);
    } else if (name == "nfm") {
        m::nfm<T, B> model(s, layout, {.dim = c.dim, .dnn = dnn, .embedding_init = emb});
        f(model);
    } else if (name == "dcn") {
        m::dcn<T, B> model(s, layout, {.dim = c.dim, .cross_layers = c.cross_layers, .dnn = dnn, .embedding_init = emb});
        f(model);
    } else if (name == "dcn_v2") {
        xrec::layers::cross_v2_options cross;
        cross.layers = c.cross_layers;
        m::dcn_v2<T, B> model(s, layout, {.dim = c.dim, .cross = cross, .dnn = dnn, .embedding_init = emb});
        f(model);
    } else if (name == "autoint") {
        m::autoint<T, B> model(s, layout, {.dim = c.dim, .dnn = dnn, .embedding_init = emb});
        f(model);
    } else if (name == "din") {
        typename m::din<T, B>::options o;
        o.inputs = in;
        o.pairs = pairs;
        o.mlp.hidden = c.hidden;
        m::din<T, B> model(s, layout, o);
        f(model);
    } else if (name == "bst") {
        typename m::bst<T, B>::options o;
        o.inputs = in;
        o.pairs = pairs;
        o.mlp.hidden = c.hidden;
        o.transformer.dropout = 0;
        o.readout = m::bst_readout::sum;  // keeps how many behaviours match (the shop's click model counts them)
        m::bst<T, B> model(s, layout, o);
        f(model);
    } else if (name == "shared_bottom") {
        typename m::shared_bottom<T, B>::options o;
        o.inputs = in;
        // DeepCTR-Torch's comparison: each expert of MMoE shaped like the shared bottom; a
        // narrow bottom (64-16) that both tasks must share, towers of 16.
        o.bottom.hidden = {64, 16};
        o.tower.hidden = {16};
        m::shared_bottom<T, B> model(s, layout, o);
        f(model);
    } else if (name == "mmoe") {
        typename m::mmoe<T, B>::options o;
        o.inputs = in;
        o.experts = 4;
        o.expert.hidden = {64, 16};
        o.tower.hidden = {16};
        m::mmoe<T, B> model(s, layout, o);
        f(model);
    } else if (name == "esmm") {
        typename m::esmm<T, B>::options o;
        o.inputs = in;
        o.tower.hidden = c.hidden;
        m::esmm<T, B> model(s, layout, o);
        f(model);
    } else {
        XREC_FAIL("unknown model '", name, "' (lr, fm, deepfm, wide_deep, nfm, dcn, dcn_v2, autoint, din, bst, ",
                  "shared_bottom, mmoe, esmm)");
    }
}

}  // namespace xrec_eval
