#pragma once
// The training loops of collaborative-filtering models (models/mf.hpp, ncf.hpp,
// two_tower.hpp) on implicit feedback: BPR over (user, positive, sampled negative) triples,
// pointwise BCE with n sampled negatives per positive (NCF's protocol), and the in-batch
// softmax with the log-Q correction (two-tower retrieval).
#include <algorithm>
#include <cmath>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/loss/bce.hpp"
#include "xrec/loss/bpr.hpp"
#include "xrec/loss/sampled_softmax.hpp"
#include "xrec/optim/adam.hpp"
#include "xrec/optim/lazy_adam.hpp"
#include "xrec/optim/rowwise_adagrad.hpp"
#include "xrec/optim/sgd.hpp"
#include "xrec/optim/sparse_adagrad.hpp"
#include "xrec/optim/sparse_sgd.hpp"
#include "xrec/train/trainer.hpp"

namespace xrec::train {

/// A model that scores (user, item) pairs: score(ctx, users, items) -> var [n] (logits).
template <class M, class T, class B>
concept pair_scorer = requires(const M& m, train_ctx<T, B>& tc, infer_ctx<T, B>& ic, std::span<const std::int64_t> ids) {
    { m.score(tc, ids, ids) } -> std::same_as<var<T>>;
    { m.score(ic, ids, ids) } -> std::same_as<var<T>>;
};
/// A model with separate user and item towers (what the in-batch softmax trains).
template <class M, class T, class B>
concept tower_model = requires(const M& m, train_ctx<T, B>& tc, std::span<const std::int64_t> ids) {
    { m.user_vectors(tc, ids) } -> std::same_as<var<T>>;
    { m.item_vectors(tc, ids) } -> std::same_as<var<T>>;
};

/// The implicit-feedback training data: per user the items they interacted with, CSR
/// (user u's items are items[offsets[u] .. offsets[u + 1]), 0-based dense ids; the layout of
/// data::sequences, whose offsets and items spans can be passed as they are). Users are the
/// rows, 0 .. offsets.size() - 2.
struct user_items {
    std::span<const std::int64_t> offsets;
    std::span<const std::int32_t> items;
    std::int32_t n_items = 0;
    std::int64_t users() const { return offsets.empty() ? 0 : static_cast<std::int64_t>(offsets.size()) - 1; }
};

/// The training objective of cf_trainer.
///  - bpr: one step is a batch of (u, i, j) triples, i a positive of u, j an item u never
///    interacted with (uniform); loss::bpr over score(u, i) and score(u, j).
///  - bce: every positive (u, i, 1) plus `negatives` sampled (u, j, 0) rows, all shuffled
///    together (NCF's instances); loss::bce_with_logits.
///  - in_batch_softmax: a batch of positive pairs; loss::in_batch_softmax over the towers,
///    log q_j from the items' training frequencies (with `log_q`).
enum class cf_loss { bpr, bce, in_batch_softmax };

inline const char* cf_loss_name(cf_loss l) {
    switch (l) {
        case cf_loss::bpr: return "bpr";
        case cf_loss::bce: return "bce";
        case cf_loss::in_batch_softmax: return "in_batch_softmax";
    }
    return "?";
}

/// What one epoch did (epoch from 1; loss = mean of the step losses weighted by rows).
struct cf_epoch_stats {
    std::int64_t epoch = 0, steps = 0, rows = 0;
    double loss = std::numeric_limits<double>::quiet_NaN();
    double seconds = 0;
};

/// Options of cf_trainer (defaults in brackets).
///  - loss [bpr]; epochs [20]; batch_size [256] rows (triples, labelled pairs or positives);
///    negatives [4] per positive for bce.
///  - seed [42]: the shuffles and the negatives of epoch e are a pure function of (seed, e)
///    (so are the train context's random streams); threads [1].
///  - dense / dense_lr / weight_decay [adam, 1e-3, 0] for the dense buffer (towers, output
///    layers); sparse / sparse_lr / sparse_weight_decay [lazy_adam, 1e-3, 0] for the tables
///    (lazy_adam is torch.optim.SparseAdam, the peer's optimizer).
///  - log_q [true], temperature [1], remove_accidental_hits [true]: in_batch_softmax.
///  - batch_log [""]: when set, every batch used is appended to this file (format below),
///    for the PyTorch peer to train on the same batches in the same order.
///  - check_finite [true]: NaN/Inf in the loss or a gradient stops training with an error
///    naming the step, the epoch and the parameter, before the update is applied.
///  - progress [false]: one line per epoch on stderr; on_epoch: called after each epoch.
struct cf_trainer_options {
    cf_loss loss = cf_loss::bpr;
    std::int64_t epochs = 20;
    std::int64_t batch_size = 256;
    std::int64_t negatives = 4;
    std::uint64_t seed = 42;
    int threads = 1;
    dense_optimizer dense = dense_optimizer::adam;
    double dense_lr = 1e-3;
    double weight_decay = 0;
    sparse_optimizer sparse = sparse_optimizer::lazy_adam;
    double sparse_lr = 1e-3;
    double sparse_weight_decay = 0;
    bool log_q = true;
    double temperature = 1;
    bool remove_accidental_hits = true;
    std::string batch_log{};
    bool check_finite = true;
    bool progress = false;
    std::function<void(const cf_epoch_stats&)> on_epoch{};
};

/// The batch log: a little-endian binary file, "XRCFBAT1" then one record per step:
///     int32 kind (0 bpr, 1 bce, 2 in_batch_softmax), int32 epoch (from 1), int32 rows,
///     int32 users[rows], int32 items[rows], then
///       bpr: int32 negatives[rows];  bce: float32 labels[rows];
///       in_batch_softmax: float64 log_q[rows] (all zero without the correction)
/// eval/cf_parity.py reads it.
inline constexpr char cf_batch_log_magic[9] = "XRCFBAT1";

/// Draws items a user never interacted with, uniformly: the draw at (stream, position) is a
/// pure function of them. `seen` is the user's sorted, duplicate-free item list; the r-th
/// unseen item (r uniform in [0, n_items - |seen|)) is found by binary search, one draw
/// per negative, no rejection loop. A user who has seen every item gets item -1.
inline std::int32_t sample_unseen(std::span<const std::int32_t> seen, std::int32_t n_items, const rng_stream& rs,
                                  std::uint64_t position) {
    const auto free = static_cast<std::int64_t>(n_items) - static_cast<std::int64_t>(seen.size());
    if (free <= 0) return -1;
    const auto r = static_cast<std::int64_t>(rs.below(position, static_cast<std::uint64_t>(free)));
    // seen[k] - k counts the unseen items below seen[k]; it never decreases. The r-th unseen
    // item is r plus the number of seen items whose unseen-count is <= r.
    std::size_t lo = 0, hi = seen.size();
    while (lo < hi) {
        const std::size_t mid = (lo + hi) / 2;
        if (static_cast<std::int64_t>(seen[mid]) - static_cast<std::int64_t>(mid) <= r)
            lo = mid + 1;
        else
            hi = mid;
    }
    return static_cast<std::int32_t>(r + static_cast<std::int64_t>(lo));
}

/// Trains a CF model whose parameters live in `store`.
///
/// Per epoch e (from 0): the positives (every (u, i) of the data, CSR order) are shuffled by
/// a Fisher-Yates pass drawn from the stream (seed, e); bpr draws one negative per positive,
/// bce `negatives` per positive (sample_unseen: never an item of the user's training data;
/// negatives of one positive may repeat) and then shuffles all rows; batches of batch_size
/// rows follow in order (the last may be shorter). One step: forward on the train context,
/// the loss, backward, the NaN/Inf check, the dense optimizer on the flat buffer and the
/// sparse optimizer on the touched table rows, zero_grad, reset.
///
/// Determinism: the result depends on the store's seed, options.seed and options.threads,
/// nothing else.
template <class Model, class T = float, class B = cpu<>>
class cf_trainer {
public:
    cf_trainer(const Model& model, param_store<T, B>& store, cf_trainer_options o = {})
        : model_(&model), store_(&store), o_(std::move(o)),
          ctx_(typename train_ctx<T, B>::options{.seed = o_.seed, .threads = o_.threads}) {
        XREC_CHECK(o_.epochs >= 0, "cf_trainer: epochs must be >= 0, got ", o_.epochs);
        XREC_CHECK(o_.batch_size > 0, "cf_trainer: batch_size must be positive, got ", o_.batch_size);
        XREC_CHECK(o_.negatives > 0, "cf_trainer: negatives must be positive, got ", o_.negatives);
        if (o_.loss == cf_loss::in_batch_softmax)
            XREC_CHECK((tower_model<Model, T, B>), "cf_trainer: in_batch_softmax needs a model with user_vectors and "
                                                   "item_vectors (two towers)");
        else
            XREC_CHECK((pair_scorer<Model, T, B>), "cf_trainer: ", cf_loss_name(o_.loss),
                       " needs a model with score(ctx, users, items)");
        make_optimizers();
    }

