#pragma once
// serve::predictor: one model's weights, shared read-only by any number of serving threads,
// each calling through its own session; new weights are published by hot swap.
//
//   serve::predictor<models::deepfm<>> p(layout, model_options, {.max_batch = 256});
//   p.publish_checkpoint("deepfm.safetensors");        // or p.publish(trainer_store)
//   auto s = p.make_session();                          // one per thread; reserves memory
//   serve::status st = p.predict(s, request_batch, out);          // out: rows x tasks
//   st = p.rank(s, user_row, candidate_ids, out);                 // out: candidates x tasks
//
// Threads: predict and rank are const and lock-free: a call reads the current weights
// through its session's slot mark (below) and never waits for a publisher or for another
// reader. make_session, publish and the destruction of a session take a mutex (they are
// not on the request path). A session is used by one thread at a time and must not
// outlive its predictor.
//
// Allocation: make_session reserves everything for the largest request (options.max_batch
// rows, options.max_candidates candidates, each history at its layout max_len) by serving
// one such request; afterwards predict and rank perform no heap allocation.
//
// Hot swap: the predictor holds two weight slots, each a param_store with the model built
// on it. The live slot is an atomic index. A request marks its session with the index it
// read, re-reads the index, and retries when it changed; publish fills the idle slot
// only after no session is marked with it, then flips the index. So a request sees one
// slot from its first weight read to its last: the old weights or the new, never a mix;
// readers never block, a publisher waits for the requests still on the slot it will
// overwrite (one request each at most, since the slot went idle at the previous flip).
//
// Requests (request_policy): field counts and shapes must match the layout (else
// invalid_argument, naming the field and both sizes); an id outside its field's table is
// served as that table's out-of-vocabulary row (local id 0, the row unseen values train)
// and counted in session::stats(), or refused with policy ids = reject; a history longer
// than its field's max_len keeps its newest max_len ids (the encoder's rule), or is refused
// with long_sequences = reject; a NaN or Inf dense value is refused (invalid_argument naming
// the row and the field). Refusals return a status; nothing is read out of bounds.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/models/model.hpp"
#include "xrec/serve/quantize.hpp"
#include "xrec/serve/rank.hpp"
#include "xrec/serve/status.hpp"

namespace xrec::serve {

/// What a predictor does with request values that do not fit the model (see the file
/// comment). NaN/Inf dense values are always refused: no default would be right.
struct request_policy {
    enum class bad_id : std::uint8_t { oov, reject };
    enum class long_sequence : std::uint8_t { keep_newest, reject };
    bad_id ids = bad_id::oov;
    long_sequence long_sequences = long_sequence::keep_newest;
};

/// What predict and rank write: probabilities (models::model_probabilities; the default)
/// or the raw logits.
enum class output_kind : std::uint8_t { probabilities, logits };

/// Options of a predictor.
///  - max_batch: the most rows a predict call takes (sessions reserve for it).
///  - max_candidates: the most candidates a rank call takes.
///  - max_history: the longest history kept of a sequence field whose layout max_len is 0.
///  - candidate_fields: the sparse fields a rank call gives per candidate (e.g. {"item_id",
///    "cate_id"}), in the order of the candidate id matrix's columns; the user row's values
///    of these fields are ignored. Empty: rank() answers invalid_argument.
struct predictor_options {
    std::int64_t max_batch = 256;
    std::int64_t max_candidates = 1024;
    std::int64_t max_history = 256;
    std::vector<std::string> candidate_fields{};
    request_policy policy{};
    output_kind output = output_kind::probabilities;
    /// The precision the weights are served in (serve/quantize.hpp): each publish converts
    /// the slot it fills (fp32: as published; bf16: dense weights rounded to bf16, tables
    /// stored as bf16; bf16_int8: tables stored row-wise int8). float predictors only.
    serving_precision precision = serving_precision::fp32;
};

/// Counters of one session (what the policy absorbed).
struct session_stats {
    std::uint64_t requests = 0;        ///< predict and rank calls answered ok
    std::uint64_t oov_ids = 0;         ///< ids replaced by their table's out-of-vocabulary row
    std::uint64_t clipped_histories = 0;  ///< histories cut to their newest max_len ids
    std::uint64_t refused = 0;         ///< calls answered with an error status
};

template <class Model, class T = float, class B = cpu<>>
class predictor;

/// A serving thread's state: its inference context (workspace), the buffers a request is
/// checked into, its message buffer and counters. Movable; made by predictor::make_session.
template <class Model, class T = float, class B = cpu<>>
class session {
public:
    session() = default;
    session(session&&) noexcept = default;
    session& operator=(session&& o) noexcept {
        if (this != &o) {
            reset_();
            st_ = std::move(o.st_);
        }
        return *this;
    }
    ~session() { reset_(); }

