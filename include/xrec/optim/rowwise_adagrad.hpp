#pragma once
// Row-wise Adagrad: one accumulator per embedding row.
#include <cmath>
#include <cstdint>
#include <vector>

#include "xrec/optim/common.hpp"

namespace xrec::kernels {

XREC_KERNEL_FALLBACK(rowwise_adagrad_update)

/// optim::rowwise_adagrad's step over every table of `store`: merge each table's sparse
/// gradient (optim::coalesce), update each touched row (one thread per row), clear the
/// gradient. sums[ti] holds table ti's per-row accumulators.
template <class T, class A>
void rowwise_adagrad_update(cpu<A>, param_store<T, cpu<A>>& store, optim::coalesce_scratch<T, cpu<A>>& scratch,
                            thread_pool* pool, std::vector<buffer<T, cpu<A>>>& sums, T lr, T eps, T l2, T shrink) {
    optim::detail::for_each_touched_row(store, scratch, pool, [&](std::int64_t ti, auto& tb, std::int64_t id, T* w, const T* g) {
        T sq = 0;
        for (std::int64_t d = 0; d < tb.dim; ++d) {
            const T gd = g[d] + l2 * w[d];
            sq += gd * gd;
        }
        T& a = sums[static_cast<std::size_t>(ti)][id];
        a = a + sq / static_cast<T>(tb.dim);
        const T m = lr / (std::sqrt(a) + eps);
        for (std::int64_t d = 0; d < tb.dim; ++d) w[d] = shrink * w[d] - m * (g[d] + l2 * w[d]);
    });
}

}  // namespace xrec::kernels

namespace xrec::optim {

/// Options of `rowwise_adagrad`. Defaults follow FBGEMM's table-batched embedding ops
/// (eps 1e-8).
struct rowwise_adagrad_options {
    double lr = 0.01;
    double eps = 1e-8;
    double weight_decay = 0;
    bool decoupled = false;  // false: L2 (enters the gradient); true: w *= 1 - lr * weight_decay
    double initial_accumulator_value = 0;
};

/// Row-wise Adagrad: Adagrad with a single accumulator per embedding row, fed the mean of
/// the squared gradient over the row, so the state costs one value per row instead of dim.
/// This is the update of FBGEMM's EXACT_ROWWISE_ADAGRAD (fbgemm_gpu,
/// codegen/genscript/optimizers.py, `rowwise_adagrad`), the embedding optimizer of DLRM
/// (Naumov et al. 2019) and of caffe2's RowWiseSparseAdagrad. For each touched row with merged
/// gradient g (dim D):
///
///     g   = g + weight_decay * w                 (L2, decoupled == false)
///     a   = a + (1/D) sum_d g_d^2                (a starts at initial_accumulator_value)
///     m   = lr / (sqrt(a) + eps)
///     w   = w - m g                              (L2 or no decay)
///     w   = (1 - lr weight_decay) w - m g        (decoupled)
///
/// State: "rowwise_adagrad.<table>.sum" [rows] and the step counter "rowwise_adagrad.step".
template <class T, class B>
class rowwise_adagrad : public detail::sparse_base<T, B> {
    using base = detail::sparse_base<T, B>;

public:
    explicit rowwise_adagrad(param_store<T, B>& store, rowwise_adagrad_options o = {}) : base(store), o_(o) {
        XREC_CHECK(o.lr >= 0 && o.eps >= 0 && o.weight_decay >= 0 && o.initial_accumulator_value >= 0,
                   "rowwise_adagrad: lr ", o.lr, ", eps ", o.eps, ", weight_decay ", o.weight_decay,
                   " and initial_accumulator_value ", o.initial_accumulator_value, " must be >= 0");
        this->ensure_tables(sum_, true, o_.initial_accumulator_value);
    }

    void step() {
        this->ensure_tables(sum_, true, o_.initial_accumulator_value);
        this->step_.advance();
        const T lr = static_cast<T>(o_.lr), eps = static_cast<T>(o_.eps);
        const T l2 = o_.decoupled ? T(0) : static_cast<T>(o_.weight_decay);
        const T shrink = o_.decoupled ? static_cast<T>(1 - o_.lr * o_.weight_decay) : T(1);
        kernels::rowwise_adagrad_update(B{}, *this->store_, this->scratch_, this->pool_, sum_, lr, eps, l2, shrink);
    }

    double lr() const noexcept { return o_.lr; }
    void set_lr(double lr) noexcept { o_.lr = lr; }
    const rowwise_adagrad_options& options() const noexcept { return o_; }
    std::vector<named_tensor<T>> state() {
        this->ensure_tables(sum_, true, o_.initial_accumulator_value);
        std::vector<named_tensor<T>> out{this->step_.named("rowwise_adagrad")};
        this->append_table_views(out, "rowwise_adagrad", "sum", sum_, true);
        return out;
    }

private:
    rowwise_adagrad_options o_;
    std::vector<buffer<T, B>> sum_;
};

}  // namespace xrec::optim