    /// Trains options.epochs epochs on `data`; returns the stats of every epoch.
    std::vector<cf_epoch_stats> fit(const user_items& data) {
        prepare(data);
        std::vector<cf_epoch_stats> out;
        for (std::int64_t e = 0; e < o_.epochs; ++e) out.push_back(run_epoch(e));
        return out;
    }

    /// Sets up the data (called by fit); then run_epoch(e) trains epoch e (from 0). Lets a
    /// caller evaluate between epochs.
    void prepare(const user_items& data) {
        const std::int64_t users = data.users();
        XREC_CHECK(users > 0 && data.n_items > 0, "cf_trainer: empty data (", users, " users, ", data.n_items, " items)");
        XREC_CHECK(data.offsets.front() == 0 && data.offsets.back() == static_cast<std::int64_t>(data.items.size()),
                   "cf_trainer: offsets must run from 0 to the ", data.items.size(), " items");
        n_items_ = data.n_items;
        pos_user_.clear();
        pos_item_.clear();
        seen_off_.assign(1, 0);
        seen_.clear();
        counts_.assign(static_cast<std::size_t>(n_items_), 0.0);
        for (std::int64_t u = 0; u < users; ++u) {
            const std::int64_t b = data.offsets[static_cast<std::size_t>(u)], e = data.offsets[static_cast<std::size_t>(u + 1)];
            XREC_CHECK(b <= e, "cf_trainer: offsets decrease at user ", u);
            const std::size_t first = seen_.size();
            for (std::int64_t k = b; k < e; ++k) {
                const std::int32_t it = data.items[static_cast<std::size_t>(k)];
                XREC_CHECK(it >= 0 && it < n_items_, "cf_trainer: item ", it, " of user ", u, " outside [0, ", n_items_, ")");
                pos_user_.push_back(static_cast<std::int32_t>(u));
                pos_item_.push_back(it);
                seen_.push_back(it);
                counts_[static_cast<std::size_t>(it)] += 1;
            }
            std::sort(seen_.begin() + static_cast<std::ptrdiff_t>(first), seen_.end());
            seen_.erase(std::unique(seen_.begin() + static_cast<std::ptrdiff_t>(first), seen_.end()), seen_.end());
            seen_off_.push_back(static_cast<std::int64_t>(seen_.size()));
        }
        XREC_CHECK(!pos_user_.empty(), "cf_trainer: the data holds no interaction");
        total_ = static_cast<double>(pos_user_.size());
        if (!o_.batch_log.empty()) {
            log_ = std::make_unique<std::ofstream>(o_.batch_log, std::ios::binary | std::ios::trunc);
            XREC_CHECK(log_->good(), "cf_trainer: cannot write the batch log '", o_.batch_log, "'");
            log_->write(cf_batch_log_magic, 8);
        }
        prepared_ = true;
    }

