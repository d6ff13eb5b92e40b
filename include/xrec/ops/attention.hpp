#pragma once
// Attention ops: multi-head scaled dot-product attention with causal and key-padding
// masks and dropout on the attention weights; softmax and weighted sums over jagged
// segments (one segment of rows per batch row, the layout of behaviour sequences); a row
// mask for outputs that must be exactly zero; learned positions added to a sequence.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "xrec/backend/cpu_kernels.hpp"
#include "xrec/backend/kernels.hpp"
#include "xrec/backend/policy.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/core/var.hpp"
#include "xrec/ops/common.hpp"

namespace xrec::kernels {

XREC_KERNEL_FALLBACK(segment_weighted_sum)
XREC_KERNEL_FALLBACK(segment_weighted_sum_bwd)

/// out = sum_j w[j] x[j, :] over the len rows of one segment (x [len, D]), rows added in
/// order; an empty segment gives zeros.
template <class T, class A>
void segment_weighted_sum(cpu<A>, std::int64_t len, std::int64_t D, const T* w, const T* x, T* out) {
    fill(cpu<A>{}, D, T(0), out);
    for (std::int64_t j = 0; j < len; ++j) axpy(cpu<A>{}, D, w[j], x + j * D, out);
}

/// Backward of segment_weighted_sum given g = dout [D]: gx[j, :] += w[j] g (gx not null),
/// gw[j] += <g, x[j, :]> (gw not null).
template <class T, class A>
void segment_weighted_sum_bwd(cpu<A>, std::int64_t len, std::int64_t D, const T* w, const T* x, const T* g, T* gx,
                              T* gw) {
    for (std::int64_t j = 0; j < len; ++j) {
        if (gx) axpy(cpu<A>{}, D, w[j], g, gx + j * D);
        if (gw) gw[j] += dot(cpu<A>{}, D, g, x + j * D);
    }
}

}  // namespace xrec::kernels

namespace xrec::ops {

/// Which keys each query may attend to, for a batch of B rows with Tq queries and Tk keys.
/// Key j of batch row b is valid when j < lengths[b] (if `lengths` is given, B entries in
/// [0, Tk]) and key_valid[b * Tk + j] != 0 (if `key_valid` is given, B * Tk bytes).
/// Note the polarity: key_valid is 1 for keys to attend to, the complement of PyTorch's
/// key_padding_mask (True = ignore). With `causal`, query i may also only see keys j <= i
/// (aligned at the top left, as torch.nn.Transformer.generate_square_subsequent_mask and
/// scaled_dot_product_attention(is_causal=True)). A query with no valid key is "dead": its
/// attention weights and output are exactly zero (PyTorch gives NaN there). The spans are
/// read during the call only.
struct attention_mask {
    bool causal = false;
    std::span<const std::int64_t> lengths;
    std::span<const std::uint8_t> key_valid;

