#pragma once
// The implementation of serve/api.hpp's model_server over serve::predictor. Include it in
// ONE translation unit built with exceptions (see serve/api.hpp for why); that unit's
// factory functions hand model_server objects to exception-free code.
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/serve/api.hpp"
#include "xrec/serve/predictor.hpp"
#include "xrec/serve/status.hpp"

namespace xrec::serve {

namespace detail {
/// The status of an exception thrown by xrec's loaders: not_found when the file is
/// missing, data_loss for a file that is there but refused, internal otherwise.
inline status status_of(message_buffer& msg, const std::exception& e) noexcept {
    const char* w = e.what();
    if (dynamic_cast<const error*>(&e)) {
        const std::string_view s(w);
        const bool missing = s.find("No such file") != std::string_view::npos || s.find("cannot open") != std::string_view::npos;
        return msg.copy(missing ? status_code::not_found : status_code::data_loss, w);
    }
    if (dynamic_cast<const std::bad_alloc*>(&e)) return msg.copy(status_code::internal, "out of memory");
    return msg.copy(status_code::internal, w);
}
}  // namespace detail

/// model_server over predictor<Model, float> (cpu). Built by make_server.
template <class Model>
class server final : public model_server {
public:
    server(feature_layout layout, typename Model::options mo, predictor_options po)
        : p_(std::move(layout), std::move(mo), std::move(po)) {}

    predictor<Model, float>& predictor_ref() noexcept { return p_; }

    status open_session(model_server::session** out) noexcept override {
        *out = nullptr;
        try {
            auto h = std::make_unique<handle>();
            h->seqs.resize(static_cast<std::size_t>(p_.layout().num_sequences()));
            h->weights.resize(h->seqs.size());
            h->s = p_.make_session();
            *out = h.release();
            return {};
        } catch (const std::exception& e) {
            std::lock_guard lock(mutex_);
            return detail::status_of(msg_, e);
        }
    }
    void close_session(model_server::session* s) noexcept override { delete static_cast<handle*>(s); }

    status predict(model_server::session* s, const request_view& req, float* out, std::int64_t out_len) noexcept override {
        if (!s) return {status_code::invalid_argument, "predict: no session (open_session first)"};
        auto& h = *static_cast<handle*>(s);
        batch<float> b;
        if (status e = view_(h, req, b, "predict"); !e) return e;
        return guard_(h, [&] { return p_.predict(h.s, b, std::span<float>(out, static_cast<std::size_t>(out_len > 0 ? out_len : 0))); });
    }

    status rank(model_server::session* s, const request_view& user, const std::int64_t* candidates, std::int64_t num_candidates,
                std::int64_t candidate_cols, float* out, std::int64_t out_len) noexcept override {
        if (!s) return {status_code::invalid_argument, "rank: no session (open_session first)"};
        auto& h = *static_cast<handle*>(s);
        batch<float> b;
        if (status e = view_(h, user, b, "rank"); !e) return e;
        if (num_candidates > 0 && !candidates)
            return h.msg.set(status_code::invalid_argument, "rank: %lld candidates but no candidate ids",
                             static_cast<long long>(num_candidates));
        const tensor_view<const std::int64_t> c{candidates, shape{num_candidates, candidate_cols}};
        return guard_(h, [&] { return p_.rank(h.s, b, c, std::span<float>(out, static_cast<std::size_t>(out_len > 0 ? out_len : 0))); });
    }

    status publish_checkpoint(const char* path) noexcept override {
        std::lock_guard lock(mutex_);
        try {
            p_.publish_checkpoint(path ? std::string(path) : std::string());
            return {};
        } catch (const std::exception& e) {
            return detail::status_of(msg_, e);
        }
    }
    std::uint64_t version() const noexcept override { return p_.version(); }
    std::int64_t tasks() const noexcept override { return p_.layout().num_tasks(); }

private:
    struct handle final : model_server::session {
        serve::session<Model, float> s;
        std::vector<jagged_ids> seqs;
        std::vector<std::span<const float>> weights;
        message_buffer msg;
        const char* last_message() const noexcept override { return msg.str()[0] ? msg.str() : s.last_message(); }
    };

