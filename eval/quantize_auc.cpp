// quantize_auc: the accuracy cost of reduced-precision serving weights (issue 6).
//
//   quantize_auc [--data DIR] [--seeds 3] [--epochs 3] [--shop_epochs 3] [--shop_rows N]
//                [--only criteo,shop-basic,shop-sequence]
//
// For each data set and model (Criteo: deepfm; synthetic shop, basic setting: deepfm;
// sequence setting: din) and each seed, one model is trained in float exactly as xrec_eval
// trains it (same options, same hyper-parameters), then the SAME trained weights are served
// three ways on the test rows (trainer::evaluate, an infer_ctx):
//   fp32       the weights as trained;
//   bf16       dense weights rounded to bf16 (serve::round_dense_to_bf16: the numerics of
//              bf16 storage, the GEMMs still read floats) and tables stored as bf16;
//   bf16+int8  the same dense weights, tables stored as row-wise int8 (narrow tables, such
//              as deepfm's [rows, 1] first-order weights, as bf16: serve::quantize_options).
// It prints test AUC per precision and the per-seed AUC difference to fp32 (mean ± standard
// error over seeds), and the table memory in each form. Criteo: dev+test reported together,
// as xrec_eval does; the shop: its test split (--shop_rows shrinks the training set, default
// the generator's 1,000,000 / 600,000 rows).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "models.hpp"
#include "xrec/data/dataset.hpp"
#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"
#include "xrec/data/synthetic_shop.hpp"
#include "xrec/serve/quantize.hpp"
#include "xrec/train/trainer.hpp"
#include "xrec/version.hpp"

#include "common.hpp"

