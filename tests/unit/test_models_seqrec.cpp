// The sequential recommenders (sasrec, gru4rec), loss::bpr_max and the sequence trainers:
//  - finite-difference gradient checks in double (default tolerance) of bpr_max and of both
//    models' losses with respect to every parameter (and gru4rec's carried state; sasrec in
//    both block forms);
//  - parity with the PyTorch peers (tests/peers/seqrec_models.py) on
//    tests/fixtures/seqrec_models.safetensors (gen_seqrec_model_fixtures.py): sasrec states,
//    scores, BCE and softmax-CE losses and every gradient, for both block forms (pre_norm
//    and the SASRec reference code's); gru4rec states, scores, BPR-max
//    and CE losses and every gradient; bpr_max alone; double and float;
//  - the causal mask hides the future: changing a later item leaves earlier outputs
//    bit-identical;
//  - session-parallel batching on a hand example (inputs, targets, resets, shrinking);
//  - checkpoint round trip predicts bit-identically; infer_ctx equals an evaluating train_ctx;
//  - learning: both models learn a synthetic next-item rule through their trainers.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "support/checks.hpp"
#include "support/random.hpp"
#include "support/temp_file.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/loss/bpr_max.hpp"
#include "xrec/models/gru4rec.hpp"
#include "xrec/models/sasrec.hpp"
#include "xrec/serve/top_k.hpp"
#include "xrec/testing/gradcheck.hpp"
#include "xrec/train/seq_trainer.hpp"

using namespace xrec;
using B = cpu<>;

namespace {

constexpr std::uint64_t file_tag = 0x5e95;

const io::safetensors_file& fixture() {
    static const io::safetensors_file f = io::safetensors_file::open(XREC_FIXTURE_DIR "/seqrec_models.safetensors");
    return f;
}

models::sasrec_options small_sasrec(double dropout = 0, models::sasrec_block block = models::sasrec_block::pre_norm) {
    models::sasrec_options o;
    o.block = block;
    o.n_items = 9;
    o.dim = 4;
    o.max_len = 5;
    o.blocks = 2;
    o.heads = 2;
    o.dropout = dropout;
    return o;
}

models::gru4rec_options small_gru(bool b) {
    models::gru4rec_options o;
    o.n_items = 8;
    o.hidden = b ? 4 : 5;
    o.layers = b ? 2 : 1;
    o.embedding = b ? 3 : 0;
    return o;
}

// Parity tolerances: |got - ref| <= rel |ref| + abs.
template <class T>
struct tolerance {
    static constexpr double rel = 1e-10, abs = 1e-12;
};
template <>
struct tolerance<float> {
    static constexpr double rel = 5e-5, abs = 5e-6;
};

template <class T, class G>
double compare(const std::string& what, const G* got, const std::vector<double>& ref) {
    double worst = 0;
    int misses = 0;
    std::string first;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        const double g = static_cast<double>(got[i]);
        const double e = std::fabs(g - ref[i]) / (tolerance<T>::rel * std::fabs(ref[i]) + tolerance<T>::abs);
        worst = std::max(worst, e);
        if (!(e <= 1) && misses++ < 3)
            first += " [" + std::to_string(i) + "] got " + std::to_string(g) + " ref " + std::to_string(ref[i]);
    }
    INFO(what, ": ", misses, " of ", ref.size(), " outside tolerance;", first);
    CHECK(misses == 0);
    return worst;
}

// Loads every parameter of `store` from <case>/param/<name>; checks none is left over.
template <class T>
void load_params(const std::string& c, param_store<T, B>& store) {
    const auto& f = fixture();
    std::int64_t used = 0, listed = 0;
    for (auto& t : store.named_tensors()) {
        const std::string key = c + "/param/" + t.name;
        INFO("tensor ", t.name);
        REQUIRE(f.find(key) != nullptr);
        CHECK(f.shape_of(key) == t.s);
        f.read_into<T>(key, t.data, t.s.numel());
        ++used;
    }
    for (const auto& ti : f.tensors()) listed += ti.name.rfind(c + "/param/", 0) == 0;
    CHECK(used == listed);
}

// Compares every dense gradient of `store` with <prefix>/grad/<name>.
template <class T>
double compare_grads(const std::string& prefix, param_store<T, B>& store) {
    const auto& f = fixture();
    double worst = 0;
    for (auto& e : store.dense_entries()) {
        const std::string key = prefix + "/grad/" + e.name;
        INFO("gradient of ", e.name);
        REQUIRE(f.find(key) != nullptr);
        worst = std::max(worst, compare<T>(key, store.grads() + e.offset, f.read<double>(key)));
    }
    return worst;
}

