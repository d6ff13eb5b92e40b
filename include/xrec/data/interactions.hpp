#pragma once
// Implicit-feedback data for collaborative filtering and sequential recommenders: loaders
// (MovieLens u.data, "user i1 i2 ..." sequence files, rsc15-style session TSVs), per-user
// chronological sequences in CSR form, leave-last-out and time splits, and negative
// samplers that never return an item the user has seen.
//
// Conventions:
//  - ids are dense and 0-based after loading; the ids of the file are kept (raw_user,
//    raw_item, row_id) for printing and for mapping back.
//  - Everything is a pure function of its input (and, for samplers, of (seed, user)), so a
//    PyTorch peer reading the same file, or the candidates we export, sees the same data.
//  - Bad input throws xrec::error naming the loader and file:line.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"
#include "xrec/core/rng.hpp"

namespace xrec::data {

/// Implicit feedback: one (user, item, time) entry per event, in file order.
/// user[e] in [0, n_users), item[e] in [0, n_items); time[e] in seconds (or the event's
/// position in the file when the source has no time). raw_user[u] / raw_item[i] are the
/// ids the file used for dense user u / item i.
struct interactions {
    std::vector<std::int32_t> user, item;
    std::vector<double> time;
    std::int32_t n_users = 0, n_items = 0;
    std::vector<std::int64_t> raw_user, raw_item;

    std::int64_t size() const { return static_cast<std::int64_t>(user.size()); }
};

/// Per-user (or per-session) chronological item lists in CSR form: row r holds
/// items[offsets[r], offsets[r+1]), oldest first. `times` is empty or parallel to `items`
/// (the event times). `row_id[r]` is the row's id in the source (user or session id; empty
/// when the source numbers rows implicitly), `raw_item[i]` the source's id of item i.
struct sequences {
    std::vector<std::int64_t> offsets{0};
    std::vector<std::int32_t> items;
    std::vector<double> times;
    std::int32_t n_items = 0;
    std::vector<std::int64_t> row_id;
    std::vector<std::int64_t> raw_item;

