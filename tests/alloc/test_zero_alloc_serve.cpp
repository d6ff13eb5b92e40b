// Steady-state serving allocates nothing: serve::top_k (one query on the caller, one query
// over a thread pool, top_k_batch on the caller and over a pool, top_k_of_scores) with a
// reused top_k_workspace, and a sasrec request (forward on an infer_ctx, then top_k over its
// item embeddings: the path bench/sasrec.cpp times). The counter is process-wide, so the
// pool workers' allocations would be counted too. Each case first shows that a cold
// workspace does allocate on the same call, so the zero that follows is the workspace's
// doing and not a blind counter.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "alloc_counter.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/parallel.hpp"
#include "xrec/models/sasrec.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/models/din.hpp"
#include "xrec/serve/predictor.hpp"
#include "xrec/serve/top_k.hpp"

namespace {

using B = xrec::cpu<>;

// n x d items with distinct-ish scores (a fixed integer hash mapped to [-1, 1)).
std::vector<float> make_items(std::int64_t n, std::int64_t d, std::uint32_t salt) {
    std::vector<float> v(static_cast<std::size_t>(n * d));
    std::uint32_t x = 2463534242u ^ salt;
    for (auto& e : v) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        e = static_cast<float>(x >> 8) * (2.0f / 16777216.0f) - 1.0f;
    }
    return v;
}

// Every 7th id below n: a sorted exclusion list.
std::vector<std::int32_t> every_7th(std::int64_t n) {
    std::vector<std::int32_t> ex;
    for (std::int32_t i = 3; i < n; i += 7) ex.push_back(i);
    return ex;
}

}  // namespace

TEST_CASE("serve::top_k with a reused workspace performs zero heap allocations (one query, caller and pool)") {
    const std::int64_t n = 100003, d = 40;  // d not a multiple of the SIMD width: the tail step too
    const auto items = make_items(n, d, 1);
    const auto queries = make_items(64, d, 2);
    const auto ex = every_7th(n);
    std::vector<std::int32_t> ids(100);
    std::vector<float> scores(100);
    xrec::thread_pool pool(3);  // n >= 2^16: the pooled path splits the items over 3 threads

    for (xrec::thread_pool* p : {static_cast<xrec::thread_pool*>(nullptr), &pool}) {
        CAPTURE(p != nullptr);
        xrec::serve::top_k_workspace ws;
        auto call = [&](int i, std::int64_t k) {
            const std::span<const float> q(queries.data() + (i % 64) * d, static_cast<std::size_t>(d));
            const std::span<const std::int32_t> exclude = i % 2 ? std::span<const std::int32_t>(ex) : std::span<const std::int32_t>();
            return xrec::serve::top_k<B>(q, items.data(), n, d, k, exclude, ids, i % 3 ? std::span<float>(scores) : std::span<float>(),
                                         ws, p);
        };
        alloc_counter::start();
        call(0, 100);  // the largest k sizes the workspace (and the pool's merge buffer)
        CHECK(alloc_counter::stop() >= 1);
        alloc_counter::start();
        std::int64_t kept = 0;
        for (int i = 0; i < 60; ++i) kept += call(i, 1 + (i * 37) % 100);
        const std::size_t allocs = alloc_counter::stop();
        CHECK(kept > 0);
        CHECK(allocs == 0);
    }
}

