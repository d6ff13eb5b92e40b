#pragma once
// The trainer: epochs of mini-batch training of any model that follows the model contract
// (models/model.hpp) from any batch source, validation each epoch with CTR metrics per task,
// early stopping, the best epoch kept as a checkpoint, NaN/Inf detection that names the step
// and the layer, and a progress display.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "xrec/backend/cpu_kernels.hpp"
#include "xrec/backend/kernels.hpp"
#include "xrec/backend/tags.hpp"
#include "xrec/core/arena.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/data/dataset.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/svg.hpp"
#include "xrec/metrics/ctr.hpp"
#include "xrec/models/model.hpp"
#include "xrec/optim/adam.hpp"
#include "xrec/optim/clip.hpp"
#include "xrec/optim/ftrl.hpp"
#include "xrec/optim/lazy_adam.hpp"
#include "xrec/optim/rowwise_adagrad.hpp"
#include "xrec/optim/sgd.hpp"
#include "xrec/optim/sparse_adagrad.hpp"
#include "xrec/optim/sparse_sgd.hpp"
#include "xrec/train/optimizers.hpp"
#include "xrec/train/progress.hpp"

namespace xrec::train {

/// Anything that serves mini-batches: `start_epoch(e)` rewinds (and reshuffles for epoch e),
/// then `next(b)` fills b until it returns false. data::batcher is one; a test or a stream
/// reader may be another. An optional `size()` (rows per epoch) enables the progress ETA.
template <class S, class T>
concept batch_source = requires(S& s, batch<T>& b, std::int64_t e) {
    s.start_epoch(e);
    { s.next(b) } -> std::convertible_to<bool>;
};

/// The validation metric early stopping and the best checkpoint follow (of one task).
/// AUC and group AUC improve upwards, logloss downwards.
enum class metric { auc, gauc, logloss };

inline const char* metric_name(metric m) {
    switch (m) {
        case metric::auc: return "auc";
        case metric::gauc: return "gauc";
        case metric::logloss: return "logloss";
    }
    return "?";
}

/// What one epoch did. `epoch` counts from 1; `steps` is the global step count at its end.
/// train_loss is the row-weighted mean of the step losses (the loss the model trains on);
/// seconds and samples_per_s cover the training steps only, not validation. `valid` holds the
/// validation metrics per task (empty without a validation source); `watched` the value of
/// the followed metric; `improved` whether this epoch became the best (and was saved).
struct epoch_stats {
    std::int64_t epoch = 0, steps = 0, samples = 0;
    double train_loss = std::numeric_limits<double>::quiet_NaN();
    double seconds = 0, samples_per_s = 0;
    std::vector<metrics::ctr_metrics> valid;
    double watched = std::numeric_limits<double>::quiet_NaN();
    bool improved = false;
};

/// What fit() returns: every epoch, the best one (0: none), and whether it stopped early.
struct history {
    std::vector<epoch_stats> epochs;
    std::int64_t best_epoch = 0;
    double best_metric = std::numeric_limits<double>::quiet_NaN();
    bool stopped_early = false;
    std::int64_t steps = 0;
};

/// A per-epoch quantity of a history, for charts.
enum class curve { train_loss, valid_auc, valid_gauc, valid_logloss, valid_calibration, samples_per_s };

/// The per-epoch values of `what` (validation metrics of task `task`) as a chart series named
/// `name`, x = epoch: io::write_line_charts draws these (e.g. valid AUC and train loss of two
/// models side by side). Epochs without the value (no validation, an undefined metric) are NaN,
/// which the chart skips.
inline io::svg_series history_series(const history& h, std::string name, curve what, std::int64_t task = 0) {
    io::svg_series s;
    s.name = std::move(name);
    for (const auto& e : h.epochs) {
        s.x.push_back(static_cast<double>(e.epoch));
        const metrics::ctr_metrics* m =
            task >= 0 && task < static_cast<std::int64_t>(e.valid.size()) ? &e.valid[static_cast<std::size_t>(task)] : nullptr;
        const double nan = std::numeric_limits<double>::quiet_NaN();
        switch (what) {
            case curve::train_loss: s.y.push_back(e.train_loss); break;
            case curve::samples_per_s: s.y.push_back(e.samples_per_s); break;
            case curve::valid_auc: s.y.push_back(m ? m->auc : nan); break;
            case curve::valid_gauc: s.y.push_back(m ? m->gauc : nan); break;
            case curve::valid_logloss: s.y.push_back(m ? m->logloss : nan); break;
            case curve::valid_calibration: s.y.push_back(m ? m->calibration : nan); break;
        }
    }
    return s;
}

/// Options of a trainer (defaults in brackets).
///  - epochs [5]; batch_size [512] and shuffle [true] apply when fit() is given datasets and
///    cuts them itself (a batch source decides its own batches).
///  - seed [42]: the train context's random streams (dropout) and that shuffle. The weights'
///    initialisation is the param_store's seed. Same seed and threads give identical weights.
///  - threads [1]: the train context's pool, shared with the optimizers.
///  - dense / dense_lr / weight_decay: the dense optimizer [adam, 1e-3, 0] (L2 for adam and
///    sgd, decoupled for adamw; sgd_momentum for sgd).
///  - sparse / sparse_lr / sparse_weight_decay: the table optimizer [rowwise_adagrad, 0.05,
///    0] (for ftrl: alpha and l2).
///  - watch [auc] of task watch_task [0]; patience [0: never stop early]: stop after this many
///    epochs without an improvement larger than min_delta [0].
///  - checkpoint_path [""]: where the best epoch is saved (atomically; nothing when empty),
///    with checkpoint_config added to its metadata and, with save_optimizer_state, the
///    optimizers' state tensors. restore_best [true]: after fit, the best checkpoint is
///    loaded back into the store, so the model ends at its best epoch.
///  - clip_grad_norm [0: off]: clip all gradients (dense and merged sparse rows) to this global
///    L2 norm before the update (optim::clip_grad_norm), after the NaN/Inf checks.
///  - check_finite [true]: the NaN/Inf checks of every step (see trainer).
///  - progress [true] and progress_opt (stream, tty mode, line frequency).
///  - on_epoch: called after each epoch's validation (and save) with its stats.
struct trainer_options {
    std::int64_t epochs = 5;
    std::int64_t batch_size = 512;
    bool shuffle = true;
    std::uint64_t seed = 42;
    int threads = 1;
    dense_optimizer dense = dense_optimizer::adam;
    double dense_lr = 1e-3;
    double weight_decay = 0;
    double sgd_momentum = 0;
    sparse_optimizer sparse = sparse_optimizer::rowwise_adagrad;
    double sparse_lr = 0.05;
    double sparse_weight_decay = 0;
    metric watch = metric::auc;
    std::int64_t watch_task = 0;
    std::int64_t patience = 0;
    double min_delta = 0;
    std::string checkpoint_path;
    std::map<std::string, std::string> checkpoint_config;
    bool save_optimizer_state = false;
    bool restore_best = true;
    double clip_grad_norm = 0;
    bool check_finite = true;
    bool progress = true;
    progress_options progress_opt;
    std::function<void(const epoch_stats&)> on_epoch;
};

/// Trains `Model` (any models::ctr_model) whose parameters live in `store`.
///
/// One step: logits = model(train_ctx, batch); loss = models::model_loss (the model's own
/// loss, else mean BCE with logits); backward; the NaN/Inf checks; the dense optimizer on the
/// flat buffer and the sparse optimizer on the touched table rows; zero_grad; reset.
///
/// NaN/Inf: with check_finite, after backward and before any update the loss and every
/// gradient are checked: each dense parameter (store.dense_entries()) and each table's sparse
/// gradient rows. The first non-finite value throws xrec::error naming the global step (from
/// 1), the epoch (from 1), the parameter and its layer (the name up to its last '.'), with
/// nothing applied. After the update the updated values are checked too (dense parameters
/// and the touched rows), which catches a learning rate that overflows finite gradients;
/// that error says so, and the store then holds the bad values (reload the checkpoint). In
/// every case training stops before the epoch ends, so the checkpoint on disk is the last
/// good (best) one, untouched. The store and context are left clean (no pending gradients).
///
/// Validation (each epoch, when given a source) and evaluate(): probabilities come from
/// models::model_probabilities on an infer_ctx; per task a metrics::ctr_accumulator collects
/// (probability, label column, batch groups); groups are used when the batches carry them
/// (rows of unknown group, -1, then form one group).
///
/// Determinism: the result depends on the store's seed, options.seed, options.threads and
/// the batches, nothing else (ops, optimizers and losses are deterministic for a thread count).
template <class Model, class T = float, class B = cpu<>>
    requires models::ctr_model<Model, T, B>
class trainer {
public:
    trainer(const Model& model, param_store<T, B>& store, trainer_options o = {})
        : model_(&model), store_(&store), o_(std::move(o)),
          ctx_(typename train_ctx<T, B>::options{.seed = o_.seed, .threads = o_.threads}) {
        XREC_CHECK(o_.epochs >= 0, "trainer: epochs must be >= 0, got ", o_.epochs);
        XREC_CHECK(o_.batch_size > 0, "trainer: batch_size must be positive, got ", o_.batch_size);
        XREC_CHECK(o_.patience >= 0, "trainer: patience must be >= 0, got ", o_.patience);
        XREC_CHECK(o_.watch_task >= 0, "trainer: watch_task must be >= 0, got ", o_.watch_task);
        XREC_CHECK(o_.clip_grad_norm >= 0, "trainer: clip_grad_norm must be >= 0 (0: off), got ", o_.clip_grad_norm);
        make_optimizers();
    }