    const session_stats& stats() const noexcept { return st_->stats; }
    /// The message of the last error status this session returned.
    const char* last_message() const noexcept { return st_->msg.str(); }
    /// The version of the weights the last call used (predictor::version() at its publish).
    std::uint64_t last_version() const noexcept { return st_->last_version; }

private:
    friend class predictor<Model, T, B>;
    struct state {
        const predictor<Model, T, B>* owner = nullptr;
        alignas(64) std::atomic<int> active{-1};  // the slot a request is reading, or -1
        alignas(64) infer_ctx<T, B> ctx;
        std::vector<std::int64_t> sparse;                    // checked ids [rows, F]
        std::vector<std::vector<std::int64_t>> seq_values;   // per sequence field
        std::vector<std::vector<std::int64_t>> seq_offsets;
        std::vector<std::vector<T>> seq_weights;
        std::vector<jagged_ids> seqs;
        std::vector<std::span<const T>> seq_weight_spans;
        std::vector<std::int64_t> cand;                      // checked candidate ids [C, Fc]
        std::vector<T> logits;
        message_buffer msg;
        session_stats stats;
        std::uint64_t last_version = 0;
    };
    void reset_();
    std::unique_ptr<state> st_;
};

/// See the file comment. Model follows the model contract (models/model.hpp) and is
/// constructed as Model(param_store&, const feature_layout&, Model::options).
template <class Model, class T, class B>
class predictor {
    static_assert(backend_memory<B>::host_accessible,
                  "serve::predictor serves from host memory: use the cpu backend (a cuda predictor is not written yet)");

public:
    using model_type = Model;
    using model_options = typename Model::options;
    using session_type = session<Model, T, B>;

    predictor(feature_layout layout, model_options mopt, predictor_options popt = {})
        : layout_(std::move(layout)), mopt_(std::move(mopt)), opt_(std::move(popt)) {
        XREC_CHECK(opt_.max_batch > 0 && opt_.max_candidates > 0 && opt_.max_history > 0,
                   "serve::predictor: max_batch, max_candidates and max_history must be positive, got ", opt_.max_batch,
                   ", ", opt_.max_candidates, ", ", opt_.max_history);
        for (auto& s : slots_) s = std::make_unique<slot>(layout_, mopt_);
        tasks_ = layout_.num_tasks();
        for (const auto& name : opt_.candidate_fields) {
            const std::int64_t f = layout_.find_sparse(name);
            XREC_CHECK(f >= 0, "serve::predictor: candidate field '", name, "' is not a sparse field of the layout");
            for (auto g : plan_.candidate_fields)
                XREC_CHECK(g != f, "serve::predictor: candidate field '", name, "' is named twice");
            plan_.candidate_fields.push_back(f);
        }
        if (!plan_.candidate_fields.empty()) ranker<Model, T, B>::check_plan(slots_[0]->model, plan_);
        for (std::int64_t k = 0; k < layout_.num_sequences(); ++k) {
            const auto ml = layout_.sequences[static_cast<std::size_t>(k)].max_len;
            max_len_.push_back(ml > 0 ? ml : opt_.max_history);
        }
    }
    predictor(const predictor&) = delete;
    predictor& operator=(const predictor&) = delete;

    const feature_layout& layout() const noexcept { return layout_; }
    const predictor_options& options() const noexcept { return opt_; }
    /// Publishes so far that copied only touched rows / that copied everything.
    std::uint64_t delta_publishes() const {
        std::lock_guard lock(mutex_);
        return delta_publishes_;
    }
    std::uint64_t full_publishes() const {
        std::lock_guard lock(mutex_);
        return full_publishes_;
    }
    /// How many publishes have happened (0: none; predict answers unavailable).
    std::uint64_t version() const noexcept { return version_.load(std::memory_order_acquire); }

