// Sequential recommendation on real data (issue 5, "must show" 2 and 3):
//  - Amazon Beauty / Toys (../shared/data/sequences): the last item of every user is the test
//    target, the second last the validation target; full ranking over all items with the
//    user's history masked (never the target itself, as train::evaluate_full);
//    ties count against the target. sasrec (BCE or softmax CE) and gru4rec, HR@10 and
//    NDCG@10 on the test targets at the epoch with the best validation NDCG@10.
//  - rsc15_100k (../shared/data/rsc15_100k): gru4rec trained on train_full; every next click
//    of the test sessions (items unseen in training dropped, sessions of < 2 clicks
//    dropped), full ranking without masking, Recall@20 and MRR@20; most-popular beside it.
// With --export DIR it writes DIR/init.safetensors (the initial weights), DIR/batches.bin
// (every training batch, train/seq_trainer.hpp's format) and DIR/config.txt, which
// eval/seq_parity.py replays in PyTorch.
//
// Usage: rank_seq --dataset beauty|toys|rsc15 --model sasrec|gru4rec [--loss bce|ce|bpr_max]
//                 [--epochs N] [--eval-every K] [--seeds 1,2,3] [--threads N] [--batch B]
//                 [--lr X] [--dropout P] [--hidden H] [--n-sample S] [--bpreg R]
//                 [--buckets K (sasrec: length-bucketed batches over chunks of K batches, 0 off; 50)]
//                 [--block pre_norm|reference (sasrec's block form; pre_norm)]
//                 [--export DIR] [--data DIR]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/models/baselines.hpp"
#include "xrec/models/gru4rec.hpp"
#include "xrec/models/sasrec.hpp"
#include "xrec/train/seq_trainer.hpp"

using namespace xrec;
using B = cpu<>;
using T = float;

namespace {

struct args_t {
    std::string dataset = "beauty", model = "sasrec", loss = "bce", block = "pre_norm", data_dir, export_dir;
    std::int64_t epochs = 0, eval_every = 10, buckets = 50, batch = 0, hidden = 0, n_sample = 2048;
    std::vector<std::uint64_t> seeds = {1};
    int threads = 1;
    double lr = 1e-3, dropout = -1, bpreg = 1.0;
};

args_t parse(int argc, char** argv) {
    args_t a;
    a.data_dir = "../shared/data";  // relative to the project root, as the other eval programs
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        auto v = [&]() -> std::string {
            XREC_CHECK(i + 1 < argc, "rank_seq: ", k, " needs a value");
            return argv[++i];
        };
        if (k == "--dataset") a.dataset = v();
        else if (k == "--model") a.model = v();
        else if (k == "--loss") a.loss = v();
        else if (k == "--epochs") a.epochs = std::stoll(v());
        else if (k == "--eval-every") a.eval_every = std::stoll(v());
        else if (k == "--buckets") a.buckets = std::stoll(v());
        else if (k == "--batch") a.batch = std::stoll(v());
        else if (k == "--hidden") a.hidden = std::stoll(v());
        else if (k == "--n-sample") a.n_sample = std::stoll(v());
        else if (k == "--threads") a.threads = std::stoi(v());
        else if (k == "--lr") a.lr = std::stod(v());
        else if (k == "--dropout") a.dropout = std::stod(v());
        else if (k == "--bpreg") a.bpreg = std::stod(v());
        else if (k == "--block") a.block = v();
        else if (k == "--export") a.export_dir = v();
        else if (k == "--data") a.data_dir = v();
        else if (k == "--seeds") {
            a.seeds.clear();
            std::stringstream ss(v());
            std::string t;
            while (std::getline(ss, t, ',')) a.seeds.push_back(std::stoull(t));
        } else
            XREC_FAIL("rank_seq: unknown option ", k);
    }
    return a;
}

