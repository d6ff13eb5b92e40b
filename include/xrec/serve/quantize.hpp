#pragma once
// Reduced-precision serving weights: embedding tables stored as bf16 or row-wise int8 and
// read through a dequantising gather, dense weights rounded to bf16.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "xrec/backend/tags.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/reduced_precision.hpp"

namespace xrec::serve {

/// The serving precisions compared by eval/quantize_auc: everything in float; bf16 dense
/// weights with bf16 tables; bf16 dense weights with row-wise int8 tables.
enum class serving_precision { fp32, bf16, bf16_int8 };

inline const char* serving_precision_name(serving_precision p) {
    switch (p) {
        case serving_precision::fp32: return "fp32";
        case serving_precision::bf16: return "bf16 dense + bf16 tables";
        case serving_precision::bf16_int8: return "bf16 dense + int8 tables";
    }
    return "?";
}

/// Which tables quantize_tables converts, and how.
///  - min_rows: tables with fewer rows stay in full precision. Default 2: one-row tables are
///    layer state (batch_norm's running statistics) that their layers read directly, and a
///    single row saves nothing.
///  - int8_min_dim: with table_precision::int8_rowwise, tables narrower than this are stored
///    as bf16 instead: the 8 bytes of scale and bias per row would outweigh the codes (a
///    [rows, 1] first-order table would grow from 4 to 9 bytes a row). Default 8.
struct quantize_options {
    std::int64_t min_rows = 2;
    std::int64_t int8_min_dim = 8;
};

/// What quantize_tables did to one table, and the bytes its values take before and after.
struct table_report {
    std::string name;
    std::int64_t rows = 0, dim = 0;
    table_precision precision = table_precision::full;
    std::int64_t bytes_before = 0, bytes_after = 0;
};

/// The per-table reports and the totals over all tables of the store.
struct quantize_report {
    std::vector<table_report> tables;
    std::int64_t bytes_before = 0, bytes_after = 0;
};

/// Bytes the values of table t take in its current form (gradients and optimizer state
/// not counted).
template <class T, class B>
std::int64_t table_bytes(const embedding_table<T, B>& t) {
    return t.reduced() ? t.packed.size() : t.values.size() * static_cast<std::int64_t>(sizeof(T));
}

/// Converts the embedding tables of `store` to the serving format `p` (bf16 or
/// int8_rowwise, see core/reduced_precision.hpp and the options above), in place: each
/// converted table's float values are replaced by its packed rows (`values` freed), which
/// ops::embedding_lookup and ops::embedding_bag then read on an infer_ctx, dequantising in
/// the gather (models need no change). Afterwards:
///  - a training (recording) forward through a converted table is refused by name, and so
///    is param_store::named_tensors (checkpoints): dequantize_tables restores float values;
///  - any table sparse gradient still pending is dropped.
/// Refused, naming the table and the row: non-finite values, an int8 row whose range
/// max - min overflows float, a table already in another reduced format (the rounding
/// would compound; dequantize first). A table already in format `p` is left as it is.
/// cpu backend, float stores only (a static_assert otherwise).
template <class B>
quantize_report quantize_tables(param_store<float, B>& store, table_precision p, const quantize_options& o = {}) {
    static_assert(is_cpu_v<B>, "serve::quantize_tables: reduced tables are served on the cpu backend only");
    XREC_CHECK(p != table_precision::full, "serve::quantize_tables: the target precision must be bf16 or int8_rowwise");
    quantize_report rep;
    for (std::int64_t ti = 0; ti < store.table_count(); ++ti) {
        auto& t = store.table(ti);
        table_report r{t.name, t.rows, t.dim, t.precision, table_bytes(t), 0};
        table_precision want = p;
        if (want == table_precision::int8_rowwise && t.dim < o.int8_min_dim) want = table_precision::bf16;
        if (t.rows < o.min_rows) want = table_precision::full;
        if (t.reduced()) {
            XREC_CHECK(t.precision == want, "serve::quantize_tables: table '", t.name, "' is already stored as ",
                       table_precision_name(t.precision), "; dequantize_tables first to convert it to ",
                       table_precision_name(want));
        } else if (want != table_precision::full) {
            const std::int64_t rb = reduced_row_bytes(want, t.dim);
            // (rows, dim > 0 in a store; the max tells the compiler the size is not negative)
            buffer<std::uint8_t, B> packed(std::max<std::int64_t>(0, t.rows * rb));
            for (std::int64_t i = 0; i < t.rows; ++i) {
                const float* x = t.row(i);
                for (std::int64_t d = 0; d < t.dim; ++d)
                    XREC_CHECK(std::isfinite(x[d]), "serve::quantize_tables: table '", t.name, "' row ", i, " element ",
                               d, " is ", x[d], "; only finite values can be quantized");
                std::uint8_t* out = packed.data() + i * rb;
                if (want == table_precision::bf16) {
                    for (std::int64_t d = 0; d < t.dim; ++d) {
                        const std::uint16_t h = to_bf16(x[d]);
                        std::memcpy(out + 2 * d, &h, 2);
                    }
                } else {
                    quantize_row_int8(x, t.dim, out);
                    XREC_CHECK(std::isfinite(read_int8_row_params(out, t.dim).scale), "serve::quantize_tables: table '",
                               t.name, "' row ", i, ": its range max - min overflows float; int8_rowwise cannot hold it");
                }
            }
            t.packed.swap(packed);
            t.row_bytes = rb;
            t.precision = want;
            buffer<float, B>().swap(t.values);  // the memory is the point: the float rows go
            t.grad.clear();
        }
        r.precision = t.precision;
        r.bytes_after = table_bytes(t);
        rep.bytes_before += r.bytes_before;
        rep.bytes_after += r.bytes_after;
        rep.tables.push_back(std::move(r));
    }
    return rep;
}

/// Undoes quantize_tables: every reduced table gets float values again (the dequantised
/// rows, so the rounding stays) and its packed rows are freed. Tables in full precision are
/// untouched. Afterwards the store trains and checkpoints as before.
template <class B>
void dequantize_tables(param_store<float, B>& store) {
    static_assert(is_cpu_v<B>, "serve::dequantize_tables: reduced tables are served on the cpu backend only");
    for (std::int64_t ti = 0; ti < store.table_count(); ++ti) {
        auto& t = store.table(ti);
        if (!t.reduced()) continue;
        buffer<float, B> v(std::max<std::int64_t>(0, t.rows * t.dim));
        for (std::int64_t i = 0; i < t.rows; ++i) {
            const std::uint8_t* row = t.packed_row(i);
            float* x = v.data() + i * t.dim;
            if (t.precision == table_precision::bf16) {
                for (std::int64_t d = 0; d < t.dim; ++d) {
                    std::uint16_t h;
                    std::memcpy(&h, row + 2 * d, 2);
                    x[d] = from_bf16(h);
                }
            } else {
                const int8_row_params pr = read_int8_row_params(row, t.dim);
                for (std::int64_t d = 0; d < t.dim; ++d) x[d] = pr.scale * static_cast<float>(row[d]) + pr.bias;
            }
        }
        t.values.swap(v);
        buffer<std::uint8_t, B>().swap(t.packed);
        t.row_bytes = 0;
        t.precision = table_precision::full;
    }
}

/// bf16 dense weights, numerics only: rounds every dense parameter of `store` in place to
/// the nearest bf16 value (ties to even). The values stay floats in the flat buffer and
/// every GEMM still reads float weights, so a model computes exactly what it would with
/// bf16-stored weights widened on the fly (products and sums in float), but the dense
/// memory is NOT reduced: there is no bf16 GEMM path yet. (Dense weights are a small part
/// of a recommender's memory; the tables are the large part.) Refuses non-finite weights by
/// name. Returns the number of values rounded.
template <class B>
std::int64_t round_dense_to_bf16(param_store<float, B>& store) {
    static_assert(is_cpu_v<B>, "serve::round_dense_to_bf16: host-memory stores only (the cpu backend)");
    std::int64_t n = 0;
    for (const auto& e : store.dense_entries()) {
        float* v = store.values() + e.offset;
        const std::int64_t k = e.s.numel();
        for (std::int64_t i = 0; i < k; ++i) {
            XREC_CHECK(std::isfinite(v[i]), "serve::round_dense_to_bf16: parameter '", e.name, "' element ", i, " is ",
                       v[i], "; only finite weights can be rounded");
            v[i] = round_bf16(v[i]);
        }
        n += k;
    }
    return n;
}

/// One call for a serving precision: fp32 changes nothing; bf16 rounds the dense weights
/// (round_dense_to_bf16) and stores the tables as bf16; bf16_int8 rounds the dense weights
/// and stores the tables as int8_rowwise (narrow and one-row tables per quantize_options).
template <class B>
quantize_report quantize(param_store<float, B>& store, serving_precision p, const quantize_options& o = {}) {
    if (p == serving_precision::fp32) return {};
    round_dense_to_bf16(store);
    return quantize_tables(store, p == serving_precision::bf16 ? table_precision::bf16 : table_precision::int8_rowwise, o);
}

}  // namespace xrec::serve
