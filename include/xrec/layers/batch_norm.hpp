#pragma once
// Batch normalisation over the feature axis (Ioffe & Szegedy 2015), PyTorch's BatchNorm1d
// conventions: biased batch variance to normalise, unbiased variance in the running average.
#include <algorithm>
#include <cmath>
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

XREC_KERNEL_FALLBACK(bn_col_moments)
XREC_KERNEL_FALLBACK(bn_col_apply)
XREC_KERNEL_FALLBACK(bn_col_grad_sums)
XREC_KERNEL_FALLBACK(bn_col_grad_apply)
XREC_KERNEL_FALLBACK(bn_stats_from_batch)
XREC_KERNEL_FALLBACK(bn_stats_from_running)
XREC_KERNEL_FALLBACK(bn_scale_rstd)

// The column kernels see columns [0, n) of a row-major matrix with `rows` rows and leading
// dimension ld, so that a caller can hand each thread a block of columns (every column is
// then summed by one thread, in row order, whatever the thread count).

/// mean[c] = sum_r x[r, c] / rows and var[c] = sum_r (x[r, c] - mean[c])^2 / rows (biased),
/// in two passes so that a large mean costs no precision. rows >= 1.
template <class T, class A>
void bn_col_moments(cpu<A>, std::int64_t rows, std::int64_t n, std::int64_t ld, const T* x, T* mean, T* var) {
    using bt = xsimd::batch<T, A>;
    std::fill(mean, mean + n, T(0));
    std::fill(var, var + n, T(0));
    for (std::int64_t r = 0; r < rows; ++r) add(cpu<A>{}, n, mean, x + r * ld, mean);
    const T inv = T(1) / static_cast<T>(rows);
    scale(cpu<A>{}, n, inv, mean, mean);
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * ld;
        detail::simd_loop<T, A>(
            n,
            [&](std::int64_t c) {
                const bt d = bt::load_unaligned(xr + c) - bt::load_unaligned(mean + c);
                (bt::load_unaligned(var + c) + d * d).store_unaligned(var + c);
            },
            [&](std::int64_t c) {
                const T d = xr[c] - mean[c];
                var[c] += d * d;
            });
    }
    scale(cpu<A>{}, n, inv, var, var);
}

/// y[r, c] = (x[r, c] - m[c]) * a[c] + b[c] for `rows` rows of width n (x and y with
/// leading dimension n); b null means 0.
template <class T, class A>
void bn_col_apply(cpu<A>, std::int64_t rows, std::int64_t n, const T* x, const T* m, const T* a, const T* b, T* y) {
    using bt = xsimd::batch<T, A>;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * n;
        T* yr = y + r * n;
        detail::simd_loop<T, A>(
            n,
            [&](std::int64_t c) {
                bt v = (bt::load_unaligned(xr + c) - bt::load_unaligned(m + c)) * bt::load_unaligned(a + c);
                if (b) v += bt::load_unaligned(b + c);
                v.store_unaligned(yr + c);
            },
            [&](std::int64_t c) {
                T v = (xr[c] - m[c]) * a[c];
                if (b) v += b[c];
                yr[c] = v;
            });
    }
}

/// Column sums for the backward of a normalisation, with xhat = (x - m) * rstd:
///   s1[c] += sum_r g[r, c],   s2[c] += sum_r g[r, c] * xhat[r, c].
template <class T, class A>
void bn_col_grad_sums(cpu<A>, std::int64_t rows, std::int64_t n, std::int64_t ld, const T* x, const T* m, const T* rstd,
                      const T* g, T* s1, T* s2) {
    using bt = xsimd::batch<T, A>;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * ld;
        const T* gr = g + r * ld;
        detail::simd_loop<T, A>(
            n,
            [&](std::int64_t c) {
                const bt gv = bt::load_unaligned(gr + c);
                const bt xh = (bt::load_unaligned(xr + c) - bt::load_unaligned(m + c)) * bt::load_unaligned(rstd + c);
                (bt::load_unaligned(s1 + c) + gv).store_unaligned(s1 + c);
                (bt::load_unaligned(s2 + c) + gv * xh).store_unaligned(s2 + c);
            },
            [&](std::int64_t c) {
                const T xh = (xr[c] - m[c]) * rstd[c];
                s1[c] += gr[c];
                s2[c] += gr[c] * xh;
            });
    }
}

