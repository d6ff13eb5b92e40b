// xrec shopping guide: rank a shop's items for its shoppers, trained in process.
//
// With no arguments it generates a synthetic shop (xrec::data::make_shop, "sequence" setting:
// clicks depend on how a candidate matches the shopper's recent behaviour, so the true click
// probability of every row and the Bayes-optimal AUC are known), trains DIN (target attention
// over the behaviour sequence) and DeepFM (the history mean-pooled), prints AUC, group AUC
// by shopper and logloss per epoch against the Bayes optimum, then shows three shoppers'
// recent behaviour and DIN's top 10 items for each, and writes an SVG chart of both models'
// per-epoch AUC and loss. The best DIN checkpoint is reloaded and must score bit-identically.
//
//   xrec_shop_guide [--epochs N] [--threads T] [--out DIR]
//                   [--criteo FILE|DIR]     Criteo TSV (label, I1..I13, C1..C26): DeepFM and DCN-V2
//                   [--movielens DIR]       MovieLens 100K (u.data, u.item): DIN and DeepFM on
//                                           "rated 4 or 5" with each user's earlier movies as history
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "xrec/data/dataset.hpp"
#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"
#include "xrec/data/split.hpp"
#include "xrec/data/synthetic_shop.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/svg.hpp"
#include "xrec/metrics/ctr.hpp"
#include "xrec/models/dcn_v2.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/models/din.hpp"
#include "xrec/train/trainer.hpp"
#include "xrec/version.hpp"