    /// Publishes a copy of `src`'s values (the store of a model built with the same layout
    /// and options, e.g. a trainer's). Throws xrec::error, publishing nothing, when the
    /// stores differ in names or shapes. Returns the new version.
    std::uint64_t publish(const param_store<T, B>& src) {
        return publish_slot_([&](param_store<T, B>& dst) { copy_store(src, dst); }, nullptr);
    }
    /// The same, for a source that changed only in some table rows since its previous
    /// publish (an online learner's store): `touched[t]` lists the local rows of table t
    /// written since then (duplicates allowed). The idle slot is two publishes behind, so
    /// it receives the dense buffer (small) and the rows of this list and of the previous
    /// one, instead of whole tables: a publish of a 2.6M-row model then copies megabytes,
    /// not hundreds. Falls back to a full copy when the idle slot holds anything else (the
    /// first two publishes, after a checkpoint, with reduced serving precision). The
    /// lists are checked (table count, row ranges) before anything is written.
    std::uint64_t publish(const param_store<T, B>& src, std::span<const std::vector<std::int64_t>> touched) {
        XREC_CHECK(static_cast<std::int64_t>(touched.size()) == src.table_count(), "serve::predictor::publish: ",
                   touched.size(), " touched-row lists for a store of ", src.table_count(), " tables");
        for (std::size_t t = 0; t < touched.size(); ++t)
            for (auto r : touched[t])
                XREC_CHECK(r >= 0 && r < src.table(static_cast<std::int64_t>(t)).rows, "serve::predictor::publish: touched row ",
                           r, " is outside table '", src.table(static_cast<std::int64_t>(t)).name, "' [0, ",
                           src.table(static_cast<std::int64_t>(t)).rows, ")");
        return publish_slot_(
            [&](param_store<T, B>& dst, bool delta) {
                if (!delta) return copy_store(src, dst);
                check_same_layout(src, dst);
                std::copy(src.values(), src.values() + src.dense_size(), dst.values());
                for (std::int64_t t = 0; t < src.table_count(); ++t) {
                    const auto& a = src.table(t);
                    auto& b = dst.table(t);
                    const std::vector<std::int64_t>* lists[2] = {&last_touched_[static_cast<std::size_t>(t)],
                                                                 &touched[static_cast<std::size_t>(t)]};
                    for (const auto* list : lists)
                        for (auto r : *list) std::copy(a.row(r), a.row(r) + a.dim, b.row(r));
                }
            },
            &touched);
    }
    /// Publishes a checkpoint written by io::save_checkpoint (validated before anything is
    /// written; a refused file leaves the live weights as they were).
    std::uint64_t publish_checkpoint(const std::string& path, io::checkpoint_load_options o = {}) {
        return publish_with([&](param_store<T, B>& dst) { io::load_checkpoint(path, dst, {}, o); });
    }
    /// Publishes what `fill(store&)` writes into the idle slot's store (a loader of another
    /// format, e.g. io::load_state_dict). If fill throws, nothing is published and the
    /// exception propagates; the live weights are untouched.
    template <class Fill>
    std::uint64_t publish_with(Fill&& fill) {
        return publish_slot_(std::forward<Fill>(fill), nullptr);
    }

    /// A new session, with memory reserved for the largest request (see the file comment).
    /// Throws xrec::error when nothing has been published yet.
    session_type make_session() const {
        XREC_CHECK(version() > 0, "serve::predictor::make_session: publish weights first");
        session_type s;
        s.st_ = std::make_unique<typename session_type::state>();
        auto& st = *s.st_;
        st.owner = this;
        st.seq_values.resize(static_cast<std::size_t>(layout_.num_sequences()));
        st.seq_offsets.resize(st.seq_values.size());
        st.seq_weights.resize(st.seq_values.size());
        st.seqs.resize(st.seq_values.size());
        st.seq_weight_spans.resize(st.seq_values.size());
        const std::int64_t rows = std::max(opt_.max_batch, plan_.candidate_fields.empty() ? 0 : opt_.max_candidates);
        st.sparse.reserve(static_cast<std::size_t>(rows * layout_.num_sparse()));
        st.cand.reserve(static_cast<std::size_t>(opt_.max_candidates * static_cast<std::int64_t>(plan_.candidate_fields.size())));
        st.logits.reserve(static_cast<std::size_t>(rows * tasks_));
        for (std::size_t k = 0; k < st.seq_values.size(); ++k) {
            st.seq_values[k].reserve(static_cast<std::size_t>(opt_.max_batch * max_len_[k]));
            st.seq_offsets[k].reserve(static_cast<std::size_t>(opt_.max_batch + 1));
            if (layout_.sequences[k].weighted) st.seq_weights[k].reserve(static_cast<std::size_t>(opt_.max_batch * max_len_[k]));
        }
        {
            std::lock_guard lock(mutex_);
            sessions_.push_back(&st);
        }
        warm_up_(s);
        s.st_->stats = {};
        return s;
    }