/// The input gradient of a normalisation with batch statistics, for `rows` rows of width n:
///   dx[r, c] += k[c] * (g[r, c] - u1[c] - xhat[r, c] * u2[c])
/// with xhat = (x - m) * rstd and u1, u2 the column means of g and g * xhat.
template <class T, class A>
void bn_col_grad_apply(cpu<A>, std::int64_t rows, std::int64_t n, const T* x, const T* m, const T* rstd, const T* g,
                       const T* k, const T* u1, const T* u2, T* dx) {
    using bt = xsimd::batch<T, A>;
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * n;
        const T* gr = g + r * n;
        T* dr = dx + r * n;
        detail::simd_loop<T, A>(
            n,
            [&](std::int64_t c) {
                const bt xh = (bt::load_unaligned(xr + c) - bt::load_unaligned(m + c)) * bt::load_unaligned(rstd + c);
                const bt t = bt::load_unaligned(gr + c) - bt::load_unaligned(u1 + c) - xh * bt::load_unaligned(u2 + c);
                (bt::load_unaligned(dr + c) + bt::load_unaligned(k + c) * t).store_unaligned(dr + c);
            },
            [&](std::int64_t c) {
                const T xh = (xr[c] - m[c]) * rstd[c];
                dr[c] += k[c] * (gr[c] - u1[c] - xh * u2[c]);
            });
    }
}

/// Finishes batch statistics over n columns: given the batch mean and the biased variance
/// (in `var_rstd`), updates the running averages PyTorch's way when they are not null,
///   running_mean = (1 - mom) running_mean + mom mean
///   running_var  = (1 - mom) running_var  + mom var unbias
/// and overwrites var_rstd with rstd = 1 / sqrt(var + eps).
template <class T, class A>
void bn_stats_from_batch(cpu<A>, std::int64_t n, T mom, T unbias, T eps, const T* mean, T* var_rstd, T* running_mean,
                         T* running_var) {
    for (std::int64_t c = 0; c < n; ++c) {
        if (running_mean) running_mean[c] = (T(1) - mom) * running_mean[c] + mom * mean[c];
        if (running_var) running_var[c] = (T(1) - mom) * running_var[c] + mom * var_rstd[c] * unbias;
        var_rstd[c] = T(1) / std::sqrt(var_rstd[c] + eps);
    }
}

/// Statistics from the running averages over n columns: mean = running_mean,
/// rstd = 1 / sqrt(running_var + eps).
template <class T, class A>
void bn_stats_from_running(cpu<A>, std::int64_t n, T eps, const T* running_mean, const T* running_var, T* mean, T* rstd) {
    for (std::int64_t c = 0; c < n; ++c) {
        mean[c] = running_mean[c];
        rstd[c] = T(1) / std::sqrt(running_var[c] + eps);
    }
}

/// out[c] = gamma[c] * rstd[c] over n columns (gamma null means 1).
template <class T, class A>
void bn_scale_rstd(cpu<A>, std::int64_t n, const T* gamma, const T* rstd, T* out) {
    for (std::int64_t c = 0; c < n; ++c) out[c] = (gamma ? gamma[c] : T(1)) * rstd[c];
}

}  // namespace xrec::kernels

