#pragma once
// What every optimizer needs: the step counter kept as checkpointable state, the one
// vectorised loop of dense optimizers, and the deterministic merge of sparse gradients.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "xrec/backend/cpu_kernels.hpp"
#include "xrec/backend/kernels.hpp"
#include "xrec/backend/tags.hpp"
#include "xrec/core/arena.hpp"
#include "xrec/core/buffer.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/parallel.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/shape.hpp"

namespace xrec::optim {

namespace detail {

/// Optimizers read and write state on the host; a backend whose memory the host cannot read
/// needs its own update kernels.
template <class B>
inline constexpr bool host_ok = backend_memory<B>::host_accessible;

/// An optimizer's step counter, stored as two values of T so that a checkpoint saves it
/// beside the other state (as "<optimizer>.step", shape [2]): step = v[0] * 2^24 + v[1].
/// Both halves are integers below 2^24, exact even in float, so the count stays exact up to
/// 2^48 steps where a single float would stop counting at 2^24.
///
/// The two values live in host memory whatever the backend: the count steers host code (bias
/// corrections, the first step of momentum), so reading it must not wait for a device.
template <class T, class B>
class step_counter {
public:
    step_counter() : v_(2, T(0)) {}
    std::int64_t get() const {
        return static_cast<std::int64_t>(v_[0]) * (std::int64_t{1} << 24) + static_cast<std::int64_t>(v_[1]);
    }
    void set(std::int64_t s) {
        v_[0] = static_cast<T>(s >> 24);
        v_[1] = static_cast<T>(s & ((std::int64_t{1} << 24) - 1));
    }
    /// Increments and returns the new count (1 on the first step).
    std::int64_t advance() {
        set(get() + 1);
        return get();
    }
    named_tensor<T> named(const std::string& optimizer) { return {optimizer + ".step", shape{2}, v_.data()}; }

private:
    std::vector<T> v_;  // host memory (heap: named() views stay valid when the optimizer moves)
};

/// The state slot `slot` of every dense parameter, as views into a flat state buffer laid
/// out like the store's value buffer: "<optimizer>.<param>.<slot>".
template <class T, class B>
void append_dense_views(std::vector<named_tensor<T>>& out, const param_store<T, B>& s, const std::string& optimizer,
                        const char* slot, T* flat) {
    for (auto& e : s.dense_entries()) out.push_back({optimizer + "." + e.name + "." + slot, e.s, flat + e.offset});
}

/// Calls f(std::type_identity<V>{}, i) over [0, n): V = xsimd::batch<T, A> on full batches
/// at i = 0, w, 2w, ..., and V = T on the scalar tail. f is written once against V (xsimd
/// overloads the arithmetic and sqrt for both), loads with `load<V>` and stores with
/// `store`. The body uses no FMA, so a batch lane and the scalar tail round alike.
template <class T, class A, class F>
void vector_loop(cpu<A>, std::int64_t begin, std::int64_t end, F&& f) {
    using bt = xsimd::batch<T, A>;
    constexpr std::int64_t w = static_cast<std::int64_t>(bt::size);
    std::int64_t i = begin;
    for (; i + w <= end; i += w) f(std::type_identity<bt>{}, i);
    for (; i < end; ++i) f(std::type_identity<T>{}, i);
}
template <class T, class B, class F>
void vector_loop(B, std::int64_t, std::int64_t, F&&) {
    static_assert(always_false<B>, "xrec::optim: no dense optimizer loop for this backend tag; add an overload of "
                                   "optim::detail::vector_loop for it");
}

template <class V, class T>
V load(const T* p) {
    if constexpr (std::is_same_v<V, T>)
        return *p;
    else
        return V::load_unaligned(p);
}
template <class V, class T>
void store(T* p, const V& v) {
    if constexpr (std::is_same_v<V, T>)
        *p = v;
    else
        v.store_unaligned(p);
}

/// Elements below which a dense update stays on the calling thread.
inline constexpr std::int64_t dense_parallel_min = std::int64_t{1} << 16;

/// vector_loop over [0, n), split over `pool` in chunks whose bounds are multiples of 64
/// elements, so every element takes the same (batch or tail) path whatever the thread
/// count: the update is bitwise independent of threads.
template <class T, class B, class F>
void dense_loop(thread_pool* pool, std::int64_t n, F&& f) {
    constexpr std::int64_t align = 64;
    const std::int64_t blocks = (n + align - 1) / align;
    parallel_for(pool, blocks, dense_parallel_min / align, [&](std::int64_t b0, std::int64_t b1, int) {
        vector_loop<T>(B{}, b0 * align, std::min(n, b1 * align), f);
    });
}

}  // namespace detail

/// Reusable memory of `coalesce`, so a step in steady state allocates nothing. The cpu merge
/// uses the host vectors; a device merge keeps its sort keys, positions and segment bounds in
/// `work` (raw backend memory in 8-byte units) and the merged ids in `dev_ids`.
template <class T, class B>
struct coalesce_scratch {
    std::vector<std::int64_t> perm, ids, starts;
    buffer<T, B> rows;
    buffer<std::int64_t, B> work, dev_ids;
    /// Filled by the cpu update loop (detail::for_each_touched_row): per table, the smallest
    /// row id that the last step updated to a value that is NaN or infinite, else -1. Empty
    /// where no update loop checks (a device's fused update).
    std::vector<std::int64_t> nonfinite_row;
};

}  // namespace xrec::optim

