// serve::predictor: predict equals the model's own forward; rank (user side once) equals
// predict on the repeated user row for deepfm, din (two unit/tower variants) and a model
// served by the generic ranker; request checking (field counts, NaN, out-of-range ids under
// both policies, long histories under both policies, unequal paired histories, too many
// rows); publishing (store mismatch refused with the live weights untouched; checkpoints);
// and hot swap under concurrent readers with weights whose mix would be detectable.
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "support/checks.hpp"
#include "support/random.hpp"
#include "support/temp_file.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/models/dcn_v2.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/models/din.hpp"
#include "xrec/serve/predictor.hpp"

using namespace xrec;
using B = cpu<>;

namespace {

constexpr std::uint64_t tag = 0x5e7e;

// user, age (user side); item, cate, brand (candidate side); a wide-only cross; histories of
// items and categories (max_len 6); a pooled tag bag (max_len 4); 3 dense.
feature_layout shop_layout() {
    feature_layout l;
    l.tables = {{"user", 40}, {"age", 5}, {"item", 60}, {"cate", 9}, {"brand", 7}, {"cross", 11}, {"tag", 13}};
    l.sparse = {{"user", 0}, {"age", 1}, {"item", 2}, {"cate", 3}, {"brand", 4}, {"cross", 5, true}};
    l.dense = {"price", "hour", "score"};
    l.sequences = {{"hist_item", 2, 6, pooling::mean}, {"hist_cate", 3, 6, pooling::mean}, {"tags", 6, 4, pooling::sum}};
    l.finish();
    return l;
}

// Every dense parameter and table entry random (running variances positive).
template <class T>
void randomize(param_store<T, B>& s, std::uint64_t seed) {
    xrec_test::randomize_dense(s, seed, tag, 0.3);
    for (std::int64_t t = 0; t < s.table_count(); ++t) {
        auto& tb = s.table(t);
        auto v = xrec_test::normal_values<T>(tb.rows * tb.dim, seed + 7919 * static_cast<std::uint64_t>(t), tag, 0.3);
        const bool var = tb.name.find("running_var") != std::string::npos;
        for (std::size_t i = 0; i < v.size(); ++i) tb.values.data()[i] = var ? T(0.5) + std::abs(v[i]) : v[i];
    }
}

// A request of n rows owning its memory; ids drawn inside each field's table.
struct request {
    std::int64_t rows = 0;
    std::vector<std::int64_t> sparse;
    std::vector<float> dense;
    std::vector<std::vector<std::int64_t>> values, offsets;
    mutable std::vector<jagged_ids> seqs;  // rebuilt by view(): a copied request views its own vectors
    request(const feature_layout& l, std::int64_t n, std::uint64_t seed, std::int64_t hist_len = -1) : rows(n) {
        const rng_stream rs{philox{mix_seed(seed, tag)}, 1};
        std::uint64_t k = 0;
        auto id_in = [&](std::int64_t table) {
            const auto& t = l.tables[static_cast<std::size_t>(table)];
            return t.offset + static_cast<std::int64_t>(rs.below(k++, static_cast<std::uint64_t>(t.rows)));
        };
        for (std::int64_t r = 0; r < n; ++r) {
            for (const auto& f : l.sparse) sparse.push_back(id_in(f.table));
            for (std::int64_t d = 0; d < l.num_dense(); ++d) dense.push_back(rs.uniform_f(k++) * 2 - 1);
        }
        values.resize(static_cast<std::size_t>(l.num_sequences()));
        offsets.resize(values.size());
        std::vector<std::int64_t> lens;
        for (std::int64_t r = 0; r < n; ++r)
            lens.push_back(hist_len >= 0 ? hist_len : static_cast<std::int64_t>(rs.below(k++, 7)));  // 0..6
        for (std::size_t s = 0; s < values.size(); ++s) {
            offsets[s].push_back(0);
            for (std::int64_t r = 0; r < n; ++r) {
                // The two histories (fields 0 and 1) share lengths (paired); tags have their own.
                const std::int64_t len = s < 2 ? lens[static_cast<std::size_t>(r)] : static_cast<std::int64_t>(rs.below(k++, 5));
                for (std::int64_t j = 0; j < len; ++j) values[s].push_back(id_in(l.sequences[s].table));
                offsets[s].push_back(static_cast<std::int64_t>(values[s].size()));
            }
        }
        for (std::size_t s = 0; s < values.size(); ++s) seqs.push_back({values[s], offsets[s]});
    }
    batch<float> view() const {
        for (std::size_t k = 0; k < values.size(); ++k) seqs[k] = {values[k], offsets[k]};
        batch<float> b;
        b.rows = rows;
        b.sparse = {sparse.data(), shape{rows, static_cast<std::int64_t>(sparse.size()) / std::max<std::int64_t>(rows, 1)}};
        b.dense = {dense.data(), shape{rows, static_cast<std::int64_t>(dense.size()) / std::max<std::int64_t>(rows, 1)}};
        b.sequences = seqs;
        return b;
    }
};

// Candidate ids [C, 3] (item, cate, brand), with some out of range (served as OOV rows).
std::vector<std::int64_t> candidates(const feature_layout& l, std::int64_t C, std::uint64_t seed, bool with_bad = false) {
    const rng_stream rs{philox{mix_seed(seed, tag)}, 2};
    std::vector<std::int64_t> c;
    std::uint64_t k = 0;
    for (std::int64_t i = 0; i < C; ++i)
        for (std::int64_t t : {2, 3, 4}) {
            const auto& tb = l.tables[static_cast<std::size_t>(t)];
            c.push_back(tb.offset + static_cast<std::int64_t>(rs.below(k++, static_cast<std::uint64_t>(tb.rows))));
        }
    if (with_bad && C > 2) {
        c[3] = -5;          // candidate 1's item
        c[7] = 1'000'000;   // candidate 2's cate
    }
    return c;
}

// The batch that predict would see for rank's candidates: the user row repeated, candidate
// ids substituted (bad ids replaced by their table's OOV row, as the predictor serves them).
struct repeated {
    std::vector<std::int64_t> sparse;
    std::vector<float> dense;
    std::vector<std::vector<std::int64_t>> values, offsets;
    std::vector<jagged_ids> seqs;
    batch<float> b;
    repeated(const feature_layout& l, const request& u, const std::vector<std::int64_t>& cand, std::int64_t C) {
        const std::int64_t F = l.num_sparse();
        const std::int64_t cf[3] = {2, 3, 4};
        for (std::int64_t c = 0; c < C; ++c) {
            for (std::int64_t f = 0; f < F; ++f) sparse.push_back(u.sparse[static_cast<std::size_t>(f)]);
            for (int j = 0; j < 3; ++j) {
                const auto& t = l.tables[static_cast<std::size_t>(l.sparse[static_cast<std::size_t>(cf[j])].table)];
                std::int64_t id = cand[static_cast<std::size_t>(c * 3 + j)];
                if (id < t.offset || id >= t.offset + t.rows) id = t.offset;
                sparse[static_cast<std::size_t>(c * F + cf[j])] = id;
            }
            dense.insert(dense.end(), u.dense.begin(), u.dense.end());
        }
        for (std::size_t s = 0; s < u.values.size(); ++s) {
            values.emplace_back();
            offsets.emplace_back(1, 0);
            for (std::int64_t c = 0; c < C; ++c) {
                values.back().insert(values.back().end(), u.values[s].begin(), u.values[s].end());
                offsets.back().push_back(static_cast<std::int64_t>(values.back().size()));
            }
        }
        for (std::size_t s = 0; s < values.size(); ++s) seqs.push_back({values[s], offsets[s]});
        b.rows = C;
        b.sparse = {sparse.data(), shape{C, F}};
        b.dense = {dense.data(), shape{C, l.num_dense()}};
        b.sequences = seqs;
    }
};

// |a - b| <= tol max((|a| + |b|) / 2, 1), per element.
void check_close(const std::vector<float>& a, const std::vector<float>& b, double tol) {
    REQUIRE(a.size() == b.size());
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double d = std::abs(double(a[i]) - double(b[i])), m = (std::abs(double(a[i])) + std::abs(double(b[i]))) / 2;
        worst = std::max(worst, d / std::max(m, 1.0));  // relative, absolute below 1 (float sums of logits near 0)
    }
    CHECK_MESSAGE(worst <= tol, "worst relative difference ", worst);
}

