#pragma once
// A synthetic shop: shoppers, a catalog and impressions whose clicks and purchases are drawn
// from a planted model, so the true probability of every row and the Bayes-optimal AUC are
// known. The default data of the demo and of every test that needs no file.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <tuple>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/data/dataset.hpp"

namespace xrec::data {

/// Which planted model draws the labels.
///  - basic: click = f(user bias, item quality, user x category taste, brand x price band,
///    deal, price, and a three-way segment x category x deal term that no sum of pairwise
///    terms can express); purchase = click and a conversion drawn from a CVR model.
///  - sequence: the same catalog, but each row carries the shopper's recent browsing (a few
///    sessions, each with a "mission" category, mixed with unrelated popular items), and
///    the click depends mostly on how the candidate matches that history (a noisy-OR over
///    behaviours: a max-like, count-sensitive function, not a mean).
///  - multi_task: two tasks (click, like) whose logits are f(w_k . h(user, item)) as in the
///    MMoE paper's synthetic data; `task_correlation` is the cosine of w_1 and w_2.
enum class shop_setting { basic, sequence, multi_task };

inline const char* shop_setting_name(shop_setting s) {
    switch (s) {
        case shop_setting::basic: return "basic";
        case shop_setting::sequence: return "sequence";
        case shop_setting::multi_task: return "multi_task";
    }
    return "?";
}

/// Sizes and knobs of a synthetic shop. The defaults give the models of the zoo enough rows
/// per parameter to get near the optimum in a few epochs while a few epochs take under a
/// minute on two cores. Measured on seed 1 (valid 50k, test 100k rows, 2 threads, the
/// trainer's defaults but the learning rates):
///  - basic, 1M rows, 4 epochs, adam 1e-3 / row-wise adagrad 0.03: Bayes 0.8009; DeepFM
///    0.7924, DCN-V2 0.7924, FM 0.7575 (seed 2: Bayes 0.8020; DeepFM 0.7907 (0.7921 with adam
///    2e-3 / adagrad 0.05), DCN-V2 0.7901, FM 0.7520);
///  - sequence, 600k rows, click only: DIN with the pairs (item_id, hist_item_id), (category,
///    hist_category), (brand, hist_brand), 3 epochs, adam 3e-3 / adagrad 0.1: 0.7917 (Bayes
///    0.8009); DIN with the item pair alone: 0.7630; DeepFM (history mean-pooled), 4 epochs:
///    0.7381.
/// The three history fields are aligned (behaviour j of hist_item_id, hist_category and
/// hist_brand is one item), so DIN / BST can attend over [item, category, brand] per behaviour.
struct shop_options {
    shop_setting setting = shop_setting::basic;
    std::int64_t users = 1000;
    std::int64_t items = 2000;
    std::int64_t categories = 20;
    std::int64_t brands = 60;   // brands are tied to categories (brand b's home is category b % categories)
    std::int64_t price_bands = 5;
    std::int64_t segments = 4;
    std::int64_t train_rows = -1;  // -1: the setting's default, 1,000,000 (sequence: 600,000);
                                   // shop::options holds the resolved count
    std::int64_t valid_rows = 50000;
    std::int64_t test_rows = 100000;
    std::int64_t min_history = 2;   // sequence setting: history length ~ U{min_history..max_history}
    std::int64_t max_history = 50;
    bool history_attributes = true;  // sequence setting: also emit "hist_category", "hist_brand"
    bool purchase_task = true;       // basic / sequence: tasks {click, purchase}; false: {click} alone
    std::uint64_t seed = 1;

    // The planted model (defaults put the Bayes AUC near 0.80 in every setting).
    double zipf = 1.0;               // item popularity ~ 1 / (rank + 10)^zipf
    double target_auc = 0.80;        // the click logit is scaled so that the expected Bayes AUC is this
    double target_rate = 0.20;       // and shifted so that the expected click (task) rate is this
    double three_way_scale = 0.6;    // basic: sd of the segment x category x deal logit term
    // sequence: the noisy-OR history match. Small trigger chances keep the match count-sensitive
    // (far from saturation) and a large weight gives it the lion's share of the logit, which
    // is what puts the best mean-pooled model >= 0.02 AUC below the optimum (seeds 1-3: 0.0240,
    // 0.0239, 0.0213 for the fraction oracle of tests/unit/test_synthetic_shop.cpp; with the
    // former 4.5 / 0.08 / 0.30 it was 0.0150).
    double history_scale = 10;       // logit weight of the noisy-OR history match
    double match_category = 0.15;    // trigger chance of a same-category behaviour
    double match_brand = 0.20;       // ... of a same-brand (and category) behaviour
    double task_correlation = 0.25;  // multi_task: cosine between the two tasks' directions
};

/// The decoded content of one row: who, what, under which deal, after which browsing.
/// Indices are 0-based catalog indices (item i is local id i + 1 in its table).
struct shop_event {
    std::int64_t user = 0, item = 0, deal = 0;
    std::vector<std::int64_t> history;  // items, oldest first (sequence setting)
};

/// The planted model's logit, term by term, for one event (terms a setting does not use are 0).
struct shop_logits {
    double bias = 0, user = 0, item = 0, taste = 0, brand_band = 0, deal = 0, three_way = 0, price = 0,
           history = 0;
    std::int64_t history_category_matches = 0, history_brand_matches = 0;
    double click = 0;   // sum of the terms above: the click (task 0) logit
    double cvr = 0;     // conversion logit given a click (basic, sequence)
    double task_b = 0;  // multi_task: the second task's logit
};

namespace detail {

inline double shop_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

/// Exact AUC (Mann-Whitney U, ties counted half) of `score` against 0/1 `label`; 0.5 when
/// one class is missing. O(n log n).
template <class S, class L>
double exact_auc(std::span<const S> score, std::span<const L> label) {
    XREC_CHECK(score.size() == label.size(), "exact_auc: ", score.size(), " scores for ", label.size(), " labels");
    std::vector<std::size_t> idx(score.size());
    std::iota(idx.begin(), idx.end(), std::size_t{0});
    std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return score[a] < score[b]; });
    double rank_sum = 0, pos = 0;
    for (std::size_t i = 0; i < idx.size();) {
        std::size_t j = i;
        while (j < idx.size() && score[idx[j]] == score[idx[i]]) ++j;
        const double avg_rank = static_cast<double>(i + j + 1) / 2;  // 1-based ranks i+1..j
        for (std::size_t t = i; t < j; ++t)
            if (label[idx[t]] > 0) rank_sum += avg_rank, pos += 1;
        i = j;
    }
    const double neg = static_cast<double>(idx.size()) - pos;
    if (pos == 0 || neg == 0) return 0.5;
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg);
}