    /// Scores `req` (rows <= max_batch; labels and groups ignored) into out [rows x tasks].
    status predict(session_type& s, const batch<T>& req, std::span<T> out) const {
        auto& st = *s.st_;
        if (status e = check_session_(s); !e) return e;
        if (req.rows < 0 || req.rows > opt_.max_batch)
            return refuse_(st, st.msg.set(status_code::invalid_argument,
                                          "predict: %lld rows, outside [0, max_batch = %lld]",
                                          static_cast<long long>(req.rows), static_cast<long long>(opt_.max_batch)));
        if (static_cast<std::int64_t>(out.size()) < req.rows * tasks_)
            return refuse_(st, st.msg.set(status_code::invalid_argument, "predict: output has %zu values, %lld needed",
                                          out.size(), static_cast<long long>(req.rows * tasks_)));
        batch<T> b;
        if (status e = check_request_(st, req, b, "predict"); !e) return refuse_(st, e);
        if (req.rows == 0) return {};
        return run_([&](const slot& sl) {
            st.ctx.reset();
            const var<T> y = sl.model(st.ctx, b);
            finish_(sl, y.data, req.rows, out.data());
        }, st);
    }

    /// Scores `candidates` [C, candidate_fields.size()] (global ids, C <= max_candidates)
    /// for the one user row `user` into out [C x tasks], computing the user side once (see
    /// serve/rank.hpp). The same numbers as predict on C rows that repeat the user row with
    /// each candidate's ids, up to the order of float sums.
    status rank(session_type& s, const batch<T>& user, tensor_view<const std::int64_t> candidates, std::span<T> out) const {
        auto& st = *s.st_;
        if (status e = check_session_(s); !e) return e;
        const std::int64_t Fc = static_cast<std::int64_t>(plan_.candidate_fields.size());
        if (Fc == 0)
            return refuse_(st, st.msg.set(status_code::invalid_argument,
                                          "rank: the predictor has no candidate_fields (predictor_options)"));
        if (user.rows != 1)
            return refuse_(st, st.msg.set(status_code::invalid_argument, "rank: the user request has %lld rows, not 1",
                                          static_cast<long long>(user.rows)));
        const std::int64_t C = candidates.s.rank == 2 ? candidates.s[0] : -1;
        if (C < 0 || candidates.s[1] != Fc || C > opt_.max_candidates)
            return refuse_(st, st.msg.set(status_code::invalid_argument,
                                          "rank: candidates %s must be [C, %lld] with C <= max_candidates = %lld",
                                          candidates.s.str().c_str(), static_cast<long long>(Fc),
                                          static_cast<long long>(opt_.max_candidates)));
        if (static_cast<std::int64_t>(out.size()) < C * tasks_)
            return refuse_(st, st.msg.set(status_code::invalid_argument, "rank: output has %zu values, %lld needed",
                                          out.size(), static_cast<long long>(C * tasks_)));
        batch<T> u;
        if (status e = check_request_(st, user, u, "rank"); !e) return refuse_(st, e);
        st.cand.resize(static_cast<std::size_t>(C * Fc));
        for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t j = 0; j < Fc; ++j) {
                const std::int64_t f = plan_.candidate_fields[static_cast<std::size_t>(j)];
                std::int64_t id = candidates.data[c * Fc + j];
                if (status e = check_id_(st, id, layout_.sparse[static_cast<std::size_t>(f)].table, "rank: candidate", c,
                                         layout_.sparse[static_cast<std::size_t>(f)].name.c_str());
                    !e)
                    return refuse_(st, e);
                st.cand[static_cast<std::size_t>(c * Fc + j)] = id;
            }
        if (C == 0) return {};
        return run_([&](const slot& sl) {
            st.ctx.reset();
            const var<T> y = ranker<Model, T, B>::run(st.ctx, sl.model, sl.cache, plan_, u, st.cand.data(), C);
            finish_(sl, y.data, C, out.data());
        }, st);
    }

private:
    friend class session<Model, T, B>;
    struct slot {
        param_store<T, B> store;
        Model model;
        typename ranker<Model, T, B>::cache cache;
        std::uint64_t version = 0;
        slot(const feature_layout& l, const model_options& o) : store(0), model(store, l, o) {}
    };

