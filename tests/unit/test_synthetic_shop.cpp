// Synthetic shop (data/synthetic_shop.hpp): the generator is deterministic, its rows are
// valid batches of its layout, and its planted model has the properties the model tests rely
// on, each measured here rather than assumed:
//  - the Bayes-optimal AUC lies in [0.75, 0.85] in every setting (three seeds);
//  - basic: the best logistic regression on the raw fields (fitted to convergence on the
//    true probabilities, i.e. its population optimum) stays >= 0.03 below the optimum, and the
//    three-way term is invisible to pairwise models: its pairwise projections are zero and an
//    oracle that knows every other term exactly plus the best pairwise tables falls short,
//    while the same fit with the three-way table reaches the optimum;
//  - sequence: the click is not a function of the mean-pooled history (two constructions with
//    equal means and different probabilities), and an oracle that knows everything but sees the
//    history only through the matching fractions (what a mean of one-hot vectors shows) falls
//    short of the optimum, while the same fit on match counts reaches it;
//  - purchase implies click, conversion is drawn on every impression, and the clicked rows
//    are a biased sample for CVR;
//  - multi_task: the two tasks' logit correlation follows task_correlation.
// Sizes are small (at most 150k rows per shop); the file runs in a few seconds in Release.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "support/checks.hpp"
#include "xrec/data/dataset.hpp"
#include "xrec/data/synthetic_shop.hpp"

namespace {

using xrec::data::make_shop;
using xrec::data::shop;
using xrec::data::shop_event;
using xrec::data::shop_logits;
using xrec::data::shop_options;
using xrec::data::shop_setting;

constexpr shop_setting all_settings[] = {shop_setting::basic, shop_setting::sequence, shop_setting::multi_task};

shop_options sized(shop_setting s, std::int64_t train, std::int64_t valid, std::int64_t test, std::uint64_t seed = 1) {
    shop_options o;
    o.setting = s;
    o.train_rows = train;
    o.valid_rows = valid;
    o.test_rows = test;
    o.seed = seed;
    return o;
}

double auc(std::span<const double> score, std::span<const float> label) {
    return xrec::data::detail::exact_auc(score, label);
}

std::vector<float> labels_of(const xrec::data::ctr_dataset<float>& d, std::int64_t task) {
    std::vector<float> y(static_cast<std::size_t>(d.size()));
    for (std::int64_t r = 0; r < d.size(); ++r) y[static_cast<std::size_t>(r)] = d.label(r, task);
    return y;
}

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
    double ma = 0, mb = 0;
    for (std::size_t i = 0; i < a.size(); ++i) ma += a[i], mb += b[i];
    ma /= static_cast<double>(a.size()), mb /= static_cast<double>(b.size());
    double sab = 0, saa = 0, sbb = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        sab += (a[i] - ma) * (b[i] - mb), saa += (a[i] - ma) * (a[i] - ma), sbb += (b[i] - mb) * (b[i] - mb);
    return sab / std::sqrt(saa * sbb);
}

// ---- A logistic model fitted by block-coordinate Newton --------------------------------
// logit_r = offset_r + sum over blocks of (w_b[idx_b(r)] for a one-hot block, w_b x_b(r) for a
// dense one), fitted to soft targets p_r (the true probabilities: the minimiser of the
// expected log loss, i.e. what the model class reaches with unlimited data). Within a one-hot
// block the Hessian is diagonal, so each block step is an exact Newton step; sweeping the
// blocks is a convex coordinate descent that converges to the optimum.
struct block {
    std::vector<std::int32_t> idx;  // one-hot: the active column of each row (-1: none)
    std::int32_t size = 1;
    std::vector<double> x;  // dense: the value of each row (then idx is unused)
};
struct fit_result {
    std::vector<std::vector<double>> w;
    std::vector<double> loss;  // mean cross-entropy before the first and after every sweep
    double max_grad = 0;       // largest |d loss / d w| after the last sweep
};

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

double cross_entropy(const std::vector<double>& p, const std::vector<double>& z) {
    double s = 0;
    for (std::size_t r = 0; r < p.size(); ++r) {
        const double q = std::clamp(sigmoid(z[r]), 1e-15, 1 - 1e-15);
        s -= p[r] * std::log(q) + (1 - p[r]) * std::log(1 - q);
    }
    return s / static_cast<double>(p.size());
}