namespace {

namespace fs = std::filesystem;
using T = float;
using B = xrec::cpu<>;
using dataset = xrec::data::ctr_dataset<T>;
using store_t = xrec::param_store<T, B>;

struct settings {
    long epochs = 3;
    int threads = 2;
    std::string out = fs::temp_directory_path().string();
};

/// The optimisation every model here uses (as eval/xrec_eval's shop runs): Adam 2e-3 on the
/// dense weights, row-wise Adagrad 0.05 on the tables, batch 256, a fixed number of epochs.
xrec::train::trainer_options train_options(const settings& st, std::uint64_t seed) {
    xrec::train::trainer_options o;
    o.epochs = st.epochs;
    o.batch_size = 256;
    o.seed = seed;
    o.threads = st.threads;
    o.dense_lr = 2e-3;
    o.sparse = xrec::train::sparse_optimizer::rowwise_adagrad;
    o.sparse_lr = 0.05;
    o.progress = true;  // on stderr: a bar on a terminal, plain lines otherwise
    o.progress_opt.line_every_s = 5;
    return o;
}

xrec::models::din<T, B>::options din_options(const xrec::feature_layout& L) {
    xrec::models::din<T, B>::options o;
    o.inputs.dim = 8;
    o.pairs.clear();
    for (auto [q, h] : {std::pair{"item_id", "hist_item_id"}, {"category", "hist_category"}, {"brand", "hist_brand"},
                        {"genre", "hist_genre"}})
        if (L.find_sparse(q) >= 0 && L.find_sequence(h) >= 0) o.pairs.push_back({q, h});
    o.mlp.hidden = {200, 80};
    return o;
}

/// One model's run: per-epoch history, test metrics, and the trained model kept for ranking.
struct model_run {
    std::string name;
    xrec::train::history hist;
    xrec::metrics::ctr_metrics test;
};

void print_epoch(const std::string& name, const xrec::train::epoch_stats& e, double bayes) {
    const auto& m = e.valid.at(0);
    std::printf("%-7s epoch %lld  train loss %.4f  valid AUC %.4f  gAUC %.4f  logloss %.4f", name.c_str(),
                static_cast<long long>(e.epoch), e.train_loss, m.auc, m.gauc, m.logloss);
    if (std::isfinite(bayes)) std::printf("  (Bayes AUC %.4f, gap %.4f)", bayes, bayes - m.auc);
    std::printf("  %.0f samples/s\n", e.samples_per_s);
    std::fflush(stdout);
}

/// Trains `model` on train (validating on valid every epoch), scores test; returns the run.
template <class Model>
model_run train_model(const std::string& name, Model& model, store_t& store, const dataset& train, const dataset& valid,
                      const dataset& test, const settings& st, double bayes, const std::string& ckpt = "") {
    auto o = train_options(st, 7);
    o.checkpoint_path = ckpt;
    o.on_epoch = [&](const xrec::train::epoch_stats& e) { print_epoch(name, e, bayes); };
    xrec::train::trainer tr(model, store, o);
    model_run r;
    r.name = name;
    std::printf("%s: %lld parameters\n", name.c_str(), static_cast<long long>(store.parameter_count()));
    r.hist = tr.fit(train, valid);
    r.test = tr.evaluate(test).at(0);
    std::printf("%-7s test  AUC %.4f  gAUC %.4f  logloss %.4f  calibration %.3f\n", name.c_str(), r.test.auc, r.test.gauc,
                r.test.logloss, r.test.calibration);
    return r;
}

void write_chart(const std::string& path, const std::string& title, const std::vector<model_run>& runs, double bayes) {
    using xrec::train::curve;
    xrec::io::svg_panel auc{"validation AUC", "epoch", "AUC", {}}, loss{"loss", "epoch", "logloss", {}};
    // One hue per model in both panels: dark for validation, light for training loss.
    static const char* dark[] = {"#1f77b4", "#d62728", "#2ca02c"};
    static const char* light[] = {"#9ecae1", "#fc9fa0", "#a1d99b"};
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const auto& r = runs[i];
        auto a = xrec::train::history_series(r.hist, r.name, curve::valid_auc);
        auto tl = xrec::train::history_series(r.hist, r.name + " train", curve::train_loss);
        auto vl = xrec::train::history_series(r.hist, r.name + " valid", curve::valid_logloss);
        a.color = vl.color = dark[i % 3];
        tl.color = light[i % 3];
        auc.series.push_back(a);
        loss.series.push_back(tl);
        loss.series.push_back(vl);
    }
    if (std::isfinite(bayes) && !runs.empty()) {
        xrec::io::svg_series b{"Bayes optimum", {}, {}, "#555555"};
        for (const auto& e : runs[0].hist.epochs) b.x.push_back(static_cast<double>(e.epoch)), b.y.push_back(bayes);
        auc.series.push_back(b);
    }
    const xrec::io::svg_panel panels[] = {auc, loss};
    xrec::io::write_line_charts(path, panels, {.title = title});
    std::printf("chart: %s\n", path.c_str());
}

/// Indices of the k largest scores, best first.
std::vector<std::int64_t> top_k(const std::vector<T>& score, std::int64_t k) {
    std::vector<std::int64_t> idx(score.size());
    std::iota(idx.begin(), idx.end(), std::int64_t{0});
    k = std::min<std::int64_t>(k, static_cast<std::int64_t>(idx.size()));
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](std::int64_t a, std::int64_t b) {
        return score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(b)];
    });
    idx.resize(static_cast<std::size_t>(k));
    return idx;
}

// ---------------------------------------------------------------------------------------
// The synthetic shop (default)

