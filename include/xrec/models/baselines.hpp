#pragma once
// Non-neural baselines every ranking table prints beside the models:
//  - most_popular: score(i) = the number of training events of item i.
//  - item_knn: item-to-item cosine similarity over the binary user-item matrix, the
//    `neighbours` most similar items kept per item; score(u, j) = sum over the distinct
//    items i of u's history of sim(i, j) (j among i's neighbours).
//  - session_knn: the session-based kNN of Ludewig & Jannach (Evaluation of session-based
//    recommendation algorithms, 2018): S-SkNN (cosine between the current session and past
//    sessions) and V-SkNN (the current session's items weighted by recency, linear decay).
// Inputs are CSR spans (offsets [rows + 1], items), one row per user or session, so this
// header knows no data loader. Every fit is a pure function of its input.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"

namespace xrec::models {

namespace detail {
inline void check_csr(const char* who, std::int32_t n_items, std::span<const std::int64_t> offsets,
                      std::span<const std::int32_t> items) {
    XREC_CHECK(n_items > 0, who, ": n_items must be > 0, got ", n_items);
    XREC_CHECK(!offsets.empty() && offsets.front() == 0 && offsets.back() == static_cast<std::int64_t>(items.size()), who,
               ": CSR offsets must run from 0 to ", items.size());
    for (std::size_t r = 0; r + 1 < offsets.size(); ++r)
        XREC_CHECK(offsets[r] <= offsets[r + 1], who, ": CSR offsets decrease at row ", r);
    for (std::size_t e = 0; e < items.size(); ++e)
        XREC_CHECK(items[e] >= 0 && items[e] < n_items, who, ": item ", items[e], " (event ", e, ") outside [0, ", n_items, ")");
}
inline std::span<const std::int32_t> csr_row(std::span<const std::int64_t> off, std::span<const std::int32_t> items,
                                             std::size_t r) {
    return items.subspan(static_cast<std::size_t>(off[r]), static_cast<std::size_t>(off[r + 1] - off[r]));
}
// Distinct items of a row, sorted, into out.
inline void distinct(std::span<const std::int32_t> row, std::vector<std::int32_t>& out) {
    out.assign(row.begin(), row.end());
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
}
}  // namespace detail

/// Popularity: score(i) = count of item i in the training events (ties are real: many
/// items share a count, and pessimistic ranking gives them no free credit).
class most_popular {
public:
    most_popular(std::int32_t n_items, std::span<const std::int64_t> offsets, std::span<const std::int32_t> items) {
        detail::check_csr("most_popular", n_items, offsets, items);
        counts_.assign(static_cast<std::size_t>(n_items), 0.0);
        for (auto i : items) counts_[static_cast<std::size_t>(i)] += 1.0;
    }
    std::int32_t n_items() const { return static_cast<std::int32_t>(counts_.size()); }
    std::span<const double> counts() const { return counts_; }
    void score(std::span<const std::int32_t> candidates, std::span<float> out) const {
        XREC_CHECK(out.size() >= candidates.size(), "most_popular::score: ", out.size(), " outputs for ", candidates.size(),
                   " candidates");
        for (std::size_t j = 0; j < candidates.size(); ++j) out[j] = static_cast<float>(counts_[static_cast<std::size_t>(candidates[j])]);
    }
    void score_all(std::span<float> out) const {
        XREC_CHECK(out.size() == counts_.size(), "most_popular::score_all: ", out.size(), " outputs for ", counts_.size(), " items");
        for (std::size_t i = 0; i < counts_.size(); ++i) out[i] = static_cast<float>(counts_[i]);
    }

private:
    std::vector<double> counts_;
};

/// Options of item_knn.
struct item_knn_options {
    std::int32_t neighbours = 100;  ///< most similar items kept per item (RecBole's ItemKNN default k)
    double shrink = 0;              ///< sim = co / (sqrt(n_i n_j) + shrink)
};

/// Item-based kNN (cosine over users). Similarities: co(i, j) = users with both i and j
/// (each user's items counted once), sim = co / (sqrt(n_i n_j) + shrink), i != j; per item
/// the `neighbours` largest (ties: smaller id) are kept in CSR form.
class item_knn {
public:
    item_knn(std::int32_t n_items, std::span<const std::int64_t> offsets, std::span<const std::int32_t> items,
             item_knn_options o = {})
        : n_(n_items) {
        detail::check_csr("item_knn", n_items, offsets, items);
        XREC_CHECK(o.neighbours >= 1 && o.shrink >= 0, "item_knn: neighbours ", o.neighbours, " and shrink ", o.shrink,
                   " must be >= 1 and >= 0");
        const std::size_t rows = offsets.size() - 1;
        // Item -> users (distinct) in CSR form.
        std::vector<std::vector<std::int32_t>> urow(rows);
        std::vector<std::int64_t> cnt(static_cast<std::size_t>(n_) + 1, 0);
        for (std::size_t r = 0; r < rows; ++r) {
            detail::distinct(detail::csr_row(offsets, items, r), urow[r]);
            for (auto i : urow[r]) ++cnt[static_cast<std::size_t>(i) + 1];
        }
        std::vector<double> n_users(static_cast<std::size_t>(n_));
        for (std::size_t i = 0; i < n_users.size(); ++i) n_users[i] = static_cast<double>(cnt[i + 1]);
        for (std::size_t i = 0; i < static_cast<std::size_t>(n_); ++i) cnt[i + 1] += cnt[i];
        std::vector<std::int32_t> users(static_cast<std::size_t>(cnt.back()));
        {
            std::vector<std::int64_t> pos(cnt.begin(), cnt.end() - 1);
            for (std::size_t r = 0; r < rows; ++r)
                for (auto i : urow[r]) users[static_cast<std::size_t>(pos[static_cast<std::size_t>(i)]++)] = static_cast<std::int32_t>(r);
        }
        off_.assign(1, 0);
        std::vector<double> co(static_cast<std::size_t>(n_), 0.0);
        std::vector<std::int32_t> touched;
        std::vector<std::pair<double, std::int32_t>> cand;
        for (std::int32_t i = 0; i < n_; ++i) {
            touched.clear();
            for (auto k = cnt[static_cast<std::size_t>(i)]; k < cnt[static_cast<std::size_t>(i) + 1]; ++k)
                for (auto j : urow[static_cast<std::size_t>(users[static_cast<std::size_t>(k)])]) {
                    if (j == i) continue;
                    if (co[static_cast<std::size_t>(j)] == 0) touched.push_back(j);
                    co[static_cast<std::size_t>(j)] += 1.0;
                }
            cand.clear();
            for (auto j : touched) {
                const double den = std::sqrt(n_users[static_cast<std::size_t>(i)] * n_users[static_cast<std::size_t>(j)]) + o.shrink;
                cand.push_back({co[static_cast<std::size_t>(j)] / den, j});
                co[static_cast<std::size_t>(j)] = 0;
            }
            const auto keep = std::min<std::size_t>(cand.size(), static_cast<std::size_t>(o.neighbours));
            std::partial_sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(keep), cand.end(),
                              [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
            for (std::size_t k = 0; k < keep; ++k) {
                nbr_.push_back(cand[k].second);
                sim_.push_back(static_cast<float>(cand[k].first));
            }
            off_.push_back(static_cast<std::int64_t>(nbr_.size()));
        }
    }

    std::int32_t n_items() const { return n_; }
    /// Item i's kept neighbours and their similarities, most similar first.
    std::span<const std::int32_t> neighbours(std::int32_t i) const {
        return std::span<const std::int32_t>(nbr_).subspan(static_cast<std::size_t>(off_[static_cast<std::size_t>(i)]),
                                                           static_cast<std::size_t>(off_[static_cast<std::size_t>(i) + 1] - off_[static_cast<std::size_t>(i)]));
    }
    std::span<const float> similarities(std::int32_t i) const {
        return std::span<const float>(sim_).subspan(static_cast<std::size_t>(off_[static_cast<std::size_t>(i)]),
                                                    static_cast<std::size_t>(off_[static_cast<std::size_t>(i) + 1] - off_[static_cast<std::size_t>(i)]));
    }

    /// Scores of every item for a user whose history is `history` (any order, repeats count once).
    void score_all(std::span<const std::int32_t> history, std::span<float> out) const {
        XREC_CHECK(static_cast<std::int64_t>(out.size()) == n_, "item_knn::score_all: ", out.size(), " outputs for ", n_, " items");
        std::fill(out.begin(), out.end(), 0.0f);
        std::vector<std::int32_t> h;
        detail::distinct(history, h);
        for (auto i : h) {
            XREC_CHECK(i >= 0 && i < n_, "item_knn::score_all: history item ", i, " outside [0, ", n_, ")");
            const auto nb = neighbours(i);
            const auto sm = similarities(i);
            for (std::size_t k = 0; k < nb.size(); ++k) out[static_cast<std::size_t>(nb[k])] += sm[k];
        }
    }
    /// Scores of the candidates only.
    void score(std::span<const std::int32_t> history, std::span<const std::int32_t> candidates, std::span<float> out) const {
        std::vector<float> all(static_cast<std::size_t>(n_));
        score_all(history, all);
        for (std::size_t j = 0; j < candidates.size(); ++j) out[j] = all[static_cast<std::size_t>(candidates[j])];
    }

private:
    std::int32_t n_;
    std::vector<std::int64_t> off_;
    std::vector<std::int32_t> nbr_;
    std::vector<float> sim_;
};

/// Options of session_knn.
struct session_knn_options {
    /// S-SkNN: sim = |s ∩ n| / sqrt(|s| |n|) (distinct items). V-SkNN: the current
    /// session's item at position p of L (1-based, its last occurrence) weighs p / L, and
    /// sim = sum of the weights of the shared items / |distinct items of s| (session-rec's
    /// vsknn with linear decay and dot similarity).
    enum class weighting { cosine, linear_decay };
    weighting mode = weighting::linear_decay;
    std::int32_t k = 100;             ///< neighbour sessions used for scoring
    std::int32_t sample_size = 500;   ///< candidate sessions: the most recent ones sharing an item (0 = all)
};

/// Session-based kNN. The training sessions must be in chronological order (a later row =
/// a more recent session, as data::load_sessions orders them). score_all(s): the past
/// sessions sharing an item with s, the most recent sample_size of them, are scored by
/// similarity; the k most similar (ties: the more recent) vote: score(i) = sum of the
/// similarities of the neighbours containing i.
class session_knn {
public:
    session_knn(std::int32_t n_items, std::span<const std::int64_t> offsets, std::span<const std::int32_t> items,
                session_knn_options o = {})
        : n_(n_items), o_(o) {
        detail::check_csr("session_knn", n_items, offsets, items);
        XREC_CHECK(o.k >= 1 && o.sample_size >= 0, "session_knn: k ", o.k, " must be >= 1 and sample_size ", o.sample_size,
                   " >= 0");
        const std::size_t rows = offsets.size() - 1;
        soff_.assign(1, 0);
        std::vector<std::int32_t> d;
        std::vector<std::int64_t> cnt(static_cast<std::size_t>(n_) + 1, 0);
        for (std::size_t r = 0; r < rows; ++r) {
            detail::distinct(detail::csr_row(offsets, items, r), d);
            sitems_.insert(sitems_.end(), d.begin(), d.end());
            soff_.push_back(static_cast<std::int64_t>(sitems_.size()));
            for (auto i : d) ++cnt[static_cast<std::size_t>(i) + 1];
        }
        for (std::size_t i = 0; i < static_cast<std::size_t>(n_); ++i) cnt[i + 1] += cnt[i];
        ioff_ = cnt;
        isess_.resize(static_cast<std::size_t>(cnt.back()));
        std::vector<std::int64_t> pos(cnt.begin(), cnt.end() - 1);
        for (std::size_t r = 0; r < rows; ++r)  // ascending r: each item's session list is chronological
            for (auto k = soff_[r]; k < soff_[r + 1]; ++k) {
                const auto i = static_cast<std::size_t>(sitems_[static_cast<std::size_t>(k)]);
                isess_[static_cast<std::size_t>(pos[i]++)] = static_cast<std::int32_t>(r);
            }
    }

