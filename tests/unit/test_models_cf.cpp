// Collaborative filtering (models/{mf,ncf,two_tower}.hpp, loss/sampled_softmax.hpp,
// train/cf_trainer.hpp):
//  1. finite-difference gradient checks in double of the in-batch softmax (log-Q, temperature,
//     accidental hits) and of every model's scores w.r.t. every parameter and table entry;
//  2. parity with the PyTorch peers (tests/peers/cf_models.py) on
//     tests/fixtures/cf_models.safetensors (gen_cf_model_fixtures.py): scores, the loss
//     (BPR, BCE, in-batch softmax) and every gradient, in double (1e-10 rel) and float (1e-5),
//     every fixture parameter consumed by name (the name map is one to one);
//  3. NeuMF built from pretrained GMF and MLP scores alpha * gmf + (1 - alpha) * mlp;
//  4. save/load predicts bit-identically on an infer_ctx; train and infer contexts agree;
//  5. the trainer: unseen-item sampling, determinism as a pure function of the seed, the
//     batch log, the NaN stop; learning tests on a synthetic clustered problem for BPR-MF,
//     NeuMF with BCE and the two-tower model with the in-batch softmax.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "support/checks.hpp"
#include "support/temp_file.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/loss/bce.hpp"
#include "xrec/loss/bpr.hpp"
#include "xrec/loss/sampled_softmax.hpp"
#include "xrec/loss/softmax_cross_entropy.hpp"
#include "xrec/models/mf.hpp"
#include "xrec/models/ncf.hpp"
#include "xrec/models/two_tower.hpp"
#include "xrec/testing/gradcheck.hpp"
#include "xrec/train/cf_trainer.hpp"

using namespace xrec;
using B = cpu<>;

namespace {

constexpr std::int64_t n_users = 5, n_items = 7;

const io::safetensors_file& fixture() {
    static const io::safetensors_file f = io::safetensors_file::open(XREC_FIXTURE_DIR "/cf_models.safetensors");
    return f;
}

std::vector<std::int64_t> ids(const std::string& key) { return fixture().read<std::int64_t>(key); }

models::id_features features(const std::string& side, std::int64_t rows) {
    return {ids("features/" + side + "_offsets"), ids("features/" + side + "_values"), rows};
}

// The fixture's options of each case (mirrors gen_cf_model_fixtures.py).
models::mf_options mf_opt() { return {.name = "mf", .n_users = n_users, .n_items = n_items, .dim = 4, .item_bias = true}; }
models::gmf_options gmf_opt() { return {.name = "gmf", .n_users = n_users, .n_items = n_items, .dim = 4}; }
models::ncf_mlp_options mlp_opt() {
    return {.name = "ncf_mlp", .n_users = n_users, .n_items = n_items, .dim = 3, .hidden = {5, 4}};
}
models::neumf_options neumf_opt() {
    return {.name = "neumf", .n_users = n_users, .n_items = n_items, .gmf_dim = 4, .mlp_dim = 3, .hidden = {5, 4}};
}
models::two_tower_options tt_opt() {
    return {.name = "two_tower",
            .n_users = n_users,
            .n_items = n_items,
            .id_dim = 4,
            .feature_dim = 3,
            .user_tower = {.hidden = {6}, .out = 4},
            .item_tower = {.hidden = {6}, .out = 4},
            .user_features = features("user", 4),
            .item_features = features("item", 5)};
}

// Builds the model of a case and calls f(model).
template <class T, class F>
void with_model(const std::string& c, param_store<T, B>& s, F&& f) {
    if (c == "mf") f(models::mf<T, B>(s, mf_opt()));
    else if (c == "gmf") f(models::gmf<T, B>(s, gmf_opt()));
    else if (c == "ncf_mlp") f(models::ncf_mlp<T, B>(s, mlp_opt()));
    else if (c == "neumf") f(models::neumf<T, B>(s, neumf_opt()));
    else if (c == "two_tower") f(models::two_tower<T, B>(s, tt_opt()));
    else FAIL("unknown case ", c);
}
const std::vector<std::string>& cases() {
    static const std::vector<std::string> c{"mf", "gmf", "ncf_mlp", "neumf", "two_tower"};
    return c;
}

template <class T>
std::size_t load_case_params(const std::string& c, param_store<T, B>& s) {
    std::size_t n = 0;
    for (auto& t : s.named_tensors()) {
        const std::string key = c + "/param/" + t.name;
        INFO("parameter ", key);
        REQUIRE(fixture().find(key) != nullptr);
        REQUIRE(fixture().shape_of(key).numel() == t.s.numel());
        fixture().read_into<T>(key, t.data, t.s.numel());
        ++n;
    }
    return n;
}

std::size_t fixture_count(const std::string& prefix) {
    std::size_t n = 0;
    for (auto& t : fixture().tensors()) n += t.name.rfind(prefix, 0) == 0;
    return n;
}

template <class G>
double compare(const std::string& what, const G* got, const std::vector<double>& ref, double rel, double abs) {
    int misses = 0;
    double worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        const double err = std::fabs(static_cast<double>(got[i]) - ref[i]), tol = rel * std::fabs(ref[i]) + abs;
        worst = std::max(worst, err / tol);
        if (!(err <= tol) && misses++ < 3) MESSAGE(what, " [", i, "]: got ", static_cast<double>(got[i]), " ref ", ref[i]);
    }
    INFO(what);
    CHECK(misses == 0);
    return worst;
}

