// train/trainer.hpp and train/progress.hpp on a planted logistic data set with a tiny
// logistic-regression model written here to the model contract: learning, early stopping
// with the best checkpoint, NaN/Inf stops that leave the checkpoint alone, determinism,
// multi-task metrics, progress output.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "support/checks.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/data/dataset.hpp"
#include "xrec/metrics/ctr.hpp"
#include "xrec/models/inputs.hpp"
#include "xrec/models/model.hpp"
#include "xrec/ops/concat.hpp"
#include "xrec/train/progress.hpp"
#include "xrec/train/trainer.hpp"

namespace fs = std::filesystem;
using T = float;
using CPU = xrec::cpu<>;

namespace {

/// Logistic regression on the shared input block: logit = sum of the first-order weights of
/// the ids + dense . w + bias. With `tasks` = 2 a second, independent block gives the second
/// column (a minimal multi-task model).
struct tiny_lr_options {
    std::int64_t tasks = 1;
};
struct tiny_lr {
    using options = tiny_lr_options;
    std::vector<xrec::models::ctr_inputs<T, CPU>> in;

    tiny_lr(xrec::param_store<T, CPU>& s, const xrec::feature_layout& l, options o = {}) {
        in.reserve(static_cast<std::size_t>(o.tasks));
        for (std::int64_t t = 0; t < o.tasks; ++t)
            in.emplace_back(s, t == 0 ? "lr" : "lr" + std::to_string(t), l, xrec::models::input_options{.dim = 1, .first_order = true});
    }
    template <class Ctx>
    xrec::var<T> operator()(Ctx& ctx, const xrec::batch<T>& b) const {
        if (in.size() == 1) return in[0].first_order(ctx, b);
        std::vector<xrec::var<T>> cols;
        for (auto& i : in) cols.push_back(i.first_order(ctx, b));
        return xrec::ops::concat(ctx, std::span<const xrec::var<T>>(cols));
    }
    std::string_view kind() const { return "tiny_lr"; }
};
static_assert(xrec::models::ctr_model<tiny_lr, T, CPU>);

/// A planted logistic world: 3 id fields (user 40, item 60, category 8) and 3 dense
/// features; click logit = -0.4 + user + item + category effects + dense . (0.8, -0.5, 0.3).
/// With tasks = 2 the second label uses the negated item effect. `p` is the true
/// probability of task 0 of each row; groups are the users.
struct planted {
    xrec::feature_layout layout;
    xrec::data::ctr_dataset<T> train, valid;
    std::vector<double> valid_p;
    std::vector<double> valid_p2;
};

planted make_planted(std::int64_t n_train, std::int64_t n_valid, std::int64_t tasks = 1) {
    planted w;
    auto& L = w.layout;
    L.tables = {{"user", 40}, {"item", 60}, {"cat", 8}};
    L.sparse = {{"user", 0}, {"item", 1}, {"cat", 2}};
    L.dense = {"d0", "d1", "d2"};
    L.tasks = tasks == 1 ? std::vector<std::string>{"click"} : std::vector<std::string>{"click", "buy"};
    L.finish();
    const xrec::rng_stream world{xrec::philox{xrec::mix_seed(77, 1)}, 0};
    auto effect = [&](std::uint64_t table, std::int64_t id) { return 0.8 * world.normal(table * 1000 + static_cast<std::uint64_t>(id)); };
    const double wd[3] = {0.8, -0.5, 0.3};
    auto fill = [&](xrec::data::ctr_dataset<T>& d, std::int64_t n, std::uint64_t seed, std::vector<double>* p1,
                    std::vector<double>* p2) {
        d = xrec::data::ctr_dataset<T>(L);
        const xrec::rng_stream rs{xrec::philox{xrec::mix_seed(seed, 2)}, 0};
        std::uint64_t k = 0;
        for (std::int64_t i = 0; i < n; ++i) {
            const std::int64_t u = 1 + static_cast<std::int64_t>(rs.below(k++, 39));
            const std::int64_t it = 1 + static_cast<std::int64_t>(rs.below(k++, 59));
            const std::int64_t c = 1 + it % 7;
            double logit = -0.4 + effect(0, u) + effect(1, it) + effect(2, c);
            double logit2 = -0.4 + effect(0, u) - effect(1, it);
            T dense[3];
            for (int j = 0; j < 3; ++j) {
                const double x = rs.normal(k++);
                dense[j] = static_cast<T>(x);
                logit += wd[j] * x;
                logit2 += wd[2 - j] * x;
            }
            const double p = 1 / (1 + std::exp(-logit)), q = 1 / (1 + std::exp(-logit2));
            const std::int64_t ids[3] = {L.tables[0].offset + u, L.tables[1].offset + it, L.tables[2].offset + c};
            std::vector<T> labels{rs.uniform(k++) < p ? T(1) : T(0)};
            if (tasks == 2) labels.push_back(rs.uniform(k++) < q ? T(1) : T(0));
            d.append(ids, std::span<const T>(dense, 3), {}, labels, u);
            if (p1) p1->push_back(p);
            if (p2) p2->push_back(q);
        }
    };
    fill(w.train, n_train, 1, nullptr, nullptr);
    fill(w.valid, n_valid, 2, &w.valid_p, &w.valid_p2);
    return w;
}

std::vector<double> labels_of(const xrec::data::ctr_dataset<T>& d, std::int64_t task = 0) {
    std::vector<double> y;
    for (std::int64_t i = 0; i < d.size(); ++i) y.push_back(d.label(i, task));
    return y;
}

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct temp_dir {
    fs::path path;
    temp_dir() : path(fs::temp_directory_path() / ("xrec_trainer_" + std::to_string(std::random_device{}()))) {
        fs::create_directories(path);
    }
    ~temp_dir() { fs::remove_all(path); }
    std::string file(const char* n) const { return (path / n).string(); }
};

xrec::train::trainer_options quiet(std::int64_t epochs) {
    xrec::train::trainer_options o;
    o.epochs = epochs;
    o.batch_size = 128;
    o.dense_lr = 0.05;
    o.sparse_lr = 0.2;
    o.progress = false;
    return o;
}

/// A validation source that turns every label over from its `flip_from`-th pass on, so the
/// validation AUC collapses: a deterministic "validation stopped improving".
struct flipping_source {
    xrec::data::batcher<T> inner;
    int passes = 0, flip_from;
    std::vector<T> flipped;
    flipping_source(const xrec::data::ctr_dataset<T>& d, int from) : inner(d, 256), flip_from(from) {}
    std::int64_t size() const { return inner.size(); }
    void start_epoch(std::int64_t e) {
        ++passes;
        inner.start_epoch(e);
    }
    bool next(xrec::batch<T>& b) {
        if (!inner.next(b)) return false;
        if (passes >= flip_from) {
            flipped.assign(b.labels.data, b.labels.data + b.labels.numel());
            for (auto& y : flipped) y = 1 - y;
            b.labels.data = flipped.data();
        }
        return true;
    }
};

/// A training source that poisons one dense value with NaN in batch `at_batch` of epoch
/// index `at_epoch` (counting from 0).
struct poisoned_source {
    xrec::data::batcher<T> inner;
    std::int64_t at_epoch, at_batch, epoch = 0, batch_no = 0;
    std::vector<T> dense;
    poisoned_source(const xrec::data::ctr_dataset<T>& d, std::int64_t e, std::int64_t b) : inner(d, 128), at_epoch(e), at_batch(b) {}
    void start_epoch(std::int64_t e) {
        epoch = e;
        batch_no = 0;
        inner.start_epoch(e);
    }
    bool next(xrec::batch<T>& b) {
        if (!inner.next(b)) return false;
        if (epoch == at_epoch && batch_no == at_batch) {
            dense.assign(b.dense.data, b.dense.data + b.dense.numel());
            dense[4] = std::nanf("");  // row 1, feature d1
            b.dense.data = dense.data();
        }
        ++batch_no;
        return true;
    }
};

}  // namespace

