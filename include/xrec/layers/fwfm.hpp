#pragma once
// Field-weighted factorization machine (Pan et al., "Field-weighted Factorization Machines
// for Click-Through Rate Prediction in Display Advertising", WWW 2018): pairwise inner
// products of field embeddings, each weighted by a learned strength of its field pair.
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#include "xrec/backend/cpu_kernels.hpp"
#include "xrec/backend/kernels.hpp"
#include "xrec/backend/policy.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/var.hpp"
#include "xrec/ops/common.hpp"

namespace xrec::kernels {

XREC_KERNEL_FALLBACK(fwfm_fwd)
XREC_KERNEL_FALLBACK(fwfm_bwd)
XREC_KERNEL_FALLBACK(fwfm_pair_matrix)

/// The weight matrices of fwfm from its F(F-1)/2 pair weights r (pairs (0,1), (0,2), ..,
/// (0,F-1), (1,2), ..): R [F, F] symmetric with a zero diagonal, R_ij = R_ji = r_p(i,j), and
/// Ru [F, F] its strict upper triangle (zeros on and below the diagonal).
template <class T, class A>
void fwfm_pair_matrix(cpu<A>, std::int64_t fields, const T* r, T* R, T* Ru) {
    std::int64_t p = 0;
    for (std::int64_t i = 0; i < fields; ++i) {
        R[i * fields + i] = T(0);
        for (std::int64_t j = 0; j <= i; ++j) Ru[i * fields + j] = T(0);
        for (std::int64_t j = i + 1; j < fields; ++j, ++p) R[i * fields + j] = R[j * fields + i] = Ru[i * fields + j] = r[p];
    }
}

/// Elements of the work buffer fwfm_bwd needs for `pairs` field pairs: one widest SIMD
/// register (64 bytes) per pair.
template <class T>
constexpr std::int64_t fwfm_work_size(std::int64_t pairs) {
    return pairs * static_cast<std::int64_t>(64 / sizeof(T));
}

/// For each of `rows` rows holding F field vectors of width D (v row-major [rows, F, D]):
///   y[r] = sum_{i<j} Ru[i, j] <v_i, v_j>
/// with Ru [F, F] row-major strictly upper triangular (zeros on and below the diagonal). Per
/// D-chunk the weighted partner sums w_i = sum_{j>i} Ru_ij v_j of four fields at a time are
/// built in four independent registers (sharing each load of v_j) and dotted with v_i, so
/// no per-pair horizontal sums are needed.
template <class T, class A>
void fwfm_fwd(cpu<A>, std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v, const T* Ru, T* y) {
    using bt = xsimd::batch<T, A>;
    const std::int64_t F = fields;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* vr = v + r * F * dim;
        bt acc(T(0));
        T tail = 0;
        detail::simd_loop<T, A>(
            dim,
            [&](std::int64_t d) {
                std::int64_t i = 0;
                for (; i + 4 <= F; i += 4) {
                    bt w0(T(0)), w1(T(0)), w2(T(0)), w3(T(0));
                    const T* R0 = Ru + i * F;
                    for (std::int64_t j = i + 1; j < F; ++j) {  // Ru is zero where j <= i + k
                        const bt x = bt::load_unaligned(vr + j * dim + d);
                        w0 = xsimd::fma(bt(R0[j]), x, w0);
                        w1 = xsimd::fma(bt(R0[F + j]), x, w1);
                        w2 = xsimd::fma(bt(R0[2 * F + j]), x, w2);
                        w3 = xsimd::fma(bt(R0[3 * F + j]), x, w3);
                    }
                    acc = xsimd::fma(bt::load_unaligned(vr + i * dim + d), w0, acc);
                    acc = xsimd::fma(bt::load_unaligned(vr + (i + 1) * dim + d), w1, acc);
                    acc = xsimd::fma(bt::load_unaligned(vr + (i + 2) * dim + d), w2, acc);
                    acc = xsimd::fma(bt::load_unaligned(vr + (i + 3) * dim + d), w3, acc);
                }
                for (; i + 1 < F; ++i) {
                    bt w(T(0));
                    for (std::int64_t j = i + 1; j < F; ++j)
                        w = xsimd::fma(bt(Ru[i * F + j]), bt::load_unaligned(vr + j * dim + d), w);
                    acc = xsimd::fma(bt::load_unaligned(vr + i * dim + d), w, acc);
                }
            },
            [&](std::int64_t d) {
                for (std::int64_t i = 0; i + 1 < F; ++i) {
                    T w = 0;
                    for (std::int64_t j = i + 1; j < F; ++j) w += Ru[i * F + j] * vr[j * dim + d];
                    tail += vr[i * dim + d] * w;
                }
            });
        y[r] = xsimd::hadd(acc) + tail;
    }
}