fit_result fit_logistic(std::vector<double> z, const std::vector<double>& p, const std::vector<block>& blocks,
                        int sweeps) {
    const std::size_t n = p.size();
    const double l2 = 1e-6 * static_cast<double>(n);  // a whisper of ridge for never-seen columns
    fit_result f;
    for (const auto& b : blocks) f.w.emplace_back(b.x.empty() ? static_cast<std::size_t>(b.size) : 1, 0.0);
    std::vector<double> g, h, q(n);
    auto sweep = [&](bool update) {
        double mg = 0;
        for (std::size_t k = 0; k < blocks.size(); ++k) {
            const auto& b = blocks[k];
            for (std::size_t r = 0; r < n; ++r) q[r] = sigmoid(z[r]);
            if (!b.x.empty()) {
                double gg = 0, hh = 0;
                for (std::size_t r = 0; r < n; ++r) gg += (q[r] - p[r]) * b.x[r], hh += q[r] * (1 - q[r]) * b.x[r] * b.x[r];
                mg = std::max(mg, std::fabs(gg) / static_cast<double>(n));
                if (!update) continue;
                const double d = std::clamp(-gg / (hh + l2), -2.0, 2.0);
                f.w[k][0] += d;
                for (std::size_t r = 0; r < n; ++r) z[r] += d * b.x[r];
                continue;
            }
            g.assign(static_cast<std::size_t>(b.size), 0.0), h.assign(static_cast<std::size_t>(b.size), 0.0);
            for (std::size_t r = 0; r < n; ++r)
                if (b.idx[r] >= 0) g[static_cast<std::size_t>(b.idx[r])] += q[r] - p[r], h[static_cast<std::size_t>(b.idx[r])] += q[r] * (1 - q[r]);
            for (auto v : g) mg = std::max(mg, std::fabs(v) / static_cast<double>(n));
            if (!update) continue;
            for (std::size_t j = 0; j < g.size(); ++j) f.w[k][j] += g[j] = std::clamp(-g[j] / (h[j] + l2), -2.0, 2.0);
            for (std::size_t r = 0; r < n; ++r)
                if (b.idx[r] >= 0) z[r] += g[static_cast<std::size_t>(b.idx[r])];
        }
        return mg;
    };
    f.loss.push_back(cross_entropy(p, z));
    for (int s = 0; s < sweeps; ++s) sweep(true), f.loss.push_back(cross_entropy(p, z));
    f.max_grad = sweep(false);
    return f;
}

std::vector<double> predict(std::vector<double> z, const std::vector<block>& blocks, const fit_result& f) {
    for (std::size_t k = 0; k < blocks.size(); ++k)
        for (std::size_t r = 0; r < z.size(); ++r)
            z[r] += blocks[k].x.empty() ? (blocks[k].idx[r] >= 0 ? f.w[k][static_cast<std::size_t>(blocks[k].idx[r])] : 0.0)
                                        : f.w[k][0] * blocks[k].x[r];
    return z;
}

/// The decoded rows of one split: events, their planted logits, p(click) and the click labels.
struct rows {
    std::vector<shop_event> ev;
    std::vector<shop_logits> z;
    std::vector<double> p;
    std::vector<float> y;
};
rows decode(const shop& s, const xrec::data::ctr_dataset<float>& d, const std::vector<double>& p) {
    rows r;
    const auto T = static_cast<std::size_t>(s.num_tasks());
    for (std::int64_t i = 0; i < d.size(); ++i) {
        r.ev.push_back(s.decode(d, i));
        r.z.push_back(s.logits(r.ev.back()));
        r.p.push_back(p[static_cast<std::size_t>(i) * T]);
        r.y.push_back(d.label(i, 0));
    }
    return r;
}

using design = std::function<std::vector<block>(const rows&)>;
using offset_fn = std::function<double(const shop_logits&)>;

block one_hot(const rows& r, std::int64_t size, const std::function<std::int64_t(const shop_event&, const shop_logits&)>& col) {
    block b;
    b.size = static_cast<std::int32_t>(size);
    for (std::size_t i = 0; i < r.ev.size(); ++i) b.idx.push_back(static_cast<std::int32_t>(col(r.ev[i], r.z[i])));
    return b;
}
block dense(const rows& r, const std::function<double(const shop_event&)>& x) {
    block b;
    for (const auto& e : r.ev) b.x.push_back(x(e));
    return b;
}

struct fitted {
    double auc;  // of the fitted logits against the test labels
    fit_result fit;
};
/// Fits `des` (+ a fixed offset per row) on the train rows' true probabilities, scores test.
fitted fit_and_score(const char* name, const rows& train, const rows& test, const design& des, const offset_fn& off,
                     int sweeps) {
    const auto bt = des(train), bs = des(test);
    std::vector<double> z0(train.p.size()), z1(test.p.size());
    for (std::size_t i = 0; i < z0.size(); ++i) z0[i] = off(train.z[i]);
    for (std::size_t i = 0; i < z1.size(); ++i) z1[i] = off(test.z[i]);
    fitted out{0, fit_logistic(z0, train.p, bt, sweeps)};
    const auto zt = predict(z1, bs, out.fit);
    out.auc = auc(zt, test.y);
    const auto& L = out.fit.loss;
    std::printf("  %-34s test AUC %.4f  train loss %.5f -> %.5f (last sweep -%.1e), max |grad| %.1e\n", name,
                out.auc, L.front(), L.back(), L[L.size() - 2] - L.back(), out.fit.max_grad);
    return out;
}

}  // namespace

