#pragma once
// Two-tower retrieval (Yi et al., "Sampling-bias-corrected neural modeling for large corpus
// item recommendations", RecSys 2019): a user tower and an item tower, each over an id
// embedding and optional categorical features, scored by a dot product.
#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/tensor.hpp"
#include "xrec/layers/embedding.hpp"
#include "xrec/layers/embedding_bag.hpp"
#include "xrec/layers/mlp.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/concat.hpp"
#include "xrec/ops/reduce.hpp"

namespace xrec::models {

/// Side features of one id space as CSR: the features of id r are
/// values[offsets[r] .. offsets[r + 1]), ids in [0, rows) of the tower's feature table
/// (e.g. an item's genres, a user's age bucket / gender / occupation, offset into one id
/// space). offsets has n_ids + 1 entries.
struct id_features {
    std::vector<std::int64_t> offsets;
    std::vector<std::int64_t> values;
    std::int64_t rows = 0;  // size of the feature vocabulary
    bool empty() const { return rows == 0; }
};

/// Options of two_tower. Each tower embeds its id (width `id_dim`) and, when its feature
/// CSR is given, mean-pools the embeddings of the id's features (width `feature_dim`, 0 =
/// id_dim); the concatenation goes through the tower's MLP (`user_tower` / `item_tower`,
/// layers::mlp_options: hidden widths, then `out`, the embedding width D, which both towers
/// must produce alike). An MLP with no hidden layer and out = 0 is the identity: the tower
/// is then its embeddings, and the model is MF (plus features).
struct two_tower_options {
    std::string name = "two_tower";
    std::int64_t n_users = 0, n_items = 0;
    std::int64_t id_dim = 32;
    std::int64_t feature_dim = 0;
    layers::mlp_options user_tower{.hidden = {64}, .out = 32};
    layers::mlp_options item_tower{.hidden = {64}, .out = 32};
    id_features user_features{}, item_features{};
    init embedding_init = init::normal(0, 0.05);
};

/// Two-tower model:
///
///     x_u = [e_u, mean_{f in F(u)} e'_f]       u(x) = MLP_U(x_u)     [D]
///     x_i = [e_i, mean_{f in F(i)} e'_f]       v(x) = MLP_I(x_i)     [D]
///     score(u, i) = <u(x), v(x)>
///
/// Train it with loss::in_batch_softmax (log-Q corrected; train/cf_trainer.hpp). Shapes:
/// users [n] -> [n, D], items [n] -> [n, D], score [n]. Parameters: "<name>.user" [n_users,
/// id_dim], "<name>.item" [n_items, id_dim], with features "<name>.user_features" /
/// "<name>.item_features" [rows, feature_dim] (tables), "<name>.user_tower.<l>.weight|bias"
/// and ".user_tower.out.weight|bias" (likewise item_tower). Backward: the ops' nodes.
/// Retrieval: export_item_embeddings() runs the item tower over every item once (an
/// infer_ctx) and keeps the [n_items, D] matrix that item_embeddings() returns, the matrix
/// serve::top_k searches with the query user_vectors(u).
template <class T = float, class B = cpu<>>
struct two_tower {
    using options = two_tower_options;

    options opt;
    layers::embedding<T, B> user, item;
    std::optional<layers::embedding_bag<T, B>> user_feat, item_feat;
    layers::mlp<T, B> user_tower, item_tower;

    two_tower(param_store<T, B>& store, options o)
        : opt(checked(std::move(o))), user(store, opt.name + ".user", opt.n_users, opt.id_dim, opt.embedding_init),
          item(store, opt.name + ".item", opt.n_items, opt.id_dim, opt.embedding_init),
          user_feat(bag(store, opt.name + ".user_features", opt.user_features, fdim(opt), opt.embedding_init)),
          item_feat(bag(store, opt.name + ".item_features", opt.item_features, fdim(opt), opt.embedding_init)),
          user_tower(store, opt.name + ".user_tower", opt.id_dim + (user_feat ? fdim(opt) : 0), opt.user_tower),
          item_tower(store, opt.name + ".item_tower", opt.id_dim + (item_feat ? fdim(opt) : 0), opt.item_tower) {
        XREC_CHECK(user_tower.out_features() == item_tower.out_features(), "two_tower '", opt.name,
                   "': the user tower gives ", user_tower.out_features(), " features, the item tower ",
                   item_tower.out_features(), "; a dot product needs equal widths");
    }

    /// The embedding width D of both towers.
    std::int64_t dim() const { return user_tower.out_features(); }

    /// u(x) for each user id: [n, D].
    template <class Ctx>
    var<T> user_vectors(Ctx& ctx, std::span<const std::int64_t> users) const {
        return tower(ctx, user, user_feat, opt.user_features, user_tower, users);
    }
    /// v(x) for each item id: [n, D].
    template <class Ctx>
    var<T> item_vectors(Ctx& ctx, std::span<const std::int64_t> items) const {
        return tower(ctx, item, item_feat, opt.item_features, item_tower, items);
    }
    /// Scores [n] of the pairs (users[k], items[k]).
    template <class Ctx>
    var<T> score(Ctx& ctx, std::span<const std::int64_t> users, std::span<const std::int64_t> items) const {
        XREC_CHECK(users.size() == items.size(), "two_tower '", opt.name, "': ", users.size(), " users but ",
                   items.size(), " items");
        return ops::sum(ctx, ops::mul(ctx, user_vectors(ctx, users), item_vectors(ctx, items)), -1);
    }

