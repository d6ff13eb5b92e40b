// SASRec serving cases (models/sasrec.hpp + serve/top_k.hpp): one user's request on an
// infer_ctx, the model of the sparse Amazon sets (n_items 12101 = Beauty's catalogue, D 64,
// T 50, 2 pre-norm blocks, 1 head).
//  - sasrec_infer/n<n>/d<D>/t<T>/b<blocks>/h<heads>/len<L>/k<k>: the user's last L items
//    (L <= T; shorter histories are left-padded, and sasrec skips the all-padding columns)
//    -> input row -> state (the forward over the sequence, H at the last position) ->
//    serve::top_k of the state against item_embeddings() (every item scored, the k best,
//    nothing excluded). The peer: the same modules in eval mode under inference_mode,
//    torch.topk(E @ h, k).
//  - sasrec_fwd_infer/...: the same without scoring: the forward alone.
// The request allocates nothing in steady state (ctx.reset() rewinds the infer_ctx arena,
// the top_k_workspace is reused): tests/alloc/test_zero_alloc_serve.cpp counts it.
//
// Weights: both sides fill every parameter from its name with the same formula
// (fill_weights below, bench/peers/sasrec_peer.py's fill_weights), so ours and the peer run
// on bit-identical weights without a file between the two processes.
//
// Cost, per request (dense counts, the causal half of attention included): per block
// 2 w D (3D) (QKV) + 2 * 2 w^2 D (scores, weighted sum) + 2 w D D (output projection) +
// 2 * 2 w D D (feed-forward of width D), w = L; scoring 2 n D. Bytes: the block weights,
// the L gathered item rows and positions, and for the full case the item table once.
//
// Measured (python3 bench/run.py --threads 1 --filter 'topk_|sasrec' --repeat 5, four runs,
// 2-core AMD EPYC dev VM, AVX-512, torch 2.15 on one thread, 2026-11-23, load average 9-12 on
// 2 CPUs: medians of the runs' medians, see bench/RESULTS.md):
//   sasrec_infer len50      ours 153 us, torch 601 us: 3.85x
//   sasrec_infer len9       ours 95 us,  torch 463 us: 4.83x
//   sasrec_fwd_infer len50  ours 97 us,  torch 434 us: 4.55x
// Thread CPU time: forward len50 ~61 us vs ~290 us; request len50 ~100 us vs ~390 us.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/models/sasrec.hpp"
#include "xrec/serve/top_k.hpp"

namespace xrec_bench {
namespace {

// The deterministic weight of element i of the parameter `name` (shape [r, c] or [r]):
//   z = splitmix64_finalize(fnv1a64(name) + (i + 1) * 0x9E3779B97F4A7C15), u = 2 (z >> 40) / 2^24 - 1 in [-1, 1)
//   2-D: u * sqrt(6 / (r + c)) (Xavier-uniform's bound); 1-D named *weight: 1 + 0.1 u; other 1-D: 0.1 u
// computed in double and rounded once to float, so Python's numpy gives the same bits.
std::uint64_t fnv1a64(const std::string& s) {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char c : s) {
        h ^= c;
        h *= 0x100000001b3ULL;
    }
    return h;
}

std::uint64_t splitmix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void fill_weights(xrec::param_store<T, B>& store) {
    for (auto& t : store.named_tensors()) {
        const std::uint64_t h = fnv1a64(t.name);
        const std::int64_t n = t.s.numel();
        const bool matrix = t.s.rank == 2;
        const bool scale = !matrix && t.name.size() >= 6 && t.name.compare(t.name.size() - 6, 6, "weight") == 0;
        const double bound = matrix ? std::sqrt(6.0 / static_cast<double>(t.s[0] + t.s[1])) : 0.1;
        for (std::int64_t i = 0; i < n; ++i) {
            const std::uint64_t z = splitmix64(h + static_cast<std::uint64_t>(i + 1) * 0x9e3779b97f4a7c15ULL);
            const double u = static_cast<double>(z >> 40) * 0x1p-23 - 1.0;
            t.data[i] = static_cast<T>(scale ? 1.0 + u * bound : u * bound);
        }
    }
}

// The user's history: L item ids, oldest first (a fixed pseudo-random walk over the catalogue).
std::vector<std::int32_t> history(std::int64_t len, std::int64_t n) {
    std::vector<std::int32_t> h(static_cast<std::size_t>(len));
    for (std::int64_t i = 0; i < len; ++i) h[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919 + 13) % n);
    return h;
}