namespace xrec::kernels {

XREC_KERNEL_FALLBACK(coalesce_rows)

/// optim::coalesce on the cpu (see there): a stable sort of the positions by id, then the rows
/// of each id summed in emission order, ids split over `pool`.
template <class T, class A>
void coalesce_rows(cpu<A>, embedding_table<T, cpu<A>>& t, optim::coalesce_scratch<T, cpu<A>>& s, thread_pool* pool) {
    auto& g = t.grad;
    const std::int64_t n = g.count();
    if (n == 0) return;
    bool sorted_unique = true;
    for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t id = g.ids[static_cast<std::size_t>(i)];
        XREC_CHECK(id >= 0 && id < t.rows, "optim: table '", t.name, "' received a gradient for row ", id,
                   " outside its ", t.rows, " rows");
        if (i > 0 && id <= g.ids[static_cast<std::size_t>(i - 1)]) sorted_unique = false;
    }
    if (sorted_unique) return;

    // A stable LSD radix sort of the positions by id, 11 bits a pass over the bits the ids
    // use (ids < rows), ping-ponging between perm and ids: the same order as a stable
    // comparison sort, in 2 or 3 linear passes (std::stable_sort took ~8 ms of a 4,096-row
    // DeepFM step here, serial).
    s.perm.resize(static_cast<std::size_t>(n));
    std::iota(s.perm.begin(), s.perm.end(), std::int64_t{0});
    s.ids.resize(static_cast<std::size_t>(n));
    int bits = 1;
    while (bits < 63 && (std::int64_t{1} << bits) < t.rows) ++bits;
    constexpr int digit = 11;
    std::vector<std::int64_t>* from = &s.perm;
    std::vector<std::int64_t>* to = &s.ids;
    for (int shift = 0; shift < bits; shift += digit) {
        std::int64_t count[(1 << digit) + 1] = {};
        const auto key = [&](std::int64_t pos) {
            return static_cast<std::size_t>((g.ids[static_cast<std::size_t>(pos)] >> shift) & ((1 << digit) - 1));
        };
        for (std::int64_t k = 0; k < n; ++k) ++count[key((*from)[static_cast<std::size_t>(k)]) + 1];
        for (int d = 0; d < (1 << digit); ++d) count[d + 1] += count[d];
        for (std::int64_t k = 0; k < n; ++k) {
            const std::int64_t pos = (*from)[static_cast<std::size_t>(k)];
            (*to)[static_cast<std::size_t>(count[key(pos)]++)] = pos;
        }
        std::swap(from, to);
    }
    if (from != &s.perm) s.perm.swap(s.ids);
    s.ids.clear();
    s.starts.clear();
    for (std::int64_t k = 0; k < n; ++k) {
        const std::int64_t id = g.ids[static_cast<std::size_t>(s.perm[static_cast<std::size_t>(k)])];
        if (s.ids.empty() || s.ids.back() != id) {
            s.ids.push_back(id);
            s.starts.push_back(k);
        }
    }
    s.starts.push_back(n);
    const std::int64_t u = static_cast<std::int64_t>(s.ids.size()), dim = t.dim;
    if (s.rows.size() < u * dim) s.rows.resize(std::max(u * dim, g.rows.size()));
    const T* src = g.rows.data();
    T* dst = s.rows.data();
    parallel_for(pool, u, 256, [&](std::int64_t u0, std::int64_t u1, int) {
        for (std::int64_t j = u0; j < u1; ++j) {
            const std::int64_t k0 = s.starts[static_cast<std::size_t>(j)], k1 = s.starts[static_cast<std::size_t>(j + 1)];
            T* out = dst + j * dim;
            const T* first = src + s.perm[static_cast<std::size_t>(k0)] * dim;
            std::copy(first, first + dim, out);
            for (std::int64_t k = k0 + 1; k < k1; ++k) {
                const T* r = src + s.perm[static_cast<std::size_t>(k)] * dim;
                for (std::int64_t d = 0; d < dim; ++d) out[d] += r[d];
            }
        }
    });
    g.ids.swap(s.ids);
    g.rows.swap(s.rows);
}

}  // namespace xrec::kernels