TEST_CASE("serve::top_k_batch and top_k_of_scores with a reused workspace perform zero heap allocations") {
    const std::int64_t n = 20011, d = 64, m = 37;  // m not a multiple of the group of 16
    const auto items = make_items(n, d, 3);
    const auto queries = make_items(m, d, 4);
    // Query j excludes every 7th id from j on: CSR offsets into one id list.
    std::vector<std::int64_t> off{0};
    std::vector<std::int32_t> ex_ids;
    for (std::int64_t j = 0; j < m; ++j) {
        for (std::int32_t i = static_cast<std::int32_t>(j); i < n; i += 7) ex_ids.push_back(i);
        off.push_back(static_cast<std::int64_t>(ex_ids.size()));
    }
    std::vector<std::int32_t> ids(static_cast<std::size_t>(m * 50));
    std::vector<float> scores(static_cast<std::size_t>(m * 50));
    xrec::thread_pool pool(2);

    for (xrec::thread_pool* p : {static_cast<xrec::thread_pool*>(nullptr), &pool}) {
        CAPTURE(p != nullptr);
        xrec::serve::top_k_workspace ws;
        auto call = [&](std::int64_t rows, std::int64_t k, bool exclude) {
            xrec::serve::top_k_batch<B>(queries.data(), rows, items.data(), n, d, k,
                                        exclude ? std::span<const std::int64_t>(off.data(), static_cast<std::size_t>(rows + 1))
                                                : std::span<const std::int64_t>(),
                                        exclude ? std::span<const std::int32_t>(ex_ids.data(), static_cast<std::size_t>(off[static_cast<std::size_t>(rows)]))
                                                : std::span<const std::int32_t>(),
                                        ids.data(), scores.data(), ws, p);
        };
        alloc_counter::start();
        call(m, 50, true);
        CHECK(alloc_counter::stop() >= 1);
        alloc_counter::start();
        for (int i = 0; i < 12; ++i) call(1 + (i * 11) % m, 1 + (i * 13) % 50, i % 2 == 0);
        const std::size_t allocs = alloc_counter::stop();
        CHECK(ids[0] >= 0);
        CHECK(allocs == 0);
    }

    // Precomputed scores (a model's full-catalogue output).
    std::vector<float> all(static_cast<std::size_t>(n));
    xrec::serve::score_all<B>(std::span<const float>(queries.data(), static_cast<std::size_t>(d)), items.data(), n, d, all);
    const auto ex = every_7th(n);
    xrec::serve::top_k_workspace ws;
    alloc_counter::start();
    xrec::serve::top_k_of_scores<B>(all, 50, ex, ids, scores, ws);
    CHECK(alloc_counter::stop() >= 1);
    alloc_counter::start();
    std::int64_t kept = 0;
    for (int i = 0; i < 20; ++i)
        kept += xrec::serve::top_k_of_scores<B>(all, 1 + i * 2, i % 2 ? std::span<const std::int32_t>(ex) : std::span<const std::int32_t>(),
                                                std::span<std::int32_t>(ids).first(50), std::span<float>(scores).first(50), ws);
    const std::size_t allocs = alloc_counter::stop();
    CHECK(kept > 0);
    CHECK(allocs == 0);
}

TEST_CASE("a sasrec request (forward on an infer_ctx, then top_k over its item embeddings) performs zero heap allocations") {
    xrec::param_store<float, B> store(7);
    xrec::models::sasrec_options o;
    o.n_items = 3001;  // Beauty's model (D 64, T 50, 2 blocks, 1 head) over a smaller catalogue
    xrec::models::sasrec<float, B> model(store, o);
    const std::int64_t d = model.dim(), n = model.n_items();
    // Histories of every length 1..60 (longer than T: the last T are kept).
    std::vector<std::int32_t> hist(60);
    for (std::size_t i = 0; i < hist.size(); ++i) hist[i] = static_cast<std::int32_t>((i * 7919 + 13) % static_cast<std::size_t>(n));
    std::vector<std::int64_t> row(static_cast<std::size_t>(model.max_len()));
    std::vector<std::int32_t> ids(10), seen(60);
    std::vector<float> scores(10);
    xrec::infer_ctx<float, B> ctx;
    xrec::serve::top_k_workspace ws;
    auto request = [&](std::size_t len) {
        ctx.reset();
        const std::span<const std::int32_t> h(hist.data(), len);
        model.input_row(h, std::span<std::int64_t>(row));
        const xrec::var<float> s = model.state(ctx, std::span<const std::int64_t>(row));
        // The user's history excluded, sorted in a reused buffer.
        std::copy(h.begin(), h.end(), seen.begin());
        std::sort(seen.begin(), seen.begin() + static_cast<std::ptrdiff_t>(len));
        const auto kept = xrec::serve::top_k<B>(std::span<const float>(s.data, static_cast<std::size_t>(d)),
                                                model.item_embeddings().data, n, d, 10,
                                                std::span<const std::int32_t>(seen.data(), len), ids, scores, ws);
        return kept + (s.data[0] == s.data[0] ? 0 : 1000);  // a NaN state would show
    };
    alloc_counter::start();
    request(60);  // the longest request sizes the arena and the workspace
    CHECK(alloc_counter::stop() >= 1);
    request(60);
    alloc_counter::start();
    std::int64_t kept = 0;
    for (std::size_t i = 0; i < 60; ++i) kept += request(1 + (i * 23) % 60);
    const std::size_t allocs = alloc_counter::stop();
    CHECK(kept == 600);
    CHECK(allocs == 0);
}

