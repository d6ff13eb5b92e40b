#pragma once
// Multi-head attention with input and output projections, torch.nn.MultiheadAttention
// (batch_first=True) parameter for parameter.
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/var.hpp"
#include "xrec/ops/attention.hpp"
#include "xrec/ops/basic.hpp"

namespace xrec::layers {

namespace detail {
/// Rows [r0, r1) of a dense parameter (of any rank, seen as [rows, cols]) as a var whose
/// gradient accumulates into the same rows of the parameter's gradient: how the q, k and v
/// blocks of one packed in_proj_weight become three linear weights.
template <class Ctx, class T, class B>
var<T> param_rows(Ctx& ctx, const dense_param<T, B>& p, std::int64_t r0, std::int64_t r1) {
    const std::int64_t cols = p.s.rank >= 2 ? p.s.cols() : 1;
    const shape s = p.s.rank >= 2 ? shape{r1 - r0, cols} : shape{r1 - r0};
    if constexpr (Ctx::records)
        return ctx.leaf(tensor_view<T>{p.value() + r0 * cols, s}, p.grad() + r0 * cols);
    else
        return var<T>{p.value() + r0 * cols, s, nullptr, 0};
}
}  // namespace detail

/// Multi-head attention (Vaswani et al. 2017) as torch.nn.MultiheadAttention(embed_dim D,
/// num_heads H, dropout p, bias, batch_first=True), with kdim = vdim = D:
///   q = query Wq^T + bq,  k = key Wk^T + bk,  v = value Wv^T + bv   ([Wq; Wk; Wv] = in_proj_weight)
///   per head h (width D/H): A_h = softmax(q_h k_h^T / sqrt(D/H) + mask), dropout(A_h) v_h
///   y = concat_h(...) out_proj.weight^T + out_proj.bias
/// Shapes: query [B, Tq, D], key and value [B, Tk, D] -> y [B, Tq, D]. Self-attention
/// (q = k = v = x) runs one packed [B, T, 3D] projection.
/// Masks (ops::attention_mask): causal, per-row key lengths and/or a byte mask of valid
/// keys (1 = attend: the complement of PyTorch's key_padding_mask). A query that may attend
/// to no key gives an output row of exact zeros (PyTorch gives NaN there): its attention
/// weights are zero and the output projection's bias is not added to it.
/// Dropout with rate p on the attention weights in training only (mask from the context's
/// random stream, see ops::scaled_dot_product_attention).
/// Parameters (PyTorch's names and layouts): "<name>.in_proj_weight" [3D, D] (xavier
/// uniform), "<name>.in_proj_bias" [3D] (zeros), "<name>.out_proj.weight" [D, D]
/// (U(-1/sqrt(D), 1/sqrt(D))), "<name>.out_proj.bias" [D] (zeros); the biases only with
/// `bias`.
/// Tape: one node per projection GEMM (ops::linear; it saves the input and the weight), one
/// for the attention core (saves the weights before and after dropout and the dropout
/// multipliers, [B, H, Tq, Tk] each) and, when some query is dead, one that zeroes its rows.
template <class T = float, class B = cpu<>>
struct multi_head_attention {
    dense_param<T, B> in_proj_weight, in_proj_bias, out_weight, out_bias;
    std::string name;
    std::int64_t embed_dim = 0, num_heads = 1;
    double dropout = 0;

    multi_head_attention(param_store<T, B>& s, const std::string& layer_name, std::int64_t dim, std::int64_t heads,
                         double dropout_p = 0, bool bias = true)
        : name(layer_name), embed_dim(dim), num_heads(heads), dropout(dropout_p) {
        XREC_CHECK(dim > 0 && heads > 0 && dim % heads == 0, "multi_head_attention '", name, "': embed_dim ", dim,
                   " must be a positive multiple of num_heads ", heads);
        XREC_CHECK(dropout_p >= 0 && dropout_p <= 1, "multi_head_attention '", name, "': dropout must be in [0, 1], got ",
                   dropout_p);
        in_proj_weight = s.add(name + ".in_proj_weight", shape{3 * dim, dim}, init::xavier_uniform(), dim, 3 * dim);
        if (bias) in_proj_bias = s.add(name + ".in_proj_bias", shape{3 * dim}, init::zeros());
        const double k = 1.0 / std::sqrt(static_cast<double>(dim));
        out_weight = s.add(name + ".out_proj.weight", shape{dim, dim}, init::uniform(-k, k), dim, dim);
        if (bias) out_bias = s.add(name + ".out_proj.bias", shape{dim}, init::zeros());
    }

