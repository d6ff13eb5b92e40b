#pragma once
// The feature schema: how raw text columns become encoded rows (global ids, normalised dense
// values, jagged multi-hot/sequence ids, labels) of the feature_layout it builds. Fitted once on
// training data, saved as JSON beside the weights and loaded at serving time, so a request is
// encoded by the same code and the same state as training was.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iterator>
#include <list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/json.hpp"
#include "xrec/data/dataset.hpp"
#include "xrec/data/hash.hpp"
#include "xrec/data/readers.hpp"

namespace xrec::data {

/// How a table maps a categorical value (its text) to a local id; local id 0 is always
/// "missing or out of vocabulary", so rows of unseen values share one learned row.
///  - vocab: built by schema::fit from training data: values seen at least `min_count` times,
///    ordered by count (descending) then by value (bytewise), get ids 1..n; with max_size > 0
///    only the first max_size of that order are kept. rows = n + 1.
///  - hash:  id = hash_bucket(value, buckets, seed) (data/hash.hpp): 0 for the empty value,
///    1 + stable_hash64 mod (buckets-1) otherwise; no fitting, no state. rows = buckets.
///  - grow:  a growing vocabulary for streams (growing_vocabulary below). rows = capacity + 1.
enum class table_kind { vocab, hash, grow };

inline const char* table_kind_name(table_kind k) {
    switch (k) {
        case table_kind::vocab: return "vocab";
        case table_kind::hash: return "hash";
        case table_kind::grow: return "grow";
    }
    return "?";
}

/// The settings of a table (see table_kind). Use the named constructors.
struct table_options {
    table_kind kind = table_kind::vocab;
    std::int64_t min_count = 1;         // vocab
    std::int64_t max_size = 0;          // vocab; 0 = unlimited
    std::int64_t buckets = 0;           // hash
    std::uint64_t seed = 0;             // hash
    std::int64_t capacity = 0;          // grow: admitted values at most
    std::int64_t admit_count = 1;       // grow: sightings before a value gets a row
    std::int64_t pending_capacity = 0;  // grow: candidates remembered; 0 = 4 x capacity

    static table_options vocab(std::int64_t min_count = 1, std::int64_t max_size = 0) {
        table_options o;
        o.min_count = min_count;
        o.max_size = max_size;
        return o;
    }
    static table_options hashed(std::int64_t buckets, std::uint64_t seed = 0) {
        table_options o;
        o.kind = table_kind::hash;
        o.buckets = buckets;
        o.seed = seed;
        return o;
    }
    static table_options growing(std::int64_t capacity, std::int64_t admit_count = 1, std::int64_t pending_capacity = 0) {
        table_options o;
        o.kind = table_kind::grow;
        o.capacity = capacity;
        o.admit_count = admit_count;
        o.pending_capacity = pending_capacity;
        return o;
    }
};

namespace detail {
using count_map = std::unordered_map<std::string, std::int64_t, string_hash, std::equal_to<>>;

/// The parsed (not yet encoded) values of one record: views into the record's columns.
struct parse_scratch {
    std::vector<double> lv, dv;
    std::vector<std::string_view> sv;
    std::vector<std::vector<std::string_view>> items;
    std::vector<std::vector<double>> weights;
    std::int64_t gv = -1, tv = 0;
};
}  // namespace detail

/// A growing vocabulary for streams (new items appear, old ones fade), deterministic:
///  - a value gets a row (is admitted) when it has been seen `admit_count` times; before that
///    it maps to 0. Candidates are remembered in a pending list of at most pending_capacity
///    values; when it is full, the least recently seen candidate is forgotten.
///  - at most `capacity` values hold rows (ids 1..capacity). Admitting one more evicts the
///    LEAST RECENTLY USED admitted value (the one whose last sighting is oldest) and recycles
///    its row: the new value gets the evicted value's id, and the id is recorded in
///    recycled() so the trainer can reset that embedding row.
///  - observe(v) (training) updates all this; lookup(v) (serving) only reads.
/// The state is a pure function of the sequence of observed values; it is saved in the schema
/// JSON (admitted values in LRU order with their ids, pending candidates with their counts).
class growing_vocabulary {
public:
    struct entry {
        std::string value;
        std::int64_t id = 0;  // 0 for a pending candidate
        std::int64_t count = 0;
    };

    growing_vocabulary() = default;
    growing_vocabulary(growing_vocabulary&&) noexcept = default;
    growing_vocabulary& operator=(growing_vocabulary&&) noexcept = default;
    // A copy rebuilds the indexes, whose keys and iterators point into the lists' own nodes.
    growing_vocabulary(const growing_vocabulary& o)
        : capacity_(o.capacity_), admit_(o.admit_), pending_cap_(o.pending_cap_), recycled_(o.recycled_) {
        restore({o.live_.begin(), o.live_.end()}, {o.pending_.begin(), o.pending_.end()}, o.next_id_, o.evictions_);
        recycled_ = o.recycled_;
    }
    growing_vocabulary& operator=(const growing_vocabulary& o) {
        if (this != &o) *this = growing_vocabulary(o);
        return *this;
    }
    /// Largest capacity (and pending capacity) accepted: far beyond any table that fits in
    /// memory, and small enough that 4 x capacity and the table's row count cannot overflow.
    static constexpr std::int64_t max_capacity = std::int64_t{1} << 40;

    growing_vocabulary(std::int64_t capacity, std::int64_t admit_count, std::int64_t pending_capacity)
        : capacity_(capacity), admit_(admit_count) {
        XREC_CHECK(capacity > 0 && admit_count > 0, "growing_vocabulary: capacity and admit_count must be positive, got ",
                   capacity, " and ", admit_count);
        XREC_CHECK(capacity <= max_capacity && pending_capacity <= max_capacity, "growing_vocabulary: capacity ", capacity,
                   " or pending capacity ", pending_capacity, " exceeds the limit of ", max_capacity);
        pending_cap_ = pending_capacity > 0 ? pending_capacity : 4 * capacity;
    }

    std::int64_t capacity() const noexcept { return capacity_; }
    std::int64_t admit_count() const noexcept { return admit_; }
    std::int64_t pending_capacity() const noexcept { return pending_cap_; }
    std::int64_t size() const noexcept { return static_cast<std::int64_t>(live_.size()); }
    std::int64_t evictions() const noexcept { return evictions_; }

    /// Local id of `v` (0: missing, pending or never seen) without changing anything.
    std::int64_t lookup(std::string_view v) const {
        auto it = live_index_.find(v);
        return it == live_index_.end() ? 0 : it->second->id;
    }

    /// Records one sighting of `v` and returns its local id (0 until admitted; "" is missing).
    std::int64_t observe(std::string_view v) {
        if (v.empty()) return 0;
        if (auto it = live_index_.find(v); it != live_index_.end()) {
            ++it->second->count;
            live_.splice(live_.begin(), live_, it->second);  // most recently used first
            return it->second->id;
        }
        auto pit = pending_index_.find(v);
        if (pit == pending_index_.end()) {
            if (static_cast<std::int64_t>(pending_.size()) >= pending_cap_ && admit_ > 1) {
                pending_index_.erase(pending_.back().value);
                pending_.pop_back();
            }
            pending_.push_front(entry{std::string(v), 0, 0});
            pit = pending_index_.emplace(pending_.front().value, pending_.begin()).first;
        } else {
            pending_.splice(pending_.begin(), pending_, pit->second);
        }
        auto e = pit->second;
        if (++e->count < admit_) return 0;
        // Admit: a fresh row while there is one, else the least recently used row.
        std::int64_t id = 0;
        if (next_id_ <= capacity_) {
            id = next_id_++;
        } else {
            id = live_.back().id;
            live_index_.erase(live_.back().value);
            live_.pop_back();
            recycled_.push_back(id);
            ++evictions_;
        }
        e->id = id;
        pending_index_.erase(pit);
        live_.splice(live_.begin(), pending_, e);
        live_index_.emplace(live_.front().value, live_.begin());
        return id;
    }