struct sasrec_batch_fixture {
    std::vector<std::int64_t> ids, targets, negatives;
    sasrec_batch_fixture() {
        const auto& f = fixture();
        ids = f.read<std::int64_t>("batch.ids");
        targets = f.read<std::int64_t>("batch.targets");
        negatives = f.read<std::int64_t>("batch.negatives");
    }
};

}  // namespace

TEST_CASE("bpr_max: gradcheck, PyTorch parity, bad inputs") {
    const auto& f = fixture();
    auto x = f.read<double>("bpr_max/scores");
    const auto t = f.read<std::int64_t>("bpr_max/targets");
    const double reg = f.read<double>("bpr_max/reg")[0];
    auto rep = testing::gradcheck<B>(
        [&](train_ctx<double, B>& ctx, const std::vector<var<double>>& xs) { return loss::bpr_max(ctx, xs[0], t, reg); },
        {tensor_view<double>{x.data(), shape{4, 6}}});
    INFO(rep.failures);
    CHECK(rep.ok);
    CHECK(rep.checked == 24);
    MESSAGE("bpr_max gradcheck: max abs err ", rep.max_abs_err, ", max rel err ", rep.max_rel_err);

    train_ctx<double, B> ctx;
    std::vector<double> gx(24, 0.0);
    const var<double> l = loss::bpr_max(ctx, ctx.leaf(tensor_view<double>{x.data(), shape{4, 6}}, gx.data()), t, reg);
    compare<double>("bpr_max loss", l.data, f.read<double>("bpr_max/loss"));
    ctx.backward(l);
    const double worst = compare<double>("bpr_max grad", gx.data(), f.read<double>("bpr_max/grad"));
    MESSAGE("bpr_max parity: worst error / tolerance = ", worst);

    // A huge score gap stays finite; the regulariser is the softmax-weighted mean square.
    std::vector<double> big = {300, -300, 0};
    const std::vector<std::int64_t> t0 = {0};
    const var<double> lb = loss::bpr_max(ctx, ctx.input(tensor_view<const double>{big.data(), shape{1, 3}}), t0, 0.0);
    CHECK(std::isfinite(lb.item()));
    CHECK(lb.item() == doctest::Approx(0.0).epsilon(1e-12));

    xrec_test::expect_error([&] { (void)loss::bpr_max(ctx, ctx.input(tensor_view<const double>{big.data(), shape{3, 1}}), std::vector<std::int64_t>{0, 0, 0}, 0.1); },
                            {"bpr_max", "C >= 2"});
    xrec_test::expect_error([&] { (void)loss::bpr_max(ctx, ctx.input(tensor_view<const double>{big.data(), shape{1, 3}}), std::vector<std::int64_t>{3}, 0.1); },
                            {"bpr_max", "target 3"});
}

TEST_CASE("sasrec: gradcheck of the BCE and softmax-CE losses w.r.t. every parameter (double), both block forms") {
    for (auto form : {models::sasrec_block::pre_norm, models::sasrec_block::reference}) {
    const bool ref = form == models::sasrec_block::reference;
    sasrec_batch_fixture fb;
    for (int trimmed = 0; trimmed < 2; ++trimmed)
    for (double p : {0.0, 0.3}) {
        if (trimmed) {  // the first two columns padding in every row: state() and the losses skip them
            for (int t = 0; t < 2; ++t) fb.ids[static_cast<std::size_t>(t)] = fb.targets[static_cast<std::size_t>(t)] = -1;
        }
        param_store<double, B> store(3);
        models::sasrec<double, B> m(store, small_sasrec(p, form));
        xrec_test::randomize_dense(store, 5, file_tag, 0.5);
        for (int ce = 0; ce < 2; ++ce) {
            auto rep = testing::gradcheck<B>(
                [&](train_ctx<double, B>& ctx, const std::vector<var<double>>&) {
                    return ce ? m.ce_loss(ctx, fb.ids, fb.targets) : m.bce_loss(ctx, fb.ids, fb.targets, fb.negatives);
                },
                {}, &store);
            INFO(std::string(ref ? "reference" : "pre_norm"), " trimmed ", trimmed, " dropout ", p, std::string(ce ? " ce: " : " bce: "), rep.failures);
            CHECK(rep.ok);
            CHECK(rep.checked > 300);
            MESSAGE("sasrec ", std::string(ref ? "reference " : "pre_norm "), std::string(ce ? "ce" : "bce"), " dropout ", p, std::string(trimmed ? " (leading padding skipped)" : ""), " gradcheck: ", rep.checked, " scalars, max abs err ",
                    rep.max_abs_err, ", max rel err ", rep.max_rel_err);
        }
    }
    }
}

