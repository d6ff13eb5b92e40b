#pragma once
// Embedding lookups and pooled bags over a table with sparse row gradients.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>

#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/tensor.hpp"
#include "xrec/ops/common.hpp"

namespace xrec::ops {

/// How embedding_bag reduces the rows of one bag (defined in core/features.hpp, which data
/// and models share).
using xrec::pooling;
using xrec::pooling_name;

namespace detail {

/// Copies n host indices onto the tape, so a node never reads caller memory that may be
/// gone by the time backward runs.
template <class Ctx>
const std::int64_t* keep_ids(Ctx& ctx, std::span<const std::int64_t> ids) {
    auto* p = ctx.template tape_scratch<std::int64_t>(static_cast<std::int64_t>(ids.size()));
    std::copy(ids.begin(), ids.end(), p);
    return p;
}

/// y[i, :] = table[ids[i], :]. Backward saves the ids (copied to the tape) and appends
/// (ids[i], dy[i, :]) for every i, in order, to the table's sparse gradient.
template <class Ctx>
struct lookup_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    embedding_table<T, B>* table;
    const std::int64_t* ids;
    std::int64_t n;
    var<T> y;
    static void backward(tape_node* self, void* c) {
        auto& nd = *static_cast<lookup_node*>(self);
        (void)c;
        const T* gy = nd.y.g->grad;
        if (!gy || nd.n == 0) return;
        T* rows = nd.table->grad.append(nd.n, nd.ids);
        kernels::copy(B{}, nd.n * nd.table->dim, gy, rows);
    }
};

template <class Ctx>
var<typename Ctx::value_type> embedding_lookup_impl(Ctx& ctx,
                                                    const table_param<typename Ctx::value_type, typename Ctx::backend>& tp,
                                                    std::span<const std::int64_t> ids, const char* who) {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    auto& t = tp.table();
    const auto n = static_cast<std::int64_t>(ids.size());
    for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t id = ids[static_cast<std::size_t>(i)];
        XREC_CHECK(id >= 0 && id < t.rows, who, ": id ", id, " at position ", i, " is outside table '", t.name, "' (",
                   t.rows, " rows)");
    }
    const std::int64_t dim = t.dim;
    var<T> y = ctx.make(shape{n, dim}, Ctx::records);
    const std::int64_t min_rows = policy<B>::elementwise_parallel_min / dim + 1;
    const std::int64_t* dev_ids = kernels::upload_ids(B{}, ctx, ids);  // the ids themselves on the cpu
    parallel_for(ctx.pool(), n, min_rows, [&](std::int64_t b, std::int64_t e, int) {
        kernels::gather_rows(B{}, static_cast<const T*>(t.values.data()), dim, dev_ids + b, e - b, y.data + b * dim);
    });
    if constexpr (Ctx::records) {
        auto& nd = ctx.template record<lookup_node<Ctx>>();
        nd.table = &t;
        nd.ids = keep_ids(ctx, ids);
        nd.n = n;
        nd.y = y;
    }
    return y;
}

