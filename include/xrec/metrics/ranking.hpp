#pragma once
// Top-K ranking metrics: HR, Recall, Precision, NDCG, MRR and MAP at several K at once, and
// the list-level measures item coverage, average popularity (novelty) and the Gini index of
// how often each item is recommended. Every result carries the protocol it was measured
// under (sampled candidates or full ranking, the sampler, the masking, the split), and
// format_table prints that protocol line above the numbers: a HR@10 without its protocol
// is not comparable with anything.
//
// Per user with relevant set R and ranked list L (best first), at cut-off K:
//   hits      = |L[0..K) ∩ R|
//   HR@K      = 1 if hits > 0                         (hit ratio)
//   Recall@K  = hits / |R|
//   Prec@K    = hits / K
//   NDCG@K    = sum_{i<K, L[i] in R} 1/log2(i+2)  /  sum_{i<min(|R|,K)} 1/log2(i+2)
//   MRR@K     = 1/(p+1), p the first position of a relevant item below K (else 0)
//   MAP@K     = sum_{i<K, L[i] in R} Prec@(i+1)  /  min(|R|, K)
// each averaged over the users added (users with R empty are refused). With one relevant
// item (leave-one-out) at 0-based rank r: HR = Recall = [r < K], Prec = [r < K]/K,
// NDCG = [r < K]/log2(r+2), MRR = MAP = [r < K]/(r+1).
// List measures over the top-K lists of all users (only when lists were given):
//   coverage       = |distinct items in the lists| / n_items
//   avg_popularity = mean over users of the mean popularity[i] of their list
//   gini           = sum_j (2j - n - 1) c_(j) / (n sum c), c_(1) <= ... <= c_(n) the counts
//                    of each of the n items in the lists (0 = every item equally often,
//                    -> 1 = always the same items)
// Sums run in double in the order users were added: deterministic for a fixed order.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"

namespace xrec::metrics {

/// How candidates were formed. describe() is the line printed above every result table.
struct ranking_protocol {
    enum class kind { sampled, full };
    kind mode = kind::full;
    std::int32_t negatives = 0;   ///< sampled: negatives per target
    std::string sampler;          ///< sampled: "uniform" or "popularity" (both exclude seen items)
    bool history_masked = true;   ///< full: the user's train (+valid) items are removed from the ranking
    std::string split;            ///< e.g. "leave-last-out (test = latest item, valid = second latest)"
    std::int32_t n_items = 0;     ///< full: items ranked (for the printout); 0 = not stated
    std::string note;             ///< optional: the data set, the cut-off of a session protocol, ...

