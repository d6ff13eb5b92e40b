#pragma once
// Neural collaborative filtering (He et al., "Neural Collaborative Filtering", WWW 2017):
// GMF, the MLP model and their fusion NeuMF, including NeuMF initialised from pretrained
// GMF and MLP models.
#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/layers/embedding.hpp"
#include "xrec/layers/linear.hpp"
#include "xrec/layers/mlp.hpp"
#include "xrec/ops/basic.hpp"
#include "xrec/ops/concat.hpp"

namespace xrec::models {

namespace detail {
inline void check_cf_sizes(const std::string& who, std::int64_t users, std::int64_t items, std::int64_t dim) {
    XREC_CHECK(users > 0 && items > 0 && dim > 0, who, ": needs n_users, n_items and dim > 0, got ", users, ", ", items,
               ", ", dim);
}
inline void check_pairs(const std::string& who, std::size_t users, std::size_t items) {
    XREC_CHECK(users == items, who, ": ", users, " users but ", items, " items");
}
/// Copies n values of a host-accessible store entry into another.
template <class T>
void copy_values(const T* from, T* to, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) to[i] = from[i];
}
}  // namespace detail

/// Options of gmf. `output` = false leaves out the prediction layer h (NeuMF uses the
/// element-wise product vector and has its own output layer).
struct gmf_options {
    std::string name = "gmf";
    std::int64_t n_users = 0, n_items = 0;
    std::int64_t dim = 8;  // the predictive factors
    init embedding_init = init::normal(0, 0.01);
    bool output = true;
};

/// Generalized matrix factorisation, NCF's linear model:
///
///     phi(u, i) = p_u (.) q_i                    [D]
///     score     = h^T phi + b                    (a logit; the paper's sigmoid is in the loss)
///
/// Shapes: users, items [n] -> vector [n, D] -> score [n]. Parameters: "<name>.user"
/// [n_users, D], "<name>.item" [n_items, D] (tables), "<name>.out.weight" [1, D],
/// "<name>.out.bias" [1]. Backward: the ops' nodes (the product saves both factors).
template <class T = float, class B = cpu<>>
struct gmf {
    using options = gmf_options;

    options opt;
    layers::embedding<T, B> user, item;
    std::optional<layers::linear<T, B>> out;

    gmf(param_store<T, B>& store, options o)
        : opt(checked(std::move(o))), user(store, opt.name + ".user", opt.n_users, opt.dim, opt.embedding_init),
          item(store, opt.name + ".item", opt.n_items, opt.dim, opt.embedding_init),
          out(opt.output ? std::optional<layers::linear<T, B>>(std::in_place, store, opt.name + ".out", opt.dim, 1)
                         : std::nullopt) {}

    /// p_u (.) q_i: [n, D].
    template <class Ctx>
    var<T> vector(Ctx& ctx, std::span<const std::int64_t> users, std::span<const std::int64_t> items) const {
        detail::check_pairs("gmf '" + opt.name + "'", users.size(), items.size());
        return ops::mul(ctx, user(ctx, users), item(ctx, items));
    }
    /// Logits [n] of the pairs (users[k], items[k]).
    template <class Ctx>
    var<T> score(Ctx& ctx, std::span<const std::int64_t> users, std::span<const std::int64_t> items) const {
        XREC_CHECK(out.has_value(), "gmf '", opt.name, "': built without its output layer (options.output = false)");
        const var<T> y = (*out)(ctx, vector(ctx, users, items));
        return ops::reshape(ctx, y, shape{y.rows()});
    }
    std::int64_t n_users() const { return opt.n_users; }
    std::int64_t n_items() const { return opt.n_items; }
    std::string_view kind() const { return "gmf"; }

private:
    static options checked(options o) {
        detail::check_cf_sizes("gmf '" + o.name + "'", o.n_users, o.n_items, o.dim);
        return o;
    }
};

/// Options of ncf_mlp: per-side embedding width `dim`, the tower's hidden widths (ReLU; the
/// last is the predictive factors), `output` = false leaves out the prediction layer.
struct ncf_mlp_options {
    std::string name = "ncf_mlp";
    std::int64_t n_users = 0, n_items = 0;
    std::int64_t dim = 16;
    std::vector<std::int64_t> hidden = {16, 8};
    init embedding_init = init::normal(0, 0.01);
    bool output = true;
};

