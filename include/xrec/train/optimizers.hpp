#pragma once
// The optimizer pair every trainer steps: one for the dense flat buffer, one for the embedding
// tables, chosen at run time from a small closed set (std::variant, no virtual calls per step).
#include <type_traits>
#include <variant>

#include "xrec/core/param_store.hpp"
#include "xrec/core/parallel.hpp"
#include "xrec/optim/adam.hpp"
#include "xrec/optim/ftrl.hpp"
#include "xrec/optim/lazy_adam.hpp"
#include "xrec/optim/rowwise_adagrad.hpp"
#include "xrec/optim/sgd.hpp"
#include "xrec/optim/sparse_adagrad.hpp"
#include "xrec/optim/sparse_sgd.hpp"

namespace xrec::train {

/// The optimizer of the dense flat buffer (every parameter that is not an embedding table).
enum class dense_optimizer { adam, adamw, sgd };
/// The optimizer of the embedding tables (sparse row updates).
enum class sparse_optimizer { rowwise_adagrad, sparse_adagrad, lazy_adam, sparse_sgd, ftrl };

/// What a trainer asks of optimizer_set::make. `sparse_lr` is FTRL's alpha and
/// `sparse_weight_decay` its l2; `sgd_momentum` applies to dense sgd only.
struct optimizer_settings {
    dense_optimizer dense = dense_optimizer::adam;
    double dense_lr = 1e-3, weight_decay = 0, sgd_momentum = 0;
    sparse_optimizer sparse = sparse_optimizer::rowwise_adagrad;
    double sparse_lr = 1e-3, sparse_weight_decay = 0;
};

/// The dense and the sparse optimizer of one param_store. Empty (std::monostate) until
/// make(); step() steps both (the dense one first). The variants are public so that a
/// trainer can save and restore their state with std::visit.
template <class T, class B>
struct optimizer_set {
    std::variant<std::monostate, optim::adam<T, B>, optim::adamw<T, B>, optim::sgd<T, B>> dense;
    std::variant<std::monostate, optim::rowwise_adagrad<T, B>, optim::sparse_adagrad<T, B>, optim::lazy_adam<T, B>,
                 optim::sparse_sgd<T, B>, optim::ftrl<T, B>>
        sparse;

    void make(param_store<T, B>& store, const optimizer_settings& o, thread_pool* pool) {
        const double wd = o.weight_decay, swd = o.sparse_weight_decay;
        switch (o.dense) {
            case dense_optimizer::adam:
                dense.template emplace<optim::adam<T, B>>(store, optim::adam_options{.lr = o.dense_lr, .weight_decay = wd});
                break;
            case dense_optimizer::adamw: {
                auto a = optim::adamw_defaults();
                a.lr = o.dense_lr;
                a.weight_decay = wd;
                dense.template emplace<optim::adamw<T, B>>(store, a);
                break;
            }
            case dense_optimizer::sgd:
                dense.template emplace<optim::sgd<T, B>>(
                    store, optim::sgd_options{.lr = o.dense_lr, .momentum = o.sgd_momentum, .weight_decay = wd});
                break;
        }
        switch (o.sparse) {
            case sparse_optimizer::rowwise_adagrad:
                sparse.template emplace<optim::rowwise_adagrad<T, B>>(
                    store, optim::rowwise_adagrad_options{.lr = o.sparse_lr, .weight_decay = swd});
                break;
            case sparse_optimizer::sparse_adagrad:
                sparse.template emplace<optim::sparse_adagrad<T, B>>(
                    store, optim::sparse_adagrad_options{.lr = o.sparse_lr, .weight_decay = swd});
                break;
            case sparse_optimizer::lazy_adam:
                sparse.template emplace<optim::lazy_adam<T, B>>(
                    store, optim::lazy_adam_options{.lr = o.sparse_lr, .weight_decay = swd});
                break;
            case sparse_optimizer::sparse_sgd:
                sparse.template emplace<optim::sparse_sgd<T, B>>(
                    store, optim::sparse_sgd_options{.lr = o.sparse_lr, .weight_decay = swd});
                break;
            case sparse_optimizer::ftrl:
                sparse.template emplace<optim::ftrl<T, B>>(store, optim::ftrl_options{.alpha = o.sparse_lr, .l2 = swd});
                break;
        }
        std::visit([&](auto& opt) {
            if constexpr (!std::is_same_v<std::decay_t<decltype(opt)>, std::monostate>) opt.set_pool(pool);
        }, dense);
        std::visit([&](auto& opt) {
            if constexpr (!std::is_same_v<std::decay_t<decltype(opt)>, std::monostate>) opt.set_pool(pool);
        }, sparse);
    }

    void step() {
        std::visit([](auto& opt) { step_of(opt); }, dense);
        std::visit([](auto& opt) { step_of(opt); }, sparse);
    }

private:
    template <class O>
    static void step_of(O& opt) {
        if constexpr (!std::is_same_v<O, std::monostate>) opt.step();
    }
};

}  // namespace xrec::train