    // The request's arrays as a batch (sizes are checked by the predictor against the layout).
    status view_(handle& h, const request_view& r, batch<float>& b, const char* who) noexcept {
        const auto& l = p_.layout();
        if (r.rows < 0 || r.sparse_len < 0 || r.dense_len < 0 || r.num_sequences < 0 || (r.sparse_len > 0 && !r.sparse) ||
            (r.dense_len > 0 && !r.dense) || (r.num_sequences > 0 && !r.sequences))
            return h.msg.set(status_code::invalid_argument, "%s: negative sizes or null arrays in the request", who);
        if (r.num_sequences != l.num_sequences())
            return h.msg.set(status_code::invalid_argument, "%s: %lld sequence inputs for %lld sequence fields", who,
                             static_cast<long long>(r.num_sequences), static_cast<long long>(l.num_sequences()));
        if (r.rows > p_.options().max_batch)
            return h.msg.set(status_code::invalid_argument, "%s: %lld rows, outside [0, max_batch = %lld]", who,
                             static_cast<long long>(r.rows), static_cast<long long>(p_.options().max_batch));
        const std::size_t S = static_cast<std::size_t>(r.num_sequences);
        if (h.seqs.size() != S) return h.msg.set(status_code::internal, "%s: session made for another layout", who);
        bool weighted = false;
        for (std::size_t k = 0; k < S; ++k) {
            const auto& q = r.sequences[k];
            if (q.num_ids < 0 || (q.num_ids > 0 && !q.ids) || !q.offsets)
                return h.msg.set(status_code::invalid_argument, "%s: sequence input %zu has no offsets or null ids", who, k);
            h.seqs[k] = {{q.ids, static_cast<std::size_t>(q.num_ids)}, {q.offsets, static_cast<std::size_t>(r.rows + 1)}};
            h.weights[k] = q.weights ? std::span<const float>(q.weights, static_cast<std::size_t>(q.num_ids)) : std::span<const float>{};
            weighted = weighted || q.weights;
        }
        b.rows = r.rows;
        const std::int64_t F = l.num_sparse(), Dn = l.num_dense();
        // A length that is not rows x fields is passed on as a [len] view: the predictor names the mismatch.
        b.sparse = {r.sparse, r.sparse_len == r.rows * F ? shape{r.rows, F} : shape{r.sparse_len}};
        b.dense = {r.dense, r.dense_len == r.rows * Dn ? shape{r.rows, Dn} : shape{r.dense_len}};
        b.sequences = {h.seqs.data(), S};
        if (weighted) b.sequence_weights = {h.weights.data(), S};
        h.msg.copy(status_code::ok, "");
        return {};
    }

    template <class F>
    status guard_(handle& h, F&& f) noexcept {
        try {
            return f();
        } catch (const std::exception& e) {  // predictor calls answer by status; this is a last resort
            return detail::status_of(h.msg, e);
        }
    }

    predictor<Model, float> p_;
    std::mutex mutex_;  // msg_ (publish and open_session errors)
    message_buffer msg_;
};

/// Builds a server for Model with the given layout and options and publishes the
/// checkpoint at `checkpoint` (io::save_checkpoint's format). On failure `out` stays empty
/// and the status says why (not_found, data_loss, invalid_argument for options the model
/// or the predictor refuse). The status's message is static or lives in a buffer owned by
/// the calling thread until its next make_server call.
template <class Model>
status make_server(feature_layout layout, typename Model::options mo, predictor_options po, const std::string& checkpoint,
                   std::unique_ptr<model_server>& out) noexcept {
    thread_local message_buffer msg;
    out.reset();
    std::unique_ptr<server<Model>> s;
    try {
        s = std::make_unique<server<Model>>(std::move(layout), std::move(mo), std::move(po));
    } catch (const std::exception& e) {  // the model or the predictor refused its options
        return msg.copy(dynamic_cast<const std::bad_alloc*>(&e) ? status_code::internal : status_code::invalid_argument,
                        e.what());
    }
    try {
        s->predictor_ref().publish_checkpoint(checkpoint);
    } catch (const std::exception& e) {
        return detail::status_of(msg, e);
    }
    out = std::move(s);
    return {};
}

}  // namespace xrec::serve
