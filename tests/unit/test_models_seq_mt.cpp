// The sequence and multi-task CTR models (din, bst, shared_bottom, mmoe, esmm):
//  - finite-difference gradient check (double, default tolerance) of each model's loss with
//    respect to every dense parameter and every embedding-table entry, on a batch with an
//    empty history and histories of lengths 1..4;
//  - parity with the PyTorch peers (tests/peers/seq_mt_models.py) on
//    tests/fixtures/seq_mt_models.safetensors (written by gen_seq_mt_model_fixtures.py):
//    logits, loss, every parameter gradient and Dice's running statistics, in double to
//    |got - ref| <= 1e-10 |ref| + 1e-12 (float: 5e-5 |ref| + 5e-7);
//  - checkpoint round trip: bit-identical predictions after loading into a model built with
//    another seed; infer_ctx equals an evaluating train_ctx; the ctr_model concept holds.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <unistd.h>
#include <string>
#include <vector>

#include "support/random.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/models/bst.hpp"
#include "xrec/models/din.hpp"
#include "xrec/models/esmm.hpp"
#include "xrec/models/mmoe.hpp"
#include "xrec/models/model.hpp"
#include "xrec/models/shared_bottom.hpp"
#include "xrec/testing/gradcheck.hpp"

using namespace xrec;
using B = cpu<>;

static_assert(models::ctr_model<models::din<float, B>, float, B>);
static_assert(models::ctr_model<models::din<double, B>, double, B>);
static_assert(models::ctr_model<models::bst<float, B>, float, B>);
static_assert(models::ctr_model<models::bst<double, B>, double, B>);
static_assert(models::ctr_model<models::shared_bottom<float, B>, float, B>);
static_assert(models::ctr_model<models::shared_bottom<double, B>, double, B>);
static_assert(models::ctr_model<models::mmoe<float, B>, float, B>);
static_assert(models::ctr_model<models::mmoe<double, B>, double, B>);
static_assert(models::ctr_model<models::esmm<float, B>, float, B>);
static_assert(models::ctr_model<models::esmm<double, B>, double, B>);

