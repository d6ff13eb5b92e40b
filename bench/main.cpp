// xrec_bench: Google Benchmark cases for xrec's layers and the machine limits they are
// compared against. Besides Google Benchmark's flags it takes
//   --xrec_threads=N      threads of train_ctx cases (default 1; infer_ctx runs on the caller)
//   --xrec_min_time=S     seconds per sample (default 0.1)
//   --xrec_repetitions=K  samples per case (default 5; read the median aggregate)
//   --xrec_warmup=S       warm-up seconds before the first sample of a case (default 0.05)
// They are set at registration (MinTime/Repetitions), so they mean the same across Google
// Benchmark versions whose own --benchmark_min_time syntax differs. bench/run.py drives it.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "common.hpp"

namespace xrec_bench {
options& opts() {
    static options o;
    return o;
}
std::set<std::pair<std::int64_t, int>>& working_sets() {
    static std::set<std::pair<std::int64_t, int>> s;
    return s;
}

void add_case(const std::string& name, const case_cost& cost, make_step_fn make) {
    // Only the case being run keeps its fixture: starting another case frees the previous
    // one, so a full run holds one million-row table at a time, not all of them.
    struct lazy {
        make_step_fn make;
        step_fn step;
        step_fn& get() {
            static lazy* live = nullptr;
            if (live != this) {
                if (live) live->step = nullptr;
                live = this;
            }
            if (!step) {
                step = make();
                warm_up(step, opts().warmup);
            }
            return step;
        }
    };
    auto holder = std::make_shared<lazy>(lazy{std::move(make), {}});
    working_sets().insert({static_cast<std::int64_t>(cost.ws_bytes), cost.threads});
    benchmark::RegisterBenchmark(name.c_str(),
                                 [holder, cost](benchmark::State& st) {
                                     step_fn& step = holder->get();
                                     for (auto _ : st) step();
                                     const double it = static_cast<double>(st.iterations());
                                     st.counters["flops"] = cost.flops;
                                     st.counters["bytes"] = cost.bytes;
                                     st.counters["ws_bytes"] = cost.ws_bytes;
                                     st.counters["nthreads"] = cost.threads;
                                     st.counters["GFLOP/s"] =
                                         benchmark::Counter(cost.flops * it * 1e-9, benchmark::Counter::kIsRate);
                                     st.counters["GB/s"] =
                                         benchmark::Counter(cost.bytes * it * 1e-9, benchmark::Counter::kIsRate);
                                     st.SetItemsProcessed(static_cast<std::int64_t>(cost.items * it));
                                 })
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(opts().min_time)
        ->Repetitions(opts().repetitions);
}
}  // namespace xrec_bench

namespace {
// Consumes --xrec_<key>=value flags, leaving the rest for Google Benchmark.
bool take_flag(const char* arg, const char* key, std::string& value) {
    const std::string prefix = std::string("--xrec_") + key + "=";
    if (std::strncmp(arg, prefix.c_str(), prefix.size()) != 0) return false;
    value = arg + prefix.size();
    return true;
}
}  // namespace

int main(int argc, char** argv) {
    auto& o = xrec_bench::opts();
    std::vector<char*> rest{argv[0]};
    for (int i = 1; i < argc; ++i) {
        std::string v;
        if (take_flag(argv[i], "threads", v))
            o.threads = std::max(1, std::atoi(v.c_str()));
        else if (take_flag(argv[i], "min_time", v))
            o.min_time = std::atof(v.c_str());
        else if (take_flag(argv[i], "repetitions", v))
            o.repetitions = std::max(1, std::atoi(v.c_str()));
        else if (take_flag(argv[i], "warmup", v))
            o.warmup = std::atof(v.c_str());
        else
            rest.push_back(argv[i]);
    }
    int n = static_cast<int>(rest.size());
    rest.push_back(nullptr);

    xrec_bench::register_linear();
    xrec_bench::register_mlp();
    xrec_bench::register_embedding();
    xrec_bench::register_interaction();
    xrec_bench::register_dropout();
    xrec_bench::register_gemm();
    xrec_bench::register_top_k();
    xrec_bench::register_sasrec();
    xrec_bench::register_deepfm();
    xrec_bench::register_serve();
    xrec_bench::register_limits();  // last: it adds one bandwidth limit per case working set

    benchmark::AddCustomContext("xsimd_arch", xsimd::default_arch::name());
    benchmark::AddCustomContext("xrec_threads", std::to_string(o.threads));
    benchmark::Initialize(&n, rest.data());
    if (benchmark::ReportUnrecognizedArguments(n, rest.data())) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