    // Fills the idle slot (after the requests still on it finish), converts it to the
    // serving precision, rebuilds its rank cache and makes it live. `touched` (delta
    // publishes only) becomes the list the next delta publish also copies; fill is called
    // as fill(store) or, for a delta publish, fill(store, delta_allowed).
    template <class Fill>
    std::uint64_t publish_slot_(Fill&& fill, std::span<const std::vector<std::int64_t>>* touched) {
        std::lock_guard lock(mutex_);
        const int cur = current_.load(std::memory_order_relaxed);
        const int next = cur < 0 ? 0 : 1 - cur;
        wait_until_unused_(next);
        slot& s = *slots_[static_cast<std::size_t>(next)];
        // Any failure from here leaves the idle slot in an unknown state: no delta onto it.
        const bool delta = touched && last_touched_valid_ && s.version != 0 && opt_.precision == serving_precision::fp32;
        last_touched_valid_ = false;
        if constexpr (std::is_same_v<T, float>) dequantize_tables(s.store);  // the fill writes float values
        if constexpr (std::is_invocable_v<Fill, param_store<T, B>&, bool>)
            std::forward<Fill>(fill)(s.store, delta);
        else
            std::forward<Fill>(fill)(s.store);
        if constexpr (std::is_same_v<T, float>) {
            if (opt_.precision != serving_precision::fp32) quantize(s.store, opt_.precision);
        } else {
            XREC_CHECK(opt_.precision == serving_precision::fp32, "serve::predictor: reduced precision serves float models");
        }
        s.cache.build(s.model, plan_);
        if (touched) {
            last_touched_.assign(touched->begin(), touched->end());
            last_touched_valid_ = true;
        }
        s.version = version_.load(std::memory_order_relaxed) + 1;
        current_.store(next, std::memory_order_seq_cst);
        version_.store(s.version, std::memory_order_release);
        ++(delta ? delta_publishes_ : full_publishes_);
        return s.version;
    }

    static void check_same_layout(const param_store<T, B>& src, const param_store<T, B>& dst) {
        const auto& se = src.dense_entries();
        const auto& de = dst.dense_entries();
        XREC_CHECK(se.size() == de.size() && src.table_count() == dst.table_count(), "serve::predictor::publish: the store has ",
                   se.size(), " dense parameters and ", src.table_count(), " tables, the model ", de.size(), " and ",
                   dst.table_count());
        for (std::size_t i = 0; i < se.size(); ++i)
            XREC_CHECK(se[i].name == de[i].name && se[i].s == de[i].s && se[i].offset == de[i].offset,
                       "serve::predictor::publish: dense parameter ", i, " is '", se[i].name, "' ", se[i].s.str(),
                       " in the store but '", de[i].name, "' ", de[i].s.str(), " in the model");
        for (std::int64_t t = 0; t < src.table_count(); ++t) {
            const auto& a = src.table(t);
            const auto& b = dst.table(t);
            XREC_CHECK(!a.reduced(), "serve::predictor::publish: table '", a.name,
                       "' of the store is in a reduced format; publish float weights (the predictor converts them, "
                       "predictor_options::precision)");
            XREC_CHECK(a.name == b.name && a.rows == b.rows && a.dim == b.dim, "serve::predictor::publish: table ", t, " is '",
                       a.name, "' [", a.rows, ", ", a.dim, "] in the store but '", b.name, "' [", b.rows, ", ", b.dim,
                       "] in the model");
        }
    }

    static void copy_store(const param_store<T, B>& src, param_store<T, B>& dst) {
        check_same_layout(src, dst);
        std::copy(src.values(), src.values() + src.dense_size(), dst.values());
        for (std::int64_t t = 0; t < src.table_count(); ++t) {
            const auto& a = src.table(t);
            std::copy(a.values.data(), a.values.data() + a.rows * a.dim, dst.table(t).values.data());
        }
    }

    // Waits until no session is reading slot i (sessions mark it for one request at most).
    void wait_until_unused_(int i) const {
        for (;;) {
            bool busy = false;
            for (const auto* st : sessions_) busy = busy || st->active.load(std::memory_order_seq_cst) == i;
            if (!busy) return;
            std::this_thread::yield();
        }
    }

    status check_session_(const session_type& s) const {
        if (!s.st_ || s.st_->owner != this)
            return {status_code::invalid_argument, "serve::predictor: the session was not made by this predictor"};
        return {};
    }

    static status refuse_(typename session_type::state& st, status e) {
        ++st.stats.refused;
        return e;
    }

    // Reads the live slot with the session marked (see the file comment), runs f on it.
    template <class F>
    status run_(F&& f, typename session_type::state& st) const {
        const slot* sl = nullptr;
        for (;;) {
            const int i = current_.load(std::memory_order_seq_cst);
            if (i < 0) return refuse_(st, st.msg.set(status_code::unavailable, "serve::predictor: nothing published yet"));
            st.active.store(i, std::memory_order_seq_cst);
            if (current_.load(std::memory_order_seq_cst) == i) {
                sl = slots_[static_cast<std::size_t>(i)].get();
                break;
            }
        }
        status result;
        try {
            f(*sl);
            st.last_version = sl->version;
            ++st.stats.requests;
        } catch (const error& e) {  // a request the model refuses (e.g. DIN's unequal paired histories)
            result = refuse_(st, st.msg.copy(status_code::invalid_argument, e.what()));
        } catch (const std::exception& e) {  // anything else is a bug
            result = refuse_(st, st.msg.copy(status_code::internal, e.what()));
        }
        st.active.store(-1, std::memory_order_release);
        return result;
    }