namespace {

constexpr std::uint64_t file_tag = 0x5e9a;

const io::safetensors_file& fixture() {
    static const io::safetensors_file f = io::safetensors_file::open(XREC_FIXTURE_DIR "/seq_mt_models.safetensors");
    return f;
}

// The fixture generator's layout (gen_seq_mt_model_fixtures.py::layout).
feature_layout make_layout(int tasks) {
    feature_layout l;
    l.tables = {{"user", 4}, {"item", 7}, {"cate", 4}, {"tag", 4}};
    l.sparse = {{"user", 0}, {"item", 1}, {"cate", 2}};
    l.dense = {"d0", "d1"};
    l.sequences = {{"hist_item", 1, 4, pooling::mean}, {"hist_cate", 2, 4, pooling::mean}, {"tags", 3, 3, pooling::sum}};
    l.tasks = tasks == 1 ? std::vector<std::string>{"click"} : std::vector<std::string>{"click", "purchase"};
    l.finish();
    return l;
}

// The fixture's batch (5 rows; history lengths 0, 1, 3, 4, 2), owning its memory.
template <class T>
struct fixture_batch {
    std::vector<std::int64_t> sparse, values[3], offsets[3];
    std::vector<T> dense, labels;
    std::vector<jagged_ids> seqs;
    batch<T> b;
    explicit fixture_batch(int tasks) {
        const auto& f = fixture();
        sparse = f.read<std::int64_t>("batch.sparse");
        dense = f.read<T>("batch.dense");
        labels = f.read<T>(tasks == 1 ? "batch.labels1" : "batch.labels2");
        const char* names[3] = {"hist_item", "hist_cate", "tags"};
        for (int k = 0; k < 3; ++k) {
            values[k] = f.read<std::int64_t>(std::string("batch.") + names[k] + ".values");
            offsets[k] = f.read<std::int64_t>(std::string("batch.") + names[k] + ".offsets");
            seqs.push_back({values[k], offsets[k]});
        }
        b.rows = 5;
        b.sparse = {sparse.data(), shape{5, 3}};
        b.dense = {dense.data(), shape{5, 2}};
        b.sequences = seqs;
        b.labels = {labels.data(), shape{5, tasks}};
        b.check("fixture_batch", make_layout(tasks));
    }
    fixture_batch(const fixture_batch&) = delete;
};

int tasks_of(const std::string& c) { return c.rfind("din", 0) == 0 || c.rfind("bst", 0) == 0 ? 1 : 2; }

const std::vector<std::string> all_cases = {"din_a", "din_b", "bst_a", "bst_b", "bst_c", "shared_bottom", "mmoe_a", "mmoe_b", "esmm"};

// Builds the model of case c (the generator's CASES) in store s and calls f(model).
template <class T, class F>
void with_model(const std::string& c, param_store<T, B>& s, const feature_layout& l, F&& f) {
    using ua = layers::unit_activation;
    const std::vector<models::behaviour_pair> pairs2{{"item", "hist_item"}, {"cate", "hist_cate"}};
    const models::input_options in{3, false, init::normal(0, 0.5)};
    if (c == "din_a" || c == "din_b") {
        typename models::din<T, B>::options o;
        o.inputs = in;
        o.pairs = pairs2;
        if (c == "din_a") {
            o.attention.hidden = {5};
            o.attention.act = ua::sigmoid;
            o.mlp.hidden = {6, 4};
            o.mlp.act = ua::dice;
        } else {
            o.attention.hidden = {5, 3};
            o.attention.act = ua::dice;
            o.attention.softmax = true;
            o.mlp.hidden = {6};
            o.mlp.act = ua::prelu;
        }
        models::din<T, B> m(s, l, o);
        f(m);
    } else if (c == "bst_a" || c == "bst_b" || c == "bst_c") {
        typename models::bst<T, B>::options o;
        o.inputs = in;
        if (c == "bst_a") {
            o.pairs = pairs2;
            o.transformer = {2, 8, 0.0, activation::relu, false, 1e-5};
            o.mlp.hidden = {6};
        } else if (c == "bst_c") {  // the sum readout
            o.pairs = pairs2;
            o.transformer = {1, 6, 0.0, activation::relu, false, 1e-5};
            o.readout = models::bst_readout::sum;
            o.mlp.hidden = {5};
        } else {
            o.pairs = {{"item", "hist_item"}};
            o.max_len = 3;
            o.blocks = 2;
            o.transformer = {1, 5, 0.0, activation::gelu, true, 1e-5};
            o.readout = models::bst_readout::mean;
            o.mlp.hidden = {5};
        }
        models::bst<T, B> m(s, l, o);
        f(m);
    } else if (c == "shared_bottom") {
        typename models::shared_bottom<T, B>::options o;
        o.inputs = in;
        o.bottom.hidden = {6};
        o.tower.hidden = {4};
        models::shared_bottom<T, B> m(s, l, o);
        f(m);
    } else if (c == "mmoe_a" || c == "mmoe_b") {
        typename models::mmoe<T, B>::options o;
        o.inputs = in;
        o.experts = c == "mmoe_a" ? 3 : 2;
        o.expert.hidden = c == "mmoe_a" ? std::vector<std::int64_t>{5} : std::vector<std::int64_t>{4, 3};
        o.gate_bias = c == "mmoe_b";
        o.tower.hidden = {3};
        models::mmoe<T, B> m(s, l, o);
        f(m);
    } else if (c == "esmm") {
        typename models::esmm<T, B>::options o;
        o.inputs = in;
        o.tower.hidden = {5, 3};
        models::esmm<T, B> m(s, l, o);
        f(m);
    } else {
        FAIL("unknown case ", c);
    }
}

// Parity tolerances: |got - ref| <= rel |ref| + abs.
template <class T>
struct tolerance {
    static constexpr double rel = 1e-10, abs = 1e-12;
};
template <>
struct tolerance<float> {
    static constexpr double rel = 5e-5, abs = 5e-7;  // a whole model of float rounding (bst_b uses 0.14 of it)
};

// Worst |got - ref| / tolerance over the values, with the first misses reported.
template <class T, class G>
double compare(const std::string& what, const G* got, const std::vector<double>& ref) {
    double worst = 0;
    int misses = 0;
    std::string first;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        const double g = static_cast<double>(got[i]);
        const double e = std::fabs(g - ref[i]) / (tolerance<T>::rel * std::fabs(ref[i]) + tolerance<T>::abs);
        worst = std::max(worst, e);
        if (!(e <= 1) && misses++ < 3) first += " [" + std::to_string(i) + "] got " + std::to_string(g) + " ref " + std::to_string(ref[i]);
    }
    INFO(what, ": ", misses, " of ", ref.size(), " outside tolerance;", first);
    CHECK(misses == 0);
    return worst;
}

}  // namespace

TEST_CASE("seq/mt models: gradcheck of the loss w.r.t. every parameter and table entry (double)") {
    for (const auto& c : all_cases) {
        const int tasks = tasks_of(c);
        const feature_layout layout = make_layout(tasks);
        fixture_batch<double> fb(tasks);
        param_store<double, B> store(3);
        with_model<double>(c, store, layout, [&](auto& m) {
            xrec_test::randomize_dense(store, 5, file_tag, 0.5);
            auto rep = testing::gradcheck<B>(
                [&](train_ctx<double, B>& ctx, const std::vector<var<double>>&) {
                    const var<double> y = m(ctx, fb.b);
                    REQUIRE(y.s == shape{5, tasks});
                    return models::model_loss(m, ctx, y, fb.b);
                },
                {}, &store);
            INFO(c, ": ", rep.failures);
            CHECK(rep.ok);
            CHECK(rep.checked > 100);
            MESSAGE(c, " gradcheck: ", rep.checked, " scalars, max abs err ", rep.max_abs_err, ", max rel err ", rep.max_rel_err);
        });
    }
}