template <class T>
std::vector<double> dense_table_grad(const embedding_table<T, B>& t) {
    std::vector<double> g(static_cast<std::size_t>(t.rows * t.dim), 0.0);
    for (std::int64_t k = 0; k < t.grad.count(); ++k)
        for (std::int64_t d = 0; d < t.dim; ++d)
            g[static_cast<std::size_t>(t.grad.ids[static_cast<std::size_t>(k)] * t.dim + d)] +=
                static_cast<double>(t.grad.rows[k * t.dim + d]);
    return g;
}

// The fixture's loss of a case: BPR for mf, in-batch softmax for two_tower, BCE otherwise.
template <class M, class Ctx, class T = typename Ctx::value_type>
var<T> case_loss(const std::string& c, const M& m, Ctx& ctx, const var<T>& scores, const std::vector<std::int64_t>& users,
                 const std::vector<std::int64_t>& items, const std::vector<std::int64_t>& negatives,
                 const std::vector<T>& labels, const std::vector<T>& log_q) {
    if (c == "mf") return loss::bpr(ctx, scores, m.score(ctx, users, negatives));
    if constexpr (requires { m.user_vectors(ctx, users); }) {
        if (c == "two_tower")
            return loss::in_batch_softmax(ctx, m.user_vectors(ctx, users), m.item_vectors(ctx, items),
                                          {.temperature = 0.5, .log_q = log_q, .item_ids = items});
    }
    return loss::bce_with_logits(ctx, scores, ctx.input(tensor_view<const T>{labels.data(), shape{scores.numel()}}));
}

// A synthetic implicit-feedback problem: users and items in `groups` clusters; each user
// interacts with `per_user` random items of its own cluster. The last item of each user is
// held out; returns the train CSR and the held-out item per user.
struct synthetic {
    std::vector<std::int64_t> offsets{0};
    std::vector<std::int32_t> items;
    std::vector<std::int32_t> held_out;
    std::int32_t n_users = 0, n_items = 0;
    std::vector<std::vector<std::int32_t>> seen;
};
synthetic make_synthetic(std::int32_t users, std::int32_t item_count, std::int32_t groups, std::int32_t per_user,
                         std::uint64_t seed) {
    synthetic s;
    s.n_users = users;
    s.n_items = item_count;
    const rng_stream rs{philox{mix_seed(seed, 0x5359)}, 0};
    const std::int32_t per_group = item_count / groups;
    std::uint64_t pos = 0;
    for (std::int32_t u = 0; u < users; ++u) {
        const std::int32_t g = u % groups;
        std::vector<std::int32_t> mine;
        while (static_cast<std::int32_t>(mine.size()) < per_user + 1) {
            const auto it = static_cast<std::int32_t>(g * per_group + static_cast<std::int32_t>(rs.below(pos++, static_cast<std::uint64_t>(per_group))));
            if (std::find(mine.begin(), mine.end(), it) == mine.end()) mine.push_back(it);
        }
        s.held_out.push_back(mine.back());
        mine.pop_back();
        s.items.insert(s.items.end(), mine.begin(), mine.end());
        s.offsets.push_back(static_cast<std::int64_t>(s.items.size()));
        std::sort(mine.begin(), mine.end());
        s.seen.push_back(mine);
    }
    return s;
}

