#pragma once
// The promise the request encoder makes to the model behind it, checked by the schema
// targets: every id of an encoded row lies in the row range of the table its field reads
// (an id outside it would index past an embedding table), and the row has the layout's
// field counts. A violation traps (a finding) even when no sanitizer notices.
#include <cstddef>
#include <cstdint>

#include "xrec/data/schema.hpp"

namespace xrec_fuzz {

template <class T>
void check_row(const xrec::feature_layout& L, const xrec::data::encoded_row<T>& row) {
    auto in_table = [&](std::int64_t id, std::int64_t t) {
        const auto& tb = L.tables[static_cast<std::size_t>(t)];
        if (id < tb.offset || id >= tb.offset + tb.rows) __builtin_trap();
    };
    if (row.sparse.size() != L.sparse.size() || row.dense.size() != L.dense.size() ||
        row.seq.size() != L.sequences.size() || row.labels.size() != L.tasks.size())
        __builtin_trap();
    for (std::size_t i = 0; i < row.sparse.size(); ++i) in_table(row.sparse[i], L.sparse[i].table);
    for (std::size_t k = 0; k < row.seq.size(); ++k) {
        for (auto id : row.seq[k]) in_table(id, L.sequences[k].table);
        if (L.sequences[k].weighted && row.seq_weights[k].size() != row.seq[k].size()) __builtin_trap();
    }
}

}  // namespace xrec_fuzz