template <class Model>
void check_rank_matches_predict(const typename Model::options& mo, const char* what) {
    CAPTURE(what);
    const auto l = shop_layout();
    param_store<float, B> src(3);
    Model trained(src, l, mo);
    randomize(src, 11);
    serve::predictor<Model> p(l, mo, {.max_batch = 64, .max_candidates = 40,
                                      .candidate_fields = {"item", "cate", "brand"}, .output = serve::output_kind::logits});
    p.publish(src);
    auto s = p.make_session();

    // predict equals the model's forward on an infer_ctx, bit for bit.
    const request req(l, 9, 5);
    std::vector<float> got(9), want(9);
    REQUIRE(p.predict(s, req.view(), got).ok());
    infer_ctx<float, B> ctx;
    const var<float> y = trained(ctx, req.view());
    std::copy(y.data, y.data + 9, want.begin());
    CHECK(got == want);

    // rank equals predict on the repeated user row, for several users (empty history included).
    for (std::int64_t hist : {3, 0, 6}) {
        CAPTURE(hist);
        const request user(l, 1, 20 + static_cast<std::uint64_t>(hist), hist);
        const std::int64_t C = 37;
        const auto cand = candidates(l, C, 40 + static_cast<std::uint64_t>(hist), true);
        std::vector<float> ranked(C), batched(C);
        const auto oov0 = s.stats().oov_ids;
        REQUIRE(p.rank(s, user.view(), {cand.data(), shape{C, 3}}, ranked).ok());
        CHECK(s.stats().oov_ids == oov0 + 2);
        repeated rep(l, user, cand, C);
        REQUIRE(p.predict(s, rep.b, batched).ok());
        check_close(ranked, batched, 2e-5);
    }
}

}  // namespace

