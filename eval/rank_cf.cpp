// rank_cf: collaborative filtering on MovieLens 100K (issue 5, "must show" 1), with the
// hyper-parameters fixed in advance.
//
//   rank_cf [--data DIR] [--seeds 5] [--seed0 1] [--models pop,itemknn,mf,gmf,ncf_mlp,neumf,neumf_pre,two_tower]
//           [--epochs 20] [--threads 1] [--export DIR]
//
// Protocol (NCF's): all 100,000 ratings as implicit feedback; per user the latest
// interaction is the test item (leave-latest-out, ties in file order), the rest train; the
// test item is ranked among 99 items the user never interacted with, drawn uniformly on the
// stream of (seed, user) (train::make_sampled_candidates), HR@10 and NDCG@10. Every model
// is trained and evaluated once per seed (the seed sets the initial weights, the batches and
// the candidates); the table gives mean +- standard error over the seeds. two_tower is
// reported under full ranking (Recall@20 over all 1682 items, the user's training items
// masked) beside mf.
//
// Models and settings (NCF paper's where it gives them: batch 256, Adam 1e-3, 4 negatives
// per positive, predictive factors 8 -> here 16, 20 epochs):
//   pop        most popular by training count
//   itemknn    item-based kNN, cosine, 100 neighbours (H6's models::item_knn)
//   mf         dim 64, BPR, one uniform unseen negative per positive, lazy Adam 2e-3, L2 1e-5 on touched rows
//   gmf        dim 16, BCE with 4 negatives, Adam/lazy Adam 1e-3
//   ncf_mlp    embeddings 32 per side, tower 32-16 (MLP-3 "64->32->16"), BCE 4 negatives, 1e-3
//   neumf      gmf 16 + mlp 32 (tower 32-16), BCE 4 negatives, 1e-3
//   neumf_pre  neumf initialised from this seed's trained gmf and ncf_mlp (alpha 0.5), then
//              trained 10 epochs at 2e-4 (the paper switches to SGD; Adam at a small rate keeps
//              the pretrained optimum within reach)
//   two_tower  id embeddings 64 + item genres / user age, gender, occupation (mean bags);
//              towers 128 -> 64; in-batch softmax, log-Q from training counts, temperature
//              0.1, batch 512, 30 epochs
//
// --export DIR writes, per (model, seed): "<model>_s<seed>_init.safetensors" (the initial
// weights, an xrec checkpoint), "<model>_s<seed>_batches.bin" (every batch, see
// train/cf_trainer.hpp), "<model>_s<seed>.json" (the settings and xrec's metrics), and per seed
// "candidates_s<seed>.safetensors" and "split.safetensors" (train CSR, test items) for
// eval/cf_parity.py.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "xrec/data/interactions.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/metrics/ranking.hpp"
#include "xrec/models/baselines.hpp"
#include "xrec/models/mf.hpp"
#include "xrec/models/ncf.hpp"
#include "xrec/models/two_tower.hpp"
#include "xrec/train/cf_trainer.hpp"
#include "xrec/train/ranking_eval.hpp"

#include "common.hpp"