TEST_CASE("trainer: logistic regression learns the planted model; loss falls, valid AUC nears Bayes") {
    const auto w = make_planted(8000, 4000);
    xrec::param_store<T, CPU> store(3);
    tiny_lr model(store, w.layout);
    auto o = quiet(6);
    std::vector<double> losses, aucs;
    o.on_epoch = [&](const xrec::train::epoch_stats& s) {
        losses.push_back(s.train_loss);
        aucs.push_back(s.valid.at(0).auc);
    };
    xrec::train::trainer<tiny_lr, T, CPU> tr(model, store, o);
    const auto h = tr.fit(w.train, w.valid);
    const double bayes = xrec::metrics::auc(w.valid_p, labels_of(w.valid));
    const auto& last = h.epochs.back();
    for (const auto& s : h.epochs)
        std::printf("[trainer] epoch %lld  train loss %.4f  valid auc %.4f gauc %.4f logloss %.4f calib %.3f  %.0f samples/s\n",
                    static_cast<long long>(s.epoch), s.train_loss, s.valid[0].auc, s.valid[0].gauc, s.valid[0].logloss,
                    s.valid[0].calibration, s.samples_per_s);
    std::printf("[trainer] Bayes-optimal valid AUC %.4f; best epoch %lld\n", bayes, static_cast<long long>(h.best_epoch));
    REQUIRE(h.epochs.size() == 6);
    CHECK(losses.size() == 6);
    CHECK(losses.back() < losses.front() - 0.02);
    CHECK(last.valid[0].auc > aucs.front());
    CHECK(last.valid[0].auc > bayes - 0.02);
    CHECK(last.valid[0].auc <= bayes + 0.01);
    CHECK(last.valid[0].calibration == doctest::Approx(1).epsilon(0.1));
    CHECK(!std::isnan(last.valid[0].gauc));
    CHECK(h.steps == 6 * ((8000 + 127) / 128));
    CHECK(tr.global_step() == h.steps);
    // evaluate() on the same rows reproduces the last epoch's validation (same weights: no
    // checkpoint, so nothing was restored).
    const auto ev = tr.evaluate(w.valid);
    CHECK(ev[0].auc == last.valid[0].auc);
    CHECK(ev[0].logloss == last.valid[0].logloss);
    // predict() gives the probabilities these metrics were computed from.
    const auto p = tr.predict(w.valid);
    REQUIRE(p.size() == static_cast<std::size_t>(w.valid.size()));
    CHECK(xrec::metrics::auc(p, std::vector<T>(w.valid.label_column())) == ev[0].auc);

    // The history as chart series (what a demo draws): one value per epoch, x = epoch.
    const auto auc_s = xrec::train::history_series(h, "lr", xrec::train::curve::valid_auc);
    const auto loss_s = xrec::train::history_series(h, "lr", xrec::train::curve::train_loss);
    REQUIRE(auc_s.y.size() == 6);
    CHECK(auc_s.x.back() == 6);
    CHECK(auc_s.y[2] == h.epochs[2].valid[0].auc);
    CHECK(loss_s.y == losses);
    CHECK(std::isnan(xrec::train::history_series(h, "x", xrec::train::curve::valid_auc, /*task*/ 3).y[0]));
    const std::vector<xrec::io::svg_panel> panels{{"valid AUC", "epoch", "AUC", {auc_s}}, {"train loss", "epoch", "loss", {loss_s}}};
    CHECK(xrec::io::render_line_charts(panels).find("<polyline") != std::string::npos);
}

