#pragma once
// Training loops of the sequential recommenders: sasrec over users' training sequences and
// gru4rec over session-parallel mini-batches. Both use torch.optim.Adam on the dense
// parameters (and lazy Adam on any embedding table), stop on a non-finite loss or gradient
// naming the epoch and step, and can append every batch they use to a binary log that the
// PyTorch peer replays (eval/seq_parity.py).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/loss/bpr_max.hpp"
#include "xrec/loss/softmax_cross_entropy.hpp"
#include "xrec/models/gru4rec.hpp"
#include "xrec/models/sasrec.hpp"
#include "xrec/optim/adam.hpp"
#include "xrec/optim/lazy_adam.hpp"

namespace xrec::train {

/// Sequences in CSR form: row r is items[offsets[r] .. offsets[r + 1]), oldest first, item
/// ids 0-based (data::sequences gives these spans).
struct seq_rows {
    std::span<const std::int64_t> offsets;
    std::span<const std::int32_t> items;
    std::int64_t rows() const { return offsets.empty() ? 0 : static_cast<std::int64_t>(offsets.size()) - 1; }
    std::span<const std::int32_t> row(std::int64_t r) const {
        const auto b = static_cast<std::size_t>(offsets[static_cast<std::size_t>(r)]);
        const auto e = static_cast<std::size_t>(offsets[static_cast<std::size_t>(r) + 1]);
        return items.subspan(b, e - b);
    }
};

/// Options shared by both trainers (defaults in brackets).
///  - epochs [1], batch_size [128] (users per sasrec batch; session slots for gru4rec).
///  - seed [42]: the context's dropout streams, the epoch shuffle and the negative samples.
///  - threads [1]: the context's pool (shared with the optimizers).
///  - lr [1e-3], beta2 [0.999] (the SASRec reference uses 0.98), weight_decay [0]:
///    torch.optim.Adam on the dense parameters; lazy Adam with the same settings on tables.
///  - check_finite [true]: stop with xrec::error at a non-finite loss or dense gradient.
///  - batch_log [""]: when set, every batch is appended to this file (format below).
///  - on_epoch: called after every epoch with (epoch from 1, mean training loss).
///  - length_buckets [0: off] (sasrec): cut the shuffled users into chunks of this many
///    batches, sort each chunk by training length, batch it, and shuffle the batches, so a
///    batch holds users of similar length and skips more padding columns (sasrec's cost
///    follows the longest sequence of a batch). Still a pure function of (seed, epoch).
///
/// Batch log (little-endian int64 throughout): header "XRSEQLOG" (8 bytes); then per batch
///   sasrec:  1, B, T, ids [B T], targets [B T], negatives [B T] (all -1 for softmax CE)
///   gru4rec: 2, B, S, input [B], target [B], from [B], negatives [S]
struct seq_train_options {
    std::int64_t epochs = 1;
    std::int64_t batch_size = 128;
    std::uint64_t seed = 42;
    int threads = 1;
    double lr = 1e-3;
    double beta2 = 0.999;
    double weight_decay = 0;
    bool check_finite = true;
    std::string batch_log;
    std::function<void(std::int64_t, double)> on_epoch;
    std::int64_t length_buckets = 0;
};

namespace detail {

/// Adam on the dense buffer plus lazy Adam on the tables, the NaN checks and the batch log:
/// what both trainers share.
template <class T, class B>
class seq_trainer_base {
public:
    seq_trainer_base(param_store<T, B>& s, const seq_train_options& o)
        : store_(&s), o_(o), ctx_(typename train_ctx<T, B>::options{o.seed, o.threads, 0}),
          dense_(s, optim::adam_options{.lr = o.lr, .beta2 = o.beta2, .weight_decay = o.weight_decay}),
          sparse_(s, optim::lazy_adam_options{.lr = o.lr, .beta2 = o.beta2, .weight_decay = o.weight_decay}) {
        XREC_CHECK(o.epochs >= 0 && o.batch_size > 0, "seq_trainer: needs epochs >= 0 and batch_size > 0, got ",
                   o.epochs, " and ", o.batch_size);
        dense_.set_pool(ctx_.pool());
        sparse_.set_pool(ctx_.pool());
        if (!o.batch_log.empty()) {
            log_ = std::make_unique<std::ofstream>(o.batch_log, std::ios::binary | std::ios::trunc);
            XREC_CHECK(log_->good(), "seq_trainer: cannot write the batch log '", o.batch_log, "'");
            log_->write("XRSEQLOG", 8);
        }
    }