namespace xrec_eval {
namespace {

static_assert(std::is_same_v<T, float>, "quantize_auc serves float models");
namespace fs = std::filesystem;
using dataset = xrec::data::ctr_dataset<T>;

struct split {
    std::string name;
    dataset train, test;
};

// Criteo as xrec_eval reads it: schema fitted on the training file, dev + test encoded with it.
split criteo(const std::string& dir) {
    split d;
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
    d.test = std::move(ev);
    return d;
}

split shop(xrec::data::shop_setting setting, std::uint64_t seed, std::int64_t rows) {
    xrec::data::shop_options o;
    o.setting = setting;
    o.seed = seed;
    o.purchase_task = false;
    if (rows > 0) o.train_rows = rows;
    auto sh = xrec::data::make_shop(o);
    split d;
    d.name = setting == xrec::data::shop_setting::basic ? "shop-basic" : "shop-sequence";
    d.train = std::move(sh.train);
    d.test = std::move(sh.test);
    return d;
}

// xrec_eval's training set-ups (eval/xrec_eval.cpp train_options / shop_train_options).
xrec::train::trainer_options criteo_options(long epochs, std::uint64_t seed) {
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
xrec::train::trainer_options shop_options(long epochs, std::uint64_t seed) {
    auto o = criteo_options(epochs, seed);
    o.dense_lr = 2e-3;
    o.sparse = xrec::train::sparse_optimizer::rowwise_adagrad;
    o.sparse_lr = 0.05;
    o.threads = 2;
    return o;
}

struct seed_result {
    double auc[3] = {0, 0, 0};  // fp32, bf16, bf16 + int8
    std::int64_t bytes[3] = {0, 0, 0};
};

constexpr xrec::serve::serving_precision precisions[3] = {
    xrec::serve::serving_precision::fp32, xrec::serve::serving_precision::bf16,
    xrec::serve::serving_precision::bf16_int8};

seed_result run(const std::string& model, const split& d, std::uint64_t seed,
                const xrec::train::trainer_options& opt) {
    store_t s(seed);
    seed_result r;
    const auto t0 = std::chrono::steady_clock::now();
    with_model(model, s, d.train.layout(), zoo_config{}, [&](auto& m) {
        xrec::train::trainer tr(m, s, opt);
        xrec::data::batcher<T> tb(d.train, 256, true, seed);
        tr.fit(tb);
        // The trained weights, to serve each precision from the same starting point.
        std::vector<std::vector<T>> w;
        for (auto& nt : s.named_tensors()) w.emplace_back(nt.data, nt.data + nt.s.numel());
        for (int p = 0; p < 3; ++p) {
            const auto rep = xrec::serve::quantize(s, precisions[p]);
            std::int64_t bytes = 0;
            for (std::int64_t i = 0; i < s.table_count(); ++i) bytes += xrec::serve::table_bytes(s.table(i));
            r.bytes[p] = bytes;
            xrec::data::batcher<T> eb(d.test, 1024);
            r.auc[p] = tr.evaluate(eb).at(0).auc;
            xrec::serve::dequantize_tables(s);
            auto nts = s.named_tensors();
            for (std::size_t i = 0; i < nts.size(); ++i) std::copy(w[i].begin(), w[i].end(), nts[i].data);
        }
    });
    std::fprintf(stderr, "[%s %s seed %llu: AUC fp32 %.5f bf16 %.5f int8 %.5f, %.1f s]\n", d.name.c_str(), model.c_str(),
                 static_cast<unsigned long long>(seed), r.auc[0], r.auc[1], r.auc[2],
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return r;
}

void report(const std::string& data, const std::string& model, const std::vector<seed_result>& rs) {
    std::vector<double> a[3], diff[2];
    for (const auto& r : rs) {
        for (int p = 0; p < 3; ++p) a[p].push_back(r.auc[p]);
        for (int p = 1; p < 3; ++p) diff[p - 1].push_back(r.auc[p] - r.auc[0]);
    }
    const auto f = summarize(a[0]), b = summarize(a[1]), i = summarize(a[2]), db = summarize(diff[0]),
               di = summarize(diff[1]);
    std::printf("| %s | %s | %.4f ± %.4f | %.4f ± %.4f | %+.5f ± %.5f | %.4f ± %.4f | %+.5f ± %.5f | %.2f / %.2f / %.2f |\n",
                data.c_str(), model.c_str(), f.mean, f.se, b.mean, b.se, db.mean, db.se, i.mean, i.se, di.mean, di.se,
                static_cast<double>(rs.at(0).bytes[0]) / 1e6, static_cast<double>(rs.at(0).bytes[1]) / 1e6,
                static_cast<double>(rs.at(0).bytes[2]) / 1e6);
    std::fflush(stdout);
}

int main_impl(const args& a) {
    const auto dir = a.get("data", "../shared/data/criteo");
    const long seeds = a.num("seeds", 3), epochs = a.num("epochs", 3), shop_epochs = a.num("shop_epochs", 3);
    const long shop_rows = a.num("shop_rows", 0);
    const auto only = split_list(a.get("only", "criteo,shop-basic,shop-sequence"));
    auto want = [&](const char* n) { return std::find(only.begin(), only.end(), n) != only.end(); };
    std::printf("xrec %s: serving precision vs test AUC, %ld seeds (Criteo %ld epochs; shop %ld epochs, %s training rows)\n",
                xrec::version_string, seeds, epochs, shop_epochs,
                shop_rows > 0 ? std::to_string(shop_rows).c_str() : "default");
    std::printf("| data | model | fp32 AUC | bf16 AUC | bf16 - fp32 | bf16+int8 AUC | int8 - fp32 | tables MB fp32 / bf16 / int8 |\n"
                "|---|---|---|---|---|---|---|---|\n");
    if (want("criteo")) {
        const auto d = criteo(dir);
        std::vector<seed_result> rs;
        for (long sd = 1; sd <= seeds; ++sd)
            rs.push_back(run("deepfm", d, static_cast<std::uint64_t>(sd), criteo_options(epochs, static_cast<std::uint64_t>(sd))));
        report("criteo", "deepfm", rs);
    }
    for (auto [name, setting, model] : {std::tuple{"shop-basic", xrec::data::shop_setting::basic, "deepfm"},
                                        std::tuple{"shop-sequence", xrec::data::shop_setting::sequence, "din"}}) {
        if (!want(name)) continue;
        std::vector<seed_result> rs;
        for (long sd = 1; sd <= seeds; ++sd) {
            const auto d = shop(setting, static_cast<std::uint64_t>(sd), shop_rows);
            rs.push_back(run(model, d, static_cast<std::uint64_t>(sd), shop_options(shop_epochs, static_cast<std::uint64_t>(sd))));
        }
        report(name, model, rs);
    }
    return 0;
}

}  // namespace
}  // namespace xrec_eval

int main(int argc, char** argv) {
    xrec_eval::args a;
    if (!a.parse(argc, argv, 1, "quantize_auc")) return 2;
    try {
        return xrec_eval::main_impl(a);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "quantize_auc: %s\n", e.what());
        return 1;
    }
}