    bool any() const noexcept { return causal || !lengths.empty() || !key_valid.empty(); }
};

namespace detail {

/// Throws xrec::error naming `who` unless the mask fits a batch of B rows with Tk keys.
template <class... Who>
void check_attention_mask(const attention_mask& m, std::int64_t batch, std::int64_t tk, const Who&... who) {
    if (!m.lengths.empty()) {
        XREC_CHECK(static_cast<std::int64_t>(m.lengths.size()) == batch, who..., ": mask lengths has ", m.lengths.size(),
                   " entries for a batch of ", batch);
        for (std::size_t b = 0; b < m.lengths.size(); ++b)
            XREC_CHECK(m.lengths[b] >= 0 && m.lengths[b] <= tk, who..., ": mask length ", m.lengths[b], " of row ", b,
                       " is outside [0, ", tk, "]");
    }
    if (!m.key_valid.empty())
        XREC_CHECK(static_cast<std::int64_t>(m.key_valid.size()) == batch * tk, who..., ": key_valid has ",
                   m.key_valid.size(), " bytes, needs batch * keys = ", batch, " * ", tk, " = ", batch * tk);
}

inline bool key_is_valid(const attention_mask& m, std::int64_t b, std::int64_t j, std::int64_t tk) {
    if (!m.lengths.empty() && j >= m.lengths[static_cast<std::size_t>(b)]) return false;
    if (!m.key_valid.empty() && !m.key_valid[static_cast<std::size_t>(b * tk + j)]) return false;
    return true;
}

/// keep[i * Tk + j] = 1 when query i of batch row b may attend to key j.
inline void build_keep_mask(const attention_mask& m, std::int64_t b, std::int64_t tq, std::int64_t tk, std::uint8_t* keep) {
    for (std::int64_t j = 0; j < tk; ++j) keep[j] = key_is_valid(m, b, j, tk) ? 1 : 0;
    for (std::int64_t i = 1; i < tq; ++i) std::copy(keep, keep + tk, keep + i * tk);
    if (m.causal)
        for (std::int64_t i = 0; i < tq; ++i)
            for (std::int64_t j = i + 1; j < tk; ++j) keep[i * tk + j] = 0;
}

/// dead[b * Tq + i] = 1 when query i of batch row b has no valid key; returns how many.
inline std::int64_t dead_queries(const attention_mask& m, std::int64_t batch, std::int64_t tq, std::int64_t tk,
                                 std::uint8_t* dead) {
    std::int64_t count = 0;
    for (std::int64_t b = 0; b < batch; ++b) {
        std::int64_t first = tk;  // the first valid key of the row
        for (std::int64_t j = 0; j < tk; ++j)
            if (key_is_valid(m, b, j, tk)) {
                first = j;
                break;
            }
        for (std::int64_t i = 0; i < tq; ++i) {
            const bool d = m.causal ? first > i || first == tk : first == tk;
            dead[b * tq + i] = d ? 1 : 0;
            count += d;
        }
    }
    return count;
}

/// Tape node of scaled dot-product attention. q, k and v are seen through (column offset,
/// leading dimension), so that one packed [B, T, 3D] projection serves all three; their
/// gradients accumulate at the same places (q, k and v may be one var). Saves the
/// probabilities P [B, H, Tq, Tk], the dropped-out probabilities Pd (P itself without
/// dropout) and the dropout multipliers M (or null).
template <class Ctx>
struct attention_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> q, k, v, y;
    std::int64_t qoff, koff, voff, ldq, ldk, ldv;
    std::int64_t batch, tq, tk, dim, heads;
    T scale;
    const T* p;
    const T* pd;
    const T* m;

    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<attention_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        T* gq = ctx.grad(n.q);
        T* gk = ctx.grad(n.k);
        T* gv = ctx.grad(n.v);
        const std::int64_t H = n.heads, tq = n.tq, tk = n.tk, D = n.dim, dh = D / H, tt = tq * tk;
        const std::int64_t items = n.batch * H;
        const int threads = ctx.threads();
        // Per thread: dP (gradient of the dropped-out weights) and dS (of the scores).
        T* work = (gq || gk) ? ctx.template scratch<T>(2 * tt * threads) : nullptr;
        const std::int64_t min_items = std::max<std::int64_t>(2, policy<B>::elementwise_parallel_min / std::max<std::int64_t>(1, tt * (4 * dh + 4)));
        parallel_for(ctx.pool(), items, min_items, [&](std::int64_t i0, std::int64_t i1, int t) {
            T* dp = work ? work + 2 * tt * t : nullptr;
            T* ds = work ? dp + tt : nullptr;
            for (std::int64_t it = i0; it < i1; ++it) {
                const std::int64_t b = it / H, h = it % H;
                const T* go = gy + b * tq * D + h * dh;
                const T* qp = n.q.data + b * tq * n.ldq + n.qoff + h * dh;
                const T* kp = n.k.data + b * tk * n.ldk + n.koff + h * dh;
                const T* vp = n.v.data + b * tk * n.ldv + n.voff + h * dh;
                const T* pi = n.p + it * tt;
                const T* pdi = n.pd + it * tt;
                // dV += Pd^T dO
                if (gv)
                    kernels::gemm(B{}, true, false, tk, dh, tq, T(1), pdi, tk, go, D, T(1),
                                  gv + b * tk * n.ldv + n.voff + h * dh, n.ldv);
                if (!work) continue;
                // dPd = dO V^T, dP = dPd * M, dS = softmax'(P) dP
                kernels::gemm(B{}, false, true, tq, tk, dh, T(1), go, D, vp, n.ldv, T(0), dp, tk);
                if (n.m) kernels::mul(B{}, tt, dp, n.m + it * tt, dp);
                kernels::fill(B{}, tt, T(0), ds);
                kernels::softmax_bwd_rows(B{}, tq, tk, pi, dp, ds);
                // S = scale Q K^T: dQ += scale dS K, dK += scale dS^T Q
                if (gq)
                    kernels::gemm(B{}, false, false, tq, dh, tk, n.scale, ds, tk, kp, n.ldk, T(1),
                                  gq + b * tq * n.ldq + n.qoff + h * dh, n.ldq);
                if (gk)
                    kernels::gemm(B{}, true, false, tk, dh, tq, n.scale, ds, tk, qp, n.ldq, T(1),
                                  gk + b * tk * n.ldk + n.koff + h * dh, n.ldk);
            }
        });
    }
};

