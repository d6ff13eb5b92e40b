#pragma once
// Embedding lookups and pooled bags over a table with sparse row gradients.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>

#include "xrec/core/features.hpp"
#include "xrec/core/parallel.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/tensor.hpp"
#include "xrec/ops/common.hpp"

namespace xrec::kernels {

// The batched kernels of ops::embedding_bag (cuda twins in cuda/xrec/cuda/embedding_bag.cuh).
// ids and offsets are where upload_ids put them (on the cpu the host arrays themselves).
XREC_KERNEL_FALLBACK(bag_pool_fwd)
XREC_KERNEL_FALLBACK(bag_max_mark)
XREC_KERNEL_FALLBACK(bag_grad_rows)
XREC_KERNEL_FALLBACK(bag_grad_weights)
// Reads of tables in a reduced serving format (cpu only; the ops never instantiate them for
// another backend, they refuse such a table at run time instead).
XREC_KERNEL_FALLBACK(gather_rows_reduced)
XREC_KERNEL_FALLBACK(bag_pool_reduced)

/// Forward of every bag: out[b, :] = pool over i in [offsets[b], offsets[b+1]) of
/// w_i table[ids[i], :] (sum; mean: divided by the bag's size; max: per element, with the
/// bag-local argmax in arg[b, :] when arg is non-null). Empty bags give zeros (arg -1). One
/// bag_sum / bag_max per bag, bags split over `pool`; each call may prefetch ids up to the
/// end of its thread's range, so a bag of a few ids does not start every row cold.
template <class T, class A>
void bag_pool_fwd(cpu<A>, thread_pool* pool, const T* table, std::int64_t dim, const std::int64_t* ids,
                  const std::int64_t* offsets, std::int64_t batch, const T* w, pooling mode, T* out,
                  std::int32_t* arg) {
    parallel_for(pool, batch, policy<cpu<A>>::bag_parallel_min, [&](std::int64_t b0, std::int64_t b1, int) {
        for (std::int64_t b = b0; b < b1; ++b) {
            const std::int64_t begin = offsets[b], n = offsets[b + 1] - begin;
            const T* wb = w ? w + begin : nullptr;
            T* o = out + b * dim;
            const std::int64_t avail = offsets[b1] - begin;
            switch (mode) {
                case pooling::sum: bag_sum(cpu<A>{}, table, dim, ids + begin, wb, n, T(1), o, avail); break;
                case pooling::mean:
                    bag_sum(cpu<A>{}, table, dim, ids + begin, wb, n, n ? T(1) / static_cast<T>(n) : T(1), o, avail);
                    break;
                case pooling::max:
                    bag_max(cpu<A>{}, table, dim, ids + begin, wb, n, o, arg ? arg + b * dim : nullptr, avail);
                    break;
            }
        }
    });
}

/// Forward of every bag over a table in a reduced serving format (precision p, rows of
/// row_bytes at base): bag_pool_fwd's maths on the dequantised rows, without the argmax
/// (inference only). Bags split over `pool`.
template <class A>
void bag_pool_reduced(cpu<A>, thread_pool* pool, table_precision p, const std::uint8_t* base, std::int64_t row_bytes,
                      std::int64_t dim, const std::int64_t* ids, const std::int64_t* offsets, std::int64_t batch,
                      const float* w, pooling mode, float* out) {
    parallel_for(pool, batch, policy<cpu<A>>::bag_parallel_min, [&](std::int64_t b0, std::int64_t b1, int) {
        for (std::int64_t b = b0; b < b1; ++b) {
            const std::int64_t begin = offsets[b], n = offsets[b + 1] - begin;
            const float* wb = w ? w + begin : nullptr;
            float* o = out + b * dim;
            const std::int64_t avail = offsets[b1] - begin;
            if (mode == pooling::max)
                bag_max_reduced(cpu<A>{}, p, base, row_bytes, dim, ids + begin, wb, n, o, avail);
            else
                bag_sum_reduced(cpu<A>{}, p, base, row_bytes, dim, ids + begin, wb, n,
                                mode == pooling::mean && n ? 1.0f / static_cast<float>(n) : 1.0f, o, avail);
        }
    });
}

/// Max pooling's winners: slot[i] = 0 (host memory, nnz elements) for every position i that
/// arg (the forward's [batch, dim] bag-local argmax, -1 in empty bags) names in its bag,
/// -1 for the others.
template <class A, class Ctx>
void bag_max_mark(cpu<A>, Ctx&, std::int64_t dim, const std::int64_t* offsets, std::int64_t batch, std::int64_t nnz,
                  const std::int32_t* arg, std::int64_t* slot) {
    std::fill(slot, slot + nnz, std::int64_t{-1});
    for (std::int64_t b = 0; b < batch; ++b) {
        const std::int32_t* a = arg + b * dim;
        for (std::int64_t d = 0; d < dim; ++d)
            if (a[d] >= 0) slot[offsets[b] + a[d]] = 0;
    }
}

/// The table's sparse gradient rows of embedding_bag's backward, gy [batch, dim]:
///  - sum / mean (slot null): rows[i, :] = s_b w_i gy[b, :] for every position i of bag b,
///    s_b = 1 (sum) or 1/|b| (mean), w null meaning 1;
///  - max: rows[slot[i], d] = w_i gy[b, d] for the elements d whose arg[b, d] names i
///    (rows zeroed by the caller; slot[i] < 0 for positions that won nothing).
template <class T, class A>
void bag_grad_rows(cpu<A>, thread_pool* pool, std::int64_t dim, const std::int64_t* offsets, std::int64_t batch,
                   std::int64_t /*nnz*/, const T* gy, const T* w, pooling mode, const std::int32_t* arg,
                   const std::int64_t* slot, T* rows) {
    parallel_for(pool, batch, policy<cpu<A>>::bag_parallel_min, [&](std::int64_t b0, std::int64_t b1, int) {
        for (std::int64_t b = b0; b < b1; ++b) {
            const std::int64_t begin = offsets[b], end = offsets[b + 1];
            const T* g = gy + b * dim;
            if (mode == pooling::max) {
                const std::int32_t* a = arg + b * dim;
                for (std::int64_t d = 0; d < dim; ++d) {
                    if (a[d] < 0) continue;
                    const std::int64_t i = begin + a[d];
                    rows[slot[i] * dim + d] = w ? w[i] * g[d] : g[d];
                }
                continue;
            }
            const T s = mode == pooling::mean && end > begin ? T(1) / static_cast<T>(end - begin) : T(1);
            for (std::int64_t i = begin; i < end; ++i) scale(cpu<A>{}, dim, w ? w[i] * s : s, g, rows + i * dim);
        }
    });
}

/// The per-id weights' gradient of embedding_bag's backward: gw[i] += s_b <gy[b, :],
/// table[ids[i], :]> for sum / mean; for max gw[i] += sum of gy[b, d] table[ids[i], d] over
/// the elements d whose arg[b, d] names i.
template <class T, class A>
void bag_grad_weights(cpu<A>, thread_pool* pool, const T* table, std::int64_t dim, const std::int64_t* ids,
                      const std::int64_t* offsets, std::int64_t batch, std::int64_t /*nnz*/, const T* gy, pooling mode,
                      const std::int32_t* arg, T* gw) {
    parallel_for(pool, batch, policy<cpu<A>>::bag_parallel_min, [&](std::int64_t b0, std::int64_t b1, int) {
        for (std::int64_t b = b0; b < b1; ++b) {
            const std::int64_t begin = offsets[b], end = offsets[b + 1];
            const T* g = gy + b * dim;
            if (mode == pooling::max) {
                const std::int32_t* a = arg + b * dim;
                for (std::int64_t d = 0; d < dim; ++d) {
                    if (a[d] < 0) continue;
                    const std::int64_t i = begin + a[d];
                    gw[i] += g[d] * table[ids[i] * dim + d];
                }
                continue;
            }
            const T s = mode == pooling::mean && end > begin ? T(1) / static_cast<T>(end - begin) : T(1);
            for (std::int64_t i = begin; i < end; ++i) gw[i] += s * dot(cpu<A>{}, dim, g, table + ids[i] * dim);
        }
    });
}

}  // namespace xrec::kernels

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