/// Backward of fwfm_fwd, with R [F, F] symmetric with a zero diagonal:
///   gv[r, i, :] += gy[r] * sum_j R_ij v_j          (when gv is not null)
///   gr[p(i, j)] += sum_r gy[r] * <v_i, v_j>, i < j  (when gr is not null)
/// where p(i, j) enumerates the pairs i < j row by row: (0,1), (0,2), .., (0,F-1), (1,2), ..
/// `work` (fwfm_work_size<T>(pairs) elements, any content) holds one SIMD accumulator per
/// pair: products are summed lane-wise over all rows and D-chunks of this call and reduced
/// horizontally once per pair at the end, instead of once per pair and row.
template <class T, class A>
void fwfm_bwd(cpu<A>, std::int64_t rows, std::int64_t fields, std::int64_t dim, const T* v, const T* R, const T* gy,
              T* gv, T* gr, T* work) {
    using bt = xsimd::batch<T, A>;
    constexpr std::int64_t W = static_cast<std::int64_t>(bt::size);
    static_assert(W * sizeof(T) <= 64, "fwfm_bwd: the work buffer holds 64 bytes per pair");
    const std::int64_t F = fields, pairs = F * (F - 1) / 2;
    if (gr)
        for (std::int64_t p = 0; p < pairs; ++p) bt(T(0)).store_unaligned(work + p * W);
    for (std::int64_t r = 0; r < rows; ++r) {
        const T g = gy[r];
        const bt gb(g);
        const T* vr = v + r * F * dim;
        T* gvr = gv ? gv + r * F * dim : nullptr;
        detail::simd_loop<T, A>(
            dim,
            [&](std::int64_t d) {
                if (gvr) {
                    std::int64_t i = 0;
                    for (; i + 4 <= F; i += 4) {
                        bt w0(T(0)), w1(T(0)), w2(T(0)), w3(T(0));
                        const T* R0 = R + i * F;
                        for (std::int64_t j = 0; j < F; ++j) {
                            const bt x = bt::load_unaligned(vr + j * dim + d);
                            w0 = xsimd::fma(bt(R0[j]), x, w0);
                            w1 = xsimd::fma(bt(R0[F + j]), x, w1);
                            w2 = xsimd::fma(bt(R0[2 * F + j]), x, w2);
                            w3 = xsimd::fma(bt(R0[3 * F + j]), x, w3);
                        }
                        T* o = gvr + i * dim + d;
                        xsimd::fma(gb, w0, bt::load_unaligned(o)).store_unaligned(o);
                        xsimd::fma(gb, w1, bt::load_unaligned(o + dim)).store_unaligned(o + dim);
                        xsimd::fma(gb, w2, bt::load_unaligned(o + 2 * dim)).store_unaligned(o + 2 * dim);
                        xsimd::fma(gb, w3, bt::load_unaligned(o + 3 * dim)).store_unaligned(o + 3 * dim);
                    }
                    for (; i < F; ++i) {
                        bt w(T(0));
                        for (std::int64_t j = 0; j < F; ++j)
                            w = xsimd::fma(bt(R[i * F + j]), bt::load_unaligned(vr + j * dim + d), w);
                        T* o = gvr + i * dim + d;
                        xsimd::fma(gb, w, bt::load_unaligned(o)).store_unaligned(o);
                    }
                }
                if (gr) {
                    std::int64_t p = 0;
                    for (std::int64_t i = 0; i + 1 < F; ++i) {
                        const bt gi = gb * bt::load_unaligned(vr + i * dim + d);
                        for (std::int64_t j = i + 1; j < F; ++j, ++p) {
                            T* wp = work + p * W;
                            xsimd::fma(gi, bt::load_unaligned(vr + j * dim + d), bt::load_unaligned(wp)).store_unaligned(wp);
                        }
                    }
                }
            },
            [&](std::int64_t d) {
                if (gvr)
                    for (std::int64_t i = 0; i < F; ++i) {
                        T w = 0;
                        for (std::int64_t j = 0; j < F; ++j) w += R[i * F + j] * vr[j * dim + d];
                        gvr[i * dim + d] += g * w;
                    }
                if (gr) {
                    std::int64_t p = 0;
                    for (std::int64_t i = 0; i + 1 < F; ++i)
                        for (std::int64_t j = i + 1; j < F; ++j, ++p) gr[p] += g * vr[i * dim + d] * vr[j * dim + d];
                }
            });
    }
    if (gr)
        for (std::int64_t p = 0; p < pairs; ++p) gr[p] += xsimd::hadd(bt::load_unaligned(work + p * W));
}

}  // namespace xrec::kernels