TEST_CASE("trainer: clip_grad_norm bounds an SGD step by lr * max_norm") {
    const auto w = make_planted(1000, 200);
    auto step_norm = [&](double clip) {
        xrec::param_store<T, CPU> store(5);
        tiny_lr model(store, w.layout);
        auto o = quiet(1);
        o.dense = xrec::train::dense_optimizer::sgd;
        o.sparse = xrec::train::sparse_optimizer::sparse_sgd;
        o.dense_lr = o.sparse_lr = 1.0;
        o.clip_grad_norm = clip;
        xrec::train::trainer<tiny_lr, T, CPU> tr(model, store, o);
        auto before = store.named_tensors();
        std::vector<std::vector<T>> old;
        for (auto& t : before) old.emplace_back(t.data, t.data + t.s.numel());
        xrec::data::batcher<T> bt(w.train, 256);
        xrec::batch<T> b;
        bt.start_epoch(0);
        bt.next(b);
        tr.step(b);
        double sq = 0;
        for (std::size_t i = 0; i < before.size(); ++i)
            for (std::int64_t k = 0; k < before[i].s.numel(); ++k) {
                const double d = static_cast<double>(before[i].data[k]) - old[i][static_cast<std::size_t>(k)];
                sq += d * d;
            }
        return std::sqrt(sq);
    };
    const double free = step_norm(0), clipped = step_norm(1e-3);
    std::printf("[trainer] SGD step norm (lr 1): unclipped %.4g, clipped to 1e-3: %.6g\n", free, clipped);
    CHECK(free > 1e-2);
    CHECK(clipped <= 1e-3 * (1 + 1e-4));
    CHECK(clipped > 0.99e-3);
}

