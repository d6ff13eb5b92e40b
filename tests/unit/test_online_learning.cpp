// Issue 6: online learning. A learner consumes a stream of labelled events, trains in
// mini-batches and publishes to a live predictor by hot swap; readers see whole versions.
// On the synthetic shop, one in-order online pass ends within 0.01 test AUC of one offline
// (shuffled) epoch over the same events.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "xrec/data/dataset.hpp"
#include "xrec/data/schema.hpp"
#include "xrec/data/synthetic_shop.hpp"
#include "xrec/metrics/ctr.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/serve/online.hpp"
#include "xrec/serve/predictor.hpp"
#include "xrec/train/trainer.hpp"

namespace {

using T = float;
using B = xrec::cpu<>;
using model_t = xrec::models::deepfm<T, B>;
using predictor_t = xrec::serve::predictor<model_t, T, B>;
using learner_t = xrec::serve::online_learner<model_t, T, B>;

model_t::options small_deepfm() { return {.dim = 8, .dnn = {.hidden = {64, 32}}}; }

// The shop guide's optimisation (adam 2e-3 dense, row-wise adagrad 0.05 tables).
xrec::train::trainer_options shop_training() {
    xrec::train::trainer_options o;
    o.epochs = 1;
    o.batch_size = 256;
    o.dense_lr = 2e-3;
    o.sparse = xrec::train::sparse_optimizer::rowwise_adagrad;
    o.sparse_lr = 0.05;
    o.progress = false;
    return o;
}

xrec::data::shop make_small_shop(std::uint64_t seed, std::int64_t train_rows, std::int64_t test_rows) {
    xrec::data::shop_options so;
    so.purchase_task = false;
    so.train_rows = train_rows;
    so.valid_rows = 0;
    so.test_rows = test_rows;
    so.seed = seed;
    return xrec::data::make_shop(so);
}

// Test AUC of the predictor's live weights on `d` (task 0), served in max_batch chunks.
double served_auc(const predictor_t& p, const xrec::data::ctr_dataset<T>& d) {
    auto s = p.make_session();
    xrec::data::batcher<T> bt(d, p.options().max_batch);
    xrec::batch<T> b;
    std::vector<T> prob, label, out(static_cast<std::size_t>(p.options().max_batch));
    bt.start_epoch(0);
    while (bt.next(b)) {
        const auto st = p.predict(s, b, out);
        REQUIRE(st.ok());
        prob.insert(prob.end(), out.begin(), out.begin() + b.rows);
        label.insert(label.end(), b.labels.data, b.labels.data + b.rows);
    }
    return xrec::metrics::auc(std::span<const T>(prob), std::span<const T>(label));
}

double mean(const std::vector<double>& v) {
    double s = 0;
    for (auto x : v) s += x;
    return s / static_cast<double>(v.size());
}
double std_error(const std::vector<double>& v) {
    const double m = mean(v);
    double s = 0;
    for (auto x : v) s += (x - m) * (x - m);
    return std::sqrt(s / static_cast<double>(v.size() - 1) / static_cast<double>(v.size()));
}

}  // namespace