    /// Runs the item tower over all items (in chunks of `chunk` on `ctx`) and keeps the
    /// result; call after training, before item_embeddings().
    void export_item_embeddings(infer_ctx<T, B>& ctx, std::int64_t chunk = 4096) {
        static_assert(backend_memory<B>::host_accessible, "two_tower::export_item_embeddings copies on the host");
        const std::int64_t n = opt.n_items, d = dim();
        exported_.assign(static_cast<std::size_t>(n * d), T(0));
        std::vector<std::int64_t> ids;
        for (std::int64_t b = 0; b < n; b += chunk) {
            const std::int64_t e = std::min(n, b + chunk);
            ids.resize(static_cast<std::size_t>(e - b));
            for (std::int64_t i = b; i < e; ++i) ids[static_cast<std::size_t>(i - b)] = i;
            ctx.reset();
            const var<T> v = item_vectors(ctx, std::span<const std::int64_t>(ids));
            std::copy(v.data, v.data + v.numel(), exported_.data() + b * d);
        }
        ctx.reset();
    }
    /// The exported item matrix [n_items, D] (empty before export_item_embeddings()).
    tensor_view<const T> item_embeddings() const {
        if (exported_.empty()) return {};
        return {exported_.data(), shape{opt.n_items, dim()}};
    }

    std::int64_t n_users() const { return opt.n_users; }
    std::int64_t n_items() const { return opt.n_items; }
    std::string_view kind() const { return "two_tower"; }

private:
    static std::int64_t fdim(const options& o) { return o.feature_dim > 0 ? o.feature_dim : o.id_dim; }
    static std::optional<layers::embedding_bag<T, B>> bag(param_store<T, B>& s, const std::string& name,
                                                          const id_features& f, std::int64_t dim, const init& how) {
        if (f.empty()) return std::nullopt;
        return std::optional<layers::embedding_bag<T, B>>(std::in_place, s, name, f.rows, dim, pooling::mean, how);
    }
    static void check_features(const std::string& who, const id_features& f, std::int64_t ids) {
        if (f.empty()) return;
        XREC_CHECK(static_cast<std::int64_t>(f.offsets.size()) == ids + 1, who, ": feature offsets have ",
                   f.offsets.size(), " entries for ", ids, " ids (need ids + 1)");
        const jagged_ids j{f.values, f.offsets};
        j.check(who.c_str(), f.rows);
    }
    static options checked(options o) {
        const std::string who = "two_tower '" + o.name + "'";
        XREC_CHECK(o.n_users > 0 && o.n_items > 0 && o.id_dim > 0, who, ": needs n_users, n_items and id_dim > 0, got ",
                   o.n_users, ", ", o.n_items, ", ", o.id_dim);
        check_features(who + " user features", o.user_features, o.n_users);
        check_features(who + " item features", o.item_features, o.n_items);
        return o;
    }

    // One tower: [e_id, mean-pooled features] -> MLP.
    template <class Ctx>
    var<T> tower(Ctx& ctx, const layers::embedding<T, B>& id_emb, const std::optional<layers::embedding_bag<T, B>>& fe,
                 const id_features& f, const layers::mlp<T, B>& net, std::span<const std::int64_t> ids) const {
        var<T> x = id_emb(ctx, ids);
        if (fe) {
            // The batch's features as a jagged input, in arena memory (nothing on the heap).
            const auto n = static_cast<std::int64_t>(ids.size());
            std::int64_t* off = ctx.template scratch<std::int64_t>(n + 1);
            off[0] = 0;
            for (std::int64_t k = 0; k < n; ++k) {
                const auto id = static_cast<std::size_t>(ids[static_cast<std::size_t>(k)]);
                off[k + 1] = off[k] + (f.offsets[id + 1] - f.offsets[id]);
            }
            std::int64_t* val = ctx.template scratch<std::int64_t>(off[n] > 0 ? off[n] : 1);
            for (std::int64_t k = 0; k < n; ++k) {
                const auto id = static_cast<std::size_t>(ids[static_cast<std::size_t>(k)]);
                std::copy(f.values.begin() + f.offsets[id], f.values.begin() + f.offsets[id + 1], val + off[k]);
            }
            const jagged_ids j{std::span<const std::int64_t>(val, static_cast<std::size_t>(off[n])),
                               std::span<const std::int64_t>(off, static_cast<std::size_t>(n + 1))};
            const std::array<var<T>, 2> parts{x, (*fe)(ctx, j)};
            x = ops::concat(ctx, std::span<const var<T>>(parts));
        }
        return net(ctx, x);
    }

    std::vector<T> exported_;
};

}  // namespace xrec::models
