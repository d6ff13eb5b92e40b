#pragma once
// The feature layout and the mini-batch: the contract between data (which encodes rows) and
// models (which read them). Both sides include only this, so data knows no model and models
// know no reader.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "xrec/core/arena.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/tensor.hpp"

namespace xrec {

/// How the ids of one bag (a multi-hot field or a behaviour sequence) are reduced to a vector.
enum class pooling { sum, mean, max };

inline const char* pooling_name(pooling p) {
    switch (p) {
        case pooling::sum: return "sum";
        case pooling::mean: return "mean";
        case pooling::max: return "max";
    }
    return "?";
}

/// What a model needs to know about the encoded features, and nothing about how they were
/// encoded (that is data::schema's business).
///
/// All categorical ids of a model live in one id space of `total_rows()` rows, made of
/// `tables` laid end to end: table t owns rows [tables[t].offset, tables[t].offset +
/// tables[t].rows). A sparse or sequence field names the table it draws from, so fields
/// that share a vocabulary (DIN's candidate item and the item history) share rows, and a
/// model needs a single embedding lookup for all fields of a row. Ids in a batch are
/// already global (offset added); row `offset` of each table (local id 0) is the
/// out-of-vocabulary / padding row.
struct feature_layout {
    struct table {
        std::string name;
        std::int64_t rows = 0;
        std::int64_t offset = 0;  // set by finish()
    };
    /// One id per row (user id, item id, category, a hashed cross feature, ...).
    struct sparse_field {
        std::string name;
        std::int64_t table = 0;
        bool wide_only = false;  // a cross feature meant for linear (wide) parts only
    };
    /// Variable-length ids per row (a multi-hot field or a behaviour sequence, oldest first).
    struct sequence_field {
        std::string name;
        std::int64_t table = 0;
        std::int64_t max_len = 0;  // the encoder keeps the newest max_len ids
        xrec::pooling pooling = xrec::pooling::mean;
        bool weighted = false;  // ids carry per-id weights (libsvm / libffm values)
    };

    std::vector<table> tables;
    std::vector<sparse_field> sparse;
    std::vector<std::string> dense;
    std::vector<sequence_field> sequences;
    std::vector<std::string> tasks{"click"};

    /// Sets every table's offset (tables end to end, in order) and validates references.
    feature_layout& finish() {
        std::int64_t off = 0;
        for (auto& t : tables) {
            XREC_CHECK(t.rows > 0, "feature_layout: table '", t.name, "' has ", t.rows, " rows");
            t.offset = off;
            off += t.rows;
        }
        for (auto& f : sparse)
            XREC_CHECK(f.table >= 0 && f.table < static_cast<std::int64_t>(tables.size()), "feature_layout: sparse field '",
                       f.name, "' names table ", f.table, " of ", tables.size());
        for (auto& f : sequences)
            XREC_CHECK(f.table >= 0 && f.table < static_cast<std::int64_t>(tables.size()),
                       "feature_layout: sequence field '", f.name, "' names table ", f.table, " of ", tables.size());
        XREC_CHECK(!tasks.empty(), "feature_layout: at least one task (label column) is needed");
        return *this;
    }
    std::int64_t total_rows() const { return tables.empty() ? 0 : tables.back().offset + tables.back().rows; }
    std::int64_t num_sparse() const { return static_cast<std::int64_t>(sparse.size()); }
    std::int64_t num_dense() const { return static_cast<std::int64_t>(dense.size()); }
    std::int64_t num_sequences() const { return static_cast<std::int64_t>(sequences.size()); }
    std::int64_t num_tasks() const { return static_cast<std::int64_t>(tasks.size()); }
    /// Index of the named sparse field / sequence field / table, or -1.
    std::int64_t find_sparse(const std::string& n) const { return find_(sparse, n); }
    std::int64_t find_sequence(const std::string& n) const { return find_(sequences, n); }
    std::int64_t find_table(const std::string& n) const { return find_(tables, n); }

private:
    template <class V>
    static std::int64_t find_(const V& v, const std::string& n) {
        for (std::size_t i = 0; i < v.size(); ++i)
            if (v[i].name == n) return static_cast<std::int64_t>(i);
        return -1;
    }
};

/// One mini-batch of `rows` encoded rows, as views (a batcher or a request owns the memory).
///  - sparse  [rows, layout.num_sparse()]: global ids, one per sparse field
///  - dense   [rows, layout.num_dense()]: normalised dense values
///  - sequences: one jagged_ids per sequence field (batch() == rows), global ids
///  - sequence_weights: empty, or one span per sequence field (empty, or nnz weights)
///  - labels  [rows, layout.num_tasks()] (0/1 for CTR tasks; may be empty when serving)
///  - groups  [rows]: the group of each row (the user) for group AUC; may be empty
///  - memory: memory_space::backend when sparse, dense and labels point into the backend's
///    memory (a batch prepared on the device, as a training loop that stages its data
///    there does); sequences, weights and groups stay host memory, and models whose inputs
///    need host-side work (column selection, sequences) refuse such a batch by name.
template <class T>
struct batch {
    std::int64_t rows = 0;
    tensor_view<const std::int64_t> sparse;
    tensor_view<const T> dense;
    std::span<const jagged_ids> sequences;
    std::span<const std::span<const T>> sequence_weights;
    tensor_view<const T> labels;
    std::span<const std::int64_t> groups;
    memory_space memory = memory_space::host;

