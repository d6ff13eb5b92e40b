// Many threads on one predictor (its own executable, so that CI can also build it alone
// under ThreadSanitizer): 8 threads x XREC_SERVE_CALLS calls each (100,000 by default) of
// predict and rank return exactly what one thread returns; and with a publisher hot-swapping
// two weight sets, every answer of 4 reader threads is one set's answer, never a mix.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "xrec/models/din.hpp"
#include "xrec/serve/predictor.hpp"

namespace {

using B = xrec::cpu<>;
using model = xrec::models::din<float, B>;

long calls_per_thread() {
    const char* e = std::getenv("XREC_SERVE_CALLS");
    return e ? std::atol(e) : 100000;
}

xrec::feature_layout layout() {
    xrec::feature_layout l;
    l.tables = {{"user", 300}, {"item", 1000}, {"cate", 30}};
    l.sparse = {{"user", 0}, {"item", 1}, {"cate", 2}};
    l.dense = {"price"};
    l.sequences = {{"hist_item", 1, 12, xrec::pooling::mean}, {"hist_cate", 2, 12, xrec::pooling::mean}};
    l.finish();
    return l;
}

model::options options() {
    model::options o;
    o.inputs.dim = 8;
    o.inputs.embedding_init = xrec::init::normal(0, 0.5);
    o.pairs = {{"item", "hist_item"}, {"cate", "hist_cate"}};
    o.attention.hidden = {16};
    o.mlp.hidden = {16};
    return o;
}

// 64 one-row requests with histories of 0..11 behaviours, and 16 candidates.
struct requests {
    std::vector<std::int64_t> sparse[64], hv[64][2], ho[64][2];
    std::vector<float> dense[64];
    std::vector<xrec::jagged_ids> seqs[64];
    std::vector<std::int64_t> cand;
    requests() {
        for (int i = 0; i < 64; ++i) {
            sparse[i] = {(i * 37) % 300, 300 + (i * 101) % 1000, 1300 + i % 30};
            dense[i] = {0.05f * static_cast<float>(i % 20) - 0.5f};
            for (int k = 0; k < 2; ++k) {
                ho[i][k] = {0, i % 12};
                for (int j = 0; j < i % 12; ++j) hv[i][k].push_back(k == 0 ? 300 + (i * 7 + j * 13) % 1000 : 1300 + (i + j) % 30);
                seqs[i].push_back({hv[i][k], ho[i][k]});
            }
        }
        for (int c = 0; c < 16; ++c) for (std::int64_t id : {300 + (c * 61) % 1000, 1300 + (c * 7) % 30}) cand.push_back(id);
    }
    xrec::batch<float> operator[](int i) const {
        xrec::batch<float> b;
        b.rows = 1;
        b.sparse = {sparse[i].data(), xrec::shape{1, 3}};
        b.dense = {dense[i].data(), xrec::shape{1, 1}};
        b.sequences = seqs[i];
        return b;
    }
};

}  // namespace

TEST_CASE("8 threads x 100,000 calls of one predictor (predict and rank) return exactly what one thread returns") {
    const auto l = layout();
    xrec::param_store<float, B> src(5);
    model m(src, l, options());
    xrec::serve::predictor<model> p(l, options(), {.max_batch = 1, .max_candidates = 16, .candidate_fields = {"item", "cate"}});
    p.publish(src);
    const requests r;
    // The single-thread answers: predict of each request, rank of each request's user.
    std::vector<float> one(64), ranked(64 * 16);
    {
        auto s = p.make_session();
        for (int i = 0; i < 64; ++i) {
            REQUIRE(p.predict(s, r[i], std::span<float>(&one[static_cast<std::size_t>(i)], 1)).ok());
            REQUIRE(p.rank(s, r[i], {r.cand.data(), xrec::shape{16, 2}}, std::span<float>(&ranked[static_cast<std::size_t>(i * 16)], 16)).ok());
        }
    }
    const long calls = calls_per_thread();
    std::atomic<long> wrong{0}, done{0};
    auto work = [&](int t) {
        auto s = p.make_session();
        float out[16];
        for (long c = 0; c < calls; ++c) {
            const int i = static_cast<int>((c * 7 + t * 13) % 64);
            if (c % 16 == 15) {  // one call in 16 is a rank of 16 candidates
                if (!p.rank(s, r[i], {r.cand.data(), xrec::shape{16, 2}}, out).ok() ||
                    std::memcmp(out, &ranked[static_cast<std::size_t>(i * 16)], sizeof out) != 0)
                    ++wrong;
            } else if (!p.predict(s, r[i], std::span<float>(out, 1)).ok() || out[0] != one[static_cast<std::size_t>(i)]) {
                ++wrong;
            }
            ++done;
        }
    };
    std::vector<std::thread> ts;
    for (int t = 0; t < 8; ++t) ts.emplace_back(work, t);
    for (auto& t : ts) t.join();
    MESSAGE(done.load(), " calls on 8 threads");
    CHECK(done.load() == 8 * calls);
    CHECK(wrong.load() == 0);
}

TEST_CASE("4 readers and a publisher hot-swapping two weight sets: every answer is one set's, never a mix") {
    const auto l = layout();
    xrec::param_store<float, B> a(1), b(2);
    model ma(a, l, options()), mb(b, l, options());
    xrec::serve::predictor<model> p(l, options(), {.max_batch = 1, .max_candidates = 16, .candidate_fields = {"item", "cate"}});
    const requests r;
    float oa[16], ob[16];
    {
        p.publish(a);
        auto s = p.make_session();
        REQUIRE(p.rank(s, r[11], {r.cand.data(), xrec::shape{16, 2}}, oa).ok());
        p.publish(b);
        REQUIRE(p.rank(s, r[11], {r.cand.data(), xrec::shape{16, 2}}, ob).ok());
        for (int c = 0; c < 16; ++c) REQUIRE(oa[c] != ob[c]);
    }
    const long calls = std::max(200L, calls_per_thread() / 20);
    std::atomic<long> mixed{0}, seen_a{0}, seen_b{0};
    std::atomic<int> running{4};
    auto reader = [&] {
        auto s = p.make_session();
        float out[16];
        for (long c = 0; c < calls; ++c) {
            if (!p.rank(s, r[11], {r.cand.data(), xrec::shape{16, 2}}, out).ok()) ++mixed;
            else if (std::memcmp(out, oa, sizeof out) == 0) ++seen_a;
            else if (std::memcmp(out, ob, sizeof out) == 0) ++seen_b;
            else ++mixed;
        }
        --running;
    };
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t) ts.emplace_back(reader);
    long publishes = 0;
    while (running.load() > 0) p.publish(publishes++ % 2 ? b : a);
    for (auto& t : ts) t.join();
    MESSAGE(publishes, " publishes during ", 4 * calls, " rank calls: ", seen_a.load(), " saw set A, ", seen_b.load(), " set B");
    CHECK(mixed.load() == 0);
    CHECK(seen_a.load() + seen_b.load() == 4 * calls);
    CHECK(publishes > 1);
}