TEST_CASE("online learning: a reader serving during publishes sees only whole published versions") {
    const auto shop = make_small_shop(5, 6000, 64);
    predictor_t live(shop.layout, small_deepfm(), {.max_batch = 16});

    // The fixed request: the first 8 test rows.
    xrec::data::batcher<T> tb(shop.test, 8);
    xrec::batch<T> req;
    tb.start_epoch(0);
    REQUIRE(tb.next(req));

    // After each publish (on the learner's thread) the published version's answer to the
    // request, through a session of the main thread.
    std::map<std::uint64_t, std::vector<T>> answers;
    std::vector<std::uint64_t> versions;
    xrec::serve::session<model_t, T, B> own;
    bool have_session = false;
    xrec::serve::online_options o;
    o.batch_size = 64;
    o.publish_every = 192;  // not a multiple of the batch: a publish waits for the step boundary
    o.train = shop_training();
    o.on_publish = [&](std::uint64_t v) {
        if (!have_session) own = live.make_session(), have_session = true;
        std::vector<T> out(8);
        CHECK(live.predict(own, req, out).ok());
        CHECK(own.last_version() == v);
        answers[v] = out;
        versions.push_back(v);
    };
    learner_t learner(live, small_deepfm(), o);
    CHECK(live.version() == 0);
    const std::uint64_t v1 = learner.publish();  // the initial weights, so that readers can start
    CHECK(v1 == 1);

    struct seen {
        std::uint64_t version;
        std::vector<T> out;
    };
    std::vector<seen> reads;
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> reader_version{0};
    std::atomic<int> refusals{0};
    std::thread reader([&] {
        auto s = live.make_session();
        std::vector<T> out(8);
        while (!stop.load()) {
            if (!live.predict(s, req, out).ok()) {
                ++refusals;
                continue;
            }
            reads.push_back({s.last_version(), out});
            reader_version.store(s.last_version());
        }
    });

    // The reader's first answer comes from version 1 (so that, with the wait at the end, it
    // sees at least two versions however the threads are scheduled).
    for (int i = 0; i < 5000 && reader_version.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    CHECK(reader_version.load() == 1);

    // The stream, in order, in chunks of 100 rows (not aligned with the mini-batches).
    xrec::data::batcher<T> stream(shop.train, 100);
    xrec::batch<T> b;
    stream.start_epoch(0);
    while (stream.next(b)) learner.learn(b);
    learner.flush();
    const std::uint64_t last = learner.publish();
    // Let the reader reach the last version (bounded), so that it has seen at least two.
    for (int i = 0; i < 5000 && reader_version.load() != last; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    stop.store(true);
    reader.join();

    const auto& st = learner.stats();
    CHECK(st.events == 6000);
    CHECK(st.trained == 6000);
    CHECK(st.steps == (6000 + 63) / 64);
    CHECK(learner.pending() == 0);
    CHECK(st.version == last);
    CHECK(live.version() == last);
    // Publishes: the initial one, one per 192 trained rows (at the step boundary that crosses
    // it: every 3 steps), and the final one.
    CHECK(static_cast<std::int64_t>(versions.size()) == st.publishes);
    CHECK(st.publishes == 2 + 5952 / 192);
    for (std::size_t i = 0; i < versions.size(); ++i) CHECK(versions[i] == i + 1);
    // Consecutive versions answer differently (else the check below could not tell them apart).
    std::int64_t differ = 0;
    for (std::uint64_t v = 2; v <= last; ++v) differ += answers[v] != answers[v - 1] ? 1 : 0;
    CHECK(differ == static_cast<std::int64_t>(last) - 1);

    CHECK(refusals.load() == 0);
    REQUIRE(reads.size() > 1);
    std::int64_t mismatches = 0, decreasing = 0;
    std::uint64_t prev = 0;
    std::vector<std::uint64_t> distinct;
    for (const auto& r : reads) {
        const auto it = answers.find(r.version);
        // Every answer is bit for bit the answer of the version it reports: never a mix.
        if (it == answers.end() || std::memcmp(it->second.data(), r.out.data(), 8 * sizeof(T)) != 0) ++mismatches;
        if (r.version < prev) ++decreasing;
        if (distinct.empty() || distinct.back() != r.version) distinct.push_back(r.version);
        prev = r.version;
    }
    CHECK(mismatches == 0);
    CHECK(decreasing == 0);
    CHECK(distinct.size() >= 2);
    CHECK(distinct.front() == 1);
    CHECK(distinct.back() == last);
    // Publishes after the first two copy only the rows the steps touched (the slots hold the chain).
    CHECK(live.full_publishes() == 2);
    CHECK(live.delta_publishes() + 2 == last);
    MESSAGE("hot swap: " << reads.size() << " reads over " << distinct.size() << " of " << last
                         << " versions, all equal to a published version's answer");
}

TEST_CASE("online learning: one in-order online pass matches one offline epoch on the synthetic shop") {
    // Offline: trainer::fit, one epoch over the train rows shuffled (batcher, seed 42), the
    // model read from the trainer's store. Online: the same rows in their stream order, one
    // pass, mini-batches of 256, a publish every 2048 events, then flush and a last publish;
    // the model read back from the predictor. Same model, options, initial weights and
    // optimisers; test AUC on 20k held-out rows of the same shop.
    constexpr std::int64_t n_train = 100000, n_test = 20000;
    std::vector<double> off, on, prog, stale;
    for (std::uint64_t seed : {1, 2, 3}) {
        const auto shop = make_small_shop(seed, n_train, n_test);

        xrec::param_store<T, B> store(seed);
        model_t model(store, shop.layout, small_deepfm());
        auto to = shop_training();
        to.shuffle = true;
        xrec::train::trainer tr(model, store, to);
        tr.fit(shop.train);
        off.push_back(tr.evaluate(shop.test).at(0).auc);

        predictor_t live(shop.layout, small_deepfm(), {.max_batch = 512});
        xrec::serve::online_options o;
        o.batch_size = 256;
        o.publish_every = 2048;
        o.seed = seed;
        o.train = shop_training();
        learner_t learner(live, small_deepfm(), o);
        xrec::data::batcher<T> stream(shop.train, 1000);
        xrec::batch<T> b;
        stream.start_epoch(0);
        while (stream.next(b)) learner.learn(b);
        stale.push_back(served_auc(live, shop.test));  // the last periodic publish
        learner.flush();
        learner.publish();
        on.push_back(served_auc(live, shop.test));
        prog.push_back(learner.progressive().at(0).auc);
        CHECK(learner.stats().publishes == n_train / 2048 + 1);
        CHECK(learner.progressive().at(0).n == n_train);
    }
    std::vector<double> gap;
    for (std::size_t i = 0; i < off.size(); ++i) gap.push_back(on[i] - off[i]);
    MESSAGE("test AUC over seeds 1-3 (mean +- s.e.): offline (1 shuffled epoch) " << mean(off) << " +- " << std_error(off)
            << "; online (1 in-order pass, final publish) " << mean(on) << " +- " << std_error(on)
            << "; online at the last periodic publish " << mean(stale) << " +- " << std_error(stale)
            << "; online - offline " << mean(gap) << " +- " << std_error(gap) << "; progressive AUC " << mean(prog)
            << " +- " << std_error(prog));
    CHECK(std::abs(mean(on) - mean(off)) < 0.01);
    for (double a : on) CHECK(a > 0.70);  // it learned (0.5: nothing; Bayes about 0.80)
}

TEST_CASE("online learning: raw events through a schema with a growing vocabulary reset recycled rows") {
    auto s = xrec::data::schema::from_spec("click=label; user=sparse(hash=64); item=sparse(grow=8, admit=1); cat=sparse(hash=8)");
    s.bind({"click", "user", "item", "cat"});
    s.start_fit();
    s.finish_fit();  // hashed and growing tables need no counts
    predictor_t live(s.layout(), {.dim = 4, .dnn = {.hidden = {8}}}, {.max_batch = 4});
    xrec::serve::online_options o;
    o.batch_size = 1000;  // no step while the rows are checked below
    o.publish_every = 0;
    o.train = shop_training();
    learner_t learner(live, {.dim = 4, .dnn = {.hidden = {8}}}, o, &s);

    auto& emb = learner.store().table(learner.store().find_table("deepfm.embedding"));
    const std::int64_t item0 = s.layout().tables[1].offset;
    for (std::int64_t id = 1; id <= 8; ++id) CHECK(emb.row(item0 + id)[0] != 0.0f);  // random initial rows

    std::vector<std::string> cols;
    auto event = [&](int i, const std::string& label) {
        cols = {label, "u" + std::to_string(i % 5), "item" + std::to_string(i), "c" + std::to_string(i % 3)};
        std::vector<std::string_view> v(cols.begin(), cols.end());
        const xrec::data::raw_record r{"events", i + 1, std::span<const std::string_view>(v), {}, nullptr};
        return learner.learn(r);
    };
    for (int i = 0; i < 20; ++i) CHECK(event(i, i % 2 ? "1" : "0"));  // 20 items through 8 rows: 12 recycled
    CHECK(s.growing(1).evictions() == 12);
    CHECK(learner.stats().recycled_rows == 12);
    CHECK(learner.pending() == 20);
    // Each of the 8 rows was recycled at least once (LRU over distinct items), so all are zero.
    for (std::int64_t id = 1; id <= 8; ++id)
        for (std::int64_t d = 0; d < emb.dim; ++d) CHECK(emb.row(item0 + id)[d] == 0.0f);
    CHECK_THROWS_AS(event(99, "maybe"), xrec::error);  // a bad label, refused by a throwing policy
    CHECK(learner.pending() == 20);

    learner.flush();
    CHECK(learner.stats().steps == 1);
    CHECK(live.version() == 0);  // publish_every 0 and no interval: nothing published by itself
    CHECK(learner.publish() == 1);
    CHECK(learner.progressive().at(0).n == 20);

    // A layout that is not the predictor's is refused.
    auto other = xrec::data::schema::from_spec("click=label; user=sparse(hash=32); item=sparse(grow=8); cat=sparse(hash=8)");
    other.bind({"click", "user", "item", "cat"});
    other.start_fit();
    other.finish_fit();
    CHECK_THROWS_AS(learner_t(live, {.dim = 4, .dnn = {.hidden = {8}}}, o, &other), xrec::error);
}

TEST_CASE("online learning: bad rows are refused before queueing; non-finite weights are never published; timed publishes") {
    const auto shop = make_small_shop(9, 2000, 16);
    predictor_t live(shop.layout, small_deepfm(), {.max_batch = 16});
    xrec::serve::online_options o;
    o.batch_size = 50;
    o.publish_every = 0;
    o.publish_interval = std::chrono::milliseconds(1);
    o.train = shop_training();
    learner_t learner(live, small_deepfm(), o);

    xrec::data::batcher<T> bt(shop.train, 10);
    xrec::batch<T> b;
    bt.start_epoch(0);
    REQUIRE(bt.next(b));
    // An id outside its table, labels missing, a NaN label: refused, nothing queued.
    std::vector<std::int64_t> ids(b.sparse.data, b.sparse.data + b.sparse.numel());
    ids[3] = shop.layout.total_rows() + 5;
    xrec::batch<T> bad = b;
    bad.sparse = {ids.data(), b.sparse.s};
    CHECK_THROWS_AS(learner.learn(bad), xrec::error);
    bad = b;
    bad.labels = {};
    CHECK_THROWS_AS(learner.learn(bad), xrec::error);
    std::vector<T> labels(b.labels.data, b.labels.data + b.rows);
    labels[9] = std::nanf("");
    bad = b;
    bad.labels = {labels.data(), b.labels.s};
    CHECK_THROWS_AS(learner.learn(bad), xrec::error);
    xrec::data::encoded_row<T> row;
    row.sparse.assign(7, 0);
    row.dense.assign(2, 0);
    row.labels.assign(1, 1);
    row.sparse[1] = -1;
    CHECK_THROWS_AS(learner.learn(row), xrec::error);
    CHECK(learner.pending() == 0);
    CHECK(learner.stats().events == 0);

    // Timed publishing: 1 ms apart, checked at step boundaries.
    for (int i = 0; i < 5; ++i) {
        for (int k = 0; k < 5; ++k) {
            REQUIRE(bt.next(b));
            learner.learn(b);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
    CHECK(learner.stats().steps == 5);
    CHECK(learner.stats().publishes >= 4);  // the first step may come within 1 ms of construction
    CHECK(live.version() == learner.stats().version);

    // A non-finite weight: the publish is refused and the live version stays.
    const std::uint64_t before = live.version();
    learner.store().values()[0] = std::nanf("");
    CHECK_THROWS_AS(learner.publish(), xrec::error);
    CHECK(live.version() == before);
}
