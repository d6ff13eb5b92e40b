// The CTR model zoo (models/{lr,fm,deepfm,wide_deep,nfm,dcn,dcn_v2,autoint}.hpp):
//  1. finite-difference gradient check in double of each model's loss (models::model_loss)
//     w.r.t. every dense parameter and every embedding-table entry, on a tiny layout;
//  2. parity with the PyTorch peers (tests/peers/ctr_models.py) on
//     tests/fixtures/ctr_models.safetensors (written by gen_ctr_model_fixtures.py): logits,
//     loss and every gradient, |got - ref| <= 1e-10 |ref| + 1e-12 in double (and within
//     1e-5 |ref| + 1e-7 in float), parameters loaded by their
//     xrec names (every fixture tensor of a case is consumed: the name map is one to one);
//  3. save_checkpoint / load_checkpoint into a model built with another seed, then
//     bit-identical predictions on an infer_ctx;
//  4. both contexts (train_ctx, infer_ctx) run every model, a train_ctx in evaluation mode
//     predicts exactly what the infer_ctx predicts, and every model satisfies
//     models::ctr_model; multi-task layouts are refused.
// The tiny layout (mirrored by the fixture generator): tables of 5, 4, 3, 6 rows, sparse
// fields a, b, c and the wide_only cross field x, 2 dense fields, batches of 6 rows, D = 4.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/models/autoint.hpp"
#include "xrec/models/dcn.hpp"
#include "xrec/models/dcn_v2.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/models/fm.hpp"
#include "xrec/models/lr.hpp"
#include "xrec/models/model.hpp"
#include "xrec/models/nfm.hpp"
#include "xrec/models/wide_deep.hpp"
#include "xrec/testing/gradcheck.hpp"

using namespace xrec;
using B = cpu<>;

#define XREC_CTR_ASSERT_MODEL(M)                                           \
    static_assert(models::ctr_model<models::M<float, B>, float, B>);       \
    static_assert(models::ctr_model<models::M<double, B>, double, B>);
XREC_CTR_ASSERT_MODEL(lr)
XREC_CTR_ASSERT_MODEL(fm)
XREC_CTR_ASSERT_MODEL(deepfm)
XREC_CTR_ASSERT_MODEL(wide_deep)
XREC_CTR_ASSERT_MODEL(nfm)
XREC_CTR_ASSERT_MODEL(dcn)
XREC_CTR_ASSERT_MODEL(dcn_v2)
XREC_CTR_ASSERT_MODEL(autoint)
#undef XREC_CTR_ASSERT_MODEL