    /// Local ids whose row was given to a new value since the last clear_recycled().
    const std::vector<std::int64_t>& recycled() const noexcept { return recycled_; }
    void clear_recycled() { recycled_.clear(); }

    /// Admitted values, most recently used first; pending candidates likewise.
    const std::list<entry>& admitted() const noexcept { return live_; }
    const std::list<entry>& pending() const noexcept { return pending_; }

    /// Rebuilds the exact state (for schema::from_json): entries in the order admitted() and
    /// pending() gave them. The state must be one that observe() can reach, since observe()
    /// relies on it (it recycles the last admitted row once next_id passes the capacity):
    /// next_id in 1..capacity+1; the admitted ids exactly 1..next_id-1, once each, on distinct
    /// non-empty values; pending candidates distinct, not admitted, non-empty, id 0, seen
    /// 1..admit_count-1 times, at most pending_capacity of them; counts and evictions >= 0.
    /// Anything else throws xrec::error naming the problem, and leaves *this empty.
    void restore(std::vector<entry> admitted, std::vector<entry> pending, std::int64_t next_id, std::int64_t evictions) {
        live_.clear(), pending_.clear(), live_index_.clear(), pending_index_.clear(), recycled_.clear();
        next_id_ = 1, evictions_ = 0;
        try {
            restore_(std::move(admitted), std::move(pending), next_id, evictions);
        } catch (...) {
            live_.clear(), pending_.clear(), live_index_.clear(), pending_index_.clear();
            next_id_ = 1, evictions_ = 0;
            throw;
        }
    }
    std::int64_t next_id() const noexcept { return next_id_; }

private:
    void restore_(std::vector<entry> admitted, std::vector<entry> pending, std::int64_t next_id, std::int64_t evictions) {
        const char* who = "growing_vocabulary::restore: ";
        XREC_CHECK(next_id >= 1 && next_id <= capacity_ + 1, who, "next_id ", next_id, " outside 1..", capacity_ + 1);
        XREC_CHECK(evictions >= 0, who, "negative evictions ", evictions);
        XREC_CHECK(static_cast<std::int64_t>(admitted.size()) == next_id - 1, who, admitted.size(),
                   " admitted values but ids 1..", next_id - 1, " handed out (each id is held by exactly one value)");
        std::vector<bool> held(static_cast<std::size_t>(next_id), false);
        for (auto& e : admitted) {
            XREC_CHECK(e.id >= 1 && e.id < next_id, who, "id ", e.id, " of '", e.value, "' outside 1..", next_id - 1);
            XREC_CHECK(!held[static_cast<std::size_t>(e.id)], who, "id ", e.id, " held by two values");
            held[static_cast<std::size_t>(e.id)] = true;
            XREC_CHECK(!e.value.empty() && e.count >= 0, who, "admitted value '", e.value, "' is empty or has count ", e.count);
            live_.push_back(std::move(e));
            XREC_CHECK(live_index_.emplace(live_.back().value, std::prev(live_.end())).second, who, "value '",
                       live_.back().value, "' admitted twice");
        }
        XREC_CHECK(static_cast<std::int64_t>(pending.size()) <= pending_cap_, who, pending.size(),
                   " pending candidates exceed the pending capacity ", pending_cap_);
        for (auto& e : pending) {
            XREC_CHECK(!e.value.empty() && e.id == 0 && e.count >= 1 && e.count < admit_, who, "pending candidate '", e.value,
                       "' has id ", e.id, " and count ", e.count, " (expected id 0 and a count in 1..", admit_ - 1, ")");
            XREC_CHECK(!live_index_.count(e.value), who, "value '", e.value, "' is both admitted and pending");
            pending_.push_back(std::move(e));
            XREC_CHECK(pending_index_.emplace(pending_.back().value, std::prev(pending_.end())).second, who, "value '",
                       pending_.back().value, "' pending twice");
        }
        next_id_ = next_id;
        evictions_ = evictions;
    }

    using index = std::unordered_map<std::string_view, std::list<entry>::iterator>;
    std::int64_t capacity_ = 0, admit_ = 1, pending_cap_ = 0;
    std::int64_t next_id_ = 1, evictions_ = 0;
    std::list<entry> live_, pending_;  // list nodes never move, so the string_view keys stay valid
    index live_index_, pending_index_;
    std::vector<std::int64_t> recycled_;
};

/// What a multi-hot / sequence field reads.
///  - split: one column holding items separated by `sep` ("Comedy|Drama"); with `weighted`
///    each item is "value:weight" (the last ':' separates). Empty items are passed over.
///  - tokens: libsvm: every column from the field's column on is "idx:val" (value idx,
///    weight val).
///  - ffm: libffm: every column from the field's column on is "field:idx:val"; only the tokens
///    with field == ffm_field belong to this field (value idx, weight val).
enum class sequence_source { split, tokens, ffm };

inline const char* sequence_source_name(sequence_source s) {
    switch (s) {
        case sequence_source::split: return "split";
        case sequence_source::tokens: return "tokens";
        case sequence_source::ffm: return "ffm";
    }
    return "?";
}

/// Options of a dense field: the raw value (an empty column is missing and takes `fill`) goes
/// through log x -> sign(x) log(1 + |x|) when `log`, then x -> (x - mean) / sd with mean and
/// sd fitted on the training data (after the log; sd 0 is taken as 1) when `standard`.
struct dense_options {
    std::string column;  // default: the field name
    double fill = 0;
    bool log = false;
    bool standard = false;
};

/// Options of a sparse (one id per row) field. `share` names an earlier field whose table
/// this one uses (its `table` options are then ignored); otherwise the field gets a table of
/// its own, named after it.
struct sparse_options {
    std::string column;  // default: the field name
    table_options table;
    std::string share;
    bool wide_only = false;
};

/// Options of a multi-hot / sequence field (jagged ids; ctr_dataset keeps the newest max_len).
struct sequence_options {
    std::string column;  // default: the field name
    table_options table;
    std::string share;
    sequence_source source = sequence_source::split;
    char sep = '|';
    std::int64_t max_len = 0;  // 0 = unlimited
    xrec::pooling pooling = xrec::pooling::mean;
    bool weighted = false;
    std::int64_t ffm_field = -1;
};

/// Whether encoding may change the schema: `train` lets growing vocabularies observe values
/// (admission, eviction) and requires labels; `serve` only reads, and an empty label column
/// encodes as 0.
enum class encode_mode { train, serve };

/// One encoded row, before it is appended to a ctr_dataset: ids are global (table offset
/// added). The buffers (and the parsing scratch) are reused from row to row, so a serving
/// thread that keeps one encoded_row encodes requests without allocating once warm.
template <class T>
struct encoded_row {
    std::vector<std::int64_t> sparse;
    std::vector<T> dense, labels;
    std::vector<std::vector<std::int64_t>> seq;
    std::vector<std::vector<T>> seq_weights;
    std::int64_t group = -1;
    std::int64_t time = 0;
    detail::parse_scratch scratch;

    void append_to(ctr_dataset<T>& d) const {
        std::vector<std::span<const std::int64_t>> s(seq.begin(), seq.end());
        std::vector<std::span<const T>> w(seq_weights.begin(), seq_weights.end());
        d.append(sparse, dense, s, labels, group, w);
    }
};

/// Encoded rows plus their timestamps (empty unless the schema has a time column), for
/// split_by_time / leave_last_n_out.
template <class T>
struct encoded {
    ctr_dataset<T> rows;
    std::vector<std::int64_t> times;
};

/// A feature schema in the spirit of DeepCTR's SparseFeat / DenseFeat / VarLenSparseFeat.
///
/// Declare fields in code (label, dense, sparse, sequence, group, time; each names a column of
/// the file), or with a column-spec string (from_spec), or take criteo_schema(). Then:
///  - fit(reader): streams the reader once: vocabulary counts of every vocab table (fields that
///    share a table count into it together) and mean/sd of standardised dense fields, over the
///    lines that parse (bad lines are refused through the reader's policy and count nothing).
///    Growing tables are not fitted; they grow while encoding in train mode.
///  - layout(): the feature_layout: one table per field that does not share, in the order the
///    fields were declared; sparse fields, dense fields and sequence fields each in declaration
///    order; one task per label. Row 0 of every table (local id 0) is missing/unseen.
///  - encode(record, row, mode) / encode_all(reader): rows of that layout with global ids.
///  - encode_request(columns) / encode_request_named({{column, text}...}): one raw row -> one
///    row, by the same code path (mode serve; const, so threads may share one schema, each
///    with its own encoded_row).
///  - to_json() / from_json(): the whole fitted state; a loaded schema encodes bit-identically.
///    (Values are stored as JSON strings: keep readers' check_utf8 on, or a non-UTF-8 value
///    makes the text unloadable.)
/// Bad values (a dense column that is not a number, a bad label, ...) are refused with
/// "file:line:column: expected ..., got ..." or skipped and counted, per the reader's policy.
///
///   auto s = data::criteo_schema(2);
///   auto train = data::criteo_reader("train.tsv");
///   s.fit(train);
///   train.rewind();
///   auto enc = s.encode_all<float>(train);           // enc.rows: ctr_dataset<float>
///   save(s.to_json()); ... auto s2 = data::schema::from_json(text);
class schema {
public:
    schema() = default;

