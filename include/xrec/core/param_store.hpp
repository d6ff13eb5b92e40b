#pragma once
// Parameter stores: the dense flat buffer and the embedding tables of a model.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "xrec/core/buffer.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/reduced_precision.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/core/shape.hpp"

namespace xrec {

template <class T, class B>
class param_store;

/// A named view of a tensor that a checkpoint saves or loads in place: parameters, tables
/// and optimizer state all describe themselves as lists of these.
template <class T>
struct named_tensor {
    std::string name;
    shape s;
    T* data;
};

/// A view of one dense parameter: `offset` elements into its store's flat buffer, shape `s`.
/// Layers hold these; a context turns them into vars.
template <class T, class B>
struct dense_param {
    param_store<T, B>* store = nullptr;
    std::int64_t offset = 0;
    shape s;
    T* value() const;
    T* grad() const;
};

/// A growable list of row ids in the memory of a backend the host cannot read (a device):
/// what sparse_grad keeps its ids in there (see grad_ids). Appends are copies within that
/// memory in stream order (no wait); growth is geometric, so a training loop allocates in
/// its first steps alone. Copying the list copies its ids (within that memory).
template <class B>
class device_id_list {
public:
    std::int64_t size() const noexcept { return n_; }
    bool empty() const noexcept { return n_ == 0; }
    std::int64_t* data() noexcept { return buf_.data(); }
    const std::int64_t* data() const noexcept { return buf_.data(); }
    void clear() noexcept { n_ = 0; }
    /// Makes room for n more ids and returns where they go.
    std::int64_t* grow(std::int64_t n) {
        if (buf_.size() < n_ + n) {
            buffer<std::int64_t, B> b(std::max<std::int64_t>(n_ + n, 2 * buf_.size()));
            if (n_ > 0) backend_memory<B>::copy_async(b.data(), buf_.data(), static_cast<std::size_t>(n_) * 8);
            buf_.swap(b);  // the old block returns to the backend's (stream-ordered) pool
        }
        n_ += n;
        return buf_.data() + (n_ - n);
    }
    /// Appends n ids that sit in the backend's memory.
    void append(const std::int64_t* ids, std::int64_t n) {
        if (n > 0) backend_memory<B>::copy_async(grow(n), ids, static_cast<std::size_t>(n) * 8);
    }
    void assign(const device_id_list& o) {
        n_ = 0;
        append(o.data(), o.size());
    }
    void swap(device_id_list& o) noexcept {
        buf_.swap(o.buf_);
        std::swap(n_, o.n_);
    }

private:
    buffer<std::int64_t, B> buf_;
    std::int64_t n_ = 0;
};

/// Where a sparse gradient keeps its ids: a std::vector on backends whose memory is the
/// host's (the cpu), a device_id_list elsewhere. Either way the ids are in the backend's
/// memory, next to the rows, so a device merges and applies them without a host round trip.
template <class B>
using grad_ids = std::conditional_t<backend_memory<B>::host_accessible, std::vector<std::int64_t>, device_id_list<B>>;

/// Sparse row gradients of one table for the current step: (id, row) pairs in the order
/// backward emitted them. Duplicates are kept; optimizers merge them in this order, so the
/// update is deterministic. Ids and rows live in the backend's memory (grad_ids).
template <class T, class B>
struct sparse_grad {
    grad_ids<B> ids;
    buffer<T, B> rows;  // ids.size() * dim used, capacity grows geometrically
    std::int64_t dim = 0;

