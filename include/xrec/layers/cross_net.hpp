#pragma once
// Cross networks: DCN (Wang et al., "Deep & Cross Network for Ad Click Predictions",
// ADKDD 2017) and DCN-V2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical
// Lessons for Web-scale Learning to Rank Systems", WWW 2021) with full-rank, low-rank and
// mixture-of-low-rank-experts cross layers.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

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

XREC_KERNEL_FALLBACK(cross_v1_fwd)
XREC_KERNEL_FALLBACK(cross_v1_bwd)
XREC_KERNEL_FALLBACK(cross_combine_fwd)
XREC_KERNEL_FALLBACK(cross_combine_bwd)
XREC_KERNEL_FALLBACK(cross_bias_combine_fwd)
XREC_KERNEL_FALLBACK(cross_combine_bwd_rows)
XREC_KERNEL_FALLBACK(cross_gate_softmax)
XREC_KERNEL_FALLBACK(cross_gate_bwd)
XREC_KERNEL_FALLBACK(cross_mix_rows)

/// DCN cross layer on `rows` rows of width d:
///   s[r] = <xl[r], w>,  y[r] = x0[r] * s[r] + b + xl[r].
/// s is written to `s_out` when not null (backward needs it).
template <class T, class A>
void cross_v1_fwd(cpu<A>, std::int64_t rows, std::int64_t d, const T* x0, const T* xl, const T* w, const T* b, T* y,
                  T* s_out) {
    using bt = xsimd::batch<T, A>;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* a = x0 + r * d;
        const T* l = xl + r * d;
        T* o = y + r * d;
        const T s = dot(cpu<A>{}, d, l, w);
        if (s_out) s_out[r] = s;
        const bt sb(s);
        detail::simd_loop<T, A>(
            d,
            [&](std::int64_t i) {
                xsimd::fma(bt::load_unaligned(a + i), sb, bt::load_unaligned(b + i) + bt::load_unaligned(l + i))
                    .store_unaligned(o + i);
            },
            [&](std::int64_t i) { o[i] = a[i] * s + b[i] + l[i]; });
    }
}

/// Backward of cross_v1_fwd for `rows` rows, given s and dy, in one pass per row:
///   t = <dy[r], x0[r]>,  gx0[r] += s[r] dy[r],  gxl[r] += dy[r] + t w,
///   gw += t xl[r],  gb += dy[r]
/// (each output skipped when null; gw and gb are the caller's per-thread partial sums).
/// gx0 and gxl may be the same buffer (first layer, x_l == x_0): each chunk is stored to gx0
/// before it is loaded from gxl.
template <class T, class A>
void cross_v1_bwd(cpu<A>, std::int64_t rows, std::int64_t d, const T* x0, const T* xl, const T* w, const T* s,
                  const T* gy, T* gx0, T* gxl, T* gw, T* gb) {
    using bt = xsimd::batch<T, A>;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* g = gy + r * d;
        const T* a = x0 + r * d;
        const T* l = xl + r * d;
        T* o0 = gx0 ? gx0 + r * d : nullptr;
        T* ol = gxl ? gxl + r * d : nullptr;
        const T t = (gxl || gw) ? dot(cpu<A>{}, d, g, a) : T(0);
        const T sr = s[r];
        const bt tb(t), sb(sr);
        detail::simd_loop<T, A>(
            d,
            [&](std::int64_t i) {
                const bt gi = bt::load_unaligned(g + i);
                if (o0) xsimd::fma(sb, gi, bt::load_unaligned(o0 + i)).store_unaligned(o0 + i);
                if (ol) xsimd::fma(tb, bt::load_unaligned(w + i), bt::load_unaligned(ol + i) + gi).store_unaligned(ol + i);
                if (gw) xsimd::fma(tb, bt::load_unaligned(l + i), bt::load_unaligned(gw + i)).store_unaligned(gw + i);
                if (gb) (bt::load_unaligned(gb + i) + gi).store_unaligned(gb + i);
            },
            [&](std::int64_t i) {
                if (o0) o0[i] += sr * g[i];
                if (ol) ol[i] += g[i] + t * w[i];
                if (gw) gw[i] += t * l[i];
                if (gb) gb[i] += g[i];
            });
    }
}

/// y = x0 * z + xl elementwise over n values (y may alias z).
template <class T, class A>
void cross_combine_fwd(cpu<A>, std::int64_t n, const T* x0, const T* z, const T* xl, T* y) {
    using bt = xsimd::batch<T, A>;
    detail::simd_loop<T, A>(
        n,
        [&](std::int64_t i) {
            xsimd::fma(bt::load_unaligned(x0 + i), bt::load_unaligned(z + i), bt::load_unaligned(xl + i)).store_unaligned(y + i);
        },
        [&](std::int64_t i) { y[i] = x0[i] * z[i] + xl[i]; });
}

/// z += b; y = x0 * z + xl over one row segment of n values (y may alias z; then z is not
/// kept). The epilogue of the full-rank cross GEMM, run while the block is in cache.
template <class T, class A>
void cross_bias_combine_fwd(cpu<A>, std::int64_t n, const T* b, const T* x0, T* z, const T* xl, T* y) {
    using bt = xsimd::batch<T, A>;
    const bool keep = z != y;
    detail::simd_loop<T, A>(
        n,
        [&](std::int64_t i) {
            const bt zz = bt::load_unaligned(z + i) + bt::load_unaligned(b + i);
            if (keep) zz.store_unaligned(z + i);
            xsimd::fma(bt::load_unaligned(x0 + i), zz, bt::load_unaligned(xl + i)).store_unaligned(y + i);
        },
        [&](std::int64_t i) {
            const T zz = z[i] + b[i];
            if (keep) z[i] = zz;
            y[i] = x0[i] * zz + xl[i];
        });
}