/// The random draws of one row (or of the world): a splitmix64 sequence whose 64-bit start
/// is the Philox block at (key, stream), so a row's draws are a pure function of (seed, row)
/// and of their order within the row, and cost a few cycles each.
struct shop_draws {
    std::uint64_t state = 0, buf = 0;
    bool have = false;

    shop_draws(philox key, std::uint64_t stream) {
        const auto b = key(stream, 0);
        state = (std::uint64_t{b[0]} << 32 | b[1]) ^ ((std::uint64_t{b[2]} << 32 | b[3]) * 0x9E3779B97F4A7C15ull);
    }
    std::uint64_t next64() {
        std::uint64_t z = state += 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    std::uint32_t u32() {
        if (have) return have = false, static_cast<std::uint32_t>(buf >> 32);
        buf = next64(), have = true;
        return static_cast<std::uint32_t>(buf);
    }
    double uniform() { return static_cast<double>(next64() >> 11) * 0x1.0p-53; }  // [0, 1)
    double uniform32() { return static_cast<double>(u32()) * 0x1.0p-32; }        // [0, 1), cheap
    std::int64_t below(std::int64_t n) {  // [0, n), bias < n / 2^32
        return static_cast<std::int64_t>((std::uint64_t{u32()} * static_cast<std::uint64_t>(n)) >> 32);
    }
    double normal() {
        const double a = 1.0 - uniform(), t = uniform();
        return std::sqrt(-2.0 * std::log(a)) * std::cos(6.283185307179586 * t);
    }
};

/// Draws index k with probability w_k / sum(w) in O(1) from one 32-bit draw (Walker's
/// alias method, Vose's construction): the high bits pick a column, the rest flip its coin.
struct shop_sampler {
    std::vector<double> prob;
    std::vector<std::int64_t> alias;
    std::vector<std::int64_t> ids;  // what index k stands for (empty: k itself)

    void build(std::span<const double> w, std::vector<std::int64_t> what = {}) {
        const std::size_t n = w.size();
        XREC_CHECK(n > 0, "shop_sampler: no weights");
        double total = 0;
        for (auto x : w) total += x;
        prob.assign(n, 0);
        alias.assign(n, 0);
        std::vector<double> q(n);
        std::vector<std::size_t> small, large;
        for (std::size_t k = 0; k < n; ++k) {
            q[k] = w[k] * static_cast<double>(n) / total;
            (q[k] < 1 ? small : large).push_back(k);
        }
        while (!small.empty() && !large.empty()) {
            const std::size_t s = small.back(), l = large.back();
            small.pop_back();
            prob[s] = q[s];
            alias[s] = static_cast<std::int64_t>(l);
            q[l] -= 1 - q[s];
            if (q[l] < 1) large.pop_back(), small.push_back(l);
        }
        for (auto k : large) prob[k] = 1, alias[k] = static_cast<std::int64_t>(k);
        for (auto k : small) prob[k] = 1, alias[k] = static_cast<std::int64_t>(k);  // rounding leftovers
        ids = std::move(what);
    }
    std::int64_t draw(shop_draws& r) const {
        const double x = r.uniform32() * static_cast<double>(prob.size());
        const auto col = static_cast<std::size_t>(x);
        const auto k = x - static_cast<double>(col) < prob[col] ? static_cast<std::int64_t>(col) : alias[col];
        return ids.empty() ? k : ids[static_cast<std::size_t>(k)];
    }
};

inline const char* shop_category_name(std::int64_t c) {
    static const char* names[] = {
        "shoes",      "books",       "laptops",    "phones",     "headphones", "jackets",   "jeans",
        "t-shirts",   "dresses",     "watches",    "backpacks",  "cookware",   "coffee",    "tea",
        "toys",       "board games", "cameras",    "monitors",   "keyboards",  "lamps",     "bedding",
        "towels",     "skin care",   "perfume",    "vitamins",   "yoga mats",  "bicycles",  "tents",
        "garden tools", "paint",     "pet food",   "aquariums",  "guitars",    "vinyl",     "snacks",
        "sunglasses", "hats",        "socks",      "wallets",    "umbrellas"};
    constexpr std::int64_t n = static_cast<std::int64_t>(sizeof(names) / sizeof(names[0]));
    return names[c % n];
}

inline std::string shop_brand_name(std::int64_t b) {
    static const char* first[] = {"Ka", "Lu", "Mo", "Ve", "Zi", "Ro", "Ta", "Ne", "Bri", "Sol", "Fa", "Quo"};
    static const char* second[] = {"vo", "ra", "lin", "dex", "mi", "tor", "sa", "ko", "ven", "la"};
    std::string s = first[b % 12];
    s += second[(b / 12) % 10];
    if (b >= 120) s += std::to_string(b / 120);
    return s;
}

}  // namespace detail

