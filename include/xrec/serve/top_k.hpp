#pragma once
// Top-K retrieval by inner product: the serving path of every model that scores a user
// with a dot product against an item table (mf, two_tower, sasrec, gru4rec).
//
//   top_k(q [D], items [N, D] row-major, k, exclude) -> the k items of largest q . item_i,
//   best first, ties broken by the smaller id, never an id of `exclude` (ascending ids).
//
// How: items are scored block by block (a block of rows stays in L1/L2) with SIMD dot
// products, W rows at a time (W = SIMD width): W accumulators run over D, then one
// parallel horizontal add (detail::sum_rows) turns them into W scores in one register. A
// running selection keeps the best k in a binary heap whose root (the worst kept) is the
// threshold: a whole register of scores is compared with it at once and only a lane that
// beats it touches the heap. Items arrive in ascending id order, so an item tying the
// threshold loses (the kept one has the smaller id) and "beats" is a strict >. Nothing is
// sorted but the final k. The item table is read once per call (D=64, N=1M: 256 MB), so a
// single query is bound by memory bandwidth; top_k_batch scores a group of up to 16 queries
// per (L1-sized) block so that each block is read from memory once for the group.
//
// Scores: row r's score is computed by the same instruction sequence wherever r falls (its
// lane is r mod W), so score_all() gives exactly the scores top_k ranks and the result is
// exactly the first k of a full std::sort by (score desc, id asc) of score_all's scores
// (the tests check this). Scores must not be NaN.
//
// Allocation: a top_k_workspace holds the block scores and the heaps; it grows to the
// largest request and is then reused, so steady-state calls allocate nothing. The overloads
// without a workspace use a thread_local one.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>  // the AVX-512 row-sum transpose (sum_rows)
#endif

#include <xsimd/xsimd.hpp>

#include "xrec/backend/tags.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/parallel.hpp"

namespace xrec::serve {

/// Scratch of top_k / top_k_batch: per pool thread, the block scores of a query group and
/// its heaps. Reuse one per calling thread (or per pool) to keep calls allocation-free.
struct top_k_workspace {
    struct scratch {
        std::vector<float> block;                            // [group][block_rows] scores
        std::vector<std::pair<float, std::int32_t>> heap;     // [group][k]
    };
    std::vector<scratch> per_thread;
    std::vector<std::pair<float, std::int32_t>> merge;      // [threads][k]: a pooled top_k's partial results

