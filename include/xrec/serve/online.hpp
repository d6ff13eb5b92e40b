#pragma once
// serve::online_learner: trains a model in process on a stream of labelled events and
// publishes its weights to a live serve::predictor by hot swap.
//
//   serve::predictor<models::deepfm<>> live(schema.layout(), mopt);
//   serve::online_learner<models::deepfm<>> learner(live, mopt, {.batch_size = 256, .publish_every = 50000}, &schema);
//   while (reader.next(rec)) learner.learn(rec);   // raw events through the schema (train mode)
//   learner.learn(encoded_row) / learner.learn(batch);  // or rows already encoded
//   learner.flush(); learner.publish();              // at the end of the stream
//   // any number of serving threads: live.predict(session, request, out) meanwhile
//
// The contract:
//  - Ownership. The learner owns a param_store (seeded with options.seed), a Model built on it
//    with the predictor's layout and the given model options, and a train::trainer over them;
//    the predictor owns two further copies (its hot-swap slots). Nothing is shared but the
//    layout: the predictor's layout is the learner's, and with a schema the schema's layout
//    must equal it (checked). Growing vocabularies have a fixed capacity, so the layout (and
//    every table's row count) never changes while the stream grows and evicts values.
//  - Events. learn(raw_record) encodes one record through the schema in train mode (growing
//    vocabularies observe it: admission, LRU eviction) and zeroes at once the rows (and
//    their sparse optimizer state) of every global id the schema recycled, as
//    trainer::fit does with a data::stream_source, so a recycled id never carries its old
//    value's weights. learn(encoded_row) and learn(batch) take rows already encoded (global
//    ids of the layout, labels present); ids outside their table are refused with
//    xrec::error naming the field, before anything is queued. Rows queue in arrival order
//    until batch_size of them form a mini-batch, which is trained with one trainer step;
//    flush() trains a shorter final mini-batch.
//  - Publishing. After each step the learner publishes (predictor::publish(store, touched):
//    the dense weights and the table rows written since the previous publish; the first
//    publish, and any after a step that wrote a table it cannot track, a full copy
//    into the idle slot, then a flip) when publish_every events were trained since the last
//    publish, or when publish_interval has passed since it (either trigger may be 0: off).
//    Both are checked at mini-batch boundaries only, by the thread that calls learn: a
//    version always holds whole steps, and a quiet stream publishes nothing (nothing
//    changed). publish() publishes now. Every publish first scans what it copies for NaN/Inf and
//    refuses (xrec::error naming the parameter, nothing published) if it finds one, so the
//    predictor only ever serves finite weights. A reader of the predictor sees the old or
//    the new version whole (predictor's hot swap), never a mix, and never waits for the
//    learner; the learner waits at most for one request per serving thread.
//  - Progressive validation (options.progressive): each mini-batch is scored by the current
//    model (infer context) before the step trains on it, so every event is scored by weights
//    that never saw it: progressive() gives the AUC / logloss of those scores per task (the
//    standard online metric; labels must be 0/1). It costs one extra forward per step.
//  - Errors. A step that throws (e.g. the trainer's NaN/Inf check) discards its mini-batch
//    and propagates; nothing is published by it, and the learner stays usable.
//  - Threads. learn, flush, publish and forget_rows are called from one thread at a time.
//    The schema is mutated by learn(raw_record); serving threads that encode requests must
//    not share it unguarded: copy it in options.on_publish (called on the learner's thread
//    after each publish with the new version) and serve with the copy that matches the
//    version, so the ids of recycled rows and the weights change together.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "xrec/backend/cpu_kernels.hpp"
#include "xrec/backend/kernels.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"
#include "xrec/data/stream.hpp"
#include "xrec/metrics/ctr.hpp"
#include "xrec/models/model.hpp"
#include "xrec/serve/predictor.hpp"
#include "xrec/train/trainer.hpp"