namespace xrec::ops {

namespace detail {
/// Tape node of fwfm: saves v, the pair weights r and the symmetric weight matrix R [F, F]
/// built by the forward (arena memory). Pair inner products are recomputed, not saved.
template <class Ctx>
struct fwfm_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> v, r, y;
    T* R;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<fwfm_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        T* gv = ctx.grad(n.v);
        T* gr = ctx.grad(n.r);
        if (!gv && !gr) return;
        const std::int64_t rows = n.v.s[0], fields = n.v.s[1], dim = n.v.s[2], pairs = n.r.numel();
        // The pair-weight gradient is a sum over rows: each thread sums its own rows into its
        // own slice of partials, and the slices are added in thread order (deterministic per
        // thread count). Each thread also has its own kernel work buffer.
        const int threads = ctx.threads();
        const std::int64_t work = kernels::fwfm_work_size<T>(pairs);
        T* part = gr ? ctx.template scratch<T>(static_cast<std::int64_t>(threads) * (pairs + work)) : nullptr;
        if (part) kernels::fill(B{}, static_cast<std::int64_t>(threads) * pairs, T(0), part);
        const std::int64_t min_rows =
            std::max<std::int64_t>(1, policy<B>::elementwise_parallel_min / std::max<std::int64_t>(1, fields * fields * dim));
        parallel_for(ctx.pool(), rows, min_rows, [&](std::int64_t r0, std::int64_t r1, int t) {
            kernels::fwfm_bwd(B{}, r1 - r0, fields, dim, n.v.data + r0 * fields * dim, n.R, gy + r0,
                              gv ? gv + r0 * fields * dim : nullptr, part ? part + t * pairs : nullptr,
                              part ? part + threads * pairs + t * work : nullptr);
        });
        if (gr)
            for (int t = 0; t < threads; ++t) kernels::add(B{}, pairs, gr, part + t * pairs, gr);
    }
};
}  // namespace detail