/// A synthetic shop and its planted model.
///
/// The world (drawn once from the seed):
///  - items: category (uniform), brand (one of its category's brands with probability 0.9),
///    base price log-normal around a per-category level with a brand premium, price band =
///    quantile band of the base price, popularity ~ 1/(rank + 10)^zipf over a random rank,
///    quality q_i = brand quality (N(0, 0.35^2)) + N(0, 0.1^2);
///  - shoppers: segment (uniform), activity a_u ~ logN(0, 0.7^2) (how often they appear),
///    bias ~ N(0, 0.2^2), a taste t_u = 0.95 t_segment + 0.31 N(0, I) in R^4 against category
///    vectors v_c in R^4 (taste(u, c) = t_u . v_c / 2, sd about 1), a category preference
///    0.8 softmax(taste) + 0.2 uniform;
///  - deals: none / -10% / -30% with probabilities 0.6 / 0.25 / 0.15; the shown price is the
///    discounted one; dense "price" = standardised log shown price, "activity" = log a_u / 0.7.
/// Effects are mostly carried by groups (brands, segments, categories) rather than by single
/// shoppers or items, so that the models of the zoo can get near the optimum from ~1M rows.
///
/// Rows are independent snapshots (a shopper drawn by activity, a candidate, a deal, and in
/// the sequence setting the shopper's recent browsing), each row r a pure function of
/// (seed, r); rows [0, train) are train, then valid, then test. In basic and multi_task the
/// candidate is drawn by popularity alone (independent of the shopper).
///
/// Click logit, basic:
///   z = b + bias_u + q_i + 0.9 taste(u, c) + W[brand, band] + deal_d - 0.3 price
///       + three_way_scale * T[segment, c, d]
/// W ~ N(0, 0.5^2) per cell; T is triple-centred under the product of the segment, category
/// and deal distributions (so E[T | any two of user, item, deal] = 0: its projection on sums
/// of pairwise functions of the fields is zero, and a pairwise FM cannot represent it) and
/// scaled to unit variance.
/// Click logit, sequence (each row's history: 2..50 behaviours in sessions of 3..10, each
/// session with a mission category drawn from the shopper's preference, half its behaviours
/// in that category, half popular items; the candidate is from the current mission with
/// probability 0.3, an earlier one 0.1, else by popularity):
///   z = b + (bias_u + q_i - 0.3 price) / 2 + 0.3 taste(u, c) + deal_d + history_scale * s,
///   s = 1 - prod_j (1 - m_j), m_j = match_brand if behaviour j has the candidate's brand (and
///   category), match_category if only its category, 0 otherwise.
/// s counts matches (two matching behaviours trigger more than one) and ignores order, so a
/// target attention that weights behaviours by their match with the candidate (and sums, as
/// DIN does) can compute it, while the mean of the history only keeps the matching fractions,
/// which do not determine the counts when lengths vary (and which a mean of low-dimensional
/// embeddings blurs further).
/// CVR logit (basic, sequence): -1.9 + 0.6 taste + r_brand - 0.7 price + deal_cvr_d
///   - 1.2 q_i + seg_cvr_s: clicks and conversions disagree on item quality ("clickbait"), so
///   clicked rows are a biased sample for CVR. purchase = click AND conversion.
/// multi_task: h = m_u (.) m_i in R^8 (m_i = 0.8 m_category + 0.6 noise);
///   z_k = b_k + a_k standardise(x_k + 0.3 sum_{j<3} sin(alpha_j x_k + beta_j)), x_k = w_k . h,
///   |w_k| = 1, w_1 . w_2 = task_correlation; a_k and b_k are calibrated on 8000 drawn
///   (shopper, item) pairs for an expected Bayes AUC of 0.80 and a positive rate of 0.2.
struct shop {
    shop_options options;
    feature_layout layout;
    data::ctr_dataset<float> train, valid, test;
    /// True probability of each row for each task, row-major [rows, tasks].
    std::vector<double> p_train, p_valid, p_test;
    /// basic / sequence: the conversion probability given a click and the conversion drawn for
    /// EVERY impression (purchase = click * conversion): CVR evaluated over all impressions.
    std::vector<double> p_cvr_train, p_cvr_valid, p_cvr_test;
    std::vector<float> conversion_train, conversion_valid, conversion_test;
    /// Exact AUC of the true probabilities against the drawn test labels, per task, and task 0.
    std::vector<double> bayes_auc;
    double bayes_auc_test = 0.5;
    double bayes_auc_cvr = 0.5;  // of p_cvr against conversion on all test impressions

    // The catalog (index i = item i, local id i + 1).
    std::vector<std::int64_t> item_category, item_brand, item_price_band;
    std::vector<double> item_price, item_popularity, item_quality;
    // The shoppers.
    std::vector<std::int64_t> user_segment;
    std::vector<double> user_activity, user_bias;
    /// Each shopper's browsing "now" (items, oldest first): the history used by candidates().
    std::vector<std::vector<std::int64_t>> user_history;

    // The planted model's parameters.
    static constexpr std::int64_t taste_dim = 4, mt_dim = 8, deals = 3;
    std::vector<double> user_taste, category_vec;        // [users, 4], [categories, 4]
    std::vector<double> brand_band;                      // [brands, price_bands]
    std::vector<double> three_way;                       // [segments, categories, deals], centred
    std::vector<double> brand_trust, segment_cvr;        // CVR terms
    std::vector<double> user_mt, item_mt;                // [users, 8], [items, 8]
    std::array<double, 8> task_w1{}, task_w2{};
    std::array<double, 3> sin_alpha{}, sin_beta{};
    std::array<double, 2> mt_mean{0, 0}, mt_sd{1, 1};  // of mt_shape(w_k . h) over the row distribution
    std::array<double, 2> mt_scale{1, 1}, mt_bias{0, 0};  // calibrated: target AUC and rate
    std::array<double, mt_dim> mt_h_mean{}, mt_h_sd{};    // of m_u (.) m_i over the row distribution
    double click_scale = 1, click_bias = 0;               // basic, sequence: calibrated likewise

    /// The MMoE-style task shape: x + 0.3 sum_j sin(alpha_j x + beta_j), alpha_j in [0.5, 1]
    /// (increasing in x, so the Bayes AUC does not collapse for unlucky phases).
    double mt_shape(double x) const {
        double s = x;
        for (std::size_t j = 0; j < sin_alpha.size(); ++j) s += 0.3 * std::sin(sin_alpha[j] * x + sin_beta[j]);
        return s;
    }
    /// w_k . h for task k = 0, 1, h = m_u (.) m_i standardised per component (so the linear
    /// parts of the two tasks have correlation w_1 . w_2 = task_correlation).
    double mt_projection(std::int64_t user, std::int64_t item, int k) const {
        const auto& wk = k == 0 ? task_w1 : task_w2;
        double x = 0;
        for (std::size_t d = 0; d < mt_dim; ++d)
            x += wk[d] * (user_mt[static_cast<std::size_t>(user) * mt_dim + d] * item_mt[static_cast<std::size_t>(item) * mt_dim + d] -
                          mt_h_mean[d]) / mt_h_sd[d];
        return x;
    }
    double log_price_mean = 0, log_price_sd = 1;
    std::vector<double> price_band_edges;  // log-price cut points (price_bands - 1)

    static constexpr std::array<double, 3> deal_discount{0.0, 0.10, 0.30};
    static constexpr std::array<double, 3> deal_share{0.60, 0.25, 0.15};
    static constexpr std::array<double, 3> deal_click{0.0, 0.25, 0.5};
    static constexpr std::array<double, 3> deal_cvr{0.0, 0.3, 0.6};

    std::int64_t num_tasks() const { return layout.num_tasks(); }
    const char* category_name(std::int64_t c) const { return detail::shop_category_name(c); }
    std::string brand_name(std::int64_t b) const { return detail::shop_brand_name(b); }

    /// Global id of item i (for building rows by hand) and the item of a global item id.
    std::int64_t item_id(std::int64_t i) const { return layout.tables[1].offset + i + 1; }
    std::int64_t item_of_id(std::int64_t id) const { return id - layout.tables[1].offset - 1; }

    /// Standardised log of the price shown under `deal`.
    double price_feature(std::int64_t item, std::int64_t deal) const {
        const double lp = std::log(item_price[static_cast<std::size_t>(item)] *
                                   (1.0 - deal_discount[static_cast<std::size_t>(deal)]));
        return (lp - log_price_mean) / log_price_sd;
    }