    void finish_(const slot& sl, const T* logits, std::int64_t rows, T* out) const {
        if (opt_.output == output_kind::logits)
            std::copy(logits, logits + rows * tasks_, out);
        else
            models::model_probabilities(sl.model, logits, rows, tasks_, out);
    }

    // An id outside its table: OOV row or refusal, per the policy.
    status check_id_(typename session_type::state& st, std::int64_t& id, std::int64_t table, const char* what,
                     std::int64_t row, const char* field) const {
        const auto& t = layout_.tables[static_cast<std::size_t>(table)];
        if (id >= t.offset && id < t.offset + t.rows) return {};
        if (opt_.policy.ids == request_policy::bad_id::reject)
            return st.msg.set(status_code::out_of_range, "%s %lld field '%s': id %lld is outside table '%s' rows [%lld, %lld)",
                              what, static_cast<long long>(row), field, static_cast<long long>(id), t.name.c_str(),
                              static_cast<long long>(t.offset), static_cast<long long>(t.offset + t.rows));
        id = t.offset;
        ++st.stats.oov_ids;
        return {};
    }

    // Checks req against the layout and the policy into the session's buffers; b views them.
    status check_request_(typename session_type::state& st, const batch<T>& req, batch<T>& b, const char* who) const {
        const std::int64_t n = req.rows, F = layout_.num_sparse(), Dn = layout_.num_dense();
        if (req.memory != memory_space::host)
            return st.msg.set(status_code::invalid_argument, "%s: requests are host memory", who);
        if (req.sparse.numel() != n * F || (n > 0 && F > 0 && req.sparse.data == nullptr))
            return st.msg.set(status_code::invalid_argument, "%s: sparse ids %s, but %lld rows x %lld sparse fields expected",
                              who, req.sparse.s.str().c_str(), static_cast<long long>(n), static_cast<long long>(F));
        if (req.dense.numel() != n * Dn || (n > 0 && Dn > 0 && req.dense.data == nullptr))
            return st.msg.set(status_code::invalid_argument, "%s: dense values %s, but %lld rows x %lld dense fields expected",
                              who, req.dense.s.str().c_str(), static_cast<long long>(n), static_cast<long long>(Dn));
        if (static_cast<std::int64_t>(req.sequences.size()) != layout_.num_sequences())
            return st.msg.set(status_code::invalid_argument, "%s: %zu sequence inputs for %lld sequence fields", who,
                              req.sequences.size(), static_cast<long long>(layout_.num_sequences()));
        if (!req.sequence_weights.empty() && static_cast<std::int64_t>(req.sequence_weights.size()) != layout_.num_sequences())
            return st.msg.set(status_code::invalid_argument, "%s: %zu sequence weight inputs for %lld sequence fields", who,
                              req.sequence_weights.size(), static_cast<long long>(layout_.num_sequences()));
        for (std::int64_t i = 0; i < n * Dn; ++i)
            if (!std::isfinite(req.dense.data[i]))
                return st.msg.set(status_code::invalid_argument, "%s: row %lld dense field '%s' is %s", who,
                                  static_cast<long long>(i / Dn), layout_.dense[static_cast<std::size_t>(i % Dn)].c_str(),
                                  std::isnan(req.dense.data[i]) ? "NaN" : "infinite");
        st.sparse.resize(static_cast<std::size_t>(n * F));
        for (std::int64_t r = 0; r < n; ++r)
            for (std::int64_t f = 0; f < F; ++f) {
                std::int64_t id = req.sparse.data[r * F + f];
                const auto& sf = layout_.sparse[static_cast<std::size_t>(f)];
                if (status e = check_id_(st, id, sf.table, who, r, sf.name.c_str()); !e) return e;
                st.sparse[static_cast<std::size_t>(r * F + f)] = id;
            }
        for (std::size_t k = 0; k < req.sequences.size(); ++k)
            if (status e = check_sequence_(st, req, k, who); !e) return e;
        b = req;
        b.sparse = {st.sparse.data(), shape{n, F}};
        b.sequences = {st.seqs.data(), st.seqs.size()};
        b.sequence_weights = req.sequence_weights.empty()
                                 ? std::span<const std::span<const T>>{}
                                 : std::span<const std::span<const T>>(st.seq_weight_spans.data(), st.seq_weight_spans.size());
        b.labels = {};
        b.groups = {};
        return {};
    }