TEST_CASE("synthetic_shop: exact AUC counts ties half") {
    const std::vector<double> s = {0.1, 0.4, 0.35, 0.8};
    const std::vector<float> y = {0, 0, 1, 1};
    CHECK(auc(s, y) == doctest::Approx(0.75));  // pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>both
    const std::vector<double> t = {0.5, 0.5, 0.2, 0.9};
    const std::vector<float> z = {1, 0, 0, 1};  // 0.5 vs 0.5 tie counts 1/2: (1 + 0.5 + 1 + 1) / 4
    CHECK(auc(t, z) == doctest::Approx(0.875));
    const std::vector<float> none = {0, 0, 0, 0};
    CHECK(auc(t, none) == 0.5);
}

TEST_CASE("synthetic_shop: deterministic per seed, different across seeds") {
    for (auto st : all_settings) {
        CAPTURE(xrec::data::shop_setting_name(st));
        const auto a = make_shop(sized(st, 3000, 500, 1000, 7)), b = make_shop(sized(st, 3000, 500, 1000, 7));
        const auto c = make_shop(sized(st, 3000, 500, 1000, 8));
        for (auto [x, y] : {std::pair{&a.train, &b.train}, std::pair{&a.valid, &b.valid}, std::pair{&a.test, &b.test}}) {
            CHECK(x->sparse_column() == y->sparse_column());
            CHECK(x->dense_column() == y->dense_column());
            CHECK(x->label_column() == y->label_column());
            CHECK(x->group_column() == y->group_column());
            for (std::int64_t k = 0; k < a.layout.num_sequences(); ++k) {
                CHECK(x->sequence_column_of(k).values == y->sequence_column_of(k).values);
                CHECK(x->sequence_column_of(k).offsets == y->sequence_column_of(k).offsets);
            }
        }
        CHECK(a.p_train == b.p_train);
        CHECK(a.p_test == b.p_test);
        CHECK(a.user_history == b.user_history);
        CHECK(a.item_price == b.item_price);
        CHECK(a.bayes_auc == b.bayes_auc);
        CHECK(a.train.sparse_column() != c.train.sparse_column());
        CHECK(a.train.label_column() != c.train.label_column());
        CHECK(a.item_price != c.item_price);
        // A row depends on (seed, row index) only: the first rows of a longer shop are the same.
        const auto longer = make_shop(sized(st, 6000, 0, 0, 7));
        CHECK(std::equal(a.train.sparse_column().begin(), a.train.sparse_column().end(),
                         longer.train.sparse_column().begin()));
        CHECK(std::equal(a.p_train.begin(), a.p_train.end(), longer.p_train.begin()));
    }
}