    double taste(std::int64_t u, std::int64_t c) const {
        double s = 0;
        for (std::int64_t k = 0; k < taste_dim; ++k)
            s += user_taste[static_cast<std::size_t>(u * taste_dim + k)] *
                 category_vec[static_cast<std::size_t>(c * taste_dim + k)];
        return 0.5 * s;
    }

    /// The planted model's logits for one event, term by term.
    shop_logits logits(const shop_event& e) const {
        XREC_CHECK(e.user >= 0 && e.user < options.users && e.item >= 0 && e.item < options.items && e.deal >= 0 &&
                       e.deal < deals,
                   "shop::logits: user ", e.user, " item ", e.item, " deal ", e.deal, " outside ", options.users,
                   " users, ", options.items, " items, ", deals, " deals");
        const auto u = static_cast<std::size_t>(e.user), i = static_cast<std::size_t>(e.item);
        const auto d = static_cast<std::size_t>(e.deal);
        const std::int64_t c = item_category[i], b = item_brand[i], band = item_price_band[i];
        const std::int64_t seg = user_segment[u];
        const double tst = taste(e.user, c), price = price_feature(e.item, e.deal);
        shop_logits z;
        if (options.setting == shop_setting::multi_task) {
            const double x1 = mt_projection(e.user, e.item, 0), x2 = mt_projection(e.user, e.item, 1);
            z.bias = mt_bias[0];
            z.taste = mt_scale[0] * (mt_shape(x1) - mt_mean[0]) / mt_sd[0];
            z.click = z.bias + z.taste;
            z.task_b = mt_bias[1] + mt_scale[1] * (mt_shape(x2) - mt_mean[1]) / mt_sd[1];
            return z;
        }
        z.user = user_bias[u];
        z.item = item_quality[i];
        z.deal = deal_click[d];
        z.price = -0.3 * price;
        if (options.setting == shop_setting::basic) {
            z.taste = 0.9 * tst;
            z.brand_band = brand_band[static_cast<std::size_t>(b * options.price_bands + band)];
            z.three_way = options.three_way_scale *
                          three_way[static_cast<std::size_t>((seg * options.categories + c) * deals) + d];
        } else {  // the shopper and the item matter less: the history carries the signal
            z.user *= 0.5, z.item *= 0.5, z.price *= 0.5;
            z.taste = 0.3 * tst;
            double miss = 1;
            for (auto h : e.history) {
                const auto hi = static_cast<std::size_t>(h);
                if (item_category[hi] != c) continue;
                if (item_brand[hi] == b) {
                    ++z.history_brand_matches;
                    miss *= 1 - options.match_brand;
                } else {
                    ++z.history_category_matches;
                    miss *= 1 - options.match_category;
                }
            }
            z.history = options.history_scale * (1 - miss);
        }
        // One scale for every term (calibrated: the Bayes AUC), then the bias (the click rate).
        const double k = click_scale;
        z.user *= k, z.item *= k, z.taste *= k, z.brand_band *= k, z.deal *= k, z.three_way *= k, z.price *= k,
            z.history *= k;
        z.bias = click_bias;
        z.click = z.bias + z.user + z.item + z.taste + z.brand_band + z.deal + z.three_way + z.price + z.history;
        z.cvr = -1.9 + 0.6 * tst + brand_trust[static_cast<std::size_t>(b)] - 0.7 * price + deal_cvr[d] -
                1.2 * item_quality[i] + segment_cvr[static_cast<std::size_t>(seg)];
        return z;
    }

    /// True probability of each task for an event: [click, purchase] or [click, like].
    std::vector<double> probabilities(const shop_event& e) const {
        const auto z = logits(e);
        if (options.setting == shop_setting::multi_task)
            return {detail::shop_sigmoid(z.click), detail::shop_sigmoid(z.task_b)};
        const double pc = detail::shop_sigmoid(z.click);
        if (num_tasks() == 1) return {pc};
        return {pc, pc * detail::shop_sigmoid(z.cvr)};
    }

    /// The encoded row of an event (labels given per task; group = the user).
    void append_row(data::ctr_dataset<float>& out, const shop_event& e, std::span<const float> labels) const {
        const auto i = static_cast<std::size_t>(e.item), u = static_cast<std::size_t>(e.user);
        const auto& t = layout.tables;
        const std::int64_t sparse[7] = {t[0].offset + e.user + 1,
                                        t[1].offset + e.item + 1,
                                        t[2].offset + item_category[i] + 1,
                                        t[3].offset + item_brand[i] + 1,
                                        t[4].offset + item_price_band[i] + 1,
                                        t[5].offset + user_segment[u] + 1,
                                        t[6].offset + e.deal + 1};
        const float dense[2] = {static_cast<float>(price_feature(e.item, e.deal)),
                                static_cast<float>(std::log(user_activity[u]) / 0.7)};
        hist_items_.clear(), hist_cats_.clear(), hist_brands_.clear();
        for (auto h : e.history) {
            hist_items_.push_back(t[1].offset + h + 1);
            hist_cats_.push_back(t[2].offset + item_category[static_cast<std::size_t>(h)] + 1);
            hist_brands_.push_back(t[3].offset + item_brand[static_cast<std::size_t>(h)] + 1);
        }
        std::span<const std::int64_t> seqs[3] = {hist_items_, hist_cats_, hist_brands_};
        out.append(sparse, dense, std::span<const std::span<const std::int64_t>>(seqs, layout.sequences.size()),
                   labels, e.user);
    }

    /// Decodes row r of a dataset of this shop back into its event.
    shop_event decode(const data::ctr_dataset<float>& d, std::int64_t r) const {
        const auto s = d.sparse_row(r);
        const auto& t = layout.tables;
        shop_event e;
        e.user = s[0] - t[0].offset - 1;
        e.item = s[1] - t[1].offset - 1;
        e.deal = s[6] - t[6].offset - 1;
        if (layout.num_sequences() > 0)
            for (auto id : d.sequence(0, r)) e.history.push_back(id - t[1].offset - 1);
        return e;
    }

    /// Rows for scoring `items` for `user` now: the shopper's current browsing
    /// (user_history), no deal. Labels are 0 (unknown); the true probabilities are
    /// candidate_probabilities(user, items). Like append_row, it uses scratch buffers of the
    /// shop: one thread at a time per shop object.
    data::ctr_dataset<float> candidates(std::int64_t user, std::span<const std::int64_t> items) const {
        XREC_CHECK(user >= 0 && user < options.users, "shop::candidates: user ", user, " of ", options.users);
        data::ctr_dataset<float> out(layout);
        out.reserve(static_cast<std::int64_t>(items.size()));
        const std::vector<float> zeros(static_cast<std::size_t>(num_tasks()), 0.0f);
        for (auto it : items) {
            XREC_CHECK(it >= 0 && it < options.items, "shop::candidates: item ", it, " of ", options.items);
            append_row(out, now_event(user, it), zeros);
        }
        return out;
    }
    /// True probabilities [items, tasks] of candidates(user, items).
    std::vector<double> candidate_probabilities(std::int64_t user, std::span<const std::int64_t> items) const {
        std::vector<double> p;
        for (auto it : items) {
            const auto q = probabilities(now_event(user, it));
            p.insert(p.end(), q.begin(), q.end());
        }
        return p;
    }
    shop_event now_event(std::int64_t user, std::int64_t item) const {
        shop_event e{user, item, 0, {}};
        if (options.setting == shop_setting::sequence) e.history = user_history[static_cast<std::size_t>(user)];
        return e;
    }