// CSR sequences with owned storage.
struct csr {
    std::vector<std::int64_t> off = {0};
    std::vector<std::int32_t> items;
    train::seq_rows rows() const { return {off, items}; }
    std::int64_t size() const { return static_cast<std::int64_t>(off.size()) - 1; }
    void push(std::span<const std::int32_t> s) {
        items.insert(items.end(), s.begin(), s.end());
        off.push_back(static_cast<std::int64_t>(items.size()));
    }
};

// "user i1 i2 ..." with 1-based items -> 0-based; users keep file order.
struct user_split {
    csr train, train_valid;  // the training prefix; the prefix plus the validation item
    std::vector<std::int32_t> valid, test;
    std::int32_t n_items = 0;
};

user_split load_user_sequences(const std::string& path) {
    std::ifstream in(path);
    XREC_CHECK(in.good(), "rank_seq: cannot read ", path);
    user_split s;
    std::string line;
    std::vector<std::int32_t> seq;
    while (std::getline(in, line)) {
        std::stringstream ss(line);
        std::int64_t user, it;
        ss >> user;
        seq.clear();
        while (ss >> it) {
            seq.push_back(static_cast<std::int32_t>(it - 1));
            s.n_items = std::max<std::int32_t>(s.n_items, static_cast<std::int32_t>(it));
        }
        if (seq.size() < 3) continue;
        const std::span<const std::int32_t> all(seq);
        s.train.push(all.first(seq.size() - 2));
        s.train_valid.push(all.first(seq.size() - 1));
        s.valid.push_back(seq[seq.size() - 2]);
        s.test.push_back(seq.back());
    }
    return s;
}

// rsc15 TSV (SessionId, ItemId, Time; header): sessions ordered by their first click, clicks
// by time (file order on ties). `vocab` maps raw item ids; `grow` adds unseen ones.
csr load_sessions(const std::string& path, std::unordered_map<std::int64_t, std::int32_t>& vocab, bool grow,
                  std::int64_t* dropped = nullptr) {
    std::ifstream in(path);
    XREC_CHECK(in.good(), "rank_seq: cannot read ", path);
    std::string line;
    std::getline(in, line);
    struct ev {
        std::int64_t session, item;
        double time;
        std::int64_t order;
    };
    std::vector<ev> evs;
    std::int64_t n = 0;
    while (std::getline(in, line)) {
        std::stringstream ss(line);
        ev e{};
        ss >> e.session >> e.item >> e.time;
        e.order = n++;
        evs.push_back(e);
    }
    std::unordered_map<std::int64_t, double> first;
    for (const auto& e : evs) {
        auto it = first.find(e.session);
        if (it == first.end() || e.time < it->second) first[e.session] = e.time;
    }
    std::stable_sort(evs.begin(), evs.end(), [&](const ev& a, const ev& b) {
        const double fa = first[a.session], fb = first[b.session];
        if (fa != fb) return fa < fb;
        if (a.session != b.session) return a.session < b.session;
        if (a.time != b.time) return a.time < b.time;
        return a.order < b.order;
    });
    csr out;
    std::vector<std::int32_t> cur;
    std::int64_t cur_s = -1, drop = 0;
    auto flush = [&] {
        if (cur.size() >= 2) out.push(cur);
        cur.clear();
    };
    for (const auto& e : evs) {
        if (e.session != cur_s) {
            flush();
            cur_s = e.session;
        }
        auto it = vocab.find(e.item);
        if (it == vocab.end()) {
            if (!grow) {
                ++drop;
                continue;
            }
            it = vocab.emplace(e.item, static_cast<std::int32_t>(vocab.size())).first;
        }
        cur.push_back(it->second);
    }
    flush();
    if (dropped) *dropped = drop;
    return out;
}

// Leave-one-out full-ranking metrics at K = 10.
struct loo_metrics {
    double hr = 0, ndcg = 0;
    std::int64_t users = 0;
};