TEST_CASE_TEMPLATE("seq/mt models: parity with the PyTorch peers", T, double, float) {
    const auto& f = fixture();
    for (const auto& c : all_cases) {
        const int tasks = tasks_of(c);
        const feature_layout layout = make_layout(tasks);
        fixture_batch<T> fb(tasks);
        param_store<T, B> store(1);
        with_model<T>(c, store, layout, [&](auto& m) {
            // Every xrec tensor comes from the fixture, and every fixture tensor of the case is used.
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
            train_ctx<T, B> ctx;
            const var<T> y = m(ctx, fb.b);
            REQUIRE(y.s == f.shape_of(c + "/logits"));
            double worst = compare<T>(c + " logits", y.data, f.read<double>(c + "/logits"));
            const var<T> loss = models::model_loss(m, ctx, y, fb.b);
            worst = std::max(worst, compare<T>(c + " loss", loss.data, f.read<double>(c + "/loss")));
            store.zero_grad();
            ctx.backward(loss);
            int grads = 0;
            for (auto& e : store.dense_entries()) {
                const std::string key = c + "/grad/" + e.name;
                INFO("gradient of ", e.name);
                REQUIRE(f.find(key) != nullptr);
                worst = std::max(worst, compare<T>(key, store.grads() + e.offset, f.read<double>(key)));
                ++grads;
            }
            for (std::int64_t t = 0; t < store.table_count(); ++t) {
                auto& tb = store.table(t);
                const bool stats = tb.name.find(".running_") != std::string::npos;
                const std::string key = c + (stats ? "/after/" : "/grad/") + tb.name;
                REQUIRE(f.find(key) != nullptr);
                if (stats) {
                    worst = std::max(worst, compare<T>(key, tb.values.data(), f.read<double>(key)));
                    continue;
                }
                std::vector<double> g(static_cast<std::size_t>(tb.rows * tb.dim), 0.0);
                for (std::int64_t j = 0; j < tb.grad.count(); ++j)
                    for (std::int64_t d = 0; d < tb.dim; ++d)
                        g[static_cast<std::size_t>(tb.grad.ids[static_cast<std::size_t>(j)] * tb.dim + d)] += tb.grad.rows[j * tb.dim + d];
                worst = std::max(worst, compare<T>(key, g.data(), f.read<double>(key)));
                ++grads;
            }
            MESSAGE(c, " parity (", std::string(sizeof(T) == 4 ? "float" : "double"), "): ", grads, " gradient tensors; worst error / tolerance = ", worst);
        });
    }
}

TEST_CASE("seq/mt models: checkpoint round trip predicts bit-identically; infer_ctx equals an evaluating train_ctx") {
    namespace fs = std::filesystem;
    for (const auto& c : all_cases) {
        const int tasks = tasks_of(c);
        const feature_layout layout = make_layout(tasks);
        fixture_batch<float> fb(tasks);
        const fs::path path = fs::temp_directory_path() / ("xrec_h4_" + c + "_" + std::to_string(::getpid()) + ".safetensors");
        std::vector<float> before;
        param_store<float, B> store(11);
        with_model<float>(c, store, layout, [&](auto& m) {
            xrec_test::randomize_dense(store, 7, file_tag, 0.5);
            {  // one training-mode forward moves Dice's running statistics off their start
                train_ctx<float, B> tc;
                (void)m(tc, fb.b);
            }
            infer_ctx<float, B> ic;
            const var<float> y = m(ic, fb.b);
            before.assign(y.data, y.data + y.numel());
            train_ctx<float, B> ev;
            ev.set_training(false);
            const var<float> y2 = m(ev, fb.b);
            REQUIRE(y2.numel() == y.numel());
            CHECK(std::memcmp(y2.data, y.data, sizeof(float) * static_cast<std::size_t>(y.numel())) == 0);
            std::vector<float> p(before.size());
            models::model_probabilities(m, y.data, 5, tasks, p.data());
            for (std::size_t i = 0; i < p.size(); ++i) CHECK(p[i] == doctest::Approx(1 / (1 + std::exp(-before[i]))));
            io::save_checkpoint(path.string(), store, {{"model", std::string(m.kind())}});
        });
        param_store<float, B> other(12);
        with_model<float>(c, other, layout, [&](auto& m) {
            infer_ctx<float, B> ic;
            {
                const var<float> y = m(ic, fb.b);
                CHECK(std::memcmp(y.data, before.data(), sizeof(float) * before.size()) != 0);
            }
            ic.reset();
            const auto cfg = io::load_checkpoint(path.string(), other);
            CHECK(cfg.at("model") == std::string(m.kind()));
            const var<float> y = m(ic, fb.b);
            CHECK(std::memcmp(y.data, before.data(), sizeof(float) * before.size()) == 0);
        });
        fs::remove(path);
        MESSAGE(c, ": checkpoint round trip bit-identical on ", before.size(), " logits");
    }
}