    train_ctx<T, B>& ctx() noexcept { return ctx_; }
    const seq_train_options& options() const noexcept { return o_; }
    std::int64_t steps() const noexcept { return step_; }

protected:
    // backward, checks, update, reset; returns the loss value.
    double finish_step(const var<T>& loss, std::int64_t epoch) {
        try {
            const double lv = static_cast<double>(loss.item());
            ++step_;
            if (o_.check_finite)
                XREC_CHECK(std::isfinite(lv), "seq_trainer: non-finite loss ", lv, " at epoch ", epoch, " step ", step_);
            ctx_.backward(loss);
            if (o_.check_finite) check_grads(epoch);
            dense_.step();
            if (store_->table_count() > 0) sparse_.step();
            store_->zero_grad();
            ctx_.reset();
            return lv;
        } catch (...) {
            store_->zero_grad();
            ctx_.reset();
            throw;
        }
    }
    void log_values(std::span<const std::int64_t> v) {
        if (log_) log_->write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * 8));
    }
    void log_value(std::int64_t v) { log_values(std::span<const std::int64_t>(&v, 1)); }
    void flush_log() {
        if (log_) log_->flush();
    }

    param_store<T, B>* store_;
    seq_train_options o_;
    train_ctx<T, B> ctx_;
    optim::adam<T, B> dense_;
    optim::lazy_adam<T, B> sparse_;
    std::unique_ptr<std::ofstream> log_;
    std::int64_t step_ = 0;

private:
    void check_grads(std::int64_t epoch) const {
        const T* g = store_->grads();
        for (const auto& e : store_->dense_entries())
            for (std::int64_t i = 0; i < e.s.numel(); ++i)
                XREC_CHECK(std::isfinite(static_cast<double>(g[e.offset + i])), "seq_trainer: non-finite gradient at epoch ",
                           epoch, " step ", step_, ": parameter '", e.name, "' ", e.s.str(), " element ", i);
    }
};

/// A permutation of 0 .. n-1 that is a pure function of (seed, epoch) (Fisher-Yates).
inline std::vector<std::int64_t> epoch_order(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
    std::vector<std::int64_t> p(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = i;
    const rng_stream r{philox{mix_seed(seed, 0x5368u)}, static_cast<std::uint64_t>(epoch)};
    for (std::int64_t i = n - 1; i > 0; --i) {
        const auto j = static_cast<std::int64_t>(r.below(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(i + 1)));
        std::swap(p[static_cast<std::size_t>(i)], p[static_cast<std::size_t>(j)]);
    }
    return p;
}

}  // namespace detail

/// One sasrec training batch: B sequences of max_len T, row-major [B, T] each.
struct sasrec_batch {
    std::int64_t batch = 0, len = 0;
    std::vector<std::int64_t> users, ids, targets, negatives;
};

/// Which loss sasrec trains with.
enum class sasrec_loss { bce, softmax_ce };

/// Trains sasrec on users' training sequences (the reference code's sampler, without its
/// randomness in the user choice). An epoch visits every user with at least two training
/// items once, in an order that is a pure function of (seed, epoch), in batches of
/// batch_size users. A user with training items s_0 .. s_{n-1} gives the row
///   ids = s_0 .. s_{n-2}, targets = s_1 .. s_{n-1}   (the last T of each, left-padded, -1)
/// and, for bce, one negative per position drawn uniformly from the items the user never
/// had in training, a pure function of (seed, epoch, user).
template <class T = float, class B = cpu<>>
class sasrec_trainer : public detail::seq_trainer_base<T, B> {
    using base = detail::seq_trainer_base<T, B>;

public:
    sasrec_trainer(const models::sasrec<T, B>& m, param_store<T, B>& s, seq_train_options o, sasrec_loss l)
        : base(s, o), model_(&m), loss_(l) {}