/// Field-weighted FM logit: v [batch, F, D], r [F(F-1)/2] pair weights in the order
/// (0,1), (0,2), .., (0,F-1), (1,2), .. (torch.triu_indices(F, F, 1)). y [batch, 1] with
///   y_b = sum_{i<j} r_ij <v_bi, v_bj>.
/// Backward: dv_bi = dy_b sum_{j != i} r_ij v_bj, dr_ij = sum_b dy_b <v_bi, v_bj>; saves v,
/// r and the symmetric weight matrix [F, F].
template <class Ctx, class T = typename Ctx::value_type>
var<T> fwfm(Ctx& ctx, const var<T>& v, const var<T>& r) {
    using B = typename Ctx::backend;
    ctx.check(v);
    ctx.check(r);
    XREC_CHECK(v.s.rank == 3, "fwfm: field embeddings must be [batch, fields, dim], got ", v.s.str());
    const std::int64_t rows = v.s[0], fields = v.s[1], dim = v.s[2];
    XREC_CHECK(r.numel() == fields * (fields - 1) / 2, "fwfm: pair weights ", r.s.str(), " do not match ", fields,
               " fields (need ", fields * (fields - 1) / 2, ") of embeddings ", v.s.str());
    var<T> y = ctx.make({rows, 1}, v.requires_grad() || r.requires_grad());
    // R: the symmetric weight matrix with a zero diagonal (backward needs whole rows, every
    // partner j of field i); Ru: its strict upper triangle (the forward's pairs i < j).
    T* R = ctx.template scratch<T>(2 * fields * fields);
    T* Ru = R + fields * fields;
    kernels::fwfm_pair_matrix(B{}, fields, static_cast<const T*>(r.data), R, Ru);
    const std::int64_t min_rows =
        std::max<std::int64_t>(1, policy<B>::elementwise_parallel_min / std::max<std::int64_t>(1, fields * fields * dim));
    parallel_for(ctx.pool(), rows, min_rows, [&](std::int64_t r0, std::int64_t r1, int) {
        kernels::fwfm_fwd(B{}, r1 - r0, fields, dim, v.data + r0 * fields * dim, Ru, y.data + r0);
    });
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::fwfm_node<Ctx>>();
            n.v = v;
            n.r = r;
            n.y = y;
            n.R = R;
        }
    }
    return y;
}

}  // namespace xrec::ops

namespace xrec::layers {

/// Field-weighted factorization machine interaction (FwFM, Pan et al. 2018).
///
/// Maths, per row, with field embeddings v_1..v_F in R^D:
///   y = sum_{i<j} r_ij <v_i, v_j>
/// with one learned scalar r_ij per field pair (FM is r == 1).
/// Parameters: "<name>.r" [F(F-1)/2], pairs in the order (0,1), (0,2), .., (0,F-1), (1,2), ..
/// (torch.triu_indices(F, F, 1)); initialised to 1 by default, so training starts from FM.
/// Shapes: v [batch, F, D] -> y [batch, 1].
/// Backward (one fused tape node per call): dv_i = dy sum_{j != i} r_ij v_j and
/// dr_ij = sum_rows dy <v_i, v_j> (recomputed); saves v, r and the [F, F] weight matrix.
/// Cost O(F^2 D) per row forward and backward.
template <class T = float, class B = cpu<>>
struct fwfm {
    fwfm(param_store<T, B>& store, std::string name, std::int64_t fields, const init& how = init::constant(1))
        : name_(std::move(name)), fields_(fields) {
        XREC_CHECK(fields >= 2, "fwfm '", name_, "': needs at least 2 fields, got ", fields);
        r = store.add(name_ + ".r", {fields * (fields - 1) / 2}, how, fields, 1);
    }

    template <class Ctx>
    var<T> operator()(Ctx& ctx, const var<T>& v) const {
        static_assert(std::is_same_v<typename Ctx::value_type, T> && std::is_same_v<typename Ctx::backend, B>,
                      "fwfm: the context's value type and backend must match the layer's");
        XREC_CHECK(v.s.rank == 3 && v.s[1] == fields_, "fwfm '", name_, "': field embeddings must be [batch, ", fields_,
                   ", dim], got ", v.s.str());
        return ops::fwfm(ctx, v, ctx.param(r));
    }

    std::int64_t fields() const noexcept { return fields_; }
    const std::string& name() const noexcept { return name_; }

    dense_param<T, B> r;  ///< pair weights [F(F-1)/2]

private:
    std::string name_;
    std::int64_t fields_;
};

}  // namespace xrec::layers