namespace xrec::ops {

namespace detail {

/// Runs f(c0, c1) over blocks of the `cols` columns of a [rows, cols] problem, one block per
/// thread when the problem is big enough. Each column belongs to one thread.
template <class B, class F>
void bn_columns(thread_pool* pool, std::int64_t rows, std::int64_t cols, F&& f) {
    if (rows * cols < policy<B>::elementwise_parallel_min) pool = nullptr;
    parallel_for(pool, cols, 2, [&](std::int64_t c0, std::int64_t c1, int) { f(c0, c1); });
}
/// Runs f(r0, r1) over blocks of rows.
template <class B, class F>
void bn_rows(thread_pool* pool, std::int64_t rows, std::int64_t cols, F&& f) {
    const std::int64_t min_rows = policy<B>::elementwise_parallel_min / std::max<std::int64_t>(1, cols) + 1;
    parallel_for(pool, rows, min_rows, [&](std::int64_t r0, std::int64_t r1, int) { f(r0, r1); });
}

/// The statistics a normalisation uses, per column: mean and rstd = 1/sqrt(var + eps).
/// With `batch_stats` they are the batch's (biased variance) and the running averages are
/// updated PyTorch's way when given:
///   running_mean = (1 - momentum) running_mean + momentum mean
///   running_var  = (1 - momentum) running_var  + momentum var * rows / (rows - 1)
/// otherwise they come from the running averages. Returns [mean | rstd] (2 cols, arena).
template <class B, class Ctx, class T>
T* column_stats(Ctx& ctx, const var<T>& x, bool batch_stats, T* running_mean, T* running_var, double momentum,
                double eps) {
    const std::int64_t rows = x.rows(), cols = x.cols();
    T* st = ctx.template scratch<T>(2 * cols);
    T* mean = st;
    T* rstd = st + cols;
    if (batch_stats) {
        bn_columns<B>(ctx.pool(), rows, cols, [&](std::int64_t c0, std::int64_t c1) {
            kernels::bn_col_moments(B{}, rows, c1 - c0, cols, x.data + c0, mean + c0, rstd + c0);
        });
        const T mom = static_cast<T>(momentum);
        const T unbias = rows > 1 ? static_cast<T>(rows) / static_cast<T>(rows - 1) : T(1);
        kernels::bn_stats_from_batch(B{}, cols, mom, unbias, static_cast<T>(eps), static_cast<const T*>(mean), rstd,
                                     running_mean, running_var);
    } else {
        kernels::bn_stats_from_running(B{}, cols, static_cast<T>(eps), static_cast<const T*>(running_mean),
                                       static_cast<const T*>(running_var), mean, rstd);
    }
    return st;
}

/// y = (x - mean) * rstd * gamma + beta per column. Saves x, gamma, the per-column mean and
/// rstd and whether they were batch statistics. Backward with g = dy:
///   dgamma += sum_r dy xhat,  dbeta += sum_r dy,
///   dx += gamma rstd (dy - mean_r(dy) - xhat mean_r(dy xhat))   (batch statistics)
///   dx += gamma rstd dy                                        (running statistics)
template <class Ctx>
struct batch_norm_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    var<T> x, gamma, beta, y;
    const T* mean;
    const T* rstd;
    bool batch_stats;
    static void backward(tape_node* self, void* c) {
        auto& n = *static_cast<batch_norm_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = n.y.g->grad;
        if (!gy) return;
        const std::int64_t rows = n.x.rows(), cols = n.x.cols();
        T* gx = ctx.grad(n.x);
        T* gg = n.gamma.data ? ctx.grad(n.gamma) : nullptr;
        T* gb = n.beta.data ? ctx.grad(n.beta) : nullptr;
        T* s = ctx.template scratch<T>(4 * cols);  // s1, s2, then u1, u2 / k
        T *s1 = s, *s2 = s + cols, *u = s + 2 * cols;
        kernels::fill(B{}, 2 * cols, T(0), s);
        bn_columns<B>(ctx.pool(), rows, cols, [&](std::int64_t c0, std::int64_t c1) {
            kernels::bn_col_grad_sums(B{}, rows, c1 - c0, cols, n.x.data + c0, n.mean + c0, n.rstd + c0, gy + c0, s1 + c0,
                                      s2 + c0);
        });
        if (gg) kernels::add(B{}, cols, gg, s2, gg);
        if (gb) kernels::add(B{}, cols, gb, s1, gb);
        if (!gx) return;
        T* k = u + cols;  // k = gamma * rstd
        kernels::bn_scale_rstd(B{}, cols, static_cast<const T*>(n.gamma.data), n.rstd, k);
        if (n.batch_stats) {
            T* u1 = ctx.template scratch<T>(2 * cols);
            T* u2 = u1 + cols;
            const T inv = T(1) / static_cast<T>(rows);
            kernels::scale(B{}, cols, inv, s1, u1);
            kernels::scale(B{}, cols, inv, s2, u2);
            bn_rows<B>(ctx.pool(), rows, cols, [&](std::int64_t r0, std::int64_t r1) {
                kernels::bn_col_grad_apply(B{}, r1 - r0, cols, n.x.data + r0 * cols, n.mean, n.rstd, gy + r0 * cols, k, u1,
                                           u2, gx + r0 * cols);
            });
        } else {
            bn_rows<B>(ctx.pool(), rows, cols, [&](std::int64_t r0, std::int64_t r1) {
                for (std::int64_t r = r0; r < r1; ++r) kernels::mul_acc(B{}, cols, gy + r * cols, k, gx + r * cols);
            });
        }
    }
};

}  // namespace detail

