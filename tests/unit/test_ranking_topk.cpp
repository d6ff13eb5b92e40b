// serve/top_k.hpp: the k best items are exactly the first k of a full std::sort by (score
// desc, id asc) of the same scores, on random data, with many ties, with exclusions, with
// k larger than what is left, for D around the SIMD width; the batch form over a pool
// equals one call per query; steady-state calls reuse the workspace.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "xrec/serve/top_k.hpp"

namespace xs = xrec::serve;

namespace {

// Reference: every non-excluded id sorted by (score desc, id asc), first k.
std::vector<std::int32_t> reference(const std::vector<float>& sc, const std::vector<std::int32_t>& ex, std::int64_t k) {
    std::vector<std::int32_t> ids;
    for (std::int32_t i = 0; i < static_cast<std::int32_t>(sc.size()); ++i)
        if (!std::binary_search(ex.begin(), ex.end(), i)) ids.push_back(i);
    std::sort(ids.begin(), ids.end(), [&](std::int32_t a, std::int32_t b) {
        const float x = sc[static_cast<std::size_t>(a)], y = sc[static_cast<std::size_t>(b)];
        return x > y || (x == y && a < b);
    });
    if (static_cast<std::int64_t>(ids.size()) > k) ids.resize(static_cast<std::size_t>(k));
    return ids;
}

struct data_set {
    std::int64_t n, d;
    std::vector<float> items, q;
};

data_set make(std::int64_t n, std::int64_t d, bool ties, std::mt19937_64& g) {
    data_set s{n, d, std::vector<float>(static_cast<std::size_t>(n * d)), std::vector<float>(static_cast<std::size_t>(d))};
    std::normal_distribution<float> nd(0, 1);
    std::uniform_int_distribution<int> small(-1, 1);
    // Ties: entries in {-1, 0, 1} make every dot product an exact small integer, so many
    // items share a score whatever the summation order.
    for (auto& v : s.items) v = ties ? static_cast<float>(small(g)) : nd(g);
    for (auto& v : s.q) v = ties ? static_cast<float>(small(g)) : nd(g);
    return s;
}

std::vector<std::int32_t> random_exclusions(std::int64_t n, double frac, std::mt19937_64& g) {
    std::vector<std::int32_t> ex;
    std::uniform_real_distribution<double> u(0, 1);
    for (std::int32_t i = 0; i < static_cast<std::int32_t>(n); ++i)
        if (u(g) < frac) ex.push_back(i);
    if (!ex.empty() && u(g) < 0.5) ex.insert(ex.begin() + static_cast<std::ptrdiff_t>(ex.size() / 2), ex[ex.size() / 2]);  // a duplicate
    ex.push_back(static_cast<std::int32_t>(n + 3));  // out of range: ignored
    return ex;
}

}  // namespace

