// xrec_cuda_deepfm: the performance issue's headline model on the GPU, with the model,
// trainer and optimizer code of the CPU (only the backend tag differs). A Criteo-shaped
// DeepFM: 26 sparse fields of 100,000 rows each, embedding 16, 13 dense features, MLP
// 400-400-400, output 1; Adam on the dense parameters and row-wise Adagrad on the tables.
// Prints one JSON line per case, the same names as bench/cuda/deepfm_torch.py:
//   deepfm/train/b65536     trainer::step (forward, BCE, backward, the NaN/Inf checks, both
//                           optimizers, the loss read back) on batches staged in device
//                           memory (batch::memory = backend, as the PyTorch peer keeps its
//                           batches); samples/s from the median step time
//   deepfm/train_host_batches/b65536  the same from host batches (uploaded by the ops, ids
//                           checked on the host)
//   deepfm/train_tf32/b65536  device batches with TF32 GEMMs (device::set_gemm_tf32)
//   deepfm/train_phases/b65536  forward + loss and backward alone, each synchronised
//   deepfm/infer/b4096      infer_ctx forward to logits from a device batch, synchronised
//   deepfm/infer_host_batch/b4096, deepfm/infer_tf32/b4096  from a host batch; with TF32
//   deepfm/infer/b1         batch 1 from host memory (a request; median and p99 us)
//   deepfm/infer_graph/b1   batch 1 through device::graph_predictor: one CUDA graph replay
//                           (inputs copied into its pinned staging, logits back), checked
//                           against the plain forward first
// Usage: xrec_cuda_deepfm [--steps N] [--no-infer] (exit 77 without a GPU).
#include "xrec/cuda/kernels.cuh"
#include "xrec/cuda/memory.cuh"
#include "xrec/cuda/graph.cuh"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "xrec/backend/tags.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/train/trainer.hpp"

