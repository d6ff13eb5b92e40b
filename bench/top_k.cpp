// top-K retrieval cases (serve/top_k.hpp): one query (or a batch of queries) against an
// item table of n rows x d fp32 values (standard normal, fixed seed), the k best by inner
// product, nothing excluded.
//  - topk_infer/n<n>/d<d>/k<k>: one query, serve::top_k on the calling thread (the peer:
//    torch.topk(items @ q, k) on one thread);
//  - topk_batch_infer/q<m>/n<n>/d<d>/k<k>: m queries, serve::top_k_batch on the calling
//    thread (groups of 16 queries share each item block; the peer: torch.topk(Q @ items^T, k,
//    dim=1)).
// Cost: 2 n d flops per query; bytes = the item table read once per call (our kernel never
// writes the n scores; the peer writes and re-reads them).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "xrec/serve/top_k.hpp"

namespace xrec_bench {
namespace {

case_cost topk_cost(std::int64_t m, std::int64_t n, std::int64_t d) {
    case_cost c;
    c.items = static_cast<double>(m);
    c.threads = 1;
    c.flops = 2.0 * static_cast<double>(m * n * d);
    c.bytes = sizeof(T) * static_cast<double>(n * d + m * d);
    c.ws_bytes = c.bytes;
    return c;
}

void add_topk(std::int64_t n, std::int64_t d, std::int64_t k) {
    const std::string dims = "/n" + std::to_string(n) + "/d" + std::to_string(d) + "/k" + std::to_string(k);
    add_case("topk_infer" + dims, topk_cost(1, n, d), [=]() -> step_fn {
        struct fixture {
            std::vector<T> items, q;
            std::vector<std::int32_t> ids;
            std::vector<T> scores;
            xrec::serve::top_k_workspace ws;
        };
        auto f = std::make_shared<fixture>();
        f->items = random_input(n * d, 11);
        f->q = random_input(d, 12);
        f->ids.resize(static_cast<std::size_t>(k));
        f->scores.resize(static_cast<std::size_t>(k));
        return [f, n, d, k] {
            xrec::serve::top_k<B>(f->q, f->items.data(), n, d, k, {}, f->ids, f->scores, f->ws);
            benchmark::DoNotOptimize(f->ids.data());
            benchmark::ClobberMemory();
        };
    });
}

void add_topk_batch(std::int64_t m, std::int64_t n, std::int64_t d, std::int64_t k) {
    const std::string dims =
        "/q" + std::to_string(m) + "/n" + std::to_string(n) + "/d" + std::to_string(d) + "/k" + std::to_string(k);
    add_case("topk_batch_infer" + dims, topk_cost(m, n, d), [=]() -> step_fn {
        struct fixture {
            std::vector<T> items, q;
            std::vector<std::int32_t> ids;
            std::vector<T> scores;
            xrec::serve::top_k_workspace ws;
        };
        auto f = std::make_shared<fixture>();
        f->items = random_input(n * d, 11);
        f->q = random_input(m * d, 13);
        f->ids.resize(static_cast<std::size_t>(m * k));
        f->scores.resize(static_cast<std::size_t>(m * k));
        return [f, m, n, d, k] {
            xrec::serve::top_k_batch<B>(f->q.data(), m, f->items.data(), n, d, k, {}, {}, f->ids.data(), f->scores.data(),
                                        f->ws);
            benchmark::DoNotOptimize(f->ids.data());
            benchmark::ClobberMemory();
        };
    });
}

}  // namespace

void register_top_k() {
    for (std::int64_t k : {10, 100}) add_topk(1000000, 64, k);
    add_topk_batch(16, 1000000, 64, 10);
}

}  // namespace xrec_bench