/// The shared body of the attention ops: q rows hold their D query features at columns
/// [qoff, qoff + D) of a row of width ldq (likewise k, v); the result is [B, Tq, D] with the
/// heads side by side (head h at columns [h D/H, (h+1) D/H)).
template <class Ctx, class T>
var<T> attention_impl(Ctx& ctx, const var<T>& q, std::int64_t qoff, std::int64_t ldq, const var<T>& k, std::int64_t koff,
                      std::int64_t ldk, const var<T>& v, std::int64_t voff, std::int64_t ldv, std::int64_t batch,
                      std::int64_t tq, std::int64_t tk, std::int64_t dim, std::int64_t heads, const attention_mask& mask,
                      double dropout_p) {
    using B = typename Ctx::backend;
    const std::int64_t dh = dim / heads, tt = tq * tk, items = batch * heads;
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(dh)));
    var<T> y = ctx.make(shape{batch, tq, dim}, any_requires_grad<T>(q, k, v));
    T* P = ctx.template scratch<T>(items * tt);
    bool drop = false;
    if constexpr (Ctx::records) drop = ctx.training() && dropout_p > 0;
    T* M = drop ? ctx.template scratch<T>(items * tt) : nullptr;
    T* PD = drop ? ctx.template scratch<T>(items * tt) : P;
    rng_stream rs{};
    std::uint32_t threshold = 0;
    T keep_scale = T(1);
    if (drop) {
        rs = ctx.next_stream();
        const bool all = dropout_p >= 1;
        threshold = all ? std::uint32_t{0} : static_cast<std::uint32_t>(std::ldexp(dropout_p, 32));
        keep_scale = all ? T(0) : static_cast<T>(1.0 / (1.0 - dropout_p));
    }
    const bool masked = mask.any();
    const int threads = ctx.threads();
    std::uint8_t* keep = nullptr;
    // Host memory: each thread builds the keep mask of the batch row it is on, in place.
    // Device memory: the masks of all batch rows are built on the host and copied over once.
    bool keep_all = false;
    if (masked) {
        if constexpr (backend_memory<B>::host_accessible) {
            keep = ctx.template scratch<std::uint8_t>(tt * threads);
        } else {
            keep = ctx.template scratch<std::uint8_t>(batch * tt);
            std::vector<std::uint8_t> host(static_cast<std::size_t>(batch * tt));
            for (std::int64_t b = 0; b < batch; ++b) build_keep_mask(mask, b, tq, tk, host.data() + b * tt);
            backend_memory<B>::copy(keep, host.data(), host.size());
            keep_all = true;
        }
    }
    const std::int64_t min_items = std::max<std::int64_t>(2, policy<B>::elementwise_parallel_min / std::max<std::int64_t>(1, tt * (2 * dh + 4)));
    parallel_for(ctx.pool(), items, min_items, [&](std::int64_t i0, std::int64_t i1, int t) {
        std::uint8_t* kp = keep && !keep_all ? keep + tt * t : nullptr;
        std::int64_t built_for = -1;
        for (std::int64_t it = i0; it < i1; ++it) {
            const std::int64_t b = it / heads, h = it % heads;
            const T* qp = q.data + b * tq * ldq + qoff + h * dh;
            const T* kk = k.data + b * tk * ldk + koff + h * dh;
            const T* vp = v.data + b * tk * ldv + voff + h * dh;
            T* s = P + it * tt;
            kernels::gemm(B{}, false, true, tq, tk, dh, scale, qp, ldq, kk, ldk, T(0), s, tk);
            if (keep_all) {
                kp = keep + b * tt;
            } else if (kp && built_for != b) {
                build_keep_mask(mask, b, tq, tk, kp);
                built_for = b;
            }
            kernels::softmax_rows(B{}, tq, tk, s, kp, s);
            if (drop) {
                kernels::dropout_mask(B{}, rs, static_cast<std::uint64_t>(it * tt), tt, threshold, keep_scale, M + it * tt);
                kernels::mul(B{}, tt, s, M + it * tt, PD + it * tt);
            }
            kernels::gemm(B{}, false, false, tq, dh, tk, T(1), PD + it * tt, tk, vp, ldv, T(0),
                          y.data + b * tq * dim + h * dh, dim);
        }
    });
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<attention_node<Ctx>>();
            n.q = q;
            n.k = k;
            n.v = v;
            n.y = y;
            n.qoff = qoff;
            n.koff = koff;
            n.voff = voff;
            n.ldq = ldq;
            n.ldk = ldk;
            n.ldv = ldv;
            n.batch = batch;
            n.tq = tq;
            n.tk = tk;
            n.dim = dim;
            n.heads = heads;
            n.scale = scale;
            n.p = P;
            n.pd = PD;
            n.m = M;
        }
    }
    return y;
}

}  // namespace detail