// Rank of `target` among the unmasked items: the other items scoring >= the target (ties
// and NaN against it). The target itself is never masked (train::evaluate_full's rule; no
// Beauty or Toys user has a repeated test item, so the rule changes nothing there).
std::int64_t rank_of(const float* sc, std::int64_t n, std::int32_t target, std::span<const std::int32_t> masked) {
    const float st = sc[target];
    std::int64_t r = 0;
    for (std::int64_t j = 0; j < n; ++j) r += !(sc[j] < st);
    r -= 1;  // the target itself
    for (std::int32_t m : masked)
        if (m != target && !(sc[m] < st)) --r;  // masked items do not compete (history items counted once)
    return r;
}

// Score-all for a batch of users: f(users [b], out [b, n]).
template <class F>
loo_metrics evaluate_loo(const csr& input, std::span<const std::int32_t> targets, std::int64_t n, F&& score) {
    loo_metrics m;
    const std::int64_t bs = 256;
    std::vector<float> sc;
    std::vector<std::int32_t> hist;
    for (std::int64_t u0 = 0; u0 < input.size(); u0 += bs) {
        const std::int64_t u1 = std::min(input.size(), u0 + bs);
        sc.resize(static_cast<std::size_t>((u1 - u0) * n));
        score(u0, u1, sc.data());
        for (std::int64_t u = u0; u < u1; ++u) {
            const auto h = input.rows().row(u);
            hist.assign(h.begin(), h.end());
            std::sort(hist.begin(), hist.end());
            hist.erase(std::unique(hist.begin(), hist.end()), hist.end());
            const std::int64_t r = rank_of(sc.data() + (u - u0) * n, n, targets[static_cast<std::size_t>(u)], hist);
            if (r < 10) {
                m.hr += 1;
                m.ndcg += 1.0 / std::log2(static_cast<double>(r) + 2.0);
            }
            ++m.users;
        }
    }
    m.hr /= static_cast<double>(m.users);
    m.ndcg /= static_cast<double>(m.users);
    return m;
}

void export_config(const args_t& a, const std::string& extra) {
    if (a.export_dir.empty()) return;
    std::ofstream c(a.export_dir + "/config.txt");
    c << "dataset " << a.dataset << "\nmodel " << a.model << "\nloss " << a.loss << "\nlr " << a.lr << "\n" << extra;
}

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// gru4rec states after running each user's whole input sequence, then scores for all items.
void gru_score_users(const models::gru4rec<T, B>& m, const csr& input, std::int64_t u0, std::int64_t u1, float* out) {
    infer_ctx<T, B> ic;
    const std::int64_t H = m.hidden(), L = m.layers(), n = m.n_items(), nb = u1 - u0;
    std::vector<T> h(static_cast<std::size_t>(L * nb * H), T(0)), hb;
    std::vector<T> last(static_cast<std::size_t>(nb * H), T(0));
    std::int64_t tmax = 0;
    for (std::int64_t u = u0; u < u1; ++u) tmax = std::max<std::int64_t>(tmax, static_cast<std::int64_t>(input.rows().row(u).size()));
    std::vector<std::int64_t> rows, items;
    for (std::int64_t t = 0; t < tmax; ++t) {
        rows.clear();
        items.clear();
        for (std::int64_t u = u0; u < u1; ++u) {
            const auto s = input.rows().row(u);
            if (static_cast<std::int64_t>(s.size()) > t) {
                rows.push_back(u - u0);
                items.push_back(s[static_cast<std::size_t>(t)]);
            }
        }
        const auto na = static_cast<std::int64_t>(rows.size());
        hb.assign(static_cast<std::size_t>(L * na * H), T(0));
        for (std::int64_t l = 0; l < L; ++l)
            for (std::int64_t i = 0; i < na; ++i)
                std::copy_n(h.data() + (l * nb + rows[static_cast<std::size_t>(i)]) * H, H, hb.data() + (l * na + i) * H);
        ic.reset();
        const auto r = m.step(ic, items, ic.input(tensor_view<const T>{hb.data(), shape{L, na, H}}));
        for (std::int64_t l = 0; l < L; ++l)
            for (std::int64_t i = 0; i < na; ++i)
                std::copy_n(r.h.data + (l * na + i) * H, H, h.data() + (l * nb + rows[static_cast<std::size_t>(i)]) * H);
        for (std::int64_t i = 0; i < na; ++i) std::copy_n(r.out.data + i * H, H, last.data() + rows[static_cast<std::size_t>(i)] * H);
    }
    ic.reset();
    const var<T> sc = m.score_all(ic, ic.input(tensor_view<const T>{last.data(), shape{nb, H}}));
    std::copy_n(sc.data, nb * n, out);
}

