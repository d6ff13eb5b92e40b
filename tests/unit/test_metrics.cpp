// Metrics (metrics/ctr.hpp) against independent computations: brute-force pairwise AUC, the
// Mann-Whitney rank-sum identity, values worked out by hand, and streaming == one-shot.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <vector>

#include "support/checks.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/metrics/ctr.hpp"

namespace m = xrec::metrics;
using xrec_test::expect_error;

namespace {

/// Scores drawn from `levels` distinct values (so ties are common), labels Bernoulli(0.3 +
/// 0.4 * score) so the AUC is away from 0.5; a pure function of the seed.
struct sample {
    std::vector<double> score, label;
    std::vector<std::int64_t> group;
};
sample make_sample(std::int64_t n, int levels, std::int64_t groups, std::uint64_t seed) {
    const xrec::rng_stream rs{xrec::philox{xrec::mix_seed(seed, 0x3e7c)}, 0};
    sample s;
    std::uint64_t k = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        const double sc = static_cast<double>(rs.below(k++, static_cast<std::uint64_t>(levels))) / levels;
        s.score.push_back(sc);
        s.label.push_back(rs.uniform(k++) < 0.3 + 0.4 * sc ? 1.0 : 0.0);
        s.group.push_back(static_cast<std::int64_t>(rs.below(k++, static_cast<std::uint64_t>(groups))) * 7 - 5);
    }
    return s;
}

/// O(P N) definition of AUC.
double brute_auc(const std::vector<double>& s, const std::vector<double>& y) {
    double num = 0, pairs = 0;
    for (std::size_t i = 0; i < s.size(); ++i)
        for (std::size_t j = 0; j < s.size(); ++j)
            if (y[i] == 1 && y[j] == 0) {
                pairs += 1;
                num += s[i] > s[j] ? 1.0 : s[i] == s[j] ? 0.5 : 0.0;
            }
    return pairs > 0 ? num / pairs : std::nan("");
}

/// AUC by the rank-sum identity (Mann-Whitney): (R_pos - P(P+1)/2) / (P N) with average ranks
/// for ties, ranks computed by counting (O(n^2), no sorting).
double rank_sum_auc(const std::vector<double>& s, const std::vector<double>& y) {
    double rpos = 0, P = 0, N = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
        double less = 0, equal = 0;
        for (std::size_t j = 0; j < s.size(); ++j) less += s[j] < s[i], equal += s[j] == s[i];
        const double rank = less + (equal + 1) / 2;  // average of ranks less+1 .. less+equal
        if (y[i] == 1) rpos += rank, P += 1;
        else N += 1;
    }
    return (rpos - P * (P + 1) / 2) / (P * N);
}

}  // namespace

TEST_CASE("metrics: AUC equals brute-force pairwise counting and the rank-sum identity, with ties") {
    double worst = 0;
    for (std::uint64_t seed = 1; seed <= 20; ++seed) {
        const auto s = make_sample(40 + static_cast<std::int64_t>(seed) * 7, 1 + static_cast<int>(seed % 6), 3, seed);
        const double a = m::auc(s.score, s.label), b = brute_auc(s.score, s.label), r = rank_sum_auc(s.score, s.label);
        CHECK(a == doctest::Approx(b).epsilon(1e-14));
        CHECK(a == doctest::Approx(r).epsilon(1e-12));
        worst = std::max(worst, std::fabs(a - b));
    }
    std::printf("[metrics] AUC vs brute force on 20 tied samples: max |diff| %.3g\n", worst);
    CHECK(worst < 1e-15);
}

