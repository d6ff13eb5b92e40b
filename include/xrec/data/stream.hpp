#pragma once
// A batch source that reads a file through a reader and a fitted schema, chunk by chunk, never
// holding more than one batch plus an optional shuffle buffer of encoded rows in memory.
#include <algorithm>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/data/dataset.hpp"
#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"

namespace xrec::data {

/// Encoded rows gathered into one batch: what a stream emits, and what a server builds from
/// the requests it encoded (encoded_row by encoded_row) before calling a model. add() keeps the
/// newest max_len ids of a sequence field, as ctr_dataset::append does; clear() keeps the
/// capacity, so a reused row_batch stops allocating once it has seen its largest batch.
/// view() is valid until the next add() or clear().
template <class T>
class row_batch {
public:
    row_batch() = default;
    explicit row_batch(feature_layout layout) : L_(std::move(layout)), seqs_(L_.sequences.size()) {
        jag_.resize(seqs_.size());
        wspans_.resize(seqs_.size());
        clear();
    }

    std::int64_t rows() const noexcept { return n_; }

    void clear() {
        n_ = 0;
        sparse_.clear(), dense_.clear(), labels_.clear(), groups_.clear();
        for (auto& c : seqs_) c.values.clear(), c.offsets.assign(1, 0), c.weights.clear();
    }

    void add(const encoded_row<T>& r) {
        XREC_CHECK(static_cast<std::int64_t>(r.sparse.size()) == L_.num_sparse() &&
                       static_cast<std::int64_t>(r.dense.size()) == L_.num_dense() &&
                       static_cast<std::int64_t>(r.labels.size()) == L_.num_tasks() && r.seq.size() == seqs_.size(),
                   "row_batch::add: the row does not match the layout");
        sparse_.insert(sparse_.end(), r.sparse.begin(), r.sparse.end());
        dense_.insert(dense_.end(), r.dense.begin(), r.dense.end());
        labels_.insert(labels_.end(), r.labels.begin(), r.labels.end());
        groups_.push_back(r.group);
        for (std::size_t k = 0; k < seqs_.size(); ++k) {
            const auto& ids = r.seq[k];
            const std::int64_t keep = L_.sequences[k].max_len;
            const std::size_t skip =
                keep > 0 && static_cast<std::int64_t>(ids.size()) > keep ? ids.size() - static_cast<std::size_t>(keep) : 0;
            auto& c = seqs_[k];
            c.values.insert(c.values.end(), ids.begin() + static_cast<std::ptrdiff_t>(skip), ids.end());
            c.offsets.push_back(static_cast<std::int64_t>(c.values.size()));
            if (L_.sequences[k].weighted) {
                const auto& w = r.seq_weights[k];
                XREC_CHECK(w.size() == ids.size(), "row_batch::add: weighted field '", L_.sequences[k].name, "' has ",
                           w.size(), " weights for ", ids.size(), " ids");
                c.weights.insert(c.weights.end(), w.begin() + static_cast<std::ptrdiff_t>(skip), w.end());
            }
        }
        ++n_;
    }