TEST_CASE("serve::predictor: deepfm rank (user side once) equals predict on the repeated user row") {
    models::deepfm_options o;
    o.dim = 4;
    o.dnn.hidden = {12, 5};
    check_rank_matches_predict<models::deepfm<float, B>>(o, "deepfm");
    models::deepfm_options fm_only = o;
    fm_only.dnn.hidden.clear();
    check_rank_matches_predict<models::deepfm<float, B>>(fm_only, "deepfm without the deep part");
}

TEST_CASE("serve::predictor: din rank equals predict on the repeated user row (sigmoid unit + dice tower, dice unit + softmax + prelu tower)") {
    using ua = layers::unit_activation;
    models::din<float, B>::options a;
    a.inputs.dim = 4;
    a.pairs = {{"item", "hist_item"}, {"cate", "hist_cate"}};
    a.attention.hidden = {8, 5};
    a.mlp = {{10, 6}, ua::dice, 0, {}};
    check_rank_matches_predict<models::din<float, B>>(a, "din sigmoid/dice");
    auto b = a;
    b.attention.act = ua::dice;
    b.attention.softmax = true;
    b.mlp = {{7}, ua::prelu, 0, {}};
    check_rank_matches_predict<models::din<float, B>>(b, "din dice/softmax/prelu");
}

TEST_CASE("serve::predictor: a model without its own ranker (dcn_v2) ranks through the repeated batch") {
    models::dcn_v2_options o;
    o.dim = 4;
    o.dnn.hidden = {8};
    check_rank_matches_predict<models::dcn_v2<float, B>>(o, "dcn_v2");
}