    /// Trains for options.epochs epochs on `train`, validating on `valid` after each.
    template <batch_source<T> TS, batch_source<T> VS>
    history fit(TS& train, VS& valid) {
        return run(train, &valid);
    }
    /// Trains without validation: no early stopping, every epoch is "best" (saved).
    template <batch_source<T> TS>
    history fit(TS& train) {
        return run<TS, TS>(train, nullptr);
    }
    /// Trains on datasets cut into batches of options.batch_size (train shuffled with
    /// options.seed when options.shuffle; validation in order).
    history fit(const data::ctr_dataset<T>& train, const data::ctr_dataset<T>& valid) {
        data::batcher<T> tb(train, o_.batch_size, o_.shuffle, o_.seed), vb(valid, o_.batch_size);
        return run(tb, &vb);
    }

    /// Per-task metrics of the model on every row of `src` (one pass, epoch 0). Needs labels.
    template <batch_source<T> S>
    std::vector<metrics::ctr_metrics> evaluate(S& src) {
        std::vector<metrics::ctr_accumulator> acc;
        std::vector<T> p, y;
        scan(src, [&](const batch<T>& b, const T* prob, std::int64_t rows, std::int64_t tasks) {
            XREC_CHECK(b.memory == memory_space::host || backend_memory<B>::host_accessible,
                       "trainer::evaluate: the metrics read labels on the host; pass host batches");
            XREC_CHECK(b.labels.numel() == rows * tasks, "trainer::evaluate: a batch of ", rows, " rows and ", tasks,
                       " tasks has labels ", b.labels.s.str());
            if (acc.empty()) acc.resize(static_cast<std::size_t>(tasks));
            XREC_CHECK(static_cast<std::int64_t>(acc.size()) == tasks, "trainer::evaluate: the model gave ", tasks,
                       " task columns after ", acc.size());
            p.resize(static_cast<std::size_t>(rows));
            y.resize(static_cast<std::size_t>(rows));
            for (std::int64_t t = 0; t < tasks; ++t) {
                for (std::int64_t r = 0; r < rows; ++r) {
                    p[static_cast<std::size_t>(r)] = prob[r * tasks + t];
                    y[static_cast<std::size_t>(r)] = b.labels.data[r * tasks + t];
                }
                acc[static_cast<std::size_t>(t)].add(std::span<const T>(p), std::span<const T>(y), b.groups);
            }
        });
        std::vector<metrics::ctr_metrics> out;
        for (auto& a : acc) out.push_back(a.result());
        return out;
    }
    history fit(const data::ctr_dataset<T>& train) {
        data::batcher<T> tb(train, o_.batch_size, o_.shuffle, o_.seed);
        return run<data::batcher<T>, data::batcher<T>>(tb, nullptr);
    }
    std::vector<metrics::ctr_metrics> evaluate(const data::ctr_dataset<T>& d) {
        data::batcher<T> b(d, o_.batch_size);
        return evaluate(b);
    }