    /// "Kavo shoes #123 (49.90, band 3/5, popularity rank 17)".
    std::string describe_item(std::int64_t item) const {
        XREC_CHECK(item >= 0 && item < options.items, "shop::describe_item: item ", item, " of ", options.items);
        const auto i = static_cast<std::size_t>(item);
        char buf[160];
        std::snprintf(buf, sizeof buf, "%s %s #%lld (%.2f, price band %lld/%lld, popularity rank %lld)",
                      brand_name(item_brand[i]).c_str(), category_name(item_category[i]),
                      static_cast<long long>(item), item_price[i], static_cast<long long>(item_price_band[i] + 1),
                      static_cast<long long>(options.price_bands), static_cast<long long>(popularity_rank_[i] + 1));
        return buf;
    }
    /// "shopper 7 (segment 2, favourite categories: tea, coffee, lamps)".
    std::string describe_user(std::int64_t user) const {
        XREC_CHECK(user >= 0 && user < options.users, "shop::describe_user: user ", user, " of ", options.users);
        std::vector<std::int64_t> cats(static_cast<std::size_t>(options.categories));
        std::iota(cats.begin(), cats.end(), std::int64_t{0});
        std::stable_sort(cats.begin(), cats.end(),
                         [&](std::int64_t a, std::int64_t b) { return taste(user, a) > taste(user, b); });
        std::string s = "shopper " + std::to_string(user) + " (segment " +
                        std::to_string(user_segment[static_cast<std::size_t>(user)] + 1) + ", favourite categories: ";
        for (std::size_t k = 0; k < 3 && k < cats.size(); ++k) s += (k ? ", " : "") + std::string(category_name(cats[k]));
        return s + ")";
    }

    // Internals used by make_shop (public so the generator stays a free function).
    std::vector<std::int64_t> popularity_rank_;
    detail::shop_sampler item_sampler_, user_sampler_;
    std::vector<detail::shop_sampler> category_items_;  // per category, by popularity
    std::vector<detail::shop_sampler> user_category_;    // per user, category preference
    mutable std::vector<std::int64_t> hist_items_, hist_cats_, hist_brands_;

    /// Draws one event (the row's snapshot) from its own stream.
    shop_event draw_event(detail::shop_draws& r) const {
        shop_event e;
        e.user = user_sampler_.draw(r);
        e.deal = draw_deal(r);
        if (options.setting != shop_setting::sequence) {
            e.item = item_sampler_.draw(r);
            return e;
        }
        std::vector<std::int64_t> missions;
        draw_history(e.user, r, e.history, missions);
        const double v = r.uniform();
        if (v < 0.30) e.item = category_items_[static_cast<std::size_t>(missions.front())].draw(r);
        else if (v < 0.40) e.item = category_items_[static_cast<std::size_t>(missions[static_cast<std::size_t>(r.below(static_cast<std::int64_t>(missions.size())))])].draw(r);
        else e.item = item_sampler_.draw(r);
        return e;
    }
    std::int64_t draw_deal(detail::shop_draws& r) const {
        const double v = r.uniform();
        return v < deal_share[0] ? 0 : v < deal_share[0] + deal_share[1] ? 1 : 2;
    }
    /// Recent browsing: sessions of 3..10 behaviours, newest first in `missions`; in a session
    /// half the behaviours are items of its mission category, the rest popular items.
    void draw_history(std::int64_t user, detail::shop_draws& r, std::vector<std::int64_t>& hist,
                      std::vector<std::int64_t>& missions) const {
        const std::int64_t L = options.min_history + r.below(options.max_history - options.min_history + 1);
        hist.assign(static_cast<std::size_t>(L), 0);
        missions.clear();
        std::int64_t pos = L;  // fill from the newest backwards
        while (pos > 0) {
            const std::int64_t len = std::min(pos, 3 + r.below(8));
            const std::int64_t m = user_category_[static_cast<std::size_t>(user)].draw(r);
            missions.push_back(m);
            for (std::int64_t k = 0; k < len; ++k)
                hist[static_cast<std::size_t>(--pos)] = r.u32() < 0x80000000u
                                                            ? category_items_[static_cast<std::size_t>(m)].draw(r)
                                                            : item_sampler_.draw(r);
        }
    }
};

namespace detail {

/// The scale a and bias b for which logits b + a x, x drawn from `x` (a sample of the
/// unscaled logit over the row distribution), have an expected Bayes AUC of `auc` and an
/// expected positive rate of `rate` (nested bisections: the rate grows with b, the AUC with a).
/// The expected AUC of labels y ~ Bernoulli(p(x)) scored by x is
///   sum_{i, j: x_i > x_j} p_i (1 - p_j) / (sum_i p_i sum_j (1 - p_j) - sum_i p_i (1 - p_i)).
inline std::pair<double, double> shop_calibrate(std::vector<double> x, double auc, double rate) {
    std::sort(x.begin(), x.end());
    const double n = static_cast<double>(x.size());
    auto bias_for = [&](double a) {
        double lo = -20, hi = 20;
        for (int it = 0; it < 30; ++it) {
            const double b = 0.5 * (lo + hi);
            double r = 0;
            for (auto v : x) r += shop_sigmoid(b + a * v);
            (r < rate * n ? lo : hi) = b;
        }
        return 0.5 * (lo + hi);
    };
    auto expected_auc = [&](double a, double b) {
        double neg_below = 0, num = 0, pos = 0, neg = 0, self = 0;
        for (auto v : x) {
            const double p = shop_sigmoid(b + a * v);
            num += p * neg_below, neg_below += 1 - p, pos += p, neg += 1 - p, self += p * (1 - p);
        }
        return num / (pos * neg - self);
    };
    double lo = 0.02, hi = 20;
    for (int it = 0; it < 30; ++it) {
        const double a = 0.5 * (lo + hi);
        (expected_auc(a, bias_for(a)) < auc ? lo : hi) = a;
    }
    const double a = 0.5 * (lo + hi);
    return {a, bias_for(a)};
}

/// The layout shared by the settings: sparse user_id, item_id, category, brand, price_band,
/// segment, deal; dense price, activity; sequence setting: hist_item_id (item table) and,
/// with history_attributes, hist_category and hist_brand (category and brand tables, aligned
/// with hist_item_id), all mean-pooled by default.
inline feature_layout shop_layout(const shop_options& o) {
    feature_layout L;
    L.tables = {{"user_id", o.users + 1, 0},      {"item_id", o.items + 1, 0},  {"category", o.categories + 1, 0},
                {"brand", o.brands + 1, 0},       {"price_band", o.price_bands + 1, 0},
                {"segment", o.segments + 1, 0},   {"deal", shop::deals + 1, 0}};
    L.sparse = {{"user_id", 0, false}, {"item_id", 1, false},    {"category", 2, false}, {"brand", 3, false},
                {"price_band", 4, false}, {"segment", 5, false}, {"deal", 6, false}};
    L.dense = {"price", "activity"};
    if (o.setting == shop_setting::sequence) {
        L.sequences.push_back({"hist_item_id", 1, o.max_history, pooling::mean, false});
        if (o.history_attributes) {
            L.sequences.push_back({"hist_category", 2, o.max_history, pooling::mean, false});
            L.sequences.push_back({"hist_brand", 3, o.max_history, pooling::mean, false});
        }
    }
    if (o.setting == shop_setting::multi_task) L.tasks = {"click", "like"};
    else if (o.purchase_task) L.tasks = {"click", "purchase"};
    else L.tasks = {"click"};
    L.finish();
    return L;
}

}  // namespace detail