/// Backward of cross_combine_fwd (except the residual) on `rows` rows of width d: dz = dy * x0
/// (overwritten), gx0 += dy * z when gx0 is not null, and the column sums of dz added into
/// `colsum` (the bias gradient) when it is not null: one pass instead of two.
template <class T, class A>
void cross_combine_bwd_rows(cpu<A>, std::int64_t rows, std::int64_t d, const T* x0, const T* z, const T* gy, T* dz,
                            T* gx0, T* colsum) {
    using bt = xsimd::batch<T, A>;
    for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t o = r * d;
        detail::simd_loop<T, A>(
            d,
            [&](std::int64_t i) {
                const bt g = bt::load_unaligned(gy + o + i);
                const bt dzv = g * bt::load_unaligned(x0 + o + i);
                dzv.store_unaligned(dz + o + i);
                if (gx0) xsimd::fma(g, bt::load_unaligned(z + o + i), bt::load_unaligned(gx0 + o + i)).store_unaligned(gx0 + o + i);
                if (colsum) (bt::load_unaligned(colsum + i) + dzv).store_unaligned(colsum + i);
            },
            [&](std::int64_t i) {
                const T dzv = gy[o + i] * x0[o + i];
                dz[o + i] = dzv;
                if (gx0) gx0[o + i] += gy[o + i] * z[o + i];
                if (colsum) colsum[i] += dzv;
            });
    }
}

/// Backward of cross_combine_fwd (except the residual) over n values: dz = dy * x0
/// (overwritten) and, when gx0 is not null, gx0 += dy * z. One row of cross_combine_bwd_rows.
template <class T, class A>
void cross_combine_bwd(cpu<A>, std::int64_t n, const T* x0, const T* z, const T* gy, T* dz, T* gx0) {
    cross_combine_bwd_rows(cpu<A>{}, std::int64_t{1}, n, x0, z, gy, dz, gx0, static_cast<T*>(nullptr));
}

/// In-place softmax of each of `rows` rows of K gate logits (max-subtracted).
template <class T, class A>
void cross_gate_softmax(cpu<A>, std::int64_t rows, std::int64_t K, T* a) {
    for (std::int64_t r = 0; r < rows; ++r) {
        T* row = a + r * K;
        T mx = row[0];
        for (std::int64_t k = 1; k < K; ++k) mx = std::max(mx, row[k]);
        T sum = 0;
        for (std::int64_t k = 0; k < K; ++k) sum += (row[k] = std::exp(row[k] - mx));
        const T inv = T(1) / sum;
        for (std::int64_t k = 0; k < K; ++k) row[k] *= inv;
    }
}

/// Gate backward of the mixture cross layer for `rows` rows: with gate probabilities pi
/// [rows, K], expert outputs u [K, ld_u] (expert k's row r at u + k * ld_u + r * d) and
/// dm [rows, d] the gradient of the mixture,
///   dpi_k = <dm, u_k>,  da_k = pi_k (dpi_k - sum_j pi_j dpi_j)   -> da [rows, K].
template <class T, class A>
void cross_gate_bwd(cpu<A>, std::int64_t rows, std::int64_t d, std::int64_t K, const T* pi, const T* u, std::int64_t ld_u,
                    const T* dm, T* da) {
    for (std::int64_t r = 0; r < rows; ++r) {
        T* out = da + r * K;
        const T* p = pi + r * K;
        T mean = 0;
        for (std::int64_t k = 0; k < K; ++k) {
            out[k] = dot(cpu<A>{}, d, dm + r * d, u + k * ld_u + r * d);
            mean += p[k] * out[k];
        }
        for (std::int64_t k = 0; k < K; ++k) out[k] = p[k] * (out[k] - mean);
    }
}

/// out[r] (+)= pi[r, k] * x[r] for `rows` rows of width d (pi has K columns): accumulates
/// when `accumulate`, overwrites otherwise.
template <class T, class A>
void cross_mix_rows(cpu<A>, std::int64_t rows, std::int64_t d, std::int64_t K, std::int64_t k, const T* pi, const T* x,
                    T* out, bool accumulate) {
    for (std::int64_t r = 0; r < rows; ++r) {
        if (accumulate)
            axpy(cpu<A>{}, d, pi[r * K + k], x + r * d, out + r * d);
        else
            scale(cpu<A>{}, d, pi[r * K + k], x + r * d, out + r * d);
    }
}

}  // namespace xrec::kernels

