#pragma once
// The embedding layer: a table and a row lookup.
#include <cstdint>
#include <span>
#include <string>

#include "xrec/core/context.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/ops/embedding.hpp"

namespace xrec::layers {

/// y[i, :] = table[ids[i], :] for ids [n] -> y [n, dim]. The table "<name>" (rows x dim,
/// default init truncated normal with sd 0.01) lives in the store's table list and gets
/// sparse row gradients: backward appends (ids[i], dy[i, :]) in order. Out-of-range ids are
/// refused with a message naming the layer and the position.
template <class T = float, class B = cpu<>>
struct embedding {
    table_param<T, B> table;
    std::string name;
    std::string who;  // "embedding '<name>'", for error messages

    embedding(param_store<T, B>& s, const std::string& layer_name, std::int64_t rows, std::int64_t dim,
              init how = init::truncated_normal(0.01))
        : name(layer_name), who("embedding '" + layer_name + "'") {
        XREC_CHECK(rows > 0 && dim > 0, who, ": needs rows > 0 and dim > 0, got ", rows, " x ", dim);
        table = s.add_table(name, rows, dim, how);
    }

    std::int64_t rows() const { return table.table().rows; }
    std::int64_t dim() const { return table.table().dim; }

    /// ids in host memory, or in the backend's (where = memory_space::backend; see
    /// ops::embedding_lookup).
    template <class Ctx>
    var<T> operator()(Ctx& ctx, std::span<const std::int64_t> ids, memory_space where = memory_space::host) const {
        return ops::detail::embedding_lookup_impl(ctx, table, ids, where, who.c_str());
    }
};

}  // namespace xrec::layers