    /// Probabilities of every row of `src`, row-major [rows, tasks] (tasks() after the call).
    template <batch_source<T> S>
    std::vector<T> predict(S& src) {
        std::vector<T> out;
        scan(src, [&](const batch<T>&, const T* prob, std::int64_t rows, std::int64_t tasks) {
            out.insert(out.end(), prob, prob + rows * tasks);
        });
        return out;
    }
    std::vector<T> predict(const data::ctr_dataset<T>& d) {
        data::batcher<T> b(d, o_.batch_size);
        return predict(b);
    }
    /// Columns of the last scored batch (0 before any).
    std::int64_t tasks() const noexcept { return tasks_; }

    /// One training step on `b` (what fit() runs); returns the loss. `epoch` (from 1) only
    /// labels error messages.
    double step(const batch<T>& b, std::int64_t epoch = 0) {
        try {
            var<T> logits = (*model_)(ctx_, b);
            var<T> loss = models::model_loss(*model_, ctx_, logits, b);
            ++step_;
            ctx_.backward(loss);
            // Read after backward is queued: on a device the read waits for the whole
            // backward instead of stalling the queue between forward and backward.
            const double lv = static_cast<double>(host_value<B>(loss.data));
            if (o_.check_finite) check_gradients(lv, epoch);
            if (o_.clip_grad_norm > 0) optim::clip_grad_norm(*store_, o_.clip_grad_norm);
            if (o_.check_finite && !backend_memory<B>::host_accessible) remember_touched_rows();  // see check_values
            opt_.step();
            if (o_.check_finite) check_values(epoch);
            store_->zero_grad();
            ctx_.reset();
            return lv;
        } catch (...) {
            store_->zero_grad();
            ctx_.reset();
            throw;
        }
    }