    std::int64_t rows() const { return static_cast<std::int64_t>(offsets.size()) - 1; }
    std::int64_t events() const { return static_cast<std::int64_t>(items.size()); }
    std::span<const std::int32_t> row(std::int64_t r) const {
        const auto b = static_cast<std::size_t>(offsets[static_cast<std::size_t>(r)]);
        const auto e = static_cast<std::size_t>(offsets[static_cast<std::size_t>(r) + 1]);
        return std::span<const std::int32_t>(items).subspan(b, e - b);
    }
    std::span<const double> row_times(std::int64_t r) const {
        if (times.empty()) return {};
        const auto b = static_cast<std::size_t>(offsets[static_cast<std::size_t>(r)]);
        const auto e = static_cast<std::size_t>(offsets[static_cast<std::size_t>(r) + 1]);
        return std::span<const double>(times).subspan(b, e - b);
    }
    /// Appends a row (items, and times when the sequence keeps them).
    void push_row(std::span<const std::int32_t> r, std::span<const double> t = {}) {
        items.insert(items.end(), r.begin(), r.end());
        if (!t.empty()) times.insert(times.end(), t.begin(), t.end());
        offsets.push_back(static_cast<std::int64_t>(items.size()));
    }
};

/// Item counts over the events of `s` (the popularity of most_popular, the novelty metric
/// and the popularity sampler).
inline std::vector<double> item_counts(const sequences& s) {
    std::vector<double> c(static_cast<std::size_t>(s.n_items), 0.0);
    for (auto i : s.items) c[static_cast<std::size_t>(i)] += 1.0;
    return c;
}

namespace detail {

// Splits a line on any run of the given separators (tab and space for our formats).
inline void split_fields(std::string_view line, std::vector<std::string_view>& out, std::string_view seps = " \t\r") {
    out.clear();
    std::size_t i = 0;
    while (i < line.size()) {
        while (i < line.size() && seps.find(line[i]) != std::string_view::npos) ++i;
        if (i >= line.size()) break;
        std::size_t j = i;
        while (j < line.size() && seps.find(line[j]) == std::string_view::npos) ++j;
        out.push_back(line.substr(i, j - i));
        i = j;
    }
}

inline std::int64_t parse_int(std::string_view s, const char* who, const std::string& file, std::int64_t line,
                              const char* what) {
    std::int64_t v = 0;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    XREC_CHECK(r.ec == std::errc() && r.ptr == s.data() + s.size(), who, ": ", file, ":", line, ": ", what, " '",
               std::string(s), "' is not an integer");
    return v;
}

inline double parse_double(std::string_view s, const char* who, const std::string& file, std::int64_t line,
                           const char* what) {
    double v = 0;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    XREC_CHECK(r.ec == std::errc() && r.ptr == s.data() + s.size() && std::isfinite(v), who, ": ", file, ":", line,
               ": ", what, " '", std::string(s), "' is not a finite number");
    return v;
}

inline std::ifstream open_input(const std::filesystem::path& p, const char* who) {
    std::ifstream in(p);
    XREC_CHECK(in.good(), who, ": cannot open '", p.string(), "'");
    return in;
}

// Dense 0-based ids for raw ids in ascending raw order (ml-100k's 1..943 become 0..942).
inline std::vector<std::int32_t> dense_sorted(const std::vector<std::int64_t>& raw, std::vector<std::int64_t>& vocab) {
    vocab = raw;
    std::sort(vocab.begin(), vocab.end());
    vocab.erase(std::unique(vocab.begin(), vocab.end()), vocab.end());
    std::vector<std::int32_t> out(raw.size());
    for (std::size_t e = 0; e < raw.size(); ++e)
        out[e] = static_cast<std::int32_t>(std::lower_bound(vocab.begin(), vocab.end(), raw[e]) - vocab.begin());
    return out;
}

}  // namespace detail

/// MovieLens u.data: "user \t item \t rating \t timestamp" per line, no header. Events with
/// rating < min_rating are dropped (0 keeps all: the implicit-feedback convention of NCF).
/// Users and items get dense ids in ascending raw-id order, so for ml-100k dense = raw - 1.
/// Events stay in file order; time = the timestamp.
inline interactions load_movielens(const std::filesystem::path& u_data, double min_rating = 0) {
    const char* who = "load_movielens";
    auto in = detail::open_input(u_data, who);
    const std::string file = u_data.string();
    std::vector<std::int64_t> ru, ri;
    interactions d;
    std::string line;
    std::vector<std::string_view> f;
    std::int64_t ln = 0;
    while (std::getline(in, line)) {
        ++ln;
        detail::split_fields(line, f);
        if (f.empty()) continue;
        XREC_CHECK(f.size() == 4, who, ": ", file, ":", ln, ": expected 4 fields (user item rating timestamp), got ",
                   f.size());
        const auto u = detail::parse_int(f[0], who, file, ln, "user id");
        const auto i = detail::parse_int(f[1], who, file, ln, "item id");
        const auto r = detail::parse_double(f[2], who, file, ln, "rating");
        const auto t = detail::parse_double(f[3], who, file, ln, "timestamp");
        if (r < min_rating) continue;
        ru.push_back(u);
        ri.push_back(i);
        d.time.push_back(t);
    }
    d.user = detail::dense_sorted(ru, d.raw_user);
    d.item = detail::dense_sorted(ri, d.raw_item);
    d.n_users = static_cast<std::int32_t>(d.raw_user.size());
    d.n_items = static_cast<std::int32_t>(d.raw_item.size());
    return d;
}

/// A sequence file of the S3-Rec / ICLRec preprocessing (sequences/Beauty.txt): one user
/// per line, "user i1 i2 ... in", chronological, 1-based item ids. Item i becomes i - 1;
/// n_items is the largest id seen (ids are dense in these files). Rows are in file order,
/// row_id the user id of the line, times empty (positions are the order).
/// Because the ids are dense, the largest id can be no larger than the number of events: a
/// file breaking that (a corrupt or foreign file, "1 2000000000") is refused, naming the id,
/// before raw_item (one entry per id up to the largest) is sized by it.
inline sequences load_user_sequences(const std::filesystem::path& file) {
    const char* who = "load_user_sequences";
    auto in = detail::open_input(file, who);
    const std::string name = file.string();
    sequences s;
    std::string line;
    std::vector<std::string_view> f;
    std::int64_t ln = 0, max_item = 0;
    while (std::getline(in, line)) {
        ++ln;
        detail::split_fields(line, f);
        if (f.empty()) continue;
        XREC_CHECK(f.size() >= 2, who, ": ", name, ":", ln, ": a user line needs a user id and at least one item");
        s.row_id.push_back(detail::parse_int(f[0], who, name, ln, "user id"));
        for (std::size_t k = 1; k < f.size(); ++k) {
            const auto i = detail::parse_int(f[k], who, name, ln, "item id");
            XREC_CHECK(i >= 1 && i <= std::numeric_limits<std::int32_t>::max(), who, ": ", name, ":", ln, ": item id ",
                       i, " out of range (ids are 1-based)");
            max_item = std::max(max_item, i);
            s.items.push_back(static_cast<std::int32_t>(i - 1));
        }
        s.offsets.push_back(static_cast<std::int64_t>(s.items.size()));
    }
    XREC_CHECK(max_item <= static_cast<std::int64_t>(s.items.size()), who, ": ", name, ": item id ", max_item,
               " exceeds the ", s.items.size(), " events of the file: the ids are not dense 1..n_items");
    s.n_items = static_cast<std::int32_t>(max_item);
    s.raw_item.resize(static_cast<std::size_t>(max_item));
    std::iota(s.raw_item.begin(), s.raw_item.end(), std::int64_t{1});
    return s;
}

/// Raw item id -> dense id, grown by the training file and reused (frozen) for the test file.
struct item_vocab {
    std::unordered_map<std::int64_t, std::int32_t> index;
    std::vector<std::int64_t> raw;  ///< dense id -> raw id