// HR@10 of the held-out item among 99 unseen sampled items (ties count against it).
template <class Score>
double hit_rate_at_10(const synthetic& s, Score&& score) {
    const rng_stream rs{philox{mix_seed(99, 0x4852)}, 0};
    std::int64_t hits = 0;
    std::vector<std::int32_t> cand;
    std::vector<float> out;
    for (std::int32_t u = 0; u < s.n_users; ++u) {
        cand.assign(1, s.held_out[static_cast<std::size_t>(u)]);
        auto seen = s.seen[static_cast<std::size_t>(u)];
        seen.push_back(s.held_out[static_cast<std::size_t>(u)]);
        std::sort(seen.begin(), seen.end());
        for (std::uint64_t k = 0; cand.size() < 100; ++k)
            cand.push_back(train::sample_unseen(seen, s.n_items, rs, static_cast<std::uint64_t>(u) * 1000 + k));
        out.resize(cand.size());
        score(u, std::span<const std::int32_t>(cand), std::span<float>(out));
        std::int64_t above = 0;
        for (std::size_t k = 1; k < out.size(); ++k) above += out[k] >= out[0];
        hits += above < 10;
    }
    return static_cast<double>(hits) / s.n_users;
}

}  // namespace

TEST_CASE("in_batch_softmax: finite-difference gradient check (double)") {
    const auto log_q = fixture().read<double>("batch/log_q");
    const auto items = ids("batch/items");
    auto u = fixture().read<double>("softmax/u");
    auto v = fixture().read<double>("softmax/v");
    const shape s{6, 3};
    SUBCASE("log-Q, temperature 0.5, accidental hits removed") {
        auto f = [&](auto& ctx, auto& xs) {
            return loss::in_batch_softmax(ctx, xs[0], xs[1], {.temperature = 0.5, .log_q = log_q, .item_ids = items});
        };
        const auto rep = testing::gradcheck<B>(f, {{u.data(), s}, {v.data(), s}});
        INFO(rep.failures);
        CHECK(rep.ok);
        CHECK(rep.checked == 36);
        MESSAGE("in_batch_softmax: 36 scalars, max abs err ", rep.max_abs_err, ", max rel err ", rep.max_rel_err);
    }
    SUBCASE("plain") {
        auto f = [&](auto& ctx, auto& xs) { return loss::in_batch_softmax(ctx, xs[0], xs[1]); };
        const auto rep = testing::gradcheck<B>(f, {{u.data(), s}, {v.data(), s}});
        INFO(rep.failures);
        CHECK(rep.ok);
    }
}