namespace xrec::optim {

/// Merges the duplicate ids of a table's sparse gradient in place, deterministically:
/// the (id, row) pairs are stably sorted by id and the rows of one id are summed in the
/// order backward emitted them (first row copied, later rows added one by one). Afterwards
/// the ids are unique and ascending. The result depends only on the emission order, never on
/// the thread count (groups are summed independently; `pool` only spreads the groups). Does
/// nothing when the ids are already strictly ascending, so merging twice (clip_grad_norm,
/// then the optimizer) costs one check. Throws xrec::error naming the table if an id lies
/// outside [0, rows).
template <class T, class B>
void coalesce(embedding_table<T, B>& t, coalesce_scratch<T, B>& s, thread_pool* pool = nullptr) {
    kernels::coalesce_rows(B{}, t, s, pool);
}


namespace detail {

/// The loop every sparse optimizer runs: for each table, merge its gradient, call
/// f(table_index, table, row_id, value_row, grad_row) once per touched row (rows split over
/// `pool`; each row is updated by one thread, so the result is independent of the thread
/// count), then clear the gradient.
template <class T, class B, class F>
void for_each_touched_row(param_store<T, B>& store, coalesce_scratch<T, B>& scratch, thread_pool* pool, F&& f) {
    scratch.nonfinite_row.assign(static_cast<std::size_t>(store.table_count()), -1);
    for (std::int64_t ti = 0; ti < store.table_count(); ++ti) {
        auto& t = store.table(ti);
        coalesce(t, scratch, pool);
        const std::int64_t u = t.grad.count();
        const T* grows = t.grad.rows.data();
        // Each updated row is checked while it is in cache (the trainer's NaN/Inf check of
        // the touched rows would read them all again, at random: ~10% of a DeepFM step). The
        // smallest merged index wins, so the answer does not depend on the threads.
        std::atomic<std::int64_t> first_bad{u};
        parallel_for(pool, u, 512, [&](std::int64_t u0, std::int64_t u1, int) {
            std::int64_t bad = u;
            for (std::int64_t j = u0; j < u1; ++j) {
                const std::int64_t id = t.grad.ids[static_cast<std::size_t>(j)];
                T* w = t.row(id);
                f(ti, t, id, w, grows + j * t.dim);
                if (bad == u)
                    for (std::int64_t d = 0; d < t.dim; ++d)
                        if (!std::isfinite(w[d])) {
                            bad = j;
                            break;
                        }
            }
            fetch_min(first_bad, bad);
        });
        if (const std::int64_t j = first_bad.load(); j < u)
            scratch.nonfinite_row[static_cast<std::size_t>(ti)] = t.grad.ids[static_cast<std::size_t>(j)];
        t.grad.clear();
    }
}

/// A device store's rows cannot be handed to a host function: the sparse optimizers without a
/// cuda kernel stop here (rowwise_adagrad has one, kernels::rowwise_adagrad_update).
template <class T, class F>
void for_each_touched_row(param_store<T, cuda>& store, coalesce_scratch<T, cuda>&, thread_pool*, F&&) {
    for (std::int64_t ti = 0; ti < store.table_count(); ++ti) store.table(ti).grad.clear();
    XREC_FAIL("xrec::optim: this sparse optimizer has no cuda kernel yet; on the cuda backend use rowwise_adagrad");
}

/// What the sparse optimizers share: the store, the merge scratch, the step counter, the
/// optional thread pool, and per-table state buffers.
template <class T, class B>
class sparse_base {
public:
    /// Threads for the merge and the row updates (null: the calling thread). Each touched
    /// row is updated by exactly one thread, so the result does not depend on it.
    void set_pool(thread_pool* pool) noexcept { pool_ = pool; }
    std::int64_t steps() const { return step_.get(); }
    /// Per table, the smallest row id the last step updated to a NaN or infinite value (-1:
    /// none), when the update loop checked its rows (the cpu's); null when it did not.
    const std::vector<std::int64_t>* checked_rows() const noexcept {
        if (scratch_.nonfinite_row.size() != static_cast<std::size_t>(store_->table_count())) return nullptr;
        return &scratch_.nonfinite_row;
    }

protected:
    explicit sparse_base(param_store<T, B>& store) : store_(&store) {}