/// Multi-head scaled dot-product attention (Vaswani et al. 2017) without projections:
/// q [B, Tq, D], k and v [B, Tk, D], H heads of width dh = D / H. For every batch row b
/// and head h (columns [h dh, (h+1) dh)):
///   S = Q_bh K_bh^T / sqrt(dh)                       [Tq, Tk]
///   P = softmax over the keys each query may see      (see attention_mask; dead rows 0)
///   Pd = P * M, M = inverted-dropout multipliers with rate p (training only)
///   Y_bh = Pd V_bh                                   [Tq, dh]
/// Result [B, Tq, D], heads side by side. q, k and v may be the same var (self-attention).
/// Backward (one node): dV += Pd^T dY, dP = (dY V^T) * M, dS = P * (dP - rowsum(P dP)),
/// dQ += dS K / sqrt(dh), dK += dS^T Q / sqrt(dh); saves P, Pd and M ([B, H, Tq, Tk] each).
/// The dropout mask comes from ctx.next_stream() (element (b, h, i, j) at position
/// ((b H + h) Tq + i) Tk + j), so it depends only on the seed and the step.
template <class Ctx, class T = typename Ctx::value_type>
var<T> scaled_dot_product_attention(Ctx& ctx, const var<T>& q, const var<T>& k, const var<T>& v, std::int64_t heads,
                                    const attention_mask& mask = {}, double dropout_p = 0) {
    ctx.check(q);
    ctx.check(k);
    ctx.check(v);
    const char* op = "scaled_dot_product_attention";
    XREC_CHECK(q.s.rank == 3 && k.s.rank == 3 && v.s.rank == 3, op, ": q, k, v must be [batch, len, dim], got ",
               q.s.str(), ", ", k.s.str(), ", ", v.s.str());
    XREC_CHECK(k.s == v.s && q.s[0] == k.s[0] && q.s[2] == k.s[2], op, ": q ", q.s.str(), ", k ", k.s.str(), " and v ",
               v.s.str(), " disagree (k and v must be equal, batch and dim shared with q)");
    const std::int64_t D = q.s[2];
    XREC_CHECK(heads >= 1 && D % heads == 0, op, ": dim ", D, " of q ", q.s.str(), " is not divisible by ", heads, " heads");
    XREC_CHECK(dropout_p >= 0 && dropout_p <= 1, op, ": dropout must be in [0, 1], got ", dropout_p);
    detail::check_attention_mask(mask, q.s[0], k.s[1], op);
    return detail::attention_impl(ctx, q, 0, D, k, 0, D, v, 0, D, q.s[0], q.s[1], k.s[1], D, heads, mask, dropout_p);
}