    status check_sequence_(typename session_type::state& st, const batch<T>& req, std::size_t k, const char* who) const {
        const auto& sf = layout_.sequences[k];
        const jagged_ids& in = req.sequences[k];
        const std::int64_t n = req.rows, max_len = max_len_[k];
        const std::int64_t nnz = static_cast<std::int64_t>(in.values.size());
        if (static_cast<std::int64_t>(in.offsets.size()) != n + 1 || in.offsets[0] != 0 || in.offsets[static_cast<std::size_t>(n)] != nnz)
            return st.msg.set(status_code::invalid_argument,
                              "%s: sequence field '%s' needs %lld offsets from 0 to its %lld ids, got %zu offsets", who,
                              sf.name.c_str(), static_cast<long long>(n + 1), static_cast<long long>(nnz), in.offsets.size());
        std::span<const T> w;
        if (!req.sequence_weights.empty()) w = req.sequence_weights[k];
        if (!w.empty() && static_cast<std::int64_t>(w.size()) != nnz)
            return st.msg.set(status_code::invalid_argument, "%s: sequence field '%s' has %zu weights for %lld ids", who,
                              sf.name.c_str(), w.size(), static_cast<long long>(nnz));
        auto& vals = st.seq_values[k];
        auto& offs = st.seq_offsets[k];
        auto& wts = st.seq_weights[k];
        vals.clear();
        offs.clear();
        wts.clear();
        offs.push_back(0);
        for (std::int64_t r = 0; r < n; ++r) {
            const std::int64_t b0 = in.offsets[static_cast<std::size_t>(r)], b1 = in.offsets[static_cast<std::size_t>(r + 1)];
            if (b1 < b0 || b1 > nnz)
                return st.msg.set(status_code::invalid_argument, "%s: sequence field '%s' offsets decrease or overrun at row %lld",
                                  who, sf.name.c_str(), static_cast<long long>(r));
            std::int64_t from = b0;
            if (b1 - b0 > max_len) {
                if (opt_.policy.long_sequences == request_policy::long_sequence::reject)
                    return st.msg.set(status_code::invalid_argument,
                                      "%s: row %lld sequence field '%s' has %lld ids, more than its max_len %lld", who,
                                      static_cast<long long>(r), sf.name.c_str(), static_cast<long long>(b1 - b0),
                                      static_cast<long long>(max_len));
                from = b1 - max_len;  // the newest max_len (oldest first, as the encoder keeps them)
                ++st.stats.clipped_histories;
            }
            for (std::int64_t j = from; j < b1; ++j) {
                std::int64_t id = in.values[static_cast<std::size_t>(j)];
                if (status e = check_id_(st, id, sf.table, who, r, sf.name.c_str()); !e) return e;
                vals.push_back(id);
                if (!w.empty()) {
                    const T x = w[static_cast<std::size_t>(j)];
                    if (!std::isfinite(x))
                        return st.msg.set(status_code::invalid_argument, "%s: row %lld sequence field '%s' has a %s weight",
                                          who, static_cast<long long>(r), sf.name.c_str(), std::isnan(x) ? "NaN" : "infinite");
                    wts.push_back(x);
                }
            }
            offs.push_back(static_cast<std::int64_t>(vals.size()));
        }
        st.seqs[k] = jagged_ids{std::span<const std::int64_t>(vals), std::span<const std::int64_t>(offs)};
        st.seq_weight_spans[k] = std::span<const T>(wts);
        return {};
    }

