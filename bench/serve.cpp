// Serving through serve::predictor (one session, the caller's thread), beside ONNX Runtime
// (bench/peers/onnx_peer.py: the same models exported from PyTorch, one intra-op thread):
//  - serve_deepfm_predict/b<n>: the Criteo-shaped DeepFM of bench/deepfm.cpp (26 fields of
//    100,000 rows, D 16, 13 dense, MLP 400-400-400), n rows of different users.
//  - serve_deepfm_rank/c200: one user, 200 candidates differing in fields C23..C26 (the
//    candidate fields; the peer scores the same 200 rows in one batch).
//  - serve_din_predict/b<n>: DIN over user_id (100,000), item_id (100,000), cate_id (1,000)
//    with histories of 50 items and categories, D 16, unit 80-40 sigmoid, tower 200-80 dice.
//  - serve_din_rank/c200: one user with a history of 50, 200 candidate (item, category) pairs.
// Weights: with XREC_SERVE_WEIGHTS=DIR (bench/run.py sets it) the models load DIR/deepfm.safetensors
// and DIR/din.safetensors, written by the peer from its PyTorch modules, and the golden rows
// of DIR/<model>_golden.safetensors (ONNX Runtime's logits) are checked first: a mismatch
// stops the benchmark. Otherwise seeded random weights.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/models/din.hpp"
#include "xrec/serve/predictor.hpp"