namespace {

namespace fs = std::filesystem;
using namespace xrec;
// Float32 as the peer's default; built with -DXREC_RANK_CF_DOUBLE (target rank_cf_double) every
// model trains in double, for the double-precision parity run of a chaotic case.
#ifdef XREC_RANK_CF_DOUBLE
using T = double;
#else
using T = float;
#endif
using B = cpu<>;

using xrec_eval::args;
using xrec_eval::mean_se;
using xrec_eval::split_list;
using xrec_eval::summarize;

std::string default_data_dir() {
    if (const char* e = std::getenv("XREC_DATA_DIR")) return e;
    return "../shared/data";
}

// Side features of ml-100k for two_tower: item genres (19 flags of u.item) and user age
// bucket, gender and occupation (u.user), each mapped through the split's raw ids.
struct ml_features {
    models::id_features user, item;
};
ml_features load_features(const fs::path& dir, const std::vector<std::int64_t>& raw_user,
                          const std::vector<std::int64_t>& raw_item) {
    auto split_bar = [](const std::string& line) {
        std::vector<std::string> f;
        std::stringstream ss(line);
        for (std::string x; std::getline(ss, x, '|');) f.push_back(x);
        return f;
    };
    ml_features out;
    std::map<std::int64_t, std::vector<std::int64_t>> by_item, by_user;
    {
        std::ifstream in(dir / "u.item", std::ios::binary);
        XREC_CHECK(in.good(), "rank_cf: cannot read ", (dir / "u.item").string());
        for (std::string line; std::getline(in, line);) {
            const auto f = split_bar(line);
            if (f.size() < 24) continue;
            auto& v = by_item[std::stoll(f[0])];
            for (int g = 0; g < 19; ++g)
                if (f[static_cast<std::size_t>(5 + g)] == "1") v.push_back(g);
        }
    }
    std::map<std::string, std::int64_t> occ;
    {
        std::ifstream in(dir / "u.user", std::ios::binary);
        XREC_CHECK(in.good(), "rank_cf: cannot read ", (dir / "u.user").string());
        std::vector<std::vector<std::string>> rows;
        for (std::string line; std::getline(in, line);) {
            auto f = split_bar(line);
            if (f.size() >= 4) rows.push_back(f);
        }
        for (auto& f : rows) occ.emplace(f[3], 0);
        std::int64_t k = 0;
        for (auto& [name, id] : occ) id = k++;
        // ids: age bucket 0..6, gender 7..8, occupation 9..
        for (auto& f : rows) {
            const int age = std::stoi(f[1]);
            const std::int64_t bucket = age < 18 ? 0 : age < 25 ? 1 : age < 35 ? 2 : age < 45 ? 3 : age < 50 ? 4 : age < 56 ? 5 : 6;
            by_user[std::stoll(f[0])] = {bucket, f[2] == "M" ? 7 : 8, 9 + occ[f[3]]};
        }
    }
    auto fill = [](models::id_features& f, const std::vector<std::int64_t>& raw,
                   std::map<std::int64_t, std::vector<std::int64_t>>& m, std::int64_t rows) {
        f.rows = rows;
        f.offsets.assign(1, 0);
        for (auto r : raw) {
            auto it = m.find(r);
            if (it != m.end()) f.values.insert(f.values.end(), it->second.begin(), it->second.end());
            f.offsets.push_back(static_cast<std::int64_t>(f.values.size()));
        }
    };
    fill(out.item, raw_item, by_item, 19);
    fill(out.user, raw_user, by_user, 9 + static_cast<std::int64_t>(occ.size()));
    return out;
}

struct setup {
    data::loo_split split;
    std::vector<double> popularity;  // training counts
    ml_features features;
    std::int32_t n_users = 0, n_items = 0;
};

setup load(const fs::path& dir) {
    const auto inter = data::load_movielens(dir / "u.data");
    setup s;
    s.split = data::leave_last_out(data::to_sequences(inter), false);
    s.n_users = static_cast<std::int32_t>(s.split.rows());
    s.n_items = s.split.n_items();
    s.popularity = data::item_counts(s.split.train);
    s.features = load_features(dir, inter.raw_user, inter.raw_item);
    return s;
}

struct result {
    double hr10 = 0, ndcg10 = 0, recall20 = 0;
};

// One trained model's settings, for the export JSON.
struct run_info {
    std::string loss;
    std::int64_t epochs = 0, batch = 0, negatives = 0;
    double lr = 0, sparse_lr = 0, l2 = 0, temperature = 1;
    std::string sizes;
};

std::string json_of(const std::string& model, std::uint64_t seed, const run_info& ri, const result& r) {
    char b[1024];
    std::snprintf(b, sizeof b,
                  "{\"model\": \"%s\", \"seed\": %llu, \"loss\": \"%s\", \"epochs\": %lld, \"batch\": %lld, "
                  "\"negatives\": %lld, \"dense_lr\": %.17g, \"sparse_lr\": %.17g, \"sparse_l2\": %.17g, "
                  "\"temperature\": %.17g, \"sizes\": %s, \"hr10\": %.17g, \"ndcg10\": %.17g, \"recall20\": %.17g}\n",
                  model.c_str(), static_cast<unsigned long long>(seed), ri.loss.c_str(), static_cast<long long>(ri.epochs),
                  static_cast<long long>(ri.batch), static_cast<long long>(ri.negatives), ri.lr, ri.sparse_lr, ri.l2,
                  ri.temperature, ri.sizes.empty() ? "{}" : ri.sizes.c_str(), r.hr10, r.ndcg10, r.recall20);
    return b;
}

class runner {
public:
    runner(const setup& s, const args& a) : s_(s), a_(a) {
        export_ = a.get("export", "");
        threads_ = static_cast<int>(a.num("threads", 1));
        epochs_ = a.num("epochs", 20);
        if (!export_.empty()) fs::create_directories(export_);
        data_ = train::user_items{s.split.train.offsets, s.split.train.items, s.n_items};
    }