int run_amazon(const args_t& a) {
    const std::string file = a.dataset == "toys" ? "Toys_and_Games.txt" : "Beauty.txt";
    const user_split sp = load_user_sequences(a.data_dir + "/sequences/" + file);
    const std::int64_t n = sp.n_items;
    std::printf("%s: %lld users, %lld items; protocol: leave-last-out (test = last item, valid = second last), full "
                "ranking over all %lld items, history masked, ties against the target; metrics at the epoch with the "
                "best validation NDCG@10\n",
                a.dataset.c_str(), static_cast<long long>(sp.train.size()), static_cast<long long>(n),
                static_cast<long long>(n));
    std::vector<double> hrs, ndcgs;
    for (std::uint64_t seed : a.seeds) {
        param_store<T, B> store(seed);
        train::seq_train_options to;
        to.seed = seed;
        to.threads = a.threads;
        to.lr = a.lr;
        to.epochs = 1;
        if (!a.export_dir.empty()) {
            std::filesystem::create_directories(a.export_dir);
            to.batch_log = a.export_dir + "/batches.bin";
        }
        double best = -1;
        loo_metrics best_test, last_test;
        std::int64_t best_epoch = 0;
        const double t0 = now();
        double train_s = 0;
        auto eval_epoch = [&](std::int64_t e, auto&& score_valid, auto&& score_test, double loss) {
            const double te = now();
            const loo_metrics v = evaluate_loo(sp.train, sp.valid, n, score_valid);
            const double es = now() - te;
            last_test = evaluate_loo(sp.train_valid, sp.test, n, score_test);
            std::printf("  seed %llu epoch %lld: loss %.4f, valid HR@10 %.4f NDCG@10 %.4f, test HR@10 %.4f NDCG@10 %.4f "
                        "(train %.0f s, eval %.0f s)\n",
                        static_cast<unsigned long long>(seed), static_cast<long long>(e), loss, v.hr, v.ndcg,
                        last_test.hr, last_test.ndcg, train_s, es);
            std::fflush(stdout);
            if (v.ndcg > best) {
                best = v.ndcg;
                best_epoch = e;
                best_test = last_test;
            }
        };
        if (a.model == "sasrec") {
            models::sasrec_options o;
            o.n_items = n;
            o.dim = 64;
            o.max_len = 50;
            o.blocks = 2;
            o.heads = 1;
            o.dropout = a.dropout >= 0 ? a.dropout : 0.5;
            XREC_CHECK(a.block == "pre_norm" || a.block == "reference", "rank_seq: --block must be pre_norm or reference, got ",
                       a.block);
            o.block = a.block == "reference" ? models::sasrec_block::reference : models::sasrec_block::pre_norm;
            models::sasrec<T, B> m(store, o);
            to.batch_size = a.batch > 0 ? a.batch : 128;
            to.beta2 = 0.98;  // the SASRec reference's Adam
            to.length_buckets = a.buckets;
            if (!a.export_dir.empty()) io::save_checkpoint(a.export_dir + "/init.safetensors", store);
            export_config(a, "dim 64\nmax_len 50\nblocks 2\nheads 1\nblock " + a.block + "\ndropout " + std::to_string(o.dropout) +
                                 "\nbatch " + std::to_string(to.batch_size) + "\nbeta2 0.98\nn_items " +
                                 std::to_string(n) + "\n");
            const auto lk = a.loss == "ce" ? train::sasrec_loss::softmax_ce : train::sasrec_loss::bce;
            train::sasrec_trainer<T, B> tr(m, store, to, lk);
            infer_ctx<T, B> ic;  // reused: its workspace is reserved once for the largest batch
            auto scorer = [&](const csr& input) {
                return [&m, &input, &ic](std::int64_t u0, std::int64_t u1, float* out) {
                    ic.reset();
                    std::vector<std::int64_t> ids(static_cast<std::size_t>((u1 - u0) * 50));
                    for (std::int64_t u = u0; u < u1; ++u)
                        m.input_row<std::int32_t>(input.rows().row(u),
                                                  std::span<std::int64_t>(ids.data() + (u - u0) * 50, 50));
                    const var<T> sc = m.scores(ic, m.state(ic, ids));
                    std::copy_n(sc.data, sc.numel(), out);
                };
            };
            const std::int64_t epochs = a.epochs > 0 ? a.epochs : 200;
            for (std::int64_t e = 1; e <= epochs; ++e) {
                const double ts = now();
                const double loss = tr.train_epoch(sp.train.rows(), e);
                train_s += now() - ts;
                if (e % a.eval_every == 0 || e == epochs) eval_epoch(e, scorer(sp.train), scorer(sp.train_valid), loss);
            }
        } else {
            models::gru4rec_options o;
            o.n_items = n;
            o.hidden = a.hidden > 0 ? a.hidden : 64;
            o.dropout_hidden = a.dropout >= 0 ? a.dropout : 0.0;
            models::gru4rec<T, B> m(store, o);
            to.batch_size = a.batch > 0 ? a.batch : 64;
            if (!a.export_dir.empty()) io::save_checkpoint(a.export_dir + "/init.safetensors", store);
            train::gru4rec_train_options go;
            go.loss = a.loss == "ce" ? train::gru4rec_loss::cross_entropy : train::gru4rec_loss::bpr_max;
            go.n_sample = a.n_sample;
            go.bpreg = a.bpreg;
            go.shuffle = true;
            export_config(a, "hidden " + std::to_string(o.hidden) + "\nbatch " + std::to_string(to.batch_size) +
                                 "\nn_sample " + std::to_string(go.n_sample) + "\nbpreg " + std::to_string(go.bpreg) +
                                 "\nn_items " + std::to_string(n) + "\n");
            train::gru4rec_trainer<T, B> tr(m, store, to, go);
            tr.set_popularity(sp.train.rows());
            auto scorer = [&](const csr& input) {
                return [&m, &input](std::int64_t u0, std::int64_t u1, float* out) { gru_score_users(m, input, u0, u1, out); };
            };
            const std::int64_t epochs = a.epochs > 0 ? a.epochs : 30;
            for (std::int64_t e = 1; e <= epochs; ++e) {
                const double ts = now();
                const double loss = tr.train_epoch(sp.train.rows(), e);
                train_s += now() - ts;
                if (e % a.eval_every == 0 || e == epochs) eval_epoch(e, scorer(sp.train), scorer(sp.train_valid), loss);
            }
        }
        std::printf("%s %s %s seed %llu: final epoch test HR@10 %.4f NDCG@10 %.4f\n", a.dataset.c_str(), a.model.c_str(),
                    a.loss.c_str(), static_cast<unsigned long long>(seed), last_test.hr, last_test.ndcg);
        std::printf("%s %s %s seed %llu: best valid epoch %lld; test HR@10 %.4f NDCG@10 %.4f (%lld users; %.0f s)\n",
                    a.dataset.c_str(), a.model.c_str(), a.loss.c_str(), static_cast<unsigned long long>(seed),
                    static_cast<long long>(best_epoch), best_test.hr, best_test.ndcg, static_cast<long long>(best_test.users),
                    now() - t0);
        std::fflush(stdout);
        hrs.push_back(best_test.hr);
        ndcgs.push_back(best_test.ndcg);
    }
    auto mean_se = [](const std::vector<double>& v) {
        const double m = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
        double s = 0;
        for (double x : v) s += (x - m) * (x - m);
        const double se = v.size() > 1 ? std::sqrt(s / static_cast<double>(v.size() - 1) / static_cast<double>(v.size())) : 0;
        return std::pair<double, double>{m, se};
    };
    const auto [hm, hse] = mean_se(hrs);
    const auto [nm, nse] = mean_se(ndcgs);
    std::printf("RESULT %s %s %s: HR@10 %.4f +- %.4f, NDCG@10 %.4f +- %.4f over %zu seed(s)\n", a.dataset.c_str(),
                a.model.c_str(), a.loss.c_str(), hm, hse, nm, nse, hrs.size());
    return 0;
}

