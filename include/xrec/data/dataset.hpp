#pragma once
// Encoded rows in memory (ctr_dataset) and the batcher that cuts them into mini-batches.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <span>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/rng.hpp"

namespace xrec::data {

/// Encoded rows of a feature_layout, stored by column: what a schema produces from raw
/// records, what the synthetic generator produces directly, and what a batcher serves.
///  - sparse   N x num_sparse global ids
///  - dense    N x num_dense values
///  - per sequence field: values (global ids), offsets (N+1), and weights (empty unless the
///    field is weighted)
///  - labels   N x num_tasks
///  - groups   N (the user of each row; -1 where unknown)
template <class T>
class ctr_dataset {
public:
    struct sequence_column {
        std::vector<std::int64_t> values;
        std::vector<std::int64_t> offsets{0};
        std::vector<T> weights;
    };

    ctr_dataset() = default;
    explicit ctr_dataset(feature_layout layout) : layout_(std::move(layout)), seqs_(layout_.sequences.size()) {}

    const feature_layout& layout() const noexcept { return layout_; }
    std::int64_t size() const noexcept { return n_; }
    bool empty() const noexcept { return n_ == 0; }

    /// Appends one row. `sequences` has one span per sequence field (ids oldest first; only the
    /// newest max_len are kept when max_len > 0); `sequence_weights` is empty or parallel to it.
    void append(std::span<const std::int64_t> sparse, std::span<const T> dense,
                std::span<const std::span<const std::int64_t>> sequences, std::span<const T> labels,
                std::int64_t group = -1, std::span<const std::span<const T>> sequence_weights = {}) {
        XREC_CHECK(static_cast<std::int64_t>(sparse.size()) == layout_.num_sparse() &&
                       static_cast<std::int64_t>(dense.size()) == layout_.num_dense() &&
                       static_cast<std::int64_t>(sequences.size()) == layout_.num_sequences() &&
                       static_cast<std::int64_t>(labels.size()) == layout_.num_tasks(),
                   "ctr_dataset::append: row with ", sparse.size(), " sparse, ", dense.size(), " dense, ",
                   sequences.size(), " sequence fields and ", labels.size(), " labels; the layout has ",
                   layout_.num_sparse(), ", ", layout_.num_dense(), ", ", layout_.num_sequences(), " and ",
                   layout_.num_tasks());
        sparse_.insert(sparse_.end(), sparse.begin(), sparse.end());
        dense_.insert(dense_.end(), dense.begin(), dense.end());
        labels_.insert(labels_.end(), labels.begin(), labels.end());
        groups_.push_back(group);
        for (std::size_t k = 0; k < sequences.size(); ++k) {
            auto ids = sequences[k];
            const std::int64_t keep = layout_.sequences[k].max_len;
            std::size_t skip = keep > 0 && static_cast<std::int64_t>(ids.size()) > keep ? ids.size() - static_cast<std::size_t>(keep) : 0;
            auto& c = seqs_[k];
            c.values.insert(c.values.end(), ids.begin() + static_cast<std::ptrdiff_t>(skip), ids.end());
            c.offsets.push_back(static_cast<std::int64_t>(c.values.size()));
            if (layout_.sequences[k].weighted) {
                XREC_CHECK(k < sequence_weights.size() && sequence_weights[k].size() == ids.size(),
                           "ctr_dataset::append: weighted sequence field '", layout_.sequences[k].name, "' needs ",
                           ids.size(), " weights");
                auto w = sequence_weights[k];
                c.weights.insert(c.weights.end(), w.begin() + static_cast<std::ptrdiff_t>(skip), w.end());
            }
        }
        ++n_;
    }

    /// Appends row `i` of `other` (same layout).
    void append_row_of(const ctr_dataset& other, std::int64_t i) {
        std::vector<std::span<const std::int64_t>> s(seqs_.size());
        std::vector<std::span<const T>> w(seqs_.size());
        for (std::size_t k = 0; k < s.size(); ++k) {
            s[k] = other.sequence(static_cast<std::int64_t>(k), i);
            w[k] = other.sequence_weights(static_cast<std::int64_t>(k), i);
        }
        append(other.sparse_row(i), other.dense_row(i), s, other.label_row(i), other.group(i), w);
    }

    /// The rows listed in `rows`, in that order (for splits and subsets).
    ctr_dataset subset(std::span<const std::int64_t> rows) const {
        ctr_dataset out(layout_);
        out.reserve(static_cast<std::int64_t>(rows.size()));
        for (auto r : rows) {
            XREC_CHECK(r >= 0 && r < n_, "ctr_dataset::subset: row ", r, " of ", n_);
            out.append_row_of(*this, r);
        }
        return out;
    }