    /// Fills `b` with the rows of `users` (see the class doc); negatives for bce only.
    void make_batch(seq_rows train, std::span<const std::int64_t> users, std::int64_t epoch, sasrec_batch& b) const {
        const std::int64_t L = model_->max_len(), n = model_->n_items();
        b.batch = static_cast<std::int64_t>(users.size());
        b.len = L;
        b.users.assign(users.begin(), users.end());
        const auto sz = static_cast<std::size_t>(b.batch * L);
        b.ids.assign(sz, -1);
        b.targets.assign(sz, -1);
        b.negatives.assign(sz, -1);
        std::vector<std::int32_t> seen;
        for (std::int64_t k = 0; k < b.batch; ++k) {
            const std::int64_t u = users[static_cast<std::size_t>(k)];
            const auto s = train.row(u);
            const auto len = static_cast<std::int64_t>(s.size());
            if (len < 2) continue;
            const std::int64_t m = std::min<std::int64_t>(len - 1, L);
            std::int64_t* ids = b.ids.data() + k * L;
            std::int64_t* tg = b.targets.data() + k * L;
            std::int64_t* ng = b.negatives.data() + k * L;
            for (std::int64_t i = 0; i < m; ++i) {
                ids[L - m + i] = s[static_cast<std::size_t>(len - 1 - m + i)];
                tg[L - m + i] = s[static_cast<std::size_t>(len - m + i)];
            }
            if (loss_ != sasrec_loss::bce) continue;
            seen.assign(s.begin(), s.end());
            std::sort(seen.begin(), seen.end());
            const rng_stream r{philox{mix_seed(this->o_.seed, 0x6e6567u)},
                               static_cast<std::uint64_t>(epoch) << 32 | static_cast<std::uint64_t>(u)};
            std::uint64_t c = 0;
            for (std::int64_t i = L - m; i < L; ++i) {
                std::int32_t x;
                do {
                    x = static_cast<std::int32_t>(r.below(c++, static_cast<std::uint64_t>(n)));
                } while (std::binary_search(seen.begin(), seen.end(), x) &&
                         static_cast<std::int64_t>(seen.size()) < n);
                ng[i] = x;
            }
        }
    }

    /// One optimisation step on b; returns the loss.
    double step(const sasrec_batch& b, std::int64_t epoch = 0) {
        this->log_value(1);
        this->log_value(b.batch);
        this->log_value(b.len);
        this->log_values(b.ids);
        this->log_values(b.targets);
        this->log_values(b.negatives);
        auto& ctx = this->ctx_;
        ctx.set_training(true);
        const var<T> l = loss_ == sasrec_loss::bce ? model_->bce_loss(ctx, b.ids, b.targets, b.negatives)
                                                   : model_->ce_loss(ctx, b.ids, b.targets);
        return this->finish_step(l, epoch);
    }

    /// One epoch (from 1); returns the mean batch loss.
    double train_epoch(seq_rows train, std::int64_t epoch) {
        std::vector<std::int64_t> users;
        for (std::int64_t u : detail::epoch_order(train.rows(), this->o_.seed, epoch))
            if (train.row(u).size() >= 2) users.push_back(u);
        const auto bs = static_cast<std::size_t>(this->o_.batch_size);
        std::vector<std::size_t> starts;  // batch i is users[starts[i] .. starts[i] + bs)
        for (std::size_t i = 0; i < users.size(); i += bs) starts.push_back(i);
        if (this->o_.length_buckets > 0) {
            const std::size_t chunk = bs * static_cast<std::size_t>(this->o_.length_buckets);
            for (std::size_t c = 0; c < users.size(); c += chunk) {
                const auto e = users.begin() + static_cast<std::ptrdiff_t>(std::min(users.size(), c + chunk));
                std::stable_sort(users.begin() + static_cast<std::ptrdiff_t>(c), e, [&](std::int64_t a, std::int64_t b) {
                    return train.row(a).size() < train.row(b).size();
                });
            }
            const auto perm = detail::epoch_order(static_cast<std::int64_t>(starts.size()), this->o_.seed + 1, epoch);
            std::vector<std::size_t> shuffled(starts.size());
            for (std::size_t i = 0; i < starts.size(); ++i) shuffled[i] = starts[static_cast<std::size_t>(perm[i])];
            starts = std::move(shuffled);
        }
        sasrec_batch b;
        double sum = 0;
        std::int64_t nb = 0;
        for (std::size_t i : starts) {
            const std::size_t e = std::min(users.size(), i + bs);
            make_batch(train, std::span<const std::int64_t>(users.data() + i, e - i), epoch, b);
            sum += step(b, epoch);
            ++nb;
        }
        this->flush_log();
        return nb ? sum / static_cast<double>(nb) : 0.0;
    }

    /// options.epochs epochs; returns the mean loss of each.
    std::vector<double> fit(seq_rows train) {
        std::vector<double> out;
        for (std::int64_t e = 1; e <= this->o_.epochs; ++e) {
            out.push_back(train_epoch(train, e));
            if (this->o_.on_epoch) this->o_.on_epoch(e, out.back());
        }
        return out;
    }

private:
    const models::sasrec<T, B>* model_;
    sasrec_loss loss_;
};

/// One step of session-parallel mini-batching: row i holds a session's click input[i] and
/// its next click target[i]; from[i] is the row of the previous step whose state it
/// continues, or -1 when its session starts here (zero state).
struct session_step {
    std::vector<std::int64_t> input, target, from, session;
};

