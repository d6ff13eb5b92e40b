// xrec_cuda_bench: the cuda backend's kernels timed with CUDA events (Google Benchmark, manual
// time: each iteration is the device time of one call between two events), beside the
// device's own limits measured in the same process: the read bandwidth of a streaming
// kernel and cudaMemcpy's device-to-device copy. bench/cuda/run.py runs it with the PyTorch
// peer (bench/cuda/torch_peer.py) and prints the table of bench/RESULTS.md.
//
// Counters: `TBps` is bytes per second over the bytes the case must move at least (the
// gathered rows for embedding_bag: batch x ids per bag x dim x 4), `of_read_bw` that rate over
// the read bandwidth measured by read_bandwidth in the same process.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "xrec/core/buffer.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/cuda/embedding_bag.cuh"
#include "xrec/cuda/kernels.cuh"
#include "xrec/cuda/memory.cuh"
#include "xrec/cuda/stream.cuh"

namespace {

using xrec::cuda;
namespace kernels = xrec::kernels;

double g_read_bw = 0;  // bytes/s, set by read_bandwidth (which runs first)

// Sums a large buffer with 16-byte loads; one partial sum per block, so the compiler cannot
// drop the loads and the writes are negligible.
__global__ void read_kernel(const float4* __restrict__ x, std::int64_t n4, float* __restrict__ partial) {
    float s = 0;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n4;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        const float4 v = __ldcs(x + i);
        s += v.x + v.y + v.z + v.w;
    }
    __shared__ float red[1024];
    red[threadIdx.x] = s;
    __syncthreads();
    for (unsigned o = blockDim.x / 2; o > 0; o /= 2) {
        if (threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

void read_bandwidth(benchmark::State& st) {
    const std::int64_t bytes = std::int64_t{4} << 30;
    xrec::buffer<float, cuda> x(bytes / 4);
    kernels::fill(cuda{}, x.size(), 1.f, x.data());
    int sms = 0;
    XREC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int blocks = sms * 8;
    xrec::buffer<float, cuda> partial(blocks);
    xrec::device::event_timer t;
    for (auto _ : st) {
        t.start();
        read_kernel<<<blocks, 512>>>(reinterpret_cast<const float4*>(x.data()), bytes / 16, partial.data());
        XREC_CUDA_CHECK(cudaGetLastError());
        t.stop();
        st.SetIterationTime(t.milliseconds() * 1e-3);
    }
    st.counters["TBps"] = benchmark::Counter(static_cast<double>(bytes) * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
}

void copy_bandwidth(benchmark::State& st) {
    const std::int64_t bytes = std::int64_t{2} << 30;
    xrec::buffer<char, cuda> a(bytes), b(bytes);
    XREC_CUDA_CHECK(cudaMemset(a.data(), 1, static_cast<std::size_t>(bytes)));
    xrec::device::event_timer t;
    for (auto _ : st) {
        t.start();
        XREC_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), static_cast<std::size_t>(bytes), cudaMemcpyDeviceToDevice));
        t.stop();
        st.SetIterationTime(t.milliseconds() * 1e-3);
    }
    // bytes read plus bytes written
    st.counters["TBps"] = benchmark::Counter(2.0 * static_cast<double>(bytes) * 1e-12,
                                             benchmark::Counter::kIsIterationInvariantRate);
}

// x[i] = scale * (u - 0.5), u uniform in [0, 1) from a splitmix64 hash of (seed, i): random
// values made on the device, so a 5 GB table takes milliseconds.
__global__ void hash_fill_kernel(float* x, std::int64_t n, std::uint64_t seed, float scale) {
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        std::uint64_t z = seed + 0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(i + 1);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        x[i] = scale * (static_cast<float>(z >> 40) * 0x1.0p-24f - 0.5f);
    }
}

std::uint64_t zipf_rank(double u, std::int64_t rows) {
    const double a = 0.05, top = std::pow(static_cast<double>(rows) + 1, -a);
    const double x = std::pow(1 - u * (1 - top), -1 / a);
    const auto r = static_cast<std::uint64_t>(x) - 1;
    return r < static_cast<std::uint64_t>(rows) ? r : static_cast<std::uint64_t>(rows) - 1;
}