namespace xrec::serve {

/// Options of an online_learner (defaults in brackets).
///  - batch_size [256]: rows per training step.
///  - publish_every [10000]: publish after this many events were trained since the last
///    publish (checked after each step; 0: never by count).
///  - publish_interval [0: off]: publish after this much time since the last publish
///    (checked after each step).
///  - progressive [true]: score each mini-batch before training on it (progressive()).
///  - seed [1]: the learner's param_store seed (the initial weights).
///  - train: the optimizers, learning rates, threads, clipping and finite checks of the
///    trainer; its epochs, batch_size, shuffle, checkpoint and progress fields are not used.
///  - on_publish: called after each publish, on the learner's thread, with the new version.
struct online_options {
    std::int64_t batch_size = 256;
    std::int64_t publish_every = 10000;
    std::chrono::milliseconds publish_interval{0};
    bool progressive = true;
    std::uint64_t seed = 1;
    train::trainer_options train{};
    std::function<void(std::uint64_t)> on_publish;
};

/// Counters of an online_learner.
struct online_stats {
    std::int64_t events = 0;          ///< rows accepted (queued or trained)
    std::int64_t trained = 0;         ///< rows trained on
    std::int64_t steps = 0;           ///< trainer steps
    std::int64_t refused = 0;         ///< raw records the schema refused (reader's skip policy)
    std::int64_t recycled_rows = 0;   ///< ids reset because a growing vocabulary recycled them
    std::int64_t publishes = 0;       ///< publishes made by this learner
    std::int64_t published_events = 0;  ///< rows trained into the last published version
    std::uint64_t version = 0;        ///< the predictor version of the last publish (0: none)
    double last_loss = 0;             ///< the loss of the last step
};

/// See the file comment. Model follows the model contract (models/model.hpp), as for
/// serve::predictor; T and B must be the predictor's.
template <class Model, class T = float, class B = cpu<>>
class online_learner {
public:
    using model_type = Model;
    using model_options = typename Model::options;
    using predictor_type = predictor<Model, T, B>;

    /// A learner that publishes to `target` (which must outlive it). With a schema (borrowed,
    /// fitted, bound to the stream's columns) learn(raw_record) is available; its layout must
    /// be the predictor's.
    online_learner(predictor_type& target, model_options mopt, online_options o = {}, data::schema* schema = nullptr)
        : target_(&target), o_(std::move(o)), schema_(schema), layout_(target.layout()), store_(o_.seed),
          model_(store_, layout_, std::move(mopt)), trainer_(model_, store_, trainer_options_(o_)), rows_(layout_) {
        XREC_CHECK(o_.batch_size > 0, "serve::online_learner: batch_size must be positive, got ", o_.batch_size);
        XREC_CHECK(o_.publish_every >= 0, "serve::online_learner: publish_every must be >= 0 (0: off), got ",
                   o_.publish_every);
        XREC_CHECK(o_.publish_interval.count() >= 0, "serve::online_learner: publish_interval must be >= 0 (0: off), got ",
                   o_.publish_interval.count(), " ms");
        if (schema_) {
            XREC_CHECK(schema_->fitted(), "serve::online_learner: the schema is not fitted");
            check_same_layout_(schema_->layout(), layout_);
        }
        last_publish_ = std::chrono::steady_clock::now();
    }
    online_learner(const online_learner&) = delete;
    online_learner& operator=(const online_learner&) = delete;