TEST_CASE("metrics: AUC by hand") {
    // sklearn's roc_auc_score example: 3 of the 4 (pos, neg) pairs are ordered.
    CHECK(m::auc(std::vector<double>{0.1, 0.4, 0.35, 0.8}, std::vector<double>{0, 0, 1, 1}) == 0.75);
    // All scores tied: every pair counts half.
    CHECK(m::auc(std::vector<double>{0.5, 0.5, 0.5}, std::vector<double>{1, 0, 0}) == 0.5);
    // Perfect and reversed rankings.
    CHECK(m::auc(std::vector<double>{1, 2, 3, 4}, std::vector<double>{0, 0, 1, 1}) == 1.0);
    CHECK(m::auc(std::vector<double>{1, 2, 3, 4}, std::vector<double>{1, 1, 0, 0}) == 0.0);
    // One positive at 0.3 against negatives {0.1, 0.3, 0.5}: 1 win, 1 tie, 1 loss = 1.5 / 3.
    CHECK(m::auc(std::vector<double>{0.1, 0.3, 0.5, 0.3}, std::vector<double>{0, 0, 0, 1}) == 0.5);
    // Float overload; only the order matters, so logits give the AUC of probabilities.
    const std::vector<float> logit{-2, 0.5f, 1, -0.1f, 3}, lab{0, 1, 0, 0, 1};
    std::vector<float> prob;
    for (float x : logit) prob.push_back(1 / (1 + std::exp(-x)));
    CHECK(m::auc(logit, lab) == m::auc(prob, lab));
    CHECK(m::auc(logit, lab) == doctest::Approx(5.0 / 6));
}

TEST_CASE("metrics: undefined AUC is NaN, bad input throws") {
    CHECK(std::isnan(m::auc(std::vector<double>{0.2, 0.7}, std::vector<double>{1, 1})));   // positives only
    CHECK(std::isnan(m::auc(std::vector<double>{0.2, 0.7}, std::vector<double>{0, 0})));   // negatives only
    CHECK(std::isnan(m::auc(std::vector<double>{}, std::vector<double>{})));                // no rows
    expect_error([] { m::auc(std::vector<double>{0.1, std::nan("")}, std::vector<double>{0, 1}); },
                 {"auc", "row 1", "NaN"});
    expect_error([] { m::auc(std::vector<double>{0.1, 0.2}, std::vector<double>{0, 0.5}); }, {"auc", "row 1", "0/1"});
    expect_error([] { m::auc(std::vector<double>{0.1, 0.2}, std::vector<double>{0}); }, {"auc", "2 predictions", "1 labels"});
}

TEST_CASE("metrics: group AUC is the impression-weighted mean of per-group AUCs, one-class groups skipped") {
    // By hand: group 1 {0.9:1, 0.2:0, 0.4:1} -> AUC 1 (3 rows); group 2 {0.3:1, 0.6:0} -> 0
    // (2 rows); group 3 all negative -> skipped. GAUC = (3 * 1 + 2 * 0) / 5 = 0.6.
    const std::vector<double> s{0.9, 0.3, 0.2, 0.5, 0.6, 0.4, 0.1};
    const std::vector<double> y{1, 1, 0, 0, 0, 1, 0};
    const std::vector<std::int64_t> g{1, 2, 1, 3, 2, 1, 3};
    CHECK(m::group_auc(s, y, g) == doctest::Approx(0.6).epsilon(1e-15));

    // Random samples against brute force per group.
    double worst = 0;
    for (std::uint64_t seed = 1; seed <= 10; ++seed) {
        const auto r = make_sample(300, 4, 12, seed + 100);
        std::map<std::int64_t, std::pair<std::vector<double>, std::vector<double>>> by;
        for (std::size_t i = 0; i < r.score.size(); ++i) {
            by[r.group[i]].first.push_back(r.score[i]);
            by[r.group[i]].second.push_back(r.label[i]);
        }
        double num = 0, den = 0;
        int skipped = 0;
        for (auto& [k, v] : by) {
            const double a = brute_auc(v.first, v.second);
            if (std::isnan(a)) {
                ++skipped;
                continue;
            }
            num += static_cast<double>(v.first.size()) * a;
            den += static_cast<double>(v.first.size());
        }
        worst = std::max(worst, std::fabs(m::group_auc(r.score, r.label, r.group) - num / den));
    }
    std::printf("[metrics] group AUC vs per-group brute force: max |diff| %.3g\n", worst);
    CHECK(worst < 1e-12);

    // No group with both classes: NaN. Length mismatch: error.
    CHECK(std::isnan(m::group_auc(std::vector<double>{0.1, 0.2}, std::vector<double>{0, 1}, std::vector<std::int64_t>{1, 2})));
    expect_error([] { m::group_auc(std::vector<double>{0.1, 0.2}, std::vector<double>{0, 1}, std::vector<std::int64_t>{1}); },
                 {"group_auc", "1 groups"});
}