// The headline embedding case: `rows` x dim float table, `batch` bags of `per_bag` ids, ids
// uniform or Zipf(1.05) (hot ids scattered over the table by a bijective hash).
struct bag_case {
    std::int64_t rows, dim, batch, per_bag;
    xrec::buffer<float, cuda> table, accum, out, gy;
    xrec::buffer<std::int64_t, cuda> ids, offsets;
    bag_case(std::int64_t r, std::int64_t d, std::int64_t b, std::int64_t k, bool zipf)
        : rows(r), dim(d), batch(b), per_bag(k), table(r * d), accum(r), out(b * d), gy(b * d), ids(b * k),
          offsets(b + 1) {
        const xrec::rng_stream rs{xrec::philox{42}, zipf ? 2u : 1u};
        std::vector<std::int64_t> h(static_cast<std::size_t>(b * k)), off(static_cast<std::size_t>(b + 1));
        for (std::size_t i = 0; i < h.size(); ++i) {  // ids on the host: the same draw as the test's
            const double u = rs.uniform_f(i);
            const std::uint64_t rank = zipf ? zipf_rank(u, r) : static_cast<std::uint64_t>(u * static_cast<double>(r));
            h[i] = static_cast<std::int64_t>(zipf ? (rank * 2654435761ULL) % static_cast<std::uint64_t>(r)
                                                  : (rank < static_cast<std::uint64_t>(r) ? rank : r - 1));
        }
        for (std::int64_t i = 0; i <= b; ++i) off[static_cast<std::size_t>(i)] = i * k;
        xrec::device::upload(ids.data(), h.data(), b * k);
        xrec::device::upload(offsets.data(), off.data(), b + 1);
        // Random table and gradient values (never zeros: they hide unwritten outputs and can run faster).
        hash_fill_kernel<<<4096, 256>>>(table.data(), r * d, zipf ? 7 : 5, 0.01f);
        hash_fill_kernel<<<4096, 256>>>(gy.data(), b * d, 11, 1.f);
        XREC_CUDA_CHECK(cudaGetLastError());
        kernels::fill(cuda{}, r, 0.f, accum.data());
        xrec::device::synchronize();
    }
    double gathered_bytes() const { return static_cast<double>(batch * per_bag * dim) * sizeof(float); }
};