    bool has_bias() const noexcept { return in_proj_bias.store != nullptr; }

    /// Self-attention: query = key = value = x [B, T, D].
    template <class Ctx>
    var<T> operator()(Ctx& ctx, const var<T>& x, const ops::attention_mask& mask = {}) const {
        check_types<Ctx>();
        XREC_CHECK(x.s.rank == 3 && x.s[2] == embed_dim, "multi_head_attention '", name, "': input ", x.s.str(),
                   " must be [batch, len, ", embed_dim, "]");
        ops::detail::check_attention_mask(mask, x.s[0], x.s[1], "multi_head_attention '", name, "'");
        const var<T> qkv = ops::linear(ctx, x, ctx.param(in_proj_weight), has_bias() ? ctx.param(in_proj_bias) : var<T>{});
        const var<T> o = ops::scaled_dot_product_attention_packed(ctx, qkv, num_heads, mask, dropout);
        return project_out(ctx, o, mask, x.s[0], x.s[1], x.s[1]);
    }

    /// General attention: query [B, Tq, D], key and value [B, Tk, D] (may be the same var).
    template <class Ctx>
    var<T> operator()(Ctx& ctx, const var<T>& query, const var<T>& key, const var<T>& value,
                      const ops::attention_mask& mask = {}) const {
        check_types<Ctx>();
        const std::int64_t D = embed_dim;
        XREC_CHECK(query.s.rank == 3 && key.s.rank == 3 && value.s.rank == 3 && query.s[2] == D && key.s == value.s &&
                       key.s[0] == query.s[0] && key.s[2] == D,
                   "multi_head_attention '", name, "': query ", query.s.str(), ", key ", key.s.str(), " and value ",
                   value.s.str(), " must be [batch, Tq, ", D, "], [batch, Tk, ", D, "], [batch, Tk, ", D, "]");
        ops::detail::check_attention_mask(mask, query.s[0], key.s[1], "multi_head_attention '", name, "'");
        auto bias_rows = [&](std::int64_t r0) {
            return has_bias() ? detail::param_rows(ctx, in_proj_bias, r0, r0 + D) : var<T>{};
        };
        const var<T> q = ops::linear(ctx, query, detail::param_rows(ctx, in_proj_weight, 0, D), bias_rows(0));
        const var<T> k = ops::linear(ctx, key, detail::param_rows(ctx, in_proj_weight, D, 2 * D), bias_rows(D));
        const var<T> v = ops::linear(ctx, value, detail::param_rows(ctx, in_proj_weight, 2 * D, 3 * D), bias_rows(2 * D));
        const var<T> o = ops::scaled_dot_product_attention(ctx, q, k, v, num_heads, mask, dropout);
        return project_out(ctx, o, mask, query.s[0], query.s[1], key.s[1]);
    }

private:
    template <class Ctx>
    static constexpr void check_types() {
        static_assert(std::is_same_v<typename Ctx::value_type, T> && std::is_same_v<typename Ctx::backend, B>,
                      "multi_head_attention: the context's value type and backend must match the layer's");
    }

    template <class Ctx>
    var<T> project_out(Ctx& ctx, const var<T>& o, const ops::attention_mask& mask, std::int64_t batch, std::int64_t tq,
                       std::int64_t tk) const {
        var<T> y = ops::linear(ctx, o, ctx.param(out_weight), has_bias() ? ctx.param(out_bias) : var<T>{});
        if (!mask.any() || !has_bias()) return y;  // dead rows are already zero without a bias
        // The flags are host memory (zero_rows reads them on the host): the tape's scratch
        // when training; the workspace when serving, which is host memory on the cpu backend
        // (a device workspace has no host view: a host vector then).
        std::vector<std::uint8_t> host;
        std::uint8_t* dead = nullptr;
        if constexpr (Ctx::records) {
            dead = ctx.template tape_scratch<std::uint8_t>(batch * tq);
        } else if constexpr (backend_memory<B>::host_accessible) {
            dead = ctx.template scratch<std::uint8_t>(batch * tq);
        } else {
            host.resize(static_cast<std::size_t>(batch * tq));
            dead = host.data();
        }
        if (ops::detail::dead_queries(mask, batch, tq, tk, dead) == 0) return y;
        return ops::zero_rows(ctx, y, dead);
    }
};

}  // namespace xrec::layers