namespace xrec::ops {

namespace detail {

/// C = alpha op(A) op(B) + beta C with the m rows of C split over the pool in static chunks
/// (each thread owns whole rows of C: no reduction, deterministic per thread count).
template <class B, class T>
void cross_gemm(thread_pool* pool, bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
                std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
    parallel_for(pool, m, policy<B>::gemm_parallel_min_rows, [&](std::int64_t r0, std::int64_t r1, int) {
        kernels::gemm(B{}, ta, tb, r1 - r0, n, k, alpha, ta ? a + r0 : a + r0 * lda, lda, b, ldb, beta, c + r0 * ldc, ldc);
    });
}

/// Rows per thread chunk for row-wise work of `per_row` scalar operations.
template <class B>
std::int64_t cross_min_rows(std::int64_t per_row) {
    return std::max<std::int64_t>(policy<B>::gemm_parallel_min_rows,
                                  policy<B>::elementwise_parallel_min / std::max<std::int64_t>(1, per_row));
}

template <class T>
void cross_check(const char* op, const var<T>& x0, const var<T>& xl) {
    XREC_CHECK(x0.s.rank >= 1 && x0.s == xl.s, op, ": x0 ", x0.s.str(), " and x_l ", xl.s.str(), " must have equal shapes");
}
template <class T>
void cross_check_param(const char* op, const char* what, const var<T>& p, const shape& want) {
    XREC_CHECK(p.s == want, op, ": ", what, " must be ", want.str(), ", got ", p.s.str());
}

/// Tape node of cross_v1: saves x0, x_l, w, b and s = x_l w [rows] (arena).
template <class Ctx>
struct cross_v1_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x0, xl, w, b, y;
    T* s;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<cross_v1_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        const std::int64_t rows = n.xl.rows(), d = n.xl.cols();
        T* gx0 = ctx.grad(n.x0);
        T* gxl = ctx.grad(n.xl);
        T* gw = ctx.grad(n.w);
        T* gb = ctx.grad(n.b);
        // dw and db are sums over rows: each thread sums its rows into its own slice of
        // partials, added in thread order (deterministic per thread count); one thread writes
        // straight into the parameter gradients.
        const int threads = ctx.threads();
        const bool split = threads > 1 && (gw || gb);
        T* part = split ? ctx.template scratch<T>(2 * d * threads) : nullptr;
        if (part) kernels::fill(B{}, 2 * d * threads, T(0), part);
        parallel_for(ctx.pool(), rows, cross_min_rows<B>(5 * d), [&](std::int64_t r0, std::int64_t r1, int th) {
            T* pw = gw ? (part ? part + 2 * d * th : gw) : nullptr;
            T* pb = gb ? (part ? part + 2 * d * th + d : gb) : nullptr;
            kernels::cross_v1_bwd(B{}, r1 - r0, d, n.x0.data + r0 * d, n.xl.data + r0 * d, n.w.data, n.s + r0,
                                  gy + r0 * d, gx0 ? gx0 + r0 * d : nullptr, gxl ? gxl + r0 * d : nullptr, pw, pb);
        });
        if (part)
            for (int th = 0; th < threads; ++th) {
                if (gw) kernels::add(B{}, d, gw, part + 2 * d * th, gw);
                if (gb) kernels::add(B{}, d, gb, part + 2 * d * th + d, gb);
            }
    }
};

/// Tape node of cross_v2 (full rank): saves x0, x_l, W, b and z = x_l W^T + b [rows, d].
template <class Ctx>
struct cross_v2_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x0, xl, w, b, y;
    T* z;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<cross_v2_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        const std::int64_t rows = n.xl.rows(), d = n.xl.cols();
        T* gx0 = ctx.grad(n.x0);
        T* gxl = ctx.grad(n.xl);
        T* gw = ctx.grad(n.w);
        T* gb = ctx.grad(n.b);
        T* dz = ctx.template scratch<T>(rows * d);
        // db is a sum over rows: per-thread partials added in thread order (deterministic per
        // thread count); one thread adds straight into db.
        const int threads = ctx.threads();
        T* part = gb && threads > 1 ? ctx.template scratch<T>(d * threads) : nullptr;
        if (part) kernels::fill(B{}, d * threads, T(0), part);
        parallel_for(ctx.pool(), rows, cross_min_rows<B>(d * d), [&](std::int64_t r0, std::int64_t r1, int th) {
            const std::int64_t o = r0 * d;
            const T *x0o = n.x0.data + o, *zo = n.z + o, *gyo = gy + o;
            T* dzo = dz + o;
            T* gx0o = gx0 ? gx0 + o : nullptr;
            T* colsum = part ? part + d * th : gb;
            if (!gxl) {
                kernels::cross_combine_bwd_rows(B{}, r1 - r0, d, x0o, zo, gyo, dzo, gx0o, colsum);
                return;
            }
            // dx_l += dz W + dy. The GEMM makes dz = dy * x0 (with gx0 += dy * z and db) a few
            // rows at a time as it packs them, so dz is written once and never read back here;
            // gx0 is updated before the GEMM touches those rows of C (the two may be one
            // buffer, and this keeps the order of the sums of the unfused code).
            T* g = gxl + o;
            auto produce = [&](std::int64_t i0, std::int64_t p0, std::int64_t mr, std::int64_t kb, bool first) {
                for (std::int64_t i = i0; i < i0 + mr; ++i) {
                    const std::int64_t e = i * d + p0;
                    if (first)
                        kernels::cross_combine_bwd_rows(B{}, std::int64_t{1}, kb, x0o + e, zo + e, gyo + e, dzo + e,
                                                        gx0o ? gx0o + e : nullptr, colsum ? colsum + p0 : nullptr);
                }
                return static_cast<const T*>(dzo + i0 * d + p0);
            };
            kernels::gemm_produce_then(B{}, r1 - r0, d, d, T(1), produce, d, false, n.w.data, d, T(1), g, d,
                                       [&](std::int64_t i0, std::int64_t j0, std::int64_t mb, std::int64_t nb) {
                                           for (std::int64_t i = i0; i < i0 + mb; ++i)
                                               kernels::add(B{}, nb, g + i * d + j0, gyo + i * d + j0, g + i * d + j0);
                                       });
        });
        if (gw) cross_gemm<B>(ctx.pool(), true, false, d, d, rows, T(1), dz, d, n.xl.data, d, T(1), gw, d);
        if (part)
            for (int th = 0; th < threads; ++th) kernels::add(B{}, d, gb, part + d * th, gb);
    }
};