    /// Trains epoch e (from 0) on the data given to prepare().
    cf_epoch_stats run_epoch(std::int64_t e) {
        XREC_CHECK(prepared_, "cf_trainer: call prepare(data) (or fit) before run_epoch");
        cf_epoch_stats st;
        st.epoch = e + 1;
        const auto t0 = std::chrono::steady_clock::now();
        make_rows(e);
        const auto n = static_cast<std::int64_t>(row_user_.size());
        double loss_sum = 0;
        for (std::int64_t b = 0; b < n; b += o_.batch_size) {
            const std::int64_t r = std::min(o_.batch_size, n - b);
            const double lv = step(b, r, e + 1);
            loss_sum += lv * static_cast<double>(r);
            st.rows += r;
        }
        if (log_) log_->flush();
        st.loss = st.rows ? loss_sum / static_cast<double>(st.rows) : st.loss;
        st.steps = step_;
        st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (o_.progress)
            std::fprintf(stderr, "epoch %lld/%lld %s loss %.5f  %.1fs\n", static_cast<long long>(st.epoch),
                         static_cast<long long>(o_.epochs), cf_loss_name(o_.loss), st.loss, st.seconds);
        if (o_.on_epoch) o_.on_epoch(st);
        return st;
    }

    /// Training frequency of each item (after prepare): what log q is estimated from.
    const std::vector<double>& item_counts() const noexcept { return counts_; }
    std::int64_t global_step() const noexcept { return step_; }
    const cf_trainer_options& options() const noexcept { return o_; }
    train_ctx<T, B>& context() noexcept { return ctx_; }

private:
    // The rows of epoch e: (user, item, third) where third is the negative (bpr), the label
    // (bce) or unused (softmax).
    void make_rows(std::int64_t e) {
        const rng_stream shuf{philox{mix_seed(o_.seed, 0x63665f73ull)}, static_cast<std::uint64_t>(e)};
        const rng_stream negs{philox{mix_seed(o_.seed, 0x63665f6eull)}, static_cast<std::uint64_t>(e)};
        const auto np = static_cast<std::int64_t>(pos_user_.size());
        row_user_.clear();
        row_item_.clear();
        row_third_.clear();
        auto seen_of = [&](std::int32_t u) {
            const auto b = seen_off_[static_cast<std::size_t>(u)], en = seen_off_[static_cast<std::size_t>(u) + 1];
            return std::span<const std::int32_t>(seen_.data() + b, static_cast<std::size_t>(en - b));
        };
        if (o_.loss == cf_loss::bce) {
            const std::int64_t per = 1 + o_.negatives;
            row_user_.resize(static_cast<std::size_t>(np * per));
            row_item_.resize(row_user_.size());
            row_third_.resize(row_user_.size());
            for (std::int64_t k = 0; k < np; ++k) {
                const std::int32_t u = pos_user_[static_cast<std::size_t>(k)];
                const auto base = static_cast<std::size_t>(k * per);
                row_user_[base] = u;
                row_item_[base] = pos_item_[static_cast<std::size_t>(k)];
                row_third_[base] = 1;
                for (std::int64_t j = 1; j < per; ++j) {
                    row_user_[base + static_cast<std::size_t>(j)] = u;
                    row_item_[base + static_cast<std::size_t>(j)] =
                        sample_unseen(seen_of(u), n_items_, negs, static_cast<std::uint64_t>(k * per + j));
                    row_third_[base + static_cast<std::size_t>(j)] = 0;
                }
            }
            shuffle(shuf);
            return;
        }
        row_user_ = pos_user_;
        row_item_ = pos_item_;
        row_third_.assign(row_user_.size(), 0);
        shuffle(shuf);
        if (o_.loss == cf_loss::bpr)
            for (std::int64_t k = 0; k < np; ++k)
                row_third_[static_cast<std::size_t>(k)] =
                    sample_unseen(seen_of(row_user_[static_cast<std::size_t>(k)]), n_items_, negs, static_cast<std::uint64_t>(k));
    }