    std::string describe() const {
        std::string s = "protocol: ";
        if (mode == kind::sampled) {
            s += "sampled ranking, the target among " + std::to_string(negatives) + " " +
                 (sampler.empty() ? std::string("uniform") : sampler) + " negatives (items the user has not seen)";
        } else {
            s += "full ranking over all ";
            if (n_items > 0) s += std::to_string(n_items) + " ";
            s += "items, ";
            s += history_masked ? "the user's history masked" : "history NOT masked";
        }
        if (!split.empty()) s += "; split: " + split;
        if (!note.empty()) s += "; " + note;
        return s;
    }
};

/// 0-based rank of candidate `target_index` in `scores` (higher = better): the number of
/// other candidates scoring >= the target. Ties count AGAINST the target (pessimistic), so
/// a constant scorer ranks every target last and gets no credit; a NaN among the others
/// also counts against it. A NaN target score is an error.
inline std::int64_t target_rank(std::span<const float> scores, std::int64_t target_index) {
    XREC_CHECK(target_index >= 0 && target_index < static_cast<std::int64_t>(scores.size()), "target_rank: target ",
               target_index, " outside the ", scores.size(), " candidates");
    const float t = scores[static_cast<std::size_t>(target_index)];
    XREC_CHECK(!std::isnan(t), "target_rank: the target's score is NaN");
    std::int64_t r = 0;
    for (std::size_t i = 0; i < scores.size(); ++i)
        if (static_cast<std::int64_t>(i) != target_index && !(scores[i] < t)) ++r;
    return r;
}

/// The metrics at one cut-off K, averaged over `users`. List measures are NaN when no
/// list was given.
struct ranking_metrics {
    std::int32_t k = 0;
    double hr = 0, recall = 0, precision = 0, ndcg = 0, mrr = 0, map = 0;
    double coverage = std::numeric_limits<double>::quiet_NaN();
    double avg_popularity = std::numeric_limits<double>::quiet_NaN();
    double gini = std::numeric_limits<double>::quiet_NaN();
    std::int64_t users = 0;
};

/// Accumulates per-user results for several cut-offs at once.
/// ks: the cut-offs (each >= 1); n_items: the catalogue size (coverage and Gini);
/// item_popularity: empty, or n_items values (e.g. training counts) for avg_popularity.
class ranking_accumulator {
public:
    ranking_accumulator(std::vector<std::int32_t> ks, std::int32_t n_items, std::span<const double> item_popularity = {})
        : ks_(std::move(ks)), n_items_(n_items), pop_(item_popularity.begin(), item_popularity.end()) {
        XREC_CHECK(!ks_.empty(), "ranking_accumulator: no cut-off K given");
        for (auto k : ks_) XREC_CHECK(k >= 1, "ranking_accumulator: cut-off K = ", k, " must be >= 1");
        XREC_CHECK(n_items > 0, "ranking_accumulator: n_items must be > 0, got ", n_items);
        XREC_CHECK(pop_.empty() || static_cast<std::int64_t>(pop_.size()) == n_items, "ranking_accumulator: ",
                   pop_.size(), " popularity values for ", n_items, " items");
        max_k_ = *std::max_element(ks_.begin(), ks_.end());
        sums_.assign(ks_.size(), {});
        counts_.assign(ks_.size() * static_cast<std::size_t>(n_items), 0);
    }

    const std::vector<std::int32_t>& ks() const { return ks_; }
    std::int32_t max_k() const { return max_k_; }
    std::int64_t users() const { return users_; }

    /// One user: `top_list` best first (entries past its end count as misses; at least
    /// max_k long for the list measures to mean "top K"), `relevant` the user's relevant
    /// items (any order, no duplicates, not empty).
    void add(std::span<const std::int32_t> top_list, std::span<const std::int32_t> relevant) {
        XREC_CHECK(!relevant.empty(), "ranking_accumulator::add: a user without relevant items cannot be scored");
        check_list(top_list);
        rel_.assign(relevant.begin(), relevant.end());
        std::sort(rel_.begin(), rel_.end());
        XREC_CHECK(std::adjacent_find(rel_.begin(), rel_.end()) == rel_.end(),
                   "ranking_accumulator::add: the relevant items have duplicates");
        const auto nrel = static_cast<double>(rel_.size());
        for (std::size_t j = 0; j < ks_.size(); ++j) {
            const std::int32_t k = ks_[j];
            const auto lim = std::min<std::size_t>(static_cast<std::size_t>(k), top_list.size());
            double hits = 0, dcg = 0, rr = 0, ap = 0;
            for (std::size_t i = 0; i < lim; ++i) {
                if (!std::binary_search(rel_.begin(), rel_.end(), top_list[i])) continue;
                hits += 1;
                dcg += 1.0 / std::log2(static_cast<double>(i) + 2.0);
                if (rr == 0) rr = 1.0 / (static_cast<double>(i) + 1.0);
                ap += hits / (static_cast<double>(i) + 1.0);
            }
            double idcg = 0;
            const auto ideal = std::min<std::size_t>(rel_.size(), static_cast<std::size_t>(k));
            for (std::size_t i = 0; i < ideal; ++i) idcg += 1.0 / std::log2(static_cast<double>(i) + 2.0);
            auto& s = sums_[j];
            s.hr += hits > 0 ? 1.0 : 0.0;
            s.recall += hits / nrel;
            s.precision += hits / static_cast<double>(k);
            s.ndcg += dcg / idcg;
            s.mrr += rr;
            s.map += ap / static_cast<double>(ideal);
        }
        add_list(top_list);
        ++users_;
    }

