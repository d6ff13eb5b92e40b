// Layer parity, cpu vs cuda: each layer is built twice, layer<float, cpu<>> on a host
// param_store and layer<float, cuda> on a device one, with the same (randomised) parameter
// values copied host -> device; both run forward and backward through a train_ctx on the
// same random inputs, with the output gradient set to the same random r (the gradient of
// loss = sum(y * r)); then the outputs, the input gradients, every dense parameter's
// gradient and every store table (running statistics) are compared elementwise with
// |gpu - cpu| <= 1e-5 |cpu| + 1e-6 (float32).
// One line per check: "ok  " or "FAIL", the layer, the case and the tensor, the max
// violation ratio |gpu - cpu| / (1e-5 |cpu| + 1e-6) (<= 1 passes) and, for the worst
// element, its index and both values. Exit 0 = all passed, 1 = a check failed (or a layer
// threw), 77 = no CUDA device. The seed is new each run (printed); `parity_layers SEED`
// repeats a run.
//
// The CUDA headers come first: layer and op templates look their kernels up where they are
// defined, so the cuda overloads must be declared before the cpu headers' templates.
#include "xrec/cuda/kernels.cuh"
#include "xrec/cuda/memory.cuh"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "xrec/core/buffer.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/layers/batch_norm.hpp"
#include "xrec/layers/bi_interaction.hpp"
#include "xrec/layers/cross_net.hpp"
#include "xrec/layers/dice.hpp"
#include "xrec/layers/embedding_bag.hpp"
#include "xrec/layers/fm.hpp"
#include "xrec/layers/fwfm.hpp"
#include "xrec/layers/gru.hpp"
#include "xrec/layers/layer_norm.hpp"
#include "xrec/layers/linear.hpp"
#include "xrec/layers/mlp.hpp"
#include "xrec/layers/multi_head_attention.hpp"
#include "xrec/layers/prelu.hpp"
#include "xrec/layers/target_attention.hpp"

#include "parity_common.hpp"