TEST_CASE("serve::predictor: bad requests get a status naming the problem, never a crash") {
    const auto l = shop_layout();
    models::deepfm_options mo;
    mo.dim = 4;
    mo.dnn.hidden = {6};
    param_store<float, B> src(1);
    models::deepfm<float, B> m(src, l, mo);
    randomize(src, 3);
    using pred = serve::predictor<models::deepfm<float, B>>;
    serve::predictor_options po{.max_batch = 8, .max_candidates = 4, .candidate_fields = {"item"}};
    pred p(l, mo, po);
    xrec_test::expect_error([&] { (void)p.make_session(); }, {"publish weights first"});
    p.publish(src);
    auto s = p.make_session();
    CHECK(s.stats().requests == 0);
    auto msg = [](serve::status st) { return std::string(st.message); };

    request good(l, 3, 9);
    std::vector<float> out(8);
    REQUIRE(p.predict(s, good.view(), out).ok());
    const std::vector<float> ref(out.begin(), out.begin() + 3);

    {  // wrong field count
        auto b = good.view();
        b.sparse.s = shape{3, 5};
        auto st = p.predict(s, b, out);
        CHECK(st.code == serve::status_code::invalid_argument);
        CHECK(msg(st).find("sparse ids [3, 5], but 3 rows x 6 sparse fields") != std::string::npos);
        b = good.view();
        b.dense.s = shape{3, 2};
        CHECK(msg(p.predict(s, b, out)).find("dense values [3, 2], but 3 rows x 3 dense fields") != std::string::npos);
        b = good.view();
        b.sequences = b.sequences.first(2);
        CHECK(msg(p.predict(s, b, out)).find("2 sequence inputs for 3 sequence fields") != std::string::npos);
    }
    {  // NaN / Inf dense values
        request bad = good;
        bad.dense[4] = std::numeric_limits<float>::quiet_NaN();
        auto st = p.predict(s, bad.view(), out);
        CHECK(st.code == serve::status_code::invalid_argument);
        CHECK(msg(st).find("row 1 dense field 'hour' is NaN") != std::string::npos);
        bad.dense[4] = std::numeric_limits<float>::infinity();
        CHECK(msg(p.predict(s, bad.view(), out)).find("row 1 dense field 'hour' is infinite") != std::string::npos);
    }
    {  // too many rows, too small an output
        request big(l, 9, 1);
        CHECK(msg(p.predict(s, big.view(), out)).find("9 rows, outside [0, max_batch = 8]") != std::string::npos);
        std::vector<float> small(2);
        CHECK(msg(p.predict(s, good.view(), small)).find("output has 2 values, 3 needed") != std::string::npos);
    }
    {  // out-of-range ids: the OOV row by default...
        request bad = good;
        bad.sparse[2] = 99999;  // row 0's item
        const auto oov = s.stats().oov_ids;
        REQUIRE(p.predict(s, bad.view(), out).ok());
        CHECK(s.stats().oov_ids == oov + 1);
        request fixed = good;
        fixed.sparse[2] = l.tables[2].offset;
        std::vector<float> want(8);
        REQUIRE(p.predict(s, fixed.view(), want).ok());
        CHECK(out[0] == want[0]);
        // ... or refused with the policy's reject, naming the field, the id and the table.
        serve::predictor_options strict = po;
        strict.policy.ids = serve::request_policy::bad_id::reject;
        pred q(l, mo, strict);
        q.publish(src);
        auto s2 = q.make_session();
        auto st = q.predict(s2, bad.view(), out);
        CHECK(st.code == serve::status_code::out_of_range);
        CHECK(msg(st).find("predict 0 field 'item': id 99999 is outside table 'item' rows [45, 105)") != std::string::npos);
        CHECK(s2.stats().refused == 1);
        request neg = good;
        neg.values[0][0] = -1;  // a history id
        const auto m2 = msg(q.predict(s2, neg.view(), out));
        CHECK_MESSAGE(m2.find("field 'hist_item': id -1 is outside table 'item'") != std::string::npos, m2);
    }
    {  // a history longer than max_len: the newest max_len ids, or refused
        request one(l, 1, 4, 6);
        request longer = one;
        for (int s2 = 0; s2 < 2; ++s2) {
            longer.values[static_cast<std::size_t>(s2)].insert(longer.values[static_cast<std::size_t>(s2)].begin(),
                                                               {l.tables[2 + s2].offset + 1, l.tables[2 + s2].offset + 2});
            longer.offsets[static_cast<std::size_t>(s2)][1] += 2;
        }
        for (std::size_t k = 0; k < longer.values.size(); ++k) longer.seqs[k] = {longer.values[k], longer.offsets[k]};
        std::vector<float> a(8), b(8);
        REQUIRE(p.predict(s, one.view(), a).ok());
        const auto clipped = s.stats().clipped_histories;
        REQUIRE(p.predict(s, longer.view(), b).ok());
        CHECK(s.stats().clipped_histories == clipped + 2);
        CHECK(a[0] == b[0]);
        serve::predictor_options strict = po;
        strict.policy.long_sequences = serve::request_policy::long_sequence::reject;
        pred q(l, mo, strict);
        q.publish(src);
        auto s2 = q.make_session();
        CHECK(msg(q.predict(s2, longer.view(), b)).find("row 0 sequence field 'hist_item' has 8 ids, more than its max_len 6") !=
              std::string::npos);
    }
    {  // malformed offsets
        request bad = good;
        bad.offsets[2][1] = 100;
        bad.seqs[2] = {bad.values[2], bad.offsets[2]};
        CHECK(p.predict(s, bad.view(), out).code == serve::status_code::invalid_argument);
        bad.offsets[2].pop_back();
        bad.seqs[2] = {bad.values[2], bad.offsets[2]};
        CHECK(msg(p.predict(s, bad.view(), out)).find("sequence field 'tags' needs 4 offsets") != std::string::npos);
    }
    {  // rank: wrong candidate matrix, too many candidates, a user request of 2 rows
        std::vector<std::int64_t> cand(10, l.tables[2].offset);
        CHECK(msg(p.rank(s, good.view(), {cand.data(), shape{5, 2}}, out)).find("rank: the user request has 3 rows, not 1") !=
              std::string::npos);
        request u(l, 1, 2);
        CHECK(msg(p.rank(s, u.view(), {cand.data(), shape{5, 2}}, out)).find("must be [C, 1]") != std::string::npos);
        CHECK(msg(p.rank(s, u.view(), {cand.data(), shape{5, 1}}, out)).find("C <= max_candidates = 4") != std::string::npos);
        REQUIRE(p.rank(s, u.view(), {cand.data(), shape{4, 1}}, out).ok());
    }
    // After all that, the session still answers the good request as before.
    REQUIRE(p.predict(s, good.view(), out).ok());
    CHECK(std::vector<float>(out.begin(), out.begin() + 3) == ref);
    // A session of another predictor is refused.
    pred other(l, mo, po);
    other.publish(src);
    CHECK(msg(other.predict(s, good.view(), out)).find("not made by this predictor") != std::string::npos);
}

