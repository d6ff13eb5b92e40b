// Kernel parity, cpu vs cuda: every kernel the layers use that has a CUDA overload in
// cuda/xrec/cuda/{reduce,interaction,sequence}.cuh, and the training path's column sums,
// id range check, sparse merge and row-wise Adagrad, runs on fresh random inputs at two or
// three shapes (odd sizes included): the cpu kernel on host memory, the CUDA kernel on
// device memory, compared elementwise with |gpu - cpu| <= 1e-5 |cpu| + 1e-6 (float32).
// One line per check: "ok  " or "FAIL", the kernel and shape, the max violation ratio
// |gpu - cpu| / (1e-5 |cpu| + 1e-6) (<= 1 passes) and, for the worst element, its index and
// both values. Exit 0 = all passed, 1 = a check failed, 77 = no CUDA device.
//
// The seed is new each run (printed); `parity_kernels SEED` repeats a run.
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
#include <string>
#include <vector>

#include "xrec/backend/cpu_kernels.hpp"
#include "xrec/core/buffer.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/layers/batch_norm.hpp"
#include "xrec/layers/bi_interaction.hpp"
#include "xrec/layers/cross_net.hpp"
#include "xrec/layers/dice.hpp"
#include "xrec/layers/fm.hpp"
#include "xrec/layers/fwfm.hpp"
#include "xrec/layers/gru.hpp"
#include "xrec/layers/prelu.hpp"
#include "xrec/ops/attention.hpp"
#include "xrec/optim/rowwise_adagrad.hpp"

#include "parity_common.hpp"