TEST_CASE("gru4rec: gradcheck of BPR-max and CE over candidates w.r.t. every parameter and the carried state (double)") {
    for (bool b : {false, true}) {
        const auto o = small_gru(b);
        param_store<double, B> store(4);
        models::gru4rec<double, B> m(store, o);
        xrec_test::randomize_dense(store, 6, file_tag, 0.5);
        auto h0 = xrec_test::normal_values<double>(o.layers * 3 * o.hidden, 9, file_tag, 0.5);
        const std::vector<std::int64_t> items = {2, 7, 2}, cand = {5, 0, 3, 6, 1, 2}, tg = {0, 1, 2};
        for (int ce = 0; ce < 2; ++ce) {
            auto rep = testing::gradcheck<B>(
                [&](train_ctx<double, B>& ctx, const std::vector<var<double>>& xs) {
                    const auto r = m.step(ctx, items, xs[0]);
                    const var<double> sc = m.scores(ctx, r.out, cand);
                    return ce ? loss::softmax_cross_entropy(ctx, sc, tg) : loss::bpr_max(ctx, sc, tg, 0.5);
                },
                {tensor_view<double>{h0.data(), shape{o.layers, 3, o.hidden}}}, &store);
            INFO(std::string(b ? "b " : "a "), std::string(ce ? "ce: " : "bpr: "), rep.failures);
            CHECK(rep.ok);
            CHECK(rep.checked > 100);
            MESSAGE("gru4rec_", std::string(b ? "b " : "a "), std::string(ce ? "ce" : "bpr-max"), " gradcheck: ", rep.checked,
                    " scalars, max abs err ", rep.max_abs_err, ", max rel err ", rep.max_rel_err);
        }
    }
}

TEST_CASE_TEMPLATE("sasrec: parity with the PyTorch peer (both block forms)", T, double, float) {
    const auto& f = fixture();
    const sasrec_batch_fixture fb;
    for (auto form : {models::sasrec_block::pre_norm, models::sasrec_block::reference}) {
    const std::string c = form == models::sasrec_block::reference ? "sasrec_ref" : "sasrec";
    param_store<T, B> store(1);
    models::sasrec<T, B> m(store, small_sasrec(0, form));
    load_params<T>(c, store);
    double worst = 0;
    {
        train_ctx<T, B> ctx;
        const var<T> st = m.state(ctx, fb.ids);
        REQUIRE(st.s == f.shape_of(c + "/state"));
        worst = std::max(worst, compare<T>(c + " state", st.data, f.read<double>(c + "/state")));
        const var<T> sc = m.scores(ctx, st);
        REQUIRE(sc.s == f.shape_of(c + "/scores"));
        worst = std::max(worst, compare<T>(c + " scores", sc.data, f.read<double>(c + "/scores")));
    }
    for (int ce = 0; ce < 2; ++ce) {
        const std::string pre = c + (ce ? "/ce" : "/bce");
        train_ctx<T, B> ctx;
        store.zero_grad();
        const var<T> l = ce ? m.ce_loss(ctx, fb.ids, fb.targets) : m.bce_loss(ctx, fb.ids, fb.targets, fb.negatives);
        worst = std::max(worst, compare<T>(pre + " loss", l.data, f.read<double>(pre + "/loss")));
        ctx.backward(l);
        worst = std::max(worst, compare_grads<T>(pre, store));
    }
    MESSAGE(c, " parity (", std::string(sizeof(T) == 4 ? "float" : "double"), "): worst error / tolerance = ", worst);
    }
}

TEST_CASE_TEMPLATE("gru4rec: parity with the PyTorch peer", T, double, float) {
    const auto& f = fixture();
    for (bool b : {false, true}) {
        const std::string c = b ? "gru4rec_b" : "gru4rec_a";
        const auto o = small_gru(b);
        param_store<T, B> store(1);
        models::gru4rec<T, B> m(store, o);
        load_params<T>(c, store);
        const auto items = f.read<std::int64_t>(c + "/items");
        const auto cand = f.read<std::int64_t>(c + "/candidates");
        const auto h0 = f.read<T>(c + "/h0");
        const std::vector<std::int64_t> tg = {0, 1, 2};
        double worst = 0;
        for (int ce = 0; ce < 2; ++ce) {
            train_ctx<T, B> ctx;
            store.zero_grad();
            const auto r = m.step(ctx, items, ctx.input(tensor_view<const T>{h0.data(), shape{o.layers, 3, o.hidden}}));
            REQUIRE(r.h.s == f.shape_of(c + "/h"));
            worst = std::max(worst, compare<T>(c + " h", r.h.data, f.read<double>(c + "/h")));
            const var<T> sc = m.scores(ctx, r.out, cand);
            worst = std::max(worst, compare<T>(c + " scores", sc.data, f.read<double>(c + "/scores")));
            const std::string pre = c + (ce ? "/ce" : "/bpr");
            const var<T> l = ce ? loss::softmax_cross_entropy(ctx, sc, tg) : loss::bpr_max(ctx, sc, tg, 0.5);
            worst = std::max(worst, compare<T>(pre + " loss", l.data, f.read<double>(pre + "/loss")));
            ctx.backward(l);
            worst = std::max(worst, compare_grads<T>(pre, store));
        }
        MESSAGE(c, " parity (", std::string(sizeof(T) == 4 ? "float" : "double"), "): worst error / tolerance = ", worst);
    }
}