    std::int64_t count() const { return static_cast<std::int64_t>(ids.size()); }
    /// Appends n pairs, new_ids in the backend's memory, and returns where their n rows go
    /// (uninitialised). Single caller.
    T* append(std::int64_t n, const std::int64_t* new_ids) {
        const std::int64_t old = count();
        if constexpr (backend_memory<B>::host_accessible)
            ids.insert(ids.end(), new_ids, new_ids + n);
        else
            ids.append(new_ids, n);
        const std::int64_t need = (old + n) * dim;
        if (rows.size() < need) rows.resize(std::max<std::int64_t>(need, rows.size() * 2));
        return rows.data() + old * dim;
    }
    void clear() { ids.clear(); }
};

/// An embedding table: `rows` x `dim` values (row-major) and the sparse gradient of the
/// current step. Tables live apart from the dense buffer because they are large and are
/// updated row-wise by sparse optimizers.
///
/// Serving form: when `precision` is not table_precision::full the rows are held in
/// `packed` instead (rows x row_bytes bytes in the reduced format, see
/// core/reduced_precision.hpp) and `values` is empty, so the table costs the reduced
/// memory only (1M x 64: 256 MB in float, 128 MB bf16, 72 MB int8_rowwise). Such a table is
/// read by ops::embedding_lookup / ops::embedding_bag on an infer_ctx (dequantised in the
/// gather); a training context refuses it by name. serve::quantize_tables sets this form
/// and serve::dequantize_tables undoes it (with the rounding kept).
template <class T, class B>
struct embedding_table {
    std::string name;
    std::int64_t rows = 0, dim = 0;
    buffer<T, B> values;
    sparse_grad<T, B> grad;
    table_precision precision = table_precision::full;
    buffer<std::uint8_t, B> packed;  // rows * row_bytes when precision != full, else empty
    std::int64_t row_bytes = 0;      // reduced_row_bytes(precision, dim)

    T* row(std::int64_t i) { return values.data() + i * dim; }
    const T* row(std::int64_t i) const { return values.data() + i * dim; }
    /// True when the rows are in a reduced serving format (values is then empty).
    bool reduced() const noexcept { return precision != table_precision::full; }
    const std::uint8_t* packed_row(std::int64_t i) const { return packed.data() + i * row_bytes; }
};

/// A handle to a table in a store; stable while the store lives.
template <class T, class B>
struct table_param {
    param_store<T, B>* store = nullptr;
    std::int64_t index = -1;
    embedding_table<T, B>& table() const;
};

/// All parameters of a model. Dense parameters sit back to back in one flat buffer with a
/// flat gradient buffer of the same size (an optimizer is one vectorised loop, a checkpoint
/// a copy); each is registered with a name (the checkpoint key) and initialised from the
/// store's seed and its registration index, so a model built twice with one seed is
/// bitwise identical. Register everything before training; `add` may move the buffers.
template <class T, class B>
class param_store {
public:
    struct entry {
        std::string name;
        shape s;
        std::int64_t offset;
    };

    explicit param_store(std::uint64_t seed = 0) : seed_(seed) {}
    param_store(const param_store&) = delete;
    param_store& operator=(const param_store&) = delete;

    /// Registers a dense parameter and initialises it.
    dense_param<T, B> add(const std::string& name, shape s, const init& how, std::int64_t fan_in = 0,
                          std::int64_t fan_out = 0) {
        check_new_name(name);
        const std::int64_t n = s.numel();
        // Keep each parameter 64-byte aligned within the buffer so kernels may use aligned loads.
        const std::int64_t align = std::max<std::int64_t>(1, 64 / static_cast<std::int64_t>(sizeof(T)));
        const std::int64_t off = (size_ + align - 1) / align * align;
        reserve_dense(off + n);
        size_ = off + n;
        // Initialise in host memory, then copy into the backend's memory (device memory for
        // the cuda tag, where the host must not write directly).
        std::vector<T> host(static_cast<std::size_t>(n));
        fill_init(how, host.data(), n, fan_in, fan_out, stream_for(counter_++));
        if (n) backend_memory<B>::copy(values_.data() + off, host.data(), static_cast<std::size_t>(n) * sizeof(T));
        entries_.push_back({name, s, off});
        return {this, off, s};
    }

    /// Registers an embedding table of rows x dim and initialises it.
    table_param<T, B> add_table(const std::string& name, std::int64_t rows, std::int64_t dim, const init& how) {
        check_new_name(name);
        XREC_CHECK(rows > 0 && dim > 0, "param_store: table '", name, "' needs rows > 0 and dim > 0, got ", rows, " x ", dim);
        auto t = std::make_unique<embedding_table<T, B>>();
        t->name = name;
        t->rows = rows;
        t->dim = dim;
        t->values.resize(rows * dim);
        t->grad.dim = dim;
        std::vector<T> host(static_cast<std::size_t>(rows * dim));
        fill_init(how, host.data(), rows * dim, rows, dim, stream_for(counter_++));
        backend_memory<B>::copy(t->values.data(), host.data(), host.size() * sizeof(T));
        tables_.push_back(std::move(t));
        return {this, static_cast<std::int64_t>(tables_.size()) - 1};
    }