TEST_CASE("trainer: early stopping keeps the best epoch's checkpoint, bit for bit") {
    const auto w = make_planted(4000, 2000);
    temp_dir dir;
    const std::string ckpt = dir.file("best.safetensors");
    xrec::param_store<T, CPU> store(5);
    tiny_lr model(store, w.layout);
    auto o = quiet(20);
    o.patience = 2;
    o.checkpoint_path = ckpt;
    o.checkpoint_config = {{"note", "unit test"}};
    o.save_optimizer_state = true;
    flipping_source valid(w.valid, 4);  // validation passes 4, 5, ... see flipped labels
    xrec::data::batcher<T> fixed(w.valid, 500);
    std::vector<std::vector<T>> preds;  // per epoch, on the unflipped validation rows
    xrec::train::trainer<tiny_lr, T, CPU> tr(model, store, o);
    tr.set_on_epoch([&](const xrec::train::epoch_stats&) { preds.push_back(tr.predict(fixed)); });
    xrec::data::batcher<T> train(w.train, 128, true, 9);
    const auto h = tr.fit(train, valid);
    for (const auto& s : h.epochs)
        std::printf("[trainer] early stopping: epoch %lld valid auc %.4f%s\n", static_cast<long long>(s.epoch), s.watched,
                    s.improved ? "  (best, saved)" : "");
    // The best epoch is the argmax of the watched AUC; training stopped `patience` epochs later.
    std::int64_t argmax = 0;
    for (std::size_t i = 0; i < h.epochs.size(); ++i)
        if (h.epochs[i].watched > h.epochs[static_cast<std::size_t>(argmax)].watched) argmax = static_cast<std::int64_t>(i);
    CHECK(h.best_epoch == argmax + 1);
    CHECK(h.best_epoch <= 3);
    CHECK(h.stopped_early);
    CHECK(static_cast<std::int64_t>(h.epochs.size()) == h.best_epoch + 2);
    CHECK(h.epochs.back().watched < 0.5);  // flipped labels

    // A fresh model loaded from the checkpoint predicts exactly what the best epoch did.
    xrec::param_store<T, CPU> store2(99);
    tiny_lr model2(store2, w.layout);
    xrec::train::trainer<tiny_lr, T, CPU> tr2(model2, store2, quiet(1));
    const auto cfg = tr2.load(ckpt);
    CHECK(cfg.at("epoch") == std::to_string(h.best_epoch));
    CHECK(cfg.at("model") == "tiny_lr");
    CHECK(cfg.at("note") == "unit test");
    CHECK(cfg.at("watched_metric") == "auc");
    const auto reloaded = tr2.predict(fixed);
    const auto& best = preds[static_cast<std::size_t>(h.best_epoch - 1)];
    REQUIRE(reloaded.size() == best.size());
    CHECK(std::memcmp(reloaded.data(), best.data(), best.size() * sizeof(T)) == 0);
    CHECK(std::memcmp(reloaded.data(), preds.back().data(), best.size() * sizeof(T)) != 0);  // later epochs differ
    // restore_best: the trained store is back at the best epoch too.
    const auto after = tr.predict(fixed);
    CHECK(std::memcmp(after.data(), best.data(), best.size() * sizeof(T)) == 0);
    // The optimizer state was saved beside the weights and loads back (to resume).
    const auto st = tr.optimizer_state();
    CHECK(!st.empty());
    CHECK(tr2.optimizer_state().size() == st.size());
    tr2.load(ckpt, /*with_optimizer_state=*/true);
    CHECK(tr2.optimizer_state()[0].data[1] + tr2.optimizer_state()[0].data[0] * 16777216.f ==
          static_cast<float>(std::stoll(cfg.at("step"))));
}

