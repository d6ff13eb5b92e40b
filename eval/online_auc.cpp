// online_auc: online learning against offline training on the same events (issue 6).
//
//   online_auc [--rows N] [--test N] [--seeds 5] [--publish_every K] [--batch 256] [--models din,deepfm]
//
// The synthetic shop, sequence setting, click task only (data::make_shop: the true click
// model and the Bayes AUC are known). For each model and seed, the same N training events
// are learned two ways, from the same initial weights (param_store seeded with the seed)
// with the same optimisers (the shop guide's: Adam 2e-3 dense, row-wise Adagrad 0.05
// tables) and mini-batches of --batch rows:
//   offline  train::trainer::fit, one epoch over the events shuffled (the model read from the
//            trainer's store);
//   online   serve::online_learner, one pass over the events in their stream order, a
//            publish to a live serve::predictor every K events, then flush and a last publish
//            (the model read back from the predictor).
// It prints per model the test AUC of each (mean ± standard error over seeds), the per-seed
// difference online - offline, the AUC at the last periodic publish (before the flush), the
// progressive-validation AUC of the online pass (each event scored before it is trained on),
// the Bayes AUC, and the seconds each way. DIN pairs (item_id, hist_item_id), (category,
// hist_category), (brand, hist_brand); DeepFM mean-pools the histories.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "xrec/data/dataset.hpp"
#include "xrec/data/synthetic_shop.hpp"
#include "xrec/metrics/ctr.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/models/din.hpp"
#include "xrec/serve/online.hpp"
#include "xrec/serve/predictor.hpp"
#include "xrec/train/trainer.hpp"