    /// Saves the store (and, with options.save_optimizer_state, the optimizer state) to
    /// `path` atomically, with options.checkpoint_config plus `extra` in the metadata.
    void save(const std::string& path, std::map<std::string, std::string> extra = {}) {
        std::map<std::string, std::string> cfg = o_.checkpoint_config;
        for (auto& [k, v] : extra) cfg[k] = v;
        io::save_checkpoint(path, *store_, cfg, o_.save_optimizer_state ? optimizer_state() : std::vector<named_tensor<T>>{});
    }
    /// Loads a checkpoint into the store; with `with_optimizer_state` the optimizers' state
    /// too (to resume), otherwise any optimizer state in the file is ignored. Returns its config.
    std::map<std::string, std::string> load(const std::string& path, bool with_optimizer_state = false) {
        if (with_optimizer_state) return io::load_checkpoint(path, *store_, optimizer_state());
        return io::load_checkpoint(path, *store_, {}, {.allow_unexpected = true});
    }
    /// The state tensors of both optimizers (step counters, moments, accumulators).
    std::vector<named_tensor<T>> optimizer_state() {
        std::vector<named_tensor<T>> out;
        std::visit([&](auto& opt) { append_state(out, opt); }, opt_.dense);
        std::visit([&](auto& opt) { append_state(out, opt); }, opt_.sparse);
        return out;
    }