    /// Grows `st` to one buffer per table of the store (tables registered after the
    /// optimizer get theirs on first use), each `per_row ? rows : rows * dim` values of `init`.
    void ensure_tables(std::vector<buffer<T, B>>& st, bool per_row, double init) {
        while (static_cast<std::int64_t>(st.size()) < store_->table_count()) {
            const auto& t = store_->table(static_cast<std::int64_t>(st.size()));
            buffer<T, B> b(per_row ? t.rows : t.rows * t.dim);
            if (init != 0) kernels::fill(B{}, b.size(), static_cast<T>(init), b.data());  // new buffers start zeroed
            st.push_back(std::move(b));
        }
    }
    /// Appends "<optimizer>.<table>.<slot>" views of per-table state.
    void append_table_views(std::vector<named_tensor<T>>& out, const std::string& optimizer, const char* slot,
                            std::vector<buffer<T, B>>& st, bool per_row) {
        for (std::size_t i = 0; i < st.size(); ++i) {
            const auto& t = store_->table(static_cast<std::int64_t>(i));
            out.push_back({optimizer + "." + t.name + "." + slot, per_row ? shape{t.rows} : shape{t.rows, t.dim},
                           st[i].data()});
        }
    }
    /// Runs f(table_index, table, row_id, value_row, grad_row) on every touched row.
    template <class F>
    void run(F&& f) {
        for_each_touched_row(*store_, scratch_, pool_, f);
    }

    param_store<T, B>* store_;
    coalesce_scratch<T, B> scratch_;
    step_counter<T, B> step_;
    thread_pool* pool_ = nullptr;
};

}  // namespace detail
}  // namespace xrec::optim