    void shuffle(const rng_stream& rs) {
        const auto n = static_cast<std::int64_t>(row_user_.size());
        for (std::int64_t k = n - 1; k > 0; --k) {
            const auto j = static_cast<std::size_t>(rs.below(static_cast<std::uint64_t>(k), static_cast<std::uint64_t>(k + 1)));
            const auto kk = static_cast<std::size_t>(k);
            std::swap(row_user_[kk], row_user_[j]);
            std::swap(row_item_[kk], row_item_[j]);
            std::swap(row_third_[kk], row_third_[j]);
        }
    }

    double step(std::int64_t begin, std::int64_t rows, std::int64_t epoch) {
        users_.resize(static_cast<std::size_t>(rows));
        items_.resize(static_cast<std::size_t>(rows));
        for (std::int64_t r = 0; r < rows; ++r) {
            users_[static_cast<std::size_t>(r)] = row_user_[static_cast<std::size_t>(begin + r)];
            items_[static_cast<std::size_t>(r)] = row_item_[static_cast<std::size_t>(begin + r)];
        }
        const std::span<const std::int64_t> us(users_), is(items_);
        const std::int32_t* third = row_third_.data() + begin;
        try {
            var<T> loss;
            if (o_.loss == cf_loss::in_batch_softmax) {
                if constexpr (tower_model<Model, T, B>) {
                    lq_.assign(static_cast<std::size_t>(rows), T(0));
                    if (o_.log_q) loss::log_q_from_counts<T>(is, counts_, total_, std::span<T>(lq_));
                    loss::in_batch_softmax_options<T> lo{.temperature = o_.temperature, .log_q = std::span<const T>(lq_)};
                    if (o_.remove_accidental_hits) lo.item_ids = is;
                    loss = loss::in_batch_softmax(ctx_, model_->user_vectors(ctx_, us), model_->item_vectors(ctx_, is), lo);
                }
            } else if constexpr (pair_scorer<Model, T, B>) {
                if (o_.loss == cf_loss::bpr) {
                    negs_.resize(static_cast<std::size_t>(rows));
                    for (std::int64_t r = 0; r < rows; ++r) negs_[static_cast<std::size_t>(r)] = third[r];
                    const var<T> pos = model_->score(ctx_, us, is);
                    const var<T> neg = model_->score(ctx_, us, std::span<const std::int64_t>(negs_));
                    loss = loss::bpr(ctx_, pos, neg);
                } else {
                    labels_.resize(static_cast<std::size_t>(rows));
                    for (std::int64_t r = 0; r < rows; ++r) labels_[static_cast<std::size_t>(r)] = static_cast<T>(third[r]);
                    const var<T> logits = model_->score(ctx_, us, is);
                    loss = loss::bce_with_logits(
                        ctx_, logits, ctx_.input(tensor_view<const T>{labels_.data(), shape{rows}}));
                }
            }
            const double lv = static_cast<double>(loss.item());
            ++step_;
            if (log_) write_batch(epoch, begin, rows);
            ctx_.backward(loss);
            if (o_.check_finite) check_gradients(lv, epoch);
            opt_.step();
            store_->zero_grad();
            ctx_.reset();
            return lv;
        } catch (...) {
            store_->zero_grad();
            ctx_.reset();
            throw;
        }
    }