    /// Leave-one-out shortcut: the single relevant item sits at 0-based `rank` (e.g. from
    /// target_rank). `top_list` (optional, best first) feeds the list measures.
    void add_rank(std::int64_t rank, std::span<const std::int32_t> top_list = {}) {
        XREC_CHECK(rank >= 0, "ranking_accumulator::add_rank: rank ", rank, " must be >= 0");
        check_list(top_list);
        for (std::size_t j = 0; j < ks_.size(); ++j) {
            if (rank >= ks_[j]) continue;
            const double r = static_cast<double>(rank);
            auto& s = sums_[j];
            s.hr += 1;
            s.recall += 1;
            s.precision += 1.0 / static_cast<double>(ks_[j]);
            s.ndcg += 1.0 / std::log2(r + 2.0);
            s.mrr += 1.0 / (r + 1.0);
            s.map += 1.0 / (r + 1.0);
        }
        add_list(top_list);
        ++users_;
    }

    /// Adds another accumulator's users (same ks and n_items) after this one's: merging
    /// per-thread accumulators in thread order keeps results deterministic.
    void merge(const ranking_accumulator& o) {
        XREC_CHECK(o.ks_ == ks_ && o.n_items_ == n_items_, "ranking_accumulator::merge: different cut-offs or catalogue");
        for (std::size_t j = 0; j < ks_.size(); ++j) {
            auto& s = sums_[j];
            const auto& t = o.sums_[j];
            s.hr += t.hr;
            s.recall += t.recall;
            s.precision += t.precision;
            s.ndcg += t.ndcg;
            s.mrr += t.mrr;
            s.map += t.map;
            s.pop += t.pop;
        }
        for (std::size_t i = 0; i < counts_.size(); ++i) counts_[i] += o.counts_[i];
        users_ += o.users_;
        listed_ += o.listed_;
    }

    /// One ranking_metrics per cut-off, in the order of ks.
    std::vector<ranking_metrics> result() const {
        std::vector<ranking_metrics> out;
        const double u = static_cast<double>(users_);
        for (std::size_t j = 0; j < ks_.size(); ++j) {
            ranking_metrics m;
            m.k = ks_[j];
            m.users = users_;
            const auto& s = sums_[j];
            if (users_ > 0) {
                m.hr = s.hr / u;
                m.recall = s.recall / u;
                m.precision = s.precision / u;
                m.ndcg = s.ndcg / u;
                m.mrr = s.mrr / u;
                m.map = s.map / u;
            }
            if (listed_ > 0) {
                const auto* c = counts_.data() + j * static_cast<std::size_t>(n_items_);
                std::vector<std::int64_t> sorted(c, c + n_items_);
                std::int64_t distinct = 0;
                for (auto v : sorted) distinct += v > 0;
                m.coverage = static_cast<double>(distinct) / static_cast<double>(n_items_);
                if (!pop_.empty()) m.avg_popularity = s.pop / static_cast<double>(listed_);
                std::sort(sorted.begin(), sorted.end());
                double num = 0, total = 0;
                const double n = static_cast<double>(n_items_);
                for (std::size_t i = 0; i < sorted.size(); ++i) {
                    num += (2.0 * static_cast<double>(i + 1) - n - 1.0) * static_cast<double>(sorted[i]);
                    total += static_cast<double>(sorted[i]);
                }
                m.gini = total > 0 ? num / (n * total) : std::numeric_limits<double>::quiet_NaN();
            }
            out.push_back(m);
        }
        return out;
    }

private:
    // Validates before anything is added, so a refused user leaves the sums untouched.
    void check_list(std::span<const std::int32_t> top_list) const {
        const auto lim = std::min<std::size_t>(static_cast<std::size_t>(max_k_), top_list.size());
        for (std::size_t i = 0; i < lim; ++i)
            XREC_CHECK(top_list[i] >= 0 && top_list[i] < n_items_, "ranking_accumulator: listed item ", top_list[i],
                       " at position ", i, " outside [0, ", n_items_, ")");
    }
    void add_list(std::span<const std::int32_t> top_list) {
        if (top_list.empty()) return;
        for (std::size_t j = 0; j < ks_.size(); ++j) {
            const auto lim = std::min<std::size_t>(static_cast<std::size_t>(ks_[j]), top_list.size());
            double pop = 0;
            auto* c = counts_.data() + j * static_cast<std::size_t>(n_items_);
            for (std::size_t i = 0; i < lim; ++i) {
                const auto it = top_list[i];
                ++c[static_cast<std::size_t>(it)];
                if (!pop_.empty()) pop += pop_[static_cast<std::size_t>(it)];
            }
            sums_[j].pop += pop / static_cast<double>(lim);
        }
        ++listed_;
    }