TEST_CASE("seq/mt models: a batch whose histories are all empty") {
    // DIN's attended vector and BST's sequence (candidate only) must work with nnz = 0.
    const feature_layout layout = make_layout(1);
    fixture_batch<double> fb(1);
    std::vector<std::int64_t> none;
    std::vector<std::int64_t> zero_off(6, 0);
    std::vector<jagged_ids> seqs = {{none, zero_off}, {none, zero_off}, fb.seqs[2]};
    batch<double> b = fb.b;
    b.sequences = seqs;
    for (const std::string c : {"din_a", "din_b", "bst_a", "bst_b", "bst_c"}) {
        param_store<double, B> store(2);
        with_model<double>(c, store, layout, [&](auto& m) {
            train_ctx<double, B> ctx;
            const var<double> y = m(ctx, b);
            const var<double> loss = models::model_loss(m, ctx, y, b);
            ctx.backward(loss);
            CHECK(std::isfinite(loss.data[0]));
            for (std::int64_t i = 0; i < store.dense_size(); ++i) CHECK(std::isfinite(store.grads()[i]));
            infer_ctx<double, B> ic;
            const var<double> yi = m(ic, b);
            for (std::int64_t i = 0; i < yi.numel(); ++i) CHECK(std::isfinite(yi.data[i]));
        });
    }
}

TEST_CASE("esmm_loss: exact in log space where pCTR * pCVR rounds to 0 or 1") {
    // Rows: (a, c, click, purchase). With a = c = 40, 1 - pCTCVR ~ 2e^-40 (rounds to 0 in the
    // naive product form); with a = c = -40, pCTCVR ~ e^-80.
    const std::vector<double> logits = {40, 40, -40, -40, 40, 40, 0.3, -0.2};
    const std::vector<double> labels = {1, 0, 1, 1, 0, 0, 1, 0};
    train_ctx<double, B> ctx;
    std::vector<double> gl(logits.size(), 0.0);
    std::vector<double> lv = logits;
    const var<double> x = ctx.leaf({lv.data(), shape{4, 2}}, gl.data());
    const var<double> l = models::esmm_loss(ctx, x, ctx.input({labels.data(), shape{4, 2}}));
    ctx.backward(l);
    auto sp = [](double v) { return std::max(v, 0.0) + std::log1p(std::exp(-std::fabs(v))); };
    // Row 0: CTR sp(-40); CTCVR -log(1 - s(40)^2) = -log(e^-40 (2 + e^-40) / (1 + e^-40)^2).
    const double e = std::exp(-40.0);
    const double r0 = sp(-40) + (40 - std::log(2 + e) + 2 * std::log1p(e));
    const double r1 = sp(40) + 2 * sp(40);        // click, purchase at a = c = -40
    const double r2 = sp(40) + (40 - std::log(2 + e) + 2 * std::log1p(e));
    const double s3 = 1 / (1 + std::exp(-0.3)) * (1 / (1 + std::exp(0.2)));
    const double r3 = sp(-0.3) - std::log(1 - s3);
    const double ref = (r0 + r1 + r2 + r3) / 4;
    CHECK(std::fabs(l.data[0] - ref) <= 1e-12 * ref);
    for (double g : gl) CHECK(std::isfinite(g));
    // Row 1 (click and purchase): dL/da = (s(a) - 1) + (s(a) - 1), dL/dc = s(c) - 1, over 4 rows.
    const double sa = 1 / (1 + std::exp(40.0));
    CHECK(std::fabs(gl[2] - (2 * (sa - 1)) / 4) <= 1e-14);
    CHECK(std::fabs(gl[3] - (sa - 1) / 4) <= 1e-14);
    auto rep = testing::gradcheck<B>(
        [&](train_ctx<double, B>& c2, const std::vector<var<double>>& xs) {
            return models::esmm_loss(c2, xs[0], c2.input({labels.data(), shape{4, 2}}));
        },
        {tensor_view<double>{lv.data(), shape{4, 2}}});
    INFO(rep.failures);
    CHECK(rep.ok);
    MESSAGE("esmm_loss at extreme logits: loss ", l.data[0], " (reference ", ref, "), gradcheck max rel err ", rep.max_rel_err);
}