    // Serves one largest request (and one largest rank) so that every buffer and the
    // workspace reach their final size.
    void warm_up_(session_type& s) const {
        const std::int64_t F = layout_.num_sparse(), Dn = layout_.num_dense(), S = layout_.num_sequences();
        const std::int64_t n = opt_.max_batch;
        std::vector<std::int64_t> ids(static_cast<std::size_t>(n * F));
        for (std::int64_t r = 0; r < n; ++r)
            for (std::int64_t f = 0; f < F; ++f)
                ids[static_cast<std::size_t>(r * F + f)] =
                    layout_.tables[static_cast<std::size_t>(layout_.sparse[static_cast<std::size_t>(f)].table)].offset;
        std::vector<T> dense(static_cast<std::size_t>(n * Dn), T(0));
        std::vector<std::vector<std::int64_t>> vals(static_cast<std::size_t>(S)), offs(static_cast<std::size_t>(S));
        std::vector<std::vector<T>> wts(static_cast<std::size_t>(S));
        std::vector<jagged_ids> seqs(static_cast<std::size_t>(S));
        std::vector<std::span<const T>> wspans(static_cast<std::size_t>(S));
        for (std::int64_t k = 0; k < S; ++k) {
            const auto& sf = layout_.sequences[static_cast<std::size_t>(k)];
            const std::int64_t len = max_len_[static_cast<std::size_t>(k)];
            vals[static_cast<std::size_t>(k)].assign(static_cast<std::size_t>(n * len),
                                                     layout_.tables[static_cast<std::size_t>(sf.table)].offset);
            for (std::int64_t r = 0; r <= n; ++r) offs[static_cast<std::size_t>(k)].push_back(r * len);
            if (sf.weighted) wts[static_cast<std::size_t>(k)].assign(vals[static_cast<std::size_t>(k)].size(), T(1));
            seqs[static_cast<std::size_t>(k)] = {vals[static_cast<std::size_t>(k)], offs[static_cast<std::size_t>(k)]};
            wspans[static_cast<std::size_t>(k)] = wts[static_cast<std::size_t>(k)];
        }
        batch<T> b;
        b.rows = n;
        b.sparse = {ids.data(), shape{n, F}};
        b.dense = {dense.data(), shape{n, Dn}};
        b.sequences = seqs;
        b.sequence_weights = wspans;
        std::vector<T> out(static_cast<std::size_t>(std::max(n, opt_.max_candidates) * tasks_));
        status e = predict(s, b, out);
        XREC_CHECK(e.ok(), "serve::predictor::make_session: the warm-up request failed: ", e.message);
        if (plan_.candidate_fields.empty()) return;
        // rank: the user row is row 0 of the same request; candidates are OOV rows.
        b.rows = 1;
        b.sparse = {ids.data(), shape{1, F}};
        b.dense = {dense.data(), shape{1, Dn}};
        for (std::int64_t k = 0; k < S; ++k)
            seqs[static_cast<std::size_t>(k)].offsets = std::span<const std::int64_t>(offs[static_cast<std::size_t>(k)]).first(2),
            seqs[static_cast<std::size_t>(k)].values =
                std::span<const std::int64_t>(vals[static_cast<std::size_t>(k)]).first(static_cast<std::size_t>(max_len_[static_cast<std::size_t>(k)]));
        for (std::int64_t k = 0; k < S; ++k)
            if (!wts[static_cast<std::size_t>(k)].empty())
                wspans[static_cast<std::size_t>(k)] = std::span<const T>(wts[static_cast<std::size_t>(k)]).first(
                    static_cast<std::size_t>(max_len_[static_cast<std::size_t>(k)]));
        const std::int64_t C = opt_.max_candidates, Fc = static_cast<std::int64_t>(plan_.candidate_fields.size());
        std::vector<std::int64_t> cand(static_cast<std::size_t>(C * Fc));
        for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t j = 0; j < Fc; ++j)
                cand[static_cast<std::size_t>(c * Fc + j)] = ids[static_cast<std::size_t>(plan_.candidate_fields[static_cast<std::size_t>(j)])];
        e = rank(s, b, {cand.data(), shape{C, Fc}}, out);
        XREC_CHECK(e.ok(), "serve::predictor::make_session: the warm-up rank failed: ", e.message);
    }

    void unregister_(const typename session_type::state* st) const {
        std::lock_guard lock(mutex_);
        sessions_.erase(std::remove(sessions_.begin(), sessions_.end(), st), sessions_.end());
    }

    feature_layout layout_;
    model_options mopt_;
    predictor_options opt_;
    rank_plan plan_;
    std::int64_t tasks_ = 1;
    std::vector<std::int64_t> max_len_;  // per sequence field: the layout's max_len or max_history
    std::unique_ptr<slot> slots_[2];
    alignas(64) std::atomic<int> current_{-1};
    std::atomic<std::uint64_t> version_{0};
    std::vector<std::vector<std::int64_t>> last_touched_;  // rows of the last delta publish (under mutex_)
    bool last_touched_valid_ = false;
    std::uint64_t delta_publishes_ = 0, full_publishes_ = 0;
    mutable std::mutex mutex_;  // publish, session registration
    mutable std::vector<const typename session_type::state*> sessions_;
};

template <class Model, class T, class B>
void session<Model, T, B>::reset_() {
    if (st_ && st_->owner) st_->owner->unregister_(st_.get());
    st_.reset();
}

}  // namespace xrec::serve