TEST_CASE("synthetic_shop: the layout, the ids and the labels are valid") {
    for (auto st : all_settings) {
        CAPTURE(xrec::data::shop_setting_name(st));
        const auto s = make_shop(sized(st, 4000, 1000, 2000, 3));
        const auto& L = s.layout;
        REQUIRE(L.num_sparse() == 7);
        CHECK(L.sparse[0].name == "user_id");
        CHECK(L.sparse[1].name == "item_id");
        CHECK(L.dense == std::vector<std::string>{"price", "activity"});
        CHECK(L.tables[1].rows == s.options.items + 1);
        if (st == shop_setting::sequence) {
            REQUIRE(L.num_sequences() == 3);
            CHECK(L.sequences[0].name == "hist_item_id");
            CHECK(L.sequences[0].table == L.find_table("item_id"));  // shares the candidate's rows
            CHECK(L.sequences[1].table == L.find_table("category"));
            CHECK(L.sequences[2].table == L.find_table("brand"));
            CHECK(L.sequences[0].max_len == s.options.max_history);
        } else {
            CHECK(L.num_sequences() == 0);
        }
        CHECK(L.tasks == (st == shop_setting::multi_task ? std::vector<std::string>{"click", "like"}
                                                         : std::vector<std::string>{"click", "purchase"}));
        const auto T = static_cast<std::size_t>(L.num_tasks());
        for (const auto* d : {&s.train, &s.valid, &s.test}) {
            xrec::data::batcher<float> bat(*d, 512, true, 11);
            bat.start_epoch(0);
            xrec::batch<float> b;
            std::int64_t seen = 0;
            while (bat.next(b)) {
                b.check("synthetic_shop", L);  // every id inside its own table
                seen += b.rows;
            }
            CHECK(seen == d->size());
        }
        const std::vector<double>* probs[] = {&s.p_train, &s.p_valid, &s.p_test};
        const xrec::data::ctr_dataset<float>* sets[] = {&s.train, &s.valid, &s.test};
        std::int64_t hist_min = 1 << 30, hist_max = 0, mismatches = 0, bad = 0;
        for (int k = 0; k < 3; ++k) {
            const auto& d = *sets[k];
            const auto& p = *probs[k];
            REQUIRE(p.size() == static_cast<std::size_t>(d.size()) * T);
            for (std::int64_t r = 0; r < d.size(); ++r) {
                const auto sp = d.sparse_row(r);
                for (std::int64_t f = 0; f < L.num_sparse(); ++f)  // never the OOV / padding row
                    bad += sp[static_cast<std::size_t>(f)] == L.tables[static_cast<std::size_t>(L.sparse[static_cast<std::size_t>(f)].table)].offset;
                const shop_event e = s.decode(d, r);
                bad += d.group(r) != e.user;
                const auto q = s.probabilities(e);  // decoding the row gives back its probabilities
                for (std::size_t t = 0; t < T; ++t) mismatches += q[t] != p[static_cast<std::size_t>(r) * T + t];
                for (std::size_t t = 0; t < T; ++t) {
                    const double v = p[static_cast<std::size_t>(r) * T + t];
                    bad += !(v > 0 && v < 1);
                }
                if (st != shop_setting::multi_task) {
                    bad += d.label(r, 1) > d.label(r, 0);                                      // purchase => click
                    bad += p[static_cast<std::size_t>(r) * T + 1] > p[static_cast<std::size_t>(r) * T];  // p(purchase) <= p(click)
                }
                if (st == shop_setting::sequence) {
                    const auto len = static_cast<std::int64_t>(e.history.size());
                    hist_min = std::min(hist_min, len), hist_max = std::max(hist_max, len);
                    const auto cats = d.sequence(1, r), brands = d.sequence(2, r);  // aligned with hist_item_id
                    bad += cats.size() != e.history.size() || brands.size() != e.history.size();
                    for (std::size_t j = 0; j < cats.size() && j < brands.size(); ++j) {
                        bad += cats[j] != L.tables[2].offset + s.item_category[static_cast<std::size_t>(e.history[j])] + 1;
                        bad += brands[j] != L.tables[3].offset + s.item_brand[static_cast<std::size_t>(e.history[j])] + 1;
                    }
                }
            }
        }
        CHECK(bad == 0);
        CHECK(mismatches == 0);
        if (st == shop_setting::sequence) {
            CHECK(hist_min >= s.options.min_history);
            CHECK(hist_max <= s.options.max_history);
            CHECK(hist_max > hist_min + s.options.max_history / 2);  // lengths really vary
        }
        if (st != shop_setting::multi_task) {
            CHECK(s.conversion_train.size() == static_cast<std::size_t>(s.train.size()));
            for (std::int64_t r = 0; r < s.train.size(); ++r)  // purchase = click * conversion
                bad += s.train.label(r, 1) != s.train.label(r, 0) * s.conversion_train[static_cast<std::size_t>(r)];
            CHECK(bad == 0);
        }

        // Candidate rows for a shopper: valid rows whose true probabilities are reported.
        const std::vector<std::int64_t> items = {0, 5, s.options.items - 1};
        const auto cand = s.candidates(12, items);
        REQUIRE(cand.size() == 3);
        xrec::data::batcher<float> cb(cand, 8);
        cb.start_epoch(0);
        xrec::batch<float> b;
        REQUIRE(cb.next(b));
        b.check("synthetic_shop candidates", L);
        const auto cp = s.candidate_probabilities(12, items);
        REQUIRE(cp.size() == 3 * T);
        for (std::size_t k = 0; k < items.size(); ++k) {
            const auto e = s.decode(cand, static_cast<std::int64_t>(k));
            CHECK(e.item == items[k]);
            CHECK(e.history == (st == shop_setting::sequence ? s.user_history[12] : std::vector<std::int64_t>{}));
            CHECK(s.probabilities(e)[0] == cp[k * T]);
        }
        const std::string desc = s.describe_item(5);
        CHECK(desc.find(s.category_name(s.item_category[5])) != std::string::npos);
        CHECK(desc.find(s.brand_name(s.item_brand[5])) != std::string::npos);
        if (st == shop_setting::basic) std::printf("synthetic_shop: item 5 = %s; %s\n", desc.c_str(), s.describe_user(12).c_str());
        xrec_test::expect_error([&] { (void)s.candidates(s.options.users, items); }, {"shop::candidates", "user"});
        xrec_test::expect_error([&] { (void)s.describe_item(-1); }, {"describe_item", "-1"});
    }
    auto bad = sized(shop_setting::basic, 10, 0, 0);
    bad.items = 0;
    xrec_test::expect_error([&] { (void)make_shop(bad); }, {"make_shop", "items 0"});
    bad = sized(shop_setting::sequence, 10, 0, 0);
    bad.min_history = 9, bad.max_history = 3;
    xrec_test::expect_error([&] { (void)make_shop(bad); }, {"make_shop", "history"});
}