    void write_batch(std::int64_t epoch, std::int64_t begin, std::int64_t rows) {
        const std::int32_t head[3] = {static_cast<std::int32_t>(o_.loss), static_cast<std::int32_t>(epoch),
                                      static_cast<std::int32_t>(rows)};
        log_->write(reinterpret_cast<const char*>(head), sizeof head);
        const auto bytes = static_cast<std::streamsize>(rows * 4);
        log_->write(reinterpret_cast<const char*>(row_user_.data() + begin), bytes);
        log_->write(reinterpret_cast<const char*>(row_item_.data() + begin), bytes);
        if (o_.loss == cf_loss::bpr) {
            log_->write(reinterpret_cast<const char*>(row_third_.data() + begin), bytes);
        } else if (o_.loss == cf_loss::bce) {
            for (std::int64_t r = 0; r < rows; ++r) {
                const float y = static_cast<float>(row_third_[static_cast<std::size_t>(begin + r)]);
                log_->write(reinterpret_cast<const char*>(&y), 4);
            }
        } else {
            for (std::int64_t r = 0; r < rows; ++r) {
                const double q = o_.log_q ? static_cast<double>(lq_[static_cast<std::size_t>(r)]) : 0.0;
                log_->write(reinterpret_cast<const char*>(&q), 8);
            }
        }
        XREC_CHECK(log_->good(), "cf_trainer: writing the batch log '", o_.batch_log, "' failed");
    }


