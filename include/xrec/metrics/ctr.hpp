#pragma once
// Metrics of click-through-rate models: exact AUC, group AUC, logloss, RMSE, calibration,
// one-shot over spans or streamed over batches with ctr_accumulator.
//
// Conventions shared by every function here:
//  - `label` holds 0/1 targets (AUC and group AUC refuse anything else; logloss, RMSE and
//    calibration also accept soft labels in [0, 1]).
//  - A metric that is undefined on its input returns NaN rather than throwing, so that an
//    evaluation loop can report "n/a" for a task without a try block: AUC of an input with
//    only one class (or no rows), group AUC when no group has both classes, calibration when
//    no label is positive, and logloss / RMSE of zero rows.
//  - Inputs that make a metric meaningless throw xrec::error naming the metric and the row:
//    spans of different lengths, a NaN score, a probability outside [0, 1], a label that is
//    not 0/1 where 0/1 is required.
//  - Sums are taken in double, in index order (AUC counts pairs in exact integers), so a value
//    depends only on the rows and their order, never on threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <type_traits>
#include <vector>

#include "xrec/core/error.hpp"

namespace xrec::metrics {

namespace detail {

inline constexpr double nan = std::numeric_limits<double>::quiet_NaN();

template <class S, class L>
void check_sizes(const char* who, std::span<const S> a, std::span<const L> b) {
    XREC_CHECK(a.size() == b.size(), who, ": ", a.size(), " predictions but ", b.size(), " labels");
}

template <class S, class L>
void check_binary_scores(const char* who, std::span<const S> score, std::span<const L> label) {
    for (std::size_t i = 0; i < score.size(); ++i) {
        XREC_CHECK(!std::isnan(static_cast<double>(score[i])), who, ": score of row ", i, " is NaN");
        XREC_CHECK(label[i] == L(0) || label[i] == L(1), who, ": label of row ", i, " is ",
                   static_cast<double>(label[i]), "; AUC needs 0/1 labels");
    }
}

/// Twice the Mann-Whitney U statistic of the rows idx[b, e), which must be sorted by
/// ascending score: for every positive, the negatives with a lower score count 2 and those
/// with an equal score count 1. Also returns the positive and negative counts. Integer
/// arithmetic, so the count is exact (n up to 2^31 rows per call).
template <class S, class L>
void mann_whitney2(std::span<const S> score, std::span<const L> label, const std::int64_t* idx, std::int64_t b,
                   std::int64_t e, std::uint64_t& u2, std::uint64_t& pos, std::uint64_t& neg) {
    u2 = pos = neg = 0;
    for (std::int64_t i = b; i < e;) {
        std::int64_t j = i;
        std::uint64_t p = 0, q = 0;
        const S s = score[static_cast<std::size_t>(idx[i])];
        for (; j < e && score[static_cast<std::size_t>(idx[j])] == s; ++j)
            (label[static_cast<std::size_t>(idx[j])] == L(1) ? p : q) += 1;
        u2 += p * (2 * neg + q);  // each positive of this tie block beats all negatives below, ties half
        pos += p;
        neg += q;
        i = j;
    }
}

template <class S, class L>
double auc(std::span<const S> score, std::span<const L> label) {
    check_sizes("auc", score, label);
    check_binary_scores("auc", score, label);
    std::vector<std::int64_t> idx(score.size());
    std::iota(idx.begin(), idx.end(), std::int64_t{0});
    std::sort(idx.begin(), idx.end(), [&](std::int64_t a, std::int64_t b) {
        return score[static_cast<std::size_t>(a)] < score[static_cast<std::size_t>(b)];
    });
    std::uint64_t u2, pos, neg;
    mann_whitney2(score, label, idx.data(), 0, static_cast<std::int64_t>(idx.size()), u2, pos, neg);
    if (pos == 0 || neg == 0) return nan;
    return static_cast<double>(u2) / (2.0 * static_cast<double>(pos) * static_cast<double>(neg));
}

template <class S, class L>
double group_auc(std::span<const S> score, std::span<const L> label, std::span<const std::int64_t> group) {
    check_sizes("group_auc", score, label);
    XREC_CHECK(group.size() == score.size(), "group_auc: ", score.size(), " predictions but ", group.size(), " groups");
    check_binary_scores("group_auc", score, label);
    std::vector<std::int64_t> idx(score.size());
    std::iota(idx.begin(), idx.end(), std::int64_t{0});
    std::sort(idx.begin(), idx.end(), [&](std::int64_t a, std::int64_t b) {
        const auto ga = group[static_cast<std::size_t>(a)], gb = group[static_cast<std::size_t>(b)];
        if (ga != gb) return ga < gb;
        return score[static_cast<std::size_t>(a)] < score[static_cast<std::size_t>(b)];
    });
    double weighted = 0, weight = 0;
    const auto n = static_cast<std::int64_t>(idx.size());
    for (std::int64_t b = 0; b < n;) {
        std::int64_t e = b;
        const auto g = group[static_cast<std::size_t>(idx[b])];
        while (e < n && group[static_cast<std::size_t>(idx[e])] == g) ++e;
        std::uint64_t u2, pos, neg;
        mann_whitney2(score, label, idx.data(), b, e, u2, pos, neg);
        if (pos > 0 && neg > 0) {  // a group with one class has no AUC: skipped
            const double w = static_cast<double>(e - b);
            weighted += w * static_cast<double>(u2) / (2.0 * static_cast<double>(pos) * static_cast<double>(neg));
            weight += w;
        }
        b = e;
    }
    return weight > 0 ? weighted / weight : nan;
}

template <class P, class L>
void check_probabilities(const char* who, std::span<const P> prob, std::span<const L> label) {
    for (std::size_t i = 0; i < prob.size(); ++i) {
        const double p = static_cast<double>(prob[i]), y = static_cast<double>(label[i]);
        XREC_CHECK(p >= 0 && p <= 1, who, ": probability of row ", i, " is ", p, ", outside [0, 1]");
        XREC_CHECK(y >= 0 && y <= 1, who, ": label of row ", i, " is ", y, ", outside [0, 1]");
    }
}

/// Probabilities are clipped to [eps, 1 - eps] before the logarithm (as sklearn's log_loss
/// did with eps = 1e-15), so a confident wrong prediction costs about 34.5, not infinity.
inline constexpr double logloss_eps = 1e-15;

template <class P, class L>
double logloss(std::span<const P> prob, std::span<const L> label) {
    check_sizes("logloss", prob, label);
    check_probabilities("logloss", prob, label);
    if (prob.empty()) return nan;
    double s = 0;
    for (std::size_t i = 0; i < prob.size(); ++i) {
        const double p = std::clamp(static_cast<double>(prob[i]), logloss_eps, 1 - logloss_eps);
        const double y = static_cast<double>(label[i]);
        s -= y * std::log(p) + (1 - y) * std::log1p(-p);
    }
    return s / static_cast<double>(prob.size());
}

template <class P, class L>
double rmse(std::span<const P> pred, std::span<const L> label) {
    check_sizes("rmse", pred, label);
    if (pred.empty()) return nan;
    double s = 0;
    for (std::size_t i = 0; i < pred.size(); ++i) {
        const double d = static_cast<double>(pred[i]) - static_cast<double>(label[i]);
        s += d * d;
    }
    return std::sqrt(s / static_cast<double>(pred.size()));
}

template <class P, class L>
double calibration(std::span<const P> prob, std::span<const L> label) {
    check_sizes("calibration", prob, label);
    check_probabilities("calibration", prob, label);
    double sp = 0, sy = 0;
    for (std::size_t i = 0; i < prob.size(); ++i) {
        sp += static_cast<double>(prob[i]);
        sy += static_cast<double>(label[i]);
    }
    return sy > 0 ? sp / sy : nan;
}

}  // namespace detail

/// Exact area under the ROC curve: the probability that a random positive scores above a
/// random negative, ties counted half,
///
///     AUC = (sum_{i pos, j neg} [s_i > s_j] + 0.5 [s_i == s_j]) / (P N)
///
/// computed as the Mann-Whitney U statistic over the rows sorted by score (O(n log n); tie
/// blocks counted exactly in integers). Only the order of the scores matters, so logits and
/// probabilities give the same value. NaN when P == 0 or N == 0 (no rows, or one class only).
/// Throws on a NaN score, a label other than 0/1, or spans of different length.
inline double auc(std::span<const double> score, std::span<const double> label) { return detail::auc(score, label); }
inline double auc(std::span<const float> score, std::span<const float> label) { return detail::auc(score, label); }

/// Group AUC (Zhou et al., "Deep Interest Network", KDD 2018): the AUC within each group
/// (usually the user), averaged with each group weighted by its number of rows (impressions):
///
///     GAUC = sum_g n_g AUC_g / sum_g n_g   over the groups having both classes.
///
/// Groups with one class only are skipped (their AUC is undefined); NaN when no group has both.
/// Group ids are arbitrary int64 values (rows of one group need not be adjacent).
inline double group_auc(std::span<const double> score, std::span<const double> label,
                        std::span<const std::int64_t> group) {
    return detail::group_auc(score, label, group);
}
inline double group_auc(std::span<const float> score, std::span<const float> label,
                        std::span<const std::int64_t> group) {
    return detail::group_auc(score, label, group);
}

/// Mean binary cross-entropy of probabilities p against labels y (soft labels allowed),
///     -1/n sum_i [y_i log p_i + (1 - y_i) log(1 - p_i)],
/// with p clipped to [1e-15, 1 - 1e-15]. NaN for zero rows; throws on p or y outside [0, 1].
inline double logloss(std::span<const double> prob, std::span<const double> label) { return detail::logloss(prob, label); }
inline double logloss(std::span<const float> prob, std::span<const float> label) { return detail::logloss(prob, label); }

/// Root mean squared error sqrt(1/n sum_i (pred_i - y_i)^2). NaN for zero rows.
inline double rmse(std::span<const double> pred, std::span<const double> label) { return detail::rmse(pred, label); }
inline double rmse(std::span<const float> pred, std::span<const float> label) { return detail::rmse(pred, label); }

/// Calibration: the predicted click rate over the observed one, sum_i p_i / sum_i y_i
/// (1 is calibrated, above 1 over-predicts). NaN when no label is positive.
inline double calibration(std::span<const double> prob, std::span<const double> label) {
    return detail::calibration(prob, label);
}
inline double calibration(std::span<const float> prob, std::span<const float> label) {
    return detail::calibration(prob, label);
}

/// The metrics of one task over an evaluation set; `n` rows. Undefined values are NaN
/// (see the functions above); gauc is NaN when no groups were given.
struct ctr_metrics {
    double auc = detail::nan, gauc = detail::nan, logloss = detail::nan, rmse = detail::nan,
           calibration = detail::nan;
    std::int64_t n = 0;
};

/// Collects (probability, label[, group]) over batches and computes ctr_metrics over all of
/// them at the end. Exact AUC needs every score, so the rows are kept (24 bytes a row with
/// groups); `result()` equals the one-shot functions applied to the concatenated batches,
/// bit for bit. Either every add() passes groups or none does (throws otherwise).
/// Probabilities must lie in [0, 1] and labels be 0/1 (a refused batch is not added). RMSE is
/// taken on the probabilities, as CTR papers report it.
class ctr_accumulator {
public:
    void add(std::span<const double> prob, std::span<const double> label, std::span<const std::int64_t> group = {}) {
        add_impl(prob, label, group);
    }
    void add(std::span<const float> prob, std::span<const float> label, std::span<const std::int64_t> group = {}) {
        add_impl(prob, label, group);
    }