    /// One raw event through the schema (train mode). False when the schema refused the
    /// record under the reader's skip policy (counted in stats().refused); a refusal under a
    /// throwing policy throws. Recycled ids are reset before the row is queued.
    bool learn(const data::raw_record& r) {
        XREC_CHECK(schema_ != nullptr, "serve::online_learner::learn: raw events need a schema (constructor)");
        if (!schema_->encode(r, row_, data::encode_mode::train)) {
            ++stats_.refused;
            return false;
        }
        forget_rows(schema_->take_recycled());
        queue_(row_);
        return true;
    }
    /// Every record of `reader` (from where it stands to its end); returns the rows learned.
    template <class Reader>
    std::int64_t learn_all(Reader& reader) {
        XREC_CHECK(schema_ != nullptr, "serve::online_learner::learn_all: raw events need a schema (constructor)");
        XREC_CHECK(reader.header() == schema_->columns(), "serve::online_learner::learn_all: '", reader.path(),
                   "' has other columns than the schema is bound to");
        data::raw_record rec;
        std::int64_t n = 0;
        while (reader.next(rec)) n += learn(rec) ? 1 : 0;
        return n;
    }
    /// One row already encoded with the layout's global ids and its labels.
    void learn(const data::encoded_row<T>& row) {
        check_row_(row, 0);
        queue_(row);
    }
    /// Rows already encoded, as a batch (host memory, labels required); every row is checked
    /// before any is queued.
    void learn(const batch<T>& b) {
        XREC_CHECK(b.memory == memory_space::host, "serve::online_learner::learn: batches are host memory");
        b.check("serve::online_learner::learn", layout_);
        XREC_CHECK(b.labels.numel() == b.rows * layout_.num_tasks(), "serve::online_learner::learn: a batch of ", b.rows,
                   " rows needs labels [", b.rows, ", ", layout_.num_tasks(), "], got ", b.labels.s.str());
        for (std::int64_t r = 0; r < b.rows; ++r) check_labels_(b.labels.data + r * layout_.num_tasks(), r);
        for (std::int64_t r = 0; r < b.rows; ++r) {
            row_from_batch_(b, r, brow_);
            queue_(brow_);
        }
    }

    /// Trains the queued rows (fewer than batch_size) as one step, then publishes if due.
    void flush() {
        if (rows_.rows() > 0) step_();
    }
    /// Publishes the store now (see the file comment: refused if it holds NaN/Inf); returns
    /// the predictor's new version. Queued rows are not trained first (call flush()).
    std::uint64_t publish() {
        std::uint64_t v = 0;
        if (touched_all_) {
            check_finite_store_();
            v = target_->publish(store_);
        } else {
            for (auto& t : touched_) {  // rows touched by several steps are copied once
                std::sort(t.begin(), t.end());
                t.erase(std::unique(t.begin(), t.end()), t.end());
            }
            check_finite_touched_();
            v = target_->publish(store_, touched_);
        }
        for (auto& t : touched_) t.clear();
        touched_all_ = false;
        stats_.version = v;
        ++stats_.publishes;
        stats_.published_events = stats_.trained;
        since_publish_ = 0;
        last_publish_ = std::chrono::steady_clock::now();
        if (o_.on_publish) o_.on_publish(v);
        return v;
    }

    /// Resets rows whose ids now stand for other values (trainer::forget_rows): for a stream
    /// encoded outside the learner by an encoder with growing vocabularies.
    void forget_rows(std::span<const std::int64_t> ids) {
        if (ids.empty()) return;
        trainer_.forget_rows(ids);
        touch_ids_(ids);
        stats_.recycled_rows += static_cast<std::int64_t>(ids.size());
    }
    void forget_rows(const std::vector<std::int64_t>& ids) { forget_rows(std::span<const std::int64_t>(ids)); }

    /// Progressive-validation metrics per task (empty before the first step or when off).
    std::vector<metrics::ctr_metrics> progressive() const {
        std::vector<metrics::ctr_metrics> out;
        for (const auto& a : prog_) out.push_back(a.result());
        return out;
    }
    void reset_progressive() { prog_.clear(); }

    const online_stats& stats() const noexcept { return stats_; }
    /// Rows queued for the next step.
    std::int64_t pending() const noexcept { return rows_.rows(); }
    const feature_layout& layout() const noexcept { return layout_; }
    /// The learner's weights (e.g. to load a checkpoint before the stream starts).
    param_store<T, B>& store() noexcept { return store_; }
    const Model& model() const noexcept { return model_; }
    train::trainer<Model, T, B>& trainer() noexcept { return trainer_; }

private:
    static train::trainer_options trainer_options_(const online_options& o) {
        train::trainer_options t = o.train;
        t.epochs = 1;
        t.batch_size = o.batch_size > 0 ? o.batch_size : 1;  // validated in the body
        t.progress = false;
        t.checkpoint_path.clear();
        return t;
    }