/// Session-parallel mini-batches (Hidasi et al. 2016): `slots` sessions advance together
/// one click per step; when a session has no next click left, its slot takes the next
/// session in `order` and its state is reset; when none is left the slot is dropped (the
/// batch shrinks, keeping the other rows in order), as the official GRU4Rec does. Sessions
/// with fewer than two clicks are skipped.
class session_parallel {
public:
    session_parallel(seq_rows sessions, std::int64_t slots, std::vector<std::int64_t> order)
        : s_(sessions), order_(std::move(order)) {
        XREC_CHECK(slots > 0, "session_parallel: needs slots > 0, got ", slots);
        for (std::int64_t i = 0; i < slots; ++i) {
            slot sl;
            if (!take(sl)) break;
            sl.from = -1;
            active_.push_back(sl);
        }
    }

    /// Fills the next step; false when every session is done.
    bool next(session_step& st) {
        if (active_.empty()) return false;
        const auto n = active_.size();
        st.input.resize(n);
        st.target.resize(n);
        st.from.resize(n);
        st.session.resize(n);
        for (std::size_t i = 0; i < n; ++i) {
            const auto& a = active_[i];
            st.input[i] = s_.items[static_cast<std::size_t>(a.pos)];
            st.target[i] = s_.items[static_cast<std::size_t>(a.pos + 1)];
            st.from[i] = a.from;
            st.session[i] = a.session;
        }
        std::vector<slot> nx;
        nx.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            slot a = active_[i];
            ++a.pos;
            a.from = static_cast<std::int64_t>(i);
            if (a.pos + 1 >= s_.offsets[static_cast<std::size_t>(a.session) + 1]) {
                if (!take(a)) continue;
                a.from = -1;
            }
            nx.push_back(a);
        }
        active_ = std::move(nx);
        return true;
    }

private:
    struct slot {
        std::int64_t session = 0, pos = 0, from = -1;
    };
    bool take(slot& sl) {
        while (next_ < order_.size()) {
            const std::int64_t q = order_[next_++];
            if (s_.offsets[static_cast<std::size_t>(q) + 1] - s_.offsets[static_cast<std::size_t>(q)] < 2) continue;
            sl.session = q;
            sl.pos = s_.offsets[static_cast<std::size_t>(q)];
            return true;
        }
        return false;
    }
    seq_rows s_;
    std::vector<std::int64_t> order_;
    std::size_t next_ = 0;
    std::vector<slot> active_;
};

/// Which loss gru4rec trains with.
enum class gru4rec_loss { bpr_max, cross_entropy };

/// gru4rec's training settings (GRU4Rec's names in brackets).
///  - loss [bpr_max]; bpreg [1.0] (bpreg): BPR-max's score regularisation.
///  - n_sample [2048] (n_sample): negatives shared by the whole step, drawn with probability
///    proportional to popularity^sample_alpha [0: uniform] (sample_alpha), popularity
///    counted over the training clicks; added to the batch's own targets (in-batch
///    negatives). Row i's positive is column i.
///  - shuffle [false]: sessions in file order (GRU4Rec's, by start time) or in an order that
///    is a pure function of (seed, epoch).
struct gru4rec_train_options {
    gru4rec_loss loss = gru4rec_loss::bpr_max;
    double bpreg = 1.0;
    std::int64_t n_sample = 2048;
    double sample_alpha = 0;
    bool shuffle = false;
};

/// Trains gru4rec with session-parallel mini-batches and one-step truncated backpropagation
/// (as GRU4Rec: the carried state is a constant input to the next step).
template <class T = float, class B = cpu<>>
class gru4rec_trainer : public detail::seq_trainer_base<T, B> {
    using base = detail::seq_trainer_base<T, B>;

public:
    gru4rec_trainer(const models::gru4rec<T, B>& m, param_store<T, B>& s, seq_train_options o, gru4rec_train_options g)
        : base(s, o), model_(&m), g_(g) {
        XREC_CHECK(g.n_sample >= 0 && g.bpreg >= 0, "gru4rec_trainer: needs n_sample >= 0 and bpreg >= 0");
    }