    // ---- declaration -------------------------------------------------------------------
    /// A label column (one task each, in order). `task` defaults to the column name; with
    /// `binarize_at`, label = value >= binarize_at ? 1 : 0 (ratings, libsvm -1/+1 labels).
    schema& label(std::string column, std::string task = "", std::optional<double> binarize_at = {}) {
        label_def l;
        l.task = task.empty() ? column : std::move(task);
        l.column = std::move(column);
        l.binarize = binarize_at;
        labels_.push_back(std::move(l));
        return changed_();
    }
    schema& dense(std::string name, dense_options o = {}) {
        dense_def f;
        f.column = o.column.empty() ? name : o.column;
        f.name = std::move(name);
        f.fill = o.fill;
        f.log = o.log;
        f.standard = o.standard;
        dense_.push_back(std::move(f));
        return changed_();
    }
    schema& sparse(std::string name, sparse_options o = {}) {
        sparse_def f;
        f.column = o.column.empty() ? name : o.column;
        f.table = table_for_(name, o.share, o.table);
        f.name = std::move(name);
        f.wide_only = o.wide_only;
        sparse_.push_back(std::move(f));
        return changed_();
    }
    schema& sequence(std::string name, sequence_options o = {}) {
        seq_def f;
        f.column = o.column.empty() ? name : o.column;
        f.table = table_for_(name, o.share, o.table);
        f.name = std::move(name);
        f.source = o.source;
        f.sep = o.sep;
        f.max_len = o.max_len;
        f.pool = o.pooling;
        f.weighted = o.weighted || o.source != sequence_source::split;
        f.ffm_field = o.ffm_field;
        XREC_CHECK(f.source != sequence_source::ffm || f.ffm_field >= 0, "schema: libffm field '", f.name,
                   "' needs ffm_field >= 0");
        seqs_.push_back(std::move(f));
        return changed_();
    }
    /// The group (user) column, for group AUC and leave-last-N-out: an integer is used as is,
    /// any other text as stable_hash64(text) with the top bit cleared; empty is -1.
    schema& group(std::string column) {
        group_ = std::move(column);
        return changed_();
    }
    /// The timestamp column (an integer, e.g. Unix seconds), kept beside the rows.
    schema& time(std::string column) {
        time_ = std::move(column);
        return changed_();
    }

    // ---- fitting -----------------------------------------------------------------------
    /// Resolves column names against a header (a file's, or the saved one). Called by fit and
    /// encode_all with the reader's header; a name not found may be written "#k" (column k).
    void bind(const std::vector<std::string>& header) {
        columns_ = header;
        auto find = [&](const std::string& c, const std::string& who) -> std::size_t {
            for (std::size_t k = 0; k < header.size(); ++k)
                if (header[k] == c) return k;
            std::int64_t k = -1;
            if (c.size() > 1 && c[0] == '#' && parse_int64(std::string_view(c).substr(1), k) && k >= 0) return static_cast<std::size_t>(k);
            std::string all;
            for (auto& h : header) all += (all.empty() ? "" : ", ") + h;
            XREC_FAIL("schema: field '", who, "' reads column '", c, "', which is not among the columns (", all, ")");
        };
        for (auto& l : labels_) l.col = find(l.column, l.task);
        for (auto& f : dense_) f.col = find(f.column, f.name);
        for (auto& f : sparse_) f.col = find(f.column, f.name);
        for (auto& f : seqs_) f.col = find(f.column, f.name);
        if (!group_.empty()) group_col_ = find(group_, "group");
        if (!time_.empty()) time_col_ = find(time_, "time");
        bound_ = true;
    }