TEST_CASE("synthetic_shop: the Bayes-optimal AUC lies in [0.75, 0.85] in every setting") {
    // Default sizes and model; train rows are not needed for the Bayes AUC of the test rows.
    for (auto st : all_settings)
        for (std::uint64_t seed = 1; seed <= 3; ++seed) {
            auto o = shop_options{};
            o.setting = st, o.seed = seed, o.train_rows = 0, o.valid_rows = 0;
            const auto s = make_shop(o);
            const auto y0 = labels_of(s.test, 0), y1 = labels_of(s.test, 1);
            double rate0 = 0, rate1 = 0;
            for (std::size_t r = 0; r < y0.size(); ++r) rate0 += y0[r], rate1 += y1[r];
            rate0 /= static_cast<double>(y0.size()), rate1 /= static_cast<double>(y1.size());
            std::printf("synthetic_shop %-10s seed %llu: %lld test rows, %s rate %.3f, %s rate %.3f; Bayes AUC %.4f / %.4f",
                        xrec::data::shop_setting_name(st), static_cast<unsigned long long>(seed),
                        static_cast<long long>(s.test.size()), s.layout.tasks[0].c_str(), rate0,
                        s.layout.tasks[1].c_str(), rate1, s.bayes_auc[0], s.bayes_auc[1]);
            if (st != shop_setting::multi_task) std::printf(", CVR on all impressions %.4f", s.bayes_auc_cvr);
            std::printf("\n");
            CAPTURE(xrec::data::shop_setting_name(st));
            CAPTURE(seed);
            CHECK(s.bayes_auc_test == s.bayes_auc[0]);
            CHECK(s.bayes_auc_test >= 0.75);
            CHECK(s.bayes_auc_test <= 0.85);
            CHECK(rate0 > 0.1);
            CHECK(rate0 < 0.3);
            if (st == shop_setting::multi_task) {
                CHECK(s.bayes_auc[1] >= 0.75);
                CHECK(s.bayes_auc[1] <= 0.85);
            }
            // The stored figure is the exact AUC of the stored probabilities.
            std::vector<double> p0(y0.size());
            for (std::size_t r = 0; r < p0.size(); ++r) p0[r] = s.p_test[2 * r];
            CHECK(auc(p0, y0) == s.bayes_auc_test);
        }
}

TEST_CASE("synthetic_shop basic: logistic regression on the raw fields stays >= 0.03 below the optimum") {
    const auto s = make_shop(sized(shop_setting::basic, 100000, 0, 50000, 1));
    const auto train = decode(s, s.train, s.p_train), test = decode(s, s.test, s.p_test);
    const auto& o = s.options;
    // One weight per id of every sparse field, one per dense field, and a bias: the LR of the
    // raw fields, fitted to the true probabilities (its population optimum) until the gradient
    // vanishes.
    const design lr = [&](const rows& r) {
        return std::vector<block>{
            one_hot(r, 1, [](auto&, auto&) { return 0; }),
            one_hot(r, o.users, [](const shop_event& e, auto&) { return e.user; }),
            one_hot(r, o.items, [](const shop_event& e, auto&) { return e.item; }),
            one_hot(r, o.categories, [&](const shop_event& e, auto&) { return s.item_category[static_cast<std::size_t>(e.item)]; }),
            one_hot(r, o.brands, [&](const shop_event& e, auto&) { return s.item_brand[static_cast<std::size_t>(e.item)]; }),
            one_hot(r, o.price_bands, [&](const shop_event& e, auto&) { return s.item_price_band[static_cast<std::size_t>(e.item)]; }),
            one_hot(r, o.segments, [&](const shop_event& e, auto&) { return s.user_segment[static_cast<std::size_t>(e.user)]; }),
            one_hot(r, shop::deals, [](const shop_event& e, auto&) { return e.deal; }),
            dense(r, [&](const shop_event& e) { return s.price_feature(e.item, e.deal); }),
            dense(r, [&](const shop_event& e) { return std::log(s.user_activity[static_cast<std::size_t>(e.user)]) / 0.7; })};
    };
    const double bayes = auc(test.p, test.y);
    std::printf("synthetic_shop basic (100k train / 50k test rows): Bayes AUC %.4f\n", bayes);
    const auto f = fit_and_score("logistic regression, raw fields", train, test, lr, [](auto&) { return 0.0; }, 25);
    CHECK(f.fit.max_grad < 1e-7);                                          // converged: the gradient vanished
    CHECK(f.fit.loss[f.fit.loss.size() - 2] - f.fit.loss.back() < 1e-9);  // and the loss stopped moving
    CHECK(f.fit.loss.back() < f.fit.loss.front());
    std::printf("  gap to the optimum: %.4f\n", bayes - f.auc);
    CHECK(bayes - f.auc >= 0.03);
}