TEST_CASE("trainer: a NaN stops training naming step, epoch and parameter; the checkpoint is untouched") {
    const auto w = make_planted(2000, 1000);
    temp_dir dir;
    const std::string ckpt = dir.file("ckpt.safetensors");
    xrec::param_store<T, CPU> store(5);
    tiny_lr model(store, w.layout);
    auto o = quiet(3);
    o.checkpoint_path = ckpt;
    o.restore_best = false;
    std::string before;
    o.on_epoch = [&](const xrec::train::epoch_stats& s) {
        if (s.epoch == 1) before = read_bytes(ckpt);
    };
    xrec::train::trainer<tiny_lr, T, CPU> tr(model, store, o);
    poisoned_source train(w.train, /*epoch index*/ 1, /*batch*/ 3);
    xrec::data::batcher<T> valid(w.valid, 500);
    const std::int64_t per_epoch = (2000 + 127) / 128;  // 16 steps
    std::string msg;
    try {
        tr.fit(train, valid);
    } catch (const xrec::error& e) {
        msg = e.what();
    }
    std::printf("[trainer] NaN input: %s\n", msg.c_str());
    REQUIRE(!msg.empty());
    CHECK(msg.find("step " + std::to_string(per_epoch + 4)) != std::string::npos);
    CHECK(msg.find("epoch 2") != std::string::npos);
    CHECK(msg.find("the loss is nan") != std::string::npos);
    CHECK(msg.find("parameter 'lr.dense_linear.weight' (layer 'lr.dense_linear')") != std::string::npos);
    CHECK(msg.find("untouched") != std::string::npos);
    REQUIRE(!before.empty());
    CHECK(read_bytes(ckpt) == before);
    CHECK(tr.global_step() == per_epoch + 4);
    // Nothing pending: no table gradient left behind, all weights finite.
    for (std::int64_t t = 0; t < store.table_count(); ++t) CHECK(store.table(t).grad.count() == 0);
    for (std::int64_t i = 0; i < store.dense_size(); ++i) CHECK(std::isfinite(store.values()[i]));
}

TEST_CASE("trainer: a learning rate that overflows stops at the first step naming the parameter") {
    const auto w = make_planted(1000, 500);
    xrec::param_store<T, CPU> store(5);
    tiny_lr model(store, w.layout);
    auto o = quiet(1);
    o.dense = xrec::train::dense_optimizer::sgd;
    o.dense_lr = 1e39;  // infinite in float
    xrec::train::trainer<tiny_lr, T, CPU> tr(model, store, o);
    xrec_test::expect_error([&] { tr.fit(w.train); },
                            {"step 1 (epoch 1)", "parameter 'lr.dense_linear.weight'", "learning rate"});
    // A table whose sparse gradient turns non-finite is named by table and row.
    auto o2 = quiet(1);
    o2.sparse = xrec::train::sparse_optimizer::sparse_sgd;
    o2.sparse_lr = 1e39;
    xrec::param_store<T, CPU> s2(5);
    tiny_lr m2(s2, w.layout);
    xrec::train::trainer<tiny_lr, T, CPU> tr2(m2, s2, o2);
    std::string msg;
    try {
        tr2.fit(w.train);
    } catch (const xrec::error& e) {
        msg = e.what();
    }
    std::printf("[trainer] overflowing table update: %s\n", msg.c_str());
    CHECK(msg.find("table 'lr.linear' (layer 'lr') row") != std::string::npos);
    CHECK(msg.find("step 1 ") != std::string::npos);
}

TEST_CASE("trainer: same seed and threads give identical weights; another shuffle seed does not") {
    const auto w = make_planted(3000, 500);
    auto train_once = [&](std::uint64_t seed, int threads) {
        xrec::param_store<T, CPU> store(11);
        tiny_lr model(store, w.layout, {.tasks = 1});
        auto o = quiet(2);
        o.seed = seed;
        o.threads = threads;
        o.dense = xrec::train::dense_optimizer::adamw;
        o.sparse = xrec::train::sparse_optimizer::lazy_adam;
        o.sparse_lr = 0.05;
        xrec::train::trainer<tiny_lr, T, CPU> tr(model, store, o);
        tr.fit(w.train, w.valid);
        std::vector<T> all(store.values(), store.values() + store.dense_size());
        for (std::int64_t t = 0; t < store.table_count(); ++t) {
            const auto& tb = store.table(t);
            all.insert(all.end(), tb.values.data(), tb.values.data() + tb.rows * tb.dim);
        }
        return all;
    };
    const auto a = train_once(1, 2), b = train_once(1, 2), c = train_once(2, 2);
    REQUIRE(a.size() == b.size());
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
    CHECK(std::memcmp(a.data(), c.data(), a.size() * sizeof(T)) != 0);
}