    // Runs every requested model for one seed; returns model -> result.
    std::map<std::string, result> run_seed(std::uint64_t seed, const std::vector<std::string>& models) {
        std::map<std::string, result> out;
        const data::negative_sampler sampler(s_.n_items, data::sampling::uniform);
        cand_ = train::make_sampled_candidates(s_.split, sampler, 99, seed);
        if (!export_.empty()) {
            train::save_candidates(cand_, (fs::path(export_) / ("candidates_s" + std::to_string(seed) + ".safetensors")).string(),
                                   seed, "uniform");
            if (!split_saved_) save_split();
        }
        // gmf and ncf_mlp are kept for neumf_pre.
        param_store<T, B> sg(seed * 10 + 1), sm(seed * 10 + 2);
        std::unique_ptr<models::gmf<T, B>> g;
        std::unique_ptr<models::ncf_mlp<T, B>> m;
        for (const auto& name : models) {
            const auto t0 = std::chrono::steady_clock::now();
            result r;
            if (name == "pop") {
                models::most_popular mp(s_.n_items, s_.split.train.offsets, s_.split.train.items);
                r = sampled([&](std::int64_t, std::span<const std::int32_t> c, std::span<float> o) { mp.score(c, o); });
            } else if (name == "itemknn") {
                models::item_knn knn(s_.n_items, s_.split.train.offsets, s_.split.train.items);
                r = sampled([&](std::int64_t u, std::span<const std::int32_t> c, std::span<float> o) {
                    knn.score(s_.split.train.row(u), c, o);
                });
            } else if (name == "mf") {
                param_store<T, B> st(seed * 10 + 3);
                models::mf<T, B> mf(st, {.n_users = s_.n_users, .n_items = s_.n_items, .dim = 64});
                train_model(mf, st, name, seed, {.loss = train::cf_loss::bpr, .batch = 256, .lr = 2e-3, .sparse_lr = 2e-3, .l2 = 1e-5});
                r = sampled_model(mf);
                r.recall20 = full_dot(mf.user_embeddings(), mf.item_embeddings());
            } else if (name == "gmf" || (name == "neumf_pre" && !g)) {
                g = std::make_unique<models::gmf<T, B>>(sg, models::gmf_options{.n_users = s_.n_users, .n_items = s_.n_items, .dim = 16});
                train_model(*g, sg, "gmf", seed, bce());
                if (name == "gmf") r = sampled_model(*g);
            }
            if (name == "ncf_mlp" || (name == "neumf_pre" && !m)) {
                m = std::make_unique<models::ncf_mlp<T, B>>(
                    sm, models::ncf_mlp_options{.n_users = s_.n_users, .n_items = s_.n_items, .dim = 32, .hidden = {32, 16}});
                train_model(*m, sm, "ncf_mlp", seed, bce());
                if (name == "ncf_mlp") r = sampled_model(*m);
            }
            if (name == "neumf" || name == "neumf_pre") {
                param_store<T, B> sn(seed * 10 + 4);
                models::neumf<T, B> nm(sn, {.n_users = s_.n_users, .n_items = s_.n_items, .gmf_dim = 16, .mlp_dim = 32,
                                            .hidden = {32, 16}});
                run_opts ro = bce();
                if (name == "neumf_pre") {
                    nm.init_from(*g, *m, 0.5);
                    ro.epochs = 10;
                    ro.lr = ro.sparse_lr = 2e-4;
                }
                train_model(nm, sn, name, seed, ro);
                r = sampled_model(nm);
            } else if (name == "two_tower") {
                param_store<T, B> st(seed * 10 + 5);
                models::two_tower<T, B> tt(st, {.n_users = s_.n_users, .n_items = s_.n_items, .id_dim = 64,
                                                .user_tower = {.hidden = {128}, .out = 64},
                                                .item_tower = {.hidden = {128}, .out = 64},
                                                .user_features = s_.features.user,
                                                .item_features = s_.features.item});
                train_model(tt, st, name, seed,
                            {.loss = train::cf_loss::in_batch_softmax, .epochs = 30, .batch = 512, .lr = 1e-3,
                             .sparse_lr = 1e-3, .temperature = 0.1});
                infer_ctx<T, B> ictx;
                tt.export_item_embeddings(ictx);
                // User vectors once, then full ranking by dot products.
                std::vector<std::int64_t> us(static_cast<std::size_t>(s_.n_users));
                std::iota(us.begin(), us.end(), 0);
                ictx.reset();
                const var<T> uv = tt.user_vectors(ictx, us);
                std::vector<T> users(uv.data, uv.data + uv.numel());
                r.recall20 = full_dot({users.data(), shape{s_.n_users, tt.dim()}}, tt.item_embeddings());
                r = with_sampled_dot(r, {users.data(), shape{s_.n_users, tt.dim()}}, tt.item_embeddings());
            }
            out[name] = r;
            const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            std::fprintf(stderr, "seed %llu %-10s HR@10 %.4f NDCG@10 %.4f%s  (%.1fs)\n", static_cast<unsigned long long>(seed),
                         name.c_str(), r.hr10, r.ndcg10,
                         r.recall20 > 0 ? (" Recall@20(full) " + std::to_string(r.recall20)).c_str() : "", sec);
            if (!export_.empty() && infos_.count(name)) {
                std::ofstream(fs::path(export_) / (name + "_s" + std::to_string(seed) + ".json")) << json_of(name, seed, infos_[name], r);
            }
        }
        return out;
    }

private:
    struct run_opts {
        train::cf_loss loss = train::cf_loss::bce;
        std::int64_t epochs = 0, batch = 256, negatives = 4;
        double lr = 1e-3, sparse_lr = 1e-3, l2 = 0, temperature = 1;
    };
    static run_opts bce() { return {}; }