namespace {

using T = float;
using B = xrec::cpu<>;

struct config {
    std::int64_t rows = 200000, test = 50000, seeds = 5, publish_every = 10000, batch = 256;
    std::vector<std::string> models{"din", "deepfm"};
};

xrec::train::trainer_options training(const config& c) {
    xrec::train::trainer_options o;
    o.epochs = 1;
    o.batch_size = c.batch;
    o.shuffle = true;
    o.dense_lr = 2e-3;
    o.sparse = xrec::train::sparse_optimizer::rowwise_adagrad;
    o.sparse_lr = 0.05;
    o.progress = false;
    return o;
}

xrec::models::din<T, B>::options din_options() {
    xrec::models::din<T, B>::options o;
    o.inputs.dim = 8;
    o.pairs = {{"item_id", "hist_item_id"}, {"category", "hist_category"}, {"brand", "hist_brand"}};
    o.mlp.hidden = {200, 80};
    return o;
}
xrec::models::deepfm<T, B>::options deepfm_options() { return {.dim = 8, .dnn = {.hidden = {200, 200}}}; }

template <class Model>
double served_auc(const xrec::serve::predictor<Model, T, B>& p, const xrec::data::ctr_dataset<T>& d) {
    auto s = p.make_session();
    xrec::data::batcher<T> bt(d, p.options().max_batch);
    xrec::batch<T> b;
    std::vector<T> prob, label, out(static_cast<std::size_t>(p.options().max_batch));
    bt.start_epoch(0);
    while (bt.next(b)) {
        const auto st = p.predict(s, b, out);
        XREC_CHECK(st.ok(), "online_auc: predict failed: ", st.message);
        prob.insert(prob.end(), out.begin(), out.begin() + b.rows);
        label.insert(label.end(), b.labels.data, b.labels.data + b.rows);
    }
    return xrec::metrics::auc(std::span<const T>(prob), std::span<const T>(label));
}

struct run {
    double offline = 0, online = 0, stale = 0, progressive = 0, bayes = 0, off_s = 0, on_s = 0;
};

template <class Model>
run compare(const xrec::data::shop& shop, const typename Model::options& mopt, std::uint64_t seed, const config& c) {
    run r;
    r.bayes = shop.bayes_auc_test;
    using clock = std::chrono::steady_clock;
    {
        xrec::param_store<T, B> store(seed);
        Model model(store, shop.layout, mopt);
        xrec::train::trainer<Model, T, B> tr(model, store, training(c));
        const auto t0 = clock::now();
        tr.fit(shop.train);
        r.off_s = std::chrono::duration<double>(clock::now() - t0).count();
        r.offline = tr.evaluate(shop.test).at(0).auc;
    }
    xrec::serve::predictor<Model, T, B> live(shop.layout, mopt, {.max_batch = 512});
    xrec::serve::online_options o;
    o.batch_size = c.batch;
    o.publish_every = c.publish_every;
    o.seed = seed;
    o.train = training(c);
    xrec::serve::online_learner<Model, T, B> learner(live, mopt, o);
    xrec::data::batcher<T> stream(shop.train, 1000);
    xrec::batch<T> b;
    const auto t0 = clock::now();
    stream.start_epoch(0);
    while (stream.next(b)) learner.learn(b);
    learner.flush();
    r.on_s = std::chrono::duration<double>(clock::now() - t0).count();
    r.stale = served_auc(live, shop.test);
    learner.publish();
    r.online = served_auc(live, shop.test);
    r.progressive = learner.progressive().at(0).auc;
    return r;
}

struct summary {
    double mean = 0, se = 0;
};
summary summarize(const std::vector<double>& v) {
    summary s;
    for (auto x : v) s.mean += x;
    s.mean /= static_cast<double>(v.size());
    double ss = 0;
    for (auto x : v) ss += (x - s.mean) * (x - s.mean);
    s.se = v.size() > 1 ? std::sqrt(ss / static_cast<double>(v.size() - 1) / static_cast<double>(v.size())) : 0.0;
    return s;
}

std::vector<std::string> split_list(const std::string& s) {
    std::vector<std::string> out;
    std::size_t a = 0;
    while (a <= s.size()) {
        const std::size_t b = s.find(',', a);
        const std::size_t e = b == std::string::npos ? s.size() : b;
        if (e > a) out.push_back(s.substr(a, e - a));
        a = e + 1;
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    config c;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const bool has = i + 1 < argc;
        if (a == "--rows" && has) c.rows = std::atoll(argv[++i]);
        else if (a == "--test" && has) c.test = std::atoll(argv[++i]);
        else if (a == "--seeds" && has) c.seeds = std::atoll(argv[++i]);
        else if (a == "--publish_every" && has) c.publish_every = std::atoll(argv[++i]);
        else if (a == "--batch" && has) c.batch = std::atoll(argv[++i]);
        else if (a == "--models" && has) c.models = split_list(argv[++i]);
        else {
            std::fprintf(stderr,
                         "usage: online_auc [--rows N] [--test N] [--seeds S] [--publish_every K] [--batch B] "
                         "[--models din,deepfm]\n");
            return 2;
        }
    }
    if (c.rows <= 0 || c.test <= 0 || c.seeds <= 0 || c.publish_every <= 0 || c.batch <= 0) {
        std::fprintf(stderr, "online_auc: --rows, --test, --seeds, --publish_every and --batch must be positive\n");
        return 2;
    }
    std::printf("synthetic shop (sequence, click), %lld train events, %lld test rows, %lld seeds, batch %lld, "
                "publish every %lld events\n",
                static_cast<long long>(c.rows), static_cast<long long>(c.test), static_cast<long long>(c.seeds),
                static_cast<long long>(c.batch), static_cast<long long>(c.publish_every));
    std::vector<std::vector<run>> runs(c.models.size());
    for (std::int64_t s = 1; s <= c.seeds; ++s) {
        xrec::data::shop_options so;
        so.setting = xrec::data::shop_setting::sequence;
        so.purchase_task = false;
        so.train_rows = c.rows;
        so.valid_rows = 0;
        so.test_rows = c.test;
        so.seed = static_cast<std::uint64_t>(s);
        const auto shop = xrec::data::make_shop(so);
        for (std::size_t m = 0; m < c.models.size(); ++m) {
            run r;
            if (c.models[m] == "din")
                r = compare<xrec::models::din<T, B>>(shop, din_options(), static_cast<std::uint64_t>(s), c);
            else if (c.models[m] == "deepfm")
                r = compare<xrec::models::deepfm<T, B>>(shop, deepfm_options(), static_cast<std::uint64_t>(s), c);
            else {
                std::fprintf(stderr, "online_auc: unknown model '%s' (din, deepfm)\n", c.models[m].c_str());
                return 2;
            }
            std::printf("seed %lld %-7s offline %.4f (%.1f s)  online %.4f (%.1f s)  diff %+.4f  last periodic %.4f  "
                        "progressive %.4f  Bayes %.4f\n",
                        static_cast<long long>(s), c.models[m].c_str(), r.offline, r.off_s, r.online, r.on_s,
                        r.online - r.offline, r.stale, r.progressive, r.bayes);
            std::fflush(stdout);
            runs[m].push_back(r);
        }
    }
    std::printf("\n| model | offline AUC (1 shuffled epoch) | online AUC (1 in-order pass) | online - offline | "
                "last periodic publish | progressive AUC | Bayes AUC |\n|---|---|---|---|---|---|---|\n");
    for (std::size_t m = 0; m < c.models.size(); ++m) {
        std::vector<double> off, on, diff, stale, prog, bayes;
        for (const auto& r : runs[m]) {
            off.push_back(r.offline), on.push_back(r.online), diff.push_back(r.online - r.offline);
            stale.push_back(r.stale), prog.push_back(r.progressive), bayes.push_back(r.bayes);
        }
        const summary a = summarize(off), b = summarize(on), d = summarize(diff), st = summarize(stale),
                      p = summarize(prog), by = summarize(bayes);
        std::printf("| %s | %.4f ± %.4f | %.4f ± %.4f | %+.4f ± %.4f | %.4f ± %.4f | %.4f ± %.4f | %.4f |\n",
                    c.models[m].c_str(), a.mean, a.se, b.mean, b.se, d.mean, d.se, st.mean, st.se, p.mean, p.se, by.mean);
    }
    return 0;
}