    scratch& at(int t, std::size_t block_floats, std::size_t heap_entries) {
        if (per_thread.size() <= static_cast<std::size_t>(t)) per_thread.resize(static_cast<std::size_t>(t) + 1);
        auto& s = per_thread[static_cast<std::size_t>(t)];
        if (s.block.size() < block_floats) s.block.resize(block_floats);
        if (s.heap.size() < heap_entries) s.heap.resize(heap_entries);
        return s;
    }
};

namespace detail {

/// Queries scored together per item block by top_k_batch: each block is read from memory
/// once per group and from L1 by the rest of the group. A one-off sweep on the 2-core EPYC
/// dev machine (AVX-512, 16 queries, N = 1M, D = 64, k = 10, thread CPU time, 2026-11-23):
/// groups of 4 / 8 / 16 with 64 KB blocks took 66 / 53 / 46 ms, and 16 with 16 KB blocks
/// (top_k_group_floats) 38-40 ms: one pass over memory (~9 ms) plus 16 x ~1.9 ms of dot products.
inline constexpr std::int64_t top_k_group = 16;
/// Item values per block in top_k_batch (16 KB: the block stays in L1 for the group).
inline constexpr std::int64_t top_k_group_floats = 4096;

/// Rows per block: about `floats` item values, a multiple of the SIMD width w, at most 1024.
inline std::int64_t top_k_block_rows(std::int64_t d, std::int64_t w, std::int64_t floats = 16384) {
    std::int64_t r = std::clamp<std::int64_t>(floats / std::max<std::int64_t>(d, 1), w, 1024);
    return std::max(w, r / w * w);
}

/// One batch whose lane j is the sum of the lanes of row[j], j < w. xsimd::haddp does this,
/// but xsimd 8.1's AVX-512 version returns the sums in a permuted lane order (lanes 2-3 and
/// 4-5, 10-11 and 12-13 swapped), so AVX-512 gets its own transpose-and-add: pairs of rows
/// are added within 128-bit lanes (unpack ps), then pairs of pairs (unpack pd), then the four
/// 128-bit lanes of each group of 4 rows (shuffle_f32x4). test_ranking_topk checks the scores
/// against double-precision dot products at every ISA it is built for.
template <class A>
inline xsimd::batch<float, A> sum_rows(const xsimd::batch<float, A>* row) {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
        __m512 v[4];
        for (int g = 0; g < 4; ++g) {
            const __m512 a = row[4 * g], b = row[4 * g + 1], c = row[4 * g + 2], d = row[4 * g + 3];
            // Per 128-bit lane L: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d.
            const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
            const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
            // Per lane L: [sum a_L, sum b_L, sum c_L, sum d_L] (the 4 values of lane L each).
            const __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
            v[g] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)), _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
        }
        // Sum the four 128-bit lanes of v[g] into lane g of the result.
        const __m512 y01 = _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                         _mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(3, 2, 3, 2)));
        const __m512 y23 = _mm512_add_ps(_mm512_shuffle_f32x4(v[2], v[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                         _mm512_shuffle_f32x4(v[2], v[3], _MM_SHUFFLE(3, 2, 3, 2)));
        return _mm512_add_ps(_mm512_shuffle_f32x4(y01, y23, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(y01, y23, _MM_SHUFFLE(3, 1, 3, 1)));
    } else
#endif
    {
        return xsimd::haddp(row);
    }
}

/// out[r - b] = q . items[r] for rows [b, e); b a multiple of the SIMD width (so row r
/// always lands in lane r mod w and its score never depends on the call).
template <class A>
void dot_rows(const float* q, const float* items, std::int64_t d, std::int64_t b, std::int64_t e, float* out) {
    using bt = xsimd::batch<float, A>;
    constexpr std::int64_t w = static_cast<std::int64_t>(bt::size);
    const std::int64_t kv = d / w * w;
    for (std::int64_t r = b; r < e; r += w) {
        const std::int64_t rows = std::min(w, e - r);
        bt acc[w];
        for (auto& a : acc) a = bt(0.0f);
        const float* base = items + r * d;
        if (rows == w) {
            for (std::int64_t p = 0; p < kv; p += w) {
                const bt qv = bt::load_unaligned(q + p);
                for (std::int64_t j = 0; j < w; ++j) acc[j] = xsimd::fma(bt::load_unaligned(base + j * d + p), qv, acc[j]);
            }
        } else {
            for (std::int64_t p = 0; p < kv; p += w) {
                const bt qv = bt::load_unaligned(q + p);
                for (std::int64_t j = 0; j < rows; ++j) acc[j] = xsimd::fma(bt::load_unaligned(base + j * d + p), qv, acc[j]);
            }
        }
        bt s = sum_rows<A>(acc);
        if (kv < d) {
            alignas(64) float tail[w] = {};
            for (std::int64_t j = 0; j < rows; ++j) {
                float t = 0.0f;
                for (std::int64_t p = kv; p < d; ++p) t += base[j * d + p] * q[p];
                tail[j] = t;
            }
            s += bt::load_aligned(tail);
        }
        if (rows == w) {
            s.store_unaligned(out + (r - b));
        } else {
            alignas(64) float tmp[w];
            s.store_aligned(tmp);
            std::copy(tmp, tmp + rows, out + (r - b));
        }
    }
}

/// (score desc, id asc): a is better than b. As a heap comparator it keeps the worst on top.
inline bool better(const std::pair<float, std::int32_t>& a, const std::pair<float, std::int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
}

/// The running selection of one query: a heap of at most k entries (worst on top), the
/// threshold (its root's score once full) and a cursor into the sorted exclusion list.
struct selection {
    std::pair<float, std::int32_t>* heap = nullptr;
    std::int64_t size = 0, k = 0;
    float thr = -std::numeric_limits<float>::infinity();
    const std::int32_t* ex = nullptr;
    const std::int32_t* ex_end = nullptr;

    // Offers item id (ids offered in ascending order) with score s.
    void offer(std::int32_t id, float s) {
        while (ex != ex_end && *ex < id) ++ex;
        if (ex != ex_end && *ex == id) return;
        if (size < k) {
            heap[size++] = {s, id};
            std::push_heap(heap, heap + size, better);
            if (size == k) thr = heap[0].first;
            return;
        }
        // Full: s > thr was checked by the caller; a later id never wins a tie.
        std::pop_heap(heap, heap + size, better);
        heap[size - 1] = {s, id};
        std::push_heap(heap, heap + size, better);
        thr = heap[0].first;
    }

    // Offers the scores of rows [b, b + rows), `sc` holding them.
    template <class A>
    void offer_block(const float* sc, std::int64_t b, std::int64_t rows) {
        using bt = xsimd::batch<float, A>;
        constexpr std::int64_t w = static_cast<std::int64_t>(bt::size);
        std::int64_t i = 0;
        for (; i < rows && size < k; ++i) offer(static_cast<std::int32_t>(b + i), sc[i]);
        if (k == 0) return;
        for (; i < rows && i % w != 0; ++i)
            if (sc[i] > thr) offer(static_cast<std::int32_t>(b + i), sc[i]);
        for (; i + w <= rows; i += w) {
            if (!xsimd::any(bt::load_unaligned(sc + i) > bt(thr))) continue;
            for (std::int64_t j = i; j < i + w; ++j)
                if (sc[j] > thr) offer(static_cast<std::int32_t>(b + j), sc[j]);
        }
        for (; i < rows; ++i)
            if (sc[i] > thr) offer(static_cast<std::int32_t>(b + i), sc[i]);
    }

    // Writes the kept entries best first, padding with id -1 and score -inf; returns the count.
    std::int64_t finish(std::int32_t* ids, float* scores) {
        std::sort(heap, heap + size, better);
        for (std::int64_t j = 0; j < size; ++j) {
            ids[j] = heap[j].second;
            if (scores) scores[j] = heap[j].first;
        }
        for (std::int64_t j = size; j < k; ++j) {
            ids[j] = -1;
            if (scores) scores[j] = -std::numeric_limits<float>::infinity();
        }
        return size;
    }
};

inline void check_exclude(std::span<const std::int32_t> ex, const char* who) {
    XREC_CHECK(std::is_sorted(ex.begin(), ex.end()), who, ": the exclusion list must be sorted ascending");
}

// Queries [q0, q1) of a batch, scored together block by block.
template <class A>
void top_k_group_run(const float* queries, std::int64_t q0, std::int64_t q1, const float* items, std::int64_t n,
                     std::int64_t d, std::int64_t k, std::span<const std::int64_t> ex_off,
                     std::span<const std::int32_t> ex_ids, std::int32_t* out_ids, float* out_scores,
                     top_k_workspace::scratch& s, std::int64_t block) {
    selection sel[top_k_group];
    const std::int64_t g = q1 - q0;
    for (std::int64_t j = 0; j < g; ++j) {
        sel[j].heap = s.heap.data() + j * k;
        sel[j].k = k;
        if (!ex_off.empty()) {
            const auto qi = static_cast<std::size_t>(q0 + j);
            sel[j].ex = ex_ids.data() + ex_off[qi];
            sel[j].ex_end = ex_ids.data() + ex_off[qi + 1];
        }
    }
    for (std::int64_t b = 0; b < n; b += block) {
        const std::int64_t e = std::min(n, b + block);
        for (std::int64_t j = 0; j < g; ++j) {
            float* sc = s.block.data() + j * block;
            dot_rows<A>(queries + (q0 + j) * d, items, d, b, e, sc);
            sel[j].offer_block<A>(sc, b, e - b);
        }
    }
    for (std::int64_t j = 0; j < g; ++j)
        sel[j].finish(out_ids + (q0 + j) * k, out_scores ? out_scores + (q0 + j) * k : nullptr);
}

}  // namespace detail