namespace {

namespace kernels = xrec::kernels;
using C = xrec::cpu<>;
using xrec::cuda;
using vec = std::vector<float>;
using xrec_parity::atol;
using xrec_parity::checks;
using xrec_parity::compare;
using xrec_parity::failures;
using xrec_parity::rtol;
using ivec = std::vector<std::int64_t>;
using dbuf = xrec::buffer<float, cuda>;

std::uint64_t seed = 0, draws = 0;

std::string shape_str(std::initializer_list<std::int64_t> dims) {
    std::string s = "[";
    for (auto d : dims) {
        if (s.size() > 1) s += ", ";
        s += std::to_string(d);
    }
    return s + "]";
}

void compare(const std::string& what, float gpu, float cpu) { compare(what, vec{gpu}, vec{cpu}); }
void compare(const std::string& what, float gpu, float cpu, double ref) {
    compare(what, vec{gpu}, vec{cpu}, std::vector<double>{ref});
}

using dvec = std::vector<double>;
/// The values as doubles: inputs of the double-precision reference runs of the cpu kernels.
dvec D(const vec& v) { return dvec(v.begin(), v.end()); }

vec rnd(std::int64_t n, float lo = -1.f, float hi = 1.f) {
    xrec::rng_stream rs{xrec::philox{seed}, ++draws};
    vec v(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = lo + (hi - lo) * rs.uniform_f(static_cast<std::uint64_t>(i));
    return v;
}
ivec rnd_ids(std::int64_t n, std::int64_t below) {
    xrec::rng_stream rs{xrec::philox{seed}, ++draws};
    ivec v(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i)
        v[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(rs.below(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(below)));
    return v;
}
std::vector<std::uint8_t> rnd_mask(std::int64_t rows, std::int64_t cols, bool dead_rows) {
    xrec::rng_stream rs{xrec::philox{seed}, ++draws};
    std::vector<std::uint8_t> m(static_cast<std::size_t>(rows * cols));
    for (std::int64_t i = 0; i < rows * cols; ++i) m[static_cast<std::size_t>(i)] = rs.bits(static_cast<std::uint64_t>(i)) % 3 != 0;
    if (dead_rows && rows > 1)
        for (std::int64_t j = 0; j < cols; ++j) m[static_cast<std::size_t>(cols + j)] = 0;  // row 1 fully masked
    return m;
}

template <class U>
xrec::buffer<U, cuda> dev(const std::vector<U>& h) {
    xrec::buffer<U, cuda> d(static_cast<std::int64_t>(h.size()));
    xrec::device::upload(d.data(), h.data(), d.size());
    return d;
}
vec host(const dbuf& d) { return xrec::device::to_host(d.data(), d.size()); }
vec host(const dbuf& d, std::int64_t n) { return xrec::device::to_host(d.data(), n); }

// ---- reductions and elementwise ------------------------------------------------------------

void check_reductions(std::int64_t n) {
    const std::string s = shape_str({n});
    const vec a = rnd(n), b = rnd(n);
    auto da = dev(a), db = dev(b);
    const dvec ad = D(a), bd = D(b);
    compare("dot " + s, kernels::dot(cuda{}, n, da.data(), db.data()), kernels::dot(C{}, n, a.data(), b.data()),
            kernels::dot(C{}, n, ad.data(), bd.data()));
    compare("sum " + s, kernels::sum(cuda{}, n, da.data()), kernels::sum(C{}, n, a.data()), kernels::sum(C{}, n, ad.data()));
    compare("max_value " + s, kernels::max_value(cuda{}, n, da.data()), kernels::max_value(C{}, n, a.data()));
    vec y(a.size());
    dbuf dy(n);
    const float sg = kernels::exp_shifted(cuda{}, n, da.data(), 0.5f, dy.data());
    const float sc = kernels::exp_shifted(C{}, n, a.data(), 0.5f, y.data());
    dvec yd(ad.size());
    compare("exp_shifted sum " + s, sg, sc, kernels::exp_shifted(C{}, n, ad.data(), 0.5, yd.data()));
    compare("exp_shifted y " + s, host(dy), y);
    vec acc = rnd(n);
    auto dacc = dev(acc);
    kernels::mul_acc(cuda{}, n, da.data(), db.data(), dacc.data());
    kernels::mul_acc(C{}, n, a.data(), b.data(), acc.data());
    compare("mul_acc " + s, host(dacc), acc);
    kernels::add_scalar(cuda{}, n, -0.375f, dacc.data());
    kernels::add_scalar(C{}, n, -0.375f, acc.data());
    compare("add_scalar " + s, host(dacc), acc);
}

void check_softmax(std::int64_t rows, std::int64_t cols) {
    const std::string s = shape_str({rows, cols});
    const vec x = rnd(rows * cols, -4.f, 4.f);
    auto dx = dev(x);
    for (int masked = 0; masked < 2; ++masked) {
        const auto m = rnd_mask(rows, cols, true);
        auto dm = dev(m);
        vec y(x.size());
        dbuf dy(rows * cols);
        kernels::softmax_rows(C{}, rows, cols, x.data(), masked ? m.data() : nullptr, y.data());
        kernels::softmax_rows(cuda{}, rows, cols, dx.data(), masked ? dm.data() : nullptr, dy.data());
        compare(std::string("softmax_rows") + (masked ? " masked " : " ") + s, host(dy), y);
        // In place (y = x), as the attention op calls it.
        auto dxx = dev(x);
        kernels::softmax_rows(cuda{}, rows, cols, dxx.data(), masked ? dm.data() : nullptr, dxx.data());
        compare(std::string("softmax_rows in place") + (masked ? " masked " : " ") + s, host(dxx), y);
        const vec g = rnd(rows * cols);
        vec gx = rnd(rows * cols);
        auto dg = dev(g), dgx = dev(gx);
        dvec gxd = D(gx);
        kernels::softmax_bwd_rows(C{}, rows, cols, D(y).data(), D(g).data(), gxd.data());
        kernels::softmax_bwd_rows(C{}, rows, cols, y.data(), g.data(), gx.data());
        kernels::softmax_bwd_rows(cuda{}, rows, cols, dy.data(), dg.data(), dgx.data());
        compare(std::string("softmax_bwd_rows") + (masked ? " masked " : " ") + s, host(dgx), gx, gxd);
    }
}

void check_layer_norm(std::int64_t rows, std::int64_t cols) {
    const std::string s = shape_str({rows, cols});
    vec x = rnd(rows * cols, -2.f, 3.f);
    for (std::int64_t i = 0; i < rows * cols; i += 3) x[static_cast<std::size_t>(i)] += 5.f;  // a non-zero mean
    const vec gamma = rnd(cols, 0.5f, 1.5f), beta = rnd(cols);
    auto dx = dev(x), dgamma = dev(gamma), dbeta = dev(beta);
    vec mean(static_cast<std::size_t>(rows)), rstd(static_cast<std::size_t>(rows));
    dbuf dmean(rows), drstd(rows);
    kernels::row_moments(C{}, rows, cols, x.data(), 1e-5f, mean.data(), rstd.data());
    kernels::row_moments(cuda{}, rows, cols, dx.data(), 1e-5f, dmean.data(), drstd.data());
    compare("row_moments mean " + s, host(dmean), mean);
    compare("row_moments rstd " + s, host(drstd), rstd);
    for (int affine = 0; affine < 2; ++affine) {
        const std::string tag = affine ? " affine " : " plain ";
        vec y(x.size());
        dbuf dy(rows * cols);
        // The cpu's statistics on both sides, so that each kernel is compared on its own.
        auto dm = dev(mean), dr = dev(rstd);
        kernels::layer_norm_fwd(C{}, rows, cols, x.data(), mean.data(), rstd.data(), affine ? gamma.data() : nullptr,
                                affine ? beta.data() : nullptr, y.data());
        kernels::layer_norm_fwd(cuda{}, rows, cols, dx.data(), dm.data(), dr.data(), affine ? dgamma.data() : nullptr,
                                affine ? dbeta.data() : nullptr, dy.data());
        compare("layer_norm_fwd" + tag + s, host(dy), y);
        const vec g = rnd(rows * cols);
        vec gx = rnd(rows * cols), gg = rnd(cols), gb = rnd(cols);
        auto dg = dev(g), dgx = dev(gx), dgg = dev(gg), dgb = dev(gb);
        dvec gxd = D(gx), ggd = D(gg), gbd = D(gb);
        const dvec xd = D(x), md = D(mean), rd = D(rstd), gammad = D(gamma), gd = D(g);
        kernels::layer_norm_bwd(C{}, rows, cols, xd.data(), md.data(), rd.data(), affine ? gammad.data() : nullptr,
                                gd.data(), gxd.data(), affine ? ggd.data() : nullptr, affine ? gbd.data() : nullptr);
        kernels::layer_norm_bwd(C{}, rows, cols, x.data(), mean.data(), rstd.data(), affine ? gamma.data() : nullptr, g.data(),
                                gx.data(), affine ? gg.data() : nullptr, affine ? gb.data() : nullptr);
        kernels::layer_norm_bwd(cuda{}, rows, cols, dx.data(), dm.data(), dr.data(), affine ? dgamma.data() : nullptr,
                                dg.data(), dgx.data(), affine ? dgg.data() : nullptr, affine ? dgb.data() : nullptr);
        compare("layer_norm_bwd dx" + tag + s, host(dgx), gx, gxd);
        if (affine) {
            compare("layer_norm_bwd dgamma" + tag + s, host(dgg), gg, ggd);
            compare("layer_norm_bwd dbeta" + tag + s, host(dgb), gb, gbd);
        }
    }
}

void check_gather_scatter(std::int64_t table_rows, std::int64_t dim, std::int64_t n) {
    const std::string s = shape_str({table_rows, dim}) + " n " + std::to_string(n);
    const vec table = rnd(table_rows * dim);
    const ivec ids = rnd_ids(n, table_rows);  // duplicates likely
    auto dt = dev(table);
    auto dids = dev(ids);
    vec out(static_cast<std::size_t>(n * dim));
    dbuf dout(n * dim);
    kernels::gather_rows(C{}, table.data(), dim, ids.data(), n, out.data());
    kernels::gather_rows(cuda{}, dt.data(), dim, dids.data(), n, dout.data());
    compare("gather_rows " + s, host(dout), out);
    const vec src = rnd(n * dim);
    vec dst = rnd(table_rows * dim);
    auto dsrc = dev(src), ddst = dev(dst);
    kernels::scatter_add_rows(C{}, src.data(), dim, ids.data(), n, dst.data());
    kernels::scatter_add_rows(cuda{}, dsrc.data(), dim, dids.data(), n, ddst.data());
    compare("scatter_add_rows " + s, host(ddst), dst);
}

void check_dropout(std::uint64_t first, std::int64_t n, double p) {
    const std::string s = "first " + std::to_string(first) + " n " + std::to_string(n) + " p " + std::to_string(p);
    const xrec::rng_stream rs{xrec::philox{xrec::mix_seed(seed, 7)}, (std::uint64_t{3} << 24) | 5};
    const auto threshold = static_cast<std::uint32_t>(std::ldexp(p, 32));
    const float keep = static_cast<float>(1.0 / (1.0 - p));
    vec m(static_cast<std::size_t>(n));
    dbuf dm(n);
    kernels::dropout_mask(C{}, rs, first, n, threshold, keep, m.data());
    kernels::dropout_mask(cuda{}, rs, first, n, threshold, keep, dm.data());
    const vec g = host(dm);
    std::int64_t diff = 0, kept = 0;
    for (std::size_t i = 0; i < m.size(); ++i) {
        diff += g[i] != m[i];
        kept += m[i] != 0;
    }
    ++checks;
    if (diff) ++failures;
    std::printf("%s dropout_mask %s: %lld of %lld elements differ (bit-exact expected; %lld kept on the cpu)\n",
                diff ? "FAIL" : "ok  ", s.c_str(), static_cast<long long>(diff), static_cast<long long>(n),
                static_cast<long long>(kept));
}

// ---- interactions ------------------------------------------------------------------------------

void check_fm(std::int64_t rows, std::int64_t F, std::int64_t D) {
    const std::string s = shape_str({rows, F, D});
    const vec v = rnd(rows * F * D);
    auto dv = dev(v);
    for (std::int64_t fc : {std::int64_t{0}, std::int64_t{1}, F}) {
        const std::string t = " first_cols " + std::to_string(fc) + " ";
        const vec first = rnd(rows * (fc ? fc : 1));
        auto dfirst = dev(first);
        vec y(static_cast<std::size_t>(rows));
        dbuf dy(rows);
        kernels::fm_fwd(C{}, rows, F, D, v.data(), fc ? first.data() : nullptr, fc, y.data());
        dvec yd(y.size());
        const dvec vd = ::D(v), firstd = ::D(first);
        kernels::fm_fwd(C{}, rows, F, D, vd.data(), fc ? firstd.data() : nullptr, fc, yd.data());
        kernels::fm_fwd(cuda{}, rows, F, D, dv.data(), fc ? dfirst.data() : nullptr, fc, dy.data());
        compare("fm_fwd" + t + s, host(dy), y, yd);
        const vec gy = rnd(rows);
        vec gv = rnd(rows * F * D), gf = rnd(rows * (fc ? fc : 1));
        auto dgy = dev(gy), dgv = dev(gv), dgf = dev(gf);
        kernels::fm_bwd(C{}, rows, F, D, v.data(), gy.data(), gv.data(), fc ? gf.data() : nullptr, fc);
        kernels::fm_bwd(cuda{}, rows, F, D, dv.data(), dgy.data(), dgv.data(), fc ? dgf.data() : nullptr, fc);
        compare("fm_bwd gv" + t + s, host(dgv), gv);
        if (fc) compare("fm_bwd gfirst" + t + s, host(dgf), gf);
    }
}

void check_fwfm(std::int64_t rows, std::int64_t F, std::int64_t D) {
    const std::string s = shape_str({rows, F, D});
    const std::int64_t pairs = F * (F - 1) / 2;
    const vec r = rnd(pairs), v = rnd(rows * F * D);
    auto dr = dev(r), dv = dev(v);
    vec R(static_cast<std::size_t>(F * F)), Ru(R.size());
    dbuf dR(F * F), dRu(F * F);
    kernels::fwfm_pair_matrix(C{}, F, r.data(), R.data(), Ru.data());
    kernels::fwfm_pair_matrix(cuda{}, F, dr.data(), dR.data(), dRu.data());
    compare("fwfm_pair_matrix R " + s, host(dR), R);
    compare("fwfm_pair_matrix Ru " + s, host(dRu), Ru);
    vec y(static_cast<std::size_t>(rows));
    dbuf dy(rows);
    kernels::fwfm_fwd(C{}, rows, F, D, v.data(), Ru.data(), y.data());
    kernels::fwfm_fwd(cuda{}, rows, F, D, dv.data(), dRu.data(), dy.data());
    const dvec vd = ::D(v), Rd = ::D(R), Rud = ::D(Ru);
    dvec yd(y.size());
    kernels::fwfm_fwd(C{}, rows, F, D, vd.data(), Rud.data(), yd.data());
    compare("fwfm_fwd " + s, host(dy), y, yd);
    const vec gy = rnd(rows);
    vec gv = rnd(rows * F * D), gr = rnd(pairs);
    vec work(static_cast<std::size_t>(kernels::fwfm_work_size<float>(pairs)));
    auto dgy = dev(gy), dgv = dev(gv), dgr = dev(gr);
    dbuf dwork(kernels::fwfm_work_size<float>(pairs));
    dvec gvd = ::D(gv), grd = ::D(gr), workd(static_cast<std::size_t>(kernels::fwfm_work_size<double>(pairs)));
    kernels::fwfm_bwd(C{}, rows, F, D, vd.data(), Rd.data(), ::D(gy).data(), gvd.data(), grd.data(), workd.data());
    kernels::fwfm_bwd(C{}, rows, F, D, v.data(), R.data(), gy.data(), gv.data(), gr.data(), work.data());
    kernels::fwfm_bwd(cuda{}, rows, F, D, dv.data(), dR.data(), dgy.data(), dgv.data(), dgr.data(), dwork.data());
    compare("fwfm_bwd gv " + s, host(dgv), gv, gvd);
    compare("fwfm_bwd gr " + s, host(dgr), gr, grd);
}

void check_bi(std::int64_t rows, std::int64_t F, std::int64_t D) {
    const std::string s = shape_str({rows, F, D});
    const vec v = rnd(rows * F * D);
    auto dv = dev(v);
    vec y(static_cast<std::size_t>(rows * D));
    dbuf dy(rows * D);
    kernels::bi_interaction_fwd(C{}, rows, F, D, v.data(), y.data());
    kernels::bi_interaction_fwd(cuda{}, rows, F, D, dv.data(), dy.data());
    compare("bi_interaction_fwd " + s, host(dy), y);
    const vec gy = rnd(rows * D);
    vec gv = rnd(rows * F * D);
    auto dgy = dev(gy), dgv = dev(gv);
    kernels::bi_interaction_bwd(C{}, rows, F, D, v.data(), gy.data(), gv.data());
    kernels::bi_interaction_bwd(cuda{}, rows, F, D, dv.data(), dgy.data(), dgv.data());
    compare("bi_interaction_bwd " + s, host(dgv), gv);
}

void check_cross(std::int64_t rows, std::int64_t d, std::int64_t K) {
    const std::string s = shape_str({rows, d});
    const std::int64_t n = rows * d;
    const vec x0 = rnd(n), xl = rnd(n), w = rnd(d), b = rnd(d), gy = rnd(n), z = rnd(n);
    auto dx0 = dev(x0), dxl = dev(xl), dw = dev(w), db = dev(b), dgy = dev(gy), dz = dev(z);
    // cross_v1
    vec y(static_cast<std::size_t>(n)), sv(static_cast<std::size_t>(rows));
    dbuf dy(n), ds(rows);
    kernels::cross_v1_fwd(C{}, rows, d, x0.data(), xl.data(), w.data(), b.data(), y.data(), sv.data());
    kernels::cross_v1_fwd(cuda{}, rows, d, dx0.data(), dxl.data(), dw.data(), db.data(), dy.data(), ds.data());
    const dvec x0d = D(x0), xld = D(xl), wd = D(w), bd = D(b), gyd = D(gy);
    dvec yd(y.size()), svd(sv.size());
    kernels::cross_v1_fwd(C{}, rows, d, x0d.data(), xld.data(), wd.data(), bd.data(), yd.data(), svd.data());
    compare("cross_v1_fwd y " + s, host(dy), y, yd);
    compare("cross_v1_fwd s " + s, host(ds), sv, svd);
    for (int alias = 0; alias < 2; ++alias) {
        const std::string t = alias ? " (gx0 == gxl) " : " ";
        vec gx0 = rnd(n), gxl = alias ? gx0 : rnd(n), gw = rnd(d), gb = rnd(d);
        auto dgx0 = dev(gx0), dgxl = dev(gxl), dgw = dev(gw), dgb = dev(gb);
        dvec gx0d = D(gx0), gxld = D(gxl), gwd = D(gw), gbd = D(gb);
        kernels::cross_v1_bwd(C{}, rows, d, x0d.data(), xld.data(), wd.data(), svd.data(), gyd.data(), gx0d.data(),
                              alias ? gx0d.data() : gxld.data(), gwd.data(), gbd.data());
        kernels::cross_v1_bwd(C{}, rows, d, x0.data(), xl.data(), w.data(), sv.data(), gy.data(), gx0.data(),
                              alias ? gx0.data() : gxl.data(), gw.data(), gb.data());
        kernels::cross_v1_bwd(cuda{}, rows, d, dx0.data(), dxl.data(), dw.data(), ds.data(), dgy.data(), dgx0.data(),
                              alias ? dgx0.data() : dgxl.data(), dgw.data(), dgb.data());
        compare("cross_v1_bwd gx0" + t + s, host(dgx0), gx0, gx0d);
        if (!alias) compare("cross_v1_bwd gxl" + t + s, host(dgxl), gxl, gxld);
        compare("cross_v1_bwd gw" + t + s, host(dgw), gw, gwd);
        compare("cross_v1_bwd gb" + t + s, host(dgb), gb, gbd);
    }
    // combine kernels
    kernels::cross_combine_fwd(C{}, n, x0.data(), z.data(), xl.data(), y.data());
    kernels::cross_combine_fwd(cuda{}, n, dx0.data(), dz.data(), dxl.data(), dy.data());
    compare("cross_combine_fwd " + shape_str({n}), host(dy), y);
    {
        vec zz = z;
        auto dzz = dev(z);
        kernels::cross_bias_combine_fwd(C{}, d, b.data(), x0.data(), zz.data(), xl.data(), y.data());
        kernels::cross_bias_combine_fwd(cuda{}, d, db.data(), dx0.data(), dzz.data(), dxl.data(), dy.data());
        compare("cross_bias_combine_fwd y " + shape_str({d}), host(dy, d), vec(y.begin(), y.begin() + d));
        compare("cross_bias_combine_fwd z " + shape_str({d}), host(dzz, d), vec(zz.begin(), zz.begin() + d));
        vec za = z;
        auto dza = dev(z);
        kernels::cross_bias_combine_fwd(C{}, d, b.data(), x0.data(), za.data(), xl.data(), za.data());
        kernels::cross_bias_combine_fwd(cuda{}, d, db.data(), dx0.data(), dza.data(), dxl.data(), dza.data());
        compare("cross_bias_combine_fwd in place " + shape_str({d}), host(dza), za);
    }
    {
        vec dzc(static_cast<std::size_t>(n)), gx0 = rnd(n), col = rnd(d);
        dbuf ddzc(n);
        auto dgx0 = dev(gx0), dcol = dev(col);
        kernels::cross_combine_bwd_rows(C{}, rows, d, x0.data(), z.data(), gy.data(), dzc.data(), gx0.data(), col.data());
        kernels::cross_combine_bwd_rows(cuda{}, rows, d, dx0.data(), dz.data(), dgy.data(), ddzc.data(), dgx0.data(),
                                        dcol.data());
        compare("cross_combine_bwd_rows dz " + s, host(ddzc), dzc);
        compare("cross_combine_bwd_rows gx0 " + s, host(dgx0), gx0);
        compare("cross_combine_bwd_rows colsum " + s, host(dcol), col);
        kernels::cross_combine_bwd(C{}, n, x0.data(), z.data(), gy.data(), dzc.data(), gx0.data());
        kernels::cross_combine_bwd(cuda{}, n, dx0.data(), dz.data(), dgy.data(), ddzc.data(), dgx0.data());
        compare("cross_combine_bwd dz " + shape_str({n}), host(ddzc), dzc);
        compare("cross_combine_bwd gx0 " + shape_str({n}), host(dgx0), gx0);
    }
    // mixture gate
    const std::string sk = shape_str({rows, d}) + " K " + std::to_string(K);
    vec a = rnd(rows * K, -3.f, 3.f);
    auto da = dev(a);
    kernels::cross_gate_softmax(C{}, rows, K, a.data());
    kernels::cross_gate_softmax(cuda{}, rows, K, da.data());
    compare("cross_gate_softmax " + sk, host(da), a);
    const vec u = rnd(K * n), dm = rnd(n);
    auto du = dev(u), ddm = dev(dm);
    vec gate(static_cast<std::size_t>(rows * K));
    dbuf dgate(rows * K);
    kernels::cross_gate_bwd(C{}, rows, d, K, a.data(), u.data(), n, dm.data(), gate.data());
    dvec gated(gate.size());
    kernels::cross_gate_bwd(C{}, rows, d, K, D(a).data(), D(u).data(), n, D(dm).data(), gated.data());
    kernels::cross_gate_bwd(cuda{}, rows, d, K, da.data(), du.data(), n, ddm.data(), dgate.data());
    compare("cross_gate_bwd " + sk, host(dgate), gate, gated);
    for (int accumulate = 0; accumulate < 2; ++accumulate) {
        vec out = rnd(n);
        auto dout = dev(out);
        kernels::cross_mix_rows(C{}, rows, d, K, K - 1, a.data(), xl.data(), out.data(), accumulate != 0);
        kernels::cross_mix_rows(cuda{}, rows, d, K, K - 1, da.data(), dxl.data(), dout.data(), accumulate != 0);
        compare(std::string("cross_mix_rows") + (accumulate ? " accumulate " : " ") + sk, host(dout), out);
    }
}

void check_linear_fixed(std::int64_t rows) {
    constexpr std::int64_t In = 7, Out = 5;
    const vec x = rnd(rows * In), w = rnd(Out * In), b = rnd(Out);
    auto dx = dev(x), dw = dev(w), db = dev(b);
    vec y(static_cast<std::size_t>(rows * Out));
    dbuf dy(rows * Out);
    kernels::linear_fixed<In, Out>(C{}, rows, x.data(), w.data(), b.data(), y.data());
    kernels::linear_fixed<In, Out>(cuda{}, rows, dx.data(), dw.data(), db.data(), dy.data());
    compare("linear_fixed<7, 5> " + shape_str({rows, In}), host(dy), y);
}

void check_prelu(std::int64_t rows, std::int64_t n) {
    for (int per_channel = 0; per_channel < 2; ++per_channel) {
        const std::string s = shape_str({rows, n}) + (per_channel ? " per-channel" : " shared");
        const std::int64_t na = per_channel ? n : 1;
        const vec x = rnd(rows * n), a = rnd(na, 0.f, 0.5f), gy = rnd(rows * n);
        auto dx = dev(x), da = dev(a), dgy = dev(gy);
        vec y(x.size());
        dbuf dy(rows * n);
        kernels::prelu_fwd(C{}, rows, n, x.data(), a.data(), per_channel != 0, y.data());
        kernels::prelu_fwd(cuda{}, rows, n, dx.data(), da.data(), per_channel != 0, dy.data());
        compare("prelu_fwd " + s, host(dy), y);
        vec gx = rnd(rows * n), ga = rnd(na);
        auto dgx = dev(gx), dga = dev(ga);
        dvec gxd = D(gx), gad = D(ga);
        kernels::prelu_bwd(C{}, rows, n, D(x).data(), D(a).data(), per_channel != 0, D(gy).data(), gxd.data(), gad.data());
        kernels::prelu_bwd(C{}, rows, n, x.data(), a.data(), per_channel != 0, gy.data(), gx.data(), ga.data());
        kernels::prelu_bwd(cuda{}, rows, n, dx.data(), da.data(), per_channel != 0, dgy.data(), dgx.data(), dga.data());
        compare("prelu_bwd dx " + s, host(dgx), gx);
        compare("prelu_bwd da " + s, host(dga), ga, gad);
    }
}

void check_dice_bn(std::int64_t rows, std::int64_t n) {
    const std::string s = shape_str({rows, n});
    const vec x = rnd(rows * n, -2.f, 2.f), m = rnd(n), rstd = rnd(n, 0.5f, 2.f), alpha = rnd(n), gy = rnd(rows * n);
    auto dx = dev(x), dmn = dev(m), drs = dev(rstd), dal = dev(alpha), dgy = dev(gy);
    vec y(x.size()), p(x.size());
    dbuf dy(rows * n), dp(rows * n);
    kernels::dice_fwd(C{}, rows, n, x.data(), m.data(), rstd.data(), alpha.data(), y.data(), p.data());
    kernels::dice_fwd(cuda{}, rows, n, dx.data(), dmn.data(), drs.data(), dal.data(), dy.data(), dp.data());
    compare("dice_fwd y " + s, host(dy), y);
    compare("dice_fwd p " + s, host(dp), p);
    auto dpc = dev(p);  // the cpu's p on both sides from here
    for (int with_dx = 0; with_dx < 2; ++with_dx) {
        vec gx = rnd(rows * n), xh(x.size());
        auto dgx = dev(gx);
        dbuf dxh(rows * n);
        kernels::dice_bwd_elem(C{}, rows, n, x.data(), p.data(), alpha.data(), gy.data(), with_dx ? gx.data() : nullptr,
                               xh.data());
        kernels::dice_bwd_elem(cuda{}, rows, n, dx.data(), dpc.data(), dal.data(), dgy.data(),
                               with_dx ? dgx.data() : nullptr, dxh.data());
        if (with_dx) compare("dice_bwd_elem dx " + s, host(dgx), gx);
        compare(std::string("dice_bwd_elem dxhat") + (with_dx ? " " : " (no dx) ") + s, host(dxh), xh);
    }
    // Column kernels on a block of columns [1, n) of the [rows, n] matrix (leading dimension n).
    const std::int64_t nc = n - 1;
    const std::string sc = s + " columns 1.." + std::to_string(n);
    {
        vec sa = rnd(n);
        auto dsa = dev(sa);
        dvec sad = D(sa);
        kernels::dice_col_alpha_sums(C{}, rows, nc, n, D(x).data() + 1, D(p).data() + 1, D(gy).data() + 1, sad.data() + 1);
        kernels::dice_col_alpha_sums(C{}, rows, nc, n, x.data() + 1, p.data() + 1, gy.data() + 1, sa.data() + 1);
        kernels::dice_col_alpha_sums(cuda{}, rows, nc, n, dx.data() + 1, dpc.data() + 1, dgy.data() + 1, dsa.data() + 1);
        compare("dice_col_alpha_sums " + sc, host(dsa), sa, sad);
    }
    vec mean(static_cast<std::size_t>(n), 9.f), var(static_cast<std::size_t>(n), 9.f);
    auto dmean = dev(mean), dvar = dev(var);
    kernels::bn_col_moments(C{}, rows, nc, n, x.data() + 1, mean.data() + 1, var.data() + 1);
    kernels::bn_col_moments(cuda{}, rows, nc, n, dx.data() + 1, dmean.data() + 1, dvar.data() + 1);
    compare("bn_col_moments mean " + sc, host(dmean), mean);
    compare("bn_col_moments var " + sc, host(dvar), var);
    for (int with_b = 0; with_b < 2; ++with_b) {
        vec yy(x.size());
        dbuf dyy(rows * n);
        kernels::bn_col_apply(C{}, rows, n, x.data(), m.data(), rstd.data(), with_b ? alpha.data() : nullptr, yy.data());
        kernels::bn_col_apply(cuda{}, rows, n, dx.data(), dmn.data(), drs.data(), with_b ? dal.data() : nullptr, dyy.data());
        compare(std::string("bn_col_apply") + (with_b ? " +b " : " ") + s, host(dyy), yy);
    }
    vec s1 = rnd(n), s2 = rnd(n);
    auto ds1 = dev(s1), ds2 = dev(s2);
    dvec s1d = D(s1), s2d = D(s2);
    {
        const dvec xd = D(x), md = D(m), rd = D(rstd), gd = D(gy);
        kernels::bn_col_grad_sums(C{}, rows, nc, n, xd.data() + 1, md.data() + 1, rd.data() + 1, gd.data() + 1,
                                  s1d.data() + 1, s2d.data() + 1);
    }
    kernels::bn_col_grad_sums(C{}, rows, nc, n, x.data() + 1, m.data() + 1, rstd.data() + 1, gy.data() + 1, s1.data() + 1,
                              s2.data() + 1);
    kernels::bn_col_grad_sums(cuda{}, rows, nc, n, dx.data() + 1, dmn.data() + 1, drs.data() + 1, dgy.data() + 1,
                              ds1.data() + 1, ds2.data() + 1);
    compare("bn_col_grad_sums s1 " + sc, host(ds1), s1, s1d);
    compare("bn_col_grad_sums s2 " + sc, host(ds2), s2, s2d);
    {
        const vec k = rnd(n), u1 = rnd(n), u2 = rnd(n);
        auto dk = dev(k), du1 = dev(u1), du2 = dev(u2);
        vec gx = rnd(rows * n);
        auto dgx = dev(gx);
        kernels::bn_col_grad_apply(C{}, rows, n, x.data(), m.data(), rstd.data(), gy.data(), k.data(), u1.data(), u2.data(),
                                   gx.data());
        kernels::bn_col_grad_apply(cuda{}, rows, n, dx.data(), dmn.data(), drs.data(), dgy.data(), dk.data(), du1.data(),
                                   du2.data(), dgx.data());
        compare("bn_col_grad_apply " + s, host(dgx), gx);
    }
    for (int running = 0; running < 2; ++running) {
        const std::string t = running ? " with running " : " no running ";
        vec vr = rnd(n, 0.f, 2.f), rm = rnd(n), rv = rnd(n, 0.5f, 1.5f);
        auto dvr = dev(vr), drm = dev(rm), drv = dev(rv);
        kernels::bn_stats_from_batch(C{}, n, 0.1f, 1.25f, 1e-5f, static_cast<const float*>(m.data()), vr.data(),
                                     running ? rm.data() : nullptr, running ? rv.data() : nullptr);
        kernels::bn_stats_from_batch(cuda{}, n, 0.1f, 1.25f, 1e-5f, static_cast<const float*>(dmn.data()), dvr.data(),
                                     running ? drm.data() : nullptr, running ? drv.data() : nullptr);
        compare("bn_stats_from_batch rstd" + t + shape_str({n}), host(dvr), vr);
        if (running) {
            compare("bn_stats_from_batch running_mean" + t + shape_str({n}), host(drm), rm);
            compare("bn_stats_from_batch running_var" + t + shape_str({n}), host(drv), rv);
        }
    }
    {
        const vec rm = rnd(n), rv = rnd(n, 0.5f, 1.5f);
        auto drm = dev(rm), drv = dev(rv);
        vec mo(static_cast<std::size_t>(n)), ro(static_cast<std::size_t>(n));
        dbuf dmo(n), dro(n);
        kernels::bn_stats_from_running(C{}, n, 1e-5f, rm.data(), rv.data(), mo.data(), ro.data());
        kernels::bn_stats_from_running(cuda{}, n, 1e-5f, static_cast<const float*>(drm.data()),
                                       static_cast<const float*>(drv.data()), dmo.data(), dro.data());
        compare("bn_stats_from_running mean " + shape_str({n}), host(dmo), mo);
        compare("bn_stats_from_running rstd " + shape_str({n}), host(dro), ro);
        for (int with_g = 0; with_g < 2; ++with_g) {
            vec o(static_cast<std::size_t>(n));
            dbuf dout(n);
            kernels::bn_scale_rstd(C{}, n, with_g ? alpha.data() : nullptr, rstd.data(), o.data());
            kernels::bn_scale_rstd(cuda{}, n, with_g ? static_cast<const float*>(dal.data()) : nullptr,
                                   static_cast<const float*>(drs.data()), dout.data());
            compare(std::string("bn_scale_rstd") + (with_g ? " gamma " : " ") + shape_str({n}), host(dout), o);
        }
    }
}

// ---- sequences -----------------------------------------------------------------------------------

void check_gru(std::int64_t rows, std::int64_t H) {
    const std::string s = shape_str({rows, H});
    const vec gi = rnd(rows * 3 * H, -2.f, 2.f), gh = rnd(rows * 3 * H, -2.f, 2.f), bi = rnd(3 * H), bh = rnd(3 * H),
              h = rnd(rows * H);
    auto dgi = dev(gi), dgh = dev(gh), dbi = dev(bi), dbh = dev(bh), dh = dev(h);
    vec out(static_cast<std::size_t>(rows * H)), save(static_cast<std::size_t>(rows * 4 * H));
    dbuf dout(rows * H), dsave(rows * 4 * H);
    kernels::gru_cell_fwd(C{}, rows, H, gi.data(), gh.data(), bi.data(), bh.data(), h.data(), out.data(), save.data());
    kernels::gru_cell_fwd(cuda{}, rows, H, dgi.data(), dgh.data(), dbi.data(), dbh.data(), dh.data(), dout.data(),
                          dsave.data());
    compare("gru_cell_fwd h' " + s, host(dout), out);
    compare("gru_cell_fwd save " + s, host(dsave), save);
    dbuf dout2(rows * H);
    kernels::gru_cell_fwd(cuda{}, rows, H, dgi.data(), dgh.data(), dbi.data(), dbh.data(), dh.data(), dout2.data(),
                          static_cast<float*>(nullptr));
    compare("gru_cell_fwd h' (no save) " + s, host(dout2), out);
    auto dsv = dev(save);  // the cpu's saved gates on both sides
    for (int with_gout = 0; with_gout < 2; ++with_gout) {
        const vec gout = rnd(rows * H);
        vec carry = rnd(rows * H), di(static_cast<std::size_t>(rows * 3 * H)), dhh(di.size());
        auto dgout = dev(gout), dcarry = dev(carry);
        dbuf ddi(rows * 3 * H), ddh(rows * 3 * H);
        kernels::gru_cell_bwd(C{}, rows, H, with_gout ? gout.data() : nullptr, carry.data(), h.data(), save.data(),
                              di.data(), dhh.data());
        kernels::gru_cell_bwd(cuda{}, rows, H, with_gout ? static_cast<const float*>(dgout.data()) : nullptr,
                              dcarry.data(), dh.data(), dsv.data(), ddi.data(), ddh.data());
        const std::string t = with_gout ? " " : " (no gout) ";
        compare("gru_cell_bwd dgi" + t + s, host(ddi), di);
        compare("gru_cell_bwd dgh" + t + s, host(ddh), dhh);
        compare("gru_cell_bwd carry" + t + s, host(dcarry), carry);
    }
}

void check_segments(std::int64_t len, std::int64_t D) {
    const std::string s = shape_str({len, D});
    const vec w = rnd(len > 0 ? len : 1), x = rnd((len > 0 ? len : 1) * D), g = rnd(D);
    auto dw = dev(w), dx = dev(x), dg = dev(g);
    vec out = rnd(D);
    auto dout = dev(out);
    kernels::segment_weighted_sum(C{}, len, D, w.data(), x.data(), out.data());
    kernels::segment_weighted_sum(cuda{}, len, D, dw.data(), dx.data(), dout.data());
    compare("segment_weighted_sum " + s, host(dout), out);
    vec gx = rnd((len > 0 ? len : 1) * D), gw = rnd(len > 0 ? len : 1);
    auto dgx = dev(gx), dgw = dev(gw);
    dvec gxd = ::D(gx), gwd = ::D(gw);
    kernels::segment_weighted_sum_bwd(C{}, len, D, ::D(w).data(), ::D(x).data(), ::D(g).data(), gxd.data(), gwd.data());
    kernels::segment_weighted_sum_bwd(C{}, len, D, w.data(), x.data(), g.data(), gx.data(), gw.data());
    kernels::segment_weighted_sum_bwd(cuda{}, len, D, dw.data(), dx.data(), dg.data(), dgx.data(), dgw.data());
    compare("segment_weighted_sum_bwd gx " + s, host(dgx), gx, gxd);
    compare("segment_weighted_sum_bwd gw " + s, host(dgw), gw, gwd);
}

// ---- training path: column sums, id range, the sparse merge and row-wise Adagrad ----------

void check_col_sums(std::int64_t rows, std::int64_t cols) {
    const std::string s = shape_str({rows, cols});
    const vec x = rnd(rows * cols), acc0 = rnd(cols);
    vec acc = acc0;
    kernels::col_sums_acc(C{}, rows, cols, x.data(), acc.data());
    dvec accd = D(acc0);
    const dvec xd = D(x);
    kernels::col_sums_acc(C{}, rows, cols, xd.data(), accd.data());
    const auto dx = dev(x);
    auto dacc = dev(acc0);
    kernels::col_sums_acc(cuda{}, rows, cols, dx.data(), dacc.data());
    compare("col_sums_acc " + s, host(dacc), acc, accd);
}

void check_id_range(std::int64_t n, std::int64_t rows) {
    ivec ids = rnd_ids(n, rows);
    const auto good = dev(ids);
    ++checks;
    std::int64_t got = kernels::first_id_outside(cuda{}, n, good.data(), rows);
    if (got != -1) {
        ++failures;
        std::printf("FAIL first_id_outside [%lld] all inside: got %lld\n", static_cast<long long>(n),
                    static_cast<long long>(got));
    }
    if (n < 3) return;
    ids[static_cast<std::size_t>(n - 1)] = -1;
    ids[static_cast<std::size_t>(n / 2)] = rows;
    const auto bad = dev(ids);
    ++checks;
    got = kernels::first_id_outside(cuda{}, n, bad.data(), rows);
    const std::int64_t want = kernels::first_id_outside(C{}, n, ids.data(), rows);
    if (got != want || want != n / 2) {
        ++failures;
        std::printf("FAIL first_id_outside [%lld]: gpu %lld, cpu %lld, planted %lld\n", static_cast<long long>(n),
                    static_cast<long long>(got), static_cast<long long>(want), static_cast<long long>(n / 2));
    } else {
        std::printf("ok   first_id_outside [%lld]: position %lld on both\n", static_cast<long long>(n),
                    static_cast<long long>(got));
    }
}

// One optimizer step on a table whose sparse gradient has n rows over `rows` ids, a share of
// them on one hot id (long runs: the pieced path); both stores start from the same values.
void check_rowwise_adagrad(std::int64_t rows, std::int64_t dim, std::int64_t n, bool decoupled) {
    const std::string s = shape_str({rows, dim}) + " n " + std::to_string(n) + (decoupled ? " decoupled" : " l2");
    xrec::param_store<float, C> hs(1);
    xrec::param_store<float, cuda> ds(1);
    hs.add_table("t", rows, dim, xrec::init::normal(0, 0.1));
    ds.add_table("t", rows, dim, xrec::init::normal(0, 0.1));
    auto& ht = hs.table(0);
    auto& dt = ds.table(0);
    const vec w0 = rnd(rows * dim);
    std::copy(w0.begin(), w0.end(), ht.values.data());
    xrec::device::upload(dt.values.data(), w0.data(), rows * dim);
    ivec ids = rnd_ids(n, rows);
    for (std::int64_t i = 0; i < n; i += 3) ids[static_cast<std::size_t>(i)] = rows / 2;  // hot id
    const vec g = rnd(n * dim);
    std::copy(g.begin(), g.end(), ht.grad.append(n, ids.data()));
    const auto dids = dev(ids);
    xrec::device::upload(dt.grad.append(n, dids.data()), g.data(), n * dim);
    const xrec::optim::rowwise_adagrad_options o{.lr = 0.3, .eps = 1e-8, .weight_decay = 0.05, .decoupled = decoupled,
                                                 .initial_accumulator_value = 0.1};
    xrec::optim::rowwise_adagrad<float, C> ho(hs, o);
    xrec::optim::rowwise_adagrad<float, cuda> dop(ds, o);
    for (int step = 0; step < 2; ++step) {
        if (step == 1) {  // a second step: the accumulators carry over
            std::copy(g.begin(), g.end(), ht.grad.append(n, ids.data()));
            xrec::device::upload(dt.grad.append(n, dids.data()), g.data(), n * dim);
        }
        ho.step();
        dop.step();
    }
    xrec::device::synchronize();
    compare("rowwise_adagrad table " + s, xrec::device::to_host(dt.values.data(), rows * dim),
            vec(ht.values.data(), ht.values.data() + rows * dim));
    const auto hstate = ho.state(), dstate = dop.state();
    compare("rowwise_adagrad accumulators " + s, xrec::device::to_host(dstate[1].data, rows),
            vec(hstate[1].data, hstate[1].data + rows));
    ++checks;
    if (dt.grad.count() != 0) {
        ++failures;
        std::printf("FAIL rowwise_adagrad %s: the gradient was not cleared\n", s.c_str());
    }
}

// optim::coalesce on both backends: the same unique ids in the same order, the same sums.
void check_coalesce(std::int64_t rows, std::int64_t dim, std::int64_t n) {
    const std::string s = shape_str({rows, dim}) + " n " + std::to_string(n);
    xrec::param_store<float, C> hs(1);
    xrec::param_store<float, cuda> ds(1);
    hs.add_table("t", rows, dim, xrec::init::zeros());
    ds.add_table("t", rows, dim, xrec::init::zeros());
    auto& ht = hs.table(0);
    auto& dt = ds.table(0);
    const ivec ids = rnd_ids(n, rows);
    const vec g = rnd(n * dim);
    std::copy(g.begin(), g.end(), ht.grad.append(n, ids.data()));
    const auto dids = dev(ids);
    xrec::device::upload(dt.grad.append(n, dids.data()), g.data(), n * dim);
    xrec::optim::coalesce_scratch<float, C> hsc;
    xrec::optim::coalesce_scratch<float, cuda> dsc;
    xrec::optim::coalesce(ht, hsc);
    xrec::optim::coalesce(dt, dsc);
    ++checks;
    const ivec got = xrec::device::to_host(dt.grad.ids.data(), dt.grad.count());
    if (got != ht.grad.ids) {
        ++failures;
        std::printf("FAIL coalesce ids %s: gpu %lld unique ids, cpu %lld, or another order\n", s.c_str(),
                    static_cast<long long>(got.size()), static_cast<long long>(ht.grad.count()));
        return;
    }
    const std::int64_t m = ht.grad.count() * dim;
    compare("coalesce rows " + s, xrec::device::to_host(dt.grad.rows.data(), m), vec(ht.grad.rows.data(), ht.grad.rows.data() + m));
}

}  // namespace

int main(int argc, char** argv) {
    if (xrec::device::count() == 0) {
        std::printf("xrec cuda parity_kernels: no CUDA device here; nothing to run\n");
        return 77;
    }
    seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10)
                    : static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    try {
        cudaDeviceProp prop{};
        XREC_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
        std::printf("xrec cuda kernel parity on %s, seed %llu (rerun: parity_kernels %llu)\n", prop.name,
                    static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
        for (std::int64_t n : {1, 37, 4099}) check_reductions(n);
        check_softmax(1, 1);
        check_softmax(7, 33);
        check_softmax(65, 300);
        check_layer_norm(1, 3);
        check_layer_norm(9, 31);
        check_layer_norm(130, 257);
        check_gather_scatter(11, 5, 40);
        check_gather_scatter(300, 67, 1001);
        check_dropout(0, 1, 0.3);
        check_dropout(3, 1001, 0.3);
        check_dropout(1000001, 70001, 0.75);
        check_fm(1, 2, 1);
        check_fm(13, 5, 7);
        check_fm(70, 9, 33);
        check_fwfm(1, 2, 3);
        check_fwfm(13, 5, 7);
        check_fwfm(70, 9, 33);
        check_bi(1, 1, 3);
        check_bi(13, 5, 7);
        check_bi(70, 9, 33);
        check_cross(1, 1, 1);
        check_cross(13, 7, 3);
        check_cross(129, 65, 4);
        check_linear_fixed(1);
        check_linear_fixed(37);
        check_prelu(1, 1);
        check_prelu(17, 9);
        check_prelu(130, 65);
        check_dice_bn(2, 2);
        check_dice_bn(17, 9);
        check_dice_bn(130, 65);
        check_gru(1, 1);
        check_gru(13, 7);
        check_gru(70, 33);
        check_segments(0, 5);
        check_segments(1, 7);
        check_segments(37, 33);
        check_col_sums(1, 1);
        check_col_sums(37, 5);
        check_col_sums(3001, 37);
        check_col_sums(70001, 3);
        check_id_range(1, 5);
        check_id_range(1001, 77);
        check_coalesce(50, 3, 200);
        check_coalesce(1000, 16, 5000);
        for (const bool dec : {false, true}) {
            check_rowwise_adagrad(20, 4, 7, dec);
            check_rowwise_adagrad(1000, 16, 3000, dec);
            check_rowwise_adagrad(5000, 33, 2000, dec);
            check_rowwise_adagrad(300, 64, 4000, dec);
        }
        xrec::device::synchronize();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL: unexpected exception: %s\n", e.what());
        return 1;
    }
    std::printf("%s: %d of %d checks failed (seed %llu)\n", failures ? "FAILED" : "passed", failures, checks,
                static_cast<unsigned long long>(seed));
    return failures ? 1 : 0;
}