TEST_CASE("in_batch_softmax: PyTorch values and gradients; equals softmax CE over U V^T without options") {
    const auto log_q = fixture().read<double>("batch/log_q");
    const auto items = ids("batch/items");
    auto u = fixture().read<double>("softmax/u");
    auto v = fixture().read<double>("softmax/v");
    std::vector<double> gu(u.size()), gv(v.size());
    train_ctx<double, B> ctx;
    const var<double> U = ctx.leaf({u.data(), shape{6, 3}}, gu.data()), V = ctx.leaf({v.data(), shape{6, 3}}, gv.data());
    const var<double> l = loss::in_batch_softmax(ctx, U, V, {.temperature = 0.5, .log_q = log_q, .item_ids = items});
    ctx.backward(l);
    compare("softmax loss", l.data, fixture().read<double>("softmax/loss"), 1e-12, 1e-14);
    compare("softmax grad_u", gu.data(), fixture().read<double>("softmax/grad_u"), 1e-10, 1e-12);
    compare("softmax grad_v", gv.data(), fixture().read<double>("softmax/grad_v"), 1e-10, 1e-12);

    // No options: the ordinary softmax cross-entropy of the logits U V^T with diagonal targets.
    ctx.reset();
    std::vector<double> logits(36);
    for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j)
            for (int k = 0; k < 3; ++k) logits[static_cast<std::size_t>(i * 6 + j)] += u[static_cast<std::size_t>(i * 3 + k)] * v[static_cast<std::size_t>(j * 3 + k)];
    const std::vector<std::int64_t> diag{0, 1, 2, 3, 4, 5};
    const double a = loss::in_batch_softmax(ctx, ctx.input({u.data(), shape{6, 3}}), ctx.input({v.data(), shape{6, 3}})).item();
    const double b = loss::softmax_cross_entropy(ctx, ctx.input({logits.data(), shape{6, 6}}), diag).item();
    CHECK(a == doctest::Approx(b).epsilon(1e-13));

    // Bad inputs name the loss and the sizes.
    xrec_test::expect_error([&] { loss::in_batch_softmax(ctx, ctx.input({u.data(), shape{6, 3}}), ctx.input({v.data(), shape{3, 6}})); },
                            {"in_batch_softmax", "[6, 3]", "[3, 6]"});
    xrec_test::expect_error(
        [&] {
            loss::in_batch_softmax(ctx, ctx.input({u.data(), shape{6, 3}}), ctx.input({v.data(), shape{6, 3}}),
                                   {.log_q = std::span<const double>(log_q).first(4)});
        },
        {"in_batch_softmax", "log_q has 4"});
}

TEST_CASE("cf models: finite-difference gradient check of the scores (double)") {
    const auto users = ids("batch/users"), items = ids("batch/items");
    for (const auto& c : cases()) {
        param_store<double, B> s(3);
        with_model<double>(c, s, [&](const auto& m) {
            load_case_params(c, s);  // random values of scale 0.5 everywhere
            auto f = [&](auto& ctx, auto&) { return m.score(ctx, users, items); };
            const auto rep = testing::gradcheck<B>(f, {}, &s);
            INFO(c, ": ", rep.failures);
            CHECK(rep.ok);
            CHECK(rep.checked == s.parameter_count());
            MESSAGE(c, ": ", rep.checked, " scalars checked, max abs err ", rep.max_abs_err, ", max rel err ", rep.max_rel_err);
        });
    }
    // The towers themselves (what the in-batch softmax differentiates).
    param_store<double, B> s(3);
    models::two_tower<double, B> m(s, tt_opt());
    load_case_params("two_tower", s);
    auto f = [&](auto& ctx, auto&) {
        return loss::in_batch_softmax(ctx, m.user_vectors(ctx, users), m.item_vectors(ctx, items),
                                      {.temperature = 0.5, .item_ids = items});
    };
    const auto rep = testing::gradcheck<B>(f, {}, &s);
    INFO(rep.failures);
    CHECK(rep.ok);
}

// double: |got - ref| <= 1e-10 |ref| + 1e-12; float: 1e-5 |ref| + 1e-6. The float absolute
// term is 1e-6 (1e-7 in the CTR tests) because the item tower's output bias has an exactly
// zero gradient under the in-batch softmax (the rows of P - I sum to zero), which float
// rounds to ~1.5e-7.
TEST_CASE_TEMPLATE("cf models: parity with the PyTorch peers", T, double, float) {
    const double rel = sizeof(T) == 8 ? 1e-10 : 1e-5, abs = sizeof(T) == 8 ? 1e-12 : 1e-6;
    const auto users = ids("batch/users"), items = ids("batch/items"), negatives = ids("batch/negatives");
    const auto labels = fixture().read<T>("batch/labels");
    const auto log_q = fixture().read<T>("batch/log_q");
    for (const auto& c : cases()) {
        param_store<T, B> s(3);
        with_model<T>(c, s, [&](const auto& m) {
            const std::size_t loaded = load_case_params(c, s);
            INFO(c);
            CHECK(loaded == fixture_count(c + "/param/"));  // one to one
            train_ctx<T, B> ctx;
            const var<T> y = m.score(ctx, users, items);
            REQUIRE(y.s == shape{6});
            const var<T> l = case_loss(c, m, ctx, y, users, items, negatives, labels, log_q);
            s.zero_grad();
            ctx.backward(l);
            double worst = compare(c + " scores", y.data, fixture().read<double>(c + "/scores"), rel, abs);
            worst = std::max(worst, compare(c + " loss", l.data, fixture().read<double>(c + "/loss"), rel, abs));
            std::size_t grads = 0;
            for (auto& e : s.dense_entries()) {
                const std::string key = c + "/grad/" + e.name;
                REQUIRE(fixture().find(key) != nullptr);
                worst = std::max(worst, compare(key, s.grads() + e.offset, fixture().read<double>(key), rel, abs));
                ++grads;
            }
            for (std::int64_t t = 0; t < s.table_count(); ++t) {
                const std::string key = c + "/grad/" + s.table(t).name;
                REQUIRE(fixture().find(key) != nullptr);
                worst = std::max(worst, compare(key, dense_table_grad(s.table(t)).data(), fixture().read<double>(key), rel, abs));
                ++grads;
            }
            CHECK(grads == fixture_count(c + "/grad/"));
            MESSAGE(c, " (", std::string(sizeof(T) == 8 ? "double" : "float"), "): worst |err| / tol = ", worst);
        });
    }
}