case_cost sasrec_cost(std::int64_t n, std::int64_t d, std::int64_t blocks, std::int64_t len, bool score) {
    const double D = static_cast<double>(d), w = static_cast<double>(len), N = static_cast<double>(n);
    case_cost c;
    c.items = 1;
    c.threads = 1;
    const double per_block = 2 * w * D * 3 * D + 4 * w * w * D + 2 * w * D * D + 4 * w * D * D;
    c.flops = static_cast<double>(blocks) * per_block + (score ? 2 * N * D : 0);
    const double block_params = 6 * D * D + 3 * D + D + 2 * D + 4 * D;  // in_proj, out_proj, ff, biases, 2 norms
    c.bytes = sizeof(T) * (static_cast<double>(blocks) * block_params + 2 * w * D + 2 * D + (score ? N * D : 0));
    c.ws_bytes = c.bytes;
    return c;
}

void add_sasrec(std::int64_t n, std::int64_t d, std::int64_t t, std::int64_t blocks, std::int64_t heads, std::int64_t len,
                std::int64_t k, bool score) {
    const std::string dims = "/n" + std::to_string(n) + "/d" + std::to_string(d) + "/t" + std::to_string(t) + "/b" +
                             std::to_string(blocks) + "/h" + std::to_string(heads) + "/len" + std::to_string(len);
    const std::string name = score ? "sasrec_infer" + dims + "/k" + std::to_string(k) : "sasrec_fwd_infer" + dims;
    add_case(name, sasrec_cost(n, d, blocks, len, score), [=]() -> step_fn {
        struct fixture {
            xrec::param_store<T, B> store{1};
            std::unique_ptr<xrec::models::sasrec<T, B>> model;
            xrec::infer_ctx<T, B> ctx;
            std::vector<std::int32_t> hist;
            std::vector<std::int64_t> row;
            std::vector<std::int32_t> ids;
            std::vector<T> scores;
            xrec::serve::top_k_workspace ws;
        };
        auto f = std::make_shared<fixture>();
        xrec::models::sasrec_options o;
        o.n_items = n;
        o.dim = d;
        o.max_len = t;
        o.blocks = blocks;
        o.heads = heads;
        f->model = std::make_unique<xrec::models::sasrec<T, B>>(f->store, o);
        fill_weights(f->store);
        f->hist = history(len, n);
        f->row.resize(static_cast<std::size_t>(t));
        f->ids.resize(static_cast<std::size_t>(k));
        f->scores.resize(static_cast<std::size_t>(k));
        return [f, n, d, k, score] {
            auto& m = *f->model;
            f->ctx.reset();
            m.input_row(std::span<const std::int32_t>(f->hist), std::span<std::int64_t>(f->row));
            const xrec::var<T> h = m.state(f->ctx, std::span<const std::int64_t>(f->row));
            if (score) {
                xrec::serve::top_k<B>(std::span<const float>(h.data, static_cast<std::size_t>(d)),
                                      m.item_embeddings().data, n, d, k, {}, f->ids, f->scores, f->ws);
                benchmark::DoNotOptimize(f->ids.data());
            } else {
                benchmark::DoNotOptimize(h.data);
            }
            benchmark::ClobberMemory();
        };
    });
}

}  // namespace

void register_sasrec() {
    // Beauty: 12101 items; a full history (T positions) and a typical one (Beauty's mean
    // sequence length is 8.9: 198502 interactions over 22363 users).
    add_sasrec(12101, 64, 50, 2, 1, 50, 10, true);
    add_sasrec(12101, 64, 50, 2, 1, 9, 10, true);
    add_sasrec(12101, 64, 50, 2, 1, 50, 10, false);
}

}  // namespace xrec_bench