/// y[b, :] = pool over i in bag b of w_i * table[ids_i, :]. Backward saves the ids and
/// offsets (copied to the tape), the weights handle and, for max, the bag-local argmax of
/// every output element ([batch, dim] int32, -1 for empty bags).
///  - sum / mean: appends (ids_i, s_b w_i dy[b, :]) for every position i in order, with
///    s_b = 1 (sum) or 1/|b| (mean); dw_i += s_b <dy[b, :], table[ids_i, :]>.
///  - max: appends one row for every position that is the argmax of at least one element
///    of its bag, in position order, holding w_i dy[b, d] in the elements it won and zeros
///    elsewhere; dw_i += sum over won elements d of dy[b, d] table[ids_i, d].
template <class Ctx>
struct bag_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    embedding_table<T, B>* table;
    const std::int64_t* values;
    const std::int64_t* offsets;
    std::int64_t batch, nnz;
    pooling mode;
    var<T> w, y;
    const std::int32_t* arg;

    static void backward(tape_node* self, void* c) {
        auto& nd = *static_cast<bag_node*>(self);
        auto& ctx = ctx_of<Ctx>(c);
        const T* gy = nd.y.g->grad;
        if (!gy || nd.nnz == 0) return;
        auto& t = *nd.table;
        const std::int64_t dim = t.dim;
        const T* wv = nd.w.data;
        T* gw = wv ? ctx.grad(nd.w) : nullptr;
        const T* tv = t.values.data();
        constexpr std::int64_t min_bags = policy<B>::bag_parallel_min;
        if (nd.mode != pooling::max) {
            T* rows = t.grad.append(nd.nnz, nd.values);
            parallel_for(ctx.pool(), nd.batch, min_bags, [&](std::int64_t b0, std::int64_t b1, int) {
                for (std::int64_t b = b0; b < b1; ++b) {
                    const std::int64_t begin = nd.offsets[b], end = nd.offsets[b + 1];
                    const T s = nd.mode == pooling::mean && end > begin ? T(1) / static_cast<T>(end - begin) : T(1);
                    const T* g = gy + b * dim;
                    for (std::int64_t i = begin; i < end; ++i) {
                        kernels::scale(B{}, dim, wv ? wv[i] * s : s, g, rows + i * dim);
                        if (gw) gw[i] += s * kernels::dot(B{}, dim, g, tv + nd.values[i] * dim);
                    }
                }
            });
            return;
        }
        // Max: number the winning positions in position order, then fill their rows.
        std::int64_t* slot = ctx.template scratch<std::int64_t>(nd.nnz);
        std::fill(slot, slot + nd.nnz, std::int64_t{-1});
        for (std::int64_t b = 0; b < nd.batch; ++b) {
            const std::int32_t* a = nd.arg + b * dim;
            for (std::int64_t d = 0; d < dim; ++d)
                if (a[d] >= 0) slot[nd.offsets[b] + a[d]] = 0;
        }
        std::int64_t k = 0;
        for (std::int64_t i = 0; i < nd.nnz; ++i)
            if (slot[i] == 0) slot[i] = ++k;  // 1-based while counting; shifted below
        std::int64_t* won_ids = ctx.template scratch<std::int64_t>(k);
        for (std::int64_t i = 0; i < nd.nnz; ++i)
            if (slot[i] > 0) won_ids[--slot[i]] = nd.values[i];
        if (k == 0) return;
        T* rows = t.grad.append(k, won_ids);
        kernels::fill(B{}, k * dim, T(0), rows);
        parallel_for(ctx.pool(), nd.batch, min_bags, [&](std::int64_t b0, std::int64_t b1, int) {
            for (std::int64_t b = b0; b < b1; ++b) {
                const std::int32_t* a = nd.arg + b * dim;
                const T* g = gy + b * dim;
                const std::int64_t begin = nd.offsets[b];
                for (std::int64_t d = 0; d < dim; ++d) {
                    if (a[d] < 0) continue;
                    const std::int64_t i = begin + a[d];
                    rows[slot[i] * dim + d] = wv ? wv[i] * g[d] : g[d];
                    if (gw) gw[i] += g[d] * tv[nd.values[i] * dim + d];
                }
            }
        });
    }
};