/// Scores of q against every item: out[i] = q . items[i] (exactly the scores top_k ranks).
template <class B = cpu<>>
void score_all(std::span<const float> q, const float* items, std::int64_t n, std::int64_t d, std::span<float> out) {
    static_assert(is_cpu_v<B>, "xrec::serve::score_all: only the cpu backend has a top-K kernel");
    XREC_CHECK(d >= 1 && static_cast<std::int64_t>(q.size()) == d, "score_all: query of ", q.size(), " values for D = ", d);
    XREC_CHECK(n >= 0 && static_cast<std::int64_t>(out.size()) >= n, "score_all: ", out.size(), " outputs for N = ", n);
    detail::dot_rows<typename B::arch>(q.data(), items, d, 0, n, out.data());
}

/// The k best items for q (see the file comment): out_ids[0..k) best first, out_scores
/// beside them (out_scores may be empty). When fewer than k items remain after the
/// exclusions, the tail is id -1 and score -inf. Returns the number of items written.
/// q [D], items [N, D] row-major, exclude: ascending ids (ids outside [0, N) are ignored).
/// With a pool of T > 1 threads and N >= 2^16, the items are split in T static chunks
/// (boundaries on multiples of the SIMD width, so every score is the same), each thread
/// keeps its own k best and the T x k partial results are merged: the same list as one
/// thread, for any T.
template <class B = cpu<>>
std::int64_t top_k(std::span<const float> q, const float* items, std::int64_t n, std::int64_t d, std::int64_t k,
                   std::span<const std::int32_t> exclude, std::span<std::int32_t> out_ids, std::span<float> out_scores,
                   top_k_workspace& ws, thread_pool* pool = nullptr) {
    static_assert(is_cpu_v<B>, "xrec::serve::top_k: only the cpu backend has a top-K kernel");
    using A = typename B::arch;
    XREC_CHECK(d >= 1 && static_cast<std::int64_t>(q.size()) == d, "top_k: query of ", q.size(), " values for D = ", d);
    XREC_CHECK(n >= 0 && n <= std::numeric_limits<std::int32_t>::max(), "top_k: N = ", n, " items (ids are int32)");
    XREC_CHECK(k >= 0 && static_cast<std::int64_t>(out_ids.size()) >= k &&
                   (out_scores.empty() || static_cast<std::int64_t>(out_scores.size()) >= k),
               "top_k: k = ", k, " but outputs of ", out_ids.size(), " ids and ", out_scores.size(), " scores");
    detail::check_exclude(exclude, "top_k");
    if (k == 0) return 0;
    const std::int64_t w = static_cast<std::int64_t>(xsimd::batch<float, A>::size);
    const std::int64_t block = detail::top_k_block_rows(d, w);
    const int threads = (pool && n >= (std::int64_t{1} << 16)) ? pool->size() : 1;
    for (int t = 0; t < threads; ++t) ws.at(t, static_cast<std::size_t>(block), static_cast<std::size_t>(k));
    // Rows [b, e) of thread t's chunk, scored and selected into its own heap.
    auto run = [&](int t, std::int64_t b, std::int64_t e) {
        auto& s = ws.per_thread[static_cast<std::size_t>(t)];
        detail::selection sel;
        sel.heap = s.heap.data();
        sel.k = k;
        sel.ex = std::lower_bound(exclude.data(), exclude.data() + exclude.size(), static_cast<std::int32_t>(b));
        sel.ex_end = exclude.data() + exclude.size();
        for (std::int64_t r = b; r < e; r += block) {
            const std::int64_t re = std::min(e, r + block);
            detail::dot_rows<A>(q.data(), items, d, r, re, s.block.data());
            sel.offer_block<A>(s.block.data(), r, re - r);
        }
        return sel;
    };
    if (threads == 1) {
        auto sel = run(0, 0, n);
        return sel.finish(out_ids.data(), out_scores.empty() ? nullptr : out_scores.data());
    }
    if (ws.merge.size() < static_cast<std::size_t>(threads * k)) ws.merge.resize(static_cast<std::size_t>(threads * k));
    std::int64_t kept[256] = {};
    XREC_CHECK(threads <= 256, "top_k: at most 256 pool threads, got ", threads);
    const std::int64_t groups = (n + w - 1) / w;  // chunks of whole SIMD groups
    parallel_for(pool, groups, 0, [&](std::int64_t gb, std::int64_t ge, int t) {
        auto sel = run(t, gb * w, std::min(n, ge * w));
        std::copy(sel.heap, sel.heap + sel.size, ws.merge.begin() + static_cast<std::ptrdiff_t>(t * k));
        kept[t] = sel.size;
    });
    // Merge: every thread's entries, best first, the first k.
    std::int64_t total = 0;
    for (int t = 0; t < threads; ++t) {
        std::copy(ws.merge.begin() + static_cast<std::ptrdiff_t>(t * k), ws.merge.begin() + static_cast<std::ptrdiff_t>(t * k + kept[t]),
                  ws.merge.begin() + static_cast<std::ptrdiff_t>(total));
        total += kept[t];
    }
    detail::selection all;
    all.heap = ws.merge.data();
    all.size = std::min(total, k);
    all.k = k;
    std::partial_sort(ws.merge.begin(), ws.merge.begin() + static_cast<std::ptrdiff_t>(all.size),
                      ws.merge.begin() + static_cast<std::ptrdiff_t>(total), detail::better);
    return all.finish(out_ids.data(), out_scores.empty() ? nullptr : out_scores.data());
}