    std::int32_t size() const { return static_cast<std::int32_t>(raw.size()); }
    /// Dense id of `r`, or -1.
    std::int32_t find(std::int64_t r) const {
        const auto it = index.find(r);
        return it == index.end() ? -1 : it->second;
    }
    std::int32_t add(std::int64_t r) {
        const auto [it, fresh] = index.try_emplace(r, size());
        if (fresh) raw.push_back(r);
        return it->second;
    }
};

/// How load_sessions treats the vocabulary and short sessions.
struct session_options {
    /// true for the training file: unseen items get the next dense id (first-appearance
    /// order, as GRU4Rec's ItemId.unique()). false for the test file: items the vocabulary
    /// does not know are dropped (GRU4Rec's protocol: the model cannot score them).
    bool extend_vocab = true;
    /// Sessions with fewer events (after dropping) are dropped: 2 for a test file, where a
    /// session of one click has no next click to predict.
    std::int32_t min_length = 1;
};

/// A session TSV of the rsc15 preparation (session-rec, GRU4Rec): header "SessionId
/// ItemId Time" (columns found by name, any order), tab-separated. Events of a session are
/// ordered by time (ties: file order); sessions are ordered by their first event's time
/// (ties: session id), which is the order session-parallel mini-batches and the kNN
/// baselines' recency both assume. row_id = the session id, times = the event times,
/// raw_item = vocab.raw (a copy, at load time).
inline sequences load_sessions(const std::filesystem::path& tsv, item_vocab& vocab, session_options o = {}) {
    const char* who = "load_sessions";
    auto in = detail::open_input(tsv, who);
    const std::string name = tsv.string();
    std::string line;
    std::vector<std::string_view> f;
    XREC_CHECK(static_cast<bool>(std::getline(in, line)), who, ": ", name, ":1: empty file (expected a header)");
    detail::split_fields(line, f, "\t\r");
    int cs = -1, ci = -1, ct = -1;
    for (std::size_t k = 0; k < f.size(); ++k) {
        if (f[k] == "SessionId") cs = static_cast<int>(k);
        if (f[k] == "ItemId") ci = static_cast<int>(k);
        if (f[k] == "Time") ct = static_cast<int>(k);
    }
    XREC_CHECK(cs >= 0 && ci >= 0 && ct >= 0, who, ": ", name,
               ":1: header must name the columns SessionId, ItemId and Time, got '", line, "'");
    const std::size_t nf = f.size();
    struct event {
        std::int64_t session;
        double time;
        std::int64_t pos;
        std::int32_t item;
    };
    std::vector<event> ev;
    std::int64_t ln = 1;
    while (std::getline(in, line)) {
        ++ln;
        detail::split_fields(line, f, "\t\r");
        if (f.empty()) continue;
        XREC_CHECK(f.size() == nf, who, ": ", name, ":", ln, ": expected ", nf, " tab-separated fields, got ", f.size());
        const auto s = detail::parse_int(f[static_cast<std::size_t>(cs)], who, name, ln, "SessionId");
        const auto r = detail::parse_int(f[static_cast<std::size_t>(ci)], who, name, ln, "ItemId");
        const auto t = detail::parse_double(f[static_cast<std::size_t>(ct)], who, name, ln, "Time");
        const std::int32_t i = o.extend_vocab ? vocab.add(r) : vocab.find(r);
        if (i < 0) continue;
        ev.push_back({s, t, static_cast<std::int64_t>(ev.size()), i});
    }
    // Group by session (stable: file order within a session), then order within by time.
    std::stable_sort(ev.begin(), ev.end(), [](const event& a, const event& b) { return a.session < b.session; });
    struct span_t {
        std::size_t b, e;
        double start;
        std::int64_t id;
    };
    std::vector<span_t> rows;
    for (std::size_t b = 0; b < ev.size();) {
        std::size_t e = b;
        while (e < ev.size() && ev[e].session == ev[b].session) ++e;
        std::stable_sort(ev.begin() + static_cast<std::ptrdiff_t>(b), ev.begin() + static_cast<std::ptrdiff_t>(e),
                         [](const event& x, const event& y) { return x.time < y.time; });
        if (static_cast<std::int64_t>(e - b) >= o.min_length) rows.push_back({b, e, ev[b].time, ev[b].session});
        b = e;
    }
    std::stable_sort(rows.begin(), rows.end(), [](const span_t& a, const span_t& b) {
        return a.start < b.start || (a.start == b.start && a.id < b.id);
    });
    sequences out;
    out.items.reserve(ev.size());
    out.times.reserve(ev.size());
    for (const auto& r : rows) {
        for (std::size_t k = r.b; k < r.e; ++k) {
            out.items.push_back(ev[k].item);
            out.times.push_back(ev[k].time);
        }
        out.offsets.push_back(static_cast<std::int64_t>(out.items.size()));
        out.row_id.push_back(r.id);
    }
    out.n_items = vocab.size();
    out.raw_item = vocab.raw;
    return out;
}

/// Per-user chronological sequences of `d`: row u = user u's items ordered by time (ties:
/// file order); every user gets a row (possibly empty). times are kept.
inline sequences to_sequences(const interactions& d) {
    XREC_CHECK(d.user.size() == d.item.size() && d.time.size() == d.user.size(), "to_sequences: ", d.user.size(),
               " users, ", d.item.size(), " items and ", d.time.size(), " times per event must agree");
    sequences s;
    s.n_items = d.n_items;
    s.raw_item = d.raw_item;
    s.row_id = d.raw_user;
    s.offsets.assign(static_cast<std::size_t>(d.n_users) + 1, 0);
    for (auto u : d.user) {
        XREC_CHECK(u >= 0 && u < d.n_users, "to_sequences: user ", u, " outside [0, ", d.n_users, ")");
        ++s.offsets[static_cast<std::size_t>(u) + 1];
    }
    for (std::size_t u = 0; u < static_cast<std::size_t>(d.n_users); ++u) s.offsets[u + 1] += s.offsets[u];
    std::vector<std::int64_t> order(d.user.size());
    std::iota(order.begin(), order.end(), std::int64_t{0});
    // One stable sort by (user, time): file order breaks ties.
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
        const auto ua = d.user[static_cast<std::size_t>(a)], ub = d.user[static_cast<std::size_t>(b)];
        return ua < ub || (ua == ub && d.time[static_cast<std::size_t>(a)] < d.time[static_cast<std::size_t>(b)]);
    });
    s.items.resize(order.size());
    s.times.resize(order.size());
    for (std::size_t k = 0; k < order.size(); ++k) {
        const auto e = static_cast<std::size_t>(order[k]);
        XREC_CHECK(d.item[e] >= 0 && d.item[e] < d.n_items, "to_sequences: item ", d.item[e], " outside [0, ",
                   d.n_items, ")");
        s.items[k] = d.item[e];
        s.times[k] = d.time[e];
    }
    return s;
}