/// Self-attention on a packed projection qkv [B, T, 3D] (q, k, v side by side, the layout
/// of x in_proj_weight^T): the same as scaled_dot_product_attention(q, k, v) on the three
/// column blocks, without copying them apart. Result [B, T, D].
template <class Ctx, class T = typename Ctx::value_type>
var<T> scaled_dot_product_attention_packed(Ctx& ctx, const var<T>& qkv, std::int64_t heads,
                                           const attention_mask& mask = {}, double dropout_p = 0) {
    ctx.check(qkv);
    const char* op = "scaled_dot_product_attention_packed";
    XREC_CHECK(qkv.s.rank == 3 && qkv.s[2] % 3 == 0, op, ": input must be [batch, len, 3 dim], got ", qkv.s.str());
    const std::int64_t D = qkv.s[2] / 3;
    XREC_CHECK(heads >= 1 && D % heads == 0, op, ": dim ", D, " of ", qkv.s.str(), " is not divisible by ", heads, " heads");
    XREC_CHECK(dropout_p >= 0 && dropout_p <= 1, op, ": dropout must be in [0, 1], got ", dropout_p);
    detail::check_attention_mask(mask, qkv.s[0], qkv.s[1], op);
    return detail::attention_impl(ctx, qkv, 0, 3 * D, qkv, D, 3 * D, qkv, 2 * D, 3 * D, qkv.s[0], qkv.s[1], qkv.s[1], D,
                                  heads, mask, dropout_p);
}

namespace detail {
/// y = x with the flagged rows zeroed. Backward saves the flags: dx += dy on kept rows.
template <class Ctx>
struct zero_rows_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x, y;
    const std::uint8_t* flags;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<zero_rows_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        T* gx = ctx.grad(n.x);
        if (!gy || !gx) return;
        const std::int64_t rows = n.x.rows(), cols = n.x.cols();
        for (std::int64_t r = 0; r < rows; ++r)
            if (!n.flags[r]) kernels::add(B{}, cols, gx + r * cols, gy + r * cols, gx + r * cols);
    }
};
}  // namespace detail

/// y = x with every row r (of x seen as [rows, cols]) whose flag is non-zero set to exactly
/// zero: the outputs of dead attention queries. `flags` has x.rows() bytes and is copied.
/// Backward: dx += dy on the rows kept, nothing on the zeroed ones.
template <class Ctx, class T = typename Ctx::value_type>
var<T> zero_rows(Ctx& ctx, const var<T>& x, const std::uint8_t* flags) {
    using B = typename Ctx::backend;
    ctx.check(x);
    const std::int64_t rows = x.rows(), cols = x.cols();
    var<T> y = ctx.make(x.s, x.requires_grad());
    std::uint8_t* kept = nullptr;
    if constexpr (Ctx::records)
        if (y.requires_grad()) kept = ctx.template tape_scratch<std::uint8_t>(rows);  // host: backward reads it there
    for (std::int64_t r = 0; r < rows; ++r) {
        if (flags[r])
            kernels::fill(B{}, cols, T(0), y.data + r * cols);
        else
            kernels::copy(B{}, cols, x.data + r * cols, y.data + r * cols);
        if (kept) kept[r] = flags[r];
    }
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::zero_rows_node<Ctx>>();
            n.x = x;
            n.y = y;
            n.flags = kept;
        }
    }
    return y;
}

// ---------------------------------------------------------------------------------------
// Jagged segments: batch row b owns rows [offsets[b], offsets[b+1]) of an [N, ...] tensor.
// ---------------------------------------------------------------------------------------

namespace detail {

/// Throws xrec::error naming `who` unless offsets has batch+1 entries, starts at 0, never
/// decreases and ends at n.
template <class... Who>
void check_segments(std::span<const std::int64_t> offsets, std::int64_t n, const Who&... who) {
    XREC_CHECK(!offsets.empty(), who..., ": offsets need batch+1 entries, got none");
    XREC_CHECK(offsets.front() == 0, who..., ": offsets[0] must be 0, got ", offsets.front());
    for (std::size_t b = 1; b < offsets.size(); ++b)
        XREC_CHECK(offsets[b] >= offsets[b - 1], who..., ": offsets decrease at row ", b - 1, " (", offsets[b - 1], " > ",
                   offsets[b], ")");
    XREC_CHECK(offsets.back() == n, who..., ": last offset ", offsets.back(), " != ", n, " rows of the sequence");
}

/// Copies the offsets onto the tape (a node never reads caller memory in backward).
template <class Ctx>
const std::int64_t* keep_offsets(Ctx& ctx, std::span<const std::int64_t> offsets) {
    auto* p = ctx.template tape_scratch<std::int64_t>(static_cast<std::int64_t>(offsets.size()));
    std::copy(offsets.begin(), offsets.end(), p);
    return p;
}

/// Segments per thread chunk for work of about `per_row` operations per sequence row.
template <class B>
std::int64_t segment_min(std::int64_t batch, std::int64_t rows, std::int64_t per_row) {
    const std::int64_t avg = batch > 0 ? std::max<std::int64_t>(1, rows / batch) : 1;
    return std::max<std::int64_t>(2, policy<B>::elementwise_parallel_min / std::max<std::int64_t>(1, avg * per_row));
}

/// y = softmax within each segment. Backward saves y: dx += y * (dy - <y, dy>) per segment.
template <class Ctx>
struct jagged_softmax_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x, y;
    const std::int64_t* offsets;
    std::int64_t batch;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<jagged_softmax_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        T* gx = ctx.grad(n.x);
        if (!gy || !gx) return;
        parallel_for(ctx.pool(), n.batch, segment_min<B>(n.batch, n.x.numel(), 8), [&](std::int64_t b0, std::int64_t b1, int) {
            for (std::int64_t b = b0; b < b1; ++b) {
                const std::int64_t s = n.offsets[b], len = n.offsets[b + 1] - s;
                if (len > 0) kernels::softmax_bwd_rows(B{}, 1, len, n.y.data + s, gy + s, gx + s);
            }
        });
    }
};