/// top_k with this thread's own workspace (allocates on a thread's first, larger call only).
template <class B = cpu<>>
std::int64_t top_k(std::span<const float> q, const float* items, std::int64_t n, std::int64_t d, std::int64_t k,
                   std::span<const std::int32_t> exclude, std::span<std::int32_t> out_ids, std::span<float> out_scores) {
    thread_local top_k_workspace ws;
    return top_k<B>(q, items, n, d, k, exclude, out_ids, out_scores, ws);
}

/// The same selection over precomputed scores (e.g. a model's full-catalogue scores):
/// the k best of scores[0..N) by (score desc, id asc), skipping `exclude`.
template <class B = cpu<>>
std::int64_t top_k_of_scores(std::span<const float> scores, std::int64_t k, std::span<const std::int32_t> exclude,
                             std::span<std::int32_t> out_ids, std::span<float> out_scores, top_k_workspace& ws) {
    static_assert(is_cpu_v<B>, "xrec::serve::top_k_of_scores: only the cpu backend has a top-K kernel");
    XREC_CHECK(k >= 0 && static_cast<std::int64_t>(out_ids.size()) >= k &&
                   (out_scores.empty() || static_cast<std::int64_t>(out_scores.size()) >= k),
               "top_k_of_scores: k = ", k, " but outputs of ", out_ids.size(), " ids and ", out_scores.size(), " scores");
    detail::check_exclude(exclude, "top_k_of_scores");
    if (k == 0) return 0;
    auto& s = ws.at(0, 0, static_cast<std::size_t>(k));
    detail::selection sel;
    sel.heap = s.heap.data();
    sel.k = k;
    sel.ex = exclude.data();
    sel.ex_end = exclude.data() + exclude.size();
    sel.offer_block<typename B::arch>(scores.data(), 0, static_cast<std::int64_t>(scores.size()));
    return sel.finish(out_ids.data(), out_scores.empty() ? nullptr : out_scores.data());
}

