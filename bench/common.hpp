#pragma once
// Shared machinery of xrec_bench: the run options, the case registry, and the cost model
// (FLOPs, bytes, working set) each case reports so that bench/run.py can compare a time
// against the machine limits measured in the same run.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "xrec/backend/tags.hpp"
#include "xrec/core/context.hpp"

namespace xrec_bench {

/// The cases run in fp32 on the cpu backend of the architecture this binary is built for.
using T = float;
using B = xrec::cpu<>;

/// Options read from xrec_bench's own flags (see main.cpp); fixed before registration.
struct options {
    int threads = 1;          ///< train_ctx threads (an infer_ctx always runs on the caller)
    double min_time = 0.1;    ///< seconds per sample (one Google Benchmark repetition)
    int repetitions = 5;      ///< samples per case; run.py takes their median
    double warmup = 0.05;     ///< seconds (and at least 2 steps) of warm-up before the first sample
};
options& opts();

/// What one step of a case costs, per iteration. run.py divides by the measured machine
/// limits: `flops` by the FMA rate at `threads` threads, `bytes` by the read bandwidth of a
/// buffer of `ws_bytes` bytes (the case's footprint) read by `threads` threads.
struct case_cost {
    double flops = 0;     ///< floating-point operations (an FMA counts 2)
    double bytes = 0;     ///< compulsory memory traffic: every tensor touched once
    double ws_bytes = 0;  ///< working set: the footprint the step's memory accesses range over
    double items = 0;     ///< rows (batch elements) per step, for items/s
    int threads = 1;      ///< threads the step runs on
};

/// A step closure, built lazily (tables of a million rows are built once, when the case
/// first runs, never at registration) and kept for the rest of the process.
using step_fn = std::function<void()>;
using make_step_fn = std::function<step_fn()>;

/// Registers a case with Google Benchmark: real time, the configured repetitions and
/// minimum time, one warm-up (>= opts().warmup seconds and >= 2 steps) when first run,
/// counters flops/bytes/ws_bytes/threads (per step) and GFLOP/s, GB/s and items/s rates.
/// Also notes (ws_bytes, threads) so that main registers the matching bandwidth limit.
void add_case(const std::string& name, const case_cost& cost, make_step_fn make);

/// The distinct (working-set bytes, threads) pairs of the registered cases.
std::set<std::pair<std::int64_t, int>>& working_sets();

void register_limits();
void register_linear();
void register_mlp();
void register_embedding();
void register_interaction();
void register_dropout();
void register_gemm();
void register_top_k();
void register_sasrec();
void register_deepfm();
void register_serve();

/// n standard-normal values from a fixed seed (inputs of the dense cases).
inline std::vector<T> random_input(std::int64_t n, std::uint64_t seed) {
    std::mt19937_64 g(seed);
    std::normal_distribution<T> d(0, 1);
    std::vector<T> v(static_cast<std::size_t>(n));
    for (auto& e : v) e = d(g);
    return v;
}

/// train_ctx options for a case on `threads` threads.
inline xrec::train_ctx<T, B>::options train_options(int threads) {
    xrec::train_ctx<T, B>::options o;
    o.threads = threads;
    o.seed = 1;
    return o;
}

/// Runs `step` for at least `seconds` and at least `min_steps` times.
inline void warm_up(const step_fn& step, double seconds, int min_steps = 2) {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    for (int i = 0;; ++i) {
        if (i >= min_steps && std::chrono::duration<double>(clock::now() - t0).count() >= seconds) break;
        step();
    }
}

}  // namespace xrec_bench