TEST_CASE("sasrec: the causal mask hides the future; skipping all-padding columns changes nothing") {
    for (auto form : {models::sasrec_block::pre_norm, models::sasrec_block::reference}) {
    INFO("reference form: ", form == models::sasrec_block::reference);
    param_store<double, B> store(8);
    models::sasrec<double, B> m(store, small_sasrec(0, form));
    xrec_test::randomize_dense(store, 2, file_tag, 0.5);
    std::vector<std::int64_t> a = {-1, 3, 1, 4, 1}, b = a;
    b[3] = 7;  // a later item changes
    infer_ctx<double, B> ctx;
    const var<double> ha = m.encode(ctx, a), hb = m.encode(ctx, b);
    const std::int64_t D = 4;
    // Positions 1 and 2 (before the change) are bit-identical; positions 3 and 4 differ.
    for (std::int64_t t = 1; t < 3; ++t)
        for (std::int64_t d = 0; d < D; ++d) CHECK(ha.data[t * D + d] == hb.data[t * D + d]);
    for (std::int64_t t = 3; t < 5; ++t) {
        double diff = 0;
        for (std::int64_t d = 0; d < D; ++d) diff += std::fabs(ha.data[t * D + d] - hb.data[t * D + d]);
        CHECK(diff > 1e-6);
    }
    // Skipping columns that are padding in every row changes nothing: state() (which skips
    // them) equals the last position of the full encode().
    const std::vector<std::int64_t> shorts = {-1, -1, 3, 1, 4, -1, -1, -1, 2, 6};
    const var<double> full = m.encode(ctx, shorts), st = m.state(ctx, shorts);
    for (std::int64_t b = 0; b < 2; ++b)
        for (std::int64_t d = 0; d < D; ++d)
            CHECK(st.data[b * D + d] == doctest::Approx(full.data[(b * 5 + 4) * D + d]).epsilon(1e-12));
    // input_row keeps the last max_len items and left-pads shorter histories.
    std::vector<std::int64_t> hist1 = {5, 6, 2, 8, 3, 0}, hist2 = {1, 6, 2, 8, 3, 0};
    std::vector<std::int64_t> r1(5), r2(5);
    m.input_row<std::int64_t>(hist1, r1);
    m.input_row<std::int64_t>(hist2, r2);
    CHECK(r1 == std::vector<std::int64_t>{6, 2, 8, 3, 0});
    CHECK(r1 == r2);
    std::vector<std::int64_t> shortrow(5);
    m.input_row<std::int64_t>(std::vector<std::int64_t>{4, 2}, shortrow);
    CHECK(shortrow == std::vector<std::int64_t>{-1, -1, -1, 4, 2});
    }
}

TEST_CASE("session_parallel: inputs, targets, resets and shrinking on a hand example") {
    // Sessions (items = their flat positions): s0 = 0 1 2, s1 = 3 4, s2 = 5 (too short),
    // s3 = 6 7 8 9, s4 = 10 11; two slots.
    std::vector<std::int64_t> off = {0, 3, 5, 6, 10, 12};
    std::vector<std::int32_t> items(12);
    for (int i = 0; i < 12; ++i) items[static_cast<std::size_t>(i)] = i;
    train::session_parallel sp(train::seq_rows{off, items}, 2, {0, 1, 2, 3, 4});
    train::session_step st;
    using v = std::vector<std::int64_t>;
    REQUIRE(sp.next(st));
    CHECK(st.input == v{0, 3});
    CHECK(st.target == v{1, 4});
    CHECK(st.from == v{-1, -1});
    REQUIRE(sp.next(st));  // s1 ended: slot 1 skips s2 and starts s3 with a reset
    CHECK(st.input == v{1, 6});
    CHECK(st.target == v{2, 7});
    CHECK(st.from == v{0, -1});
    CHECK(st.session == v{0, 3});
    REQUIRE(sp.next(st));  // s0 ended: slot 0 starts s4
    CHECK(st.input == v{10, 7});
    CHECK(st.target == v{11, 8});
    CHECK(st.from == v{-1, 1});
    REQUIRE(sp.next(st));  // s4 ended with nothing left: the batch shrinks to s3's row
    CHECK(st.input == v{8});
    CHECK(st.target == v{9});
    CHECK(st.from == v{1});
    CHECK_FALSE(sp.next(st));
}