/// y[b] = sum_{j in segment b} w[j] x[j, :]. Backward saves w and x:
/// dx[j] += w[j] dy[b], dw[j] += <dy[b], x[j]>.
template <class Ctx>
struct jagged_weighted_sum_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> w, x, y;
    const std::int64_t* offsets;
    std::int64_t batch;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<jagged_weighted_sum_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        T* gw = ctx.grad(n.w);
        T* gx = ctx.grad(n.x);
        if (!gw && !gx) return;
        const std::int64_t D = n.x.cols();
        parallel_for(ctx.pool(), n.batch, segment_min<B>(n.batch, n.x.rows(), 4 * D), [&](std::int64_t b0, std::int64_t b1, int) {
            for (std::int64_t b = b0; b < b1; ++b) {
                const std::int64_t s = n.offsets[b];
                kernels::segment_weighted_sum_bwd(B{}, n.offsets[b + 1] - s, D, static_cast<const T*>(n.w.data + s),
                                                  static_cast<const T*>(n.x.data + s * D), gy + b * D,
                                                  gx ? gx + s * D : nullptr, gw ? gw + s : nullptr);
            }
        });
    }
};

}  // namespace detail

/// Softmax of x [N] or [N, 1] within each segment [offsets[b], offsets[b+1]) (B+1 offsets
/// ending at N): y[j] = exp(x[j] - m_b) / sum_{i in b} exp(x[i] - m_b). Empty segments
/// contribute nothing. Result has x's shape. Backward (one node) saves y.
template <class Ctx, class T = typename Ctx::value_type>
var<T> jagged_softmax(Ctx& ctx, const var<T>& x, std::span<const std::int64_t> offsets) {
    using B = typename Ctx::backend;
    ctx.check(x);
    XREC_CHECK(x.s.rank == 1 || (x.s.rank == 2 && x.s[1] == 1), "jagged_softmax: scores must be [N] or [N, 1], got ",
               x.s.str());
    detail::check_segments(offsets, x.numel(), "jagged_softmax");
    const std::int64_t batch = static_cast<std::int64_t>(offsets.size()) - 1;
    var<T> y = ctx.make(x.s, x.requires_grad());
    parallel_for(ctx.pool(), batch, detail::segment_min<B>(batch, x.numel(), 8), [&](std::int64_t b0, std::int64_t b1, int) {
        for (std::int64_t b = b0; b < b1; ++b) {
            const std::int64_t s = offsets[static_cast<std::size_t>(b)], len = offsets[static_cast<std::size_t>(b + 1)] - s;
            if (len > 0) kernels::softmax_rows(B{}, 1, len, x.data + s, nullptr, y.data + s);
        }
    });
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::jagged_softmax_node<Ctx>>();
            n.x = x;
            n.y = y;
            n.offsets = detail::keep_offsets(ctx, offsets);
            n.batch = batch;
        }
    }
    return y;
}