TEST_CASE("synthetic_shop basic: the three-way term is beyond any pairwise model") {
    const auto s = make_shop(sized(shop_setting::basic, 100000, 0, 50000, 2));
    const std::int64_t S = s.options.segments, C = s.options.categories, D = shop::deals;
    // The term is triple-centred under the distributions rows are drawn from: summing it over any
    // one of its factors gives 0, so E[T | any two of (user, item, deal)] = 0 and its projection on
    // every sum of pairwise functions of the fields is zero.
    std::vector<double> ps(static_cast<std::size_t>(S), 0), pc(static_cast<std::size_t>(C), 0);
    double act = 0;
    for (std::size_t u = 0; u < s.user_segment.size(); ++u)
        ps[static_cast<std::size_t>(s.user_segment[u])] += s.user_activity[u], act += s.user_activity[u];
    for (auto& v : ps) v /= act;
    for (std::size_t i = 0; i < s.item_category.size(); ++i) pc[static_cast<std::size_t>(s.item_category[i])] += s.item_popularity[i];
    auto T = [&](std::int64_t a, std::int64_t c, std::int64_t d) {
        return s.three_way[static_cast<std::size_t>((a * C + c) * D + d)];
    };
    double worst = 0, var = 0;
    for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t d = 0; d < D; ++d) {
            double m = 0;
            for (std::int64_t a = 0; a < S; ++a) m += ps[static_cast<std::size_t>(a)] * T(a, c, d);
            worst = std::max(worst, std::fabs(m));
        }
    for (std::int64_t a = 0; a < S; ++a)
        for (std::int64_t d = 0; d < D; ++d) {
            double m = 0;
            for (std::int64_t c = 0; c < C; ++c) m += pc[static_cast<std::size_t>(c)] * T(a, c, d);
            worst = std::max(worst, std::fabs(m));
        }
    for (std::int64_t a = 0; a < S; ++a)
        for (std::int64_t c = 0; c < C; ++c) {
            double m = 0;
            for (std::int64_t d = 0; d < D; ++d) m += shop::deal_share[static_cast<std::size_t>(d)] * T(a, c, d);
            worst = std::max(worst, std::fabs(m));
            for (std::int64_t d = 0; d < D; ++d)
                var += ps[static_cast<std::size_t>(a)] * pc[static_cast<std::size_t>(c)] * shop::deal_share[static_cast<std::size_t>(d)] * T(a, c, d) * T(a, c, d);
        }
    CHECK(worst < 1e-12);
    CHECK(var == doctest::Approx(1.0).epsilon(1e-9));

    // Oracles that know every other term of the logit exactly (the offset) and fit tables over
    // (segment, category), (segment, deal), (category, deal) -- the best any pairwise model can
    // add -- versus one table over (segment, category, deal).
    const auto train = decode(s, s.train, s.p_train), test = decode(s, s.test, s.p_test);
    auto seg = [&](const shop_event& e) { return s.user_segment[static_cast<std::size_t>(e.user)]; };
    auto cat = [&](const shop_event& e) { return s.item_category[static_cast<std::size_t>(e.item)]; };
    const design pairwise = [&](const rows& r) {
        return std::vector<block>{
            one_hot(r, S * C, [&](const shop_event& e, auto&) { return seg(e) * C + cat(e); }),
            one_hot(r, S * D, [&](const shop_event& e, auto&) { return seg(e) * D + e.deal; }),
            one_hot(r, C * D, [&](const shop_event& e, auto&) { return cat(e) * D + e.deal; })};
    };
    const design three = [&](const rows& r) {
        return std::vector<block>{one_hot(r, S * C * D, [&](const shop_event& e, auto&) { return (seg(e) * C + cat(e)) * D + e.deal; })};
    };
    const offset_fn without = [](const shop_logits& z) { return z.click - z.three_way; };
    const double bayes = auc(test.p, test.y);
    std::printf("synthetic_shop basic (100k train / 50k test rows): Bayes AUC %.4f\n", bayes);
    const auto none = fit_and_score("oracle without the three-way term", train, test, [](const rows&) { return std::vector<block>{}; }, without, 1);
    const auto pw = fit_and_score("  + best pairwise tables", train, test, pairwise, without, 20);
    const auto tw = fit_and_score("  + a (segment, category, deal) table", train, test, three, without, 20);
    std::printf("  pairwise oracle gap %.4f, three-way table gap %.4f\n", bayes - pw.auc, bayes - tw.auc);
    CHECK(pw.fit.max_grad < 1e-8);
    CHECK(tw.fit.max_grad < 1e-8);
    CHECK(bayes - pw.auc >= 0.015);                          // the pairwise oracle falls short ...
    CHECK(pw.auc - none.auc < 0.25 * (bayes - none.auc));     // ... its tables recover little of the term
    CHECK(std::fabs(bayes - tw.auc) < 0.003);                 // while the three-way table closes the gap
}