/// NCF's multi-layer perceptron model:
///
///     z_0   = [p_u, q_i]                          [2 E]
///     z_l   = relu(W_l z_{l-1} + b_l)             l = 1..L   (the tower)
///     score = h^T z_L + b
///
/// Shapes: users, items [n] -> z_0 [n, 2E] -> z_L [n, H_L] -> score [n]. Parameters:
/// "<name>.user" [n_users, E], "<name>.item" [n_items, E] (tables), "<name>.tower.<l>.weight"
/// [H_l, H_{l-1}] / ".bias", "<name>.out.weight" [1, H_L], "<name>.out.bias" [1].
/// Backward: the ops' nodes (concat routes the column blocks back to the two lookups).
template <class T = float, class B = cpu<>>
struct ncf_mlp {
    using options = ncf_mlp_options;

    options opt;
    layers::embedding<T, B> user, item;
    layers::mlp<T, B> tower;
    std::optional<layers::linear<T, B>> out;

    ncf_mlp(param_store<T, B>& store, options o)
        : opt(checked(std::move(o))), user(store, opt.name + ".user", opt.n_users, opt.dim, opt.embedding_init),
          item(store, opt.name + ".item", opt.n_items, opt.dim, opt.embedding_init),
          tower(store, opt.name + ".tower", 2 * opt.dim, layers::mlp_options{.hidden = opt.hidden}),
          out(opt.output ? std::optional<layers::linear<T, B>>(std::in_place, store, opt.name + ".out",
                                                                tower.out_features(), 1)
                         : std::nullopt) {}

    /// z_L: [n, H_L].
    template <class Ctx>
    var<T> vector(Ctx& ctx, std::span<const std::int64_t> users, std::span<const std::int64_t> items) const {
        detail::check_pairs("ncf_mlp '" + opt.name + "'", users.size(), items.size());
        const std::array<var<T>, 2> parts{user(ctx, users), item(ctx, items)};
        return tower(ctx, ops::concat(ctx, std::span<const var<T>>(parts)));
    }
    /// Logits [n] of the pairs (users[k], items[k]).
    template <class Ctx>
    var<T> score(Ctx& ctx, std::span<const std::int64_t> users, std::span<const std::int64_t> items) const {
        XREC_CHECK(out.has_value(), "ncf_mlp '", opt.name, "': built without its output layer (options.output = false)");
        const var<T> y = (*out)(ctx, vector(ctx, users, items));
        return ops::reshape(ctx, y, shape{y.rows()});
    }
    std::int64_t n_users() const { return opt.n_users; }
    std::int64_t n_items() const { return opt.n_items; }
    std::int64_t factors() const { return tower.out_features(); }
    std::string_view kind() const { return "ncf_mlp"; }

private:
    static options checked(options o) {
        detail::check_cf_sizes("ncf_mlp '" + o.name + "'", o.n_users, o.n_items, o.dim);
        XREC_CHECK(!o.hidden.empty(), "ncf_mlp '", o.name, "': needs at least one hidden layer");
        return o;
    }
};

/// Options of neumf: the GMF part's width `gmf_dim`, the MLP part's per-side width `mlp_dim`
/// and tower `hidden`.
struct neumf_options {
    std::string name = "neumf";
    std::int64_t n_users = 0, n_items = 0;
    std::int64_t gmf_dim = 8;
    std::int64_t mlp_dim = 16;
    std::vector<std::int64_t> hidden = {16, 8};
    init embedding_init = init::normal(0, 0.01);
};

/// Neural matrix factorisation: GMF and MLP with separate embeddings, fused by one output
/// layer over their concatenated last vectors:
///
///     phi_G = p^G_u (.) q^G_i                     [D_G]
///     phi_M = z_L of the MLP tower over [p^M_u, q^M_i]   [H_L]
///     score = h^T [phi_G, phi_M] + b
///
/// Shapes: users, items [n] -> [n, D_G + H_L] -> score [n]. Parameters: the GMF part
/// "<name>.gmf.user" / ".gmf.item", the MLP part "<name>.mlp.user" / ".mlp.item" /
/// ".mlp.tower.<l>.weight|bias", and "<name>.out.weight" [1, D_G + H_L], "<name>.out.bias"
/// [1]. Backward: the ops' nodes.
///
/// Pretraining (section 3.4.1 of the paper): init_from(g, m, alpha) copies the embeddings
/// and the tower of a trained gmf and ncf_mlp of the same sizes, and sets the output layer
/// to h = [alpha h_G, (1 - alpha) h_M], b = alpha b_G + (1 - alpha) b_M (alpha = 0.5 in the
/// paper and its code).
template <class T = float, class B = cpu<>>
struct neumf {
    using options = neumf_options;

