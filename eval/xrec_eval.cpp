// xrec_eval: the issue-4 evaluations, with hyper-parameters fixed in advance.
//
//   xrec_eval criteo [--data DIR] [--seeds 5] [--epochs 3] [--models a,b,...]
//       every CTR model on ../shared/data/criteo: train on train, AUC / logloss on dev+test,
//       mean and standard error over seeds.
//   xrec_eval shop [--seeds 3] [--epochs 3] [--only basic,sequence,multi_task,esmm] [--models a,b]
//       the synthetic-shop checks: setting basic (deepfm vs Bayes, dcn_v2 vs fm), sequence
//       (din and bst vs Bayes and vs deepfm with mean-pooled history), multi_task (mmoe vs
//       shared_bottom), esmm vs a CVR model trained on clicked rows only.
//   xrec_eval export --dataset criteo|shop-basic|shop-sequence|shop-multi_task --model M
//                    --seed S --out DIR [--epochs E]
//       trains one model and writes what a PyTorch peer needs to repeat the run (the encoded
//       data, the initial weights, every epoch's batch order) and xrec's per-epoch metrics:
//       eval/parity.py reads it.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "models.hpp"
#include "xrec/data/dataset.hpp"
#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"
#include "xrec/data/split.hpp"
#include "xrec/data/synthetic_shop.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/metrics/ctr.hpp"
#include "xrec/train/trainer.hpp"
#include "xrec/version.hpp"

#include "common.hpp"