/// Batch normalisation of x [..., C] over all leading positions (rows), per feature c:
///   y = (x - mean_c) / sqrt(var_c + eps) * gamma_c + beta_c
/// With `batch_stats` (training), mean_c and var_c are the batch's (biased variance, as
/// PyTorch) and the running averages, when given (C values each, host memory), are updated
/// with `momentum` (the running variance takes the unbiased batch variance); the batch needs
/// at least 2 rows. Without, mean_c and var_c are the running averages (which must be
/// given). gamma and beta ([C]) may be default-constructed vars for no affine transform.
/// One tape node; backward is batch_norm_node's (saves x and the per-column statistics).
template <class Ctx, class T = typename Ctx::value_type>
var<T> batch_norm(Ctx& ctx, const var<T>& x, const var<T>& gamma, const var<T>& beta, T* running_mean, T* running_var,
                  bool batch_stats, double momentum = 0.1, double eps = 1e-5) {
    using B = typename Ctx::backend;
    ctx.check(x);
    XREC_CHECK(x.s.rank >= 1, "batch_norm: input needs rank >= 1, got ", x.s.str());
    const std::int64_t rows = x.rows(), cols = x.cols();
    XREC_CHECK(!gamma.data || gamma.numel() == cols, "batch_norm: gamma ", gamma.s.str(), " does not match input ",
               x.s.str());
    XREC_CHECK(!beta.data || beta.numel() == cols, "batch_norm: beta ", beta.s.str(), " does not match input ", x.s.str());
    XREC_CHECK(!batch_stats || rows >= 2, "batch_norm: batch statistics need more than one value per feature, got input ",
               x.s.str());
    XREC_CHECK(batch_stats || (running_mean && running_var), "batch_norm: no batch statistics and no running averages");
    const T* st = detail::column_stats<B>(ctx, x, batch_stats, running_mean, running_var, momentum, eps);
    const T* mean = st;
    const T* rstd = st + cols;
    T* a = ctx.template scratch<T>(cols);
    kernels::bn_scale_rstd(B{}, cols, static_cast<const T*>(gamma.data), rstd, a);
    var<T> y = ctx.make(x.s, any_requires_grad<T>(x, gamma, beta));
    detail::bn_rows<B>(ctx.pool(), rows, cols, [&](std::int64_t r0, std::int64_t r1) {
        kernels::bn_col_apply(B{}, r1 - r0, cols, x.data + r0 * cols, mean, a, static_cast<const T*>(beta.data),
                              y.data + r0 * cols);
    });
    if constexpr (Ctx::records) {
        if (y.requires_grad()) {
            auto& n = ctx.template record<detail::batch_norm_node<Ctx>>();
            n.x = x;
            n.gamma = gamma;
            n.beta = beta;
            n.y = y;
            n.mean = mean;
            n.rstd = rstd;
            n.batch_stats = batch_stats;
        }
    }
    return y;
}

}  // namespace xrec::ops

