// kernels::gemm against a naive triple loop in long double: all four transpose cases,
// alpha/beta variants (beta = 0 with NaN in C must not read C), sizes around every
// register-tile and cache-block edge of the packed kernel (including m <= 2 of the NT
// dot path, k = 0 and n > nc), and leading dimensions larger than the rows.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "xrec/backend/cpu_kernels.hpp"

namespace {

struct gemm_case {
    bool ta, tb;
    std::int64_t m, n, k;
    double alpha, beta;
    std::int64_t pad;  // extra elements per stored row of A, B and C
};

// Runs one case in T; returns the largest |got - want| / (sum_p |alpha a b| + |beta c| + 1e-30)
// (the error relative to the magnitude of the terms summed) and checks the padding is untouched.
template <class T>
double run_case(const gemm_case& g, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(-1, 1);
    const std::int64_t ar = g.ta ? g.k : g.m, ac = g.ta ? g.m : g.k;  // stored A is ar x ac
    const std::int64_t br = g.tb ? g.n : g.k, bc = g.tb ? g.k : g.n;
    const std::int64_t lda = ac + g.pad, ldb = bc + g.pad, ldc = g.n + g.pad;
    std::vector<T> a(static_cast<std::size_t>(std::max<std::int64_t>(ar * lda, 1)));
    std::vector<T> b(static_cast<std::size_t>(std::max<std::int64_t>(br * ldb, 1)));
    std::vector<T> c(static_cast<std::size_t>(std::max<std::int64_t>(g.m * ldc, 1)));
    for (auto& v : a) v = static_cast<T>(u(rng));
    for (auto& v : b) v = static_cast<T>(u(rng));
    const T sentinel = T(12345);
    for (std::int64_t i = 0; i < g.m; ++i)
        for (std::int64_t j = 0; j < ldc; ++j)
            c[static_cast<std::size_t>(i * ldc + j)] =
                j >= g.n ? sentinel : g.beta == 0 ? std::numeric_limits<T>::quiet_NaN() : static_cast<T>(u(rng));
    const std::vector<T> c0 = c;
    auto A = [&](std::int64_t i, std::int64_t p) -> long double {
        return g.ta ? a[static_cast<std::size_t>(p * lda + i)] : a[static_cast<std::size_t>(i * lda + p)];
    };
    auto B = [&](std::int64_t p, std::int64_t j) -> long double {
        return g.tb ? b[static_cast<std::size_t>(j * ldb + p)] : b[static_cast<std::size_t>(p * ldb + j)];
    };
    xrec::kernels::gemm(xrec::cpu<>{}, g.ta, g.tb, g.m, g.n, g.k, static_cast<T>(g.alpha), a.data(), lda, b.data(), ldb,
                        static_cast<T>(g.beta), c.data(), ldc);
    double worst = 0;
    for (std::int64_t i = 0; i < g.m; ++i) {
        for (std::int64_t j = 0; j < ldc; ++j) {
            const std::size_t at = static_cast<std::size_t>(i * ldc + j);
            if (j >= g.n) {
                if (c[at] != sentinel) return std::numeric_limits<double>::infinity();
                continue;
            }
            long double s = 0, mag = 0;
            for (std::int64_t p = 0; p < g.k; ++p) {
                s += A(i, p) * B(p, j);
                mag += std::fabs(A(i, p) * B(p, j));
            }
            long double want = static_cast<long double>(g.alpha) * s;
            mag *= std::fabs(g.alpha);
            if (g.beta != 0) {
                want += static_cast<long double>(g.beta) * c0[at];
                mag += std::fabs(static_cast<long double>(g.beta) * c0[at]);
            }
            const double got = static_cast<double>(c[at]);
            if (!std::isfinite(got)) return std::numeric_limits<double>::infinity();
            worst = std::max(worst, static_cast<double>(std::fabs(got - want) / (mag + 1e-30L)));
        }
    }
    return worst;
}

std::string describe(const gemm_case& g) {
    return std::string(g.ta ? "T" : "N") + (g.tb ? "T" : "N") + " m=" + std::to_string(g.m) +
           " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) + " alpha=" + std::to_string(g.alpha) +
           " beta=" + std::to_string(g.beta) + " pad=" + std::to_string(g.pad);
}

template <class T>
void sweep(double tol) {
    std::uint64_t seed = 1;
    const std::int64_t sizes[] = {1, 3, 17, 63, 65, 129};
    const double alphas[] = {1.0, -0.75};
    const double betas[] = {0.0, 1.0, 0.5};
    double worst = 0;
    int cases = 0;
    for (int t = 0; t < 4; ++t)
        for (std::int64_t m : sizes)
            for (std::int64_t n : sizes)
                for (std::int64_t k : {std::int64_t{1}, std::int64_t{17}, std::int64_t{65}})
                    for (double beta : betas) {
                        const double alpha = alphas[(m + n + k) % 2];
                        const gemm_case g{(t & 1) != 0, (t & 2) != 0, m, n, k, alpha, beta, (m + n) % 3 == 0 ? 0 : 5};
                        const double e = run_case<T>(g, seed++);
                        INFO(describe(g));
                        CHECK(e <= tol);
                        worst = std::max(worst, e);
                        ++cases;
                    }
    // Shapes past the cache blocks (k > kc, m > mc, n not a multiple of nr) and k = 0.
    const gemm_case big[] = {
        {false, true, 430, 129, 430, 1.0, 0.0, 3},  {false, false, 65, 430, 513, 1.0, 1.0, 0},
        {true, false, 129, 63, 1000, -1.0, 0.5, 7}, {true, true, 777, 65, 300, 0.5, 0.0, 1},
        {false, true, 2, 430, 430, 1.0, 0.0, 2},    {false, true, 3, 17, 0, 1.0, 0.0, 0},
        {true, false, 17, 3, 0, 1.0, 0.5, 4},       {false, false, 5, 4200, 7, 1.0, 0.5, 2},
        {true, true, 7, 4133, 9, 1.0, 0.0, 0},
    };
    for (const auto& g : big) {
        const double e = run_case<T>(g, seed++);
        INFO(describe(g));
        CHECK(e <= tol);
        worst = std::max(worst, e);
        ++cases;
    }
    MESSAGE(cases << " cases, worst relative error " << worst);
}

}  // namespace