    void reserve(std::int64_t rows) {
        const auto n = static_cast<std::size_t>(rows);
        sparse_.reserve(n * sparse_width());
        dense_.reserve(n * dense_width());
        labels_.reserve(n * task_width());
        groups_.reserve(n);
        for (auto& c : seqs_) c.offsets.reserve(n + 1);
    }

    std::span<const std::int64_t> sparse_row(std::int64_t i) const { return {sparse_.data() + i * layout_.num_sparse(), sparse_width()}; }
    std::span<const T> dense_row(std::int64_t i) const { return {dense_.data() + i * layout_.num_dense(), dense_width()}; }
    std::span<const T> label_row(std::int64_t i) const { return {labels_.data() + i * layout_.num_tasks(), task_width()}; }
    T label(std::int64_t i, std::int64_t task = 0) const { return labels_[static_cast<std::size_t>(i * layout_.num_tasks() + task)]; }
    std::int64_t group(std::int64_t i) const { return groups_[static_cast<std::size_t>(i)]; }
    std::span<const std::int64_t> sequence(std::int64_t k, std::int64_t i) const {
        const auto& c = seqs_[static_cast<std::size_t>(k)];
        const auto b = c.offsets[static_cast<std::size_t>(i)], e = c.offsets[static_cast<std::size_t>(i + 1)];
        return {c.values.data() + b, static_cast<std::size_t>(e - b)};
    }
    std::span<const T> sequence_weights(std::int64_t k, std::int64_t i) const {
        const auto& c = seqs_[static_cast<std::size_t>(k)];
        if (c.weights.empty()) return {};
        const auto b = c.offsets[static_cast<std::size_t>(i)], e = c.offsets[static_cast<std::size_t>(i + 1)];
        return {c.weights.data() + b, static_cast<std::size_t>(e - b)};
    }

    /// Whole columns (row-major), for writers and tests.
    const std::vector<std::int64_t>& sparse_column() const noexcept { return sparse_; }
    const std::vector<T>& dense_column() const noexcept { return dense_; }
    const std::vector<T>& label_column() const noexcept { return labels_; }
    const std::vector<std::int64_t>& group_column() const noexcept { return groups_; }
    const sequence_column& sequence_column_of(std::int64_t k) const { return seqs_[static_cast<std::size_t>(k)]; }

    /// The same rows with dense values, labels and sequence weights converted to U (a float
    /// dataset for a double-precision model, as the float64 parity runs need).
    template <class U>
    ctr_dataset<U> cast() const {
        ctr_dataset<U> out(layout_);
        out.n_ = n_;
        out.sparse_ = sparse_;
        out.dense_.assign(dense_.begin(), dense_.end());
        out.labels_.assign(labels_.begin(), labels_.end());
        out.groups_ = groups_;
        for (std::size_t k = 0; k < seqs_.size(); ++k) {
            out.seqs_[k].values = seqs_[k].values;
            out.seqs_[k].offsets = seqs_[k].offsets;
            out.seqs_[k].weights.assign(seqs_[k].weights.begin(), seqs_[k].weights.end());
        }
        return out;
    }

private:
    template <class U>
    friend class ctr_dataset;

    std::size_t sparse_width() const { return static_cast<std::size_t>(layout_.num_sparse()); }
    std::size_t dense_width() const { return static_cast<std::size_t>(layout_.num_dense()); }
    std::size_t task_width() const { return static_cast<std::size_t>(layout_.num_tasks()); }

    feature_layout layout_;
    std::int64_t n_ = 0;
    std::vector<std::int64_t> sparse_;
    std::vector<T> dense_, labels_;
    std::vector<std::int64_t> groups_;
    std::vector<sequence_column> seqs_;
};

/// Cuts a ctr_dataset into mini-batches of `batch_size` rows (the last one may be shorter),
/// in order or in a seeded shuffle that is a pure function of (seed, epoch), so another
/// program (the PyTorch peer) can be fed the same batches: `order()` is the permutation.
/// Rows are gathered into buffers the batcher owns; a batch stays valid until the next call.
/// This is the batch source the trainer takes: `start_epoch(e)`, then `next(b)` until false.
template <class T>
class batcher {
public:
    batcher(const ctr_dataset<T>& d, std::int64_t batch_size, bool shuffle = false, std::uint64_t seed = 0)
        : d_(&d), bs_(batch_size), shuffle_(shuffle), seed_(seed) {
        XREC_CHECK(batch_size > 0, "batcher: batch_size must be positive, got ", batch_size);
        order_.resize(static_cast<std::size_t>(d.size()));
        std::iota(order_.begin(), order_.end(), std::int64_t{0});
        seqs_.resize(d.layout().sequences.size());
        jag_.resize(seqs_.size());
        wspans_.resize(seqs_.size());
    }