TEST_CASE("top_k: equals the first k of a full sort (random data, ties, exclusions, D around the SIMD width)") {
    std::mt19937_64 g(42);
    xs::top_k_workspace ws;
    int cases = 0;
    for (std::int64_t d : {1, 3, 4, 7, 8, 15, 16, 17, 33, 64, 100}) {
        for (std::int64_t n : {0, 1, 5, 37, 1000, 3001}) {
            for (bool ties : {false, true}) {
                const auto s = make(n, d, ties, g);
                std::vector<float> sc(static_cast<std::size_t>(n));
                xs::score_all(s.q, s.items.data(), n, d, sc);
                // The kernel's scores are the dot products (checked in double).
                for (std::int64_t i = 0; i < n; i += 7) {
                    double ref = 0;
                    for (std::int64_t p = 0; p < d; ++p)
                        ref += static_cast<double>(s.q[static_cast<std::size_t>(p)]) *
                               s.items[static_cast<std::size_t>(i * d + p)];
                    CHECK(std::abs(sc[static_cast<std::size_t>(i)] - ref) <= 1e-4 * (1 + std::abs(ref)));
                }
                for (double frac : {0.0, 0.3, 0.95}) {
                    const auto ex = frac == 0.0 ? std::vector<std::int32_t>{} : random_exclusions(n, frac, g);
                    for (std::int64_t k : {std::int64_t{0}, std::int64_t{1}, std::int64_t{10}, std::int64_t{100}, n + 5}) {
                        CAPTURE(d);
                        CAPTURE(n);
                        CAPTURE(ties);
                        CAPTURE(frac);
                        CAPTURE(k);
                        const auto want = reference(sc, ex, k);
                        std::vector<std::int32_t> ids(static_cast<std::size_t>(k), -7);
                        std::vector<float> scores(static_cast<std::size_t>(k));
                        const auto got = xs::top_k(s.q, s.items.data(), n, d, k, ex, ids, scores, ws);
                        REQUIRE(got == static_cast<std::int64_t>(want.size()));
                        for (std::size_t j = 0; j < want.size(); ++j) {
                            CHECK(ids[j] == want[j]);
                            CHECK(scores[j] == sc[static_cast<std::size_t>(want[j])]);
                        }
                        // k > what is left: padded with -1 / -inf.
                        for (std::size_t j = want.size(); j < ids.size(); ++j) {
                            CHECK(ids[j] == -1);
                            CHECK(std::isinf(scores[j]));
                        }
                        // The same selection over the precomputed scores.
                        std::vector<std::int32_t> ids2(static_cast<std::size_t>(k));
                        xs::top_k_of_scores(sc, k, ex, ids2, {}, ws);
                        CHECK(ids2 == ids);
                        ++cases;
                    }
                }
            }
        }
    }
    MESSAGE(cases << " top_k cases matched a full std::sort");
}

TEST_CASE("top_k: the batch form over a pool equals one call per query; workspaces are reused") {
    std::mt19937_64 g(7);
    const std::int64_t n = 2500, d = 19, m = 37, k = 25;  // 37 queries: groups of 16, 16 and 5
    const auto s = make(n, d, false, g);
    std::vector<float> queries(static_cast<std::size_t>(m * d));
    std::normal_distribution<float> nd(0, 1);
    for (auto& v : queries) v = nd(g);
    // Query j excludes ids j, j + 50, j + 100, ... (sorted); query 3 excludes nothing.
    std::vector<std::int64_t> off{0};
    std::vector<std::int32_t> ex;
    for (std::int64_t j = 0; j < m; ++j) {
        if (j != 3)
            for (std::int32_t i = static_cast<std::int32_t>(j); i < n; i += 50) ex.push_back(i);
        off.push_back(static_cast<std::int64_t>(ex.size()));
    }
    xs::top_k_workspace ws;
    std::vector<std::int32_t> want(static_cast<std::size_t>(m * k));
    std::vector<float> want_s(want.size());
    for (std::int64_t j = 0; j < m; ++j) {
        const std::span<const float> q(queries.data() + j * d, static_cast<std::size_t>(d));
        const std::span<const std::int32_t> e(ex.data() + off[static_cast<std::size_t>(j)],
                                              static_cast<std::size_t>(off[static_cast<std::size_t>(j) + 1] - off[static_cast<std::size_t>(j)]));
        xs::top_k(q, s.items.data(), n, d, k, e, std::span<std::int32_t>(want.data() + j * k, static_cast<std::size_t>(k)),
                  std::span<float>(want_s.data() + j * k, static_cast<std::size_t>(k)), ws);
    }
    for (int threads : {1, 2, 3}) {
        xrec::thread_pool pool(threads);
        xs::top_k_workspace bws;
        std::vector<std::int32_t> ids(want.size());
        std::vector<float> sc(want.size());
        xs::top_k_batch(queries.data(), m, s.items.data(), n, d, k, off, ex, ids.data(), sc.data(), bws, &pool);
        CHECK(ids == want);
        CHECK(sc == want_s);
        // A second call reuses the scratch buffers (no reallocation in steady state).
        std::vector<const void*> before;
        for (auto& t : bws.per_thread) {
            before.push_back(t.block.data());
            before.push_back(t.heap.data());
        }
        xs::top_k_batch(queries.data(), m, s.items.data(), n, d, k, off, ex, ids.data(), nullptr, bws, &pool);
        CHECK(ids == want);
        std::size_t i = 0;
        for (auto& t : bws.per_thread) {
            CHECK(before[i++] == static_cast<const void*>(t.block.data()));
            CHECK(before[i++] == static_cast<const void*>(t.heap.data()));
        }
    }
    // Without exclusions every query's best is found too.
    std::vector<std::int32_t> ids(want.size());
    xs::top_k_batch(queries.data(), m, s.items.data(), n, d, k, {}, {}, ids.data(), nullptr, ws);
    std::vector<float> scq(static_cast<std::size_t>(n));
    xs::score_all(std::span<const float>(queries.data(), static_cast<std::size_t>(d)), s.items.data(), n, d, scq);
    const auto r0 = reference(scq, {}, k);
    CHECK(std::equal(r0.begin(), r0.end(), ids.begin()));
}