    template <class M>
    void train_model(const M& model, param_store<T, B>& store, const std::string& name, std::uint64_t seed, run_opts ro) {
        if (ro.epochs == 0) ro.epochs = epochs_;
        run_info ri{train::cf_loss_name(ro.loss), ro.epochs, ro.batch, ro.negatives, ro.lr, ro.sparse_lr, ro.l2, ro.temperature, ""};
        infos_[name] = ri;
        const std::string stem = (fs::path(export_) / (name + "_s" + std::to_string(seed))).string();
        if (!export_.empty()) io::save_checkpoint(stem + "_init.safetensors", store);
        train::cf_trainer<M, T, B> t(model, store,
                                     {.loss = ro.loss, .epochs = ro.epochs, .batch_size = ro.batch, .negatives = ro.negatives,
                                      .seed = seed * 1000 + 7, .threads = threads_, .dense_lr = ro.lr,
                                      .sparse_lr = ro.sparse_lr, .sparse_weight_decay = ro.l2,
                                      .temperature = ro.temperature,
                                      .batch_log = export_.empty() ? std::string() : stem + "_batches.bin"});
        t.fit(data_);
    }
    template <class Score>
    result sampled(Score&& score) {
        const auto ms = train::evaluate_sampled(cand_, s_.n_items, score, {10}, s_.popularity);
        return {ms[0].hr, ms[0].ndcg, 0};
    }
    template <class M>
    result sampled_model(const M& m) {
        infer_ctx<T, B> ictx;
        std::vector<std::int64_t> ids;
        return sampled([&](std::int64_t u, std::span<const std::int32_t> c, std::span<float> o) {
            train::score_user_items(m, ictx, u, c, o, ids);
        });
    }
    result with_sampled_dot(result r, tensor_view<const T> users, tensor_view<const T> items) {
        const auto d = items.cols();
        const result s = sampled([&](std::int64_t u, std::span<const std::int32_t> c, std::span<float> o) {
            for (std::size_t k = 0; k < c.size(); ++k) {
                float acc = 0;
                for (std::int64_t j = 0; j < d; ++j) acc += users(u, j) * items(c[k], j);
                o[k] = acc;
            }
        });
        r.hr10 = s.hr10;
        r.ndcg10 = s.ndcg10;
        return r;
    }
    // Recall@20 under full ranking (history masked) of a dot-product scorer.
    double full_dot(tensor_view<const T> users, tensor_view<const T> items) {
        const auto d = items.cols(), n = items.rows();
        const auto ms = train::evaluate_full(
            s_.split,
            [&](std::int64_t u, std::span<float> o) {
                for (std::int64_t i = 0; i < n; ++i) {
                    float acc = 0;
                    for (std::int64_t j = 0; j < d; ++j) acc += users(u, j) * items(i, j);
                    o[static_cast<std::size_t>(i)] = acc;
                }
            },
            {20}, s_.popularity);
        return ms[0].recall;
    }
    void save_split() {
        io::safetensors_writer w;
        const auto& tr = s_.split.train;
        w.add("train_offsets", shape{static_cast<std::int64_t>(tr.offsets.size())}, tr.offsets.data());
        w.add("train_items", shape{static_cast<std::int64_t>(tr.items.size())}, tr.items.data());
        w.add("test", shape{static_cast<std::int64_t>(s_.split.test.size())}, s_.split.test.data());
        for (auto [name, f] : {std::pair{"user", &s_.features.user}, std::pair{"item", &s_.features.item}}) {
            w.add(std::string(name) + "_feature_offsets", shape{static_cast<std::int64_t>(f->offsets.size())}, f->offsets.data());
            w.add(std::string(name) + "_feature_values", shape{static_cast<std::int64_t>(f->values.size())}, f->values.data());
            w.set_metadata(std::string(name) + "_feature_rows", std::to_string(f->rows));
        }
        w.set_metadata("n_users", std::to_string(s_.n_users));
        w.set_metadata("n_items", std::to_string(s_.n_items));
        w.write((fs::path(export_) / "split.safetensors").string());
        split_saved_ = true;
    }