TEST_CASE("trainer: multi-task models get metrics per task; the watched task decides") {
    const auto w = make_planted(6000, 3000, 2);
    xrec::param_store<T, CPU> store(3);
    tiny_lr model(store, w.layout, {.tasks = 2});
    auto o = quiet(4);
    o.watch = xrec::train::metric::logloss;
    o.watch_task = 1;
    xrec::train::trainer tr(model, store, o);  // class template argument deduction: <tiny_lr, float, cpu<>>
    static_assert(std::is_same_v<decltype(tr), xrec::train::trainer<tiny_lr, T, CPU>>);
    const auto h = tr.fit(w.train, w.valid);
    const auto& v = h.epochs.back().valid;
    REQUIRE(v.size() == 2);
    const double b0 = xrec::metrics::auc(w.valid_p, labels_of(w.valid, 0)), b1 = xrec::metrics::auc(w.valid_p2, labels_of(w.valid, 1));
    std::printf("[trainer] two tasks: valid auc %.4f (Bayes %.4f), %.4f (Bayes %.4f); watched logloss[1] %.4f\n", v[0].auc, b0,
                v[1].auc, b1, h.epochs.back().watched);
    CHECK(v[0].auc > b0 - 0.03);
    CHECK(v[1].auc > b1 - 0.03);
    CHECK(h.epochs.back().watched == v[1].logloss);
    CHECK(tr.tasks() == 2);
    // A watched task the model does not have is an error naming it.
    auto bad = quiet(1);
    bad.watch_task = 2;
    xrec::param_store<T, CPU> s2(3);
    tiny_lr m2(s2, w.layout, {.tasks = 2});
    xrec::train::trainer<tiny_lr, T, CPU> tr2(m2, s2, bad);
    xrec_test::expect_error([&] { tr2.fit(w.train, w.valid); }, {"watch_task 2", "2 task(s)"});
}

TEST_CASE("progress: plain lines when not a terminal, in-place redraws when it is") {
    const auto w = make_planted(2560, 500);
    auto capture = [&](int tty) {
        std::FILE* f = std::tmpfile();
        REQUIRE(f);
        xrec::param_store<T, CPU> store(3);
        tiny_lr model(store, w.layout);
        auto o = quiet(2);
        o.progress = true;
        o.progress_opt = {.stream = f, .tty = tty, .min_redraw_s = 0, .line_every_s = 1e9, .line_every_steps = 5};
        xrec::train::trainer<tiny_lr, T, CPU> tr(model, store, o);
        xrec::data::batcher<T> train(w.train, 128), valid(w.valid, 500);  // 20 steps an epoch
        tr.fit(train, valid);
        std::rewind(f);
        std::string out;
        for (int c; (c = std::fgetc(f)) != EOF;) out += static_cast<char>(c);
        std::fclose(f);
        return out;
    };
    const std::string plain = capture(0);
    std::printf("[progress] non-tty output:\n%s", plain.c_str());
    CHECK(plain.find('\r') == std::string::npos);
    // Per epoch: a line at steps 5, 10 and 15 of 20, the final line (step 20 is left to
    // it, so the complete pass is printed once), the validation line.
    CHECK(std::count(plain.begin(), plain.end(), '\n') == 2 * 5);
    CHECK(plain.find("epoch 1/2  25% 640/2560") != std::string::npos);
    CHECK(plain.find("samples/s") != std::string::npos);
    CHECK(plain.find("loss 0.") != std::string::npos);
    CHECK(plain.find("ETA") != std::string::npos);
    CHECK(plain.find("epoch 2 valid: auc 0.") != std::string::npos);
    const std::string tty = capture(1);
    CHECK(std::count(tty.begin(), tty.end(), '\r') == 2 * 21);  // 20 redraws + the final one
    CHECK(std::count(tty.begin(), tty.end(), '\n') == 2 * 2);    // one ended bar + one validation line per epoch
    CHECK(tty.find("[########################]") != std::string::npos);

    xrec::train::progress_bar off("x", 10, {.enabled = false});
    off.update(5, 0.1);
    off.finish();
    CHECK(off.lines() == 0);
    CHECK(xrec::train::format_duration(3725) == "1h02m");
    CHECK(xrec::train::format_duration(125) == "2m05s");
}