TEST_CASE("top_k: a single query split over a pool gives the one-thread list") {
    std::mt19937_64 g(3);
    for (bool ties : {false, true}) {
        const std::int64_t n = 70001, d = 13;  // above the 2^16 rows where the pool is used; not a multiple of any width
        const auto s = make(n, d, ties, g);
        const auto ex = random_exclusions(n, 0.2, g);
        std::vector<float> sc(static_cast<std::size_t>(n));
        xs::score_all(s.q, s.items.data(), n, d, sc);
        for (std::int64_t k : {1, 50, 1000}) {
            const auto want = reference(sc, ex, k);
            for (int threads : {2, 3, 7}) {
                CAPTURE(ties);
                CAPTURE(k);
                CAPTURE(threads);
                xrec::thread_pool pool(threads);
                xs::top_k_workspace ws;
                std::vector<std::int32_t> ids(static_cast<std::size_t>(k));
                std::vector<float> out(ids.size());
                REQUIRE(xs::top_k(s.q, s.items.data(), n, d, k, ex, ids, out, ws, &pool) == k);
                CHECK(ids == want);
                for (std::size_t j = 0; j < ids.size(); ++j) CHECK(out[j] == sc[static_cast<std::size_t>(want[j])]);
            }
        }
    }
}

TEST_CASE("top_k: bad input is refused with the sizes") {
    const std::vector<float> items(12, 1.0f), q(3, 1.0f), q2(2, 1.0f);
    std::vector<std::int32_t> ids(2);
    std::vector<float> sc(2);
    const std::vector<std::int32_t> unsorted{3, 1};
    CHECK_THROWS_WITH_AS(xs::top_k(q, items.data(), 4, 3, 2, unsorted, ids, sc), doctest::Contains("sorted ascending"),
                         xrec::error);
    CHECK_THROWS_WITH_AS(xs::top_k(q2, items.data(), 4, 3, 2, {}, ids, sc), doctest::Contains("query of 2 values for D = 3"),
                         xrec::error);
    CHECK_THROWS_WITH_AS(xs::top_k(q, items.data(), 4, 3, 3, {}, ids, sc), doctest::Contains("k = 3"), xrec::error);
    // All-equal scores: the smallest ids win.
    CHECK(xs::top_k(q, items.data(), 4, 3, 2, {}, ids, sc) == 2);
    CHECK(ids == std::vector<std::int32_t>{0, 1});
    const std::vector<std::int32_t> ex0{0};
    xs::top_k(q, items.data(), 4, 3, 2, ex0, ids, sc);
    CHECK(ids == std::vector<std::int32_t>{1, 2});
}