TEST_CASE("synthetic_shop sequence: the click is not a function of the mean-pooled history") {
    const auto s = make_shop(sized(shop_setting::sequence, 100000, 0, 50000, 1));
    // (a) Constructions: a candidate c, an item m of c's brand and category, an item k of c's
    // category but another brand, and unrelated items x, y (other categories).
    const std::int64_t I = s.options.items;
    auto cat = [&](std::int64_t i) { return s.item_category[static_cast<std::size_t>(i)]; };
    auto brand = [&](std::int64_t i) { return s.item_brand[static_cast<std::size_t>(i)]; };
    std::int64_t c = -1, m = -1, k = -1;
    for (std::int64_t a = 0; a < I && k < 0; ++a) {
        m = -1, k = -1;
        for (std::int64_t b = 0; b < I; ++b) {
            if (b == a || cat(b) != cat(a)) continue;
            if (brand(b) == brand(a) && m < 0) m = b;
            if (brand(b) != brand(a) && k < 0) k = b;
        }
        if (m >= 0 && k >= 0) c = a;
        else k = -1;
    }
    REQUIRE(c >= 0);
    std::int64_t x = -1, y = -1;
    for (std::int64_t b = 0; b < I && y < 0; ++b)
        if (cat(b) != cat(c)) (x < 0 ? x : y) = b;
    auto p = [&](std::vector<std::int64_t> h) { return s.probabilities(shop_event{3, c, 0, std::move(h)})[0]; };
    const std::vector<std::int64_t> h1 = {x, m, y}, h2 = {x, m, y, x, m, y}, h3 = {x, k, y};
    // h1 and h2 have the same mean one-hot item (and category, brand) vector; h1 and h3 the same
    // mean one-hot category vector. The click probabilities differ.
    std::printf("synthetic_shop sequence: p(click) with history [x, m, y] %.4f, doubled %.4f, [x, k, y] %.4f, [x, y] %.4f\n",
                p(h1), p(h2), p(h3), p({x, y}));
    CHECK(p(h2) - p(h1) > 0.02);
    CHECK(p(h1) - p(h3) > 0.01);
    CHECK(p(h3) > p({x, y}));
    CHECK(p({x, m, y}) == p({m, y, x}));  // order does not matter: attention without positions suffices

    // (b) Oracles that know every other term of the logit exactly and fit a table over what the
    // history shows: the fractions of behaviours sharing the candidate's category and brand
    // (what a mean of one-hot vectors dotted with the candidate's gives, at resolution 1/40 and
    // 1/20, or 1/80 and 1/40), or the counts (what attention weights that sum over behaviours
    // give). The fraction oracle is an upper bound for mean pooling over one-hot vectors
    // without the history length; exact fractions would reveal more (1/37 means one match in
    // 37), which a mean of low-dimensional embeddings cannot resolve.
    const auto train = decode(s, s.train, s.p_train), test = decode(s, s.test, s.p_test);
    // Fractions are binned upwards (ceil), so "no match" keeps its own cell at any resolution.
    auto fraction_table = [](std::int64_t kc) {
        return [kc](const rows& r) {
            return std::vector<block>{one_hot(r, (kc + 1) * (kc / 2 + 1), [kc](const shop_event& e, const shop_logits& z) {
                const double L = static_cast<double>(e.history.size());
                const auto fc = static_cast<std::int64_t>(std::ceil(static_cast<double>(kc) * static_cast<double>(z.history_category_matches + z.history_brand_matches) / L - 1e-9));
                const auto fb = static_cast<std::int64_t>(std::ceil(static_cast<double>(kc / 2) * static_cast<double>(z.history_brand_matches) / L - 1e-9));
                return fc * (kc / 2 + 1) + fb;
            })};
        };
    };
    const design fractions = fraction_table(40), fine_fractions = fraction_table(80);
    const design counts = [&](const rows& r) {
        return std::vector<block>{one_hot(r, 16 * 16, [](const shop_event&, const shop_logits& z) {
            return std::min<std::int64_t>(z.history_category_matches, 15) * 16 + std::min<std::int64_t>(z.history_brand_matches, 15);
        })};
    };
    const offset_fn without = [](const shop_logits& z) { return z.click - z.history; };
    const double bayes = auc(test.p, test.y);
    std::printf("synthetic_shop sequence (100k train / 50k test rows): Bayes AUC %.4f\n", bayes);
    const auto none = fit_and_score("oracle without the history", train, test, [](const rows&) { return std::vector<block>{}; }, without, 1);
    const auto frac = fit_and_score("  + table of matching fractions", train, test, fractions, without, 20);
    const auto fine = fit_and_score("  + the same at resolution 1/80, 1/40", train, test, fine_fractions, without, 20);
    const auto cnt = fit_and_score("  + table of matching counts", train, test, counts, without, 20);
    std::printf("  gaps to the optimum: no history %.4f, fractions (mean pooling) %.4f (finer: %.4f), counts (attention) %.4f\n",
                bayes - none.auc, bayes - frac.auc, bayes - fine.auc, bayes - cnt.auc);
    CHECK(frac.fit.max_grad < 1e-8);
    CHECK(cnt.fit.max_grad < 1e-8);
    CHECK(bayes - none.auc > 0.08);   // the history carries most of the signal
    CHECK(bayes - frac.auc >= 0.02);  // seeing it through its mean loses part of it (issue 4: >= 0.02)
    CHECK(bayes - fine.auc >= 0.02);
    CHECK(std::fabs(bayes - cnt.auc) < 0.003);
}