TEST_CASE("serve::predictor: din refuses paired histories of unequal lengths by status") {
    const auto l = shop_layout();
    models::din<float, B>::options o;
    o.inputs.dim = 4;
    o.pairs = {{"item", "hist_item"}, {"cate", "hist_cate"}};
    o.attention.hidden = {4};
    o.mlp.hidden = {4};
    param_store<float, B> src(2);
    models::din<float, B> m(src, l, o);
    serve::predictor<models::din<float, B>> p(l, o, {.max_batch = 4, .max_candidates = 4, .candidate_fields = {"item", "cate"}});
    p.publish(src);
    auto s = p.make_session();
    request r(l, 2, 3, 2);
    r.values[1].pop_back();
    r.offsets[1][2] -= 1;
    r.seqs[1] = {r.values[1], r.offsets[1]};
    std::vector<float> out(4);
    auto st = p.predict(s, r.view(), out);
    CHECK(st.code == serve::status_code::invalid_argument);
    CHECK(std::string(st.message).find("different lengths") != std::string::npos);
    // A din predictor whose candidate fields miss a behaviour pair's candidate is refused at construction.
    xrec_test::expect_error([&] { serve::predictor<models::din<float, B>> q(l, o, {.candidate_fields = {"item"}}); },
                            {"candidate field 'cate' must be one of the predictor's candidate_fields"});
}