namespace xrec::layers {

/// Options of batch_norm, with torch.nn.BatchNorm1d's meaning and defaults.
struct batch_norm_options {
    double eps = 1e-5;
    double momentum = 0.1;
    bool affine = true;
};

/// Running statistics kept in a param_store but out of every optimizer's reach: each is
/// registered as a one-row embedding table ([1, C]). Dense optimizers only walk the dense
/// flat buffer and sparse optimizers only update the rows that received a sparse gradient,
/// which these never do, so no optimizer (weight decay included) ever changes them; being
/// store tables, they are in store.named_tensors() and therefore in every checkpoint. The
/// values are laid out as PyTorch's [C] buffers (one row of C), so a state dict maps 1:1
/// after a reshape. Layers update them in forward, in training mode only.
template <class T, class B>
struct running_stats {
    table_param<T, B> mean, var;

    running_stats() = default;
    running_stats(param_store<T, B>& s, const std::string& name, std::int64_t features)
        : mean(s.add_table(name + ".running_mean", 1, features, init::zeros())),
          var(s.add_table(name + ".running_var", 1, features, init::constant(1))) {}

    T* mean_data() const { return mean.table().values.data(); }
    T* var_data() const { return var.table().values.data(); }
};

/// Batch normalisation over features, torch.nn.BatchNorm1d(C) on x [B, C] (any x [..., C]
/// is normalised per last-axis feature over all leading positions; note that BatchNorm1d
/// takes [N, C, L] channels-second, which this layer does not):
///   training:  y = (x - mean_B) / sqrt(var_B + eps) * weight + bias, with the batch's mean
///              and biased variance, and running_mean / running_var updated with `momentum`
///              (unbiased variance, as PyTorch);
///   inference: the same with running_mean and running_var.
/// "Training" means a train_ctx with ctx.training() true; an infer_ctx, or a train_ctx after
/// set_training(false), uses the running averages (PyTorch's eval()).
/// Parameters "<name>.weight" [C] (ones) and "<name>.bias" [C] (zeros) when affine;
/// running statistics "<name>.running_mean" and "<name>.running_var" as [1, C] store tables
/// (zeros and ones) that optimizers never touch (see running_stats). PyTorch's
/// num_batches_tracked is not kept (it only matters for momentum=None).
/// Backward: one tape node (ops::batch_norm); saves x and the per-feature mean and rstd.
template <class T = float, class B = cpu<>>
struct batch_norm {
    dense_param<T, B> weight, bias;
    running_stats<T, B> running;
    std::string name;
    std::int64_t features = 0;
    batch_norm_options options;

    batch_norm(param_store<T, B>& s, const std::string& layer_name, std::int64_t num_features, batch_norm_options o = {})
        : name(layer_name), features(num_features), options(o) {
        XREC_CHECK(features > 0, "batch_norm '", name, "': needs features > 0, got ", features);
        XREC_CHECK(o.eps >= 0 && o.momentum >= 0 && o.momentum <= 1, "batch_norm '", name, "': needs eps >= 0 and momentum in [0, 1], got eps ",
                   o.eps, ", momentum ", o.momentum);
        if (o.affine) {
            weight = s.add(name + ".weight", shape{features}, init::constant(1));
            bias = s.add(name + ".bias", shape{features}, init::zeros());
        }
        running = running_stats<T, B>(s, name, features);
    }

    template <class Ctx>
    var<T> operator()(Ctx& ctx, const var<T>& x) const {
        static_assert(std::is_same_v<typename Ctx::value_type, T> && std::is_same_v<typename Ctx::backend, B>,
                      "batch_norm: the context's value type and backend must match the layer's");
        XREC_CHECK(x.s.rank >= 1 && x.cols() == features, "batch_norm '", name, "': input ", x.s.str(),
                   " does not match its ", features, " features (last extent must be ", features, ")");
        const bool train = ctx.training();
        XREC_CHECK(!train || x.rows() >= 2, "batch_norm '", name,
                   "': training needs more than one value per feature, got input ", x.s.str());
        const var<T> g = options.affine ? ctx.param(weight) : var<T>{};
        const var<T> b = options.affine ? ctx.param(bias) : var<T>{};
        return ops::batch_norm(ctx, x, g, b, running.mean_data(), running.var_data(), train, options.momentum, options.eps);
    }
};

}  // namespace xrec::layers