    std::int32_t n_items() const { return n_; }

    /// Scores of every item given the current session's items so far (oldest first).
    void score_all(std::span<const std::int32_t> session, std::span<float> out) const {
        XREC_CHECK(static_cast<std::int64_t>(out.size()) == n_, "session_knn::score_all: ", out.size(), " outputs for ", n_, " items");
        std::fill(out.begin(), out.end(), 0.0f);
        if (session.empty()) return;
        // Weights of the current session's distinct items.
        std::vector<std::pair<std::int32_t, double>> w;  // (item, weight), sorted by item
        const double L = static_cast<double>(session.size());
        for (std::size_t p = 0; p < session.size(); ++p) {
            const auto i = session[p];
            XREC_CHECK(i >= 0 && i < n_, "session_knn::score_all: item ", i, " outside [0, ", n_, ")");
            w.push_back({i, o_.mode == session_knn_options::weighting::linear_decay ? static_cast<double>(p + 1) / L : 1.0});
        }
        // Last occurrence wins: stable sort by item, keep the last of each run.
        std::stable_sort(w.begin(), w.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        std::vector<std::pair<std::int32_t, double>> wd;
        for (std::size_t j = 0; j < w.size(); ++j)
            if (j + 1 == w.size() || w[j + 1].first != w[j].first) wd.push_back(w[j]);
        // Candidate sessions: union of the sessions of these items, the most recent sample_size.
        std::vector<std::int32_t> cand;
        for (const auto& [i, _] : wd)
            cand.insert(cand.end(), isess_.begin() + ioff_[static_cast<std::size_t>(i)], isess_.begin() + ioff_[static_cast<std::size_t>(i) + 1]);
        std::sort(cand.begin(), cand.end());
        cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
        if (o_.sample_size > 0 && static_cast<std::int64_t>(cand.size()) > o_.sample_size)
            cand.erase(cand.begin(), cand.end() - o_.sample_size);
        // Similarities.
        const double ns = static_cast<double>(wd.size());
        std::vector<std::pair<double, std::int32_t>> sims;
        sims.reserve(cand.size());
        for (auto r : cand) {
            const auto b = soff_[static_cast<std::size_t>(r)], e = soff_[static_cast<std::size_t>(r) + 1];
            double dot = 0;
            std::size_t a = 0;
            for (auto k = b; k < e && a < wd.size(); ++k) {  // both sorted by item: merge
                const auto it = sitems_[static_cast<std::size_t>(k)];
                while (a < wd.size() && wd[a].first < it) ++a;
                if (a < wd.size() && wd[a].first == it) dot += wd[a].second;
            }
            const double sim = o_.mode == session_knn_options::weighting::linear_decay
                                   ? dot / ns
                                   : dot / std::sqrt(ns * static_cast<double>(e - b));
            if (sim > 0) sims.push_back({sim, r});
        }
        const auto keep = std::min<std::size_t>(sims.size(), static_cast<std::size_t>(o_.k));
        std::partial_sort(sims.begin(), sims.begin() + static_cast<std::ptrdiff_t>(keep), sims.end(),
                          [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second > b.second); });
        for (std::size_t j = 0; j < keep; ++j) {
            const auto r = static_cast<std::size_t>(sims[j].second);
            for (auto k = soff_[r]; k < soff_[r + 1]; ++k)
                out[static_cast<std::size_t>(sitems_[static_cast<std::size_t>(k)])] += static_cast<float>(sims[j].first);
        }
    }

private:
    std::int32_t n_;
    session_knn_options o_;
    std::vector<std::int64_t> soff_;   // session -> distinct items (sorted)
    std::vector<std::int32_t> sitems_;
    std::vector<std::int64_t> ioff_;   // item -> sessions containing it (ascending = chronological)
    std::vector<std::int32_t> isess_;
};

}  // namespace xrec::models