    struct sums {
        double hr = 0, recall = 0, precision = 0, ndcg = 0, mrr = 0, map = 0, pop = 0;
    };
    std::vector<std::int32_t> ks_;
    std::int32_t n_items_;
    std::int32_t max_k_ = 0;
    std::vector<double> pop_;
    std::vector<sums> sums_;
    std::vector<std::int64_t> counts_;  // [ks][n_items] times each item was listed in a top-K
    std::vector<std::int32_t> rel_;     // scratch: the sorted relevant set
    std::int64_t users_ = 0, listed_ = 0;
};

namespace detail {
inline std::string fmt_metric(double v, int prec = 4) {
    if (std::isnan(v)) return "-";
    char b[32];
    std::snprintf(b, sizeof b, "%.*f", prec, v);
    return b;
}
}  // namespace detail

/// The protocol line, then one row per (name, K): HR, Recall, Precision, NDCG, MRR, MAP,
/// coverage, avg popularity, Gini, users. `rows` pairs a name (model) with its results.
inline std::string format_table(const ranking_protocol& p,
                                const std::vector<std::pair<std::string, std::vector<ranking_metrics>>>& rows) {
    std::size_t wn = 5;
    for (const auto& r : rows) wn = std::max(wn, r.first.size());
    std::string s = p.describe() + "\n";
    char b[512];
    std::snprintf(b, sizeof b, "%-*s %5s %8s %8s %8s %8s %8s %8s %8s %10s %8s %7s\n", static_cast<int>(wn), "model", "K",
                  "HR", "Recall", "Prec", "NDCG", "MRR", "MAP", "cover", "avg pop", "Gini", "users");
    s += b;
    for (const auto& [name, ms] : rows)
        for (const auto& m : ms) {
            std::snprintf(b, sizeof b, "%-*s %5d %8s %8s %8s %8s %8s %8s %8s %10s %8s %7lld\n", static_cast<int>(wn),
                          name.c_str(), m.k, detail::fmt_metric(m.hr).c_str(), detail::fmt_metric(m.recall).c_str(),
                          detail::fmt_metric(m.precision).c_str(), detail::fmt_metric(m.ndcg).c_str(),
                          detail::fmt_metric(m.mrr).c_str(), detail::fmt_metric(m.map).c_str(),
                          detail::fmt_metric(m.coverage).c_str(), detail::fmt_metric(m.avg_popularity, 1).c_str(),
                          detail::fmt_metric(m.gini).c_str(), static_cast<long long>(m.users));
            s += b;
        }
    return s;
}

/// One model's table.
inline std::string format_table(const ranking_protocol& p, const std::vector<ranking_metrics>& ms,
                                const std::string& name = "model") {
    return format_table(p, {{name, ms}});
}

}  // namespace xrec::metrics