    std::int64_t size() const noexcept { return d_->size(); }
    std::int64_t batches_per_epoch() const noexcept { return (d_->size() + bs_ - 1) / bs_; }
    const ctr_dataset<T>& dataset() const noexcept { return *d_; }
    const std::vector<std::int64_t>& order() const noexcept { return order_; }

    /// Rewinds; with shuffling, draws the permutation of epoch `e` (Fisher-Yates on a
    /// Philox stream keyed by (seed, e)).
    void start_epoch(std::int64_t e = 0) {
        pos_ = 0;
        std::iota(order_.begin(), order_.end(), std::int64_t{0});
        if (!shuffle_) return;
        const rng_stream rs{philox{mix_seed(seed_, static_cast<std::uint64_t>(e))}, 0};
        for (std::int64_t i = static_cast<std::int64_t>(order_.size()) - 1; i > 0; --i) {
            const auto j = static_cast<std::int64_t>(rs.below(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(i + 1)));
            std::swap(order_[static_cast<std::size_t>(i)], order_[static_cast<std::size_t>(j)]);
        }
    }

    /// Fills `out` with the next batch; false at the end of the epoch.
    bool next(batch<T>& out) {
        if (pos_ >= d_->size()) return false;
        const std::int64_t n = std::min(bs_, d_->size() - pos_);
        gather(std::span<const std::int64_t>(order_.data() + pos_, static_cast<std::size_t>(n)), out);
        pos_ += n;
        return true;
    }

    /// Gathers the listed rows into `out` (also used to score a fixed slice).
    void gather(std::span<const std::int64_t> rows, batch<T>& out) {
        const auto& L = d_->layout();
        const std::int64_t n = static_cast<std::int64_t>(rows.size());
        sparse_.clear(), dense_.clear(), labels_.clear(), groups_.clear();
        for (auto& s : seqs_) s.values.clear(), s.offsets.assign(1, 0), s.weights.clear();
        for (auto r : rows) {
            auto sp = d_->sparse_row(r);
            sparse_.insert(sparse_.end(), sp.begin(), sp.end());
            auto de = d_->dense_row(r);
            dense_.insert(dense_.end(), de.begin(), de.end());
            auto lb = d_->label_row(r);
            labels_.insert(labels_.end(), lb.begin(), lb.end());
            groups_.push_back(d_->group(r));
            for (std::size_t k = 0; k < seqs_.size(); ++k) {
                auto ids = d_->sequence(static_cast<std::int64_t>(k), r);
                seqs_[k].values.insert(seqs_[k].values.end(), ids.begin(), ids.end());
                seqs_[k].offsets.push_back(static_cast<std::int64_t>(seqs_[k].values.size()));
                auto w = d_->sequence_weights(static_cast<std::int64_t>(k), r);
                seqs_[k].weights.insert(seqs_[k].weights.end(), w.begin(), w.end());
            }
        }
        for (std::size_t k = 0; k < seqs_.size(); ++k) {
            jag_[k] = jagged_ids{seqs_[k].values, seqs_[k].offsets};
            wspans_[k] = seqs_[k].weights;
        }
        out.rows = n;
        out.sparse = {sparse_.data(), shape{n, L.num_sparse()}};
        out.dense = {dense_.data(), shape{n, L.num_dense()}};
        out.sequences = jag_;
        out.sequence_weights = wspans_;
        out.labels = {labels_.data(), shape{n, L.num_tasks()}};
        out.groups = groups_;
    }

private:
    const ctr_dataset<T>* d_;
    std::int64_t bs_;
    bool shuffle_;
    std::uint64_t seed_;
    std::int64_t pos_ = 0;
    std::vector<std::int64_t> order_;
    std::vector<std::int64_t> sparse_, groups_;
    std::vector<T> dense_, labels_;
    std::vector<typename ctr_dataset<T>::sequence_column> seqs_;
    std::vector<jagged_ids> jag_;
    std::vector<std::span<const T>> wspans_;
};

}  // namespace xrec::data