namespace {

const io::safetensors_file& fixture() {
    static const io::safetensors_file f = io::safetensors_file::open(XREC_FIXTURE_DIR "/ctr_models.safetensors");
    return f;
}

feature_layout tiny_layout(std::vector<std::string> tasks = {"click"}) {
    feature_layout l;
    l.tables = {{"t0", 5}, {"t1", 4}, {"t2", 3}, {"t3", 6}};
    l.sparse = {{"a", 0}, {"b", 1}, {"c", 2}, {"x", 3, true}};
    l.dense = {"d0", "d1"};
    l.tasks = std::move(tasks);
    l.finish();
    return l;
}

// The fixture's batch, converted to T, owning its memory.
template <class T>
struct batch_data {
    std::vector<std::int64_t> sparse = fixture().read<std::int64_t>("batch/sparse");
    std::vector<T> dense = fixture().read<T>("batch/dense");
    std::vector<T> labels = fixture().read<T>("batch/labels");
    batch<T> view() const {
        batch<T> b;
        b.rows = static_cast<std::int64_t>(labels.size());
        b.sparse = {sparse.data(), shape{b.rows, 4}};
        b.dense = {dense.data(), shape{b.rows, 2}};
        b.labels = {labels.data(), shape{b.rows, 1}};
        return b;
    }
};

const std::vector<std::string>& cases() {
    static const std::vector<std::string> c{"lr",     "fm",     "deepfm",         "wide_deep", "nfm", "nfm_bn",
                                            "dcn",    "dcn_v2", "dcn_v2_low_rank_stacked", "dcn_v2_mixture",
                                            "autoint", "autoint_pure"};
    return c;
}

// Builds the model of case c in store s (the options the fixture generator uses) and calls
// f(model); the model kind is the parameter prefix.
template <class T, class F>
void with_model(const std::string& c, param_store<T, B>& s, const feature_layout& l, F&& f) {
    using namespace models;
    const layers::mlp_options h{.hidden = {6, 5}};
    if (c == "lr") f(lr<T, B>(s, l, {}));
    else if (c == "fm") f(fm<T, B>(s, l, {.dim = 4}));
    else if (c == "deepfm") f(deepfm<T, B>(s, l, {.dim = 4, .dnn = h}));
    else if (c == "wide_deep") f(wide_deep<T, B>(s, l, {.dim = 4, .dnn = h}));
    else if (c == "nfm") f(nfm<T, B>(s, l, {.dim = 4, .dnn = h}));
    else if (c == "nfm_bn") f(nfm<T, B>(s, l, {.dim = 4, .dnn = {.hidden = {6}}, .bi_batch_norm = true}));
    else if (c == "dcn") f(dcn<T, B>(s, l, {.dim = 4, .cross_layers = 2, .dnn = h}));
    else if (c == "dcn_v2") f(dcn_v2<T, B>(s, l, {.dim = 4, .cross = {.layers = 2}, .dnn = h}));
    else if (c == "dcn_v2_low_rank_stacked")
        f(dcn_v2<T, B>(s, l, {.dim = 4, .cross = {.layers = 2, .kind = layers::cross_kind::low_rank, .rank = 3},
                              .dnn = h, .structure = dcn_structure::stacked}));
    else if (c == "dcn_v2_mixture")
        f(dcn_v2<T, B>(s, l,
                       {.dim = 4,
                        .cross = {.layers = 2, .kind = layers::cross_kind::mixture, .rank = 3, .experts = 2},
                        .dnn = h}));
    else if (c == "autoint") f(autoint<T, B>(s, l, {.dim = 4, .attention_layers = 2, .heads = 2, .dnn = h}));
    else if (c == "autoint_pure")
        f(autoint<T, B>(s, l, {.dim = 4, .attention_layers = 2, .heads = 2, .attention_bias = true, .dnn = {}}));
    else FAIL("unknown case ", c);
}

// Loads every tensor of the store from "<case>/param/<name>"; returns how many it loaded.
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

// Worst |got - ref| / (rel |ref| + abs) over the elements; reports misses.
template <class G>
double compare(const std::string& what, const G* got, const std::vector<double>& ref, double rel = 1e-10,
               double abs = 1e-12) {
    int misses = 0;
    double worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        const double err = std::fabs(static_cast<double>(got[i]) - ref[i]), tol = rel * std::fabs(ref[i]) + abs;
        worst = std::max(worst, err / tol);
        if (!(err <= tol) && misses++ < 3)
            MESSAGE(what, " [", i, "]: got ", static_cast<double>(got[i]), " ref ", ref[i]);
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

struct temp_file {
    std::filesystem::path path;
    explicit temp_file(const std::string& stem) {
        std::random_device rd;
        path = std::filesystem::temp_directory_path() /
               ("xrec_" + stem + "_" + std::to_string(rd()) + "_" + std::to_string(rd()) + ".safetensors");
    }
    ~temp_file() {
        std::error_code ec;
        std::filesystem::remove(path, ec);
    }
};

}  // namespace

TEST_CASE("ctr models: finite-difference gradient check of the loss (double)") {
    const feature_layout l = tiny_layout();
    const batch_data<double> data;
    const batch<double> bt = data.view();
    for (const auto& c : cases()) {
        param_store<double, B> s(3);
        with_model<double>(c, s, l, [&](const auto& m) {
            load_case_params(c, s);  // random weights of scale 0.5 everywhere (no zero-init tables)
            auto f = [&](auto& ctx, auto&) { return models::model_loss(m, ctx, m(ctx, bt), bt); };
            const auto rep = testing::gradcheck<B>(f, {}, &s);
            INFO(c, ": ", rep.failures);
            CHECK(rep.ok);
            CHECK(rep.checked == s.parameter_count());
            MESSAGE(c, ": ", rep.checked, " scalars checked, max abs err ", rep.max_abs_err, ", max rel err ",
                    rep.max_rel_err);
        });
    }
}

// double: |got - ref| <= 1e-10 |ref| + 1e-12; float (the same float64 references):
// |got - ref| <= 1e-5 |ref| + 1e-7 (the tolerance of test_parity_layers.cpp).
TEST_CASE_TEMPLATE("ctr models: parity with the PyTorch peers", T, double, float) {
    const double rel = sizeof(T) == 8 ? 1e-10 : 1e-5, abs = sizeof(T) == 8 ? 1e-12 : 1e-7;
    const feature_layout l = tiny_layout();
    const batch_data<T> data;
    const batch<T> bt = data.view();
    auto compare = [&](const std::string& what, const auto* got, const std::vector<double>& ref) {
        return ::compare(what, got, ref, rel, abs);
    };
    for (const auto& c : cases()) {
        param_store<T, B> s(3);
        with_model<T>(c, s, l, [&](const auto& m) {
            const std::size_t loaded = load_case_params(c, s);
            INFO(c);
            CHECK(loaded == fixture_count(c + "/param/"));  // the name map is one to one
            train_ctx<T, B> ctx;
            const var<T> y = m(ctx, bt);
            REQUIRE(y.s == shape{bt.rows, 1});
            const var<T> loss = models::model_loss(m, ctx, y, bt);
            s.zero_grad();
            ctx.backward(loss);
            double worst = compare(c + " logits", y.data, fixture().read<double>(c + "/logits"));
            worst = std::max(worst, compare(c + " loss", loss.data, fixture().read<double>(c + "/loss")));
            std::size_t grads = 0;
            for (auto& e : s.dense_entries()) {
                const std::string key = c + "/grad/" + std::string(m.kind()) + e.name.substr(e.name.find('.'));
                REQUIRE(fixture().find(key) != nullptr);
                worst = std::max(worst, compare(key, s.grads() + e.offset, fixture().read<double>(key)));
                ++grads;
            }
            for (std::int64_t t = 0; t < s.table_count(); ++t) {
                const auto& tb = s.table(t);
                const std::string key = c + "/grad/" + tb.name;
                if (!fixture().find(key)) {  // a buffer (batch norm running statistics): no gradient
                    CHECK(tb.grad.count() == 0);
                    continue;
                }
                worst = std::max(worst, compare(key, dense_table_grad(tb).data(), fixture().read<double>(key)));
                ++grads;
            }
            CHECK(grads == fixture_count(c + "/grad/"));
            const std::string type = sizeof(T) == 8 ? "double" : "float";
            MESSAGE(c, " (", type, "): loss ", static_cast<double>(loss.data[0]), ", ", grads,
                    " gradients, worst error / tolerance ", worst);
        });
    }
}

TEST_CASE("ctr models: checkpoint round trip predicts bit-identically") {
    const feature_layout l = tiny_layout();
    const batch_data<float> data;
    const batch<float> bt = data.view();
    for (const auto& c : cases()) {
        INFO(c);
        temp_file file("ctr_" + c);
        param_store<float, B> s1(11), s2(22);
        std::vector<float> y1, before, after;
        with_model<float>(c, s1, l, [&](const auto& m) {
            train_ctx<float, B> tc;  // one training forward: batch norm running statistics move
            (void)m(tc, bt);
            io::save_checkpoint(file.path.string(), s1, {{"model", std::string(m.kind())}});
            infer_ctx<float, B> ic;
            const var<float> y = m(ic, bt);
            y1.assign(y.data, y.data + y.numel());
        });
        with_model<float>(c, s2, l, [&](const auto& m) {
            infer_ctx<float, B> ic;
            const var<float> y0 = m(ic, bt);
            before.assign(y0.data, y0.data + y0.numel());
            const auto cfg = io::load_checkpoint(file.path.string(), s2);
            CHECK(cfg.at("model") == m.kind());
            ic.reset();
            const var<float> y = m(ic, bt);
            after.assign(y.data, y.data + y.numel());
        });
        REQUIRE(y1.size() == after.size());
        CHECK(std::memcmp(y1.data(), after.data(), y1.size() * sizeof(float)) == 0);
        CHECK(before != y1);  // the other seed predicted something else before loading
    }
}

TEST_CASE("ctr models: both contexts; evaluation mode equals inference; multi-task refused") {
    const feature_layout l = tiny_layout();
    const batch_data<float> data;
    const batch<float> bt = data.view();
    for (const auto& c : cases()) {
        INFO(c);
        param_store<float, B> s(5);
        with_model<float>(c, s, l, [&](const auto& m) {
            train_ctx<float, B> tc;
            const var<float> y = m(tc, bt);
            REQUIRE(y.s == shape{bt.rows, 1});
            const var<float> loss = models::model_loss(m, tc, y, bt);
            s.zero_grad();
            tc.backward(loss);
            CHECK(std::isfinite(loss.data[0]));
            bool any_grad = false;
            for (std::int64_t i = 0; i < s.dense_size(); ++i) any_grad = any_grad || s.grads()[i] != 0.0f;
            CHECK(any_grad);
            tc.reset();
            tc.set_training(false);
            const var<float> ye = m(tc, bt);
            infer_ctx<float, B> ic;
            const var<float> yi = m(ic, bt);
            REQUIRE(yi.s == shape{bt.rows, 1});
            CHECK(std::memcmp(ye.data, yi.data, static_cast<std::size_t>(yi.numel()) * sizeof(float)) == 0);
            std::vector<float> p(static_cast<std::size_t>(yi.numel()));
            models::model_probabilities(m, yi.data, bt.rows, 1, p.data());
            for (float v : p) CHECK((v > 0.0f && v < 1.0f));
        });
        const feature_layout two = tiny_layout({"click", "buy"});
        param_store<float, B> s2(5);
        CHECK_THROWS_AS(with_model<float>(c, s2, two, [](const auto&) {}), error);
    }
}

TEST_CASE("ctr models: gradient check with pooled sequence fields (double)") {
    // The tiny layout plus a mean-pooled history over a new table t4 and a weighted
    // sum-pooled multi-hot field sharing table t0 with sparse field a: ctr_inputs pools both
    // into field vectors (deep part) and into the first-order term. Row 2 has an empty
    // history (a zero field vector).
    feature_layout l = tiny_layout();
    l.tables.push_back({"t4", 7});
    l.sequences = {{"hist", 4, 3, pooling::mean, false}, {"tags", 0, 2, pooling::sum, true}};
    l.finish();
    const batch_data<double> data;
    batch<double> bt = data.view();
    const std::int64_t t4 = l.tables[4].offset;
    const std::vector<std::int64_t> hist_ids{t4 + 1, t4 + 6, t4 + 1, t4 + 3, t4 + 0, t4 + 2, t4 + 5, t4 + 4, t4 + 6};
    const std::vector<std::int64_t> hist_off{0, 2, 3, 3, 5, 7, 9};
    const std::vector<std::int64_t> tag_ids{0, 3, 4, 1, 2, 2, 0};
    const std::vector<std::int64_t> tag_off{0, 1, 3, 4, 5, 6, 7};
    const std::vector<double> tag_w{0.5, 1.5, -0.7, 1.0, 2.0, 0.3, 1.2};
    const std::vector<jagged_ids> seqs{{hist_ids, hist_off}, {tag_ids, tag_off}};
    const std::vector<std::span<const double>> weights{{}, tag_w};
    bt.sequences = seqs;
    bt.sequence_weights = weights;
    bt.check("test", l);
    for (const auto& c : cases()) {
        param_store<double, B> s(3);
        with_model<double>(c, s, l, [&](const auto& m) {
            // Random values of scale 0.5 everywhere (running variances positive).
            const rng_stream rs{philox{mix_seed(17, 1)}, 0};
            std::uint64_t k = 0;
            for (auto& t : s.named_tensors())
                for (std::int64_t i = 0; i < t.s.numel(); ++i, ++k)
                    t.data[i] = t.name.ends_with("running_var") ? 0.5 + rs.uniform(k) : 0.5 * rs.normal(k);
            auto f = [&](auto& ctx, auto&) { return models::model_loss(m, ctx, m(ctx, bt), bt); };
            const auto rep = testing::gradcheck<B>(f, {}, &s);
            INFO(c, ": ", rep.failures);
            CHECK(rep.ok);
            CHECK(rep.checked == s.parameter_count());
            MESSAGE(c, " + sequences: ", rep.checked, " scalars checked, max abs err ", rep.max_abs_err);
        });
    }
}
