#pragma once
// Evaluation drivers of the ranking models: they hand a scorer the candidates of each test
// user under a protocol and accumulate metrics::ranking_metrics.
//
//  - evaluate_sampled: the target among N sampled negatives (NCF's ml-100k protocol). The
//    negatives of row u are a pure function of (seed, u) (data::negative_sampler), never an
//    item of u (train, valid or test), and can be exported (make_sampled_candidates +
//    save_candidates) so that a PyTorch peer ranks exactly the same candidates.
//  - evaluate_full: the target among all items, the user's history (train + valid for the
//    test target, train for the valid target) masked; the target itself is never masked
//    (a repeat of a history item can still be hit).
//  - evaluate_sessions: every next click of each test session (GRU4Rec's protocol): the
//    prefix items[0..t) predicts items[t], full ranking, nothing masked.
//
// Ranks are pessimistic (metrics::target_rank: ties count against the target). The top-K
// list behind coverage / popularity / Gini is the k best candidates by (score desc, id
// asc). Users are visited in row order on the calling thread: results are deterministic
// (the scorer may use threads inside).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"
#include "xrec/data/interactions.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/metrics/ranking.hpp"

namespace xrec::train {

/// Which held-out item is the target: the test item (history = train + valid) or the
/// validation item (history = train).
enum class eval_target { test, valid };

/// The candidates of the sampled protocol: for each evaluated row users[r], items
/// [r * per_user, (r + 1) * per_user): the target first, then the negatives.
struct sampled_candidates {
    std::vector<std::int64_t> users;
    std::vector<std::int32_t> items;
    std::int32_t per_user = 0;