    /// Fits on every record of `reader` (from where it stands to its end), then finishes.
    template <class Reader>
    schema& fit(Reader& reader) {
        bind(reader.header());
        start_fit();
        raw_record rec;
        std::int64_t n = 0;
        while (reader.next(rec)) n += fit_record(rec) ? 1 : 0;
        XREC_CHECK(n > 0, "schema::fit: '", reader.path(), "' has no usable rows");
        return finish_fit();
    }
    /// Fitting record by record: start_fit(), fit_record(r)..., finish_fit().
    void start_fit() {
        XREC_CHECK(bound_, "schema::fit: bind() the columns first");
        for (auto& t : tables_) t.counts.clear();
        for (auto& f : dense_) f.n = 0, f.m = 0, f.m2 = 0;
        fitted_ = false;
    }
    bool fit_record(const raw_record& r) {
        auto& sc = fit_scratch_;
        if (!parse_(r, encode_mode::train, sc)) return false;
        for (std::size_t i = 0; i < sparse_.size(); ++i) count_(sparse_[i].table, sc.sv[i]);
        for (std::size_t k = 0; k < seqs_.size(); ++k)
            for (auto v : sc.items[k]) count_(seqs_[k].table, v);
        for (std::size_t i = 0; i < dense_.size(); ++i) {
            auto& f = dense_[i];
            if (!f.standard) continue;
            const double x = pre_(f, sc.dv[i]);  // Welford, in file order: deterministic
            f.n += 1;
            const double d = x - f.m;
            f.m += d / static_cast<double>(f.n);
            f.m2 += d * (x - f.m);
        }
        return true;
    }
    schema& finish_fit() {
        for (auto& t : tables_) {
            if (t.opt.kind != table_kind::vocab) continue;
            std::vector<std::pair<std::string, std::int64_t>> kept;
            for (auto& [v, c] : t.counts)
                if (c >= t.opt.min_count) kept.emplace_back(v, c);
            std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) {
                return a.second != b.second ? a.second > b.second : a.first < b.first;
            });
            if (t.opt.max_size > 0 && static_cast<std::int64_t>(kept.size()) > t.opt.max_size)
                kept.resize(static_cast<std::size_t>(t.opt.max_size));
            t.values.clear();
            for (auto& kv : kept) t.values.push_back(kv.first);
            t.counts.clear();
            t.reindex();
        }
        for (auto& f : dense_) {
            if (!f.standard) continue;
            f.mean = f.n > 0 ? f.m : 0.0;
            const double var = f.n > 1 ? f.m2 / static_cast<double>(f.n) : 0.0;
            f.sd = var > 0 ? std::sqrt(var) : 1.0;
        }
        fitted_ = true;
        build_layout_();
        return *this;
    }

    bool fitted() const noexcept { return fitted_; }
    /// The layout of the encoded rows (after fit or from_json).
    const feature_layout& layout() const {
        XREC_CHECK(fitted_, "schema::layout: the schema is not fitted");
        return layout_;
    }
    /// Column names the schema was bound to (the order encode_request expects).
    const std::vector<std::string>& columns() const noexcept { return columns_; }
    bool has_time() const noexcept { return !time_.empty(); }
    bool has_group() const noexcept { return !group_.empty(); }

    /// The vocabulary of table t (vocab tables: value of local id i+1 at [i]).
    const std::vector<std::string>& vocabulary(std::int64_t t) const { return tables_.at(static_cast<std::size_t>(t)).values; }
    /// The growing vocabulary of table t (grow tables).
    const growing_vocabulary& growing(std::int64_t t) const { return tables_.at(static_cast<std::size_t>(t)).grow; }
    /// Global ids whose rows were recycled by growing tables since the last call (the trainer
    /// resets those embedding rows); clears the record.
    std::vector<std::int64_t> take_recycled() {
        std::vector<std::int64_t> out;
        for (std::size_t t = 0; t < tables_.size(); ++t) {
            for (auto id : tables_[t].grow.recycled()) out.push_back(layout_.tables[t].offset + id);
            tables_[t].grow.clear_recycled();
        }
        return out;
    }

    // ---- encoding ----------------------------------------------------------------------
    /// Encodes one record into `row`; false when the record was refused (and skipped). Mode
    /// train may change growing tables; mode serve goes through the const path below.
    template <class T>
    bool encode(const raw_record& r, encoded_row<T>& row, encode_mode mode = encode_mode::train) {
        if (mode == encode_mode::serve) return encode_serve(r, row);
        XREC_CHECK(fitted_, "schema::encode: the schema is not fitted");
        if (!parse_(r, encode_mode::train, row.scratch)) return false;
        fill_(row, [this](std::int64_t t, std::string_view v) { return train_id_(t, v); });
        return true;
    }
    /// Encodes one record reading the schema only (thread-safe on a shared const schema).
    template <class T>
    bool encode_serve(const raw_record& r, encoded_row<T>& row) const {
        XREC_CHECK(fitted_, "schema::encode: the schema is not fitted");
        if (!parse_(r, encode_mode::serve, row.scratch)) return false;
        fill_(row, [this](std::int64_t t, std::string_view v) { return lookup_id_(t, v); });
        return true;
    }

    /// Encodes every record of `reader` (bound to its header) into a new dataset.
    template <class T, class Reader>
    encoded<T> encode_all(Reader& reader, encode_mode mode = encode_mode::train) {
        XREC_CHECK(fitted_, "schema::encode_all: the schema is not fitted");
        check_header_(reader.header(), reader.path());
        encoded<T> out{ctr_dataset<T>(layout_), {}};
        raw_record rec;
        encoded_row<T> row;
        while (reader.next(rec))
            if (encode(rec, row, mode)) {
                row.append_to(out.rows);
                if (has_time()) out.times.push_back(row.time);
            }
        return out;
    }

    /// Serving: one raw row, given as the bound columns in order (columns()), encoded as
    /// training encoded it (mode serve: labels may be empty, growing tables are read only).
    /// A bad value throws "request:1:<field number>: expected ..., got ...".
    template <class T>
    void encode_request(std::span<const std::string_view> columns, encoded_row<T>& row) const {
        const raw_record r{"request", 1, columns, {}, nullptr};
        encode_serve(r, row);
    }
    /// Serving by column name: columns not given are empty (missing).
    template <class T>
    void encode_request_named(const std::vector<std::pair<std::string, std::string>>& named, encoded_row<T>& row) const {
        std::vector<std::string_view> cols(columns_.size());
        for (auto& [k, v] : named) {
            auto it = std::find(columns_.begin(), columns_.end(), k);
            XREC_CHECK(it != columns_.end(), "schema::encode_request_named: unknown column '", k, "'");
            cols[static_cast<std::size_t>(it - columns_.begin())] = v;
        }
        encode_request<T>(std::span<const std::string_view>(cols), row);
    }

    // ---- persistence -------------------------------------------------------------------
    /// The whole schema (declaration and fitted state) as JSON. Doubles are written in the
    /// shortest form that reads back to the same bits.
    std::string to_json() const {
        XREC_CHECK(fitted_, "schema::to_json: the schema is not fitted");
        std::string o = "{\"format\":\"xrec.schema\",\"version\":1,\"columns\":";
        str_list_(o, columns_);
        o += ",\"labels\":[";
        for (std::size_t i = 0; i < labels_.size(); ++i) {
            const auto& l = labels_[i];
            o += i ? "," : "";
            o += "{\"task\":", json::append_quoted(o, l.task), o += ",\"column\":", json::append_quoted(o, l.column);
            if (l.binarize) o += ",\"binarize\":", num_(o, *l.binarize);
            o += "}";
        }
        o += "],\"tables\":[";
        for (std::size_t i = 0; i < tables_.size(); ++i) {
            const auto& t = tables_[i];
            o += i ? "," : "";
            o += "{\"name\":", json::append_quoted(o, t.name);
            o += ",\"kind\":\"", o += table_kind_name(t.opt.kind), o += "\"";
            const auto& p = t.opt;
            o += detail::cat(",\"min_count\":", std::to_string(p.min_count), ",\"max_size\":", std::to_string(p.max_size),
                             ",\"buckets\":", std::to_string(p.buckets), ",\"seed\":\"", std::to_string(p.seed),
                             "\",\"capacity\":", std::to_string(p.capacity), ",\"admit_count\":", std::to_string(p.admit_count),
                             ",\"pending_capacity\":", std::to_string(t.grow.pending_capacity()));
            if (p.kind == table_kind::vocab) o += ",\"values\":", str_list_(o, t.values);
            if (p.kind == table_kind::grow) {
                o += detail::cat(",\"next_id\":", std::to_string(t.grow.next_id()), ",\"evictions\":",
                                 std::to_string(t.grow.evictions()), ",\"admitted\":");
                entries_(o, t.grow.admitted());
                o += ",\"pending\":";
                entries_(o, t.grow.pending());
            }
            o += "}";
        }
        o += "],\"dense\":[";
        for (std::size_t i = 0; i < dense_.size(); ++i) {
            const auto& f = dense_[i];
            o += i ? "," : "";
            o += "{\"name\":", json::append_quoted(o, f.name), o += ",\"column\":", json::append_quoted(o, f.column);
            o += ",\"fill\":", num_(o, f.fill);
            o += detail::cat(",\"log\":", f.log ? "true" : "false", ",\"standard\":", f.standard ? "true" : "false");
            o += ",\"mean\":", num_(o, f.mean), o += ",\"sd\":", num_(o, f.sd), o += "}";
        }
        o += "],\"sparse\":[";
        for (std::size_t i = 0; i < sparse_.size(); ++i) {
            const auto& f = sparse_[i];
            o += i ? "," : "";
            o += "{\"name\":", json::append_quoted(o, f.name), o += ",\"column\":", json::append_quoted(o, f.column);
            o += detail::cat(",\"table\":", std::to_string(f.table), ",\"wide_only\":", f.wide_only ? "true" : "false", "}");
        }
        o += "],\"sequences\":[";
        for (std::size_t i = 0; i < seqs_.size(); ++i) {
            const auto& f = seqs_[i];
            o += i ? "," : "";
            o += "{\"name\":", json::append_quoted(o, f.name), o += ",\"column\":", json::append_quoted(o, f.column);
            o += detail::cat(",\"table\":", std::to_string(f.table), ",\"source\":\"", sequence_source_name(f.source), "\"");
            o += ",\"sep\":", json::append_quoted(o, std::string_view(&f.sep, 1));
            o += detail::cat(",\"max_len\":", std::to_string(f.max_len), ",\"pooling\":\"", pooling_name(f.pool),
                             "\",\"weighted\":", f.weighted ? "true" : "false", ",\"ffm_field\":", std::to_string(f.ffm_field), "}");
        }
        o += "],\"group\":", json::append_quoted(o, group_);
        o += ",\"time\":", json::append_quoted(o, time_);
        o += "}";
        return o;
    }

    /// Rebuilds a fitted schema from to_json()'s text; refuses anything malformed with
    /// "schema::from_json: ...". Besides the structure, it refuses a state that fitting
    /// could not have produced and that encoding would trust: a hashed table of fewer than 2
    /// or more than 2^62 buckets, a growing table outside growing_vocabulary's limits or
    /// with an inconsistent state (see growing_vocabulary::restore), a vocabulary with an
    /// empty or repeated value, tables whose rows together overflow int64, a dense field
    /// whose fill or mean is not finite or whose sd is not finite and > 0, a binarize
    /// threshold that is not finite, a negative max_len, a libffm field without a field
    /// number, and an unweighted tokens/ffm field.
    static schema from_json(std::string_view text) {
        const json::value v = json::parse(text);
        schema s;
        XREC_CHECK(v.is_object() && str_(get_(v, "format")) == "xrec.schema", "schema::from_json: not an xrec schema");
        XREC_CHECK(int_(get_(v, "version")) == 1, "schema::from_json: unknown version");
        std::vector<std::string> cols;
        for (auto& c : arr_(get_(v, "columns"))) cols.push_back(str_(c));
        for (auto& l : arr_(get_(v, "labels"))) {
            std::optional<double> b;
            if (auto* p = find_(l, "binarize")) {
                b = dbl_(*p);
                XREC_CHECK(std::isfinite(*b), "schema::from_json: label binarize threshold ", *b, " is not finite");
            }
            s.label(str_(get_(l, "column")), str_(get_(l, "task")), b);
        }
        std::int64_t total_rows = 0;
        for (auto& t : arr_(get_(v, "tables"))) {
            table_def tb;
            tb.name = str_(get_(t, "name"));
            const std::string k = str_(get_(t, "kind"));
            tb.opt.kind = k == "vocab" ? table_kind::vocab : k == "hash" ? table_kind::hash : k == "grow" ? table_kind::grow
                                                                                                   : bad_<table_kind>(detail::cat("table kind ", k));
            tb.opt.min_count = int_(get_(t, "min_count"));
            tb.opt.max_size = int_(get_(t, "max_size"));
            tb.opt.buckets = int_(get_(t, "buckets"));
            std::uint64_t seed = 0;
            XREC_CHECK(json::to_uint64(str_(get_(t, "seed")), seed), "schema::from_json: bad seed");
            tb.opt.seed = seed;
            tb.opt.capacity = int_(get_(t, "capacity"));
            tb.opt.admit_count = int_(get_(t, "admit_count"));
            tb.opt.pending_capacity = int_(get_(t, "pending_capacity"));
            if (tb.opt.kind == table_kind::hash)
                XREC_CHECK(tb.opt.buckets >= 2 && tb.opt.buckets <= (std::int64_t{1} << 62), "schema::from_json: table '",
                           tb.name, "': ", tb.opt.buckets, " buckets (a hashed table has 2..2^62)");
            if (tb.opt.kind == table_kind::vocab) {
                for (auto& x : arr_(get_(t, "values"))) {
                    XREC_CHECK(!str_(x).empty(), "schema::from_json: table '", tb.name, "': an empty vocabulary value");
                    tb.values.push_back(str_(x));
                }
                tb.reindex();
                XREC_CHECK(tb.ids.size() == tb.values.size(), "schema::from_json: table '", tb.name,
                           "': a vocabulary value appears twice");
            }
            if (tb.opt.kind == table_kind::grow) {
                XREC_CHECK(tb.opt.pending_capacity >= 0, "schema::from_json: table '", tb.name, "': negative pending_capacity");
                tb.grow = growing_vocabulary(tb.opt.capacity, tb.opt.admit_count, tb.opt.pending_capacity);
                auto ents = [](const json::value& a) {
                    std::vector<growing_vocabulary::entry> e;
                    for (auto& x : arr_(a)) {
                        XREC_CHECK(x.is_array() && x.items.size() == 3, "schema::from_json: bad growing entry");
                        e.push_back({str_(x.items[0]), int_(x.items[1]), int_(x.items[2])});
                    }
                    return e;
                };
                tb.grow.restore(ents(get_(t, "admitted")), ents(get_(t, "pending")), int_(get_(t, "next_id")),
                                int_(get_(t, "evictions")));
            }
            XREC_CHECK(tb.rows() <= INT64_MAX - total_rows, "schema::from_json: the tables' rows overflow int64 at table '",
                       tb.name, "'");
            total_rows += tb.rows();
            s.tables_.push_back(std::move(tb));
        }
        for (auto& f : arr_(get_(v, "dense"))) {
            dense_def d;
            d.name = str_(get_(f, "name"));
            d.column = str_(get_(f, "column"));
            d.fill = dbl_(get_(f, "fill"));
            d.log = bool_(get_(f, "log"));
            d.standard = bool_(get_(f, "standard"));
            d.mean = dbl_(get_(f, "mean"));
            d.sd = dbl_(get_(f, "sd"));
            XREC_CHECK(std::isfinite(d.fill) && std::isfinite(d.mean) && std::isfinite(d.sd) && d.sd > 0,
                       "schema::from_json: dense field '", d.name, "': fill ", d.fill, ", mean ", d.mean, ", sd ", d.sd,
                       " (finite, sd > 0, as fitting produces)");
            s.dense_.push_back(std::move(d));
        }
        const auto ntab = static_cast<std::int64_t>(s.tables_.size());
        for (auto& f : arr_(get_(v, "sparse"))) {
            sparse_def d;
            d.name = str_(get_(f, "name"));
            d.column = str_(get_(f, "column"));
            d.table = int_(get_(f, "table"));
            XREC_CHECK(d.table >= 0 && d.table < ntab, "schema::from_json: field '", d.name, "' names table ", d.table);
            d.wide_only = bool_(get_(f, "wide_only"));
            s.sparse_.push_back(std::move(d));
        }
        for (auto& f : arr_(get_(v, "sequences"))) {
            seq_def d;
            d.name = str_(get_(f, "name"));
            d.column = str_(get_(f, "column"));
            d.table = int_(get_(f, "table"));
            XREC_CHECK(d.table >= 0 && d.table < ntab, "schema::from_json: field '", d.name, "' names table ", d.table);
            const std::string src = str_(get_(f, "source"));
            d.source = src == "split" ? sequence_source::split : src == "tokens" ? sequence_source::tokens
                       : src == "ffm"  ? sequence_source::ffm : bad_<sequence_source>(detail::cat("source ", src));
            const std::string sep = str_(get_(f, "sep"));
            XREC_CHECK(sep.size() == 1, "schema::from_json: separator must be one byte");
            d.sep = sep[0];
            d.max_len = int_(get_(f, "max_len"));
            const std::string p = str_(get_(f, "pooling"));
            d.pool = p == "sum" ? pooling::sum : p == "mean" ? pooling::mean : p == "max" ? pooling::max : bad_<pooling>(detail::cat("pooling ", p));
            d.weighted = bool_(get_(f, "weighted"));
            d.ffm_field = int_(get_(f, "ffm_field"));
            XREC_CHECK(d.max_len >= 0, "schema::from_json: field '", d.name, "': negative max_len ", d.max_len);
            XREC_CHECK(d.source != sequence_source::ffm || d.ffm_field >= 0, "schema::from_json: libffm field '", d.name,
                       "' needs ffm_field >= 0");
            XREC_CHECK(d.source == sequence_source::split || d.weighted, "schema::from_json: field '", d.name,
                       "': a ", src, " field is always weighted");
            s.seqs_.push_back(std::move(d));
        }
        s.group_ = str_(get_(v, "group"));
        s.time_ = str_(get_(v, "time"));
        s.bind(cols);
        s.fitted_ = true;
        s.build_layout_();
        return s;
    }

    // ---- column spec -------------------------------------------------------------------
    /// A schema from a compact column spec (for CSV/TSV files with a header). Grammar:
    ///   spec    := entry { ';' entry }                 (blank entries and spaces are ignored)
    ///   entry   := columns '=' kind [ '(' arg { ',' arg } ')' ]
    ///   columns := name | name '..' name               ("I1..I13": same prefix, numbers first..last)
    ///   kind    := label | dense | sparse | seq | group | time
    ///   arg     := key [ '=' value ]
    /// Arguments by kind (the field is named after its column; columns not named are unused):
    ///   label:  task=<name>, binarize=<number>
    ///   dense:  fill=<number>, log, standard
    ///   sparse: min_count=<n>, max_size=<n>, hash=<buckets>, seed=<n>, grow=<capacity>,
    ///           admit=<n>, share=<field>, wide
    ///   seq:    the sparse arguments, and sep=<char> (or pipe, comma, space, tab, semicolon),
    ///           max_len=<n>, pool=sum|mean|max, weighted
    /// Example (DeepCTR's MovieLens sample):
    ///   "rating=label(binarize=4); user_id=sparse; user_id=group; movie_id=sparse;
    ///    genres=seq(sep=pipe,max_len=5,pool=mean); timestamp=time"
    static schema from_spec(std::string_view spec) {
        schema s;
        auto trim = [](std::string_view x) {
            while (!x.empty() && (x.front() == ' ' || x.front() == '\t' || x.front() == '\n')) x.remove_prefix(1);
            while (!x.empty() && (x.back() == ' ' || x.back() == '\t' || x.back() == '\n')) x.remove_suffix(1);
            return x;
        };
        auto fail = [&](std::string_view entry, const std::string& why) -> void {
            XREC_FAIL("schema::from_spec: in '", entry, "': ", why);
        };
        std::size_t pos = 0;
        while (pos <= spec.size()) {
            std::size_t e = spec.find(';', pos);
            if (e == std::string_view::npos) e = spec.size();
            const std::string_view entry = trim(spec.substr(pos, e - pos));
            pos = e + 1;
            if (entry.empty()) continue;
            const std::size_t eq = entry.find('=');
            if (eq == std::string_view::npos) fail(entry, "expected columns=kind");
            const std::string_view cols = trim(entry.substr(0, eq));
            std::string_view rest = trim(entry.substr(eq + 1));
            std::string_view kind = rest, args;
            if (auto p = rest.find('('); p != std::string_view::npos) {
                if (rest.back() != ')') fail(entry, "expected ')' at the end");
                kind = trim(rest.substr(0, p));
                args = rest.substr(p + 1, rest.size() - p - 2);
            }
            std::vector<std::pair<std::string, std::string>> kv;
            if (!trim(args).empty()) {  // "sep=," cannot be written: use sep=comma
                std::size_t a = 0;
                for (;;) {
                    const std::size_t c = args.find(',', a);
                    const std::string_view arg = trim(args.substr(a, c == std::string_view::npos ? c : c - a));
                    if (!arg.empty()) {
                        const std::size_t q = arg.find('=');
                        kv.emplace_back(std::string(trim(arg.substr(0, q))),
                                        q == std::string_view::npos ? std::string() : std::string(trim(arg.substr(q + 1))));
                    }
                    if (c == std::string_view::npos) break;
                    a = c + 1;
                }
            }
            // column names
            std::vector<std::string> names;
            if (auto d = cols.find(".."); d != std::string_view::npos) {
                const std::string_view a = trim(cols.substr(0, d)), b = trim(cols.substr(d + 2));
                std::size_t pa = a.size(), pb = b.size();
                while (pa > 0 && a[pa - 1] >= '0' && a[pa - 1] <= '9') --pa;
                while (pb > 0 && b[pb - 1] >= '0' && b[pb - 1] <= '9') --pb;
                std::int64_t lo = 0, hi = -1;
                if (a.substr(0, pa) != b.substr(0, pb) || !parse_int64(a.substr(pa), lo) || !parse_int64(b.substr(pb), hi) || hi < lo)
                    fail(entry, "expected a range like I1..I13");
                for (std::int64_t i = lo; i <= hi; ++i) names.push_back(std::string(a.substr(0, pa)) + std::to_string(i));
            } else {
                if (cols.empty()) fail(entry, "expected a column name");
                names.emplace_back(cols);
            }
            auto num = [&](const std::string& k, const std::string& v) {
                double x = 0;
                if (!parse_double(v, x)) fail(entry, detail::cat("expected a number for ", k, ", got '", v, "'"));
                return x;
            };
            auto integer = [&](const std::string& k, const std::string& v) {
                std::int64_t x = 0;
                if (!parse_int64(v, x)) fail(entry, detail::cat("expected an integer for ", k, ", got '", v, "'"));
                return x;
            };
            for (const auto& name : names) {
                if (kind == "label") {
                    std::string task;
                    std::optional<double> bin;
                    for (auto& [k, v] : kv) {
                        if (k == "task") task = v;
                        else if (k == "binarize") bin = num(k, v);
                        else fail(entry, detail::cat("unknown label argument '", k, "'"));
                    }
                    s.label(name, task, bin);
                } else if (kind == "dense") {
                    dense_options o;
                    for (auto& [k, v] : kv) {
                        if (k == "fill") o.fill = num(k, v);
                        else if (k == "log") o.log = true;
                        else if (k == "standard") o.standard = true;
                        else fail(entry, detail::cat("unknown dense argument '", k, "'"));
                    }
                    s.dense(name, o);
                } else if (kind == "sparse" || kind == "seq") {
                    table_options t;
                    sequence_options so;
                    std::string share;
                    bool wide = false;
                    for (auto& [k, v] : kv) {
                        if (k == "min_count") t.min_count = integer(k, v);
                        else if (k == "max_size") t.max_size = integer(k, v);
                        else if (k == "hash") t.kind = table_kind::hash, t.buckets = integer(k, v);
                        else if (k == "seed") t.seed = static_cast<std::uint64_t>(integer(k, v));
                        else if (k == "grow") t.kind = table_kind::grow, t.capacity = integer(k, v);
                        else if (k == "admit") t.admit_count = integer(k, v);
                        else if (k == "share") share = v;
                        else if (k == "wide" && kind == "sparse") wide = true;
                        else if (k == "sep" && kind == "seq") {
                            so.sep = v == "pipe" ? '|' : v == "comma" ? ',' : v == "space" ? ' ' : v == "tab" ? '\t'
                                   : v == "semicolon" ? ';' : v.size() == 1 ? v[0] : (fail(entry, detail::cat("bad separator '", v, "'")), '|');
                        } else if (k == "max_len" && kind == "seq") so.max_len = integer(k, v);
                        else if (k == "pool" && kind == "seq") {
                            so.pooling = v == "sum" ? pooling::sum : v == "mean" ? pooling::mean : v == "max" ? pooling::max
                                       : (fail(entry, detail::cat("bad pooling '", v, "'")), pooling::mean);
                        } else if (k == "weighted" && kind == "seq") so.weighted = true;
                        else fail(entry, detail::cat("unknown ", kind, " argument '", k, "'"));
                    }
                    if (kind == "sparse") {
                        sparse_options o;
                        o.table = t;
                        o.share = share;
                        o.wide_only = wide;
                        s.sparse(name, o);
                    } else {
                        so.table = t;
                        so.share = share;
                        s.sequence(name, so);
                    }
                } else if (kind == "group") {
                    s.group(name);
                } else if (kind == "time") {
                    s.time(name);
                } else {
                    fail(entry, detail::cat("unknown kind '", kind, "' (label, dense, sparse, seq, group, time)"));
                }
            }
        }
        return s;
    }