    ctr_metrics result() const {
        ctr_metrics m;
        m.n = static_cast<std::int64_t>(prob_.size());
        if (prob_.empty()) return m;
        std::span<const double> p(prob_), y(label_);
        m.auc = detail::auc(p, y);
        if (!group_.empty()) m.gauc = detail::group_auc(p, y, std::span<const std::int64_t>(group_));
        m.logloss = detail::logloss(p, y);
        m.rmse = detail::rmse(p, y);
        m.calibration = detail::calibration(p, y);
        return m;
    }

    void clear() {
        prob_.clear();
        label_.clear();
        group_.clear();
        groups_state_ = unknown;
    }
    std::int64_t size() const noexcept { return static_cast<std::int64_t>(prob_.size()); }

private:
    template <class P>
    void add_impl(std::span<const P> prob, std::span<const P> label, std::span<const std::int64_t> group) {
        detail::check_sizes("ctr_accumulator::add", prob, label);
        XREC_CHECK(group.empty() || group.size() == prob.size(), "ctr_accumulator::add: ", prob.size(),
                   " predictions but ", group.size(), " groups");
        if (prob.empty()) return;
        const state s = group.empty() ? without : with;
        XREC_CHECK(groups_state_ == unknown || groups_state_ == s,
                   "ctr_accumulator::add: batches with and without groups are mixed");
        // Validate before appending, so a refused batch leaves the accumulator as it was.
        detail::check_binary_scores("ctr_accumulator::add", prob, label);
        detail::check_probabilities("ctr_accumulator::add", prob, label);
        groups_state_ = s;
        prob_.insert(prob_.end(), prob.begin(), prob.end());
        label_.insert(label_.end(), label.begin(), label.end());
        group_.insert(group_.end(), group.begin(), group.end());
    }

    enum state { unknown, without, with };
    std::vector<double> prob_, label_;
    std::vector<std::int64_t> group_;
    state groups_state_ = unknown;
};

}  // namespace xrec::metrics