TEST_CASE("gru4rec trainer: the carried state follows `from` (a continued row equals running its session alone)") {
    // With lr 0 the weights stay put, so the state the trainer carries into step 2 for row 0
    // (continuing its session) must equal two plain steps of that session from zero.
    models::gru4rec_options o = small_gru(false);
    param_store<double, B> store(5);
    models::gru4rec<double, B> m(store, o);
    train::seq_train_options to;
    to.lr = 0;
    to.batch_size = 2;
    train::gru4rec_train_options go;
    go.n_sample = 3;
    train::gru4rec_trainer<double, B> tr(m, store, to, go);
    std::vector<std::int64_t> off = {0, 3, 5, 6, 10, 12};
    std::vector<std::int32_t> items = {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3};
    train::session_parallel sp(train::seq_rows{off, items}, 2, {0, 1, 2, 3, 4});
    train::session_step st;
    std::vector<std::int64_t> neg = {4, 5, 6};
    double losses[2];
    for (int k = 0; k < 2; ++k) {
        REQUIRE(sp.next(st));
        losses[k] = tr.step(st, neg);
    }
    // Recompute step 2's loss by hand: row 0 continues s0 (state after item 0), row 1 starts s3.
    infer_ctx<double, B> ic;
    std::vector<double> z(static_cast<std::size_t>(2 * o.hidden), 0.0);
    const auto r1 = m.step(ic, std::vector<std::int64_t>{0, 3}, ic.input(tensor_view<const double>{z.data(), shape{1, 2, o.hidden}}));
    std::vector<double> h(z.size(), 0.0);
    std::copy_n(r1.h.data, o.hidden, h.data());  // row 0 carried, row 1 reset
    const auto r2 = m.step(ic, std::vector<std::int64_t>{1, 6}, ic.input(tensor_view<const double>{h.data(), shape{1, 2, o.hidden}}));
    const std::vector<std::int64_t> cand = {2, 7, 4, 5, 6}, tg = {0, 1};
    const var<double> l = loss::bpr_max(ic, m.scores(ic, r2.out, cand), tg, go.bpreg);
    CHECK(l.item() == doctest::Approx(losses[1]).epsilon(1e-12));
}

TEST_CASE("sasrec and gru4rec: checkpoint round trip predicts bit-identically; infer_ctx equals an evaluating train_ctx") {
    const sasrec_batch_fixture fb;
    {
        param_store<float, B> s1(21), s2(22);
        models::sasrec<float, B> m1(s1, small_sasrec(0.5)), m2(s2, small_sasrec(0.5));
        xrec_test::temp_file tf("sasrec.safetensors", "");
        io::save_checkpoint(tf.str(), s1);
        io::load_checkpoint(tf.str(), s2);
        infer_ctx<float, B> c1, c2;
        const var<float> a = m1.scores(c1, m1.state(c1, fb.ids)), b = m2.scores(c2, m2.state(c2, fb.ids));
        REQUIRE(a.numel() == 27);
        for (std::int64_t i = 0; i < a.numel(); ++i) CHECK(a.data[i] == b.data[i]);
        train_ctx<float, B> tc;
        tc.set_training(false);  // dropout off
        const var<float> c = m1.scores(tc, m1.state(tc, fb.ids));
        for (std::int64_t i = 0; i < a.numel(); ++i) CHECK(a.data[i] == c.data[i]);
        CHECK(m1.item_embeddings().s == shape{9, 4});
    }
    {
        const auto o = small_gru(true);
        param_store<float, B> s1(31), s2(32);
        models::gru4rec<float, B> m1(s1, o), m2(s2, o);
        xrec_test::temp_file tf("gru4rec.safetensors", "");
        io::save_checkpoint(tf.str(), s1);
        io::load_checkpoint(tf.str(), s2);
        std::vector<float> h(static_cast<std::size_t>(o.layers * 3 * o.hidden), 0.25f);
        const std::vector<std::int64_t> items = {1, 4, 7};
        infer_ctx<float, B> c1, c2;
        const auto r1 = m1.step(c1, items, c1.input(tensor_view<const float>{h.data(), shape{o.layers, 3, o.hidden}}));
        const auto r2 = m2.step(c2, items, c2.input(tensor_view<const float>{h.data(), shape{o.layers, 3, o.hidden}}));
        const var<float> a = m1.score_all(c1, r1.out), b = m2.score_all(c2, r2.out);
        REQUIRE(a.numel() == 24);
        for (std::int64_t i = 0; i < a.numel(); ++i) CHECK(a.data[i] == b.data[i]);
        CHECK(m1.item_embeddings().s == shape{8, 4});
    }
}