    T* values() noexcept { return values_.data(); }
    const T* values() const noexcept { return values_.data(); }
    T* grads() noexcept { return grads_.data(); }
    const T* grads() const noexcept { return grads_.data(); }
    /// Elements in the flat buffer, alignment padding included (padding stays zero).
    std::int64_t dense_size() const noexcept { return size_; }
    const std::vector<entry>& dense_entries() const noexcept { return entries_; }
    std::int64_t table_count() const noexcept { return static_cast<std::int64_t>(tables_.size()); }
    embedding_table<T, B>& table(std::int64_t i) { return *tables_[static_cast<std::size_t>(i)]; }
    const embedding_table<T, B>& table(std::int64_t i) const { return *tables_[static_cast<std::size_t>(i)]; }
    std::uint64_t seed() const noexcept { return seed_; }

    /// Zeroes the dense gradients and drops the tables' sparse gradients.
    void zero_grad() {
        grads_.zero();
        for (auto& t : tables_) t->grad.clear();
    }
    /// Number of trainable scalars (dense plus all table entries).
    std::int64_t parameter_count() const {
        std::int64_t n = 0;
        for (auto& e : entries_) n += e.s.numel();
        for (auto& t : tables_) n += t->rows * t->dim;
        return n;
    }
    /// Every dense parameter and every table (shape [rows, dim]) under its name, in
    /// registration order: what a checkpoint of the parameters holds.
    /// A table in a reduced serving format has no T values to name and is refused (by name):
    /// serve::dequantize_tables restores float values first.
    std::vector<named_tensor<T>> named_tensors() {
        std::vector<named_tensor<T>> out;
        for (auto& e : entries_) out.push_back({e.name, e.s, values_.data() + e.offset});
        for (auto& t : tables_) {
            XREC_CHECK(!t->reduced(), "param_store::named_tensors: table '", t->name, "' is stored as ",
                       table_precision_name(t->precision),
                       " for serving and has no full-precision values (serve::dequantize_tables restores them)");
            out.push_back({t->name, shape{t->rows, t->dim}, t->values.data()});
        }
        return out;
    }
    /// The dense entry with this name, or nullptr.
    const entry* find(const std::string& name) const {
        for (auto& e : entries_)
            if (e.name == name) return &e;
        return nullptr;
    }
    /// The index of the table with this name, or -1.
    std::int64_t find_table(const std::string& name) const {
        for (std::size_t i = 0; i < tables_.size(); ++i)
            if (tables_[i]->name == name) return static_cast<std::int64_t>(i);
        return -1;
    }

private:
    rng_stream stream_for(std::uint64_t index) const { return rng_stream{philox{mix_seed(seed_, index)}, 0}; }
    void check_new_name(const std::string& name) const {
        XREC_CHECK(!name.empty(), "param_store: a parameter needs a name");
        XREC_CHECK(find(name) == nullptr && find_table(name) < 0, "param_store: duplicate parameter name '", name, "'");
    }
    void reserve_dense(std::int64_t n) {
        if (values_.size() >= n) return;
        const std::int64_t cap = std::max<std::int64_t>(n, values_.size() * 2);
        values_.resize(cap);
        grads_.resize(cap);
    }

    std::uint64_t seed_;
    std::uint64_t counter_ = 0;
    std::int64_t size_ = 0;
    buffer<T, B> values_, grads_;
    std::vector<entry> entries_;
    std::vector<std::unique_ptr<embedding_table<T, B>>> tables_;
};

template <class T, class B>
T* dense_param<T, B>::value() const {
    return store->values() + offset;
}
template <class T, class B>
T* dense_param<T, B>::grad() const {
    return store->grads() + offset;
}
template <class T, class B>
embedding_table<T, B>& table_param<T, B>::table() const {
    return store->table(index);
}

}  // namespace xrec