/// Leave-last-out split per row: test[r] = the row's last item, valid[r] = the one before
/// it when `with_valid`, train = the rest (times follow when kept). A row too short to
/// keep at least one training item (length <= 1, or <= 2 with validation) goes wholly to
/// train with test (and valid) -1: as SASRec's data_partition, it is trained on, not
/// evaluated. Rows without a validation split have valid -1 everywhere.
struct loo_split {
    sequences train;
    std::vector<std::int32_t> valid, test;

    std::int64_t rows() const { return train.rows(); }
    std::int32_t n_items() const { return train.n_items; }
};

inline loo_split leave_last_out(const sequences& s, bool with_valid) {
    loo_split out;
    const auto n = s.rows();
    out.train.n_items = s.n_items;
    out.train.row_id = s.row_id;
    out.train.raw_item = s.raw_item;
    out.valid.assign(static_cast<std::size_t>(n), -1);
    out.test.assign(static_cast<std::size_t>(n), -1);
    const std::int64_t held = with_valid ? 2 : 1;
    for (std::int64_t r = 0; r < n; ++r) {
        const auto row = s.row(r);
        const auto t = s.row_times(r);
        const auto len = static_cast<std::int64_t>(row.size());
        if (len <= held) {
            out.train.push_row(row, t);
            continue;
        }
        const auto keep = static_cast<std::size_t>(len - held);
        out.train.push_row(row.first(keep), t.empty() ? t : t.first(keep));
        out.test[static_cast<std::size_t>(r)] = row.back();
        if (with_valid) out.valid[static_cast<std::size_t>(r)] = row[keep];
    }
    return out;
}