void set_counters(benchmark::State& st, double bytes) {
    st.counters["TBps"] = benchmark::Counter(bytes * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
    st.counters["bytes"] = bytes;
    st.counters["read_bw_TBps"] = g_read_bw * 1e-12;
}

// One case per (dim, ids) made on first use and kept: Google Benchmark calls a case again
// for every repetition.
bag_case& get_case(std::int64_t rows, std::int64_t dim, bool zipf) {
    static std::map<std::tuple<std::int64_t, std::int64_t, bool>, std::unique_ptr<bag_case>> cases;
    auto& p = cases[{rows, dim, zipf}];
    if (!p) p = std::make_unique<bag_case>(rows, dim, 65536, 32, zipf);
    return *p;
}

template <int Threads, int Unroll, bool Hint = false>
struct fwd_policy : xrec::embedding_bag_cuda_policy {
    static constexpr int block_threads = Threads;
    static constexpr int unroll = Unroll;
    static constexpr bool l2_row_hint = Hint;
};

template <class P = xrec::embedding_bag_cuda_policy>
void embedding_bag_fwd(benchmark::State& st, std::int64_t rows, std::int64_t dim, bool zipf) {
    bag_case& c = get_case(rows, dim, zipf);
    xrec::device::event_timer t;
    for (auto _ : st) {
        t.start();
        kernels::embedding_bag_fwd<float, P>(cuda{}, c.table.data(), dim, c.ids.data(), c.offsets.data(), c.batch,
                                   static_cast<const float*>(nullptr), xrec::pooling::sum, c.out.data());
        t.stop();
        st.SetIterationTime(t.milliseconds() * 1e-3);
    }
    set_counters(st, c.gathered_bytes());
}

template <int MinBlocks, int Unroll>
struct step_policy : xrec::embedding_bag_cuda_policy {
    static constexpr int update_min_blocks = MinBlocks;
    static constexpr int update_unroll = Unroll;
};

template <class P = xrec::embedding_bag_cuda_policy>
void embedding_bag_adagrad(benchmark::State& st, std::int64_t rows, std::int64_t dim, bool zipf) {
    bag_case& c = get_case(rows, dim, zipf);
    xrec::device::workspace ws;
    xrec::device::event_timer t;
    kernels::rowwise_adagrad_step o;
    for (auto _ : st) {
        t.start();
        kernels::embedding_bag_adagrad<float, P>(cuda{}, c.table.data(), c.accum.data(), rows, dim, c.ids.data(),
                                       c.offsets.data(), c.batch, c.batch * c.per_bag,
                                       static_cast<const float*>(nullptr), xrec::pooling::sum,
                                       static_cast<const std::int32_t*>(nullptr), c.gy.data(), o, ws);
        t.stop();
        st.SetIterationTime(t.milliseconds() * 1e-3);
    }
    set_counters(st, c.gathered_bytes());
}

// XREC_BENCH_MIN_TIME=S overrides every case's minimum time (short runs under a profiler).
double min_time(double dflt) {
    const char* e = std::getenv("XREC_BENCH_MIN_TIME");
    return e ? std::atof(e) : dflt;
}

// The forward's tuning sweep (block threads x rows in flight per thread) at D = 64.
template <int Threads, int Unroll, bool Hint = false>
void register_sweep(bool zipf = false) {
    const std::string name = std::string("sweep/embedding_bag_fwd/D64/") + (zipf ? "zipf" : "uniform") + "/threads" +
                             std::to_string(Threads) + "/unroll" + std::to_string(Unroll) + (Hint ? "/l2hint" : "");
    benchmark::RegisterBenchmark(name.c_str(),
                                 [zipf](benchmark::State& st) {
                                     embedding_bag_fwd<fwd_policy<Threads, Unroll, Hint>>(st, 10'000'000, 64, zipf);
                                 })
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(min_time(0.3));
}

// The fused backward's sweep: register cap (min resident blocks) x rows in flight.
template <int MinBlocks, int Unroll>
void register_step_sweep(bool zipf) {
    const std::string name = std::string("sweep/embedding_bag_adagrad/D64/") + (zipf ? "zipf" : "uniform") +
                             "/minblocks" + std::to_string(MinBlocks) + "/unroll" + std::to_string(Unroll);
    benchmark::RegisterBenchmark(name.c_str(),
                                 [zipf](benchmark::State& st) {
                                     embedding_bag_adagrad<step_policy<MinBlocks, Unroll>>(st, 10'000'000, 64, zipf);
                                 })
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(min_time(0.3));
}

void register_all() {
    auto* r = benchmark::RegisterBenchmark("device/read_bandwidth", read_bandwidth);
    r->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(min_time(0.5));
    benchmark::RegisterBenchmark("device/copy_bandwidth", copy_bandwidth)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(min_time(0.5));
    for (bool zipf : {false, true})
        for (std::int64_t dim : {32, 64, 128}) {
            const std::string tail = "/rows10M/D" + std::to_string(dim) + "/ids32/b65536/" + (zipf ? "zipf" : "uniform");
            benchmark::RegisterBenchmark(("embedding_bag_fwd" + tail).c_str(),
                                         [=](benchmark::State& st) { embedding_bag_fwd<>(st, 10'000'000, dim, zipf); })
                ->UseManualTime()
                ->Unit(benchmark::kMicrosecond)
                ->MinTime(min_time(0.5));
            benchmark::RegisterBenchmark(("embedding_bag_adagrad" + tail).c_str(), [=](benchmark::State& st) {
                embedding_bag_adagrad<>(st, 10'000'000, dim, zipf);
            })
                ->UseManualTime()
                ->Unit(benchmark::kMicrosecond)
                ->MinTime(min_time(0.5));
        }
    register_sweep<128, 4>();
    register_sweep<256, 2>();
    register_sweep<256, 4>();
    register_sweep<256, 8>();
    register_sweep<256, 16>();
    register_sweep<512, 4>();
    register_sweep<256, 4, true>();
    register_sweep<256, 4, true>(true);
    register_sweep<256, 4>(true);
    for (bool zipf : {false, true}) {
        register_step_sweep<1, 4>(zipf);
        register_step_sweep<3, 2>(zipf);
        register_step_sweep<4, 4>(zipf);
        register_step_sweep<4, 2>(zipf);
        register_step_sweep<6, 2>(zipf);
        register_step_sweep<8, 1>(zipf);
    }
}

// Measures the read bandwidth once up front so every case can report its fraction of it.
void measure_read_bw() {
    const std::int64_t bytes = std::int64_t{4} << 30;
    xrec::buffer<float, cuda> x(bytes / 4);
    kernels::fill(cuda{}, x.size(), 1.f, x.data());
    int sms = 0;
    XREC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    xrec::buffer<float, cuda> partial(sms * 8);
    xrec::device::event_timer t;
    std::vector<float> ms;
    for (int i = 0; i < 12; ++i) {
        t.start();
        read_kernel<<<sms * 8, 512>>>(reinterpret_cast<const float4*>(x.data()), bytes / 16, partial.data());
        t.stop();
        ms.push_back(t.milliseconds());
    }
    std::sort(ms.begin() + 2, ms.end());
    g_read_bw = static_cast<double>(bytes) / (ms[2 + (ms.size() - 2) / 2] * 1e-3);
}

}  // namespace

int main(int argc, char** argv) {
    if (xrec::device::count() == 0) {
        std::printf("xrec_cuda_bench: no CUDA device\n");
        return 77;
    }
    measure_read_bw();
    register_all();
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