TEST_CASE("kernels::gemm matches a naive product (double)") { sweep<double>(1e-14); }

TEST_CASE("kernels::gemm matches a naive product (float)") { sweep<float>(1e-5); }

// gemm_then's blocks must tile C exactly once, each handed over only when final: the
// epilogue snapshots its block and counts visits; the snapshot must equal plain gemm's C.
TEST_CASE("kernels::gemm_then: the epilogue sees every element of C once, after it is final") {
    struct shp {
        bool ta, tb;
        std::int64_t m, n, k;
        double beta;
    };
    const shp shapes[] = {{false, true, 2, 40, 30, 0.0},     {false, true, 900, 429, 429, 0.0},
                          {false, false, 800, 429, 429, 1.0}, {true, false, 429, 429, 900, 1.0},
                          {false, false, 5, 4200, 7, 0.5},    {false, true, 3, 17, 0, 1.0}};
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> u(-1, 1);
    for (const auto& g : shapes) {
        INFO(g.ta << g.tb << " m=" << g.m << " n=" << g.n << " k=" << g.k);
        const std::int64_t lda = g.ta ? g.m : g.k, ldb = g.tb ? g.k : g.n;
        std::vector<double> a(static_cast<std::size_t>(std::max<std::int64_t>(g.m * g.k, 1))),
            b(static_cast<std::size_t>(std::max<std::int64_t>(g.k * g.n, 1))), c(static_cast<std::size_t>(g.m * g.n));
        for (auto& v : a) v = u(rng);
        for (auto& v : b) v = u(rng);
        for (auto& v : c) v = u(rng);
        std::vector<double> want = c, got = c, snap(c.size(), 0.0);
        std::vector<int> visits(c.size(), 0);
        xrec::kernels::gemm(xrec::cpu<>{}, g.ta, g.tb, g.m, g.n, g.k, 1.0, a.data(), lda, b.data(), ldb, g.beta,
                            want.data(), g.n);
        int blocks = 0;
        xrec::kernels::gemm_then(xrec::cpu<>{}, g.ta, g.tb, g.m, g.n, g.k, 1.0, a.data(), lda, b.data(), ldb, g.beta,
                                 got.data(), g.n, [&](std::int64_t i0, std::int64_t j0, std::int64_t mb, std::int64_t nb) {
                                     ++blocks;
                                     for (std::int64_t i = i0; i < i0 + mb; ++i)
                                         for (std::int64_t j = j0; j < j0 + nb; ++j) {
                                             const auto at = static_cast<std::size_t>(i * g.n + j);
                                             ++visits[at];
                                             snap[at] = got[at];
                                         }
                                 });
        CHECK(std::all_of(visits.begin(), visits.end(), [](int v) { return v == 1; }));
        CHECK(snap == want);
        CHECK(got == want);
        if (g.m >= 800) CHECK(blocks > 1);
    }
}