/// Tape node of cross_v2_low_rank: saves x0, x_l, U, V, b, h = x_l V [rows, r] and
/// z = h U^T + b [rows, d].
template <class Ctx>
struct cross_v2_low_rank_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x0, xl, u, v, b, y;
    T *h, *z;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<cross_v2_low_rank_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        const std::int64_t rows = n.xl.rows(), d = n.xl.cols(), r = n.u.s[1];
        T* gx0 = ctx.grad(n.x0);
        T* gxl = ctx.grad(n.xl);
        T* gu = ctx.grad(n.u);
        T* gv = ctx.grad(n.v);
        T* gb = ctx.grad(n.b);
        T* dz = ctx.template scratch<T>(rows * d);
        T* dh = (gv || gxl) ? ctx.template scratch<T>(rows * r) : nullptr;
        parallel_for(ctx.pool(), rows, cross_min_rows<B>(2 * d * r), [&](std::int64_t r0, std::int64_t r1, int) {
            const std::int64_t o = r0 * d, len = (r1 - r0) * d;
            kernels::cross_combine_bwd(B{}, len, n.x0.data + o, n.z + o, gy + o, dz + o, gx0 ? gx0 + o : nullptr);
            if (dh) kernels::gemm(B{}, false, false, r1 - r0, r, d, T(1), dz + o, d, n.u.data, r, T(0), dh + r0 * r, r);
            if (gxl) {
                kernels::add(B{}, len, gxl + o, gy + o, gxl + o);
                kernels::gemm(B{}, false, true, r1 - r0, d, r, T(1), dh + r0 * r, r, n.v.data, r, T(1), gxl + o, d);
            }
        });
        if (gu) cross_gemm<B>(ctx.pool(), true, false, d, r, rows, T(1), dz, d, n.h, r, T(1), gu, r);
        if (gv) cross_gemm<B>(ctx.pool(), true, false, d, r, rows, T(1), n.xl.data, d, dh, r, T(1), gv, r);
        if (gb) kernels::col_sums_acc(B{}, rows, d, dz, gb);
    }
};

/// Tape node of cross_v2_mixture. Saves x0, x_l, the parameters, the gate probabilities pi
/// [rows, K], per expert k the pre-activations and activations p_pre, p, q_pre, q [K, rows, r]
/// and the expert outputs u [K, rows, d], and the mixture m [rows, d] (all arena memory).
template <class Ctx>
struct cross_v2_mixture_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x0, xl, u, v, c, gate, b, y;
    T *pi, *ppre, *p, *qpre, *q, *uo, *m;
    activation act;
    static void backward(tape_node* self, void* cp) {
        auto& n = *static_cast<cross_v2_mixture_node*>(self);
        auto& ctx = ctx_of<Ctx>(cp);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        const std::int64_t rows = n.xl.rows(), d = n.xl.cols(), K = n.u.s[0], r = n.u.s[2];
        const std::int64_t dr = d * r, rr = r * r, nr = rows * r, nd = rows * d;
        T* gx0 = ctx.grad(n.x0);
        T* gxl = ctx.grad(n.xl);
        T* gu = ctx.grad(n.u);
        T* gv = ctx.grad(n.v);
        T* gc = ctx.grad(n.c);
        T* gg = ctx.grad(n.gate);
        T* gb = ctx.grad(n.b);
        T* dm = ctx.template scratch<T>(nd);
        T* da = ctx.template scratch<T>(rows * K);
        T* du = ctx.template scratch<T>(nd);
        T* dq = ctx.template scratch<T>(nr);
        T* dpre = ctx.template scratch<T>(nr);
        thread_pool* pool = ctx.pool();
        const std::int64_t min_rows = cross_min_rows<B>(K * (d + 2 * dr + rr));
        // dm = dy x0, dx0 += dy m, gate gradient da, dx_l += dy + da G.
        parallel_for(pool, rows, min_rows, [&](std::int64_t r0, std::int64_t r1, int) {
            const std::int64_t o = r0 * d, len = (r1 - r0) * d;
            kernels::cross_combine_bwd(B{}, len, n.x0.data + o, n.m + o, gy + o, dm + o, gx0 ? gx0 + o : nullptr);
            kernels::cross_gate_bwd(B{}, r1 - r0, d, K, n.pi + r0 * K, n.uo + o, nd, dm + o, da + r0 * K);
            if (gxl) {
                kernels::add(B{}, len, gxl + o, gy + o, gxl + o);
                kernels::gemm(B{}, false, false, r1 - r0, d, K, T(1), da + r0 * K, K, n.gate.data, d, T(1), gxl + o, d);
            }
        });
        if (gb) kernels::col_sums_acc(B{}, rows, d, dm, gb);
        if (gg) cross_gemm<B>(pool, true, false, K, d, rows, T(1), da, K, n.xl.data, d, T(1), gg, d);
        for (std::int64_t k = 0; k < K; ++k) {
            const T* Uk = n.u.data + k * dr;
            const T* Vk = n.v.data + k * dr;
            const T* Ck = n.c.data + k * rr;
            const T *pk = n.p + k * nr, *ppk = n.ppre + k * nr, *qk = n.q + k * nr, *qpk = n.qpre + k * nr;
            // du = pi_k dm, dq = du U_k, dq_pre = dq g'(q_pre).
            parallel_for(pool, rows, min_rows, [&](std::int64_t r0, std::int64_t r1, int) {
                const std::int64_t o = r0 * d, orr = r0 * r, cr = r1 - r0;
                kernels::cross_mix_rows(B{}, cr, d, K, k, n.pi + r0 * K, dm + o, du + o, false);
                kernels::gemm(B{}, false, false, cr, r, d, T(1), du + o, d, Uk, r, T(0), dq + orr, r);
                kernels::fill(B{}, cr * r, T(0), dpre + orr);
                kernels::activation_bwd(B{}, n.act, cr * r, qpk + orr, qk + orr, dq + orr, dpre + orr);
            });
            if (gu) cross_gemm<B>(pool, true, false, d, r, rows, T(1), du, d, qk, r, T(1), gu + k * dr, r);
            if (gc) cross_gemm<B>(pool, true, false, r, r, rows, T(1), dpre, r, pk, r, T(1), gc + k * rr, r);
            // dp = dq_pre C_k (into dq), dp_pre = dp g'(p_pre) (into dpre), dx_l += dp_pre V_k^T.
            parallel_for(pool, rows, min_rows, [&](std::int64_t r0, std::int64_t r1, int) {
                const std::int64_t orr = r0 * r, cr = r1 - r0;
                kernels::gemm(B{}, false, false, cr, r, r, T(1), dpre + orr, r, Ck, r, T(0), dq + orr, r);
                kernels::fill(B{}, cr * r, T(0), dpre + orr);
                kernels::activation_bwd(B{}, n.act, cr * r, ppk + orr, pk + orr, dq + orr, dpre + orr);
                if (gxl) kernels::gemm(B{}, false, true, cr, d, r, T(1), dpre + orr, r, Vk, r, T(1), gxl + r0 * d, d);
            });
            if (gv) cross_gemm<B>(pool, true, false, d, r, rows, T(1), n.xl.data, d, dpre, r, T(1), gv + k * dr, r);
        }
    }
};

}  // namespace detail