/// Builds the world and draws train / valid / test rows (see `shop`). Deterministic in
/// options.seed; single-threaded; the default sizes take well under a second.
inline shop make_shop(const shop_options& o) {
    XREC_CHECK(o.users > 0 && o.items > 0 && o.categories > 0 && o.brands > 0 && o.price_bands > 0 && o.segments > 0,
               "make_shop: users ", o.users, ", items ", o.items, ", categories ", o.categories, ", brands ", o.brands,
               ", price bands ", o.price_bands, " and segments ", o.segments, " must all be positive");
    XREC_CHECK(o.train_rows >= -1 && o.valid_rows >= 0 && o.test_rows >= 0, "make_shop: negative row counts ",
               o.train_rows, "/", o.valid_rows, "/", o.test_rows);
    XREC_CHECK(o.min_history >= 1 && o.max_history >= o.min_history, "make_shop: history lengths [", o.min_history,
               ", ", o.max_history, "] (min_history >= 1)");
    XREC_CHECK(o.task_correlation >= -1 && o.task_correlation <= 1, "make_shop: task_correlation ",
               o.task_correlation, " outside [-1, 1]");
    XREC_CHECK(o.match_brand >= 0 && o.match_brand < 1 && o.match_category >= 0 && o.match_category < 1,
               "make_shop: match chances ", o.match_category, ", ", o.match_brand, " must lie in [0, 1)");
    shop s;
    s.options = o;
    if (s.options.train_rows < 0) s.options.train_rows = o.setting == shop_setting::sequence ? 600000 : 1000000;
    s.layout = detail::shop_layout(o);
    const auto U = static_cast<std::size_t>(o.users), I = static_cast<std::size_t>(o.items);
    const auto C = static_cast<std::size_t>(o.categories), Bn = static_cast<std::size_t>(o.brands);
    const auto P = static_cast<std::size_t>(o.price_bands), S = static_cast<std::size_t>(o.segments);
    constexpr auto D = static_cast<std::size_t>(shop::deals), K = static_cast<std::size_t>(shop::taste_dim);
    constexpr auto M = static_cast<std::size_t>(shop::mt_dim);

    // ---- the world: one stream, drawn in a fixed order ----
    detail::shop_draws w{philox{mix_seed(o.seed, 0x5A0F)}, 0};  // the world, drawn in a fixed order
    s.category_vec.resize(C * K);
    for (auto& v : s.category_vec) v = w.normal();
    std::vector<double> cat_level(C), brand_premium(Bn);
    for (auto& v : cat_level) v = std::log(5.0) + w.uniform() * std::log(60.0);
    for (auto& v : brand_premium) v = w.normal();
    s.brand_trust.resize(Bn);
    for (auto& v : s.brand_trust) v = 0.4 * w.normal();
    s.brand_band.resize(Bn * P);
    for (auto& v : s.brand_band) v = 0.5 * w.normal();
    s.segment_cvr.resize(S);
    for (auto& v : s.segment_cvr) v = 0.3 * w.normal();
    // Most of an item's quality is its brand's and most of a shopper's taste is their
    // segment's: effects shared by many rows, which a model can learn from a few hundred
    // thousand rows; the idiosyncratic rest is small.
    std::vector<double> brand_quality(Bn), segment_taste(S * K);
    for (auto& v : brand_quality) v = 0.35 * w.normal();
    for (auto& v : segment_taste) v = w.normal();

    // Items.
    s.item_category.resize(I), s.item_brand.resize(I), s.item_price_band.resize(I);
    s.item_price.resize(I), s.item_popularity.resize(I), s.item_quality.resize(I);
    std::vector<double> log_price(I);
    for (std::size_t i = 0; i < I; ++i) {
        const auto c = static_cast<std::int64_t>(w.below(o.categories));
        std::int64_t b = w.below(o.brands);
        const std::int64_t home = (o.brands - 1 - c) / o.categories + 1;  // brands with b % C == c
        if (o.brands >= o.categories && w.uniform() < 0.9) b = c + o.categories * w.below(home);
        s.item_category[i] = c;
        s.item_brand[i] = b;
        log_price[i] = cat_level[static_cast<std::size_t>(c)] + 0.3 * brand_premium[static_cast<std::size_t>(b)] +
                       0.35 * w.normal();
        s.item_price[i] = std::exp(log_price[i]);
        s.item_quality[i] = brand_quality[static_cast<std::size_t>(b)] + 0.1 * w.normal();
    }
    {  // price bands: quantiles of the base log price; the dense price is standardised
        std::vector<double> sorted = log_price;
        std::sort(sorted.begin(), sorted.end());
        for (std::size_t k = 1; k < P; ++k) s.price_band_edges.push_back(sorted[k * I / P]);
        for (std::size_t i = 0; i < I; ++i)
            s.item_price_band[i] = static_cast<std::int64_t>(
                std::upper_bound(s.price_band_edges.begin(), s.price_band_edges.end(), log_price[i]) -
                s.price_band_edges.begin());
        double m = 0, v = 0;
        for (auto x : log_price) m += x;
        m /= static_cast<double>(I);
        for (auto x : log_price) v += (x - m) * (x - m);
        s.log_price_mean = m;
        s.log_price_sd = std::sqrt(v / static_cast<double>(I)) + 1e-12;
    }
    {  // popularity: a random rank, weight 1/(rank + 10)^zipf (normalised)
        std::vector<std::int64_t> perm(I);
        std::iota(perm.begin(), perm.end(), std::int64_t{0});
        for (std::size_t k = I - 1; k > 0; --k)
            std::swap(perm[k], perm[static_cast<std::size_t>(w.below(static_cast<std::int64_t>(k + 1)))]);
        s.popularity_rank_.resize(I);
        double total = 0;
        for (std::size_t r = 0; r < I; ++r) {
            const auto i = static_cast<std::size_t>(perm[r]);
            s.popularity_rank_[i] = static_cast<std::int64_t>(r);
            total += s.item_popularity[i] = std::pow(static_cast<double>(r) + 10.0, -o.zipf);
        }
        for (auto& p : s.item_popularity) p /= total;
        s.item_sampler_.build(s.item_popularity);
        s.category_items_.resize(C);
        std::vector<std::vector<double>> cw(C);
        std::vector<std::vector<std::int64_t>> ci(C);
        for (std::size_t i = 0; i < I; ++i) {
            const auto c = static_cast<std::size_t>(s.item_category[i]);
            cw[c].push_back(s.item_popularity[i]);
            ci[c].push_back(static_cast<std::int64_t>(i));
        }
        for (std::size_t c = 0; c < C; ++c) {
            if (ci[c].empty()) {  // an empty category falls back to the whole catalog
                s.category_items_[c] = s.item_sampler_;
                continue;
            }
            s.category_items_[c].build(cw[c], std::move(ci[c]));
        }
    }

    // Shoppers.
    s.user_segment.resize(U), s.user_activity.resize(U), s.user_bias.resize(U), s.user_taste.resize(U * K);
    for (std::size_t u = 0; u < U; ++u) {
        s.user_segment[u] = w.below(o.segments);
        s.user_activity[u] = std::exp(0.7 * w.normal());
        s.user_bias[u] = 0.2 * w.normal();
        for (std::size_t k = 0; k < K; ++k)  // unit variance: 0.95^2 + 0.31^2 = 1
            s.user_taste[u * K + k] = 0.95 * segment_taste[static_cast<std::size_t>(s.user_segment[u]) * K + k] + 0.31 * w.normal();
    }
    s.user_sampler_.build(s.user_activity);
    s.user_category_.resize(U);
    {
        std::vector<double> pref(C);
        for (std::size_t u = 0; u < U; ++u) {
            double mx = -1e300;
            for (std::size_t c = 0; c < C; ++c)
                mx = std::max(mx, pref[c] = s.taste(static_cast<std::int64_t>(u), static_cast<std::int64_t>(c)));
            double tot = 0;
            for (auto& p : pref) tot += p = std::exp(p - mx);
            for (auto& p : pref) p = 0.8 * p / tot + 0.2 / static_cast<double>(C);
            s.user_category_[u].build(pref);
        }
    }

    // The three-way term: N(0,1) cells, then the pure three-way ANOVA component under the
    // product of the segment, category and deal distributions, scaled to unit variance.
    {
        std::vector<double> ps(S, 0), pc(C, 0);
        double at = 0;
        for (std::size_t u = 0; u < U; ++u) ps[static_cast<std::size_t>(s.user_segment[u])] += s.user_activity[u], at += s.user_activity[u];
        for (auto& v : ps) v /= at;
        for (std::size_t i = 0; i < I; ++i) pc[static_cast<std::size_t>(s.item_category[i])] += s.item_popularity[i];
        const auto& pd = shop::deal_share;
        auto& T = s.three_way;
        T.resize(S * C * D);
        for (auto& v : T) v = w.normal();
        auto at3 = [&](std::size_t a, std::size_t c, std::size_t d) -> double& { return T[(a * C + c) * D + d]; };
        for (std::size_t c = 0; c < C; ++c)  // remove the mean over segments
            for (std::size_t d = 0; d < D; ++d) {
                double m = 0;
                for (std::size_t a = 0; a < S; ++a) m += ps[a] * at3(a, c, d);
                for (std::size_t a = 0; a < S; ++a) at3(a, c, d) -= m;
            }
        for (std::size_t a = 0; a < S; ++a)  // over categories
            for (std::size_t d = 0; d < D; ++d) {
                double m = 0;
                for (std::size_t c = 0; c < C; ++c) m += pc[c] * at3(a, c, d);
                for (std::size_t c = 0; c < C; ++c) at3(a, c, d) -= m;
            }
        for (std::size_t a = 0; a < S; ++a)  // over deals
            for (std::size_t c = 0; c < C; ++c) {
                double m = 0;
                for (std::size_t d = 0; d < D; ++d) m += pd[d] * at3(a, c, d);
                for (std::size_t d = 0; d < D; ++d) at3(a, c, d) -= m;
            }
        double var = 0;
        for (std::size_t a = 0; a < S; ++a)
            for (std::size_t c = 0; c < C; ++c)
                for (std::size_t d = 0; d < D; ++d) var += ps[a] * pc[c] * pd[d] * at3(a, c, d) * at3(a, c, d);
        const double scale = var > 0 ? 1.0 / std::sqrt(var) : 0.0;
        for (auto& v : T) v *= scale;
    }

    // Multi-task directions: w1 random unit, w2 = rho w1 + sqrt(1 - rho^2) w_perp.
    {
        s.user_mt.resize(U * M), s.item_mt.resize(I * M);
        std::vector<double> cat_mt(C * M);
        for (auto& v : cat_mt) v = w.normal();
        for (auto& v : s.user_mt) v = w.normal();
        for (std::size_t i = 0; i < I; ++i)  // unit variance per component: 0.8^2 + 0.6^2 = 1
            for (std::size_t k = 0; k < M; ++k)
                s.item_mt[i * M + k] = 0.8 * cat_mt[static_cast<std::size_t>(s.item_category[i]) * M + k] + 0.6 * w.normal();
        std::array<double, M> a{}, b{};
        for (auto& v : a) v = w.normal();
        for (auto& v : b) v = w.normal();
        auto dot = [](const std::array<double, M>& x, const std::array<double, M>& y) {
            double t = 0;
            for (std::size_t k = 0; k < M; ++k) t += x[k] * y[k];
            return t;
        };
        const double na = std::sqrt(dot(a, a));
        for (auto& v : a) v /= na;
        const double ab = dot(a, b);
        for (std::size_t k = 0; k < M; ++k) b[k] -= ab * a[k];
        const double nb = std::sqrt(dot(b, b));
        for (auto& v : b) v /= nb;
        const double rho = o.task_correlation;
        for (std::size_t k = 0; k < M; ++k) {
            s.task_w1[k] = a[k];
            s.task_w2[k] = rho * a[k] + std::sqrt(1 - rho * rho) * b[k];
        }
        for (auto& v : s.sin_alpha) v = 0.5 + 0.5 * w.uniform();  // 0.3 * 3 * 1 < 1: the shape increases
        for (auto& v : s.sin_beta) v = 6.283185307179586 * w.uniform();
        // Standardise h and each task's shape over 8000 (shopper, item) pairs drawn like rows,
        // then calibrate scale and bias: the shapes differ by seed, the difficulty should not.
        std::vector<std::pair<std::int64_t, std::int64_t>> pairs(8000);
        for (auto& [u, i] : pairs) u = s.user_sampler_.draw(w), i = s.item_sampler_.draw(w);
        for (std::size_t d = 0; d < M; ++d) {
            double m = 0, v = 0;
            for (auto [u, i] : pairs) m += s.user_mt[static_cast<std::size_t>(u) * M + d] * s.item_mt[static_cast<std::size_t>(i) * M + d];
            m /= static_cast<double>(pairs.size());
            for (auto [u, i] : pairs) {
                const double h = s.user_mt[static_cast<std::size_t>(u) * M + d] * s.item_mt[static_cast<std::size_t>(i) * M + d] - m;
                v += h * h;
            }
            s.mt_h_mean[d] = m;
            s.mt_h_sd[d] = std::sqrt(v / static_cast<double>(pairs.size())) + 1e-12;
        }
        for (std::size_t k = 0; k < 2; ++k) {
            std::vector<double> f;
            for (auto [u, i] : pairs) f.push_back(s.mt_shape(s.mt_projection(u, i, static_cast<int>(k))));
            double m = 0, v = 0;
            for (auto x : f) m += x;
            m /= static_cast<double>(f.size());
            for (auto x : f) v += (x - m) * (x - m);
            s.mt_mean[k] = m;
            s.mt_sd[k] = std::sqrt(v / static_cast<double>(f.size())) + 1e-12;
            for (auto& x : f) x = (x - m) / s.mt_sd[k];
            std::tie(s.mt_scale[k], s.mt_bias[k]) = detail::shop_calibrate(std::move(f), o.target_auc, o.target_rate);
        }
    }

    // Basic / sequence: one scale and a bias for the click logit, from 10000 events drawn like
    // rows (their own stream), for the target Bayes AUC and click rate.
    if (o.setting != shop_setting::multi_task) {
        std::vector<double> x(10000);
        for (std::size_t n = 0; n < x.size(); ++n) {
            detail::shop_draws r{philox{mix_seed(o.seed, 0x5A03)}, n};
            x[n] = s.logits(s.draw_event(r)).click;  // click_scale 1, click_bias 0 so far
        }
        std::tie(s.click_scale, s.click_bias) = detail::shop_calibrate(std::move(x), o.target_auc, o.target_rate);
    }

    // Each shopper's browsing now (for candidates()).
    s.user_history.resize(U);
    {
        std::vector<std::int64_t> missions;
        for (std::size_t u = 0; u < U; ++u) {
            detail::shop_draws r{philox{mix_seed(o.seed, 0x5A01)}, u};  // stream u: shopper u's browsing now
            s.draw_history(static_cast<std::int64_t>(u), r, s.user_history[u], missions);
        }
    }

    // ---- the rows: row r from stream r of its own key ----
    const philox row_key{mix_seed(o.seed, 0x5A02)};
    const std::int64_t T = s.layout.num_tasks();
    auto fill = [&](data::ctr_dataset<float>& out, std::vector<double>& p, std::vector<double>& pcvr,
                    std::vector<float>& conv, std::int64_t first, std::int64_t n) {
        out = data::ctr_dataset<float>(s.layout);
        out.reserve(n);
        p.reserve(static_cast<std::size_t>(n * T));
        const bool ct = o.setting != shop_setting::multi_task;
        if (ct) pcvr.reserve(static_cast<std::size_t>(n)), conv.reserve(static_cast<std::size_t>(n));
        float labels[2];
        for (std::int64_t k = 0; k < n; ++k) {
            detail::shop_draws r{row_key, static_cast<std::uint64_t>(first + k)};
            const shop_event e = s.draw_event(r);
            const shop_logits z = s.logits(e);
            const double u1 = r.uniform(), u2 = r.uniform();
            const double p0 = detail::shop_sigmoid(z.click);
            labels[0] = u1 < p0 ? 1.0f : 0.0f;
            if (ct) {
                const double q = detail::shop_sigmoid(z.cvr);
                const float cv = u2 < q ? 1.0f : 0.0f;
                labels[1] = labels[0] * cv;
                p.push_back(p0);
                if (T == 2) p.push_back(p0 * q);
                pcvr.push_back(q), conv.push_back(cv);
            } else {
                const double p1 = detail::shop_sigmoid(z.task_b);
                labels[1] = u2 < p1 ? 1.0f : 0.0f;
                p.push_back(p0), p.push_back(p1);
            }
            s.append_row(out, e, std::span<const float>(labels, static_cast<std::size_t>(T)));
        }
    };
    const std::int64_t n_train = s.options.train_rows;
    fill(s.train, s.p_train, s.p_cvr_train, s.conversion_train, 0, n_train);
    fill(s.valid, s.p_valid, s.p_cvr_valid, s.conversion_valid, n_train, o.valid_rows);
    fill(s.test, s.p_test, s.p_cvr_test, s.conversion_test, n_train + o.valid_rows, o.test_rows);

    // Bayes-optimal AUC on the test rows, per task.
    s.bayes_auc.assign(static_cast<std::size_t>(T), 0.5);
    if (o.test_rows > 0) {
        std::vector<double> pk(static_cast<std::size_t>(o.test_rows));
        std::vector<float> yk(pk.size());
        for (std::int64_t t = 0; t < T; ++t) {
            for (std::size_t r = 0; r < pk.size(); ++r) {
                pk[r] = s.p_test[r * static_cast<std::size_t>(T) + static_cast<std::size_t>(t)];
                yk[r] = s.test.label(static_cast<std::int64_t>(r), t);
            }
            s.bayes_auc[static_cast<std::size_t>(t)] =
                detail::exact_auc(std::span<const double>(pk), std::span<const float>(yk));
        }
        if (!s.p_cvr_test.empty())
            s.bayes_auc_cvr = detail::exact_auc(std::span<const double>(s.p_cvr_test),
                                                std::span<const float>(s.conversion_test));
    }
    s.bayes_auc_test = s.bayes_auc[0];
    return s;
}

}  // namespace xrec::data