    options opt;
    gmf<T, B> g;
    ncf_mlp<T, B> m;
    layers::linear<T, B> out;

    neumf(param_store<T, B>& store, options o)
        : opt(std::move(o)),
          g(store, gmf_options{.name = opt.name + ".gmf", .n_users = opt.n_users, .n_items = opt.n_items,
                               .dim = opt.gmf_dim, .embedding_init = opt.embedding_init, .output = false}),
          m(store, ncf_mlp_options{.name = opt.name + ".mlp", .n_users = opt.n_users, .n_items = opt.n_items,
                                   .dim = opt.mlp_dim, .hidden = opt.hidden, .embedding_init = opt.embedding_init,
                                   .output = false}),
          out(store, opt.name + ".out", opt.gmf_dim + m.factors(), 1) {}

    /// Logits [n] of the pairs (users[k], items[k]).
    template <class Ctx>
    var<T> score(Ctx& ctx, std::span<const std::int64_t> users, std::span<const std::int64_t> items) const {
        const std::array<var<T>, 2> parts{g.vector(ctx, users, items), m.vector(ctx, users, items)};
        const var<T> y = out(ctx, ops::concat(ctx, std::span<const var<T>>(parts)));
        return ops::reshape(ctx, y, shape{y.rows()});
    }

    /// Initialises every parameter from a trained gmf and ncf_mlp (see above). Their sizes
    /// must match this model's; both need their output layers.
    void init_from(const gmf<T, B>& pg, const ncf_mlp<T, B>& pm, double alpha = 0.5) {
        static_assert(backend_memory<B>::host_accessible, "neumf::init_from copies on the host");
        const std::string who = "neumf '" + opt.name + "': init_from";
        XREC_CHECK(pg.opt.n_users == opt.n_users && pg.opt.n_items == opt.n_items && pg.opt.dim == opt.gmf_dim,
                   who, ": the gmf has ", pg.opt.n_users, " users, ", pg.opt.n_items, " items, dim ", pg.opt.dim,
                   "; this model ", opt.n_users, ", ", opt.n_items, ", ", opt.gmf_dim);
        XREC_CHECK(pm.opt.n_users == opt.n_users && pm.opt.n_items == opt.n_items && pm.opt.dim == opt.mlp_dim &&
                       pm.opt.hidden == opt.hidden,
                   who, ": the ncf_mlp's sizes differ from this model's MLP part");
        XREC_CHECK(pg.out && pm.out, who, ": the pretrained models need their output layers");
        copy_table(pg.user, g.user);
        copy_table(pg.item, g.item);
        copy_table(pm.user, m.user);
        copy_table(pm.item, m.item);
        for (std::size_t l = 0; l < m.tower.layers.size(); ++l) {
            copy_dense(pm.tower.layers[l].weight, m.tower.layers[l].weight);
            copy_dense(pm.tower.layers[l].bias, m.tower.layers[l].bias);
        }
        const T a = static_cast<T>(alpha), b = static_cast<T>(1 - alpha);
        T* w = out.weight.value();
        const T* wg = pg.out->weight.value();
        const T* wm = pm.out->weight.value();
        for (std::int64_t k = 0; k < opt.gmf_dim; ++k) w[k] = a * wg[k];
        for (std::int64_t k = 0; k < m.factors(); ++k) w[opt.gmf_dim + k] = b * wm[k];
        out.bias.value()[0] = a * pg.out->bias.value()[0] + b * pm.out->bias.value()[0];
    }

    std::int64_t n_users() const { return opt.n_users; }
    std::int64_t n_items() const { return opt.n_items; }
    std::string_view kind() const { return "neumf"; }

private:
    static void copy_table(const layers::embedding<T, B>& from, const layers::embedding<T, B>& to) {
        const auto& f = from.table.table();
        auto& t = to.table.table();
        detail::copy_values(f.values.data(), t.values.data(), f.rows * f.dim);
    }
    static void copy_dense(const dense_param<T, B>& from, const dense_param<T, B>& to) {
        detail::copy_values(static_cast<const T*>(from.value()), to.value(), from.s.numel());
    }
};

}  // namespace xrec::models