/// DCN cross layer: x0, x_l [..., d], w [d], b [d] -> x_{l+1} = x0 * <x_l, w> + b + x_l.
/// Backward: dx0 += dy <x_l, w>, dx_l += dy + <dy, x0> w, dw += sum_rows <dy, x0> x_l,
/// db += sum_rows dy; saves x0, x_l, w, b and <x_l, w> per row.
template <class Ctx, class T = typename Ctx::value_type>
var<T> cross_v1(Ctx& ctx, const var<T>& x0, const var<T>& xl, const var<T>& w, const var<T>& b) {
    using B = typename Ctx::backend;
    ctx.check(x0);
    ctx.check(xl);
    detail::cross_check("cross_v1", x0, xl);
    const std::int64_t rows = xl.rows(), d = xl.cols();
    detail::cross_check_param("cross_v1", "w", w, shape{d});
    detail::cross_check_param("cross_v1", "b", b, shape{d});
    var<T> y = ctx.make(xl.s, any_requires_grad<T>(x0, xl, w, b));
    T* s = nullptr;
    if constexpr (Ctx::records)
        if (y.requires_grad()) s = ctx.template scratch<T>(rows);
    parallel_for(ctx.pool(), rows, detail::cross_min_rows<B>(2 * d), [&](std::int64_t r0, std::int64_t r1, int) {
        kernels::cross_v1_fwd(B{}, r1 - r0, d, x0.data + r0 * d, xl.data + r0 * d, w.data, b.data, y.data + r0 * d,
                              s ? s + r0 : nullptr);
    });
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::cross_v1_node<Ctx>>();
            n.x0 = x0;
            n.xl = xl;
            n.w = w;
            n.b = b;
            n.y = y;
            n.s = s;
        }
    }
    return y;
}

/// DCN-V2 full-rank cross layer: x0, x_l [..., d], W [d, d] ([out, in] as nn.Linear), b [d]
/// -> x_{l+1} = x0 * (x_l W^T + b) + x_l.
/// Backward with dz = dy * x0: dx0 += dy z, dx_l += dy + dz W, dW += dz^T x_l, db += sum dz;
/// saves x0, x_l, W, b and z = x_l W^T + b.
template <class Ctx, class T = typename Ctx::value_type>
var<T> cross_v2(Ctx& ctx, const var<T>& x0, const var<T>& xl, const var<T>& w, const var<T>& b) {
    using B = typename Ctx::backend;
    ctx.check(x0);
    ctx.check(xl);
    detail::cross_check("cross_v2", x0, xl);
    const std::int64_t rows = xl.rows(), d = xl.cols();
    detail::cross_check_param("cross_v2", "W", w, shape{d, d});
    detail::cross_check_param("cross_v2", "b", b, shape{d});
    var<T> y = ctx.make(xl.s, any_requires_grad<T>(x0, xl, w, b));
    T* z = y.data;  // inference builds z in the output and combines in place
    if constexpr (Ctx::records)
        if (y.requires_grad()) z = ctx.template scratch<T>(rows * d);
    parallel_for(ctx.pool(), rows, detail::cross_min_rows<B>(d * d), [&](std::int64_t r0, std::int64_t r1, int) {
        const std::int64_t o = r0 * d;
        const T *x0o = x0.data + o, *xlo = xl.data + o;
        T *zo = z + o, *yo = y.data + o;
        // z = x_l W^T, then bias and x0 * z + x_l on each block of z while it is in cache.
        kernels::gemm_then(B{}, false, true, r1 - r0, d, d, T(1), xlo, d, w.data, d, T(0), zo, d,
                           [&](std::int64_t i0, std::int64_t j0, std::int64_t mb, std::int64_t nb) {
                               for (std::int64_t i = i0; i < i0 + mb; ++i) {
                                   const std::int64_t e = i * d + j0;
                                   kernels::cross_bias_combine_fwd(B{}, nb, b.data + j0, x0o + e, zo + e, xlo + e, yo + e);
                               }
                           });
    });
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::cross_v2_node<Ctx>>();
            n.x0 = x0;
            n.xl = xl;
            n.w = w;
            n.b = b;
            n.y = y;
            n.z = z;
        }
    }
    return y;
}