namespace {
// Synthetic next-item rule: user u walks items start, start + step, start + 2 step, ...
// (mod n) with step 1 for even users and 3 for odd ones, so the next item follows from the
// last two. Returns CSR rows of length 6..11.
void walks(std::int64_t users, std::int64_t n, std::vector<std::int64_t>& off, std::vector<std::int32_t>& items) {
    off = {0};
    items.clear();
    const rng_stream r{philox{mix_seed(17, file_tag)}, 0};
    for (std::int64_t u = 0; u < users; ++u) {
        const auto start = static_cast<std::int64_t>(r.below(static_cast<std::uint64_t>(2 * u), static_cast<std::uint64_t>(n)));
        const auto len = 6 + static_cast<std::int64_t>(r.below(static_cast<std::uint64_t>(2 * u + 1), 6));
        const std::int64_t step = u % 2 ? 3 : 1;
        for (std::int64_t i = 0; i < len; ++i) items.push_back(static_cast<std::int32_t>((start + i * step) % n));
        off.push_back(static_cast<std::int64_t>(items.size()));
    }
}
}  // namespace

TEST_CASE("sasrec and gru4rec learn a synthetic next-item rule through their trainers") {
    const std::int64_t n = 30, users = 400;
    std::vector<std::int64_t> off;
    std::vector<std::int32_t> items;
    walks(users, n, off, items);
    // Leave the last item of each user out for testing.
    std::vector<std::int64_t> toff = {0};
    std::vector<std::int32_t> titems;
    for (std::int64_t u = 0; u < users; ++u) {
        titems.insert(titems.end(), items.begin() + off[static_cast<std::size_t>(u)], items.begin() + off[static_cast<std::size_t>(u) + 1] - 1);
        toff.push_back(static_cast<std::int64_t>(titems.size()));
    }
    const train::seq_rows train_rows{toff, titems};
    for (auto lk : {train::sasrec_loss::bce, train::sasrec_loss::softmax_ce}) {
        param_store<float, B> store(1);
        models::sasrec_options o;
        o.n_items = n;
        o.dim = 16;
        o.max_len = 8;
        o.blocks = 1;
        o.heads = 1;
        o.dropout = 0.1;
        models::sasrec<float, B> m(store, o);
        train::seq_train_options to;
        to.epochs = lk == train::sasrec_loss::bce ? 40 : 20;
        to.batch_size = 32;
        to.lr = 5e-3;
        train::sasrec_trainer<float, B> tr(m, store, to, lk);
        const auto losses = tr.fit(train_rows);
        // Rank each user's held-out item among all n.
        infer_ctx<float, B> ic;
        std::int64_t hits1 = 0, hits5 = 0;
        std::vector<std::int64_t> row(static_cast<std::size_t>(o.max_len));
        for (std::int64_t u = 0; u < users; ++u) {
            ic.reset();
            m.input_row<std::int32_t>(train_rows.row(u), row);
            const var<float> sc = m.scores(ic, m.state(ic, row));
            const std::int32_t target = items[static_cast<std::size_t>(off[static_cast<std::size_t>(u) + 1] - 1)];
            std::int64_t rank = 0;  // items scoring at least as high as the target, ties against it
            for (std::int64_t j = 0; j < n; ++j) rank += j != target && sc.data[j] >= sc.data[target];
            hits1 += rank < 1;
            hits5 += rank < 5;
        }
        const double hr1 = static_cast<double>(hits1) / static_cast<double>(users);
        const double hr5 = static_cast<double>(hits5) / static_cast<double>(users);
        MESSAGE("sasrec ", std::string(lk == train::sasrec_loss::bce ? "bce" : "softmax ce"), ": loss ", losses.front(), " -> ",
                losses.back(), ", on the held-out item HR@1 ", hr1, ", HR@5 ", hr5, " (chance ", 1.0 / n, ", ", 5.0 / n, ")");
        CHECK(losses.back() < losses.front());
        CHECK(hr5 > 0.8);
        CHECK(hr1 > 0.3);
    }
    for (auto lk : {train::gru4rec_loss::bpr_max, train::gru4rec_loss::cross_entropy}) {
        param_store<float, B> store(2);
        models::gru4rec_options o;
        o.n_items = n;
        o.hidden = 24;
        models::gru4rec<float, B> m(store, o);
        train::seq_train_options to;
        to.epochs = 15;
        to.batch_size = 16;
        to.lr = 1e-2;
        train::gru4rec_train_options go;
        go.loss = lk;
        go.n_sample = 8;
        train::gru4rec_trainer<float, B> tr(m, store, to, go);
        const auto losses = tr.fit(train_rows);
        // Next-click accuracy over every click of the full walks (two clicks in: the step is known).
        infer_ctx<float, B> ic;
        std::int64_t hits = 0, events = 0;
        std::vector<float> h(static_cast<std::size_t>(o.hidden));
        for (std::int64_t u = 0; u < users; ++u) {
            std::fill(h.begin(), h.end(), 0.0f);
            for (std::int64_t i = off[static_cast<std::size_t>(u)]; i + 1 < off[static_cast<std::size_t>(u) + 1]; ++i) {
                ic.reset();
                const std::vector<std::int64_t> it = {items[static_cast<std::size_t>(i)]};
                const auto r = m.step(ic, it, ic.input(tensor_view<const float>{h.data(), shape{1, 1, o.hidden}}));
                std::copy_n(r.h.data, o.hidden, h.data());
                if (i == off[static_cast<std::size_t>(u)]) continue;
                const var<float> sc = m.score_all(ic, r.out);
                hits += std::max_element(sc.data, sc.data + n) - sc.data == items[static_cast<std::size_t>(i + 1)];
                ++events;
            }
        }
        const double acc = static_cast<double>(hits) / static_cast<double>(events);
        MESSAGE("gru4rec ", std::string(lk == train::gru4rec_loss::bpr_max ? "bpr-max" : "ce"), ": loss ", losses.front(), " -> ",
                losses.back(), ", next-click HR@1 ", acc, " (chance ", 1.0 / n, ")");
        CHECK(losses.back() < losses.front());
        CHECK(acc > 0.8);
    }
}