TEST_CASE("serve::predictor: publishing a mismatched store or a bad checkpoint leaves the live weights serving") {
    const auto l = shop_layout();
    models::deepfm_options mo;
    mo.dim = 4;
    mo.dnn.hidden = {6};
    param_store<float, B> src(1);
    models::deepfm<float, B> m(src, l, mo);
    randomize(src, 8);
    serve::predictor<models::deepfm<float, B>> p(l, mo, {.max_batch = 4});
    CHECK(p.publish(src) == 1);
    auto s = p.make_session();
    request r(l, 2, 6);
    std::vector<float> before(2), after(2);
    REQUIRE(p.predict(s, r.view(), before).ok());
    CHECK(s.last_version() == 1);

    models::deepfm_options wider = mo;
    wider.dnn.hidden = {7};
    param_store<float, B> other(1);
    models::deepfm<float, B> m2(other, l, wider);
    xrec_test::expect_error([&] { p.publish(other); }, {"deepfm.dnn.0.weight", "[7, 35]", "[6, 35]"});
    xrec_test::temp_file bad("bad.safetensors", "this is not a checkpoint");
    CHECK_THROWS_AS(p.publish_checkpoint(bad.str()), xrec::error);
    REQUIRE(p.predict(s, r.view(), after).ok());
    CHECK(before == after);
    CHECK(p.version() == 1);

    // A checkpoint of other weights publishes as version 2 and serves what the model computes.
    param_store<float, B> next(1);
    models::deepfm<float, B> m3(next, l, mo);
    randomize(next, 9);
    xrec_test::temp_file ck("next.safetensors", "");
    io::save_checkpoint(ck.str(), next);
    CHECK(p.publish_checkpoint(ck.str()) == 2);
    REQUIRE(p.predict(s, r.view(), after).ok());
    CHECK(s.last_version() == 2);
    CHECK(before != after);
    infer_ctx<float, B> ctx;
    const var<float> y = m3(ctx, r.view());
    for (int i = 0; i < 2; ++i) CHECK(after[static_cast<std::size_t>(i)] == doctest::Approx(1 / (1 + std::exp(-y.data[i]))).epsilon(1e-6));
}

TEST_CASE("serve::predictor: under hot swaps every request sees the old or the new weights, never a mix") {
    // Two weight sets whose outputs differ in every parameter's contribution: a request that
    // read some parameters from one set and some from the other would give a third value.
    const auto l = shop_layout();
    models::deepfm_options mo;
    mo.dim = 4;
    mo.dnn.hidden = {16, 8};
    param_store<float, B> a(1), b(1);
    models::deepfm<float, B> ma(a, l, mo), mb(b, l, mo);
    randomize(a, 100);
    randomize(b, 200);
    serve::predictor<models::deepfm<float, B>> p(l, mo, {.max_batch = 4, .output = serve::output_kind::logits});
    p.publish(a);
    const request r(l, 4, 77);
    std::vector<float> oa(4), ob(4);
    {
        auto s = p.make_session();
        REQUIRE(p.predict(s, r.view(), oa).ok());
        p.publish(b);
        REQUIRE(p.predict(s, r.view(), ob).ok());
        for (int i = 0; i < 4; ++i) REQUIRE(oa[static_cast<std::size_t>(i)] != ob[static_cast<std::size_t>(i)]);
    }
    std::atomic<bool> stop{false};
    std::atomic<long> mixed{0}, seen_a{0}, seen_b{0}, calls{0};
    auto reader = [&] {
        auto s = p.make_session();
        std::vector<float> out(4);
        while (!stop.load(std::memory_order_relaxed)) {
            if (!p.predict(s, r.view(), out).ok()) {
                ++mixed;
                continue;
            }
            ++calls;
            if (out == oa) ++seen_a;
            else if (out == ob) ++seen_b;
            else ++mixed;
        }
    };
    std::thread t1(reader), t2(reader);
    int published = 0;
    while (published < 400 || calls.load() < 20000) p.publish(published++ % 2 ? b : a);
    stop = true;
    t1.join();
    t2.join();
    CHECK(mixed.load() == 0);
    CHECK(seen_a.load() > 0);
    CHECK(seen_b.load() > 0);
    CHECK(p.version() == 2 + static_cast<std::uint64_t>(published));
}