/// DCN-V2 low-rank cross layer, W = U V^T: x0, x_l [..., d], U [d, r], V [d, r], b [d] ->
///   h = x_l V [rows, r],  z = h U^T + b,  x_{l+1} = x0 * z + x_l.
/// Backward with dz = dy * x0, dh = dz U: dx0 += dy z, dx_l += dy + dh V^T, dU += dz^T h,
/// dV += x_l^T dh, db += sum dz; saves x0, x_l, U, V, b, h and z.
template <class Ctx, class T = typename Ctx::value_type>
var<T> cross_v2_low_rank(Ctx& ctx, const var<T>& x0, const var<T>& xl, const var<T>& u, const var<T>& v, const var<T>& b) {
    using B = typename Ctx::backend;
    ctx.check(x0);
    ctx.check(xl);
    detail::cross_check("cross_v2_low_rank", x0, xl);
    const std::int64_t rows = xl.rows(), d = xl.cols();
    XREC_CHECK(u.s.rank == 2 && u.s[0] == d && u.s[1] >= 1, "cross_v2_low_rank: U must be [", d, ", rank], got ",
               u.s.str());
    const std::int64_t r = u.s[1];
    detail::cross_check_param("cross_v2_low_rank", "V", v, shape{d, r});
    detail::cross_check_param("cross_v2_low_rank", "b", b, shape{d});
    var<T> y = ctx.make(xl.s, any_requires_grad<T>(x0, xl, u, v, b));
    T* h = ctx.template scratch<T>(rows * r);
    T* z = y.data;
    if constexpr (Ctx::records)
        if (y.requires_grad()) z = ctx.template scratch<T>(rows * d);
    parallel_for(ctx.pool(), rows, detail::cross_min_rows<B>(2 * d * r), [&](std::int64_t r0, std::int64_t r1, int) {
        const std::int64_t o = r0 * d, cr = r1 - r0;
        kernels::gemm(B{}, false, false, cr, r, d, T(1), xl.data + o, d, v.data, r, T(0), h + r0 * r, r);
        kernels::gemm(B{}, false, true, cr, d, r, T(1), h + r0 * r, r, u.data, r, T(0), z + o, d);
        kernels::add_row_bias(B{}, cr, d, b.data, z + o);
        kernels::cross_combine_fwd(B{}, cr * d, x0.data + o, z + o, xl.data + o, y.data + o);
    });
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::cross_v2_low_rank_node<Ctx>>();
            n.x0 = x0;
            n.xl = xl;
            n.u = u;
            n.v = v;
            n.b = b;
            n.y = y;
            n.h = h;
            n.z = z;
        }
    }
    return y;
}

/// DCN-V2 cross layer with a mixture of K low-rank experts (DCN-Mix): x0, x_l [..., d],
/// U [K, d, r], V [K, d, r], C [K, r, r], G [K, d] (gate), b [d], nonlinearity g:
///   pi = softmax(x_l G^T)                                  [rows, K]
///   u_k = g(g(x_l V_k) C_k^T) U_k^T                        [rows, d]
///   E_k = x0 * (u_k + b)
///   x_{l+1} = sum_k pi_k E_k + x_l = x0 * (sum_k pi_k u_k + b) + x_l   (sum_k pi_k = 1)
/// Backward: the chain rule through every product above (see cross_v2_mixture_node); saves
/// pi, the expert pre-activations and activations, the expert outputs u_k and the mixture.
template <class Ctx, class T = typename Ctx::value_type>
var<T> cross_v2_mixture(Ctx& ctx, const var<T>& x0, const var<T>& xl, const var<T>& u, const var<T>& v, const var<T>& c,
                        const var<T>& gate, const var<T>& b, activation g = activation::tanh) {
    using B = typename Ctx::backend;
    ctx.check(x0);
    ctx.check(xl);
    detail::cross_check("cross_v2_mixture", x0, xl);
    const std::int64_t rows = xl.rows(), d = xl.cols();
    XREC_CHECK(u.s.rank == 3 && u.s[0] >= 1 && u.s[1] == d && u.s[2] >= 1, "cross_v2_mixture: U must be [experts, ", d,
               ", rank], got ", u.s.str());
    const std::int64_t K = u.s[0], r = u.s[2];
    detail::cross_check_param("cross_v2_mixture", "V", v, shape{K, d, r});
    detail::cross_check_param("cross_v2_mixture", "C", c, shape{K, r, r});
    detail::cross_check_param("cross_v2_mixture", "gate", gate, shape{K, d});
    detail::cross_check_param("cross_v2_mixture", "b", b, shape{d});
    var<T> y = ctx.make(xl.s, any_requires_grad<T>(x0, xl, u, v, c, gate, b));
    bool save = false;
    if constexpr (Ctx::records) save = y.requires_grad();
    // Training keeps every expert's intermediates for backward; inference reuses one set.
    const std::int64_t keep = save ? K : 1, nr = rows * r, nd = rows * d;
    T* pi = ctx.template scratch<T>(rows * K);
    T* ppre = ctx.template scratch<T>(keep * nr);
    T* p = ctx.template scratch<T>(keep * nr);
    T* qpre = ctx.template scratch<T>(keep * nr);
    T* q = ctx.template scratch<T>(keep * nr);
    T* uo = ctx.template scratch<T>(keep * nd);
    T* m = save ? ctx.template scratch<T>(nd) : y.data;
    const std::int64_t dr = d * r, rr = r * r;
    parallel_for(ctx.pool(), rows, detail::cross_min_rows<B>(K * (d + 2 * dr + rr)), [&](std::int64_t r0, std::int64_t r1, int) {
        const std::int64_t o = r0 * d, orr = r0 * r, cr = r1 - r0;
        kernels::gemm(B{}, false, true, cr, K, d, T(1), xl.data + o, d, gate.data, d, T(0), pi + r0 * K, K);
        kernels::cross_gate_softmax(B{}, cr, K, pi + r0 * K);
        for (std::int64_t k = 0; k < K; ++k) {
            const std::int64_t s = save ? k : 0;
            T *pp = ppre + s * nr + orr, *pk = p + s * nr + orr, *qp = qpre + s * nr + orr, *qk = q + s * nr + orr;
            T* uk = uo + s * nd + o;
            kernels::gemm(B{}, false, false, cr, r, d, T(1), xl.data + o, d, v.data + k * dr, r, T(0), pp, r);
            kernels::activation_fwd(B{}, g, cr * r, pp, pk);
            kernels::gemm(B{}, false, true, cr, r, r, T(1), pk, r, c.data + k * rr, r, T(0), qp, r);
            kernels::activation_fwd(B{}, g, cr * r, qp, qk);
            kernels::gemm(B{}, false, true, cr, d, r, T(1), qk, r, u.data + k * dr, r, T(0), uk, d);
            kernels::cross_mix_rows(B{}, cr, d, K, k, pi + r0 * K, uk, m + o, k > 0);
        }
        kernels::add_row_bias(B{}, cr, d, b.data, m + o);
        kernels::cross_combine_fwd(B{}, cr * d, x0.data + o, m + o, xl.data + o, y.data + o);
    });
    if constexpr (Ctx::records) {
        if (save) {
            auto& n = ctx.template record<detail::cross_v2_mixture_node<Ctx>>();
            n.x0 = x0;
            n.xl = xl;
            n.u = u;
            n.v = v;
            n.c = c;
            n.gate = gate;
            n.b = b;
            n.y = y;
            n.pi = pi;
            n.ppre = ppre;
            n.p = p;
            n.qpre = qpre;
            n.q = q;
            n.uo = uo;
            n.m = m;
            n.act = g;
        }
    }
    return y;
}

}  // namespace xrec::ops

