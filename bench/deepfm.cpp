// The performance issue's headline model on the cpu backend: a Criteo-shaped DeepFM, 26
// sparse fields of 100,000 rows each (one table over the global id space, as the model holds
// it), embedding 16, 13 dense features, MLP 400-400-400, output 1. Cases:
//  - deepfm_infer/b<batch>: models::deepfm forward on an infer_ctx from a host batch (ids
//    checked, fields embedded, FM, MLP), as a ranking engine scores a request; one thread.
//  - deepfm_train/b<batch>: one trainer::step (forward, BCE, backward, the NaN/Inf checks,
//    Adam on the dense parameters, lazy Adam on the touched embedding rows -- the update of
//    PyTorch's SparseAdam), on opts().threads threads, cycling over four batches.
// The peer (bench/peers/torch_peer.py) runs the same model in PyTorch eager: one
// nn.Embedding(sparse=True) over the global ids, SparseAdam + Adam.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/train/trainer.hpp"

namespace xrec_bench {
namespace {

constexpr std::int64_t fields = 26, rows_per_field = 100'000, dim = 16, dense = 13;
const std::vector<std::int64_t> hidden = {400, 400, 400};

using model = xrec::models::deepfm<T, B>;

xrec::feature_layout criteo_layout() {
    // Names appended piecewise: GCC 12 flags "C" + std::to_string(...) here with a false
    // -Wrestrict.
    auto name = [](char c, std::int64_t i) {
        std::string n(1, c);
        n.append(std::to_string(i + 1));
        return n;
    };
    xrec::feature_layout l;
    for (std::int64_t f = 0; f < fields; ++f) {
        l.tables.push_back({name('C', f), rows_per_field});
        l.sparse.push_back({name('C', f), f});
    }
    for (std::int64_t d = 0; d < dense; ++d) l.dense.push_back(name('I', d));
    l.finish();
    return l;
}

// Uniform ids per field, dense values in [0, 1), labels 0/1 at random.
struct host_batch {
    std::int64_t rows = 0;
    std::vector<std::int64_t> sparse;
    std::vector<T> dense_values, labels;
    host_batch(const xrec::feature_layout& l, std::int64_t n, std::uint64_t seed) : rows(n) {
        xrec::rng_stream rs{xrec::philox{seed}, 7};
        std::uint64_t k = 0;
        sparse.resize(static_cast<std::size_t>(n * fields));
        dense_values.resize(static_cast<std::size_t>(n * dense));
        labels.resize(static_cast<std::size_t>(n));
        for (std::int64_t r = 0; r < n; ++r) {
            for (std::int64_t f = 0; f < fields; ++f) {
                const auto& t = l.tables[static_cast<std::size_t>(f)];
                sparse[static_cast<std::size_t>(r * fields + f)] =
                    t.offset + static_cast<std::int64_t>(rs.below(k++, static_cast<std::uint64_t>(t.rows)));
            }
            for (std::int64_t d = 0; d < dense; ++d)
                dense_values[static_cast<std::size_t>(r * dense + d)] = rs.uniform_f(k++);
            labels[static_cast<std::size_t>(r)] = rs.uniform_f(k++) < 0.25f ? T(1) : T(0);
        }
    }
    xrec::batch<T> view() const {
        xrec::batch<T> b;
        b.rows = rows;
        b.sparse = {sparse.data(), xrec::shape{rows, fields}};
        b.dense = {dense_values.data(), xrec::shape{rows, dense}};
        b.labels = {labels.data(), xrec::shape{rows, 1}};
        return b;
    }
};

// Per row: the MLP's multiply-adds (429-400-400-400-1), the FM (F D adds and multiplies) and
// the 2 x 26 rows gathered; training adds the backward GEMMs (dX and dW: 2x the forward).
case_cost deepfm_cost(std::int64_t batch, bool train, int threads) {
    double mac = 0, params = 0, in = static_cast<double>(fields * dim + dense);
    for (auto h : hidden) {
        mac += in * static_cast<double>(h);
        params += in * static_cast<double>(h) + static_cast<double>(h);
        in = static_cast<double>(h);
    }
    mac += in;
    params += in;
    const double b = static_cast<double>(batch);
    const double gathered = b * static_cast<double>(fields) * (dim + 1) * sizeof(T);
    case_cost c;
    c.items = b;
    c.threads = threads;
    c.flops = (train ? 3 : 1) * 2 * mac * b + 4 * b * static_cast<double>(fields * dim);
    c.bytes = gathered * (train ? 3 : 1) + sizeof(T) * params * (train ? 4 : 1);
    // The working set whose read bandwidth bounds the step: inference streams the weights
    // (the roofline: about 2 MB at batch 1, from wherever a buffer that size lives)
    // plus the rows it gathers; training ranges over the whole tables and their state.
    c.ws_bytes = train ? sizeof(T) * static_cast<double>(fields * rows_per_field * (dim + 1)) * 3 + sizeof(T) * params
                       : sizeof(T) * params + gathered;
    return c;
}

const xrec::models::deepfm_options model_options() {
    xrec::models::deepfm_options o;
    o.dim = dim;
    o.dnn.hidden = hidden;
    return o;
}

void add_infer(std::int64_t batch) {
    add_case("deepfm_infer/b" + std::to_string(batch), deepfm_cost(batch, false, 1), [=]() -> step_fn {
        struct fixture {
            xrec::feature_layout layout = criteo_layout();
            xrec::param_store<T, B> store{1};
            model m;
            host_batch h;
            xrec::infer_ctx<T, B> ctx;
            explicit fixture(std::int64_t n) : m(store, layout, model_options()), h(layout, n, 11) {}
        };
        auto f = std::make_shared<fixture>(batch);
        return [f] {
            f->ctx.reset();
            auto y = f->m(f->ctx, f->h.view());
            benchmark::DoNotOptimize(y.data);
            benchmark::ClobberMemory();
        };
    });
}

void add_train(std::int64_t batch) {
    const int threads = opts().threads;
    add_case("deepfm_train/b" + std::to_string(batch), deepfm_cost(batch, true, threads), [=]() -> step_fn {
        struct fixture {
            xrec::feature_layout layout = criteo_layout();
            xrec::param_store<T, B> store{1};
            model m;
            std::vector<host_batch> batches;
            xrec::train::trainer<model, T, B> tr;
            std::size_t next = 0;
            static xrec::train::trainer_options options(std::int64_t n, int threads) {
                xrec::train::trainer_options o;
                o.batch_size = n;
                o.dense_lr = 1e-3;
                o.sparse = xrec::train::sparse_optimizer::lazy_adam;
                o.sparse_lr = 1e-3;
                o.threads = threads;
                o.progress = false;
                return o;
            }
            fixture(std::int64_t n, int threads)
                : m(store, layout, model_options()), tr(m, store, options(n, threads)) {
                for (std::uint64_t s = 0; s < 4; ++s) batches.emplace_back(layout, n, 100 + s);
            }
        };
        auto f = std::make_shared<fixture>(batch, threads);
        return [f] {
            const double loss = f->tr.step(f->batches[f->next++ % f->batches.size()].view(), 1);
            benchmark::DoNotOptimize(loss);
        };
    });
}

}  // namespace

void register_deepfm() {
    add_infer(1);
    add_infer(256);
    add_train(4096);
}

}  // namespace xrec_bench