    /// The S shared negatives of a step: a pure function of (seed, epoch, step).
    void sample_negatives(std::int64_t epoch, std::int64_t step, std::vector<std::int64_t>& out) const {
        out.resize(static_cast<std::size_t>(g_.n_sample));
        const rng_stream r{philox{mix_seed(this->o_.seed, 0x67727534u)},
                           static_cast<std::uint64_t>(epoch) << 40 | static_cast<std::uint64_t>(step)};
        const auto n = static_cast<std::uint64_t>(model_->n_items());
        for (std::size_t i = 0; i < out.size(); ++i) {
            if (cdf_.empty()) {
                out[i] = static_cast<std::int64_t>(r.below(i, n));
            } else {
                const double u = r.uniform(i) * cdf_.back();
                out[i] = std::min<std::int64_t>(static_cast<std::int64_t>(n) - 1,
                                                std::upper_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
            }
        }
    }

    /// One step: the state for st (from the previous step's, zeros where from = -1), the
    /// loss over [targets, negatives], the update. Returns the loss.
    double step(const session_step& st, std::span<const std::int64_t> negatives, std::int64_t epoch = 0) {
        const auto nb = static_cast<std::int64_t>(st.input.size());
        const auto ns = static_cast<std::int64_t>(negatives.size());
        this->log_value(2);
        this->log_value(nb);
        this->log_value(ns);
        this->log_values(st.input);
        this->log_values(st.target);
        this->log_values(st.from);
        this->log_values(negatives);
        const std::int64_t L = model_->layers(), H = model_->hidden();
        h0_.assign(static_cast<std::size_t>(L * nb * H), T(0));
        for (std::int64_t l = 0; l < L; ++l)
            for (std::int64_t b = 0; b < nb; ++b) {
                const std::int64_t f = st.from[static_cast<std::size_t>(b)];
                if (f < 0) continue;
                std::copy_n(h_.data() + (l * prev_b_ + f) * H, H, h0_.data() + (l * nb + b) * H);
            }
        auto& ctx = this->ctx_;
        ctx.set_training(true);
        const auto r = model_->step(ctx, st.input, ctx.input(tensor_view<const T>{h0_.data(), shape{L, nb, H}}));
        cand_.assign(st.target.begin(), st.target.end());
        cand_.insert(cand_.end(), negatives.begin(), negatives.end());
        tgt_.resize(static_cast<std::size_t>(nb));
        for (std::int64_t b = 0; b < nb; ++b) tgt_[static_cast<std::size_t>(b)] = b;
        const var<T> sc = model_->scores(ctx, r.out, cand_);
        const var<T> l = g_.loss == gru4rec_loss::bpr_max ? loss::bpr_max(ctx, sc, tgt_, g_.bpreg)
                                                           : loss::softmax_cross_entropy(ctx, sc, tgt_);
        h_.assign(r.h.data, r.h.data + L * nb * H);  // before reset: the arena is rewound
        prev_b_ = nb;
        return this->finish_step(l, epoch);
    }

    /// One epoch (from 1) over `sessions`; returns the mean step loss.
    double train_epoch(seq_rows sessions, std::int64_t epoch) {
        std::vector<std::int64_t> order;
        if (g_.shuffle)
            order = detail::epoch_order(sessions.rows(), this->o_.seed, epoch);
        else
            for (std::int64_t i = 0; i < sessions.rows(); ++i) order.push_back(i);
        session_parallel sp(sessions, this->o_.batch_size, std::move(order));
        session_step st;
        std::vector<std::int64_t> neg;
        double sum = 0;
        std::int64_t k = 0;
        while (sp.next(st)) {
            sample_negatives(epoch, k, neg);
            sum += step(st, neg, epoch);
            ++k;
        }
        this->flush_log();
        return k ? sum / static_cast<double>(k) : 0.0;
    }

    /// options.epochs epochs over `sessions`; the sampling popularity is counted on them.
    std::vector<double> fit(seq_rows sessions) {
        set_popularity(sessions);
        std::vector<double> out;
        for (std::int64_t e = 1; e <= this->o_.epochs; ++e) {
            out.push_back(train_epoch(sessions, e));
            if (this->o_.on_epoch) this->o_.on_epoch(e, out.back());
        }
        return out;
    }

    /// Counts item popularity on `sessions` for sampling (no effect when sample_alpha = 0).
    void set_popularity(seq_rows sessions) {
        cdf_.clear();
        if (g_.sample_alpha == 0) return;
        std::vector<double> cnt(static_cast<std::size_t>(model_->n_items()), 0.0);
        for (std::int32_t i : sessions.items) cnt[static_cast<std::size_t>(i)] += 1;
        double acc = 0;
        for (double c : cnt) {
            acc += std::pow(c, g_.sample_alpha);
            cdf_.push_back(acc);
        }
    }

private:
    const models::gru4rec<T, B>* model_;
    gru4rec_train_options g_;
    std::vector<T> h_, h0_;
    std::int64_t prev_b_ = 0;
    std::vector<std::int64_t> cand_, tgt_;
    std::vector<double> cdf_;
};

}  // namespace xrec::train