TEST_CASE("neumf: initialised from pretrained gmf and ncf_mlp scores alpha gmf + (1 - alpha) mlp") {
    param_store<double, B> sg(1), sm(2), sn(3);
    models::gmf<double, B> g(sg, {.name = "gmf", .n_users = n_users, .n_items = n_items, .dim = 4});
    models::ncf_mlp<double, B> m(sm, {.name = "ncf_mlp", .n_users = n_users, .n_items = n_items, .dim = 3, .hidden = {5, 4}});
    models::neumf<double, B> n(sn, neumf_opt());
    // Non-trivial output biases (the linear init already gives random weights).
    g.out->bias.value()[0] = 0.3;
    m.out->bias.value()[0] = -0.7;
    const auto users = ids("batch/users"), items = ids("batch/items");
    for (double alpha : {0.5, 0.25}) {
        n.init_from(g, m, alpha);
        infer_ctx<double, B> ctx;
        const var<double> yn = n.score(ctx, users, items), yg = g.score(ctx, users, items), ym = m.score(ctx, users, items);
        double worst = 0;
        for (int k = 0; k < 6; ++k) {
            const double ref = alpha * yg.data[k] + (1 - alpha) * ym.data[k];
            worst = std::max(worst, std::fabs(yn.data[k] - ref));
            CHECK(yn.data[k] == doctest::Approx(ref).epsilon(1e-12));
        }
        MESSAGE("alpha ", alpha, ": max |neumf - (a gmf + (1-a) mlp)| = ", worst);
    }
    param_store<double, B> sx(4);
    models::gmf<double, B> wrong(sx, {.name = "gmf", .n_users = n_users, .n_items = n_items, .dim = 3});
    xrec_test::expect_error([&] { n.init_from(wrong, m); }, {"neumf 'neumf'", "init_from", "dim 3"});
}

TEST_CASE("cf models: save/load predicts bit-identically; train and infer contexts agree") {
    const auto users = ids("batch/users"), items = ids("batch/items");
    for (const auto& c : cases()) {
        xrec_test::temp_file file("cf_" + c + ".safetensors", "");
        std::vector<float> before;
        {
            param_store<float, B> s(11);
            with_model<float>(c, s, [&](const auto& m) {
                load_case_params(c, s);
                infer_ctx<float, B> ictx;
                const var<float> y = m.score(ictx, users, items);
                before.assign(y.data, y.data + y.numel());
                train_ctx<float, B> tctx;
                const var<float> yt = m.score(tctx, users, items);
                INFO(c);
                CHECK(std::memcmp(yt.data, y.data, sizeof(float) * 6) == 0);
                io::save_checkpoint(file.str(), s);
            });
        }
        param_store<float, B> s(12);  // another seed: different initial values
        with_model<float>(c, s, [&](const auto& m) {
            infer_ctx<float, B> ictx;
            const var<float> y0 = m.score(ictx, users, items);
            INFO(c);
            CHECK(std::memcmp(y0.data, before.data(), sizeof(float) * 6) != 0);
            io::load_checkpoint(file.str(), s);
            ictx.reset();
            const var<float> y = m.score(ictx, users, items);
            CHECK(std::memcmp(y.data, before.data(), sizeof(float) * 6) == 0);
        });
    }
}