/// The items row r has seen before its test item: train[r] plus valid[r], sorted and
/// deduplicated (the mask of full ranking and the exclusion set of the samplers).
inline std::vector<std::int32_t> seen_items(const loo_split& s, std::int64_t r) {
    const auto row = s.train.row(r);
    std::vector<std::int32_t> v(row.begin(), row.end());
    if (s.valid[static_cast<std::size_t>(r)] >= 0) v.push_back(s.valid[static_cast<std::size_t>(r)]);
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    return v;
}

/// The parts of a time split; `cut` is the first time that went to test.
struct interaction_split {
    interactions train, test;
    double cut = 0;
};

/// Global time split: with the events sorted by time, the first round(n * train_fraction)
/// fix the cut c = the time of the first event past them; events with time < c train,
/// the rest test (so ties at the cut all test, and every train time precedes every test
/// time). Both parts keep the dense ids, n_users, n_items and raw ids of `d`, and file order.
inline interaction_split time_split(const interactions& d, double train_fraction) {
    XREC_CHECK(train_fraction >= 0 && train_fraction <= 1, "time_split: train_fraction ", train_fraction,
               " outside [0, 1]");
    const auto n = d.size();
    std::vector<double> t(d.time.begin(), d.time.end());
    std::sort(t.begin(), t.end());
    const auto a = std::min<std::int64_t>(n, std::llround(static_cast<double>(n) * train_fraction));
    interaction_split s;
    s.cut = a >= n ? std::numeric_limits<double>::infinity() : t[static_cast<std::size_t>(a)];
    for (auto* p : {&s.train, &s.test}) {
        p->n_users = d.n_users;
        p->n_items = d.n_items;
        p->raw_user = d.raw_user;
        p->raw_item = d.raw_item;
    }
    for (std::int64_t e = 0; e < n; ++e) {
        const auto k = static_cast<std::size_t>(e);
        auto& p = d.time[k] < s.cut ? s.train : s.test;
        p.user.push_back(d.user[k]);
        p.item.push_back(d.item[k]);
        p.time.push_back(d.time[k]);
    }
    return s;
}