private:
    struct label_def {
        std::string task, column;
        std::optional<double> binarize;
        std::size_t col = 0;
    };
    struct dense_def {
        std::string name, column;
        double fill = 0;
        bool log = false, standard = false;
        double mean = 0, sd = 1;
        std::int64_t n = 0;
        double m = 0, m2 = 0;  // running statistics while fitting
        std::size_t col = 0;
    };
    struct sparse_def {
        std::string name, column;
        std::int64_t table = 0;
        bool wide_only = false;
        std::size_t col = 0;
    };
    struct seq_def {
        std::string name, column;
        std::int64_t table = 0;
        sequence_source source = sequence_source::split;
        char sep = '|';
        std::int64_t max_len = 0;
        xrec::pooling pool = xrec::pooling::mean;
        bool weighted = false;
        std::int64_t ffm_field = -1;
        std::size_t col = 0;
    };
    struct table_def {
        std::string name;
        table_options opt;
        detail::count_map counts;  // while fitting
        std::vector<std::string> values;
        detail::count_map ids;  // value -> local id
        growing_vocabulary grow;

        void reindex() {
            ids.clear();
            for (std::size_t i = 0; i < values.size(); ++i) ids.emplace(values[i], static_cast<std::int64_t>(i) + 1);
        }
        std::int64_t rows() const {
            switch (opt.kind) {
                case table_kind::vocab: return static_cast<std::int64_t>(values.size()) + 1;
                case table_kind::hash: return opt.buckets;
                case table_kind::grow: return opt.capacity + 1;
            }
            return 0;
        }
    };

    schema& changed_() {
        fitted_ = false;
        bound_ = false;
        return *this;
    }

    std::int64_t table_for_(const std::string& name, const std::string& share, const table_options& o) {
        for (auto& f : sparse_) XREC_CHECK(f.name != name, "schema: field '", name, "' is declared twice");
        for (auto& f : seqs_) XREC_CHECK(f.name != name, "schema: field '", name, "' is declared twice");
        if (!share.empty()) {
            for (auto& f : sparse_)
                if (f.name == share) return f.table;
            for (auto& f : seqs_)
                if (f.name == share) return f.table;
            XREC_FAIL("schema: field '", name, "' shares the table of '", share, "', which is not declared before it");
        }
        switch (o.kind) {
            case table_kind::vocab:
                XREC_CHECK(o.min_count >= 1 && o.max_size >= 0, "schema: field '", name, "': min_count must be >= 1 and max_size >= 0");
                break;
            case table_kind::hash:
                XREC_CHECK(o.buckets >= 2, "schema: hashed field '", name, "' needs at least 2 buckets, got ", o.buckets);
                break;
            case table_kind::grow:
                XREC_CHECK(o.capacity >= 1 && o.admit_count >= 1, "schema: growing field '", name,
                           "' needs capacity >= 1 and admit_count >= 1");
                break;
        }
        table_def t;
        t.name = name;
        t.opt = o;
        if (o.kind == table_kind::grow) t.grow = growing_vocabulary(o.capacity, o.admit_count, o.pending_capacity);
        tables_.push_back(std::move(t));
        return static_cast<std::int64_t>(tables_.size()) - 1;
    }

    void build_layout_() {
        feature_layout L;
        L.tables.clear();
        for (auto& t : tables_) L.tables.push_back({t.name, t.rows(), 0});
        for (auto& f : sparse_) L.sparse.push_back({f.name, f.table, f.wide_only});
        for (auto& f : dense_) L.dense.push_back(f.name);
        for (auto& f : seqs_) L.sequences.push_back({f.name, f.table, f.max_len, f.pool, f.weighted});
        L.tasks.clear();
        for (auto& l : labels_) L.tasks.push_back(l.task);
        XREC_CHECK(!L.tasks.empty(), "schema: declare at least one label column");
        L.finish();
        layout_ = std::move(L);
    }

    void check_header_(const std::vector<std::string>& header, const std::string& path) const {
        XREC_CHECK(header == columns_, "schema: '", path, "' has other columns than the file the schema was fitted on (",
                   header.size(), " vs ", columns_.size(), ")");
    }

    static double pre_(const dense_def& f, double x) {
        if (f.log) x = x < 0 ? -std::log1p(-x) : std::log1p(x);
        return x;
    }

    void count_(std::int64_t t, std::string_view v) {
        auto& tb = tables_[static_cast<std::size_t>(t)];
        if (tb.opt.kind != table_kind::vocab || v.empty()) return;
        auto it = tb.counts.find(v);
        if (it == tb.counts.end()) tb.counts.emplace(std::string(v), 1);
        else ++it->second;
    }

    std::int64_t lookup_id_(std::int64_t t, std::string_view v) const {
        const auto& tb = tables_[static_cast<std::size_t>(t)];
        std::int64_t local = 0;
        switch (tb.opt.kind) {
            case table_kind::vocab:
                if (!v.empty())
                    if (auto it = tb.ids.find(v); it != tb.ids.end()) local = it->second;
                break;
            case table_kind::hash: local = hash_bucket(v, tb.opt.buckets, tb.opt.seed); break;
            case table_kind::grow: local = tb.grow.lookup(v); break;
        }
        return layout_.tables[static_cast<std::size_t>(t)].offset + local;
    }
    std::int64_t train_id_(std::int64_t t, std::string_view v) {
        auto& tb = tables_[static_cast<std::size_t>(t)];
        if (tb.opt.kind != table_kind::grow) return lookup_id_(t, v);
        return layout_.tables[static_cast<std::size_t>(t)].offset + tb.grow.observe(v);
    }

    // Turns the parsed values in row.scratch into the encoded row; `id(table, value)` maps a
    // categorical value to its global id.
    template <class T, class IdFn>
    void fill_(encoded_row<T>& row, IdFn&& id) const {
        const auto& sc = row.scratch;
        row.labels.resize(labels_.size());
        for (std::size_t i = 0; i < labels_.size(); ++i) row.labels[i] = static_cast<T>(sc.lv[i]);
        row.dense.resize(dense_.size());
        for (std::size_t i = 0; i < dense_.size(); ++i) {
            const auto& f = dense_[i];
            double x = pre_(f, sc.dv[i]);
            if (f.standard) x = (x - f.mean) / f.sd;
            row.dense[i] = static_cast<T>(x);
        }
        row.sparse.resize(sparse_.size());
        for (std::size_t i = 0; i < sparse_.size(); ++i) row.sparse[i] = id(sparse_[i].table, sc.sv[i]);
        row.seq.resize(seqs_.size());
        row.seq_weights.resize(seqs_.size());
        for (std::size_t k = 0; k < seqs_.size(); ++k) {
            row.seq[k].clear();
            row.seq_weights[k].clear();
            for (auto v : sc.items[k]) row.seq[k].push_back(id(seqs_[k].table, v));
            if (seqs_[k].weighted)
                for (auto w : sc.weights[k]) row.seq_weights[k].push_back(static_cast<T>(w));
        }
        row.group = sc.gv;
        row.time = sc.tv;
    }

    // Parses the columns every field reads into `sc`; refuses the record through its sink on
    // the first bad value.
    bool parse_(const raw_record& r, encode_mode mode, detail::parse_scratch& sc) const {
        XREC_CHECK(bound_, "schema: bind() the columns first");
        auto need = [&](std::size_t col) {
            if (col < r.size()) return true;
            return r.reject(r.size() ? r.size() - 1 : 0, r.size() ? r[r.size() - 1].size() : 0, bad_line::field_count,
                            detail::cat("column ", std::to_string(col + 1)), detail::cat(std::to_string(r.size()), " columns"));
        };
        auto bad = [&](std::size_t col, std::string_view v, const std::string& what) {
            return r.reject(col, 0, bad_line::number, what, detail::quote(v));
        };
        sc.lv.resize(labels_.size());
        for (std::size_t i = 0; i < labels_.size(); ++i) {
            const auto& l = labels_[i];
            if (!need(l.col)) return false;
            const auto v = r[l.col];
            double x = 0;
            if (v.empty() && mode == encode_mode::serve) {
                x = 0;
            } else if (!parse_double(v, x)) {
                return bad(l.col, v, detail::cat("a numeric label in column '", l.column, "'"));
            } else if (l.binarize) {
                x = x >= *l.binarize ? 1.0 : 0.0;
            }
            sc.lv[i] = x;
        }
        sc.dv.resize(dense_.size());
        for (std::size_t i = 0; i < dense_.size(); ++i) {
            const auto& f = dense_[i];
            if (!need(f.col)) return false;
            const auto v = r[f.col];
            if (v.empty()) {
                sc.dv[i] = f.fill;
            } else if (!parse_double(v, sc.dv[i])) {
                return bad(f.col, v, detail::cat("a number or an empty field in column '", f.column, "'"));
            }
        }
        sc.sv.resize(sparse_.size());
        for (std::size_t i = 0; i < sparse_.size(); ++i) {
            if (!need(sparse_[i].col)) return false;
            sc.sv[i] = r[sparse_[i].col];
        }
        sc.items.resize(seqs_.size());
        sc.weights.resize(seqs_.size());
        for (std::size_t k = 0; k < seqs_.size(); ++k) {
            const auto& f = seqs_[k];
            auto& it = sc.items[k];
            auto& wt = sc.weights[k];
            it.clear(), wt.clear();
            if (f.source == sequence_source::split) {
                if (!need(f.col)) return false;
                const std::string_view s = r[f.col];
                std::size_t a = 0;
                while (a <= s.size()) {
                    std::size_t b = s.find(f.sep, a);
                    if (b == std::string_view::npos) b = s.size();
                    std::string_view item = s.substr(a, b - a);
                    const std::size_t at = a;
                    a = b + 1;
                    if (item.empty()) continue;
                    if (f.weighted) {
                        const std::size_t c = item.rfind(':');
                        double w = 0;
                        if (c == std::string_view::npos || !parse_double(item.substr(c + 1), w))
                            return r.reject(f.col, at, bad_line::token, detail::cat("an item value:weight in column '", f.column, "'"),
                                            detail::quote(item));
                        wt.push_back(w);
                        item = item.substr(0, c);
                    }
                    it.push_back(item);
                }
            } else {
                const int parts = f.source == sequence_source::tokens ? 2 : 3;
                for (std::size_t c = f.col; c < r.size(); ++c) {
                    std::string_view p[3];
                    double w = 0;
                    if (!sparse_text_reader::split_token(r[c], parts, p) || !parse_double(p[parts - 1], w))
                        return r.reject(c, 0, bad_line::token, parts == 2 ? "a token idx:val" : "a token field:idx:val",
                                        detail::quote(r[c]));
                    if (parts == 3) {
                        std::int64_t fld = -1;
                        if (!parse_int64(p[0], fld)) return r.reject(c, 0, bad_line::token, "a field number", detail::quote(r[c]));
                        if (fld != f.ffm_field) continue;
                    }
                    it.push_back(p[parts - 2]);
                    wt.push_back(w);
                }
            }
        }
        sc.gv = -1;
        if (!group_.empty()) {
            if (!need(group_col_)) return false;
            const auto v = r[group_col_];
            std::int64_t g = 0;
            if (v.empty()) sc.gv = -1;
            else if (parse_int64(v, g)) sc.gv = g;
            else sc.gv = static_cast<std::int64_t>(stable_hash64(v) >> 1);
        }
        sc.tv = 0;
        if (!time_.empty()) {
            if (!need(time_col_)) return false;
            const auto v = r[time_col_];
            if (!parse_int64(v, sc.tv))
                return r.reject(time_col_, 0, bad_line::value, detail::cat("an integer timestamp in column '", time_, "'"),
                                detail::quote(v));
        }
        return true;
    }

    static void num_(std::string& o, double x) {
        char b[32];
        const auto r = std::to_chars(b, b + sizeof b, x);
        o.append(b, r.ptr);
    }
    static void str_list_(std::string& o, const std::vector<std::string>& v) {
        o += "[";
        for (std::size_t i = 0; i < v.size(); ++i) {
            if (i) o += ",";
            json::append_quoted(o, v[i]);
        }
        o += "]";
    }
    static void entries_(std::string& o, const std::list<growing_vocabulary::entry>& l) {
        o += "[";
        bool first = true;
        for (auto& e : l) {
            o += first ? "[" : ",[";
            first = false;
            json::append_quoted(o, e.value);
            o += detail::cat(",", std::to_string(e.id), ",", std::to_string(e.count), "]");
        }
        o += "]";
    }
    template <class R>
    [[noreturn]] static R bad_(const std::string& what) {
        XREC_FAIL("schema::from_json: unknown ", what);
    }
    static const json::value* find_(const json::value& o, std::string_view k) {
        if (!o.is_object()) return nullptr;
        for (auto& m : o.members)
            if (m.first == k) return &m.second;
        return nullptr;
    }
    static const json::value& get_(const json::value& o, std::string_view k) {
        const json::value* p = find_(o, k);
        XREC_CHECK(p != nullptr, "schema::from_json: missing member '", k, "'");
        return *p;
    }
    static const std::string& str_(const json::value& v) {
        XREC_CHECK(v.is_string(), "schema::from_json: expected a string, got ", json::kind_name(v.k));
        return v.text;
    }
    static const std::vector<json::value>& arr_(const json::value& v) {
        XREC_CHECK(v.is_array(), "schema::from_json: expected an array, got ", json::kind_name(v.k));
        return v.items;
    }
    static bool bool_(const json::value& v) {
        XREC_CHECK(v.k == json::value::kind::boolean, "schema::from_json: expected a boolean, got ", json::kind_name(v.k));
        return v.flag;
    }
    static double dbl_(const json::value& v) {
        double x = 0;
        XREC_CHECK(v.is_number(), "schema::from_json: expected a number, got ", json::kind_name(v.k));
        const auto r = std::from_chars(v.text.data(), v.text.data() + v.text.size(), x);
        XREC_CHECK(r.ec == std::errc{} && r.ptr == v.text.data() + v.text.size(), "schema::from_json: bad number ", v.text);
        return x;
    }
    static std::int64_t int_(const json::value& v) {
        std::int64_t x = 0;
        XREC_CHECK(v.is_number() && parse_int64(v.text, x), "schema::from_json: expected an integer");
        return x;
    }

    std::vector<label_def> labels_;
    std::vector<dense_def> dense_;
    std::vector<sparse_def> sparse_;
    std::vector<seq_def> seqs_;
    std::vector<table_def> tables_;
    std::string group_, time_;
    std::size_t group_col_ = 0, time_col_ = 0;
    std::vector<std::string> columns_;
    bool bound_ = false, fitted_ = false;
    feature_layout layout_;
    detail::parse_scratch fit_scratch_;
};