TEST_CASE("mf and two_tower: item_embeddings() serve the scores by a dot product") {
    param_store<double, B> s(5);
    models::mf<double, B> m(s, {.n_users = n_users, .n_items = n_items, .dim = 4});
    models::two_tower<double, B> tt(s, tt_opt());
    infer_ctx<double, B> ctx;
    tt.export_item_embeddings(ctx, 3);  // chunks of 3: 3 + 3 + 1 items
    const auto qm = m.item_embeddings(), qt = tt.item_embeddings();
    REQUIRE(qm.s == shape{n_items, 4});
    REQUIRE(qt.s == shape{n_items, 4});
    for (std::int64_t u = 0; u < n_users; ++u) {
        std::vector<std::int64_t> us(n_items, u), is(n_items);
        for (std::int64_t i = 0; i < n_items; ++i) is[static_cast<std::size_t>(i)] = i;
        ctx.reset();
        const var<double> sm = m.score(ctx, us, is), st = tt.score(ctx, us, is);
        const var<double> pu = m.user_vectors(ctx, std::span<const std::int64_t>(us).first(1));
        const var<double> tu = tt.user_vectors(ctx, std::span<const std::int64_t>(us).first(1));
        for (std::int64_t i = 0; i < n_items; ++i) {
            double dm = 0, dt = 0;
            for (int k = 0; k < 4; ++k) {
                dm += pu.data[k] * qm(i, k);
                dt += tu.data[k] * qt(i, k);
            }
            CHECK(sm.data[i] == doctest::Approx(dm).epsilon(1e-13));
            CHECK(st.data[i] == doctest::Approx(dt).epsilon(1e-13));
        }
    }
}

TEST_CASE("cf trainer: sample_unseen draws every unseen item uniformly and never a seen one") {
    const std::vector<std::int32_t> seen{0, 3, 4, 5, 9};
    const rng_stream rs{philox{mix_seed(1, 2)}, 0};
    std::vector<int> count(10, 0);
    const int draws = 50000;
    for (int k = 0; k < draws; ++k) {
        const std::int32_t j = train::sample_unseen(seen, 10, rs, static_cast<std::uint64_t>(k));
        REQUIRE(j >= 0);
        REQUIRE(j < 10);
        ++count[static_cast<std::size_t>(j)];
        CHECK(j == train::sample_unseen(seen, 10, rs, static_cast<std::uint64_t>(k)));  // a pure function
    }
    double worst = 0;
    for (int i = 0; i < 10; ++i) {
        const bool is_seen = std::binary_search(seen.begin(), seen.end(), i);
        if (is_seen) CHECK(count[static_cast<std::size_t>(i)] == 0);
        else worst = std::max(worst, std::fabs(count[static_cast<std::size_t>(i)] / (draws / 5.0) - 1));
    }
    MESSAGE("5 unseen items, ", draws, " draws: worst relative deviation from uniform ", worst);
    CHECK(worst < 0.03);
    const std::vector<std::int32_t> all{0, 1, 2};
    CHECK(train::sample_unseen(all, 3, rs, 0) == -1);
}