/// Whether ctx may read table t, checked once per call: a table in a reduced serving format
/// is read only by a non-recording context on the cpu backend with float values; training
/// on it is refused by name (its full-precision values are gone), as is any other backend.
/// True when t is reduced (the caller takes the dequantising path).
template <class Ctx, class T, class B>
bool reads_reduced(const embedding_table<T, B>& t, const char* who) {
    if (!t.reduced()) return false;
    if constexpr (Ctx::records)
        XREC_FAIL(who, ": table '", t.name, "' is stored as ", table_precision_name(t.precision),
                  " for serving; training or a recording forward needs its full-precision values "
                  "(serve::dequantize_tables restores them)");
    else if constexpr (!(is_cpu_v<B> && std::is_same_v<T, float>))
        XREC_FAIL(who, ": table '", t.name, "' is stored as ", table_precision_name(t.precision),
                  ", which only the cpu backend with float values reads");
    return true;
}

/// y[i, :] = table[ids[i], :]. Backward saves the ids (copied to the tape on the cpu; on
/// cuda the device copy the gather read, kept in the context's arena until reset) and
/// appends (ids[i], dy[i, :]) for every i, in order, to the table's sparse gradient.
template <class Ctx>
struct lookup_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    embedding_table<T, B>* table;
    const std::int64_t* ids;  // in the backend's memory
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
                                                    std::span<const std::int64_t> ids, memory_space where,
                                                    const char* who) {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    auto& t = tp.table();
    const bool reduced = reads_reduced<Ctx>(t, who);
    const auto n = static_cast<std::int64_t>(ids.size());
    const std::int64_t* dev_ids = nullptr;  // where the gather reads them
    if (where == memory_space::host || backend_memory<B>::host_accessible) {
        for (std::int64_t i = 0; i < n; ++i) {
            const std::int64_t id = ids[static_cast<std::size_t>(i)];
            XREC_CHECK(id >= 0 && id < t.rows, who, ": id ", id, " at position ", i, " is outside table '", t.name,
                       "' (", t.rows, " rows)");
        }
        dev_ids = kernels::upload_ids(B{}, ctx, ids);  // the ids themselves on the cpu
    } else {
        // Ids already in device memory: checked there (one small read-back), then copied into
        // the context's arena, which outlives the caller's batch until reset.
        if (const std::int64_t i = kernels::first_id_outside(B{}, n, ids.data(), t.rows); i >= 0)
            XREC_FAIL(who, ": id ", host_value<B>(ids.data() + i), " at position ", i, " is outside table '", t.name,
                      "' (", t.rows, " rows)");
        std::int64_t* d = n > 0 ? ctx.template scratch<std::int64_t>(n) : nullptr;
        if (n > 0) backend_memory<B>::copy_async(d, ids.data(), static_cast<std::size_t>(n) * sizeof(std::int64_t));
        dev_ids = d;
    }
    const std::int64_t dim = t.dim;
    var<T> y = ctx.make(shape{n, dim}, Ctx::records);
    if constexpr (!Ctx::records && is_cpu_v<B> && std::is_same_v<T, float>) {
        if (reduced) {
            kernels::gather_rows_reduced(B{}, t.precision, t.packed.data(), t.row_bytes, dim, dev_ids, n, y.data);
            return y;
        }
    }
    const std::int64_t min_rows = policy<B>::elementwise_parallel_min / dim + 1;
    parallel_for(ctx.pool(), n, min_rows, [&](std::int64_t b, std::int64_t e, int) {
        kernels::gather_rows(B{}, static_cast<const T*>(t.values.data()), dim, dev_ids + b, e - b, y.data + b * dim);
    });
    if constexpr (Ctx::records) {
        auto& nd = ctx.template record<lookup_node<Ctx>>();
        nd.table = &t;
        if constexpr (backend_memory<B>::host_accessible)
            nd.ids = keep_ids(ctx, ids);
        else
            nd.ids = dev_ids;
        nd.n = n;
        nd.y = y;
    }
    return y;
}