int run_rsc15(const args_t& a) {
    std::unordered_map<std::int64_t, std::int32_t> vocab;
    const std::string dir = a.data_dir + "/rsc15_100k/";
    const csr train = load_sessions(dir + "yoochoose-clicks-100k_train_full.txt", vocab, true);
    std::int64_t dropped = 0;
    const csr test = load_sessions(dir + "yoochoose-clicks-100k_test.txt", vocab, false, &dropped);
    const auto n = static_cast<std::int64_t>(vocab.size());
    std::int64_t events = 0;
    for (std::int64_t s = 0; s < test.size(); ++s) events += static_cast<std::int64_t>(test.rows().row(s).size()) - 1;
    std::printf("rsc15_100k: %lld train sessions, %lld items; test: %lld sessions, %lld next-click events (%lld clicks "
                "on unseen items dropped); protocol: every next click, full ranking over all %lld items, no masking, "
                "ties against the target\n",
                static_cast<long long>(train.size()), static_cast<long long>(n), static_cast<long long>(test.size()),
                static_cast<long long>(events), static_cast<long long>(dropped), static_cast<long long>(n));
    // Most popular by training clicks.
    std::vector<float> pop(static_cast<std::size_t>(n), 0.0f);
    for (std::int32_t i : train.items) pop[static_cast<std::size_t>(i)] += 1;
    auto metrics20 = [&](auto&& next_scores) {
        double rec = 0, mrr = 0;
        std::int64_t ev = 0;
        next_scores([&](const float* sc, std::int32_t target) {
            std::int64_t r = -1;
            const float st = sc[target];
            for (std::int64_t j = 0; j < n; ++j) r += sc[j] >= st;
            if (r < 20) {
                rec += 1;
                mrr += 1.0 / static_cast<double>(r + 1);
            }
            ++ev;
        });
        return std::pair<double, double>{rec / static_cast<double>(ev), mrr / static_cast<double>(ev)};
    };
    const auto [pr, pm] = metrics20([&](auto&& emit) {
        for (std::int64_t s = 0; s < test.size(); ++s) {
            const auto row = test.rows().row(s);
            for (std::size_t i = 0; i + 1 < row.size(); ++i) emit(pop.data(), row[i + 1]);
        }
    });
    std::printf("most-popular: Recall@20 %.4f MRR@20 %.4f\n", pr, pm);
    // Session kNN (V-SkNN: linear decay, k 100, the 500 most recent sessions sharing an item).
    const models::session_knn sknn(static_cast<std::int32_t>(n), train.off, train.items);
    std::vector<float> ks(static_cast<std::size_t>(n));
    const auto [kr, km] = metrics20([&](auto&& emit) {
        for (std::int64_t s = 0; s < test.size(); ++s) {
            const auto row = test.rows().row(s);
            for (std::size_t i = 0; i + 1 < row.size(); ++i) {
                sknn.score_all(row.first(i + 1), ks);
                emit(ks.data(), row[i + 1]);
            }
        }
    });
    std::printf("session-kNN (V-SkNN, k 100, sample 500): Recall@20 %.4f MRR@20 %.4f\n", kr, km);
    std::fflush(stdout);
    std::vector<double> recs, mrrs;
    for (std::uint64_t seed : a.seeds) {
        param_store<T, B> store(seed);
        models::gru4rec_options o;
        o.n_items = n;
        o.hidden = a.hidden > 0 ? a.hidden : 100;
        o.dropout_hidden = a.dropout >= 0 ? a.dropout : 0.0;
        models::gru4rec<T, B> m(store, o);
        train::seq_train_options to;
        to.seed = seed;
        to.threads = a.threads;
        to.lr = a.lr;
        to.batch_size = a.batch > 0 ? a.batch : 32;
        if (!a.export_dir.empty()) {
            std::filesystem::create_directories(a.export_dir);
            to.batch_log = a.export_dir + "/batches.bin";
            io::save_checkpoint(a.export_dir + "/init.safetensors", store);
        }
        train::gru4rec_train_options go;
        go.loss = a.loss == "ce" ? train::gru4rec_loss::cross_entropy : train::gru4rec_loss::bpr_max;
        go.n_sample = a.n_sample;
        go.bpreg = a.bpreg;
        export_config(a, "hidden " + std::to_string(o.hidden) + "\nbatch " + std::to_string(to.batch_size) +
                             "\nn_sample " + std::to_string(go.n_sample) + "\nbpreg " + std::to_string(go.bpreg) +
                             "\nn_items " + std::to_string(n) + "\n");
        train::gru4rec_trainer<T, B> tr(m, store, to, go);
        tr.set_popularity(train.rows());
        const std::int64_t epochs = a.epochs > 0 ? a.epochs : 10;
        const double t0 = now();
        for (std::int64_t e = 1; e <= epochs; ++e) {
            const double loss = tr.train_epoch(train.rows(), e);
            std::printf("  seed %llu epoch %lld: loss %.4f (%.0f s)\n", static_cast<unsigned long long>(seed),
                        static_cast<long long>(e), loss, now() - t0);
            std::fflush(stdout);
        }
        const auto [r, mr] = metrics20([&](auto&& emit) {
            infer_ctx<T, B> ic;
            const std::int64_t H = o.hidden;
            std::vector<T> h(static_cast<std::size_t>(H));
            for (std::int64_t s = 0; s < test.size(); ++s) {
                const auto row = test.rows().row(s);
                std::fill(h.begin(), h.end(), T(0));
                for (std::size_t i = 0; i + 1 < row.size(); ++i) {
                    ic.reset();
                    const std::vector<std::int64_t> it = {row[i]};
                    const auto st = m.step(ic, it, ic.input(tensor_view<const T>{h.data(), shape{1, 1, H}}));
                    std::copy_n(st.h.data, H, h.data());
                    const var<T> sc = m.score_all(ic, st.out);
                    emit(sc.data, row[i + 1]);
                }
            }
        });
        std::printf("gru4rec %s seed %llu: Recall@20 %.4f MRR@20 %.4f (%.0f s)\n", a.loss.c_str(),
                    static_cast<unsigned long long>(seed), r, mr, now() - t0);
        recs.push_back(r);
        mrrs.push_back(mr);
    }
    const double rm = std::accumulate(recs.begin(), recs.end(), 0.0) / static_cast<double>(recs.size());
    const double mm = std::accumulate(mrrs.begin(), mrrs.end(), 0.0) / static_cast<double>(mrrs.size());
    std::printf("RESULT rsc15 gru4rec %s: Recall@20 %.4f MRR@20 %.4f over %zu seed(s); most-popular %.4f / %.4f; "
                "session-kNN %.4f / %.4f\n",
                a.loss.c_str(), rm, mm, recs.size(), pr, pm, kr, km);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const args_t a = parse(argc, argv);
        if (a.dataset == "rsc15") return run_rsc15(a);
        return run_amazon(a);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "rank_seq: %s\n", e.what());
        return 1;
    }
}