TEST_CASE("cf trainer: a pure function of the seed; the batch log holds every batch; NaN stops with names") {
    const synthetic d = make_synthetic(40, 60, 4, 6, 1);
    const train::user_items data{d.offsets, d.items, d.n_items};
    for (auto kind : {train::cf_loss::bpr, train::cf_loss::bce}) {
        auto run = [&](std::uint64_t seed, const std::string& log) {
            param_store<float, B> s(7);
            models::neumf<float, B> m(s, {.n_users = d.n_users, .n_items = d.n_items, .gmf_dim = 4, .mlp_dim = 4, .hidden = {8, 4}});
            train::cf_trainer<models::neumf<float, B>> t(
                m, s, {.loss = kind, .epochs = 2, .batch_size = 32, .seed = seed, .batch_log = log});
            t.fit(data);
            std::vector<float> w;
            for (auto& nt : s.named_tensors()) w.insert(w.end(), nt.data, nt.data + nt.s.numel());
            return w;
        };
        xrec_test::temp_file log("cf_batches.bin", "");
        const auto a = run(5, log.str()), b = run(5, ""), c = run(6, "");
        CHECK(a == b);
        CHECK(a != c);
        // The log: the magic, then per batch (kind, epoch, rows) and rows * 3 values.
        std::ifstream in(log.path, std::ios::binary);
        char magic[8];
        in.read(magic, 8);
        CHECK(std::string(magic, 8) == "XRCFBAT1");
        const std::int64_t per = kind == train::cf_loss::bce ? 5 : 1;
        std::int64_t rows = 0, batches = 0, positives = 0;
        std::int32_t head[3];
        while (in.read(reinterpret_cast<char*>(head), sizeof head)) {
            CHECK(head[0] == static_cast<std::int32_t>(kind));
            std::vector<std::int32_t> u(static_cast<std::size_t>(head[2])), it(u.size()), third(u.size());
            in.read(reinterpret_cast<char*>(u.data()), head[2] * 4);
            in.read(reinterpret_cast<char*>(it.data()), head[2] * 4);
            in.read(reinterpret_cast<char*>(third.data()), head[2] * 4);
            for (std::size_t r = 0; r < u.size(); ++r) {
                const auto& seen = d.seen[static_cast<std::size_t>(u[r])];
                bool label = true;
                if (kind == train::cf_loss::bce) {
                    float y;
                    std::memcpy(&y, &third[r], 4);
                    label = y == 1.0f;
                } else {
                    CHECK(!std::binary_search(seen.begin(), seen.end(), third[r]));  // the negative is unseen
                }
                CHECK(std::binary_search(seen.begin(), seen.end(), it[r]) == label);
                positives += label;
            }
            rows += head[2];
            ++batches;
        }
        const auto np = static_cast<std::int64_t>(d.items.size());
        CHECK(rows == 2 * np * per);
        CHECK(positives == 2 * np);
        CHECK(batches == 2 * ((np * per + 31) / 32));
        MESSAGE(std::string(train::cf_loss_name(kind)), ": ", batches, " batches, ", rows, " rows logged over 2 epochs");
    }
    // in_batch_softmax: the log holds every positive once per epoch with log q = log(count / total).
    {
        xrec_test::temp_file log("cf_softmax_batches.bin", "");
        param_store<float, B> s(7);
        models::two_tower<float, B> m(s, {.n_users = d.n_users, .n_items = d.n_items, .id_dim = 4,
                                          .user_tower = {.hidden = {}, .out = 0}, .item_tower = {.hidden = {}, .out = 0}});
        train::cf_trainer<models::two_tower<float, B>> t(
            m, s, {.loss = train::cf_loss::in_batch_softmax, .epochs = 1, .batch_size = 50, .batch_log = log.str()});
        t.fit(data);
        std::ifstream in(log.path, std::ios::binary);
        char magic[8];
        in.read(magic, 8);
        std::int32_t head[3];
        std::int64_t rows = 0;
        double worst = 0;
        while (in.read(reinterpret_cast<char*>(head), sizeof head)) {
            CHECK(head[0] == 2);
            std::vector<std::int32_t> u(static_cast<std::size_t>(head[2])), it(u.size());
            std::vector<double> lq(u.size());
            in.read(reinterpret_cast<char*>(u.data()), head[2] * 4);
            in.read(reinterpret_cast<char*>(it.data()), head[2] * 4);
            in.read(reinterpret_cast<char*>(lq.data()), head[2] * 8);
            for (std::size_t r = 0; r < u.size(); ++r) {
                const double ref = std::log(t.item_counts()[static_cast<std::size_t>(it[r])] / static_cast<double>(d.items.size()));
                worst = std::max(worst, std::fabs(lq[r] - ref));
            }
            rows += head[2];
        }
        CHECK(rows == static_cast<std::int64_t>(d.items.size()));
        CHECK(worst < 1e-6);
    }
    // NaN: a poisoned row makes the loss and its gradient NaN; the error names the table.
    param_store<float, B> s(7);
    models::mf<float, B> m(s, {.n_users = d.n_users, .n_items = d.n_items, .dim = 4});
    s.table(1).row(3)[0] = std::nanf("");
    train::cf_trainer<models::mf<float, B>> t(m, s, {.epochs = 1, .batch_size = 16});
    xrec_test::expect_error([&] { t.fit(data); }, {"cf_trainer: non-finite value at step", "(epoch 1)", "nothing was applied"});
}