    /// The rows added since clear(), as a batch of views.
    batch<T> view() {
        for (std::size_t k = 0; k < seqs_.size(); ++k) {
            jag_[k] = jagged_ids{seqs_[k].values, seqs_[k].offsets};
            wspans_[k] = seqs_[k].weights;
        }
        batch<T> b;
        b.rows = n_;
        b.sparse = {sparse_.data(), shape{n_, L_.num_sparse()}};
        b.dense = {dense_.data(), shape{n_, L_.num_dense()}};
        b.sequences = jag_;
        b.sequence_weights = wspans_;
        b.labels = {labels_.data(), shape{n_, L_.num_tasks()}};
        b.groups = groups_;
        return b;
    }

private:
    feature_layout L_;  // a copy: a few names and sizes
    std::int64_t n_ = 0;
    std::vector<std::int64_t> sparse_, groups_;
    std::vector<T> dense_, labels_;
    std::vector<typename ctr_dataset<T>::sequence_column> seqs_;
    std::vector<jagged_ids> jag_;
    std::vector<std::span<const T>> wspans_;
};

/// Options of a stream_source.
///  - batch_size: rows per batch (the last batch of an epoch may be shorter).
///  - shuffle_buffer: 0 reads in file order; K > 0 keeps K encoded rows and emits a uniformly
///    drawn one each time, refilling its slot from the file (tf.data's shuffle buffer): a local
///    shuffle whose order is a pure function of (seed, epoch, file).
///  - mode: train lets growing vocabularies admit and evict while reading (ids are assigned
///    when a row is read, before it waits in the shuffle buffer); serve (for validation
///    streams) only looks values up.
struct stream_options {
    std::int64_t batch_size = 256;
    std::int64_t shuffle_buffer = 0;
    std::uint64_t seed = 0;
    encode_mode mode = encode_mode::train;
};

/// The batch source over a file (the same concept as data::batcher): start_epoch(e) rewinds
/// the reader (skip counts restart with it); next(b) fills `b` with views into buffers the source owns, valid until the next
/// call, and returns false at the end of the epoch. The reader and the schema are borrowed
/// (they must outlive the source); a fitted schema is required. Bad lines follow the reader's
/// policy: they stop the epoch with xrec::error, or are skipped and counted in
/// reader.skipped().
template <class T, class Reader>
class stream_source {
public:
    stream_source(Reader& reader, schema& s, stream_options o = {}) : r_(&reader), s_(&s), o_(o) {
        XREC_CHECK(o.batch_size > 0, "stream_source: batch_size must be positive, got ", o.batch_size);
        XREC_CHECK(o.shuffle_buffer >= 0, "stream_source: shuffle_buffer must be >= 0, got ", o.shuffle_buffer);
        XREC_CHECK(s.fitted(), "stream_source: the schema is not fitted");
        XREC_CHECK(reader.header() == s.columns(), "stream_source: '", reader.path(),
                   "' has other columns than the file the schema was fitted on");
        cur_ = row_batch<T>(s.layout());
    }

    const feature_layout& layout() const { return s_->layout(); }
    /// Rows emitted in this epoch so far.
    std::int64_t rows() const noexcept { return emitted_; }

    void start_epoch(std::int64_t e = 0) {
        r_->rewind();  // also when the reader was just used to fit the schema
        epoch_ = e;
        draws_ = 0;
        emitted_ = 0;
        eof_ = false;
        pool_.clear();
        const auto k = static_cast<std::size_t>(std::max<std::int64_t>(o_.shuffle_buffer, 0));
        pool_.reserve(k);
        while (pool_.size() < k && read_(spare_)) pool_.push_back(std::move(spare_));
    }

    /// Global ids recycled by the schema's growing tables since the last call (the trainer
    /// zeroes their rows before training on the batch that reuses them).
    std::vector<std::int64_t> take_recycled() { return s_->take_recycled(); }

    bool next(batch<T>& out) {
        cur_.clear();
        const rng_stream rs{philox{mix_seed(o_.seed, static_cast<std::uint64_t>(epoch_))}, 0x57e4};
        while (cur_.rows() < o_.batch_size) {
            if (o_.shuffle_buffer == 0) {
                if (!read_(spare_)) break;
                cur_.add(spare_);
                continue;
            }
            if (pool_.empty()) break;
            const auto j = static_cast<std::size_t>(rs.below(draws_++, pool_.size()));
            cur_.add(pool_[j]);
            if (read_(spare_)) {
                std::swap(pool_[j], spare_);
            } else {
                std::swap(pool_[j], pool_.back());
                pool_.pop_back();
            }
        }
        if (cur_.rows() == 0) return false;
        emitted_ += cur_.rows();
        out = cur_.view();
        return true;
    }

private:
    bool read_(encoded_row<T>& row) {
        if (eof_) return false;
        raw_record rec;
        while (r_->next(rec))
            if (s_->encode(rec, row, o_.mode)) return true;
        eof_ = true;
        return false;
    }

    Reader* r_;
    schema* s_;
    stream_options o_;
    bool eof_ = false;
    std::int64_t epoch_ = 0, emitted_ = 0;
    std::uint64_t draws_ = 0;
    std::vector<encoded_row<T>> pool_;
    encoded_row<T> spare_;
    row_batch<T> cur_;
};

}  // namespace xrec::data