template <class Ctx>
var<typename Ctx::value_type> embedding_bag_impl(Ctx& ctx,
                                                 const table_param<typename Ctx::value_type, typename Ctx::backend>& tp,
                                                 const jagged_ids& ids, pooling mode,
                                                 const var<typename Ctx::value_type>& w, const char* who) {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    auto& t = tp.table();
    ids.check(who, t.rows);
    const std::int64_t batch = ids.batch(), nnz = ids.nnz(), dim = t.dim;
    if (w.data) {
        ctx.check(w);
        XREC_CHECK(w.numel() == nnz, who, ": per_id_weights ", w.s.str(), " has ", w.numel(), " elements but the input has ",
                   nnz, " ids");
    }
    if (mode == pooling::max)
        for (std::int64_t b = 0; b < batch; ++b)
            XREC_CHECK(ids.end(b) - ids.begin(b) <= std::numeric_limits<std::int32_t>::max(), who, ": bag ", b, " has ",
                       ids.end(b) - ids.begin(b), " ids, more than max pooling supports (2^31 - 1)");
    var<T> y = ctx.make(shape{batch, dim}, Ctx::records);
    std::int32_t* arg = nullptr;
    if constexpr (Ctx::records)
        if (mode == pooling::max) arg = ctx.template scratch<std::int32_t>(batch * dim);
    const T* tv = t.values.data();
    const std::int64_t* vals = ids.values.data();
    parallel_for(ctx.pool(), batch, policy<B>::bag_parallel_min, [&](std::int64_t b0, std::int64_t b1, int) {
        for (std::int64_t b = b0; b < b1; ++b) {
            const std::int64_t begin = ids.begin(b), n = ids.end(b) - begin;
            const T* wb = w.data ? w.data + begin : nullptr;
            T* out = y.data + b * dim;
            // Ids of this thread's later bags are prefetched too: bags of a few ids would
            // otherwise start every row cold.
            const std::int64_t avail = ids.begin(b1) - begin;
            switch (mode) {
                case pooling::sum: kernels::bag_sum(B{}, tv, dim, vals + begin, wb, n, T(1), out, avail); break;
                case pooling::mean:
                    kernels::bag_sum(B{}, tv, dim, vals + begin, wb, n, n ? T(1) / static_cast<T>(n) : T(1), out, avail);
                    break;
                case pooling::max: kernels::bag_max(B{}, tv, dim, vals + begin, wb, n, out, arg ? arg + b * dim : nullptr, avail); break;
            }
        }
    });
    if constexpr (Ctx::records) {
        auto& nd = ctx.template record<bag_node<Ctx>>();
        nd.table = &t;
        nd.values = keep_ids(ctx, ids.values);
        nd.offsets = keep_ids(ctx, ids.offsets);
        nd.batch = batch;
        nd.nnz = nnz;
        nd.mode = mode;
        nd.w = w;
        nd.y = y;
        nd.arg = arg;
    }
    return y;
}
}  // namespace detail

/// y[i, :] = table[ids[i], :]: a [n, dim] gather (with prefetch) from table t. Ids outside
/// [0, rows) are refused naming the position. Backward appends (ids[i], dy[i, :]) for every
/// i, in order, to t.table().grad; duplicates stay separate rows (optimizers merge them).
template <class Ctx>
var<typename Ctx::value_type> embedding_lookup(Ctx& ctx,
                                               const table_param<typename Ctx::value_type, typename Ctx::backend>& t,
                                               std::span<const std::int64_t> ids) {
    return detail::embedding_lookup_impl(ctx, t, ids, "embedding_lookup");
}

/// Pooled bags: y[b, :] for bag b = ids.values[ids.begin(b) .. ids.end(b)) is
///  - sum:  sum_i w_i e_i
///  - mean: (sum_i w_i e_i) / |b|  -- the weighted sum divided by the number of ids, not by
///          the sum of the weights, so a weight scales its id's contribution exactly as in
///          sum mode (PyTorch allows weights only with sum, where both readings agree)
///  - max:  max_i (w_i e_i) per element; each element's gradient goes to its argmax (the
///          first occurrence on ties)
/// where e_i = table[values[i], :] and w_i = per_id_weights[i] (1 when absent). An empty bag
/// gives a zero row. `ids` is validated (offsets well formed, ids in range, naming the
/// position); per_id_weights (optional) must have ids.nnz() elements and, when it requires
/// a gradient, receives one. Table gradients are appended to t.table().grad in bag order.
template <class Ctx>
var<typename Ctx::value_type> embedding_bag(Ctx& ctx, const table_param<typename Ctx::value_type, typename Ctx::backend>& t,
                                            const jagged_ids& ids, pooling mode,
                                            const var<typename Ctx::value_type>& per_id_weights = {}) {
    return detail::embedding_bag_impl(ctx, t, ids, mode, per_id_weights, "embedding_bag");
}

}  // namespace xrec::ops
