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
        jag_.resize(s.layout().sequences.size());
        wspans_.resize(jag_.size());
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

    bool next(batch<T>& out) {
        cur_ = ctr_dataset<T>(s_->layout());
        const rng_stream rs{philox{mix_seed(o_.seed, static_cast<std::uint64_t>(epoch_))}, 0x57e4};
        while (cur_.size() < o_.batch_size) {
            if (o_.shuffle_buffer == 0) {
                if (!read_(spare_)) break;
                spare_.append_to(cur_);
                continue;
            }
            if (pool_.empty()) break;
            const auto j = static_cast<std::size_t>(rs.below(draws_++, pool_.size()));
            pool_[j].append_to(cur_);
            if (read_(spare_)) {
                std::swap(pool_[j], spare_);
            } else {
                std::swap(pool_[j], pool_.back());
                pool_.pop_back();
            }
        }
        const std::int64_t n = cur_.size();
        if (n == 0) return false;
        emitted_ += n;
        const auto& L = s_->layout();
        for (std::size_t k = 0; k < jag_.size(); ++k) {
            const auto& c = cur_.sequence_column_of(static_cast<std::int64_t>(k));
            jag_[k] = jagged_ids{c.values, c.offsets};
            wspans_[k] = c.weights;
        }
        out.rows = n;
        out.sparse = {cur_.sparse_column().data(), shape{n, L.num_sparse()}};
        out.dense = {cur_.dense_column().data(), shape{n, L.num_dense()}};
        out.sequences = jag_;
        out.sequence_weights = wspans_;
        out.labels = {cur_.label_column().data(), shape{n, L.num_tasks()}};
        out.groups = cur_.group_column();
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
    ctr_dataset<T> cur_;
    std::vector<jagged_ids> jag_;
    std::vector<std::span<const T>> wspans_;
};

}  // namespace xrec::data