namespace {

namespace layers = xrec::layers;
using C = xrec::cpu<>;
using xrec::cuda;
using xrec::shape;
using xrec::var;
using vec = std::vector<float>;
using xrec_parity::atol;
using xrec_parity::checks;
using xrec_parity::compare;
using xrec_parity::failures;
using xrec_parity::rtol;
using dbuf = xrec::buffer<float, cuda>;

std::uint64_t seed = 0, draws = 0;

void fail(const std::string& what) {
    ++checks;
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
}

vec rnd(std::int64_t n, float lo = -1.f, float hi = 1.f) {
    xrec::rng_stream rs{xrec::philox{seed}, ++draws};
    vec v(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = lo + (hi - lo) * rs.uniform_f(static_cast<std::uint64_t>(i));
    return v;
}
dbuf dev(const vec& h) {
    dbuf d(static_cast<std::int64_t>(h.size()));
    xrec::device::upload(d.data(), h.data(), d.size());
    return d;
}
vec host(const float* d, std::int64_t n) { return xrec::device::to_host(d, n); }

template <class S>
struct store_types;
template <class T, class B>
struct store_types<xrec::param_store<T, B>> {
    using value = T;
    using backend = B;
};
/// The value type and backend of a param_store passed to a generic lambda.
#define VALUE_OF(s) typename store_types<std::decay_t<decltype(s)>>::value
#define BACKEND_OF(s) typename store_types<std::decay_t<decltype(s)>>::backend

/// One input of a layer: its shape, the range of its random values and whether it takes
/// a gradient (a train_ctx leaf) or not (ctx.input).
struct input_spec {
    std::string name;
    shape s;
    float lo = -1.f, hi = 1.f;
    bool grad = true;
};

/// Randomises every dense parameter (uniform [-0.5, 0.5]: nothing left at its zero or one
/// initialisation) and every table (uniform [0.5, 1.5]: running variances stay positive)
/// of the host store, then copies both to the device store, which has the same layout.
void randomise_and_copy(xrec::param_store<float, C>& hs, xrec::param_store<float, cuda>& ds) {
    const vec v = rnd(hs.dense_size(), -0.5f, 0.5f);
    std::copy(v.begin(), v.end(), hs.values());
    XREC_CHECK(ds.dense_size() == hs.dense_size() && ds.table_count() == hs.table_count(),
               "parity_layers: the two stores differ in layout");
    xrec::device::upload(ds.values(), hs.values(), hs.dense_size());
    for (std::int64_t t = 0; t < hs.table_count(); ++t) {
        auto& ht = hs.table(t);
        const vec tv = rnd(ht.rows * ht.dim, 0.5f, 1.5f);
        std::copy(tv.begin(), tv.end(), ht.values.data());
        xrec::device::upload(ds.table(t).values.data(), ht.values.data(), ht.rows * ht.dim);
    }
}

using dvec = std::vector<double>;

/// Builds the layer on both backends (make(store) -> layer), runs fwd(layer, ctx, inputs)
/// -> y on each, backward with dy = r, and compares everything. The same layer in double
/// on the cpu, on the same values, gives the reference that compare() falls back on.
template <class Make, class Fwd>
void layer_parity(const std::string& what, const std::vector<input_spec>& ins, Make make, Fwd fwd, bool training = true) {
    try {
        xrec::param_store<float, C> hs(seed);
        xrec::param_store<float, cuda> ds(seed);
        auto hl = make(hs);
        auto dl = make(ds);
        randomise_and_copy(hs, ds);
        // The reference layer in double with the same values, copied before any forward.
        xrec::param_store<double, C> rs(seed);
        auto rl = make(rs);
        for (std::size_t k = 0; k < hs.dense_entries().size(); ++k) {
            const auto& he = hs.dense_entries()[k];
            const auto& re = rs.dense_entries()[k];
            std::copy(hs.values() + he.offset, hs.values() + he.offset + he.s.numel(), rs.values() + re.offset);
        }
        for (std::int64_t t = 0; t < hs.table_count(); ++t)
            std::copy(hs.table(t).values.data(), hs.table(t).values.data() + hs.table(t).values.size(),
                      rs.table(t).values.data());

        std::vector<vec> hx, hgx;
        std::vector<dbuf> dx, dgx;
        for (const auto& in : ins) {
            hx.push_back(rnd(in.s.numel(), in.lo, in.hi));
            hgx.push_back(vec(static_cast<std::size_t>(in.s.numel()), 0.f));
        }
        for (std::size_t i = 0; i < ins.size(); ++i) {
            dx.push_back(dev(hx[i]));
            dgx.push_back(dbuf(ins[i].s.numel()));
        }
        xrec::train_ctx<float, C> hc;
        xrec::train_ctx<float, cuda> dc;
        hc.set_training(training);
        dc.set_training(training);
        std::vector<var<float>> hv, dv;
        for (std::size_t i = 0; i < ins.size(); ++i) {
            if (ins[i].grad) {
                hv.push_back(hc.leaf({hx[i].data(), ins[i].s}, hgx[i].data()));
                dv.push_back(dc.leaf({dx[i].data(), ins[i].s}, dgx[i].data()));
            } else {
                hv.push_back(hc.input({hx[i].data(), ins[i].s}));
                dv.push_back(dc.input({static_cast<const float*>(dx[i].data()), ins[i].s}));
            }
        }
        const var<float> hy = fwd(hl, hc, hv);
        const var<float> dy = fwd(dl, dc, dv);
        if (hy.s != dy.s) {
            fail(what + ": output shapes differ, cpu " + hy.s.str() + ", gpu " + dy.s.str());
            return;
        }
        if (!hy.requires_grad() || !dy.requires_grad()) {
            fail(what + ": the output needs no gradient; nothing to run backward on");
            return;
        }
        const vec gpu_y = host(dy.data, dy.numel()), cpu_y(hy.data, hy.data + hy.numel());
        const vec r = rnd(hy.numel());
        std::copy(r.begin(), r.end(), hc.grad(hy));
        xrec::device::upload(dc.grad(dy), r.data(), dy.numel());
        hc.backward(hy, 0.f);
        dc.backward(dy, 0.f);
        xrec::device::synchronize();

        // The double reference: the same layer, parameters (copied before the float
        // forwards moved the running statistics), inputs and r, in double.
        std::vector<dvec> rx, rgx;
        for (std::size_t i = 0; i < ins.size(); ++i) {
            rx.emplace_back(hx[i].begin(), hx[i].end());
            rgx.emplace_back(hx[i].size(), 0.0);
        }
        xrec::train_ctx<double, C> rc;
        rc.set_training(training);
        std::vector<var<double>> rv;
        for (std::size_t i = 0; i < ins.size(); ++i)
            rv.push_back(ins[i].grad ? rc.leaf({rx[i].data(), ins[i].s}, rgx[i].data())
                                     : rc.input({static_cast<const double*>(rx[i].data()), ins[i].s}));
        const var<double> ry = fwd(rl, rc, rv);
        std::copy(r.begin(), r.end(), rc.grad(ry));
        rc.backward(ry, 0.0);
        const dvec ref_y(ry.data, ry.data + ry.numel());
        compare(what + " y " + hy.s.str(), gpu_y, cpu_y, ref_y);
        for (std::size_t i = 0; i < ins.size(); ++i)
            if (ins[i].grad)
                compare(what + " d" + ins[i].name + " " + ins[i].s.str(), host(dgx[i].data(), dgx[i].size()), hgx[i], rgx[i]);
        for (std::size_t k = 0; k < hs.dense_entries().size(); ++k) {
            const auto& e = hs.dense_entries()[k];
            const auto& re = rs.dense_entries()[k];
            const vec hg(hs.grads() + e.offset, hs.grads() + e.offset + e.s.numel());
            const dvec rg(rs.grads() + re.offset, rs.grads() + re.offset + re.s.numel());
            compare(what + " d(" + e.name + ") " + e.s.str(), host(ds.grads() + e.offset, e.s.numel()), hg, rg);
        }
        for (std::int64_t t = 0; t < hs.table_count(); ++t) {
            const auto& ht = hs.table(t);
            const auto& rt = rs.table(t);
            compare(what + " table " + ht.name + " after forward", host(ds.table(t).values.data(), ht.rows * ht.dim),
                    vec(ht.values.data(), ht.values.data() + ht.rows * ht.dim),
                    dvec(rt.values.data(), rt.values.data() + rt.rows * rt.dim));
        }
    } catch (const std::exception& e) {
        fail(what + ": threw " + e.what());
    }
}

std::string dims(std::initializer_list<std::int64_t> d) {
    std::string s;
    for (auto v : d) {
        if (!s.empty()) s += 'x';
        s += std::to_string(v);
    }
    return s;
}

// ---- the layers ----------------------------------------------------------------------------------

void check_fm(std::int64_t b, std::int64_t f, std::int64_t d) {
    const std::string w = "fm " + dims({b, f, d});
    layer_parity(w, {{"v", shape{b, f, d}}, {"first", shape{b, f}}},
                 [](auto& s) { return layers::fm<VALUE_OF(s), BACKEND_OF(s)>(s, "fm"); },
                 [](auto& l, auto& ctx, auto& in) { return l(ctx, in[0], in[1]); });
    layer_parity(w + " no first", {{"v", shape{b, f, d}}},
                 [](auto& s) { return layers::fm<VALUE_OF(s), BACKEND_OF(s)>(s, "fm"); },
                 [](auto& l, auto& ctx, auto& in) { return l(ctx, in[0]); });
}

void check_fwfm(std::int64_t b, std::int64_t f, std::int64_t d) {
    layer_parity("fwfm " + dims({b, f, d}), {{"v", shape{b, f, d}}},
                 [f](auto& s) { return layers::fwfm<VALUE_OF(s), BACKEND_OF(s)>(s, "fwfm", f); },
                 [](auto& l, auto& ctx, auto& in) { return l(ctx, in[0]); });
}

void check_bi(std::int64_t b, std::int64_t f, std::int64_t d) {
    layer_parity("bi_interaction " + dims({b, f, d}), {{"v", shape{b, f, d}}},
                 [](auto& s) { return layers::bi_interaction<VALUE_OF(s), BACKEND_OF(s)>(s, "bi"); },
                 [](auto& l, auto& ctx, auto& in) { return l(ctx, in[0]); });
}

void check_cross(std::int64_t b, std::int64_t d) {
    const std::string sh = dims({b, d});
    auto fwd = [](auto& l, auto& ctx, auto& in) { return l(ctx, in[0]); };
    layer_parity("cross_net v1 3 layers " + sh, {{"x", shape{b, d}}},
                 [d](auto& s) { return layers::cross_net<VALUE_OF(s), BACKEND_OF(s)>(s, "cross", d, 3); }, fwd);
    layers::cross_v2_options full;
    full.layers = 2;
    layer_parity("cross_net_v2 full 2 layers " + sh, {{"x", shape{b, d}}},
                 [d, full](auto& s) { return layers::cross_net_v2<VALUE_OF(s), BACKEND_OF(s)>(s, "cross2", d, full); }, fwd);
    layers::cross_v2_options low;
    low.layers = 2;
    low.kind = layers::cross_kind::low_rank;
    low.rank = 3;
    layer_parity("cross_net_v2 low_rank r3 2 layers " + sh, {{"x", shape{b, d}}},
                 [d, low](auto& s) { return layers::cross_net_v2<VALUE_OF(s), BACKEND_OF(s)>(s, "cross2", d, low); }, fwd);
    for (auto act : {xrec::activation::tanh, xrec::activation::relu}) {
        layers::cross_v2_options mix;
        mix.layers = 2;
        mix.kind = layers::cross_kind::mixture;
        mix.rank = 3;
        mix.experts = 3;
        mix.expert_activation = act;
        layer_parity(std::string("cross_net_v2 mixture K3 r3 ") + xrec::activation_name(act) + " 2 layers " + sh,
                     {{"x", shape{b, d}}},
                     [d, mix](auto& s) { return layers::cross_net_v2<VALUE_OF(s), BACKEND_OF(s)>(s, "cross2", d, mix); }, fwd);
    }
}

void check_linear_mlp(std::int64_t b) {
    auto fwd = [](auto& l, auto& ctx, auto& in) { return l(ctx, in[0]); };
    layer_parity("linear 13->9 " + dims({b, 13}), {{"x", shape{b, 13}}},
                 [](auto& s) { return layers::linear<VALUE_OF(s), BACKEND_OF(s)>(s, "lin", 13, 9); }, fwd);
    layer_parity("linear 13->9 no bias, x [" + dims({b, 3, 13}) + "]", {{"x", shape{b, 3, 13}}},
                 [](auto& s) { return layers::linear<VALUE_OF(s), BACKEND_OF(s)>(s, "lin", 13, 9, false); }, fwd);
    layer_parity("linear<7, 5> static " + dims({b, 7}), {{"x", shape{b, 7}}},
                 [](auto& s) { return layers::linear<VALUE_OF(s), BACKEND_OF(s), 7, 5>(s, "lin", 7, 5); }, fwd);
    layers::mlp_options o;
    o.hidden = {17, 8};
    o.act = xrec::activation::gelu;
    o.layer_norm = true;
    o.out = 3;
    layer_parity("mlp 11-17-8-3 gelu + layer_norm " + dims({b, 11}), {{"x", shape{b, 11}}},
                 [o](auto& s) { return layers::mlp<VALUE_OF(s), BACKEND_OF(s)>(s, "mlp", 11, o); }, fwd);
    layers::mlp_options od;
    od.hidden = {16, 16};
    od.act = xrec::activation::relu;
    od.dropout = 0.25;
    od.out = 1;
    layer_parity("mlp 11-16-16-1 relu + dropout 0.25 " + dims({b, 11}), {{"x", shape{b, 11}}},
                 [od](auto& s) { return layers::mlp<VALUE_OF(s), BACKEND_OF(s)>(s, "mlp", 11, od); }, fwd);
}

void check_norms(std::int64_t b, std::int64_t c) {
    const std::string sh = dims({b, c});
    auto fwd = [](auto& l, auto& ctx, auto& in) { return l(ctx, in[0]); };
    layer_parity("layer_norm " + sh, {{"x", shape{b, c}, -2.f, 4.f}},
                 [c](auto& s) { return layers::layer_norm<VALUE_OF(s), BACKEND_OF(s)>(s, "ln", c); }, fwd);
    layer_parity("batch_norm train " + sh, {{"x", shape{b, c}, -2.f, 4.f}},
                 [c](auto& s) { return layers::batch_norm<VALUE_OF(s), BACKEND_OF(s)>(s, "bn", c); }, fwd);
    layer_parity("batch_norm eval " + sh, {{"x", shape{b, c}, -2.f, 4.f}},
                 [c](auto& s) { return layers::batch_norm<VALUE_OF(s), BACKEND_OF(s)>(s, "bn", c); }, fwd, false);
    layers::batch_norm_options na;
    na.affine = false;
    layer_parity("batch_norm train no affine " + sh, {{"x", shape{b, c}, -2.f, 4.f}},
                 [c, na](auto& s) { return layers::batch_norm<VALUE_OF(s), BACKEND_OF(s)>(s, "bn", c, na); }, fwd);
    layer_parity("dice train " + sh, {{"x", shape{b, c}, -2.f, 4.f}},
                 [c](auto& s) { return layers::dice<VALUE_OF(s), BACKEND_OF(s)>(s, "dice", c); }, fwd);
    layer_parity("dice eval " + sh, {{"x", shape{b, c}, -2.f, 4.f}},
                 [c](auto& s) { return layers::dice<VALUE_OF(s), BACKEND_OF(s)>(s, "dice", c); }, fwd, false);
    layer_parity("prelu per-channel " + sh, {{"x", shape{b, c}}},
                 [c](auto& s) { return layers::prelu<VALUE_OF(s), BACKEND_OF(s)>(s, "prelu", c); }, fwd);
    layer_parity("prelu shared " + sh, {{"x", shape{b, c}}},
                 [](auto& s) { return layers::prelu<VALUE_OF(s), BACKEND_OF(s)>(s, "prelu", 1); }, fwd);
}

void check_target_attention(std::vector<std::int64_t> lengths, std::int64_t d) {
    std::vector<std::int64_t> off{0};
    for (auto l : lengths) off.push_back(off.back() + l);
    const std::int64_t b = static_cast<std::int64_t>(lengths.size()), n = off.back();
    const std::string sh = "B " + std::to_string(b) + " N " + std::to_string(n) + " D " + std::to_string(d);
    struct variant {
        const char* name;
        layers::unit_activation act;
        bool softmax;
    };
    for (const variant v : {variant{"sigmoid", layers::unit_activation::sigmoid, false},
                            variant{"dice + softmax", layers::unit_activation::dice, true},
                            variant{"prelu", layers::unit_activation::prelu, false}}) {
        layers::target_attention_options o;
        o.hidden = {8, 5};
        o.act = v.act;
        o.softmax = v.softmax;
        layer_parity(std::string("target_attention ") + v.name + " " + sh, {{"q", shape{b, d}}, {"keys", shape{n, d}}},
                     [d, o](auto& s) { return layers::target_attention<VALUE_OF(s), BACKEND_OF(s)>(s, "din", d, o); },
                     [off](auto& l, auto& ctx, auto& in) {
                         return l(ctx, in[0], in[1], std::span<const std::int64_t>(off));
                     });
    }
}

void check_mha(std::int64_t b, std::int64_t t, std::int64_t d, std::int64_t heads) {
    const std::string sh = dims({b, t, d}) + " heads " + std::to_string(heads);
    // Lengths with a zero (its queries are dead: exact zero rows) and a full row.
    std::vector<std::int64_t> lengths;
    for (std::int64_t i = 0; i < b; ++i) lengths.push_back(i == 0 ? 0 : (i % 2 ? t : (t + 1) / 2));
    auto make = [d, heads](double p) {
        return [d, heads, p](auto& s) { return layers::multi_head_attention<VALUE_OF(s), BACKEND_OF(s)>(s, "mha", d, heads, p); };
    };
    layer_parity("multi_head_attention self " + sh, {{"x", shape{b, t, d}}}, make(0),
                 [](auto& l, auto& ctx, auto& in) { return l(ctx, in[0]); });
    layer_parity("multi_head_attention self causal + lengths " + sh, {{"x", shape{b, t, d}}}, make(0),
                 [lengths](auto& l, auto& ctx, auto& in) {
                     xrec::ops::attention_mask m;
                     m.causal = true;
                     m.lengths = lengths;
                     return l(ctx, in[0], m);
                 });
    layer_parity("multi_head_attention self dropout 0.2 " + sh, {{"x", shape{b, t, d}}}, make(0.2),
                 [](auto& l, auto& ctx, auto& in) { return l(ctx, in[0]); });
    const std::int64_t tk = t + 2;
    std::vector<std::int64_t> klen;
    for (std::int64_t i = 0; i < b; ++i) klen.push_back(i == 0 ? 0 : 1 + (i * 3) % tk);
    layer_parity("multi_head_attention cross q " + dims({b, t, d}) + " kv " + dims({b, tk, d}) + " + lengths",
                 {{"q", shape{b, t, d}}, {"k", shape{b, tk, d}}, {"v", shape{b, tk, d}}}, make(0),
                 [klen](auto& l, auto& ctx, auto& in) {
                     xrec::ops::attention_mask m;
                     m.lengths = klen;
                     return l(ctx, in[0], in[1], in[2], m);
                 });
}

// embedding_bag (ops::embedding_bag through the layer): the same table, ids, per-id weights
// and output gradient on both backends; the output, the table's sparse gradient (its ids
// in emission order must be equal, its rows within the tolerance) and the per-id weights'
// gradient are compared, with the layer in double on the cpu as the reference. Weights:
// none, a leaf that requires a gradient, or an input that requires none.
void check_embedding_bag(const std::vector<std::int64_t>& lengths, std::int64_t rows, std::int64_t dim) {
    using P = xrec::ops::pooling;
    std::vector<std::int64_t> off{0};
    for (auto l : lengths) off.push_back(off.back() + l);
    const std::int64_t b = static_cast<std::int64_t>(lengths.size()), nnz = off.back();
    const std::string sh = "B " + std::to_string(b) + " nnz " + std::to_string(nnz) + " table " + dims({rows, dim});
    enum class wkind { none, grad, input };
    for (const P mode : {P::sum, P::mean, P::max})
        for (const wkind wk : {wkind::none, wkind::grad, wkind::input}) {
            const std::string what = std::string("embedding_bag ") + xrec::ops::pooling_name(mode) +
                                     (wk == wkind::none ? "" : wk == wkind::grad ? " + weights (grad)" : " + weights (no grad)") +
                                     " " + sh;
            try {
                xrec::param_store<float, C> hs(seed);
                xrec::param_store<float, cuda> ds(seed);
                xrec::param_store<double, C> rs(seed);
                layers::embedding_bag<float, C> hl(hs, "bag", rows, dim, mode);
                layers::embedding_bag<float, cuda> dl(ds, "bag", rows, dim, mode);
                layers::embedding_bag<double, C> rl(rs, "bag", rows, dim, mode);
                randomise_and_copy(hs, ds);
                auto& ht = hs.table(0);
                auto& dt = ds.table(0);
                auto& rt = rs.table(0);
                std::copy(ht.values.data(), ht.values.data() + rows * dim, rt.values.data());

                // Ids drawn uniformly from the (small) table: repeats within a bag happen, so
                // max meets exact ties (first occurrence wins) and the sparse rows repeat ids.
                const vec u = rnd(nnz, 0.f, 1.f);
                std::vector<std::int64_t> ids(static_cast<std::size_t>(nnz));
                for (std::int64_t i = 0; i < nnz; ++i) {
                    const auto id = static_cast<std::int64_t>(u[static_cast<std::size_t>(i)] * static_cast<float>(rows));
                    ids[static_cast<std::size_t>(i)] = id < rows ? id : rows - 1;
                }
                const xrec::jagged_ids jag{ids, off};
                const vec w = rnd(nnz, -1.f, 1.f);
                const dvec wd(w.begin(), w.end());
                vec hgw(static_cast<std::size_t>(nnz), 0.f);
                dvec rgw(static_cast<std::size_t>(nnz), 0.0);
                const dbuf dw = dev(w);
                dbuf dgw = dev(hgw);  // zeros

                xrec::train_ctx<float, C> hc;
                xrec::train_ctx<float, cuda> dc;
                xrec::train_ctx<double, C> rc;
                var<float> hw, dwv;
                var<double> rw;
                const shape ws{nnz};
                if (wk == wkind::grad) {
                    hw = hc.leaf({const_cast<float*>(w.data()), ws}, hgw.data());
                    dwv = dc.leaf({const_cast<float*>(dw.data()), ws}, dgw.data());
                    rw = rc.leaf({const_cast<double*>(wd.data()), ws}, rgw.data());
                } else if (wk == wkind::input) {
                    hw = hc.input({w.data(), ws});
                    dwv = dc.input({static_cast<const float*>(dw.data()), ws});
                    rw = rc.input({wd.data(), ws});
                }
                const var<float> hy = hl(hc, jag, hw);
                const var<float> dy = dl(dc, jag, dwv);
                const var<double> ry = rl(rc, jag, rw);
                const vec gpu_y = host(dy.data, dy.numel()), cpu_y(hy.data, hy.data + hy.numel());
                compare(what + " y " + hy.s.str(), gpu_y, cpu_y, dvec(ry.data, ry.data + ry.numel()));

                const vec r = rnd(hy.numel());
                std::copy(r.begin(), r.end(), hc.grad(hy));
                std::copy(r.begin(), r.end(), rc.grad(ry));
                xrec::device::upload(dc.grad(dy), r.data(), dy.numel());
                hc.backward(hy, 0.f);
                dc.backward(dy, 0.f);
                rc.backward(ry, 0.0);
                xrec::device::synchronize();

                // The sparse gradient: the same ids in the same order, then the rows.
                ++checks;
                if (xrec::device::to_host(dt.grad.ids.data(), dt.grad.count()) != ht.grad.ids) {
                    ++failures;
                    std::printf("FAIL %s table grad ids: gpu emitted %lld ids, cpu %lld, or in another order\n",
                                what.c_str(), static_cast<long long>(dt.grad.count()),
                                static_cast<long long>(ht.grad.count()));
                } else {
                    std::printf("ok   %s table grad ids: %lld rows, the same ids in the same order\n", what.c_str(),
                                static_cast<long long>(ht.grad.count()));
                    const std::int64_t n = ht.grad.count() * dim;
                    // The double run's rows are a reference only where it emitted the same ids
                    // (max: an argmax that float and double decide differently would not).
                    const dvec ref_rows = rt.grad.ids == ht.grad.ids ? dvec(rt.grad.rows.data(), rt.grad.rows.data() + n)
                                                                     : dvec{};
                    compare(what + " table grad rows [" + dims({ht.grad.count(), dim}) + "]",
                            host(dt.grad.rows.data(), n), vec(ht.grad.rows.data(), ht.grad.rows.data() + n), ref_rows);
                }
                if (wk == wkind::grad)
                    compare(what + " dweights [" + std::to_string(nnz) + "]", host(dgw.data(), nnz), hgw, rgw);
            } catch (const std::exception& e) {
                fail(what + ": threw " + e.what());
            }
        }
}

void check_gru(std::vector<std::int64_t> lengths, std::int64_t in, std::int64_t hidden, std::int64_t nl) {
    std::vector<std::int64_t> off{0};
    std::int64_t tmax = 0;
    for (auto l : lengths) {
        off.push_back(off.back() + l);
        tmax = l > tmax ? l : tmax;
    }
    const std::int64_t b = static_cast<std::int64_t>(lengths.size()), n = off.back();
    const std::string sh = "B " + std::to_string(b) + " N " + std::to_string(n) + " in " + std::to_string(in) + " H " +
                           std::to_string(hidden) + " layers " + std::to_string(nl);
    auto make = [in, hidden, nl](auto& s) { return layers::gru<VALUE_OF(s), BACKEND_OF(s)>(s, "gru", in, hidden, nl); };
    layer_parity("gru jagged out " + sh, {{"x", shape{n, in}}, {"h0", shape{nl, b, hidden}}}, make,
                 [off](auto& l, auto& ctx, auto& x) { return l(ctx, x[0], std::span<const std::int64_t>(off), x[1]).out; });
    layer_parity("gru jagged h_n, no h0 " + sh, {{"x", shape{n, in}}}, make,
                 [off](auto& l, auto& ctx, auto& x) { return l(ctx, x[0], std::span<const std::int64_t>(off)).h_n; });
    layer_parity("gru padded last T " + std::to_string(tmax) + " " + sh,
                 {{"x", shape{b, tmax, in}}, {"h0", shape{nl, b, hidden}}}, make,
                 [lengths](auto& l, auto& ctx, auto& x) {
                     return l.padded(ctx, x[0], std::span<const std::int64_t>(lengths), x[1]).last;
                 });
}

}  // namespace

int main(int argc, char** argv) {
    if (xrec::device::count() == 0) {
        std::printf("xrec cuda parity_layers: no CUDA device here; nothing to run\n");
        return 77;
    }
    seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10)
                    : static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    try {
        cudaDeviceProp prop{};
        XREC_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
        std::printf("xrec cuda layer parity on %s, seed %llu (rerun: parity_layers %llu)\n", prop.name,
                    static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
        check_fm(1, 2, 3);
        check_fm(37, 7, 16);
        check_fwfm(1, 2, 3);
        check_fwfm(37, 7, 16);
        check_bi(1, 2, 3);
        check_bi(37, 7, 16);
        check_cross(1, 5);
        check_cross(37, 19);
        check_linear_mlp(1);
        check_linear_mlp(37);
        check_norms(2, 3);
        check_norms(37, 19);
        check_target_attention({3, 0, 1, 5}, 6);
        check_target_attention({7, 2, 9, 1, 4, 6, 3, 8}, 16);
        check_mha(3, 5, 8, 2);
        check_mha(4, 9, 12, 3);
        check_gru({3, 0, 5, 1}, 6, 5, 1);
        check_gru({2, 7, 7, 4, 1, 6}, 9, 8, 2);
        // An empty bag; dims that take the vector (16: float4) and the scalar (7) forward;
        // a long bag and 40 > 32 columns (lanes loop over more than one column each).
        check_embedding_bag({3, 0, 5, 1}, 7, 16);
        check_embedding_bag({2, 0, 9, 4, 1, 6, 0, 3}, 5, 7);
        check_embedding_bag({40, 1, 0, 17, 2}, 11, 40);
        xrec::device::synchronize();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL: unexpected exception: %s\n", e.what());
        return 1;
    }
    std::printf("%s: %d of %d checks failed (seed %llu)\n", failures ? "FAILED" : "passed", failures, checks,
                static_cast<unsigned long long>(seed));
    return failures ? 1 : 0;
}