/// How negatives are drawn.
enum class sampling { uniform, popularity };

inline const char* sampling_name(sampling k) { return k == sampling::uniform ? "uniform" : "popularity"; }

/// Negative sampler over items [0, n_items): uniform, or proportional to `popularity[i]`
/// (e.g. training counts; an item of popularity 0 is never drawn). sample() returns
/// `count` DISTINCT items none of which is in `seen_sorted` (ascending ids).
///
/// Determinism: draws come from a Philox stream, draw j at position j, so the result is a
/// pure function of (stream, seen, count): with the (seed, user) form the negatives of a
/// user never depend on other users, on threads or on call order, and a PyTorch peer can
/// be handed exactly the same candidates.
///
/// Method: rejection (redraw a seen or repeated item) while that is cheap; when the
/// allowed items are few (under 4x count, or after 32 x count + 64 rejected draws), an
/// exact fallback on the allowed list: a partial Fisher-Yates (uniform) or Efraimidis-
/// Spirakis keys u^(1/w) (popularity), both on the same stream.
class negative_sampler {
public:
    negative_sampler(std::int32_t n_items, sampling kind, std::span<const double> popularity = {})
        : n_(n_items), kind_(kind) {
        XREC_CHECK(n_items > 0, "negative_sampler: n_items must be > 0, got ", n_items);
        if (kind == sampling::popularity) {
            XREC_CHECK(static_cast<std::int64_t>(popularity.size()) == n_items, "negative_sampler: popularity has ",
                       popularity.size(), " entries for ", n_items, " items");
            weight_.assign(popularity.begin(), popularity.end());
            cum_.resize(weight_.size());
            double acc = 0;
            for (std::size_t i = 0; i < weight_.size(); ++i) {
                XREC_CHECK(weight_[i] >= 0 && std::isfinite(weight_[i]), "negative_sampler: popularity of item ", i,
                           " is ", weight_[i]);
                acc += weight_[i];
                cum_[i] = acc;
            }
            XREC_CHECK(acc > 0, "negative_sampler: popularity sums to 0");
        }
    }

    std::int32_t n_items() const { return n_; }
    sampling kind() const { return kind_; }

    /// The stream of (seed, user): the one sample(seen, count, seed, user, out) uses.
    static rng_stream stream_of(std::uint64_t seed, std::int64_t user) {
        return rng_stream{philox{mix_seed(seed, 0x4e6567)}, static_cast<std::uint64_t>(user)};
    }

    /// `count` distinct negatives for `user`, a pure function of (seed, user, seen, count).
    void sample(std::span<const std::int32_t> seen_sorted, std::int32_t count, std::uint64_t seed, std::int64_t user,
                std::span<std::int32_t> out) const {
        sample(seen_sorted, count, stream_of(seed, user), out);
    }