    static void check_same_layout_(const feature_layout& a, const feature_layout& b) {
        const char* who = "serve::online_learner: the schema's layout differs from the predictor's";
        XREC_CHECK(a.tables.size() == b.tables.size(), who, ": ", a.tables.size(), " tables vs ", b.tables.size());
        for (std::size_t t = 0; t < a.tables.size(); ++t)
            XREC_CHECK(a.tables[t].name == b.tables[t].name && a.tables[t].rows == b.tables[t].rows, who, ": table ", t,
                       " is '", a.tables[t].name, "' (", a.tables[t].rows, " rows) vs '", b.tables[t].name, "' (",
                       b.tables[t].rows, " rows)");
        XREC_CHECK(a.sparse.size() == b.sparse.size() && a.dense == b.dense && a.sequences.size() == b.sequences.size() &&
                       a.tasks == b.tasks,
                   who, ": field or task counts differ");
        for (std::size_t f = 0; f < a.sparse.size(); ++f)
            XREC_CHECK(a.sparse[f].name == b.sparse[f].name && a.sparse[f].table == b.sparse[f].table, who,
                       ": sparse field ", f, " is '", a.sparse[f].name, "' vs '", b.sparse[f].name, "'");
        for (std::size_t k = 0; k < a.sequences.size(); ++k)
            XREC_CHECK(a.sequences[k].name == b.sequences[k].name && a.sequences[k].table == b.sequences[k].table &&
                           a.sequences[k].max_len == b.sequences[k].max_len,
                       who, ": sequence field ", k, " is '", a.sequences[k].name, "' vs '", b.sequences[k].name, "'");
    }

    void check_labels_(const T* y, std::int64_t r) const {
        for (std::int64_t t = 0; t < layout_.num_tasks(); ++t)
            XREC_CHECK(std::isfinite(static_cast<double>(y[t])), "serve::online_learner::learn: row ", r, " label of task '",
                       layout_.tasks[static_cast<std::size_t>(t)], "' is not finite");
    }

    void check_row_(const data::encoded_row<T>& row, std::int64_t r) const {
        const char* who = "serve::online_learner::learn";
        XREC_CHECK(static_cast<std::int64_t>(row.sparse.size()) == layout_.num_sparse() &&
                       static_cast<std::int64_t>(row.dense.size()) == layout_.num_dense() &&
                       static_cast<std::int64_t>(row.seq.size()) == layout_.num_sequences(),
                   who, ": the row has ", row.sparse.size(), " sparse, ", row.dense.size(), " dense and ", row.seq.size(),
                   " sequence values; the layout ", layout_.num_sparse(), ", ", layout_.num_dense(), " and ",
                   layout_.num_sequences());
        XREC_CHECK(static_cast<std::int64_t>(row.labels.size()) == layout_.num_tasks(), who, ": the row has ",
                   row.labels.size(), " labels for ", layout_.num_tasks(), " tasks");
        check_labels_(row.labels.data(), r);
        for (std::size_t f = 0; f < row.sparse.size(); ++f) {
            const auto& t = layout_.tables[static_cast<std::size_t>(layout_.sparse[f].table)];
            XREC_CHECK(row.sparse[f] >= t.offset && row.sparse[f] < t.offset + t.rows, who, ": row ", r, " field '",
                       layout_.sparse[f].name, "' id ", row.sparse[f], " is outside table '", t.name, "' rows [", t.offset,
                       ", ", t.offset + t.rows, ")");
        }
        for (std::size_t k = 0; k < row.seq.size(); ++k) {
            const auto& sf = layout_.sequences[k];
            const auto& t = layout_.tables[static_cast<std::size_t>(sf.table)];
            for (auto id : row.seq[k])
                XREC_CHECK(id >= t.offset && id < t.offset + t.rows, who, ": row ", r, " sequence field '", sf.name,
                           "' id ", id, " is outside table '", t.name, "'");
            if (sf.weighted)
                XREC_CHECK(k < row.seq_weights.size() && row.seq_weights[k].size() == row.seq[k].size(), who, ": row ", r,
                           " weighted sequence field '", sf.name, "' needs one weight per id");
        }
    }