TEST_CASE("synthetic_shop: purchases follow clicks, and clicked rows are a biased sample for CVR") {
    for (auto st : {shop_setting::basic, shop_setting::sequence}) {
        const auto s = make_shop(sized(st, 0, 0, 50000, 4));
        double all = 0, clicked = 0, n_clicked = 0, purchases = 0, clicks = 0;
        std::vector<double> pc, pv;
        std::int64_t off = 0;
        for (std::int64_t r = 0; r < s.test.size(); ++r) {
            const double q = s.p_cvr_test[static_cast<std::size_t>(r)];
            all += q;
            if (s.test.label(r, 0) > 0) clicked += q, n_clicked += 1;
            clicks += s.test.label(r, 0), purchases += s.test.label(r, 1);
            pc.push_back(s.p_test[2 * static_cast<std::size_t>(r)]), pv.push_back(q);
            // p(purchase) = p(click) p(conversion | click)
            off += std::fabs(s.p_test[2 * static_cast<std::size_t>(r) + 1] - pc.back() * q) > 1e-15;
        }
        CHECK(off == 0);
        all /= static_cast<double>(s.test.size()), clicked /= n_clicked;
        std::printf("synthetic_shop %-8s: %.0f clicks, %.0f purchases (%.1f%% of clicks); mean p(cvr) %.4f over all "
                    "impressions, %.4f over clicked ones; corr(p click, p cvr) %.3f; Bayes CVR AUC on all impressions %.4f\n",
                    xrec::data::shop_setting_name(st), clicks, purchases, 100 * purchases / clicks, all, clicked,
                    pearson(pc, pv), s.bayes_auc_cvr);
        CHECK(clicked - all > 0.02);  // selection bias: clicked rows over-represent likely buyers
        CHECK(s.bayes_auc_cvr > 0.7);
    }
}

TEST_CASE("synthetic_shop multi_task: the tasks' correlation follows task_correlation") {
    std::vector<double> logit_corr, label_corr;
    for (double rho : {-0.5, 0.0, 0.5, 0.9, 1.0}) {
        auto o = sized(shop_setting::multi_task, 0, 0, 50000, 5);
        o.task_correlation = rho;
        const auto s = make_shop(o);
        std::vector<double> l1, l2, y1, y2;
        for (std::int64_t r = 0; r < s.test.size(); ++r) {
            const double p1 = s.p_test[2 * static_cast<std::size_t>(r)], p2 = s.p_test[2 * static_cast<std::size_t>(r) + 1];
            l1.push_back(std::log(p1 / (1 - p1))), l2.push_back(std::log(p2 / (1 - p2)));
            y1.push_back(s.test.label(r, 0)), y2.push_back(s.test.label(r, 1));
        }
        logit_corr.push_back(pearson(l1, l2)), label_corr.push_back(pearson(y1, y2));
        std::printf("synthetic_shop multi_task: task_correlation %+.2f -> logit correlation %+.3f, label correlation "
                    "%+.3f; Bayes AUC %.4f / %.4f\n",
                    rho, logit_corr.back(), label_corr.back(), s.bayes_auc[0], s.bayes_auc[1]);
        CHECK(std::fabs(logit_corr.back() - rho) < 0.15);
    }
    for (std::size_t k = 1; k < logit_corr.size(); ++k) {
        CHECK(logit_corr[k] > logit_corr[k - 1]);
        CHECK(label_corr[k] > label_corr[k - 1]);
    }
    CHECK(logit_corr.back() == doctest::Approx(1.0));
}