namespace xrec::layers {

/// DCN cross network (Wang et al. 2017), L cross layers on x0 [batch, d]:
///   x_{l+1} = x0 * (x_l^T w_l) + b_l + x_l,    l = 0 .. L-1,  output x_L [batch, d].
/// Parameters: "<name>.<l>.w" [d] (xavier normal with fans (d, 1), as the reference
/// implementations' [d, 1] kernel) and "<name>.<l>.b" [d] (zeros).
/// Backward: one fused tape node per cross layer; each saves x0, x_l, w_l, b_l and the row
/// scalars x_l^T w_l. Cost O(batch d) per layer.
template <class T = float, class B = cpu<>>
struct cross_net {
    cross_net(param_store<T, B>& store, std::string name, std::int64_t dim, std::int64_t layers)
        : name_(std::move(name)), dim_(dim) {
        XREC_CHECK(dim >= 1 && layers >= 1, "cross_net '", name_, "': needs dim >= 1 and layers >= 1, got dim ", dim,
                   ", layers ", layers);
        for (std::int64_t l = 0; l < layers; ++l) {
            const std::string p = name_ + "." + std::to_string(l);
            w.push_back(store.add(p + ".w", {dim}, init::xavier_normal(), dim, 1));
            b.push_back(store.add(p + ".b", {dim}, init::zeros()));
        }
    }

    template <class Ctx>
    var<T> operator()(Ctx& ctx, const var<T>& x) const {
        static_assert(std::is_same_v<typename Ctx::value_type, T> && std::is_same_v<typename Ctx::backend, B>,
                      "cross_net: the context's value type and backend must match the layer's");
        XREC_CHECK(x.s.rank >= 1 && x.cols() == dim_, "cross_net '", name_, "': input must be [batch, ", dim_, "], got ",
                   x.s.str());
        var<T> xl = x;
        for (std::size_t l = 0; l < w.size(); ++l) xl = ops::cross_v1(ctx, x, xl, ctx.param(w[l]), ctx.param(b[l]));
        return xl;
    }

    std::int64_t dim() const noexcept { return dim_; }
    std::int64_t layers() const noexcept { return static_cast<std::int64_t>(w.size()); }
    const std::string& name() const noexcept { return name_; }