    const setup& s_;
    const args& a_;
    std::string export_;
    int threads_ = 1;
    std::int64_t epochs_ = 20;
    train::user_items data_;
    train::sampled_candidates cand_;
    bool split_saved_ = false;
    std::map<std::string, run_info> infos_;
};

}  // namespace

int main(int argc, char** argv) {
    try {
        args a;
        if (!a.parse(argc, argv, 1, "rank_cf")) return 2;
        const fs::path dir = fs::path(a.get("data", default_data_dir())) / "ml-100k";
        const auto models = split_list(a.get("models", "pop,itemknn,mf,gmf,ncf_mlp,neumf,neumf_pre,two_tower"));
        const long seeds = a.num("seeds", 5), seed0 = a.num("seed0", 1);
        const setup s = load(dir);
        std::printf("ml-100k: %d users, %d items, %lld training interactions, %lld test users\n", s.n_users, s.n_items,
                    static_cast<long long>(s.split.train.events()),
                    static_cast<long long>(std::count_if(s.split.test.begin(), s.split.test.end(), [](auto t) { return t >= 0; })));
        runner r(s, a);
        std::map<std::string, std::vector<double>> hr, ndcg, rec;
        for (long k = 0; k < seeds; ++k) {
            const auto res = r.run_seed(static_cast<std::uint64_t>(seed0 + k), models);
            for (auto& [m, x] : res) {
                hr[m].push_back(x.hr10);
                ndcg[m].push_back(x.ndcg10);
                if (x.recall20 > 0) rec[m].push_back(x.recall20);
            }
        }
        metrics::ranking_protocol p;
        p.mode = metrics::ranking_protocol::kind::sampled;
        p.negatives = 99;
        p.sampler = "uniform";
        p.split = "leave-latest-out (test = latest interaction per user, the rest train)";
        p.note = "ml-100k, all ratings as implicit feedback; mean +- standard error over " + std::to_string(seeds) + " seeds";
        std::printf("%s\n", p.describe().c_str());
        std::printf("| model | HR@10 | NDCG@10 |\n|---|---|---|\n");
        for (const auto& m : models) {
            if (!hr.count(m)) continue;
            const auto h = summarize(hr[m]), n = summarize(ndcg[m]);
            std::printf("| %s | %.4f ± %.4f | %.4f ± %.4f |\n", m.c_str(), h.mean, h.se, n.mean, n.se);
        }
        if (!rec.empty()) {
            metrics::ranking_protocol f;
            f.mode = metrics::ranking_protocol::kind::full;
            f.n_items = s.n_items;
            f.split = p.split;
            f.note = "ml-100k; mean +- standard error over " + std::to_string(seeds) + " seeds";
            std::printf("\n%s\n| model | Recall@20 |\n|---|---|\n", f.describe().c_str());
            for (const auto& m : models) {
                if (!rec.count(m)) continue;
                const auto x = summarize(rec[m]);
                std::printf("| %s | %.4f ± %.4f |\n", m.c_str(), x.mean, x.se);
            }
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "rank_cf: %s\n", e.what());
        return 1;
    }
}