    /// Throws xrec::error naming `who` unless every view matches `layout` and `rows`, and every
    /// id lies in the layout's id space (and in its own table).
    void check(const char* who, const feature_layout& layout) const {
        XREC_CHECK(rows >= 0, who, ": batch has ", rows, " rows");
        XREC_CHECK(sparse.numel() == rows * layout.num_sparse(), who, ": sparse ids ", sparse.s.str(), " but ", rows,
                   " rows x ", layout.num_sparse(), " sparse fields expected");
        XREC_CHECK(dense.numel() == rows * layout.num_dense(), who, ": dense values ", dense.s.str(), " but ", rows,
                   " rows x ", layout.num_dense(), " dense fields expected");
        XREC_CHECK(static_cast<std::int64_t>(sequences.size()) == layout.num_sequences(), who, ": ", sequences.size(),
                   " sequence inputs for ", layout.num_sequences(), " sequence fields");
        XREC_CHECK(labels.numel() == 0 || labels.numel() == rows * layout.num_tasks(), who, ": labels ", labels.s.str(),
                   " but ", rows, " rows x ", layout.num_tasks(), " tasks expected");
        XREC_CHECK(groups.empty() || static_cast<std::int64_t>(groups.size()) == rows, who, ": ", groups.size(),
                   " groups for ", rows, " rows");
        const std::int64_t F = layout.num_sparse();
        // Ids in a backend's memory are checked where they are read (ops::embedding_lookup).
        if (memory == memory_space::host) {
            for (std::int64_t r = 0; r < rows; ++r)
                for (std::int64_t f = 0; f < F; ++f) {
                    const auto& t = layout.tables[static_cast<std::size_t>(layout.sparse[static_cast<std::size_t>(f)].table)];
                    const std::int64_t id = sparse.data[r * F + f];
                    XREC_CHECK(id >= t.offset && id < t.offset + t.rows, who, ": row ", r, " field '",
                               layout.sparse[static_cast<std::size_t>(f)].name, "' id ", id, " is outside table '", t.name,
                               "' rows [", t.offset, ", ", t.offset + t.rows, ")");
                }
        }
        for (std::size_t k = 0; k < sequences.size(); ++k) {
            const auto& sf = layout.sequences[k];
            const auto& t = layout.tables[static_cast<std::size_t>(sf.table)];
            XREC_CHECK(sequences[k].batch() == rows, who, ": sequence field '", sf.name, "' has ", sequences[k].batch(),
                       " bags for ", rows, " rows");
            sequences[k].check(who, t.offset + t.rows);
            for (auto id : sequences[k].values)
                XREC_CHECK(id >= t.offset, who, ": sequence field '", sf.name, "' id ", id, " is outside table '",
                           t.name, "'");
            if (!sequence_weights.empty() && !sequence_weights[k].empty())
                XREC_CHECK(static_cast<std::int64_t>(sequence_weights[k].size()) == sequences[k].nnz(), who,
                           ": sequence field '", sf.name, "' has ", sequence_weights[k].size(), " weights for ",
                           sequences[k].nnz(), " ids");
        }
    }
};

}  // namespace xrec