namespace {

// user, item, cate; histories of items and categories (max_len 20); one dense value.
xrec::feature_layout serve_layout() {
    xrec::feature_layout l;
    l.tables = {{"user", 500}, {"item", 2000}, {"cate", 40}};
    l.sparse = {{"user", 0}, {"item", 1}, {"cate", 2}};
    l.dense = {"price"};
    l.sequences = {{"hist_item", 1, 20, xrec::pooling::mean}, {"hist_cate", 2, 20, xrec::pooling::mean}};
    l.finish();
    return l;
}

// n rows with histories of `len` (ids inside the tables; the first row's item out of range).
struct serve_request {
    std::vector<std::int64_t> sparse, hv[2], ho[2];
    std::vector<float> dense;
    std::vector<xrec::jagged_ids> seqs;
    xrec::batch<float> b;
    serve_request(const xrec::feature_layout& l, std::int64_t n, std::int64_t len) {
        for (std::int64_t r = 0; r < n; ++r) {
            for (std::int64_t id : {(r * 7) % 500, 500 + (r * 13) % 2000, 2500 + r % 40}) sparse.push_back(id);
            dense.push_back(0.1f * static_cast<float>(r % 10));
        }
        sparse[1] = 99999;  // served as the OOV row
        for (int k = 0; k < 2; ++k) {
            ho[k].push_back(0);
            for (std::int64_t r = 0; r < n; ++r) {
                for (std::int64_t j = 0; j < len; ++j) hv[k].push_back(k == 0 ? 500 + (r + j * 31) % 2000 : 2500 + (r + j) % 40);
                ho[k].push_back(static_cast<std::int64_t>(hv[k].size()));
            }
            seqs.push_back({hv[k], ho[k]});
        }
        b.rows = n;
        b.sparse = {sparse.data(), xrec::shape{n, 3}};
        b.dense = {dense.data(), xrec::shape{n, 1}};
        b.sequences = seqs;
        (void)l;
    }
};

template <class Model>
void check_predictor_allocations(const typename Model::options& o) {
    const auto l = serve_layout();
    xrec::param_store<float, B> src(1);
    Model m(src, l, o);
    xrec::serve::predictor<Model> p(l, o, {.max_batch = 256, .max_candidates = 200, .candidate_fields = {"item", "cate"}});
    p.publish(src);
    auto s = p.make_session();  // reserves for the largest request
    const serve_request one(l, 1, 20), many(l, 256, 17), shorter(l, 3, 5);
    std::vector<std::int64_t> cand;
    for (std::int64_t c = 0; c < 200; ++c) for (std::int64_t id : {500 + (c * 17) % 2000, 2500 + c % 40}) cand.push_back(id);
    std::vector<float> out(256);
    std::size_t ok = 0;
    alloc_counter::start();
    for (int i = 0; i < 5; ++i) {
        ok += p.predict(s, one.b, out).ok();
        ok += p.predict(s, many.b, out).ok();
        ok += p.predict(s, shorter.b, out).ok();
        ok += p.rank(s, one.b, {cand.data(), xrec::shape{200, 2}}, out).ok();
        ok += p.rank(s, one.b, {cand.data(), xrec::shape{37, 2}}, out).ok();
    }
    const std::size_t allocs = alloc_counter::stop();
    CHECK(ok == 25);
    CHECK(allocs == 0);
    CHECK(s.stats().oov_ids > 0);
    // A second session made now reserves its own memory: making it allocates, serving does not.
    alloc_counter::start();
    auto s2 = p.make_session();
    CHECK(alloc_counter::stop() >= 1);
    alloc_counter::start();
    ok = p.rank(s2, one.b, {cand.data(), xrec::shape{200, 2}}, out).ok();
    CHECK(alloc_counter::stop() == 0);
    CHECK(ok == 1);
}

}  // namespace

TEST_CASE("serve::predictor: predict (batch 1, 256) and rank (200 candidates) perform zero heap allocations (deepfm, din)") {
    xrec::models::deepfm_options d;
    d.dim = 16;
    d.dnn.hidden = {64, 32};
    check_predictor_allocations<xrec::models::deepfm<float, B>>(d);
    xrec::models::din<float, B>::options n;
    n.inputs.dim = 16;
    n.pairs = {{"item", "hist_item"}, {"cate", "hist_cate"}};
    check_predictor_allocations<xrec::models::din<float, B>>(n);
}