/// y[b, :] = pool over i in bag b of w_i * table[ids_i, :]. Backward saves the ids and
/// offsets (copied to the tape, and where the backend's kernels read them: the same copies
/// on the cpu, the context's device arena on cuda), the weights handle and, for max, the
/// bag-local argmax of every output element ([batch, dim] int32, -1 for empty bags).
///  - sum / mean: appends (ids_i, s_b w_i dy[b, :]) for every position i in order, with
///    s_b = 1 (sum) or 1/|b| (mean); dw_i += s_b <dy[b, :], table[ids_i, :]>.
///  - max: appends one row for every position that is the argmax of at least one element
///    of its bag, in position order, holding w_i dy[b, d] in the elements it won and zeros
///    elsewhere; dw_i += sum over won elements d of dy[b, d] table[ids_i, d]. The winners
///    are numbered on the host: on cuda the backward waits once for a byte per position.
template <class Ctx>
struct bag_node : tape_node {
    using T = typename Ctx::value_type;
    using B = typename Ctx::backend;
    embedding_table<T, B>* table;
    const std::int64_t* values;       // host (tape) copies (max numbers its winners with them)
    const std::int64_t* offsets;
    const std::int64_t* dev_values;   // where the kernels read them (== values on the cpu)
    const std::int64_t* dev_offsets;
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
        if (nd.mode != pooling::max) {
            T* rows = t.grad.append(nd.nnz, nd.dev_values);
            kernels::bag_grad_rows(B{}, ctx.pool(), dim, nd.dev_offsets, nd.batch, nd.nnz, gy, wv, nd.mode,
                                   static_cast<const std::int32_t*>(nullptr), static_cast<const std::int64_t*>(nullptr),
                                   rows);
        } else {
            // Max: number the winning positions in position order, then fill their rows.
            std::int64_t* slot = ctx.template host_scratch<std::int64_t>(nd.nnz);
            kernels::bag_max_mark(B{}, ctx, dim, nd.dev_offsets, nd.batch, nd.nnz, nd.arg, slot);
            std::int64_t k = 0;
            for (std::int64_t i = 0; i < nd.nnz; ++i)
                if (slot[i] == 0) slot[i] = ++k;  // 1-based while counting; shifted below
            std::int64_t* won_ids = ctx.template host_scratch<std::int64_t>(k);
            for (std::int64_t i = 0; i < nd.nnz; ++i)
                if (slot[i] > 0) won_ids[--slot[i]] = nd.values[i];
            if (k == 0) return;  // no element won: every bag is empty, nothing flows back
            T* rows = t.grad.append(k, kernels::upload_ids(B{}, ctx, std::span<const std::int64_t>(
                                                                      won_ids, static_cast<std::size_t>(k))));
            kernels::fill(B{}, k * dim, T(0), rows);
            const std::int64_t* dev_slot =
                kernels::upload_ids(B{}, ctx, std::span<const std::int64_t>(slot, static_cast<std::size_t>(nd.nnz)));
            kernels::bag_grad_rows(B{}, ctx.pool(), dim, nd.dev_offsets, nd.batch, nd.nnz, gy, wv, nd.mode, nd.arg,
                                   dev_slot, rows);
        }
        if (gw)
            kernels::bag_grad_weights(B{}, ctx.pool(), static_cast<const T*>(t.values.data()), dim, nd.dev_values,
                                      nd.dev_offsets, nd.batch, nd.nnz, gy, nd.mode, nd.arg, gw);
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
    const bool reduced = reads_reduced<Ctx>(t, who);
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
    // The forward reads the caller's ids where the backend's memory is the host's, and a
    // device copy (kept in the context's arena until reset) elsewhere. A recording forward
    // also copies them to the tape afterwards: the backward needs them after the caller's
    // memory may be gone (on the cpu it reads those copies; on cuda the device copies).
    // Copying first and reading the copies made the cpu forward+backward ~20% slower
    // (1M x 64 table, 32 ids per bag, batch 4096, 1 thread: 3.8 vs 3.1 ms).
    const std::int64_t* dev_vals = kernels::upload_ids(B{}, ctx, ids.values);
    const std::int64_t* dev_offs = kernels::upload_ids(B{}, ctx, ids.offsets);
    if constexpr (!Ctx::records && is_cpu_v<B> && std::is_same_v<T, float>) {
        if (reduced) {
            kernels::bag_pool_reduced(B{}, ctx.pool(), t.precision, t.packed.data(), t.row_bytes, dim, dev_vals, dev_offs,
                                      batch, static_cast<const T*>(w.data), mode, y.data);
            return y;
        }
    }
    kernels::bag_pool_fwd(B{}, ctx.pool(), static_cast<const T*>(t.values.data()), dim, dev_vals, dev_offs, batch,
                          static_cast<const T*>(w.data), mode, y.data, arg);
    if constexpr (Ctx::records) {
        auto& nd = ctx.template record<bag_node<Ctx>>();
        nd.table = &t;
        nd.values = keep_ids(ctx, ids.values);
        nd.offsets = keep_ids(ctx, ids.offsets);
        nd.dev_values = backend_memory<B>::host_accessible ? nd.values : dev_vals;
        nd.dev_offsets = backend_memory<B>::host_accessible ? nd.offsets : dev_offs;
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
/// `where`: memory_space::host (the default) for ids in host memory, memory_space::backend
/// for ids already in the backend's memory (a batch prepared on the device: checked there, nothing
/// crosses to the host but the check's result).
/// A table in a reduced serving format (serve::quantize_tables: bf16 or int8_rowwise) is
/// read on an infer_ctx over the cpu backend, dequantised in the gather (one check per
/// call, none per row); a recording context or another backend refuses it by name.
template <class Ctx>
var<typename Ctx::value_type> embedding_lookup(Ctx& ctx,
                                               const table_param<typename Ctx::value_type, typename Ctx::backend>& t,
                                               std::span<const std::int64_t> ids, memory_space where = memory_space::host) {
    return detail::embedding_lookup_impl(ctx, t, ids, where, "embedding_lookup");
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
/// Reduced serving tables: as embedding_lookup (inference on the cpu only; for int8 rows the
/// sum folds each row's scale into its weight and adds the weighted biases once per bag).
template <class Ctx>
var<typename Ctx::value_type> embedding_bag(Ctx& ctx, const table_param<typename Ctx::value_type, typename Ctx::backend>& t,
                                            const jagged_ids& ids, pooling mode,
                                            const var<typename Ctx::value_type>& per_id_weights = {}) {
    return detail::embedding_bag_impl(ctx, t, ids, mode, per_id_weights, "embedding_bag");
}

}  // namespace xrec::ops