/// The Criteo schema (DeepCTR's example): task "click" from column "label"; I1..I13 dense,
/// missing -> 0, then sign(x) log(1 + |x|); C1..C26 sparse, one vocabulary each, values seen
/// fewer than `min_count` times in training (and unseen ones) -> id 0. Read with criteo_reader.
inline schema criteo_schema(std::int64_t min_count = 1) {
    schema s;
    s.label("label", "click");
    for (int i = 1; i <= 13; ++i) {
        dense_options o;
        o.log = true;
        s.dense(detail::cat("I", std::to_string(i)), o);
    }
    for (int i = 1; i <= 26; ++i) {
        sparse_options o;
        o.table = table_options::vocab(min_count);
        s.sparse(detail::cat("C", std::to_string(i)), o);
    }
    s.bind(criteo_columns());
    return s;
}

/// A schema for libsvm files: the label binarised at `binarize_at` (-1/+1 and 0/1 labels both
/// work with 0.5), and all idx:val tokens as one weighted multi-hot field "features" (sum
/// pooling, the value as weight) over a vocabulary of the indices seen in training
/// (`table`: vocab(min_count) or hashed(buckets)). Read with libsvm_reader.
inline schema libsvm_schema(table_options table = table_options::vocab(), double binarize_at = 0.5) {
    schema s;
    s.label("label", "click", binarize_at);
    sequence_options o;
    o.source = sequence_source::tokens;
    o.table = table;
    o.pooling = pooling::sum;
    s.sequence("features", o);
    s.bind({"label", "features"});
    return s;
}

/// A schema for libffm files with field numbers 0..fields-1: one weighted multi-hot field
/// "f<k>" per field number (sum pooling), all drawing from one shared table (the feature
/// indices of libffm are global across fields). Read with libffm_reader.
inline schema libffm_schema(std::int64_t fields, table_options table = table_options::vocab(), double binarize_at = 0.5) {
    XREC_CHECK(fields >= 1, "libffm_schema: need at least one field, got ", fields);
    schema s;
    s.label("label", "click", binarize_at);
    for (std::int64_t k = 0; k < fields; ++k) {
        sequence_options o;
        o.column = "features";
        o.source = sequence_source::ffm;
        o.ffm_field = k;
        o.pooling = pooling::sum;
        if (k == 0) o.table = table;
        else o.share = "f0";
        s.sequence(detail::cat("f", std::to_string(k)), o);
    }
    s.bind({"label", "features"});
    return s;
}

}  // namespace xrec::data