    std::vector<dense_param<T, B>> w, b;  ///< per layer: w_l [d], b_l [d]

private:
    std::string name_;
    std::int64_t dim_;
};

/// Which cross layer a cross_net_v2 stacks.
enum class cross_kind {
    full,      ///< W_l [d, d]
    low_rank,  ///< W_l = U_l V_l^T, U_l, V_l [d, r]
    mixture,   ///< mixture of K low-rank experts with nonlinearities and a softmax gate
};

/// Options of cross_net_v2. `rank` is r for low_rank and mixture; `experts` is K and
/// `expert_activation` the nonlinearity g of the mixture (tanh as in the DCN-V2 paper's
/// code; relu as in TorchRec also works).
struct cross_v2_options {
    std::int64_t layers = 2;
    cross_kind kind = cross_kind::full;
    std::int64_t rank = 0;
    std::int64_t experts = 4;
    activation expert_activation = activation::tanh;
};

/// DCN-V2 cross network (Wang et al. 2021), L cross layers on x0 [batch, d] -> x_L [batch, d].
///
/// full:      x_{l+1} = x0 * (W_l x_l + b_l) + x_l
///            params "<name>.<l>.w" [d, d] ([out, in], as nn.Linear), "<name>.<l>.b" [d].
/// low_rank:  x_{l+1} = x0 * (U_l (V_l^T x_l) + b_l) + x_l
///            params "<name>.<l>.u" [d, r], "<name>.<l>.v" [d, r], "<name>.<l>.b" [d].
/// mixture:   K experts per layer, each E_i(x_l) = x0 * (U_li g(C_li g(V_li^T x_l)) + b_l),
///            gate G_i(x_l) = softmax_i(<g_i, x_l>) over the K experts,
///            x_{l+1} = sum_i G_i(x_l) E_i(x_l) + x_l.
///            params "<name>.<l>.u" [K, d, r], "<name>.<l>.v" [K, d, r], "<name>.<l>.c" [K, r, r],
///            "<name>.<l>.b" [d] (shared by the layer's experts) and "<name>.gate" [K, d] (one
///            bias-free linear gate per expert, shared by all layers).
/// This is the structure of the DCN-V2 paper's mixture code (CrossNetMix in DeepCTR-Torch,
/// LowRankMixtureCrossNet in TorchRec): V projects to rank r, g (tanh by default) is applied
/// before and after the r x r matrix C, U projects back, the bias is added inside the
/// Hadamard product, the gate is a softmax over experts of bias-free linear scores of x_l.
/// Initialisation as the reference code: W, U, V, C xavier normal with PyTorch's fan rules
/// (for [K, a, b]: fan_in = a b, fan_out = K b), biases zero, gate U(-1/sqrt(d), 1/sqrt(d)).
/// Backward: one fused tape node per cross layer, all products through kernels::gemm (the
/// batch is the GEMM's long side); see the ops for what each saves.
template <class T = float, class B = cpu<>>
struct cross_net_v2 {
    cross_net_v2(param_store<T, B>& store, std::string name, std::int64_t dim, cross_v2_options o)
        : name_(std::move(name)), dim_(dim), o_(o) {
        XREC_CHECK(dim >= 1 && o.layers >= 1, "cross_net_v2 '", name_, "': needs dim >= 1 and layers >= 1, got dim ",
                   dim, ", layers ", o.layers);
        const std::int64_t d = dim, r = o.rank, K = o.experts;
        if (o.kind != cross_kind::full)
            XREC_CHECK(r >= 1, "cross_net_v2 '", name_, "': low-rank and mixture layers need rank >= 1, got ", r);
        if (o.kind == cross_kind::mixture) {
            XREC_CHECK(K >= 1, "cross_net_v2 '", name_, "': a mixture needs experts >= 1, got ", K);
            const double bound = 1.0 / std::sqrt(static_cast<double>(d));
            gate = store.add(name_ + ".gate", {K, d}, init::uniform(-bound, bound), d, K);
        }
        for (std::int64_t l = 0; l < o.layers; ++l) {
            const std::string p = name_ + "." + std::to_string(l);
            switch (o.kind) {
                case cross_kind::full: w.push_back(store.add(p + ".w", {d, d}, init::xavier_normal(), d, d)); break;
                case cross_kind::low_rank:
                    u.push_back(store.add(p + ".u", {d, r}, init::xavier_normal(), r, d));
                    v.push_back(store.add(p + ".v", {d, r}, init::xavier_normal(), r, d));
                    break;
                case cross_kind::mixture:
                    u.push_back(store.add(p + ".u", {K, d, r}, init::xavier_normal(), d * r, K * r));
                    v.push_back(store.add(p + ".v", {K, d, r}, init::xavier_normal(), d * r, K * r));
                    c.push_back(store.add(p + ".c", {K, r, r}, init::xavier_normal(), r * r, K * r));
                    break;
            }
            b.push_back(store.add(p + ".b", {d}, init::zeros()));
        }
    }

    template <class Ctx>
    var<T> operator()(Ctx& ctx, const var<T>& x) const {
        static_assert(std::is_same_v<typename Ctx::value_type, T> && std::is_same_v<typename Ctx::backend, B>,
                      "cross_net_v2: the context's value type and backend must match the layer's");
        XREC_CHECK(x.s.rank >= 1 && x.cols() == dim_, "cross_net_v2 '", name_, "': input must be [batch, ", dim_,
                   "], got ", x.s.str());
        var<T> xl = x;
        for (std::size_t l = 0; l < b.size(); ++l) {
            switch (o_.kind) {
                case cross_kind::full: xl = ops::cross_v2(ctx, x, xl, ctx.param(w[l]), ctx.param(b[l])); break;
                case cross_kind::low_rank:
                    xl = ops::cross_v2_low_rank(ctx, x, xl, ctx.param(u[l]), ctx.param(v[l]), ctx.param(b[l]));
                    break;
                case cross_kind::mixture:
                    xl = ops::cross_v2_mixture(ctx, x, xl, ctx.param(u[l]), ctx.param(v[l]), ctx.param(c[l]),
                                               ctx.param(gate), ctx.param(b[l]), o_.expert_activation);
                    break;
            }
        }
        return xl;
    }

    std::int64_t dim() const noexcept { return dim_; }
    const cross_v2_options& options() const noexcept { return o_; }
    const std::string& name() const noexcept { return name_; }

    std::vector<dense_param<T, B>> w, u, v, c, b;  ///< per layer, those the kind uses
    dense_param<T, B> gate;                       ///< mixture only: [K, d]

private:
    std::string name_;
    std::int64_t dim_;
    cross_v2_options o_;
};

}  // namespace xrec::layers