    void make_optimizers() {
        opt_.make(*store_,
                  optimizer_settings{o_.dense, o_.dense_lr, o_.weight_decay, 0.0, o_.sparse, o_.sparse_lr,
                                     o_.sparse_weight_decay},
                  ctx_.pool());
    }

    static const char* value_str(double v) { return std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf"; }

    // Loss and gradients, before any update: the first non-finite value stops training.
    void check_gradients(double loss, std::int64_t epoch) {
        const std::string at = "cf_trainer: non-finite value at step " + std::to_string(step_) + " (epoch " +
                               std::to_string(epoch) + "): ";
        XREC_CHECK(std::isfinite(loss), at, "the loss is ", value_str(loss), "; nothing was applied");
        const T* g = store_->grads();
        for (const auto& en : store_->dense_entries())
            for (std::int64_t i = 0; i < en.s.numel(); ++i)
                XREC_CHECK(std::isfinite(g[en.offset + i]), at, "the gradient of parameter '", en.name, "' ",
                           en.s.str(), " element ", i, " is ", value_str(static_cast<double>(g[en.offset + i])),
                           "; nothing was applied");
        for (std::int64_t ti = 0; ti < store_->table_count(); ++ti) {
            const auto& t = store_->table(ti);
            const T* r = t.grad.rows.data();
            for (std::int64_t k = 0; k < t.grad.count() * t.dim; ++k)
                XREC_CHECK(std::isfinite(r[k]), at, "the gradient of table '", t.name, "' row ",
                           t.grad.ids[static_cast<std::size_t>(k / t.dim)], " is ", value_str(static_cast<double>(r[k])),
                           "; nothing was applied");
        }
    }

    const Model* model_;
    param_store<T, B>* store_;
    cf_trainer_options o_;
    train_ctx<T, B> ctx_;
    optimizer_set<T, B> opt_;
    bool prepared_ = false;
    std::int32_t n_items_ = 0;
    double total_ = 0;
    std::vector<std::int32_t> pos_user_, pos_item_, seen_, row_user_, row_item_, row_third_;
    std::vector<std::int64_t> seen_off_, users_, items_, negs_;
    std::vector<double> counts_;
    std::vector<T> labels_, lq_;
    std::unique_ptr<std::ofstream> log_;
    std::int64_t step_ = 0;
};

/// Scores `items` for one user with a pair-scoring model on an infer_ctx (what the ranking
/// evaluation calls per user): out[k] = score(user, items[k]). `ids` is reusable scratch.
template <class Model, class T, class B>
void score_user_items(const Model& m, infer_ctx<T, B>& ctx, std::int64_t user, std::span<const std::int32_t> items,
                      std::span<float> out, std::vector<std::int64_t>& ids) {
    const std::size_t n = items.size();
    XREC_CHECK(out.size() == n, "score_user_items: ", n, " items but room for ", out.size(), " scores");
    ids.resize(2 * n);
    for (std::size_t k = 0; k < n; ++k) {
        ids[k] = user;
        ids[n + k] = items[k];
    }
    ctx.reset();
    const var<T> s = m.score(ctx, std::span<const std::int64_t>(ids.data(), n), std::span<const std::int64_t>(ids.data() + n, n));
    for (std::size_t k = 0; k < n; ++k) out[k] = static_cast<float>(s.data[k]);
}

}  // namespace xrec::train