    /// Rows recycled by a growing vocabulary (data::schema::take_recycled(): global ids that now
    /// stand for new values) start over: in every table indexed by global ids (a table with
    /// more rows than the largest id; one-row statistics tables are not) the rows become zero,
    /// and so do the sparse optimizer's per-row state of those tables (moments, accumulators).
    /// fit() calls this before each step with what a batch source that has take_recycled()
    /// (data::stream_source) reports, so a recycled row never carries its old value's weights.
    void forget_rows(std::span<const std::int64_t> ids) {
        if (ids.empty()) return;
        const std::int64_t top = *std::max_element(ids.begin(), ids.end());
        std::vector<std::string> names;
        for (std::int64_t ti = 0; ti < store_->table_count(); ++ti) {
            auto& t = store_->table(ti);
            if (t.rows <= top) continue;
            names.push_back("." + t.name + ".");
            for (auto id : ids)
                if (id >= 0) kernels::fill(B{}, t.dim, T(0), t.row(id));
        }
        std::vector<named_tensor<T>> st;
        std::visit([&](auto& opt) { append_state(st, opt); }, opt_.sparse);
        for (auto& nt : st) {
            if (nt.s.rank != 2 || nt.s[0] <= top) continue;
            bool ours = false;
            for (auto& n : names) ours = ours || nt.name.find(n) != std::string::npos;
            if (!ours) continue;
            const std::int64_t w = nt.s[1];
            for (auto id : ids)
                if (id >= 0) kernels::fill(B{}, w, T(0), nt.data + id * w);
        }
    }

    /// Replaces options.on_epoch (lets the callback capture the trainer itself, e.g. to predict).
    void set_on_epoch(std::function<void(const epoch_stats&)> f) { o_.on_epoch = std::move(f); }

    std::int64_t global_step() const noexcept { return step_; }
    const trainer_options& options() const noexcept { return o_; }
    train_ctx<T, B>& context() noexcept { return ctx_; }

private:
    template <class O>
    static void append_state(std::vector<named_tensor<T>>& out, O& opt) {
        if constexpr (!std::is_same_v<O, std::monostate>) {
            auto s = opt.state();
            out.insert(out.end(), s.begin(), s.end());
        }
    }

    void make_optimizers() {
        opt_.make(*store_,
                  optimizer_settings{o_.dense, o_.dense_lr, o_.weight_decay, o_.sgd_momentum, o_.sparse, o_.sparse_lr,
                                     o_.sparse_weight_decay},
                  ctx_.pool());
    }

