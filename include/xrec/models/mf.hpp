#pragma once
// Matrix factorisation for implicit feedback: the model of BPR-MF (Rendle et al., UAI 2009)
// and of pointwise (BCE) factorisation.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/tensor.hpp"
#include "xrec/layers/embedding.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/reduce.hpp"

namespace xrec::models {

/// Options of mf. `name` prefixes every parameter; n_users and n_items are the sizes of the
/// dense 0-based id spaces; dim the factor width; item_bias adds a per-item bias b_i;
/// embedding_init initialises both factor tables (the bias table starts at zero).
struct mf_options {
    std::string name = "mf";
    std::int64_t n_users = 0, n_items = 0;
    std::int64_t dim = 64;
    bool item_bias = false;
    init embedding_init = init::normal(0, 0.1);
};

/// Matrix factorisation:
///
///     score(u, i) = <p_u, q_i> (+ b_i)
///
/// with P [n_users, D] and Q [n_items, D] (and b [n_items, 1]). Train it with loss::bpr on
/// (user, positive, negative) triples or with loss::bce_with_logits on labelled pairs
/// (train/cf_trainer.hpp does both). Shapes: users, items [n] ids -> scores [n].
/// Parameters (tables, sparse gradients): "<name>.user" [n_users, D], "<name>.item"
/// [n_items, D], with item_bias "<name>.item_bias" [n_items, 1].
/// Backward: the lookups' sparse rows, the product's saved factors (ops::mul).
/// Retrieval: item_embeddings() is Q itself, so serve::top_k over it with query p_u gives
/// the best items (add b_i to the scores, or append it to Q with a 1 on the query, when the
/// model has a bias).
template <class T = float, class B = cpu<>>
struct mf {
    using options = mf_options;

    options opt;
    layers::embedding<T, B> user, item;
    std::optional<layers::embedding<T, B>> bias;

    mf(param_store<T, B>& store, options o)
        : opt(checked(std::move(o))),
          user(store, opt.name + ".user", opt.n_users, opt.dim, opt.embedding_init),
          item(store, opt.name + ".item", opt.n_items, opt.dim, opt.embedding_init),
          bias(opt.item_bias ? std::optional<layers::embedding<T, B>>(std::in_place, store, opt.name + ".item_bias",
                                                                       opt.n_items, 1, init::zeros())
                             : std::nullopt) {}

    /// p_u for each user id: [n, D].
    template <class Ctx>
    var<T> user_vectors(Ctx& ctx, std::span<const std::int64_t> users) const {
        return user(ctx, users);
    }
    /// q_i for each item id: [n, D].
    template <class Ctx>
    var<T> item_vectors(Ctx& ctx, std::span<const std::int64_t> items) const {
        return item(ctx, items);
    }

    /// Scores [n] of the pairs (users[k], items[k]).
    template <class Ctx>
    var<T> score(Ctx& ctx, std::span<const std::int64_t> users, std::span<const std::int64_t> items) const {
        XREC_CHECK(users.size() == items.size(), "mf '", opt.name, "': ", users.size(), " users but ", items.size(),
                   " items");
        var<T> s = ops::sum(ctx, ops::mul(ctx, user(ctx, users), item(ctx, items)), -1);
        if (bias) s = ops::add(ctx, s, ops::reshape(ctx, (*bias)(ctx, items), s.s));
        return s;
    }

    /// Q as a view [n_items, D] (the serving matrix of a dot-product scorer).
    tensor_view<const T> item_embeddings() const {
        const auto& t = item.table.table();
        return {t.values.data(), shape{t.rows, t.dim}};
    }
    /// P as a view [n_users, D].
    tensor_view<const T> user_embeddings() const {
        const auto& t = user.table.table();
        return {t.values.data(), shape{t.rows, t.dim}};
    }
    /// b as a view [n_items] (empty without item_bias).
    tensor_view<const T> item_biases() const {
        if (!bias) return {};
        const auto& t = bias->table.table();
        return {t.values.data(), shape{t.rows}};
    }

    std::int64_t n_users() const { return opt.n_users; }
    std::int64_t n_items() const { return opt.n_items; }
    std::string_view kind() const { return "mf"; }

private:
    static options checked(options o) {
        XREC_CHECK(o.n_users > 0 && o.n_items > 0 && o.dim > 0, "mf '", o.name,
                   "': needs n_users, n_items and dim > 0, got ", o.n_users, ", ", o.n_items, ", ", o.dim);
        return o;
    }
};

}  // namespace xrec::models