    // Row r of a checked batch as an encoded_row (a weighted field without weights gets 1s).
    void row_from_batch_(const batch<T>& b, std::int64_t r, data::encoded_row<T>& row) const {
        const std::int64_t F = layout_.num_sparse(), Dn = layout_.num_dense(), K = layout_.num_tasks();
        row.sparse.assign(b.sparse.data + r * F, b.sparse.data + (r + 1) * F);
        row.dense.assign(b.dense.data + r * Dn, b.dense.data + (r + 1) * Dn);
        row.labels.assign(b.labels.data + r * K, b.labels.data + (r + 1) * K);
        row.group = b.groups.empty() ? -1 : b.groups[static_cast<std::size_t>(r)];
        const std::size_t S = static_cast<std::size_t>(layout_.num_sequences());
        row.seq.resize(S);
        row.seq_weights.resize(S);
        for (std::size_t k = 0; k < S; ++k) {
            const jagged_ids& j = b.sequences[k];
            const auto b0 = static_cast<std::size_t>(j.begin(r)), b1 = static_cast<std::size_t>(j.end(r));
            row.seq[k].assign(j.values.begin() + static_cast<std::ptrdiff_t>(b0), j.values.begin() + static_cast<std::ptrdiff_t>(b1));
            row.seq_weights[k].clear();
            if (!layout_.sequences[k].weighted) continue;
            if (!b.sequence_weights.empty() && !b.sequence_weights[k].empty())
                row.seq_weights[k].assign(b.sequence_weights[k].begin() + static_cast<std::ptrdiff_t>(b0),
                                          b.sequence_weights[k].begin() + static_cast<std::ptrdiff_t>(b1));
            else
                row.seq_weights[k].assign(b1 - b0, T(1));
        }
    }

    void queue_(const data::encoded_row<T>& row) {
        rows_.add(row);
        ++stats_.events;
        if (rows_.rows() >= o_.batch_size) step_();
    }

    void step_() {
        const batch<T> b = rows_.view();
        try {
            if (o_.progressive) score_(b);
            stats_.last_loss = trainer_.step(b);
        } catch (...) {
            rows_.clear();
            throw;
        }
        touch_batch_(b);
        ++stats_.steps;
        stats_.trained += b.rows;
        since_publish_ += b.rows;
        rows_.clear();
        const bool by_count = o_.publish_every > 0 && since_publish_ >= o_.publish_every;
        const bool by_time =
            o_.publish_interval.count() > 0 && std::chrono::steady_clock::now() - last_publish_ >= o_.publish_interval;
        if (by_count || by_time) publish();
    }

    // Progressive validation: the scores of the current weights, before the step.
    void score_(const batch<T>& b) {
        ictx_.reset();
        const var<T> logits = model_(ictx_, b);
        const std::int64_t n = b.rows, K = logits.numel() / std::max<std::int64_t>(n, 1);
        prob_.resize(static_cast<std::size_t>(n * K));
        models::model_probabilities(model_, static_cast<const T*>(logits.data), n, K, prob_.data());
        ictx_.reset();
        if (prog_.empty()) prog_.resize(static_cast<std::size_t>(K));
        p_.resize(static_cast<std::size_t>(n));
        y_.resize(static_cast<std::size_t>(n));
        for (std::int64_t t = 0; t < K && t < layout_.num_tasks(); ++t) {
            for (std::int64_t r = 0; r < n; ++r) {
                p_[static_cast<std::size_t>(r)] = prob_[static_cast<std::size_t>(r * K + t)];
                y_[static_cast<std::size_t>(r)] = b.labels.data[r * layout_.num_tasks() + t];
            }
            prog_[static_cast<std::size_t>(t)].add(std::span<const T>(p_), std::span<const T>(y_));
        }
    }