namespace xrec_eval {
namespace {

namespace fs = std::filesystem;
using dataset = xrec::data::ctr_dataset<T>;

// ---------------------------------------------------------------------------------------
// Data

struct split_data {
    std::string name;
    dataset train, valid, test;  // valid is what early stopping would watch; test is reported
    double bayes_auc = std::nan("");
    std::vector<double> bayes_task_auc;
    double bayes_cvr_auc = std::nan("");
    std::vector<float> conversion_test;  // shop: would the shopper buy if they clicked, per test row
};

/// Criteo: schema fitted on the training file (vocabulary min count 1, log dense), dev and
/// test encoded with it and reported together (the data README's protocol).
split_data load_criteo(const std::string& dir) {
    split_data d;
    d.name = "criteo";
    auto s = xrec::data::criteo_schema(1);
    auto tr = xrec::data::criteo_reader((fs::path(dir) / "criteo_train.tsv").string());
    s.fit(tr);
    tr.rewind();
    d.train = s.encode_all<T>(tr).rows;
    dataset ev(s.layout());
    for (const char* f : {"criteo_dev.tsv", "criteo_test.tsv"}) {
        auto r = xrec::data::criteo_reader((fs::path(dir) / f).string());
        auto e = s.encode_all<T>(r, xrec::data::encode_mode::serve).rows;
        for (std::int64_t i = 0; i < e.size(); ++i) ev.append_row_of(e, i);
    }
    d.valid = ev;
    d.test = std::move(ev);
    return d;
}

xrec::data::shop_setting setting_of(const std::string& s) {
    if (s == "basic") return xrec::data::shop_setting::basic;
    if (s == "sequence") return xrec::data::shop_setting::sequence;
    if (s == "multi_task") return xrec::data::shop_setting::multi_task;
    XREC_FAIL("unknown shop setting '", s, "' (basic, sequence, multi_task)");
}

/// The generator's float rows in the model's precision (a copy only in xrec_eval_f64).
template <class U>
dataset as_model_type(xrec::data::ctr_dataset<U>&& d) {
    if constexpr (std::is_same_v<U, T>) return std::move(d);
    else return d.template cast<T>();
}

split_data load_shop(const std::string& setting, std::uint64_t seed, bool purchase_task, std::int64_t train_rows = 0) {
    xrec::data::shop_options o;
    if (train_rows > 0) {  // a smaller shop of the same world (the parity runs)
        o.train_rows = train_rows;
        o.valid_rows = train_rows / 5;
        o.test_rows = train_rows / 2;
    }
    o.setting = setting_of(setting);
    o.seed = seed;
    o.task_correlation = 0;  // multi_task: two tasks of low (zero) correlation, the MMoE paper's hard case
    o.purchase_task = purchase_task;
    auto sh = xrec::data::make_shop(o);
    split_data d;
    d.name = "shop-" + setting;
    d.train = as_model_type(std::move(sh.train));
    d.valid = as_model_type(std::move(sh.valid));
    d.test = as_model_type(std::move(sh.test));
    d.bayes_auc = sh.bayes_auc_test;
    d.bayes_task_auc = sh.bayes_auc;
    d.bayes_cvr_auc = sh.bayes_auc_cvr;
    d.conversion_test = std::move(sh.conversion_test);
    return d;
}

// ---------------------------------------------------------------------------------------
// Training runs

/// The training set-up every evaluation uses (fixed before looking at test figures):
/// Adam 1e-3 on dense weights, lazy Adam 1e-3 on the tables (PyTorch SparseAdam), batch
/// 256, no early stopping (a fixed number of epochs), one thread.
xrec::train::trainer_options train_options(std::int64_t epochs, std::uint64_t seed) {
    xrec::train::trainer_options o;
    o.epochs = epochs;
    o.batch_size = 256;
    o.seed = seed;
    o.dense = xrec::train::dense_optimizer::adam;
    o.dense_lr = 1e-3;
    o.sparse = xrec::train::sparse_optimizer::lazy_adam;
    o.sparse_lr = 1e-3;
    o.progress = false;
    o.restore_best = false;
    return o;
}

/// The synthetic-shop runs (`shop` and the demo): a million rows per epoch want larger steps
/// than Criteo's 7,200: Adam 2e-3 on dense weights, row-wise Adagrad 0.05 on the tables
/// (the generator's own measurements, synthetic_shop.hpp), 3 epochs, 2 threads.
xrec::train::trainer_options shop_train_options(std::int64_t epochs, std::uint64_t seed) {
    auto o = train_options(epochs, seed);
    o.dense_lr = 2e-3;
    o.sparse = xrec::train::sparse_optimizer::rowwise_adagrad;
    o.sparse_lr = 0.05;
    o.threads = 2;
    return o;
}

struct run_result {
    std::vector<xrec::metrics::ctr_metrics> test;  // per task, after the last epoch
    xrec::train::history hist;
};

/// Trains `name` with seed `seed` on d.train (validating on d.valid) and evaluates on d.test.
run_result train_and_test(const std::string& name, const split_data& d, std::uint64_t seed,
                          const xrec::train::trainer_options& opt, const zoo_config& zc) {
    store_t s(seed);
    run_result r;
    const auto t0 = std::chrono::steady_clock::now();
    with_model(name, s, d.train.layout(), zc, [&](auto& model) {
        xrec::train::trainer tr(model, s, opt);
        xrec::data::batcher<T> tb(d.train, 256, true, seed), vb(d.valid, 1024);
        r.hist = tr.fit(tb, vb);
        xrec::data::batcher<T> eb(d.test, 1024);
        r.test = tr.evaluate(eb);
    });
    std::fprintf(stderr, "[%s %s seed %llu: test AUC %.4f, %.1f s]\n", d.name.c_str(), name.c_str(),
                 static_cast<unsigned long long>(seed), r.test.at(0).auc,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return r;
}

// ---------------------------------------------------------------------------------------
// criteo

int cmd_criteo(const args& a) {
    const auto dir = a.get("data", "../shared/data/criteo");
    const long seeds = a.num("seeds", 5), epochs = a.num("epochs", 3);
    const auto names = split_list(a.get("models", "lr,fm,deepfm,wide_deep,nfm,dcn,dcn_v2,autoint"));
    auto d = load_criteo(dir);
    if (a.num("holdout", 0)) {
        // Model selection without the test rows: train on a seeded 90% of the training file,
        // report on the other 10% (how the number of epochs was chosen).
        const auto idx = xrec::data::shuffled_indices(d.train.size(), 2026);
        const auto cut = static_cast<std::ptrdiff_t>(d.train.size() * 9 / 10);
        const std::vector<std::int64_t> fit(idx.begin(), idx.begin() + cut), hold(idx.begin() + cut, idx.end());
        auto tr = d.train.subset(fit);
        d.test = d.train.subset(hold);
        d.valid = d.test;
        d.train = std::move(tr);
        std::printf("holdout mode: train on 90%% of criteo_train.tsv, report on the other 10%%\n");
    }
    std::printf("xrec %s on Criteo (%s): train %lld rows, dev+test %lld rows; embedding 8, DNN 200-200, "
                "Adam 1e-3 + lazy Adam 1e-3, batch 256, %ld epochs, %ld seeds\n",
                xrec::version_string, dir.c_str(), static_cast<long long>(d.train.size()),
                static_cast<long long>(d.test.size()), epochs, seeds);
    std::printf("| model | AUC (mean ± se) | logloss (mean ± se) | train s/run |\n|---|---|---|---|\n");
    const zoo_config zc;
    for (const auto& n : names) {
        std::vector<double> auc, ll;
        double secs = 0;
        for (long sd = 1; sd <= seeds; ++sd) {
            const auto t0 = std::chrono::steady_clock::now();
            const auto r = train_and_test(n, d, static_cast<std::uint64_t>(sd),
                                          train_options(epochs, static_cast<std::uint64_t>(sd)), zc);
            secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            auc.push_back(r.test[0].auc);
            ll.push_back(r.test[0].logloss);
        }
        const auto A = summarize(auc), L = summarize(ll);
        std::printf("| %s | %.4f ± %.4f | %.4f ± %.4f | %.2f |\n", n.c_str(), A.mean, A.se, L.mean, L.se,
                    secs / static_cast<double>(seeds));
        std::fflush(stdout);
    }
    return 0;
}

// ---------------------------------------------------------------------------------------
// shop

int cmd_shop(const args& a) {
    const long seeds = a.num("seeds", 3), epochs = a.num("epochs", 3);
    const zoo_config zc;
    auto row = [](const char* setting, const std::string& model, const std::vector<double>& auc, double bayes) {
        const auto A = summarize(auc);
        std::printf("| %s | %s | %.4f ± %.4f | %.4f | %+.4f |\n", setting, model.c_str(), A.mean, A.se, bayes,
                    A.mean - bayes);
        std::fflush(stdout);
    };
    std::printf("xrec %s synthetic shop, %ld seeds, %ld epochs, batch 256, Adam 2e-3 + row-wise Adagrad 0.05, 2 threads\n",
                xrec::version_string, seeds, epochs);
    std::printf("| setting | model | test AUC (mean ± se) | Bayes AUC (mean) | gap |\n|---|---|---|---|---|\n");
    const auto parts = split_list(a.get("only", "basic,sequence,multi_task,esmm"));
    auto want = [&](const char* p) { return std::find(parts.begin(), parts.end(), p) != parts.end(); };
    for (const char* setting : {"basic", "sequence"}) {
        if (!want(setting)) continue;
        std::vector<std::string> models = std::string(setting) == "basic"
                                              ? std::vector<std::string>{"lr", "fm", "deepfm", "dcn_v2"}
                                              : std::vector<std::string>{"deepfm", "din", "bst"};
        if (a.kv.count("models")) {  // a subset (re-running one model)
            const auto keep = split_list(a.get("models", ""));
            std::erase_if(models, [&](const std::string& m) { return std::find(keep.begin(), keep.end(), m) == keep.end(); });
        }
        std::map<std::string, std::vector<double>> auc;
        std::vector<double> bayes;
        for (long sd = 1; sd <= seeds; ++sd) {
            const auto d = load_shop(setting, static_cast<std::uint64_t>(sd), false);
            bayes.push_back(d.bayes_auc);
            for (const auto& m : models)
                auc[m].push_back(
                    train_and_test(m, d, static_cast<std::uint64_t>(sd), shop_train_options(epochs, static_cast<std::uint64_t>(sd)), zc)
                        .test[0]
                        .auc);
        }
        const double b = summarize(bayes).mean;
        for (const auto& m : models) row(setting, m, auc[m], b);
    }
    if (want("multi_task")) {  // multi-task: two tasks of low correlation
        std::map<std::string, std::vector<double>> auc;
        std::vector<double> bayes0, bayes1;
        for (long sd = 1; sd <= seeds; ++sd) {
            const auto d = load_shop("multi_task", static_cast<std::uint64_t>(sd), false);
            bayes0.push_back(d.bayes_task_auc.at(0));
            bayes1.push_back(d.bayes_task_auc.at(1));
            for (const char* m : {"shared_bottom", "mmoe"}) {
                const auto r = train_and_test(m, d, static_cast<std::uint64_t>(sd),
                                              shop_train_options(epochs, static_cast<std::uint64_t>(sd)), zc);
                auc[std::string(m) + " task 0"].push_back(r.test[0].auc);
                auc[std::string(m) + " task 1"].push_back(r.test[1].auc);
            }
        }
        for (const char* m : {"shared_bottom", "mmoe"}) {
            row("multi_task", std::string(m) + " task 0", auc[std::string(m) + " task 0"], summarize(bayes0).mean);
            row("multi_task", std::string(m) + " task 1", auc[std::string(m) + " task 1"], summarize(bayes1).mean);
        }
    }
    if (want("esmm")) {  // ESMM: CVR over all impressions vs a CVR model trained on clicked impressions only
        std::vector<double> esmm_cvr, naive_cvr, bayes;
        for (long sd = 1; sd <= seeds; ++sd) {
            const auto d = load_shop("basic", static_cast<std::uint64_t>(sd), true);
            bayes.push_back(d.bayes_cvr_auc);
            store_t s(static_cast<std::uint64_t>(sd));
            // esmm's probabilities are [pCTR, pCVR]; its CVR score is judged over every test
            // impression against the conversion the generator drew for it (would this shopper
            // buy if they clicked), as is the baseline's.
            with_model("esmm", s, d.train.layout(), zc, [&](auto& model) {
                xrec::train::trainer tr(model, s, shop_train_options(epochs, static_cast<std::uint64_t>(sd)));
                xrec::data::batcher<T> tb(d.train, 256, true, static_cast<std::uint64_t>(sd)), vb(d.valid, 1024);
                tr.fit(tb, vb);
                xrec::data::batcher<T> eb(d.test, 1024);
                const auto p = tr.predict(eb);
                std::vector<double> score, label;
                for (std::int64_t i = 0; i < d.test.size(); ++i) {
                    score.push_back(p[static_cast<std::size_t>(i * 2 + 1)]);
                    label.push_back(d.conversion_test[static_cast<std::size_t>(i)]);
                }
                esmm_cvr.push_back(xrec::metrics::auc(score, label));
            });
            // Naive CVR: a single-task deepfm on clicked training rows, label = purchase.
            xrec::feature_layout l1 = d.train.layout();
            l1.tasks = {"purchase"};
            auto clicked_only = [&](const dataset& src, bool only_clicked) {
                dataset out(l1);
                for (std::int64_t i = 0; i < src.size(); ++i) {
                    if (only_clicked && src.label(i, 0) < T(0.5)) continue;
                    std::vector<std::span<const std::int64_t>> seqs;
                    for (std::int64_t k = 0; k < l1.num_sequences(); ++k) seqs.push_back(src.sequence(k, i));
                    const T lab[] = {src.label(i, 1)};
                    out.append(src.sparse_row(i), src.dense_row(i), seqs, lab, src.group(i));
                }
                return out;
            };
            split_data dn;
            dn.train = clicked_only(d.train, true);
            dn.valid = clicked_only(d.valid, true);
            dn.test = clicked_only(d.test, false);
            {
                store_t s2(static_cast<std::uint64_t>(sd));
                with_model("deepfm", s2, l1, zc, [&](auto& model) {
                    xrec::train::trainer tr(model, s2, shop_train_options(epochs, static_cast<std::uint64_t>(sd)));
                    xrec::data::batcher<T> tb(dn.train, 256, true, static_cast<std::uint64_t>(sd)), vb(dn.valid, 1024);
                    tr.fit(tb, vb);
                    xrec::data::batcher<T> eb(dn.test, 1024);
                    const auto p = tr.predict(eb);
                    std::vector<double> score(p.begin(), p.end()), label(d.conversion_test.begin(), d.conversion_test.end());
                    naive_cvr.push_back(xrec::metrics::auc(score, label));
                });
            }
        }
        row("basic+purchase", "esmm CVR (all impressions)", esmm_cvr, summarize(bayes).mean);
        row("basic+purchase", "deepfm CVR on clicked rows", naive_cvr, summarize(bayes).mean);
    }
    return 0;
}

// ---------------------------------------------------------------------------------------
// export (for eval/parity.py)

void add_dataset(xrec::io::safetensors_writer& w, const std::string& pre, const dataset& d) {
    const auto& L = d.layout();
    const std::int64_t n = d.size();
    w.add(pre + "sparse", xrec::shape{n, L.num_sparse()}, d.sparse_column().data());
    w.add(pre + "dense", xrec::shape{n, L.num_dense()}, d.dense_column().data());
    w.add(pre + "labels", xrec::shape{n, L.num_tasks()}, d.label_column().data());
    w.add(pre + "groups", xrec::shape{n}, d.group_column().data());
    for (std::int64_t k = 0; k < L.num_sequences(); ++k) {
        const auto& c = d.sequence_column_of(k);
        w.add(pre + "seq" + std::to_string(k) + "_values", xrec::shape{static_cast<std::int64_t>(c.values.size())},
              c.values.data());
        w.add(pre + "seq" + std::to_string(k) + "_offsets", xrec::shape{static_cast<std::int64_t>(c.offsets.size())},
              c.offsets.data());
    }
}

std::string layout_json(const xrec::feature_layout& L) {
    std::ostringstream o;
    o << "{\"total_rows\": " << L.total_rows() << ", \"num_sparse\": " << L.num_sparse()
      << ", \"num_dense\": " << L.num_dense() << ", \"tasks\": " << L.num_tasks() << ", \"wide_only\": [";
    for (std::int64_t f = 0; f < L.num_sparse(); ++f) o << (f ? ", " : "") << (L.sparse[static_cast<std::size_t>(f)].wide_only ? "true" : "false");
    o << "], \"sparse\": [";
    for (std::int64_t f = 0; f < L.num_sparse(); ++f) {
        const auto& sf = L.sparse[static_cast<std::size_t>(f)];
        o << (f ? ", " : "") << "{\"name\": \"" << sf.name << "\", \"table\": " << sf.table << "}";
    }
    o << "], \"sequences\": [";
    for (std::int64_t k = 0; k < L.num_sequences(); ++k) {
        const auto& s = L.sequences[static_cast<std::size_t>(k)];
        o << (k ? ", " : "") << "{\"name\": \"" << s.name << "\", \"table\": " << s.table << ", \"max_len\": " << s.max_len
          << ", \"pooling\": \"" << xrec::pooling_name(s.pooling) << "\"}";
    }
    o << "], \"tables\": [";
    for (std::size_t t = 0; t < L.tables.size(); ++t)
        o << (t ? ", " : "") << "{\"name\": \"" << L.tables[t].name << "\", \"rows\": " << L.tables[t].rows
          << ", \"offset\": " << L.tables[t].offset << "}";
    o << "]}";
    return o.str();
}

int cmd_export(const args& a) {
    const auto ds = a.get("dataset", "criteo"), model = a.get("model", "deepfm"), out = a.get("out", "");
    XREC_CHECK(!out.empty(), "export: --out DIR is required");
    const auto seed = static_cast<std::uint64_t>(a.num("seed", 1));
    const long epochs = a.num("epochs", 3);
    fs::create_directories(out);
    split_data d = ds == "criteo" ? load_criteo(a.get("data", "../shared/data/criteo"))
                                  : load_shop(ds.substr(5), seed, ds == "shop-basic" && model == "esmm",
                                              a.num("train_rows", 40000));
    const zoo_config zc;
    store_t s(seed);
    std::ostringstream res;
    with_model(model, s, d.train.layout(), zc, [&](auto& m) {
        xrec::io::save_checkpoint((fs::path(out) / "init.safetensors").string(), s, {{"model", model}});
        {
            xrec::io::safetensors_writer w;
            add_dataset(w, "train_", d.train);
            add_dataset(w, "test_", d.test);
            // The writer keeps pointers until write(): each epoch's order gets its own copy.
            xrec::data::batcher<T> ob(d.train, 256, true, seed);
            std::vector<std::vector<std::int64_t>> orders;
            for (long e = 0; e < epochs; ++e) {
                ob.start_epoch(e);
                orders.push_back(ob.order());
            }
            for (long e = 0; e < epochs; ++e)
                w.add("order_" + std::to_string(e), xrec::shape{d.train.size()}, orders[static_cast<std::size_t>(e)].data());
            w.set_metadata("layout", layout_json(d.train.layout()));
            w.set_metadata("model", model);
            w.set_metadata("epochs", std::to_string(epochs));
            w.write((fs::path(out) / "data.safetensors").string());
        }
        // One epoch per fit() so that each epoch's test metrics are recorded; the trainer keeps
        // its optimizer state between calls, and epoch_source hands the batcher the real epoch.
        xrec::train::trainer tr(m, s, train_options(1, seed));
        xrec::data::batcher<T> tb(d.train, 256, true, seed), eb(d.test, 1024);
        res << "{\"model\": \"" << model << "\", \"dataset\": \"" << ds << "\", \"seed\": " << seed << ", \"epochs\": [";
        for (long e = 0; e < epochs; ++e) {
            struct epoch_source {
                xrec::data::batcher<T>* b;
                long e;
                void start_epoch(std::int64_t) { b->start_epoch(e); }
                bool next(xrec::batch<T>& out) { return b->next(out); }
            } src{&tb, e};
            tr.fit(src);
            const auto r = tr.evaluate(eb);
            res << (e ? ", " : "") << "{\"epoch\": " << e + 1 << ", \"auc\": [";
            for (std::size_t t = 0; t < r.size(); ++t) res << (t ? ", " : "") << r[t].auc;
            res << "], \"logloss\": [";
            for (std::size_t t = 0; t < r.size(); ++t) res << (t ? ", " : "") << r[t].logloss;
            res << "]}";
        }
        res << "]}";
        xrec::io::save_checkpoint((fs::path(out) / "final.safetensors").string(), s, {{"model", model}});
    });
    std::ofstream((fs::path(out) / "xrec.json").string()) << res.str() << "\n";
    std::printf("%s\n", res.str().c_str());
    return 0;
}

}  // namespace
}  // namespace xrec_eval

int main(int argc, char** argv) {
    using namespace xrec_eval;
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s criteo|shop|export [--key value ...]\n", argv[0]);
        return 2;
    }
    args a;
    if (!a.parse(argc, argv, 2, "xrec_eval")) return 2;
    try {
        const std::string cmd = argv[1];
        if (cmd == "criteo") return cmd_criteo(a);
        if (cmd == "shop") return cmd_shop(a);
        if (cmd == "export") return cmd_export(a);
        std::fprintf(stderr, "unknown command '%s'\n", cmd.c_str());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "xrec_eval: %s\n", e.what());
        return 1;
    }
}