TEST_CASE("seq trainer: a non-finite loss stops training naming the epoch and step") {
    param_store<float, B> store(1);
    models::sasrec<float, B> m(store, small_sasrec());
    store.values()[0] = std::numeric_limits<float>::quiet_NaN();  // item 0's embedding
    train::seq_train_options to;
    train::sasrec_trainer<float, B> tr(m, store, to, train::sasrec_loss::softmax_ce);
    const sasrec_batch_fixture fb;
    train::sasrec_batch b;
    b.batch = 3;
    b.len = 5;
    b.ids = fb.ids;
    b.targets = fb.targets;
    b.negatives = fb.negatives;
    xrec_test::expect_error([&] { (void)tr.step(b, 4); }, {"non-finite", "epoch 4", "step 1"});
}

TEST_CASE("sasrec trainer: batch rows, negatives outside the user's items, epochs as pure functions of (seed, epoch)") {
    param_store<float, B> store(1);
    models::sasrec<float, B> m(store, small_sasrec());  // max_len 5, 9 items
    std::vector<std::int64_t> off = {0, 3, 10, 11};
    std::vector<std::int32_t> items = {4, 2, 7, 0, 1, 2, 3, 4, 5, 6, 8};
    const train::seq_rows rows{off, items};
    train::seq_train_options to;
    to.seed = 3;
    train::sasrec_trainer<float, B> tr(m, store, to, train::sasrec_loss::bce);
    train::sasrec_batch b;
    const std::vector<std::int64_t> users = {0, 1, 2};
    tr.make_batch(rows, users, 1, b);
    using v = std::vector<std::int64_t>;
    // User 0 (4 2 7): ids 4 2, targets 2 7, left-padded. User 1 keeps its last 5 steps.
    // User 2 has one item: an empty row.
    CHECK(b.ids == v{-1, -1, -1, 4, 2, /**/ 1, 2, 3, 4, 5, /**/ -1, -1, -1, -1, -1});
    CHECK(b.targets == v{-1, -1, -1, 2, 7, /**/ 2, 3, 4, 5, 6, /**/ -1, -1, -1, -1, -1});
    for (std::size_t i = 0; i < b.ids.size(); ++i) {
        if (b.targets[i] < 0) {
            CHECK(b.negatives[i] == -1);
            continue;
        }
        const auto u = static_cast<std::int64_t>(i / 5);
        const auto row = rows.row(u);
        CHECK(b.negatives[i] >= 0);
        CHECK(b.negatives[i] < 9);
        CHECK(std::find(row.begin(), row.end(), b.negatives[i]) == row.end());
    }
    train::sasrec_batch b2;
    tr.make_batch(rows, users, 1, b2);
    CHECK(b2.negatives == b.negatives);  // same (seed, epoch, user): same negatives
    tr.make_batch(rows, users, 2, b2);
    CHECK(b2.negatives != b.negatives);  // another epoch: new draws
    const auto o1 = train::detail::epoch_order(100, 3, 1), o1b = train::detail::epoch_order(100, 3, 1),
               o2 = train::detail::epoch_order(100, 3, 2);
    CHECK(o1 == o1b);
    CHECK(o1 != o2);
    auto sorted = o1;
    std::sort(sorted.begin(), sorted.end());
    for (std::int64_t i = 0; i < 100; ++i) CHECK(sorted[static_cast<std::size_t>(i)] == i);
}