TEST_CASE("metrics: logloss, RMSE and calibration by hand") {
    // sklearn's log_loss example (spam = 1): p = (.9, .1, .2, .65), y = (1, 0, 0, 1)
    // -> -(ln .9 + ln .9 + ln .8 + ln .65) / 4 = 0.21616187468057912.
    const std::vector<double> p{0.9, 0.1, 0.2, 0.65}, y{1, 0, 0, 1};
    CHECK(m::logloss(p, y) == doctest::Approx(0.21616187468057912).epsilon(1e-14));
    // RMSE: errors (.1, .1, .2, .35): sqrt((.01 + .01 + .04 + .1225) / 4) = sqrt(0.045625).
    CHECK(m::rmse(p, y) == doctest::Approx(std::sqrt(0.045625)).epsilon(1e-14));
    // Calibration: predicted sum 1.85 over 2 clicks.
    CHECK(m::calibration(p, y) == doctest::Approx(0.925).epsilon(1e-14));
    // Clipping: a certain wrong answer costs -ln(1e-15), not infinity.
    CHECK(m::logloss(std::vector<double>{0.0}, std::vector<double>{1}) == doctest::Approx(-std::log(1e-15)));
    // Soft labels are fine for logloss: y = 0.5, p = 0.5 -> ln 2.
    CHECK(m::logloss(std::vector<float>{0.5f}, std::vector<float>{0.5f}) == doctest::Approx(std::log(2.0)));
    // Undefined: NaN.
    CHECK(std::isnan(m::calibration(std::vector<double>{0.3}, std::vector<double>{0})));
    CHECK(std::isnan(m::logloss(std::vector<double>{}, std::vector<double>{})));
    CHECK(std::isnan(m::rmse(std::vector<double>{}, std::vector<double>{})));
    expect_error([] { m::logloss(std::vector<double>{1.5}, std::vector<double>{1}); }, {"logloss", "row 0", "1.5"});
    expect_error([] { m::calibration(std::vector<double>{0.5, -0.1}, std::vector<double>{1, 0}); }, {"calibration", "row 1"});
}

TEST_CASE("metrics: ctr_accumulator streamed over batches equals one-shot, bit for bit") {
    const auto s = make_sample(1000, 9, 40, 7);
    std::vector<double> prob;
    for (double x : s.score) prob.push_back(0.05 + 0.9 * x);
    m::ctr_accumulator acc;
    const xrec::rng_stream rs{xrec::philox{11}, 0};
    std::size_t at = 0;
    int batches = 0;
    for (std::uint64_t k = 0; at < prob.size(); ++k, ++batches) {
        const std::size_t len = std::min<std::size_t>(prob.size() - at, 1 + rs.below(k, 97));
        acc.add(std::span<const double>(prob).subspan(at, len), std::span<const double>(s.label).subspan(at, len),
                std::span<const std::int64_t>(s.group).subspan(at, len));
        at += len;
    }
    const auto r = acc.result();
    std::printf("[metrics] streamed %d batches, n %lld: auc %.6f gauc %.6f logloss %.6f rmse %.6f calibration %.6f\n",
                batches, static_cast<long long>(r.n), r.auc, r.gauc, r.logloss, r.rmse, r.calibration);
    CHECK(r.n == 1000);
    CHECK(r.auc == m::auc(prob, s.label));
    CHECK(r.gauc == m::group_auc(prob, s.label, s.group));
    CHECK(r.logloss == m::logloss(prob, s.label));
    CHECK(r.rmse == m::rmse(prob, s.label));
    CHECK(r.calibration == m::calibration(prob, s.label));
    CHECK(r.auc > 0.6);

    // Float batches land in the same double rows.
    m::ctr_accumulator facc;
    std::vector<float> fp(prob.begin(), prob.end()), fy(s.label.begin(), s.label.end());
    facc.add(fp, fy);
    CHECK(facc.result().auc == m::auc(fp, fy));
    CHECK(std::isnan(facc.result().gauc));  // no groups given

    // Mixing batches with and without groups is refused; a refused batch adds nothing.
    expect_error([&] { acc.add(std::span<const double>(prob).first(2), std::span<const double>(s.label).first(2)); },
                 {"mixed"});
    expect_error([&] {
        acc.add(std::vector<double>{0.5, 2.0}, std::vector<double>{0, 1}, std::vector<std::int64_t>{1, 1});
    }, {"row 1"});
    CHECK(acc.size() == 1000);
    acc.clear();
    CHECK(acc.result().n == 0);
    CHECK(std::isnan(acc.result().auc));
}