    std::int64_t size() const { return static_cast<std::int64_t>(users.size()); }
    std::span<const std::int32_t> row(std::int64_t r) const {
        return std::span<const std::int32_t>(items).subspan(static_cast<std::size_t>(r * per_user),
                                                            static_cast<std::size_t>(per_user));
    }
};

namespace detail {
inline std::int32_t target_of(const data::loo_split& s, std::int64_t u, eval_target t) {
    return (t == eval_target::test ? s.test : s.valid)[static_cast<std::size_t>(u)];
}
// Everything row u has interacted with (train, valid, test), sorted: the sampler's exclusions.
inline void all_items_of(const data::loo_split& s, std::int64_t u, std::vector<std::int32_t>& out) {
    const auto row = s.train.row(u);
    out.assign(row.begin(), row.end());
    for (auto v : {s.valid[static_cast<std::size_t>(u)], s.test[static_cast<std::size_t>(u)]})
        if (v >= 0) out.push_back(v);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
}
// History masked under full ranking: train (+ valid when the target is the test item).
inline void history_of(const data::loo_split& s, std::int64_t u, eval_target t, std::vector<std::int32_t>& out) {
    const auto row = s.train.row(u);
    out.assign(row.begin(), row.end());
    if (t == eval_target::test && s.valid[static_cast<std::size_t>(u)] >= 0) out.push_back(s.valid[static_cast<std::size_t>(u)]);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
}

// The k best (score desc, id asc) of ids [0, n) not in `mask` (sorted); list shorter when
// fewer remain. A scalar running heap: evaluation, not serving (serve::top_k is the fast one).
inline void select_top(std::span<const float> scores, std::span<const std::int32_t> mask, std::int32_t k,
                       std::vector<std::pair<float, std::int32_t>>& heap, std::vector<std::int32_t>& out) {
    auto better = [](const std::pair<float, std::int32_t>& a, const std::pair<float, std::int32_t>& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    heap.clear();
    std::size_t c = 0;
    for (std::int32_t i = 0; i < static_cast<std::int32_t>(scores.size()); ++i) {
        while (c < mask.size() && mask[c] < i) ++c;
        if (c < mask.size() && mask[c] == i) continue;
        const float s = scores[static_cast<std::size_t>(i)];
        if (static_cast<std::int32_t>(heap.size()) < k) {
            heap.push_back({s, i});
            std::push_heap(heap.begin(), heap.end(), better);
        } else if (k > 0 && s > heap.front().first) {
            std::pop_heap(heap.begin(), heap.end(), better);
            heap.back() = {s, i};
            std::push_heap(heap.begin(), heap.end(), better);
        }
    }
    std::sort(heap.begin(), heap.end(), better);
    out.clear();
    for (auto& h : heap) out.push_back(h.second);
}

inline std::int32_t max_of(const std::vector<std::int32_t>& ks) {
    XREC_CHECK(!ks.empty(), "ranking evaluation: no cut-off K given");
    return *std::max_element(ks.begin(), ks.end());
}
}  // namespace detail

/// The sampled candidates of every row with a target: the target, then `negatives`
/// distinct items the row never interacted with, drawn by `sampler` on the stream of
/// (seed, row). A pure function of (split, sampler, negatives, seed, target).
inline sampled_candidates make_sampled_candidates(const data::loo_split& s, const data::negative_sampler& sampler,
                                                  std::int32_t negatives, std::uint64_t seed,
                                                  eval_target target = eval_target::test) {
    XREC_CHECK(negatives >= 0, "make_sampled_candidates: negatives = ", negatives);
    XREC_CHECK(sampler.n_items() == s.n_items(), "make_sampled_candidates: sampler over ", sampler.n_items(),
               " items for a split of ", s.n_items());
    sampled_candidates c;
    c.per_user = negatives + 1;
    std::vector<std::int32_t> seen;
    for (std::int64_t u = 0; u < s.rows(); ++u) {
        const auto t = detail::target_of(s, u, target);
        if (t < 0) continue;
        detail::all_items_of(s, u, seen);
        c.users.push_back(u);
        const auto at = c.items.size();
        c.items.resize(at + static_cast<std::size_t>(c.per_user));
        c.items[at] = t;
        sampler.sample(seen, negatives, seed, u, std::span<std::int32_t>(c.items).subspan(at + 1, static_cast<std::size_t>(negatives)));
    }
    return c;
}

/// Writes the candidates as safetensors: "users" I64 [U], "items" I32 [U, 1 + negatives]
/// (column 0 the target), metadata seed/negatives/sampler, for a PyTorch peer.
inline void save_candidates(const sampled_candidates& c, const std::string& path, std::uint64_t seed,
                            const std::string& sampler) {
    io::safetensors_writer w;
    w.add("users", shape{c.size()}, c.users.data());
    w.add("items", shape{c.size(), c.per_user}, c.items.data());
    w.set_metadata("seed", std::to_string(seed));
    w.set_metadata("negatives", std::to_string(c.per_user - 1));
    w.set_metadata("sampler", sampler);
    w.write(path);
}

/// Sampled protocol on precomputed candidates. score(user, candidate items, out scores).
template <class ScoreItems>
std::vector<metrics::ranking_metrics> evaluate_sampled(const sampled_candidates& c, std::int32_t n_items,
                                                       ScoreItems&& score, std::vector<std::int32_t> ks,
                                                       std::span<const double> popularity = {}) {
    const auto kmax = detail::max_of(ks);
    metrics::ranking_accumulator acc(std::move(ks), n_items, popularity);
    std::vector<float> sc(static_cast<std::size_t>(c.per_user));
    std::vector<std::int32_t> order(static_cast<std::size_t>(c.per_user)), top;
    for (std::int64_t r = 0; r < c.size(); ++r) {
        const auto cand = c.row(r);
        score(c.users[static_cast<std::size_t>(r)], cand, std::span<float>(sc));
        const auto rank = metrics::target_rank(sc, 0);
        // The top list: candidates by score desc; the target after its ties (as its rank
        // says), the others by id asc.
        for (std::int32_t j = 0; j < c.per_user; ++j) order[static_cast<std::size_t>(j)] = j;
        const auto lim = std::min<std::size_t>(static_cast<std::size_t>(kmax), order.size());
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(lim), order.end(),
                          [&](std::int32_t a, std::int32_t b) {
                              const float x = sc[static_cast<std::size_t>(a)], y = sc[static_cast<std::size_t>(b)];
                              if (x != y) return x > y;
                              if ((a == 0) != (b == 0)) return b == 0;
                              return cand[static_cast<std::size_t>(a)] < cand[static_cast<std::size_t>(b)];
                          });
        top.clear();
        for (std::size_t j = 0; j < lim; ++j) top.push_back(cand[static_cast<std::size_t>(order[j])]);
        acc.add_rank(rank, top);
    }
    return acc.result();
}

/// Sampled protocol: draws the candidates (make_sampled_candidates) and ranks them.
template <class ScoreItems>
std::vector<metrics::ranking_metrics> evaluate_sampled(const data::loo_split& s, const data::negative_sampler& sampler,
                                                       std::int32_t negatives, std::uint64_t seed, ScoreItems&& score,
                                                       std::vector<std::int32_t> ks, std::span<const double> popularity = {},
                                                       eval_target target = eval_target::test) {
    const auto c = make_sampled_candidates(s, sampler, negatives, seed, target);
    return evaluate_sampled(c, s.n_items(), score, std::move(ks), popularity);
}

/// Full ranking with the history masked. score(user, out scores of all n_items items).
template <class ScoreAll>
std::vector<metrics::ranking_metrics> evaluate_full(const data::loo_split& s, ScoreAll&& score, std::vector<std::int32_t> ks,
                                                    std::span<const double> popularity = {},
                                                    eval_target target = eval_target::test) {
    const auto kmax = detail::max_of(ks);
    metrics::ranking_accumulator acc(std::move(ks), s.n_items(), popularity);
    std::vector<float> sc(static_cast<std::size_t>(s.n_items()));
    std::vector<std::int32_t> hist, top;
    std::vector<std::pair<float, std::int32_t>> heap;
    for (std::int64_t u = 0; u < s.rows(); ++u) {
        const auto t = detail::target_of(s, u, target);
        if (t < 0) continue;
        score(u, std::span<float>(sc));
        detail::history_of(s, u, target, hist);
        // The target is never masked: drop it from the mask if the history holds it.
        if (auto it = std::lower_bound(hist.begin(), hist.end(), t); it != hist.end() && *it == t) hist.erase(it);
        const float ts = sc[static_cast<std::size_t>(t)];
        XREC_CHECK(!std::isnan(ts), "evaluate_full: the score of user ", u, "'s target item ", t, " is NaN");
        std::int64_t rank = 0;
        std::size_t c = 0;
        for (std::int32_t i = 0; i < s.n_items(); ++i) {
            while (c < hist.size() && hist[c] < i) ++c;
            if (i == t || (c < hist.size() && hist[c] == i)) continue;
            if (!(sc[static_cast<std::size_t>(i)] < ts)) ++rank;
        }
        detail::select_top(sc, hist, kmax, heap, top);
        acc.add_rank(rank, top);
    }
    return acc.result();
}

/// Session protocol: for every test session and every t >= 1, the prefix items[0..t)
/// predicts items[t] among all items (nothing masked). score(session row, prefix, out).
template <class ScorePrefix>
std::vector<metrics::ranking_metrics> evaluate_sessions(const data::sequences& test, ScorePrefix&& score,
                                                        std::vector<std::int32_t> ks,
                                                        std::span<const double> popularity = {}) {
    const auto kmax = detail::max_of(ks);
    metrics::ranking_accumulator acc(std::move(ks), test.n_items, popularity);
    std::vector<float> sc(static_cast<std::size_t>(test.n_items));
    std::vector<std::int32_t> top;
    std::vector<std::pair<float, std::int32_t>> heap;
    for (std::int64_t r = 0; r < test.rows(); ++r) {
        const auto row = test.row(r);
        for (std::size_t t = 1; t < row.size(); ++t) {
            score(r, row.first(t), std::span<float>(sc));
            const float ts = sc[static_cast<std::size_t>(row[t])];
            XREC_CHECK(!std::isnan(ts), "evaluate_sessions: the score of session ", r, "'s next item is NaN");
            std::int64_t rank = 0;
            for (std::int32_t i = 0; i < test.n_items; ++i)
                if (i != row[t] && !(sc[static_cast<std::size_t>(i)] < ts)) ++rank;
            detail::select_top(sc, {}, kmax, heap, top);
            acc.add_rank(rank, top);
        }
    }
    return acc.result();
}

}  // namespace xrec::train