    static std::string layer_of(const std::string& name) {
        const auto dot = name.rfind('.');
        return dot == std::string::npos ? name : name.substr(0, dot);
    }
    // The dense entry that holds flat index `at` (entries are in ascending offset order).
    const typename param_store<T, B>::entry& entry_at(std::int64_t at) const {
        const auto& es = store_->dense_entries();
        for (std::size_t i = es.size(); i-- > 0;)
            if (es[i].offset <= at) return es[i];
        return es.front();
    }
    static std::string value_str(T v) { return std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf"; }
    std::string where(std::int64_t epoch) const {
        std::string s = "step " + std::to_string(step_);
        if (epoch > 0) s += " (epoch " + std::to_string(epoch) + ")";
        return s;
    }
    std::string untouched() const {
        return o_.checkpoint_path.empty() ? std::string("nothing was applied")
                                          : "nothing was applied; the checkpoint '" + o_.checkpoint_path + "' is untouched";
    }

    // The first non-finite element of x[0, n) (scan_nonfinite) or of the rows table[ids[k], :]
    // as k dim + d (scan_nonfinite_rows), or -1. On the cpu the scan is split over the
    // context's pool (the smallest index found wins, so the answer does not depend on the
    // threads): the touched rows are random reads, ~10 ms of a 4,096-row DeepFM step on one
    // thread. A device scans in one kernel.
    std::int64_t scan_nonfinite(std::int64_t n, const T* x) {
        if constexpr (!backend_memory<B>::host_accessible) {
            return kernels::first_nonfinite(B{}, n, x);
        } else {
            std::atomic<std::int64_t> first{n};
            parallel_for(ctx_.pool(), n, std::int64_t{1} << 16, [&](std::int64_t b, std::int64_t e, int) {
                const std::int64_t k = kernels::first_nonfinite(B{}, e - b, x + b);
                if (k >= 0) fetch_min(first, b + k);
            });
            return first.load() < n ? first.load() : -1;
        }
    }
    std::int64_t scan_nonfinite_rows(const T* table, std::int64_t dim, const std::int64_t* ids, std::int64_t n) {
        if constexpr (!backend_memory<B>::host_accessible) {
            return kernels::first_nonfinite_rows(B{}, table, dim, ids, n);
        } else {
            std::atomic<std::int64_t> first{n * dim};
            parallel_for(ctx_.pool(), n, std::int64_t{1} << 12, [&](std::int64_t b, std::int64_t e, int) {
                const std::int64_t k = kernels::first_nonfinite_rows(B{}, table, dim, ids + b, e - b);
                if (k >= 0) fetch_min(first, b * dim + k);
            });
            return first.load() < n * dim ? first.load() : -1;
        }
    }

    // Loss and gradients, before any update.
    void check_gradients(double loss, std::int64_t epoch) {
        const std::string loss_note = std::isfinite(loss) ? "" : "the loss is " + value_str(static_cast<T>(loss)) + "; ";
        // One scan of the whole flat buffer (its alignment padding stays zero), then the entry.
        const T* g = store_->grads();
        if (const std::int64_t at = scan_nonfinite(store_->dense_size(), g); at >= 0) {
            const auto& e = entry_at(at);
            const std::int64_t i = at - e.offset;
            XREC_FAIL("trainer: non-finite value at ", where(epoch), ": ", loss_note, "the gradient of parameter '",
                      e.name, "' (layer '", layer_of(e.name), "') ", e.s.str(), " element ", i, " is ",
                      value_str(host_value<B>(g + at)), "; ", untouched());
        }
        for (std::int64_t ti = 0; ti < store_->table_count(); ++ti) {
            const auto& t = store_->table(ti);
            const T* r = t.grad.rows.data();
            if (const std::int64_t k = scan_nonfinite(t.grad.count() * t.dim, r); k >= 0)
                XREC_FAIL("trainer: non-finite value at ", where(epoch), ": ", loss_note, "the gradient of table '",
                          t.name, "' (layer '", layer_of(t.name), "') row ", host_value<B>(t.grad.ids.data() + k / t.dim),
                          " is ", value_str(host_value<B>(r + k)), "; ", untouched());
        }
        XREC_CHECK(std::isfinite(loss), "trainer: non-finite value at ", where(epoch), ": the loss is ",
                   value_str(static_cast<T>(loss)), " while every parameter gradient is finite; ", untouched());
    }

    void remember_touched_rows() {
        touched_.resize(static_cast<std::size_t>(store_->table_count()));
        for (std::int64_t ti = 0; ti < store_->table_count(); ++ti)
            if constexpr (backend_memory<B>::host_accessible)
                touched_[static_cast<std::size_t>(ti)] = store_->table(ti).grad.ids;
            else
                touched_[static_cast<std::size_t>(ti)].assign(store_->table(ti).grad.ids);
    }

    // Updated values: dense parameters and the touched rows.
    void check_values(std::int64_t epoch) {
        const std::string note = "; the update (learning rate too large?) made it non-finite. Training stopped";
        const std::string ck = o_.checkpoint_path.empty() ? "" : "; the checkpoint '" + o_.checkpoint_path + "' is untouched";
        const T* v = store_->values();
        if (const std::int64_t at = scan_nonfinite(store_->dense_size(), v); at >= 0) {
            const auto& e = entry_at(at);
            XREC_FAIL("trainer: non-finite value at ", where(epoch), ": parameter '", e.name, "' (layer '",
                      layer_of(e.name), "') ", e.s.str(), " element ", at - e.offset, " is ",
                      value_str(host_value<B>(v + at)), note, ck);
        }
        // The cpu's sparse update loop checked the rows it wrote (optim::detail::
        // for_each_touched_row); a device's fused update did not, so its touched rows are
        // scanned here.
        const std::vector<std::int64_t>* checked = nullptr;
        std::visit([&](auto& opt) {
            if constexpr (!std::is_same_v<std::decay_t<decltype(opt)>, std::monostate>) checked = opt.checked_rows();
        }, opt_.sparse);
        if (checked) {
            for (std::int64_t ti = 0; ti < store_->table_count(); ++ti) {
                const std::int64_t id = (*checked)[static_cast<std::size_t>(ti)];
                if (id < 0) continue;
                const auto& t = store_->table(ti);
                std::int64_t d = 0;
                while (d + 1 < t.dim && std::isfinite(host_value<B>(t.row(id) + d))) ++d;
                XREC_FAIL("trainer: non-finite value at ", where(epoch), ": table '", t.name, "' (layer '",
                          layer_of(t.name), "') row ", id, " is ", value_str(host_value<B>(t.row(id) + d)), note, ck);
            }
            return;
        }
        for (std::int64_t ti = 0; ti < store_->table_count() && static_cast<std::size_t>(ti) < touched_.size(); ++ti) {
            const auto& t = store_->table(ti);
            const auto& ids = touched_[static_cast<std::size_t>(ti)];
            const std::int64_t k = scan_nonfinite_rows(t.values.data(), t.dim, ids.data(), static_cast<std::int64_t>(ids.size()));
            if (k >= 0) {
                const std::int64_t id = host_value<B>(ids.data() + k / t.dim);
                XREC_FAIL("trainer: non-finite value at ", where(epoch), ": table '", t.name, "' (layer '",
                          layer_of(t.name), "') row ", id, " is ", value_str(host_value<B>(t.row(id) + k % t.dim)), note,
                          ck);
            }
        }
    }

    // Scores every batch of src on an infer_ctx: f(batch, probabilities, rows, tasks).
    template <class S, class F>
    void scan(S& src, F&& f) {
        batch<T> b;
        src.start_epoch(0);
        while (src.next(b)) {
            if (b.rows == 0) continue;
            ictx_.reset();
            var<T> logits = (*model_)(ictx_, b);
            XREC_CHECK(logits.rows() == b.rows, "trainer: the model returned logits ", logits.s.str(), " for ", b.rows,
                       " rows");
            const std::int64_t tasks = logits.numel() / b.rows;
            tasks_ = tasks;
            prob_.resize(static_cast<std::size_t>(b.rows * tasks));
            // Scores are read on the host (metrics, predict): device logits come back first.
            const T* lg = host_readable<B>(static_cast<const T*>(logits.data), b.rows * tasks, logits_host_);
            models::model_probabilities(*model_, lg, b.rows, tasks, prob_.data());
            f(b, prob_.data(), b.rows, tasks);
        }
        ictx_.reset();
    }

    bool better(double v, double best) const {
        if (!std::isfinite(v)) return false;
        if (!std::isfinite(best)) return true;
        return o_.watch == metric::logloss ? v < best - o_.min_delta : v > best + o_.min_delta;
    }
    double pick(const std::vector<metrics::ctr_metrics>& m) const {
        XREC_CHECK(o_.watch_task < static_cast<std::int64_t>(m.size()), "trainer: watch_task ", o_.watch_task,
                   " but the model has ", m.size(), " task(s)");
        const auto& x = m[static_cast<std::size_t>(o_.watch_task)];
        return o_.watch == metric::auc ? x.auc : o_.watch == metric::gauc ? x.gauc : x.logloss;
    }
    static std::string fmt(double v) {
        char b[40];
        std::snprintf(b, sizeof b, "%.4f", v);
        return b;
    }
    static std::string fmt17(double v) {
        char b[40];
        std::snprintf(b, sizeof b, "%.17g", v);
        return b;
    }

    template <class TS, class VS>
    history run(TS& train, VS* valid) {
        history h;
        std::int64_t bad = 0;
        batch<T> b;
        progress_options popt = o_.progress_opt;
        popt.enabled = o_.progress && popt.enabled;
        for (std::int64_t e = 0; e < o_.epochs; ++e) {
            epoch_stats st;
            st.epoch = e + 1;
            std::int64_t total = 0;
            if constexpr (requires { train.size(); }) total = static_cast<std::int64_t>(train.size());
            progress_bar bar("epoch " + std::to_string(e + 1) + "/" + std::to_string(o_.epochs), total, popt);
            const auto t0 = std::chrono::steady_clock::now();
            double loss_sum = 0;
            train.start_epoch(e);
            while (train.next(b)) {
                if constexpr (requires { train.take_recycled(); }) {
                    const auto rec = train.take_recycled();
                    forget_rows(rec);
                }
                if (b.rows == 0) continue;
                const double lv = step(b, e + 1);
                loss_sum += lv * static_cast<double>(b.rows);
                st.samples += b.rows;
                bar.update(st.samples, loss_sum / static_cast<double>(st.samples));
            }
            st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            st.samples_per_s = st.seconds > 0 ? static_cast<double>(st.samples) / st.seconds : 0;
            if (st.samples > 0) st.train_loss = loss_sum / static_cast<double>(st.samples);
            st.steps = step_;
            bar.finish();

            if (valid) {
                st.valid = evaluate(*valid);
                XREC_CHECK(!st.valid.empty(), "trainer: the validation source served no rows in epoch ", st.epoch);
                st.watched = pick(st.valid);
                st.improved = better(st.watched, h.best_metric);
            } else {
                st.improved = true;
            }
            if (st.improved) {
                h.best_epoch = st.epoch;
                h.best_metric = st.watched;
                bad = 0;
                if (!o_.checkpoint_path.empty())
                    save(o_.checkpoint_path, {{"model", std::string(model_->kind())},
                                              {"epoch", std::to_string(st.epoch)},
                                              {"step", std::to_string(step_)},
                                              {"watched_metric", metric_name(o_.watch)},
                                              {"watched_task", std::to_string(o_.watch_task)},
                                              {"watched_value", fmt17(st.watched)}});
            } else {
                ++bad;
            }
            if (popt.enabled && popt.stream && valid) {
                std::string line = "epoch " + std::to_string(st.epoch) + " valid:";
                for (std::size_t t = 0; t < st.valid.size(); ++t) {
                    const auto& m = st.valid[t];
                    if (st.valid.size() > 1) line += " [task " + std::to_string(t) + "]";
                    line += " auc " + fmt(m.auc) + " gauc " + fmt(m.gauc) + " logloss " + fmt(m.logloss) +
                            " calibration " + fmt(m.calibration);
                }
                line += st.improved ? "  (best)" : "  (no improvement " + std::to_string(bad) + "/" +
                                                       std::to_string(o_.patience) + ")";
                std::fprintf(popt.stream, "%s\n", line.c_str());
                std::fflush(popt.stream);
            }
            h.epochs.push_back(st);
            h.steps = step_;
            if (o_.on_epoch) o_.on_epoch(h.epochs.back());
            if (valid && o_.patience > 0 && bad >= o_.patience) {
                h.stopped_early = e + 1 < o_.epochs;
                break;
            }
        }
        if (o_.restore_best && !o_.checkpoint_path.empty() && h.best_epoch > 0) load(o_.checkpoint_path);
        return h;
    }

    const Model* model_;
    param_store<T, B>* store_;
    trainer_options o_;
    train_ctx<T, B> ctx_;
    infer_ctx<T, B> ictx_;
    optimizer_set<T, B> opt_;
    std::vector<grad_ids<B>> touched_;  // the rows the last update touched (check_values)
    std::vector<T> prob_, logits_host_;
    std::int64_t step_ = 0, tasks_ = 0;
};

}  // namespace xrec::train