/// Weighted sum of the rows of each segment: w [N] or [N, 1], x [N, D], offsets B+1 entries
/// ending at N -> y [B, D], y[b] = sum_{j in segment b} w[j] x[j]; an empty segment gives a
/// zero row. Backward (one node) saves w and x: dx[j] += w[j] dy[b], dw[j] += <dy[b], x[j]>.
template <class Ctx, class T = typename Ctx::value_type>
var<T> jagged_weighted_sum(Ctx& ctx, const var<T>& w, const var<T>& x, std::span<const std::int64_t> offsets) {
    using B = typename Ctx::backend;
    ctx.check(w);
    ctx.check(x);
    XREC_CHECK(x.s.rank == 2, "jagged_weighted_sum: rows must be [N, D], got ", x.s.str());
    XREC_CHECK((w.s.rank == 1 || (w.s.rank == 2 && w.s[1] == 1)) && w.numel() == x.rows(),
               "jagged_weighted_sum: weights ", w.s.str(), " do not match rows ", x.s.str(), " (need [N] or [N, 1])");
    detail::check_segments(offsets, x.rows(), "jagged_weighted_sum");
    const std::int64_t batch = static_cast<std::int64_t>(offsets.size()) - 1, D = x.cols();
    var<T> y = ctx.make(shape{batch, D}, any_requires_grad<T>(w, x));
    parallel_for(ctx.pool(), batch, detail::segment_min<B>(batch, x.rows(), 2 * D), [&](std::int64_t b0, std::int64_t b1, int) {
        for (std::int64_t b = b0; b < b1; ++b) {
            const std::int64_t s = offsets[static_cast<std::size_t>(b)];
            kernels::segment_weighted_sum(B{}, offsets[static_cast<std::size_t>(b + 1)] - s, D,
                                          static_cast<const T*>(w.data + s), static_cast<const T*>(x.data + s * D),
                                          y.data + b * D);
        }
    });
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::jagged_weighted_sum_node<Ctx>>();
            n.w = w;
            n.x = x;
            n.y = y;
            n.offsets = detail::keep_offsets(ctx, offsets);
            n.batch = batch;
        }
    }
    return y;
}

// ---------------------------------------------------------------------------------------
// Learned positions
// ---------------------------------------------------------------------------------------

namespace detail {
/// y[b, t] = x[b, t] + P[t]. Backward saves nothing but handles: dx += dy,
/// dP[t] += sum_b dy[b, t] (batch rows added in order).
template <class Ctx>
struct add_positions_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x, pos, y;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<add_positions_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        const std::int64_t batch = n.x.s[0], len = n.x.s[1] * n.x.s[2];
        if (T* gx = ctx.grad(n.x))
            parallel_for(ctx.pool(), batch * len, policy<B>::elementwise_parallel_min,
                         [&](std::int64_t i0, std::int64_t i1, int) { kernels::add(B{}, i1 - i0, gx + i0, gy + i0, gx + i0); });
        if (T* gp = ctx.grad(n.pos))
            for (std::int64_t b = 0; b < batch; ++b) kernels::add(B{}, len, gp, gy + b * len, gp);
    }
};
}  // namespace detail

/// x [B, T, D] plus learned positions: y[b, t, :] = x[b, t, :] + pos[t, :], with pos
/// [max_len, D] (rows T .. max_len - 1 unused), T <= max_len. One node; saves no values.
template <class Ctx, class T = typename Ctx::value_type>
var<T> add_positions(Ctx& ctx, const var<T>& x, const var<T>& pos) {
    using B = typename Ctx::backend;
    ctx.check(x);
    XREC_CHECK(x.s.rank == 3, "add_positions: input must be [batch, len, dim], got ", x.s.str());
    XREC_CHECK(pos.s.rank == 2 && pos.s[1] == x.s[2] && pos.s[0] >= x.s[1], "add_positions: positions ", pos.s.str(),
               " do not cover input ", x.s.str(), " (need [max_len >= ", x.s[1], ", ", x.s[2], "])");
    const std::int64_t batch = x.s[0], len = x.s[1] * x.s[2];
    var<T> y = ctx.make(x.s, any_requires_grad<T>(x, pos));
    parallel_for(ctx.pool(), batch, std::max<std::int64_t>(2, policy<B>::elementwise_parallel_min / std::max<std::int64_t>(1, len)),
                 [&](std::int64_t b0, std::int64_t b1, int) {
                     for (std::int64_t b = b0; b < b1; ++b) kernels::add(B{}, len, x.data + b * len, pos.data, y.data + b * len);
                 });
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::add_positions_node<Ctx>>();
            n.x = x;
            n.pos = pos;
            n.y = y;
        }
    }
    return y;
}

}  // namespace xrec::ops
