// xrec_serve_load: one predictor under load from several threads (the Criteo-shaped DeepFM of
// bench/serve.cpp, batch-1 requests, one session per thread), two measurements:
//  1. scaling: requests per second of 1 thread, then of N threads (--threads, default 2),
//     each run --seconds long; the ratio shows whether anything serialises the threads.
//  2. hot swap: N closed-loop threads, latency of every request recorded; once without
//     publishes, once with a publisher that every --swap-ms (default 100) changes --rows rows
//     of each table and the dense weights of a learner's store and publishes them (a delta
//     publish, as an online learner does; --full: a full copy of every table instead); the
//     p50/p99/p99.9 of both and the p99 ratio.
// Each measurement is repeated --repeat times (alternating where it matters) and the medians
// printed. Prints the machine line first; bench/RESULTS.md holds the figures.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "xrec/core/rng.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/serve/predictor.hpp"

namespace {

using B = xrec::cpu<>;
using model = xrec::models::deepfm<float, B>;
using clock_type = std::chrono::steady_clock;
constexpr std::int64_t fields = 26, rows_per_field = 100'000, dim = 16, dense_fields = 13;

struct args {
    int threads = 2, repeat = 5, swap_ms = 100, rows = 1000;
    double seconds = 2;
    bool full = false;  // full publishes (every table copied) instead of delta publishes
};

args parse(int argc, char** argv) {
    args a;
    for (int i = 1; i < argc; ++i) {
        auto val = [&](const char* name) -> const char* {
            const std::size_t n = std::strlen(name);
            return std::strncmp(argv[i], name, n) == 0 && argv[i][n] == '=' ? argv[i] + n + 1 : nullptr;
        };
        if (const char* v = val("--threads")) a.threads = std::atoi(v);
        else if (const char* v2 = val("--repeat")) a.repeat = std::atoi(v2);
        else if (const char* v3 = val("--swap-ms")) a.swap_ms = std::atoi(v3);
        else if (const char* v4 = val("--rows")) a.rows = std::atoi(v4);
        else if (const char* v5 = val("--seconds")) a.seconds = std::atof(v5);
        else if (std::strcmp(argv[i], "--full") == 0) a.full = true;
        else {
            std::fprintf(stderr, "usage: %s [--threads=2] [--seconds=2] [--repeat=5] [--swap-ms=100] [--rows=1000] [--full]\n", argv[0]);
            std::exit(2);
        }
    }
    return a;
}

xrec::feature_layout layout() {
    xrec::feature_layout l;
    for (std::int64_t f = 0; f < fields; ++f) {
        std::string n(1, 'C');
        n.append(std::to_string(f + 1));
        l.tables.push_back({n, rows_per_field});
        l.sparse.push_back({n, f});
    }
    for (std::int64_t d = 0; d < dense_fields; ++d) {
        std::string n(1, 'I');
        n.append(std::to_string(d + 1));
        l.dense.push_back(n);
    }
    l.finish();
    return l;
}

model::options options() {
    model::options o;
    o.dim = dim;
    o.dnn.hidden = {400, 400, 400};
    return o;
}

// 256 one-row requests.
struct requests {
    std::vector<std::int64_t> ids;
    std::vector<float> dense;
    explicit requests(const xrec::feature_layout& l) {
        xrec::rng_stream rs{xrec::philox{5}, 1};
        std::uint64_t k = 0;
        for (int r = 0; r < 256; ++r) {
            for (std::int64_t f = 0; f < fields; ++f)
                ids.push_back(l.tables[static_cast<std::size_t>(f)].offset + static_cast<std::int64_t>(rs.below(k++, rows_per_field)));
            for (std::int64_t d = 0; d < dense_fields; ++d) dense.push_back(rs.uniform_f(k++));
        }
    }
    xrec::batch<float> operator[](std::size_t i) const {
        xrec::batch<float> b;
        b.rows = 1;
        b.sparse = {ids.data() + i * fields, xrec::shape{1, fields}};
        b.dense = {dense.data() + i * dense_fields, xrec::shape{1, dense_fields}};
        return b;
    }
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : (v[(v.size() - 1) / 2] + v[v.size() / 2]) / 2;
}

// n threads serving for `seconds`; returns requests per second; latencies (ns) if asked.
double serve(xrec::serve::predictor<model>& p, const requests& r, int n, double seconds,
             std::vector<std::vector<std::int64_t>>* lat) {
    std::vector<xrec::serve::session<model>> sessions;
    for (int t = 0; t < n; ++t) sessions.push_back(p.make_session());
    if (lat) {
        lat->assign(static_cast<std::size_t>(n), {});
        for (auto& v : *lat) v.reserve(static_cast<std::size_t>(seconds * 200'000));
    }
    std::atomic<bool> go{false}, stop{false};
    std::atomic<long> total{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < n; ++t)
        ts.emplace_back([&, t] {
            auto& s = sessions[static_cast<std::size_t>(t)];
            float out = 0;
            long count = 0;
            while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
            while (!stop.load(std::memory_order_relaxed)) {
                const auto t0 = clock_type::now();
                if (!p.predict(s, r[static_cast<std::size_t>((count * 37 + t * 101) % 256)], std::span<float>(&out, 1)).ok())
                    std::abort();
                if (lat) (*lat)[static_cast<std::size_t>(t)].push_back((clock_type::now() - t0).count());
                ++count;
            }
            total += count;
        });
    const auto t0 = clock_type::now();
    go = true;
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop = true;
    for (auto& t : ts) t.join();
    return static_cast<double>(total.load()) / std::chrono::duration<double>(clock_type::now() - t0).count();
}

struct percentiles {
    double p50, p99, p999;
};
percentiles pct(const std::vector<std::vector<std::int64_t>>& lat) {
    std::vector<std::int64_t> all;
    for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
    std::sort(all.begin(), all.end());
    auto at = [&](double q) { return all.empty() ? 0.0 : static_cast<double>(all[static_cast<std::size_t>(q * static_cast<double>(all.size() - 1))]) / 1000; };
    return {at(0.5), at(0.99), at(0.999)};
}

}  // namespace

int main(int argc, char** argv) {
    const args a = parse(argc, argv);
    std::printf("xrec_serve_load: DeepFM 26 x 100,000 rows, D %lld, MLP 400-400-400, batch-1 predict; %u hardware threads\n",
                static_cast<long long>(dim), std::thread::hardware_concurrency());
    const auto l = layout();
    xrec::param_store<float, B> learner(1);
    model m(learner, l, options());
    xrec::serve::predictor<model> p(l, options(), {.max_batch = 1});
    std::vector<std::vector<std::int64_t>> touched(static_cast<std::size_t>(learner.table_count()));
    p.publish(learner, touched);
    p.publish(learner, touched);
    const requests r(l);

    // 1. scaling
    std::vector<double> one, many, ratio;
    for (int i = 0; i < a.repeat; ++i) {
        one.push_back(serve(p, r, 1, a.seconds, nullptr));
        many.push_back(serve(p, r, a.threads, a.seconds, nullptr));
        ratio.push_back(many.back() / one.back());
    }
    std::printf("scaling: 1 thread %.0f req/s, %d threads %.0f req/s: %.2fx (median of %d; per-run ratios", median(one),
                a.threads, median(many), median(ratio), a.repeat);
    for (double x : ratio) std::printf(" %.2f", x);
    std::printf(")\n");

    // 2. hot swap
    std::vector<double> p99_quiet, p99_swap, p50_quiet, p50_swap, p999_quiet, p999_swap, swaps;
    for (int i = 0; i < a.repeat; ++i) {
        std::vector<std::vector<std::int64_t>> lat;
        serve(p, r, a.threads, a.seconds, &lat);
        const auto q = pct(lat);
        std::atomic<bool> stop{false};
        long published = 0;
        std::thread publisher([&] {
            xrec::rng_stream rs{xrec::philox{9}, static_cast<std::uint64_t>(i)};
            std::uint64_t k = 0;
            auto next = clock_type::now();
            while (!stop.load()) {
                next += std::chrono::milliseconds(a.swap_ms);
                std::this_thread::sleep_until(next);
                for (std::int64_t t = 0; t < learner.table_count(); ++t) {
                    auto& tb = learner.table(t);
                    auto& list = touched[static_cast<std::size_t>(t)];
                    list.clear();
                    for (int j = 0; j < a.rows; ++j) {
                        const auto row = static_cast<std::int64_t>(rs.below(k++, static_cast<std::uint64_t>(tb.rows)));
                        tb.row(row)[0] += 1e-3f;
                        list.push_back(row);
                    }
                }
                for (std::int64_t j = 0; j < learner.dense_size(); ++j) learner.values()[j] *= 0.9999f;
                if (a.full)
                    p.publish(learner);
                else
                    p.publish(learner, touched);
                ++published;
            }
        });
        serve(p, r, a.threads, a.seconds, &lat);
        stop = true;
        publisher.join();
        const auto w = pct(lat);
        p50_quiet.push_back(q.p50), p99_quiet.push_back(q.p99), p999_quiet.push_back(q.p999);
        p50_swap.push_back(w.p50), p99_swap.push_back(w.p99), p999_swap.push_back(w.p999);
        swaps.push_back(static_cast<double>(published));
    }
    std::vector<double> r99;
    for (std::size_t i = 0; i < p99_quiet.size(); ++i) r99.push_back(p99_swap[i] / p99_quiet[i]);
    std::printf("hot swap: %d threads, a %s publish (%d rows per table changed + dense) every %d ms (%.0f per run)\n",
                a.threads, a.full ? "full" : "delta", a.rows, a.swap_ms, median(swaps));
    std::printf("  without swaps: p50 %.1f us  p99 %.1f us  p99.9 %.1f us\n", median(p50_quiet), median(p99_quiet),
                median(p999_quiet));
    std::printf("  with swaps:    p50 %.1f us  p99 %.1f us  p99.9 %.1f us\n", median(p50_swap), median(p99_swap),
                median(p999_swap));
    std::printf("  p99 with / without: %.2fx (median of %d; per-run", median(r99), a.repeat);
    for (double x : r99) std::printf(" %.2f", x);
    std::printf(")\n  publishes: %llu delta, %llu full\n", static_cast<unsigned long long>(p.delta_publishes()),
                static_cast<unsigned long long>(p.full_publishes()));
    return 0;
}