namespace {

using gpu_b = xrec::cuda;
using model_gpu = xrec::models::deepfm<float, gpu_b>;

xrec::feature_layout criteo_layout() {
    xrec::feature_layout l;
    for (int f = 0; f < 26; ++f) {
        l.tables.push_back({"C" + std::to_string(f + 1), 100'000});
        l.sparse.push_back({"C" + std::to_string(f + 1), f});
    }
    for (int d = 0; d < 13; ++d) l.dense.push_back("I" + std::to_string(d + 1));
    l.finish();
    return l;
}

// rows of uniform ids (per table), dense values in [0, 1) and labels from a fixed logistic
// rule of a few ids, so the loss moves like a real one.
struct host_batch {
    std::vector<std::int64_t> sparse;
    std::vector<float> dense, labels;
    xrec::batch<float> view(std::int64_t rows) const {
        xrec::batch<float> b;
        b.rows = rows;
        b.sparse = {sparse.data(), xrec::shape{rows, 26}};
        b.dense = {dense.data(), xrec::shape{rows, 13}};
        b.labels = {labels.data(), xrec::shape{rows, 1}};
        return b;
    }
};
// The same batch staged in device memory (as PyTorch's peer keeps its batches).
struct device_batch {
    xrec::buffer<std::int64_t, gpu_b> sparse;
    xrec::buffer<float, gpu_b> dense, labels;
    std::int64_t rows = 0;
    explicit device_batch(const host_batch& h)
        : sparse(static_cast<std::int64_t>(h.sparse.size())), dense(static_cast<std::int64_t>(h.dense.size())),
          labels(static_cast<std::int64_t>(h.labels.size())), rows(static_cast<std::int64_t>(h.labels.size())) {
        xrec::device::upload(sparse.data(), h.sparse.data(), sparse.size());
        xrec::device::upload(dense.data(), h.dense.data(), dense.size());
        xrec::device::upload(labels.data(), h.labels.data(), labels.size());
    }
    xrec::batch<float> view() const {
        xrec::batch<float> b;
        b.rows = rows;
        b.sparse = {sparse.data(), xrec::shape{rows, 26}};
        b.dense = {dense.data(), xrec::shape{rows, 13}};
        b.labels = {labels.data(), xrec::shape{rows, 1}};
        b.memory = xrec::memory_space::backend;
        return b;
    }
};

host_batch make_batch(const xrec::feature_layout& l, std::int64_t rows, std::uint64_t seed) {
    xrec::rng_stream rs{xrec::philox{seed}, 3};
    std::uint64_t k = 0;
    host_batch h;
    h.sparse.resize(static_cast<std::size_t>(rows * 26));
    h.dense.resize(static_cast<std::size_t>(rows * 13));
    h.labels.resize(static_cast<std::size_t>(rows));
    for (std::int64_t r = 0; r < rows; ++r) {
        double z = -1;
        for (int f = 0; f < 26; ++f) {
            const auto& t = l.tables[static_cast<std::size_t>(f)];
            const auto local = static_cast<std::int64_t>(rs.uniform_f(k++) * static_cast<float>(t.rows)) % t.rows;
            h.sparse[static_cast<std::size_t>(r * 26 + f)] = t.offset + local;
            if (f < 3) z += (local % 7) * 0.2;
        }
        for (int d = 0; d < 13; ++d) h.dense[static_cast<std::size_t>(r * 13 + d)] = rs.uniform_f(k++);
        h.labels[static_cast<std::size_t>(r)] = rs.uniform_f(k++) < 1 / (1 + std::exp(-z)) ? 1.f : 0.f;
    }
    return h;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}
double pct(std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
    if (xrec::device::count() == 0) {
        std::printf("xrec_cuda_deepfm: no CUDA device\n");
        return 77;
    }
    int steps = 30, infer_reps = 1;  // infer_reps: 0 skips inference (profiling the training step)
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = std::atoi(argv[++i]);
        if (std::strcmp(argv[i], "--no-infer") == 0) infer_reps = 0;
    }
    try {
        const auto layout = criteo_layout();
        const xrec::models::deepfm_options mo{.dim = 16, .dnn = {.hidden = {400, 400, 400}}};
        xrec::param_store<float, gpu_b> store(1);
        const model_gpu m(store, layout, mo);

        // Training at batch 65,536: a few batches cycled, warm-up steps first.
        const std::int64_t tb = 65536;
        std::vector<host_batch> train;
        for (int i = 0; i < 4; ++i) train.push_back(make_batch(layout, tb, 100 + static_cast<std::uint64_t>(i)));
        xrec::train::trainer_options to;
        to.batch_size = tb;
        to.dense_lr = 1e-3;
        to.sparse = xrec::train::sparse_optimizer::rowwise_adagrad;
        to.sparse_lr = 0.05;
        to.progress = false;
        to.threads = 1;
        xrec::train::trainer<model_gpu, float, gpu_b> tr(m, store, to);
        std::vector<device_batch> dtrain;
        for (const auto& h : train) dtrain.emplace_back(h);
        // Two input forms: batches staged in device memory (the PyTorch peer's setting) and
        // host batches that each step uploads (ids checked on the host first).
        // Float GEMMs (the default) from device and from host batches, then TF32 tensor-core
        // GEMMs (device::set_gemm_tf32; PyTorch's allow_tf32) from device batches.
        for (const auto& [on_device, tf32] : {std::pair{true, false}, std::pair{false, false}, std::pair{true, true}}) {
            xrec::device::set_gemm_tf32(tf32);
            std::vector<double> ts;
            double loss = 0;
            for (int s = 0; s < steps + 5; ++s) {
                const auto k = static_cast<std::size_t>(s) % train.size();
                const auto b = on_device ? dtrain[k].view() : train[k].view(tb);
                xrec::device::synchronize();
                const auto t0 = std::chrono::steady_clock::now();
                loss = tr.step(b, 1);
                xrec::device::synchronize();
                const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                if (s >= 5) ts.push_back(dt);
            }
            const double tmed = median(ts);
            std::printf("{\"name\": \"deepfm/train%s/b65536\", \"ms\": %.4f, \"samples_per_s\": %.0f, \"loss\": %.5f}\n",
                        !on_device ? "_host_batches" : tf32 ? "_tf32" : "", tmed * 1e3,
                        static_cast<double>(tb) / tmed, loss);
            std::fflush(stdout);
        }

        xrec::device::set_gemm_tf32(false);
        // Where the step's time goes: forward + loss, then backward, each synchronised.
        {
            auto& ctx = tr.context();
            std::vector<double> tf, tb2;
            for (int s = 0; s < 12; ++s) {
                const auto b = dtrain[static_cast<std::size_t>(s) % train.size()].view();
                xrec::device::synchronize();
                const auto t0 = std::chrono::steady_clock::now();
                auto logits = m(ctx, b);
                auto l = xrec::models::model_loss(m, ctx, logits, b);
                xrec::device::synchronize();
                const auto t1 = std::chrono::steady_clock::now();
                ctx.backward(l);
                xrec::device::synchronize();
                const auto t2 = std::chrono::steady_clock::now();
                store.zero_grad();
                ctx.reset();
                if (s >= 2) {
                    tf.push_back(std::chrono::duration<double>(t1 - t0).count());
                    tb2.push_back(std::chrono::duration<double>(t2 - t1).count());
                }
            }
            std::printf("{\"name\": \"deepfm/train_phases/b65536\", \"forward_loss_ms\": %.4f, \"backward_ms\": %.4f}\n",
                        median(tf) * 1e3, median(tb2) * 1e3);
            std::fflush(stdout);
        }
        if (infer_reps == 0) return 0;
        // Inference: infer_ctx forward, logits synchronised.
        // Batch 4,096 from device memory (the peer's setting) and from host memory; batch 1
        // from host memory (a request).
        struct infer_case {
            std::int64_t rows;
            bool on_device, tf32;
        };
        for (const auto& [ib, on_device, tf32] : {infer_case{4096, true, false}, infer_case{4096, false, false},
                                                  infer_case{4096, true, true}, infer_case{1, false, false}}) {
            xrec::device::set_gemm_tf32(tf32);
            const auto h = make_batch(layout, ib, 7);
            const device_batch hd(h);
            const auto b = on_device ? hd.view() : h.view(ib);
            xrec::infer_ctx<float, gpu_b> ctx;
            std::vector<double> t;
            const int reps = ib == 1 ? 2000 : 200;
            for (int r = 0; r < reps + 20; ++r) {
                ctx.reset();
                const auto t0 = std::chrono::steady_clock::now();
                const auto y = m(ctx, b);
                xrec::device::synchronize();
                const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                (void)y;
                if (r >= 20) t.push_back(dt);
            }
            const double med = median(t);
            std::printf("{\"name\": \"deepfm/infer%s/b%lld\", \"ms\": %.4f, \"samples_per_s\": %.0f, \"p99_us\": %.1f}\n",
                        !on_device && ib > 1 ? "_host_batch" : tf32 ? "_tf32" : "", static_cast<long long>(ib), med * 1e3,
                        static_cast<double>(ib) / med, pct(t, 0.99) * 1e6);
            std::fflush(stdout);
        }
        // Batch 1 as one graph replay; its logits must equal the plain forward's.
        {
            xrec::device::graph_predictor<model_gpu> gp(m, layout, 1);
            double worst = 0;
            for (int i = 0; i < 50; ++i) {
                const auto h = make_batch(layout, 1, 1000 + static_cast<std::uint64_t>(i));
                const auto b = h.view(1);
                xrec::infer_ctx<float, gpu_b> ctx;
                const auto y = m(ctx, b);
                const float want = xrec::device::to_host(y.data, 1)[0];
                const float got = gp.predict(b)[0];
                worst = std::max(worst, static_cast<double>(std::fabs(got - want)));
            }
            std::printf("graph_predictor b1: max |graph - forward| over 50 requests %.3g\n", worst);
            if (worst > 1e-6) {
                std::printf("xrec_cuda_deepfm: graph replay disagrees with the forward\n");
                return 1;
            }
            const auto h = make_batch(layout, 1, 7);
            const auto b = h.view(1);
            std::vector<double> t;
            for (int r = 0; r < 5000 + 100; ++r) {
                const auto t0 = std::chrono::steady_clock::now();
                const float y = gp.predict(b)[0];
                const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                (void)y;
                if (r >= 100) t.push_back(dt);
            }
            const double med = median(t);
            std::printf("{\"name\": \"deepfm/infer_graph/b1\", \"ms\": %.4f, \"samples_per_s\": %.0f, \"p99_us\": %.1f}\n",
                        med * 1e3, 1 / med, pct(t, 0.99) * 1e6);
        }
    } catch (const std::exception& e) {
        std::printf("xrec_cuda_deepfm: %s\n", e.what());
        return 1;
    }
    return 0;
}