    // Which table rows the steps since the last publish may have written, so that publish
    // copies only those (predictor::publish(store, touched)): in a table over the layout's
    // global id space (the input block's embedding and first-order tables) the ids of the
    // batch, which are all a sparse optimizer updates; in a small table (a Dice or batch
    // norm's running statistics, written by every training forward) every row; any other
    // table makes the next publish a full copy.
    void touch_batch_(const batch<T>& b) {
        touch_ids_(std::span<const std::int64_t>(b.sparse.data, static_cast<std::size_t>(b.sparse.numel())));
        for (const auto& q : b.sequences) touch_ids_(q.values);
    }
    void touch_ids_(std::span<const std::int64_t> ids) {
        touched_.resize(static_cast<std::size_t>(store_.table_count()));
        for (std::int64_t t = 0; t < store_.table_count(); ++t) {
            const auto& tb = store_.table(t);
            auto& list = touched_[static_cast<std::size_t>(t)];
            if (tb.rows == layout_.total_rows()) {
                list.insert(list.end(), ids.begin(), ids.end());
            } else if (tb.rows <= small_table_rows) {
                if (list.size() != static_cast<std::size_t>(tb.rows))
                    for (std::int64_t r = static_cast<std::int64_t>(list.size()); r < tb.rows; ++r) list.push_back(r);
            } else {
                touched_all_ = true;
            }
        }
    }
    static constexpr std::int64_t small_table_rows = 4096;

    // A delta publish checks what it copies: the dense buffer and the touched rows.
    void check_finite_touched_() {
        if (kernels::first_nonfinite(B{}, store_.dense_size(), store_.values()) >= 0) return check_finite_store_();
        for (std::int64_t t = 0; t < store_.table_count(); ++t) {
            const auto& tb = store_.table(t);
            for (auto r : touched_[static_cast<std::size_t>(t)])
                XREC_CHECK(kernels::first_nonfinite(B{}, tb.dim, tb.row(r)) < 0, "serve::online_learner::publish: table '",
                           tb.name, "' row ", r, " holds a non-finite value; nothing was published (reload the weights)");
        }
    }

    // The predictor must never receive non-finite weights (a failed update may leave them).
    void check_finite_store_() {
        const std::int64_t at = kernels::first_nonfinite(B{}, store_.dense_size(), store_.values());
        if (at >= 0) {
            const auto& es = store_.dense_entries();
            std::size_t i = es.size();
            while (i > 0 && es[i - 1].offset > at) --i;
            XREC_FAIL("serve::online_learner::publish: parameter '", i > 0 ? es[i - 1].name : std::string("?"),
                      "' holds a non-finite value; nothing was published (reload the weights)");
        }
        for (std::int64_t t = 0; t < store_.table_count(); ++t) {
            const auto& tb = store_.table(t);
            const std::int64_t k = kernels::first_nonfinite(B{}, tb.rows * tb.dim, tb.values.data());
            XREC_CHECK(k < 0, "serve::online_learner::publish: table '", tb.name, "' row ", k / std::max<std::int64_t>(tb.dim, 1),
                       " holds a non-finite value; nothing was published (reload the weights)");
        }
    }

    predictor_type* target_;
    online_options o_;
    data::schema* schema_;
    feature_layout layout_;
    param_store<T, B> store_;
    Model model_;
    train::trainer<Model, T, B> trainer_;
    data::row_batch<T> rows_;
    data::encoded_row<T> row_, brow_;
    infer_ctx<T, B> ictx_;
    std::vector<T> prob_, p_, y_;
    std::vector<metrics::ctr_accumulator> prog_;
    online_stats stats_;
    std::int64_t since_publish_ = 0;
    std::vector<std::vector<std::int64_t>> touched_;  // per table: rows written since the last publish
    bool touched_all_ = true;                          // the next publish copies everything
    std::chrono::steady_clock::time_point last_publish_;
};

}  // namespace xrec::serve
