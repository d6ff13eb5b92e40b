#pragma once
// Train / validation / test splits of encoded rows: by ratio (seeded shuffle), by time, and
// leave-last-N-out per user. Splits return row index lists (pure functions of their inputs and
// the seed); apply_split turns them into ctr_dataset subsets.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/data/dataset.hpp"

namespace xrec::data {

/// Row indices of the three parts. Each part is in ascending row order (the file's order),
/// except where a function says otherwise.
struct split_indices {
    std::vector<std::int64_t> train, valid, test;
};

/// 0..n-1 in a seeded random order: Fisher-Yates on the Philox stream keyed by
/// mix_seed(seed, 0x5e1177) (the same construction as data::batcher's epochs), so the
/// permutation depends only on (n, seed).
inline std::vector<std::int64_t> shuffled_indices(std::int64_t n, std::uint64_t seed) {
    XREC_CHECK(n >= 0, "shuffled_indices: n must be >= 0, got ", n);
    std::vector<std::int64_t> p(static_cast<std::size_t>(n));
    std::iota(p.begin(), p.end(), std::int64_t{0});
    const rng_stream rs{philox{mix_seed(seed, 0x5e1177)}, 0};
    for (std::int64_t i = n - 1; i > 0; --i) {
        const auto j = static_cast<std::int64_t>(rs.below(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(i + 1)));
        std::swap(p[static_cast<std::size_t>(i)], p[static_cast<std::size_t>(j)]);
    }
    return p;
}

namespace detail {
inline void check_ratios(const char* who, double train, double valid) {
    XREC_CHECK(train >= 0 && valid >= 0 && train + valid <= 1.0 + 1e-12, who, ": ratios train ", train, " and valid ",
               valid, " must be >= 0 with a sum <= 1");
}
// Sizes of the parts: train = round(n * train), valid = round(n * valid), test = the rest.
inline std::pair<std::int64_t, std::int64_t> part_sizes(std::int64_t n, double train, double valid) {
    const auto a = std::min<std::int64_t>(n, std::llround(static_cast<double>(n) * train));
    const auto b = std::min<std::int64_t>(n - a, std::llround(static_cast<double>(n) * valid));
    return {a, b};
}
}  // namespace detail

/// n rows split by ratio: with `shuffle`, the rows of shuffled_indices(n, seed) are dealt in
/// order (first round(n*train) to train, the next round(n*valid) to valid, the rest to test);
/// without, the file order is cut. Each part is then sorted ascending.
inline split_indices split_by_ratio(std::int64_t n, double train, double valid, std::uint64_t seed = 0, bool shuffle = true) {
    detail::check_ratios("split_by_ratio", train, valid);
    std::vector<std::int64_t> p;
    if (shuffle) {
        p = shuffled_indices(n, seed);
    } else {
        p.resize(static_cast<std::size_t>(n));
        std::iota(p.begin(), p.end(), std::int64_t{0});
    }
    const auto [a, b] = detail::part_sizes(n, train, valid);
    split_indices s;
    s.train.assign(p.begin(), p.begin() + a);
    s.valid.assign(p.begin() + a, p.begin() + a + b);
    s.test.assign(p.begin() + a + b, p.end());
    std::sort(s.train.begin(), s.train.end());
    std::sort(s.valid.begin(), s.valid.end());
    std::sort(s.test.begin(), s.test.end());
    return s;
}

/// Rows split by time: sorted by (timestamp, row), the earliest round(n*train) rows train, the
/// next round(n*valid) validate, the latest test; so every training timestamp is <= every
/// validation timestamp <= every test timestamp. Parts are in that time order.
inline split_indices split_by_time(std::span<const std::int64_t> times, double train, double valid) {
    detail::check_ratios("split_by_time", train, valid);
    const auto n = static_cast<std::int64_t>(times.size());
    std::vector<std::int64_t> p(times.size());
    std::iota(p.begin(), p.end(), std::int64_t{0});
    std::stable_sort(p.begin(), p.end(), [&](std::int64_t x, std::int64_t y) {
        return times[static_cast<std::size_t>(x)] < times[static_cast<std::size_t>(y)];
    });
    const auto [a, b] = detail::part_sizes(n, train, valid);
    return {{p.begin(), p.begin() + a}, {p.begin() + a, p.begin() + a + b}, {p.begin() + a + b, p.end()}};
}

/// Rows split at fixed times: time < valid_from trains, valid_from <= time < test_from
/// validates, the rest tests (ascending row order).
inline split_indices split_at_times(std::span<const std::int64_t> times, std::int64_t valid_from, std::int64_t test_from) {
    XREC_CHECK(valid_from <= test_from, "split_at_times: valid_from ", valid_from, " is after test_from ", test_from);
    split_indices s;
    for (std::size_t i = 0; i < times.size(); ++i) {
        const auto r = static_cast<std::int64_t>(i);
        (times[i] < valid_from ? s.train : times[i] < test_from ? s.valid : s.test).push_back(r);
    }
    return s;
}

/// Leave-last-N-out per user (the sequential recommenders' protocol): each group's rows are
/// ordered by (time, row); its last n_test rows test, the n_valid before them validate, the
/// rest train. A group with at most n_test + n_valid rows goes wholly to train (it has no
/// history to learn from otherwise). Rows with group -1 (unknown) train. Parts are in
/// ascending row order. `times` may be empty: the file order is then the time order.
inline split_indices leave_last_n_out(std::span<const std::int64_t> groups, std::span<const std::int64_t> times,
                                      std::int64_t n_test = 1, std::int64_t n_valid = 1) {
    XREC_CHECK(times.empty() || times.size() == groups.size(), "leave_last_n_out: ", times.size(), " timestamps for ",
               groups.size(), " rows");
    XREC_CHECK(n_test >= 0 && n_valid >= 0, "leave_last_n_out: n_test and n_valid must be >= 0");
    std::unordered_map<std::int64_t, std::vector<std::int64_t>> by_group;
    std::vector<std::int64_t> order;  // groups in order of first appearance: deterministic
    split_indices s;
    for (std::size_t i = 0; i < groups.size(); ++i) {
        if (groups[i] < 0) {
            s.train.push_back(static_cast<std::int64_t>(i));
            continue;
        }
        auto [it, fresh] = by_group.try_emplace(groups[i]);
        if (fresh) order.push_back(groups[i]);
        it->second.push_back(static_cast<std::int64_t>(i));
    }
    for (auto g : order) {
        auto& rows = by_group[g];
        if (!times.empty())
            std::stable_sort(rows.begin(), rows.end(), [&](std::int64_t x, std::int64_t y) {
                return times[static_cast<std::size_t>(x)] < times[static_cast<std::size_t>(y)];
            });
        const auto m = static_cast<std::int64_t>(rows.size());
        if (m <= n_test + n_valid) {
            s.train.insert(s.train.end(), rows.begin(), rows.end());
            continue;
        }
        s.train.insert(s.train.end(), rows.begin(), rows.end() - n_test - n_valid);
        s.valid.insert(s.valid.end(), rows.end() - n_test - n_valid, rows.end() - n_test);
        s.test.insert(s.test.end(), rows.end() - n_test, rows.end());
    }
    std::sort(s.train.begin(), s.train.end());
    std::sort(s.valid.begin(), s.valid.end());
    std::sort(s.test.begin(), s.test.end());
    return s;
}

/// The three parts of a dataset.
template <class T>
struct dataset_split {
    ctr_dataset<T> train, valid, test;
};

/// ctr_dataset subsets for the parts of `s`, rows in the order listed.
template <class T>
dataset_split<T> apply_split(const ctr_dataset<T>& d, const split_indices& s) {
    return {d.subset(s.train), d.subset(s.valid), d.subset(s.test)};
}

}  // namespace xrec::data