TEST_CASE("sasrec trainer: length buckets visit every user once per epoch, logged in the peer's format") {
    param_store<float, B> store(1);
    models::sasrec<float, B> m(store, small_sasrec());
    std::vector<std::int64_t> off = {0};
    std::vector<std::int32_t> items;
    for (int u = 0; u < 23; ++u) {
        for (int i = 0; i < 2 + u % 6; ++i) items.push_back((u + i) % 9);
        off.push_back(static_cast<std::int64_t>(items.size()));
    }
    xrec_test::temp_file log("seqlog.bin", "");
    train::seq_train_options to;
    to.batch_size = 4;
    to.length_buckets = 2;
    to.lr = 0;
    to.batch_log = log.str();
    std::vector<std::int64_t> steps;
    {
        train::sasrec_trainer<float, B> tr(m, store, to, train::sasrec_loss::softmax_ce);
        (void)tr.train_epoch(train::seq_rows{off, items}, 1);
        CHECK(tr.steps() == 6);  // 23 users in batches of 4
    }
    std::ifstream in(log.str(), std::ios::binary);
    char magic[8];
    in.read(magic, 8);
    CHECK(std::string(magic, 8) == "XRSEQLOG");
    std::vector<int> seen(23, 0);
    std::int64_t h[3];
    int batches = 0;
    std::int64_t rows_total = 0;
    while (in.read(reinterpret_cast<char*>(h), sizeof h)) {
        REQUIRE(h[0] == 1);
        REQUIRE(h[2] == 5);
        std::vector<std::int64_t> ids(static_cast<std::size_t>(h[1] * 5)), tg(ids.size()), ng(ids.size());
        in.read(reinterpret_cast<char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 8));
        in.read(reinterpret_cast<char*>(tg.data()), static_cast<std::streamsize>(tg.size() * 8));
        in.read(reinterpret_cast<char*>(ng.data()), static_cast<std::streamsize>(ng.size() * 8));
        ++batches;
        rows_total += h[1];
        // Identify each row's user by its last target (the user's last training item) and length.
        for (std::int64_t r = 0; r < h[1]; ++r) {
            std::int64_t len = 0;
            for (int t = 0; t < 5; ++t) len += tg[static_cast<std::size_t>(r * 5 + t)] >= 0;
            for (int u = 0; u < 23; ++u) {
                const auto row = train::seq_rows{off, items}.row(u);
                if (std::min<std::int64_t>(static_cast<std::int64_t>(row.size()) - 1, 5) == len &&
                    row.back() == tg[static_cast<std::size_t>(r * 5 + 4)] && row[row.size() - 2] == ids[static_cast<std::size_t>(r * 5 + 4)])
                    ++seen[static_cast<std::size_t>(u)];
            }
        }
    }
    CHECK(batches == 6);
    CHECK(rows_total == 23);
    for (int u = 0; u < 23; ++u) CHECK(seen[static_cast<std::size_t>(u)] >= 1);
}

TEST_CASE("sasrec: serve::top_k over item_embeddings() returns the model's own best items, history excluded") {
    param_store<float, B> store(12);
    models::sasrec<float, B> m(store, small_sasrec());
    xrec_test::randomize_dense(store, 4, file_tag, 0.5);
    const std::vector<std::int64_t> ids = {-1, 3, 1, 4, 1};
    infer_ctx<float, B> ic;
    const var<float> st = m.state(ic, ids);
    const var<float> sc = m.scores(ic, st);
    const std::vector<std::int32_t> exclude = {1, 3, 4};
    std::vector<std::int32_t> expect;
    for (std::int32_t i = 0; i < 9; ++i)
        if (!std::binary_search(exclude.begin(), exclude.end(), i)) expect.push_back(i);
    std::stable_sort(expect.begin(), expect.end(), [&](std::int32_t a, std::int32_t b) { return sc.data[a] > sc.data[b]; });
    expect.resize(3);
    const auto e = m.item_embeddings();
    std::vector<std::int32_t> got(3);
    std::vector<float> got_s(3);
    serve::top_k_workspace ws;
    serve::top_k<B>(std::span<const float>(st.data, 4), e.data, e.rows(), e.cols(), 3, exclude, got, got_s, ws);
    CHECK(got == expect);
    for (int k = 0; k < 3; ++k) CHECK(got_s[static_cast<std::size_t>(k)] == doctest::Approx(sc.data[got[static_cast<std::size_t>(k)]]).epsilon(1e-5));
}