TEST_CASE("cf trainer: learning on a synthetic clustered problem (HR@10 among 99 sampled negatives)") {
    // 8 clusters of 25 items; a user's items all lie in its cluster, so a model that learns
    // the clusters puts the held-out item in its top 10 of 100 candidates (12 of them from
    // its cluster on average) far more often than chance (0.10).
    const synthetic d = make_synthetic(160, 200, 8, 10, 3);
    const train::user_items data{d.offsets, d.items, d.n_items};
    std::vector<std::int64_t> scratch;
    SUBCASE("mf with BPR") {
        param_store<float, B> s(1);
        models::mf<float, B> m(s, {.n_users = d.n_users, .n_items = d.n_items, .dim = 16});
        infer_ctx<float, B> ictx;
        auto score = [&](std::int64_t u, std::span<const std::int32_t> c, std::span<float> out) {
            train::score_user_items(m, ictx, u, c, out, scratch);
        };
        const double before = hit_rate_at_10(d, score);
        train::cf_trainer<models::mf<float, B>> t(m, s, {.loss = train::cf_loss::bpr, .epochs = 30, .batch_size = 64,
                                                         .sparse_lr = 0.01});
        const auto h = t.fit(data);
        const double after = hit_rate_at_10(d, score);
        MESSAGE("mf bpr: HR@10 ", before, " -> ", after, ", loss ", h.front().loss, " -> ", h.back().loss);
        CHECK(h.back().loss < 0.5 * h.front().loss);
        CHECK(after > 0.5);
    }
    SUBCASE("neumf with BCE, 4 negatives") {
        param_store<float, B> s(1);
        models::neumf<float, B> m(s, {.n_users = d.n_users, .n_items = d.n_items, .gmf_dim = 8, .mlp_dim = 8, .hidden = {16, 8}});
        infer_ctx<float, B> ictx;
        auto score = [&](std::int64_t u, std::span<const std::int32_t> c, std::span<float> out) {
            train::score_user_items(m, ictx, u, c, out, scratch);
        };
        const double before = hit_rate_at_10(d, score);
        train::cf_trainer<models::neumf<float, B>> t(m, s, {.loss = train::cf_loss::bce, .epochs = 15, .batch_size = 128,
                                                            .dense_lr = 0.005, .sparse_lr = 0.005});
        const auto h = t.fit(data);
        const double after = hit_rate_at_10(d, score);
        MESSAGE("neumf bce: HR@10 ", before, " -> ", after, ", loss ", h.front().loss, " -> ", h.back().loss);
        CHECK(after > 0.5);
    }
    SUBCASE("two_tower with the in-batch softmax and log-Q") {
        param_store<float, B> s(1);
        models::two_tower<float, B> m(s, {.n_users = d.n_users, .n_items = d.n_items, .id_dim = 16,
                                          .user_tower = {.hidden = {32}, .out = 16}, .item_tower = {.hidden = {32}, .out = 16}});
        infer_ctx<float, B> ictx;
        auto score = [&](std::int64_t u, std::span<const std::int32_t> c, std::span<float> out) {
            train::score_user_items(m, ictx, u, c, out, scratch);
        };
        const double before = hit_rate_at_10(d, score);
        train::cf_trainer<models::two_tower<float, B>> t(
            m, s, {.loss = train::cf_loss::in_batch_softmax, .epochs = 20, .batch_size = 64, .dense_lr = 0.003,
                   .sparse_lr = 0.01, .temperature = 0.2});
        const auto h = t.fit(data);
        const double after = hit_rate_at_10(d, score);
        MESSAGE("two_tower in-batch softmax: HR@10 ", before, " -> ", after, ", loss ", h.front().loss, " -> ", h.back().loss);
        CHECK(after > 0.5);
    }
}