    /// `count` distinct negatives from stream `rs` (draws at positions 0, 1, ...).
    void sample(std::span<const std::int32_t> seen_sorted, std::int32_t count, const rng_stream& rs,
                std::span<std::int32_t> out) const {
        XREC_CHECK(count >= 0 && static_cast<std::int64_t>(out.size()) >= count, "negative_sampler: ", count,
                   " negatives into an output of ", out.size());
        XREC_CHECK(std::is_sorted(seen_sorted.begin(), seen_sorted.end()),
                   "negative_sampler: the seen items must be sorted ascending");
        std::int64_t n_seen = 0;  // distinct seen ids in range
        for (std::size_t k = 0; k < seen_sorted.size(); ++k)
            if (seen_sorted[k] >= 0 && seen_sorted[k] < n_ && (k == 0 || seen_sorted[k] != seen_sorted[k - 1])) ++n_seen;
        const std::int64_t allowed = n_ - n_seen;
        XREC_CHECK(count <= allowed, "negative_sampler: ", count, " negatives asked but only ", allowed,
                   " of ", n_, " items are unseen");
        if (count == 0) return;
        auto is_seen = [&](std::int32_t i) { return std::binary_search(seen_sorted.begin(), seen_sorted.end(), i); };
        auto taken = [&](std::int32_t i, std::int32_t m) {
            for (std::int32_t j = 0; j < m; ++j)
                if (out[static_cast<std::size_t>(j)] == i) return true;
            return false;
        };
        std::uint64_t pos = 0;
        if (allowed >= 4 * static_cast<std::int64_t>(count)) {
            const std::uint64_t budget = 32 * static_cast<std::uint64_t>(count) + 64;
            std::int32_t m = 0;
            while (m < count && pos < budget) {
                const std::int32_t i = draw(rs, pos++);
                if (is_seen(i) || taken(i, m)) continue;
                out[static_cast<std::size_t>(m++)] = i;
            }
            if (m == count) return;
        }
        exact(seen_sorted, count, rs, pos, out);
    }

private:
    std::int32_t draw(const rng_stream& rs, std::uint64_t pos) const {
        if (kind_ == sampling::uniform) return static_cast<std::int32_t>(rs.below(pos, static_cast<std::uint64_t>(n_)));
        const double u = rs.uniform(pos) * cum_.back();
        // The first cumulative sum above u: an item of weight 0 repeats its predecessor's
        // sum and so is never the first above anything.
        auto i = static_cast<std::size_t>(std::upper_bound(cum_.begin(), cum_.end(), u) - cum_.begin());
        if (i == cum_.size())  // u rounded up to the total: the last item with a weight
            for (i = cum_.size() - 1; weight_[i] == 0;) --i;
        return static_cast<std::int32_t>(i);
    }

    // Exact fallback on the list of allowed items; continues the stream at `pos`.
    void exact(std::span<const std::int32_t> seen_sorted, std::int32_t count, const rng_stream& rs, std::uint64_t pos,
               std::span<std::int32_t> out) const {
        std::vector<std::int32_t> cand;
        cand.reserve(static_cast<std::size_t>(n_));
        std::size_t k = 0;
        for (std::int32_t i = 0; i < n_; ++i) {
            while (k < seen_sorted.size() && seen_sorted[k] < i) ++k;
            if (k < seen_sorted.size() && seen_sorted[k] == i) continue;
            cand.push_back(i);
        }
        if (kind_ == sampling::uniform) {
            for (std::int32_t j = 0; j < count; ++j) {
                const auto r = static_cast<std::size_t>(j) +
                               static_cast<std::size_t>(rs.below(pos++, static_cast<std::uint64_t>(cand.size()) - j));
                std::swap(cand[static_cast<std::size_t>(j)], cand[r]);
                out[static_cast<std::size_t>(j)] = cand[static_cast<std::size_t>(j)];
            }
            return;
        }
        // Efraimidis-Spirakis: the count largest keys log(u)/w are a weighted sample without
        // replacement. Zero-weight items never qualify.
        std::vector<std::pair<double, std::int32_t>> keys;
        for (auto i : cand) {
            const double w = weight_[static_cast<std::size_t>(i)];
            if (w <= 0) continue;
            const double u = (rs.uniform(pos + static_cast<std::uint64_t>(i)) + 0x1.0p-54);
            keys.push_back({std::log(u) / w, i});
        }
        XREC_CHECK(static_cast<std::int64_t>(keys.size()) >= count, "negative_sampler: ", count,
                   " popularity negatives asked but only ", keys.size(), " unseen items have a popularity > 0");
        std::partial_sort(keys.begin(), keys.begin() + count, keys.end(),
                          [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
        for (std::int32_t j = 0; j < count; ++j) out[static_cast<std::size_t>(j)] = keys[static_cast<std::size_t>(j)].second;
    }

    std::int32_t n_;
    sampling kind_;
    std::vector<double> weight_, cum_;
};

}  // namespace xrec::data