int run_shop(const settings& st) {
    xrec::data::shop_options so;
    so.setting = xrec::data::shop_setting::sequence;
    so.purchase_task = false;
    so.seed = 1;
    const auto t0 = std::chrono::steady_clock::now();
    const auto shop = xrec::data::make_shop(so);
    double rate = 0;
    for (auto v : shop.train.label_column()) rate += v;
    rate /= static_cast<double>(shop.train.size());
    std::printf("shop: %lld shoppers, %lld items in %lld categories and %lld brands; generated in %.2f s\n",
                static_cast<long long>(so.users), static_cast<long long>(so.items), static_cast<long long>(so.categories),
                static_cast<long long>(so.brands),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    std::printf("impressions: train %lld, valid %lld, test %lld; click rate %.3f; history up to %lld items\n",
                static_cast<long long>(shop.train.size()), static_cast<long long>(shop.valid.size()),
                static_cast<long long>(shop.test.size()), rate, static_cast<long long>(so.max_history));
    std::printf("Bayes-optimal test AUC (true click probabilities): %.4f\n\n", shop.bayes_auc_test);
    const auto& L = shop.layout;

    const std::string ckpt = (fs::path(st.out) / "xrec_shop_guide_din.safetensors").string();
    store_t din_store(1);
    xrec::models::din<T, B> din(din_store, L, din_options(L));
    std::vector<model_run> runs;
    runs.push_back(train_model("DIN", din, din_store, shop.train, shop.valid, shop.test, st, shop.bayes_auc_test, ckpt));
    std::printf("\n");
    store_t fm_store(1);
    xrec::models::deepfm<T, B> deepfm(fm_store, L, {.dim = 8, .dnn = {.hidden = {200, 80}}});
    runs.push_back(train_model("DeepFM", deepfm, fm_store, shop.train, shop.valid, shop.test, st, shop.bayes_auc_test));
    std::printf("\nDIN is %.4f AUC from the optimum, DeepFM with mean-pooled history %.4f\n\n",
                shop.bayes_auc_test - runs[0].test.auc, shop.bayes_auc_test - runs[1].test.auc);

    // Three shoppers: recent behaviour and DIN's top 10 of the items they have not browsed.
    xrec::train::trainer_options po;
    po.progress = false;
    xrec::train::trainer ranker(din, din_store, po);
    int shown = 0;
    for (std::int64_t u = 0; u < so.users && shown < 3; u += 97) {
        const auto& hist = shop.user_history[static_cast<std::size_t>(u)];
        if (hist.size() < 5) continue;
        ++shown;
        std::printf("%s\n  recent behaviour (newest last):\n", shop.describe_user(u).c_str());
        for (std::size_t i = hist.size() > 5 ? hist.size() - 5 : 0; i < hist.size(); ++i)
            std::printf("    %s\n", shop.describe_item(hist[i]).c_str());
        std::vector<std::int64_t> items;
        for (std::int64_t it = 0; it < so.items; ++it)
            if (std::find(hist.begin(), hist.end(), it) == hist.end()) items.push_back(it);
        const auto cand = shop.candidates(u, items);
        const auto score = ranker.predict(cand);
        const auto truth = shop.candidate_probabilities(u, items);
        std::printf("  top 10 (DIN score | true click probability):\n");
        int rank = 0;
        for (auto i : top_k(score, 10))
            std::printf("   %2d. %-70s %.3f | %.3f\n", ++rank, shop.describe_item(items[static_cast<std::size_t>(i)]).c_str(),
                        score[static_cast<std::size_t>(i)], truth[static_cast<std::size_t>(i)]);
        std::printf("\n");
    }

    // The best DIN epoch was checkpointed (temp file + rename); a fresh model loaded from it
    // must score the test set bit-identically to the trained one (restored to that epoch).
    store_t s2(99);
    xrec::models::din<T, B> din2(s2, L, din_options(L));
    const auto cfg = xrec::io::load_checkpoint(ckpt, s2);
    xrec::train::trainer r2(din2, s2, po);
    const auto a = ranker.predict(shop.test), b = r2.predict(shop.test);
    const bool same = a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
    std::printf("best DIN epoch %s saved to %s; reloaded model scores %s\n", cfg.at("epoch").c_str(), ckpt.c_str(),
                same ? "bit-identically" : "DIFFERENTLY");
    write_chart((fs::path(st.out) / "xrec_shop_guide.svg").string(),
                "xrec shopping guide: DIN vs DeepFM on the synthetic shop", runs, shop.bayes_auc_test);
    return same ? 0 : 1;
}

// ---------------------------------------------------------------------------------------
// Criteo

int run_criteo(const settings& st, const std::string& path) {
    // A folder holding criteo_{train,dev,test}.tsv is split as given; a single file is split
    // 80/10/10 by a seeded shuffle.
    auto s = xrec::data::criteo_schema(1);
    dataset train, valid, test;
    if (fs::is_directory(path)) {
        auto tr = xrec::data::criteo_reader((fs::path(path) / "criteo_train.tsv").string());
        s.fit(tr);
        tr.rewind();
        train = s.encode_all<T>(tr).rows;
        auto dv = xrec::data::criteo_reader((fs::path(path) / "criteo_dev.tsv").string());
        valid = s.encode_all<T>(dv, xrec::data::encode_mode::serve).rows;
        auto te = xrec::data::criteo_reader((fs::path(path) / "criteo_test.tsv").string());
        test = s.encode_all<T>(te, xrec::data::encode_mode::serve).rows;
    } else {
        auto r = xrec::data::criteo_reader(path);
        s.fit(r);  // vocabularies from all rows: the split below is for this demo only
        r.rewind();
        const auto all = s.encode_all<T>(r).rows;
        const auto idx = xrec::data::shuffled_indices(all.size(), 1);
        const auto n = static_cast<std::ptrdiff_t>(idx.size());
        train = all.subset({idx.data(), static_cast<std::size_t>(n * 8 / 10)});
        valid = all.subset({idx.data() + n * 8 / 10, static_cast<std::size_t>(n / 10)});
        test = all.subset({idx.data() + n * 8 / 10 + n / 10, static_cast<std::size_t>(n - n * 8 / 10 - n / 10)});
    }
    std::printf("criteo %s: train %lld, valid %lld, test %lld rows; %lld ids in 26 vocabularies\n\n", path.c_str(),
                static_cast<long long>(train.size()), static_cast<long long>(valid.size()),
                static_cast<long long>(test.size()), static_cast<long long>(s.layout().total_rows()));
    std::vector<model_run> runs;
    store_t s1(1);
    xrec::models::deepfm<T, B> deepfm(s1, s.layout(), {.dim = 8, .dnn = {.hidden = {200, 200}}});
    runs.push_back(train_model("DeepFM", deepfm, s1, train, valid, test, st, std::nan("")));
    std::printf("\n");
    store_t s2(1);
    xrec::layers::cross_v2_options cross;
    cross.layers = 3;
    xrec::models::dcn_v2<T, B> dcn(s2, s.layout(), {.dim = 8, .cross = cross, .dnn = {.hidden = {200, 200}}});
    runs.push_back(train_model("DCN-V2", dcn, s2, train, valid, test, st, std::nan("")));
    write_chart((fs::path(st.out) / "xrec_shop_guide_criteo.svg").string(), "xrec: DeepFM vs DCN-V2 on Criteo", runs,
                std::nan(""));
    return 0;
}

// ---------------------------------------------------------------------------------------
// MovieLens 100K

int run_movielens(const settings& st, const std::string& dir) {
    // u.item: id|title|date|video date|url|19 genre flags (Latin-1 titles, read as bytes).
    std::map<std::int64_t, std::pair<std::string, std::int64_t>> movies;  // id -> (title, first genre)
    static const char* genres[] = {"unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                                   "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                                   "Romance", "Sci-Fi", "Thriller", "War", "Western"};
    {
        std::ifstream f(fs::path(dir) / "u.item", std::ios::binary);
        XREC_CHECK(f, "movielens: cannot open ", (fs::path(dir) / "u.item").string());
        std::string line;
        for (std::int64_t ln = 1; std::getline(f, line); ++ln) {
            std::vector<std::string> c;
            std::size_t p = 0;
            for (std::size_t q; (q = line.find('|', p)) != std::string::npos; p = q + 1) c.push_back(line.substr(p, q - p));
            c.push_back(line.substr(p));
            XREC_CHECK(c.size() >= 24, (fs::path(dir) / "u.item").string(), ":", ln, ": expected 24 fields, got ", c.size());
            std::int64_t g = 0;
            for (std::int64_t k = 0; k < 19; ++k)
                if (c[static_cast<std::size_t>(5 + k)] == "1") {
                    g = k;
                    break;
                }
            std::string title;
            for (unsigned char ch : c[1]) title += ch < 0x80 ? static_cast<char>(ch) : '?';
            movies[std::stoll(c[0])] = {title, g};
        }
    }
    // u.data: user \t item \t rating \t time. Each rating is an impression; the label is a
    // rating of 4 or 5; the history is the user's earlier rated movies (up to 30).
    struct ev {
        std::int64_t user, item, rating, time;
    };
    std::vector<ev> evs;
    {
        xrec::data::delimited_options dopt;
        dopt.delimiter = '\t';
        dopt.header = false;
        dopt.names = {"user", "item", "rating", "time"};
        xrec::data::delimited_reader r((fs::path(dir) / "u.data").string(), dopt);
        xrec::data::raw_record rec;
        while (r.next(rec))
            evs.push_back({std::stoll(std::string(rec.columns[0])), std::stoll(std::string(rec.columns[1])),
                           std::stoll(std::string(rec.columns[2])), std::stoll(std::string(rec.columns[3]))});
    }
    std::stable_sort(evs.begin(), evs.end(), [](const ev& a, const ev& b) { return a.time < b.time; });
    std::int64_t users = 0, items = 0;
    for (auto& e : evs) users = std::max(users, e.user), items = std::max(items, e.item);
    xrec::feature_layout L;
    L.tables = {{"user_id", users + 1, 0}, {"item_id", items + 1, 0}, {"genre", 20, 0}};
    L.sparse = {{"user_id", 0, false}, {"item_id", 1, false}, {"genre", 2, false}};
    L.sequences = {{"hist_item_id", 1, 30, xrec::pooling::mean, false}, {"hist_genre", 2, 30, xrec::pooling::mean, false}};
    L.finish();
    const auto off = [&](std::int64_t t) { return L.tables[static_cast<std::size_t>(t)].offset; };
    dataset all(L);
    std::vector<std::vector<std::int64_t>> hist_items(static_cast<std::size_t>(users + 1)),
        hist_genres(static_cast<std::size_t>(users + 1));
    std::vector<std::int64_t> times;
    for (auto& e : evs) {
        const std::int64_t g = movies.count(e.item) ? movies[e.item].second : 0;
        const std::int64_t sp[] = {off(0) + e.user, off(1) + e.item, off(2) + g + 1};
        auto& hi = hist_items[static_cast<std::size_t>(e.user)];
        auto& hg = hist_genres[static_cast<std::size_t>(e.user)];
        const std::span<const std::int64_t> seqs[] = {hi, hg};
        const T lab[] = {e.rating >= 4 ? T(1) : T(0)};
        all.append(sp, {}, seqs, lab, e.user);
        times.push_back(e.time);
        hi.push_back(off(1) + e.item);
        hg.push_back(off(2) + g + 1);
    }
    // Leave the last two ratings of each user out: the second last validates, the last tests.
    std::vector<std::int64_t> groups(all.group_column().begin(), all.group_column().end());
    const auto sp = xrec::data::leave_last_n_out(groups, times, 1, 1);
    const dataset train = all.subset(sp.train), valid = all.subset(sp.valid), test = all.subset(sp.test);
    std::printf("movielens %s: %zu ratings of %lld users on %lld movies; label = rating >= 4\n", dir.c_str(), evs.size(),
                static_cast<long long>(users), static_cast<long long>(items));
    std::printf("leave-last-out per user: train %lld, valid %lld, test %lld\n\n", static_cast<long long>(train.size()),
                static_cast<long long>(valid.size()), static_cast<long long>(test.size()));
    std::vector<model_run> runs;
    store_t s1(1);
    xrec::models::din<T, B> din(s1, L, din_options(L));
    runs.push_back(train_model("DIN", din, s1, train, valid, test, st, std::nan("")));
    std::printf("\n");
    store_t s2(1);
    xrec::models::deepfm<T, B> deepfm(s2, L, {.dim = 8, .dnn = {.hidden = {200, 80}}});
    runs.push_back(train_model("DeepFM", deepfm, s2, train, valid, test, st, std::nan("")));

    // Three users: their last rated movies and DIN's top 10 unseen movies.
    xrec::train::trainer_options po;
    po.progress = false;
    xrec::train::trainer ranker(din, s1, po);
    for (std::int64_t u : {1, 100, 500}) {
        if (u > users) break;
        const auto& hi = hist_items[static_cast<std::size_t>(u)];
        std::printf("\nuser %lld, last rated:\n", static_cast<long long>(u));
        for (std::size_t i = hi.size() > 5 ? hi.size() - 5 : 0; i < hi.size(); ++i) {
            const auto m = hi[i] - off(1);
            std::printf("    %s (%s)\n", movies[m].first.c_str(), genres[movies[m].second]);
        }
        dataset cand(L);
        std::vector<std::int64_t> ids;
        const auto& hg = hist_genres[static_cast<std::size_t>(u)];
        for (auto& [m, info] : movies) {
            if (std::find(hi.begin(), hi.end(), off(1) + m) != hi.end()) continue;
            const std::int64_t spc[] = {off(0) + u, off(1) + m, off(2) + info.second + 1};
            const std::span<const std::int64_t> seqs[] = {hi, hg};
            const T lab[] = {0};
            cand.append(spc, {}, seqs, lab, u);
            ids.push_back(m);
        }
        const auto score = ranker.predict(cand);
        std::printf("  top 10 (DIN score):\n");
        int rank = 0;
        for (auto i : top_k(score, 10)) {
            const auto m = ids[static_cast<std::size_t>(i)];
            std::printf("   %2d. %-50s %-10s %.3f\n", ++rank, movies[m].first.c_str(), genres[movies[m].second],
                        score[static_cast<std::size_t>(i)]);
        }
    }
    write_chart((fs::path(st.out) / "xrec_shop_guide_movielens.svg").string(), "xrec: DIN vs DeepFM on MovieLens 100K",
                runs, std::nan(""));
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    settings st;
    std::string criteo, movielens;
    for (int i = 1; i < argc; i += 2) {
        const std::string a = argv[i];
        if (i + 1 >= argc) {
            std::fprintf(stderr, "%s: %s needs a value\n", argv[0], a.c_str());
            return 2;
        }
        const std::string v = argv[i + 1];
        if (a == "--epochs") st.epochs = std::atol(v.c_str());
        else if (a == "--threads") st.threads = std::atoi(v.c_str());
        else if (a == "--out") st.out = v;
        else if (a == "--criteo") criteo = v;
        else if (a == "--movielens") movielens = v;
        else {
            std::fprintf(stderr,
                         "usage: %s [--epochs N] [--threads T] [--out DIR] [--criteo FILE|DIR | --movielens DIR]\n",
                         argv[0]);
            return 2;
        }
    }
    try {
        std::printf("xrec %s shopping guide (%ld epochs, %d threads)\n", xrec::version_string, st.epochs, st.threads);
        const auto t0 = std::chrono::steady_clock::now();
        const int rc = !criteo.empty() ? run_criteo(st, criteo) : !movielens.empty() ? run_movielens(st, movielens) : run_shop(st);
        std::printf("done in %.1f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        return rc;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "xrec_shop_guide: %s\n", e.what());
        return 1;
    }
}