namespace xrec_bench {
namespace {

constexpr std::int64_t fields = 26, rows_per_field = 100'000, dim = 16, dense_fields = 13, cand_fields = 4;
constexpr std::int64_t hist = 50;
using deepfm_model = xrec::models::deepfm<T, B>;
using din_model = xrec::models::din<T, B>;

xrec::feature_layout deepfm_layout() {
    xrec::feature_layout l;
    for (std::int64_t f = 0; f < fields; ++f) {
        std::string n(1, 'C');
        n.append(std::to_string(f + 1));
        l.tables.push_back({n, rows_per_field});
        l.sparse.push_back({n, f});
    }
    for (std::int64_t d = 0; d < dense_fields; ++d) {
        std::string n(1, 'I');
        n.append(std::to_string(d + 1));
        l.dense.push_back(n);
    }
    l.finish();
    return l;
}

xrec::models::deepfm_options deepfm_options() {
    xrec::models::deepfm_options o;
    o.dim = dim;
    o.dnn.hidden = {400, 400, 400};
    return o;
}

xrec::feature_layout din_layout() {
    xrec::feature_layout l;
    l.tables = {{"user_id", 100'000}, {"item_id", 100'000}, {"cate_id", 1'000}};
    l.sparse = {{"user_id", 0}, {"item_id", 1}, {"cate_id", 2}};
    l.sequences = {{"hist_item_id", 1, hist, xrec::pooling::mean}, {"hist_cate_id", 2, hist, xrec::pooling::mean}};
    l.finish();
    return l;
}

din_model::options din_options() {
    din_model::options o;
    o.inputs.dim = dim;
    o.pairs = {{"item_id", "hist_item_id"}, {"cate_id", "hist_cate_id"}};
    return o;
}

std::vector<std::string> deepfm_candidate_fields() {
    std::vector<std::string> c;
    for (std::int64_t f = fields - cand_fields; f < fields; ++f) {
        std::string n(1, 'C');  // piecewise: GCC 12 flags "C" + std::to_string(...) with a false -Wrestrict
        n.append(std::to_string(f + 1));
        c.push_back(n);
    }
    return c;
}

const char* weights_dir() { return std::getenv("XREC_SERVE_WEIGHTS"); }

template <class U>
std::vector<U> read_tensor(const xrec::io::safetensors_file& f, const std::string& name) {
    const auto* t = f.find(name);
    XREC_CHECK(t, "serve bench: golden tensor '", name, "' missing");
    std::vector<U> v(static_cast<std::size_t>(t->s.numel()));
    f.read_into(name, v.data(), t->s.numel());
    return v;
}

// Throws unless every golden logit matches within 1e-4 relative (floor 1).
void check_golden(const std::string& model, const std::vector<T>& got, const std::vector<T>& want) {
    XREC_CHECK(got.size() == want.size(), "serve bench: ", model, " golden size");
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
        worst = std::max(worst, std::abs(double(got[i]) - double(want[i])) / std::max(1.0, std::abs(double(want[i]))));
    XREC_CHECK(worst <= 1e-4, "serve bench: ", model, " differs from ONNX Runtime's golden logits by ", worst);
}

// A batch view over owned vectors.
struct rows {
    std::int64_t n = 0;
    std::vector<std::int64_t> sparse;
    std::vector<T> dense;
    std::vector<std::int64_t> hv[2], ho[2];
    std::vector<xrec::jagged_ids> seqs;
    xrec::batch<T> view(std::int64_t F, std::int64_t Dn) {
        seqs.clear();
        if (!ho[0].empty())
            for (int k = 0; k < 2; ++k) seqs.push_back({hv[k], ho[k]});
        xrec::batch<T> b;
        b.rows = n;
        b.sparse = {sparse.data(), xrec::shape{n, F}};
        b.dense = {dense.data(), xrec::shape{n, Dn}};
        b.sequences = seqs;
        return b;
    }
};

struct deepfm_fixture {
    xrec::feature_layout layout = deepfm_layout();
    xrec::serve::predictor<deepfm_model> p;
    xrec::serve::session<deepfm_model> s;
    deepfm_fixture()
        : p(layout, deepfm_options(),
            {.max_batch = 256, .max_candidates = 200, .candidate_fields = deepfm_candidate_fields(),
             .output = xrec::serve::output_kind::logits}) {
        if (const char* dir = weights_dir()) {
            p.publish_checkpoint(std::string(dir) + "/deepfm.safetensors");
            s = p.make_session();
            const auto g = xrec::io::safetensors_file::open(std::string(dir) + "/deepfm_golden.safetensors");
            rows r;
            r.sparse = read_tensor<std::int64_t>(g, "ids");
            r.dense = read_tensor<T>(g, "dense");
            r.n = static_cast<std::int64_t>(r.dense.size()) / dense_fields;
            std::vector<T> out(static_cast<std::size_t>(r.n));
            const auto st = p.predict(s, r.view(fields, dense_fields), out);
            XREC_CHECK(st.ok(), "serve bench: deepfm golden: ", st.message);
            check_golden("deepfm", out, read_tensor<T>(g, "logits"));
        } else {
            xrec::param_store<T, B> store(1);
            deepfm_model m(store, layout, deepfm_options());
            p.publish(store);
            s = p.make_session();
        }
    }
};

struct din_fixture {
    xrec::feature_layout layout = din_layout();
    xrec::serve::predictor<din_model> p;
    xrec::serve::session<din_model> s;
    din_fixture()
        : p(layout, din_options(),
            {.max_batch = 256, .max_candidates = 200, .candidate_fields = {"item_id", "cate_id"},
             .output = xrec::serve::output_kind::logits}) {
        if (const char* dir = weights_dir()) {
            p.publish_checkpoint(std::string(dir) + "/din.safetensors");
            s = p.make_session();
            const auto g = xrec::io::safetensors_file::open(std::string(dir) + "/din_golden.safetensors");
            const auto u = read_tensor<std::int64_t>(g, "user_id"), it = read_tensor<std::int64_t>(g, "item_id"),
                       ca = read_tensor<std::int64_t>(g, "cate_id"), hi = read_tensor<std::int64_t>(g, "hist_item"),
                       hc = read_tensor<std::int64_t>(g, "hist_cate"), len = read_tensor<std::int64_t>(g, "hist_len");
            rows r;
            r.n = static_cast<std::int64_t>(u.size());
            const std::int64_t width = static_cast<std::int64_t>(hi.size()) / r.n;
            for (int k = 0; k < 2; ++k) r.ho[k].push_back(0);
            for (std::int64_t i = 0; i < r.n; ++i) {
                for (std::int64_t v : {u[static_cast<std::size_t>(i)], it[static_cast<std::size_t>(i)], ca[static_cast<std::size_t>(i)]}) r.sparse.push_back(v);
                for (std::int64_t j = 0; j < len[static_cast<std::size_t>(i)]; ++j) {  // the first hist_len entries are the history
                    r.hv[0].push_back(hi[static_cast<std::size_t>(i * width + j)]);
                    r.hv[1].push_back(hc[static_cast<std::size_t>(i * width + j)]);
                }
                for (int k = 0; k < 2; ++k) r.ho[k].push_back(static_cast<std::int64_t>(r.hv[k].size()));
            }
            std::vector<T> out(static_cast<std::size_t>(r.n));
            const auto st = p.predict(s, r.view(3, 0), out);
            XREC_CHECK(st.ok(), "serve bench: din golden: ", st.message);
            check_golden("din", out, read_tensor<T>(g, "logits"));
        } else {
            xrec::param_store<T, B> store(1);
            din_model m(store, layout, din_options());
            p.publish(store);
            s = p.make_session();
        }
    }
};

// Random rows: deepfm ids per field, dense in [0, 1); din users, items, categories and full
// histories. With one_user, every row repeats row 0 except in the candidate fields.
rows deepfm_rows(const xrec::feature_layout& l, std::int64_t n, std::uint64_t seed) {
    xrec::rng_stream rs{xrec::philox{seed}, 3};
    std::uint64_t k = 0;
    rows r;
    r.n = n;
    for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t f = 0; f < fields; ++f)
            r.sparse.push_back(l.tables[static_cast<std::size_t>(f)].offset + static_cast<std::int64_t>(rs.below(k++, rows_per_field)));
        for (std::int64_t d = 0; d < dense_fields; ++d) r.dense.push_back(rs.uniform_f(k++));
    }
    return r;
}

rows din_rows(const xrec::feature_layout& l, std::int64_t n, std::uint64_t seed) {
    xrec::rng_stream rs{xrec::philox{seed}, 4};
    std::uint64_t k = 0;
    auto id = [&](std::size_t t) {
        return l.tables[t].offset + static_cast<std::int64_t>(rs.below(k++, static_cast<std::uint64_t>(l.tables[t].rows)));
    };
    rows r;
    r.n = n;
    for (int q = 0; q < 2; ++q) r.ho[q].push_back(0);
    for (std::int64_t i = 0; i < n; ++i) {
        for (std::size_t t = 0; t < 3; ++t) r.sparse.push_back(id(t));
        for (std::int64_t j = 0; j < hist; ++j) {
            r.hv[0].push_back(id(1));
            r.hv[1].push_back(id(2));
        }
        for (int q = 0; q < 2; ++q) r.ho[q].push_back(static_cast<std::int64_t>(r.hv[q].size()));
    }
    return r;
}

// MLP multiply-adds per row, for the cost model.
double deepfm_mac() {
    double mac = 0, in = fields * dim + dense_fields;
    for (double h : {400.0, 400.0, 400.0}) {
        mac += in * h;
        in = h;
    }
    return mac + in;
}

case_cost cost(double items, double flops, double ws) {
    case_cost c;
    c.items = items;
    c.flops = flops;
    c.bytes = ws;
    c.ws_bytes = ws;
    return c;
}

void add_deepfm() {
    const double weights = 4.0 * (deepfm_mac() + 1200);
    for (std::int64_t n : {1, 256}) {
        add_case("serve_deepfm_predict/b" + std::to_string(n),
                 cost(double(n), 2 * deepfm_mac() * double(n), weights + double(n) * fields * (dim + 1) * 4), [n]() -> step_fn {
                     struct fx {
                         deepfm_fixture f;
                         rows r;
                         xrec::batch<T> b;
                         std::vector<T> out;
                     };
                     auto x = std::make_shared<fx>();
                     x->r = deepfm_rows(x->f.layout, n, 7);
                     x->b = x->r.view(fields, dense_fields);
                     x->out.resize(static_cast<std::size_t>(n));
                     return [x] {
                         const auto st = x->f.p.predict(x->f.s, x->b, x->out);
                         if (!st.ok()) std::abort();
                         benchmark::DoNotOptimize(x->out.data());
                     };
                 });
    }
    const double cand_mac = 400.0 * (cand_fields * dim) + 400 * 400 * 2 + 400;
    add_case("serve_deepfm_rank/c200", cost(200, 2 * cand_mac * 200, weights + 200 * cand_fields * (dim + 1) * 4), []() -> step_fn {
        struct fx {
            deepfm_fixture f;
            rows user, cand_rows;
            std::vector<std::int64_t> cand;
            xrec::batch<T> u;
            std::vector<T> out = std::vector<T>(200);
        };
        auto x = std::make_shared<fx>();
        x->user = deepfm_rows(x->f.layout, 1, 8);
        x->u = x->user.view(fields, dense_fields);
        x->cand_rows = deepfm_rows(x->f.layout, 200, 9);
        for (std::int64_t c = 0; c < 200; ++c)
            for (std::int64_t j = fields - cand_fields; j < fields; ++j) x->cand.push_back(x->cand_rows.sparse[static_cast<std::size_t>(c * fields + j)]);
        return [x] {
            const auto st = x->f.p.rank(x->f.s, x->u, {x->cand.data(), xrec::shape{200, cand_fields}}, x->out);
            if (!st.ok()) std::abort();
            benchmark::DoNotOptimize(x->out.data());
        };
    });
}

void add_din() {
    // Per pair: the unit (2 PD x 80 fused first layer, 80 x 40, 40 x 1); per row: the tower.
    const double PD = 2 * dim, pair_mac = 2 * PD * 80 + 80 * 40 + 40, row_mac = (PD + 3 * dim) * 200 + 200 * 80 + 80;
    const double weights = 4.0 * (4 * PD * 80 + 80 * 40 + (PD + 3 * dim) * 200 + 200 * 80);
    for (std::int64_t n : {1, 200}) {
        add_case("serve_din_predict/b" + std::to_string(n),
                 cost(double(n), 2 * (pair_mac * hist + row_mac) * double(n), weights + double(n) * (2 * hist + 3) * dim * 4),
                 [n]() -> step_fn {
                     struct fx {
                         din_fixture f;
                         rows r;
                         xrec::batch<T> b;
                         std::vector<T> out;
                     };
                     auto x = std::make_shared<fx>();
                     x->r = din_rows(x->f.layout, n, 17);
                     x->b = x->r.view(3, 0);
                     x->out.resize(static_cast<std::size_t>(n));
                     return [x] {
                         const auto st = x->f.p.predict(x->f.s, x->b, x->out);
                         if (!st.ok()) std::abort();
                         benchmark::DoNotOptimize(x->out.data());
                     };
                 });
    }
    add_case("serve_din_rank/c200", cost(200, 2 * ((PD * 80 + 80 * 40 + 40) * hist + row_mac) * 200, weights + (2 * hist + 400) * dim * 4),
             []() -> step_fn {
                 struct fx {
                     din_fixture f;
                     rows user, cand_rows;
                     std::vector<std::int64_t> cand;
                     xrec::batch<T> u;
                     std::vector<T> out = std::vector<T>(200);
                 };
                 auto x = std::make_shared<fx>();
                 x->user = din_rows(x->f.layout, 1, 18);
                 x->u = x->user.view(3, 0);
                 x->cand_rows = din_rows(x->f.layout, 200, 19);
                 for (std::int64_t c = 0; c < 200; ++c)
                     for (std::int64_t j : {1, 2}) x->cand.push_back(x->cand_rows.sparse[static_cast<std::size_t>(c * 3 + j)]);
                 return [x] {
                     const auto st = x->f.p.rank(x->f.s, x->u, {x->cand.data(), xrec::shape{200, 2}}, x->out);
                     if (!st.ok()) std::abort();
                     benchmark::DoNotOptimize(x->out.data());
                 };
             });
}

}  // namespace

void register_serve() {
    add_deepfm();
    add_din();
}

}  // namespace xrec_bench