TEST_CASE("serve::predictor: bf16 / int8 serving precision stays close to fp32, and rank still equals predict") {
    const auto l = shop_layout();
    models::deepfm_options mo;
    mo.dim = 8;
    mo.dnn.hidden = {12};
    param_store<float, B> src(1);
    models::deepfm<float, B> m(src, l, mo);
    randomize(src, 21);
    const request r(l, 16, 3);
    std::vector<float> ref(16);
    {
        serve::predictor<models::deepfm<float, B>> p(l, mo, {.max_batch = 16});
        p.publish(src);
        auto s = p.make_session();
        REQUIRE(p.predict(s, r.view(), ref).ok());
    }
    for (auto prec : {serve::serving_precision::bf16, serve::serving_precision::bf16_int8}) {
        CAPTURE(serve::serving_precision_name(prec));
        serve::predictor<models::deepfm<float, B>> p(
            l, mo, {.max_batch = 16, .max_candidates = 8, .candidate_fields = {"item", "cate", "brand"}, .precision = prec});
        p.publish(src);
        p.publish(src);  // the second publish refills a slot converted by the first
        auto s = p.make_session();
        std::vector<float> got(16);
        REQUIRE(p.predict(s, r.view(), got).ok());
        double worst = 0;
        for (std::size_t i = 0; i < 16; ++i) worst = std::max(worst, std::abs(double(got[i]) - double(ref[i])));
        CHECK(worst > 0);      // the weights were converted...
        CHECK(worst < 0.01);   // ...and the probabilities barely moved
        const request user(l, 1, 5, 4);
        const auto cand = candidates(l, 8, 6);
        std::vector<float> ranked(8), batched(8);
        REQUIRE(p.rank(s, user.view(), {cand.data(), shape{8, 3}}, ranked).ok());
        repeated rep(l, user, cand, 8);
        REQUIRE(p.predict(s, rep.b, batched).ok());
        check_close(ranked, batched, 2e-5);
    }
}

TEST_CASE("serve::predictor: delta publishes (touched rows only) serve exactly what full publishes serve") {
    const auto l = shop_layout();
    models::deepfm_options mo;
    mo.dim = 4;
    mo.dnn.hidden = {8};
    param_store<float, B> src(1);
    models::deepfm<float, B> m(src, l, mo);
    randomize(src, 31);
    using pred = serve::predictor<models::deepfm<float, B>>;
    pred live(l, mo, {.max_batch = 16, .output = serve::output_kind::logits});
    const request r(l, 16, 12);
    std::vector<std::vector<std::int64_t>> touched(static_cast<std::size_t>(src.table_count()));
    auto s = [&] {
        live.publish(src, touched);
        return live.make_session();
    }();
    const rng_stream rs{philox{77}, 0};
    std::uint64_t k = 0;
    for (int round = 0; round < 6; ++round) {
        // The learner changes a few rows of each table and every dense value.
        for (auto& t : touched) t.clear();
        for (std::int64_t t = 0; t < src.table_count(); ++t)
            for (int i = 0; i < 5; ++i) {
                const auto row = static_cast<std::int64_t>(rs.below(k++, static_cast<std::uint64_t>(src.table(t).rows)));
                for (std::int64_t d = 0; d < src.table(t).dim; ++d) src.table(t).row(row)[d] += 0.5f * (rs.uniform_f(k++) - 0.5f);
                touched[static_cast<std::size_t>(t)].push_back(row);
            }
        for (std::int64_t i = 0; i < src.dense_size(); ++i) src.values()[i] *= 0.99f;
        live.publish(src, touched);
        pred fresh(l, mo, {.max_batch = 16, .output = serve::output_kind::logits});
        fresh.publish(src);
        auto fs = fresh.make_session();
        std::vector<float> a(16), b(16);
        REQUIRE(live.predict(s, r.view(), a).ok());
        REQUIRE(fresh.predict(fs, r.view(), b).ok());
        CHECK(a == b);
    }
    CHECK(live.full_publishes() == 2);  // the first publish of each slot
    CHECK(live.delta_publishes() == 5);
    touched[0].push_back(1 << 30);
    xrec_test::expect_error([&] { live.publish(src, touched); }, {"touched row 1073741824 is outside table"});
}