/// m queries at once: queries [m, D] row-major; exclusions in CSR form (exclude_offsets
/// [m + 1] into exclude_ids, each query's slice ascending; both empty for none); outputs
/// [m, k] row-major (out_scores may be null). Queries are split in static chunks over
/// `pool` (null: the calling thread) and, within a chunk, scored in groups of 16 that share
/// each item block. Results are identical to m calls of top_k, for any thread count.
template <class B = cpu<>>
void top_k_batch(const float* queries, std::int64_t m, const float* items, std::int64_t n, std::int64_t d, std::int64_t k,
                 std::span<const std::int64_t> exclude_offsets, std::span<const std::int32_t> exclude_ids,
                 std::int32_t* out_ids, float* out_scores, top_k_workspace& ws, thread_pool* pool = nullptr) {
    static_assert(is_cpu_v<B>, "xrec::serve::top_k_batch: only the cpu backend has a top-K kernel");
    using A = typename B::arch;
    XREC_CHECK(m >= 0 && d >= 1 && k >= 0 && n >= 0 && n <= std::numeric_limits<std::int32_t>::max(),
               "top_k_batch: bad sizes m = ", m, ", N = ", n, ", D = ", d, ", k = ", k);
    XREC_CHECK(exclude_offsets.empty() || static_cast<std::int64_t>(exclude_offsets.size()) == m + 1,
               "top_k_batch: ", exclude_offsets.size(), " exclusion offsets for ", m, " queries (need m + 1 or none)");
    if (!exclude_offsets.empty()) {
        XREC_CHECK(exclude_offsets[0] == 0 && exclude_offsets.back() == static_cast<std::int64_t>(exclude_ids.size()),
                   "top_k_batch: exclusion offsets must run from 0 to ", exclude_ids.size());
        for (std::int64_t j = 0; j < m; ++j) {
            const auto b = exclude_offsets[static_cast<std::size_t>(j)], e = exclude_offsets[static_cast<std::size_t>(j) + 1];
            XREC_CHECK(b <= e, "top_k_batch: exclusion offsets decrease at query ", j);
            XREC_CHECK(std::is_sorted(exclude_ids.begin() + b, exclude_ids.begin() + e), "top_k_batch: query ", j,
                       "'s exclusion list must be sorted ascending");
        }
    }
    if (k == 0 || m == 0) return;
    const std::int64_t w = static_cast<std::int64_t>(xsimd::batch<float, A>::size);
    const std::int64_t block = detail::top_k_block_rows(d, w, detail::top_k_group_floats);
    const int threads = pool ? pool->size() : 1;
    // Grow every thread's scratch here, on the calling thread, so workers never allocate.
    for (int t = 0; t < threads; ++t)
        ws.at(t, static_cast<std::size_t>(block * detail::top_k_group), static_cast<std::size_t>(k * detail::top_k_group));
    parallel_for(pool, m, 2, [&](std::int64_t b, std::int64_t e, int t) {
        auto& s = ws.per_thread[static_cast<std::size_t>(t)];
        for (std::int64_t q0 = b; q0 < e; q0 += detail::top_k_group)
            detail::top_k_group_run<A>(queries, q0, std::min(e, q0 + detail::top_k_group), items, n, d, k, exclude_offsets,
                                       exclude_ids, out_ids, out_scores, s, block);
    });
}

}  // namespace xrec::serve
