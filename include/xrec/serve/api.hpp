#pragma once
// The serving API for code built without exceptions (-fno-exceptions): an abstract
// model_server whose calls are noexcept and answer with a serve::status.
//
// Why an interface and not the predictor template itself: xrec reports bad input with
// exceptions, and a header-only template instantiated both in a translation unit built with
// exceptions and in one built without would be two different definitions of one function
// (an ODR violation the linker resolves silently). So the engine's exception-free code sees
// only this header (plain structs, one abstract class, no template, nothing that throws),
// and exactly one translation unit of the program, built with exceptions, includes
// serve/api_impl.hpp and makes the server:
//
//   // server.cpp (built with exceptions)
//   #include <xrec/serve/api_impl.hpp>
//   xrec::serve::status make_ranker(std::unique_ptr<xrec::serve::model_server>& out) noexcept {
//       return xrec::serve::make_server<xrec::models::din<>>(layout, din_options, predictor_options,
//                                                            "din.safetensors", out);
//   }
//   // engine.cpp (-fno-exceptions): declares make_ranker, then
//   std::unique_ptr<xrec::serve::model_server> m;
//   if (auto st = make_ranker(m); !st) log(st.message);
//   xrec::serve::model_server::session* s = nullptr;
//   m->open_session(&s);
//   m->predict(s, request, scores, n);   ... m->close_session(s);
//
// A call costs one virtual dispatch over serve::predictor (a few ns); everything said there
// (threads, zero allocations per call, hot swap, the request policy) holds here.
#include <cstdint>
#include <memory>

#include "xrec/serve/status.hpp"

namespace xrec::serve {

/// One jagged input (a sequence / multi-hot field): ids [num_ids] and, for a request of
/// `rows` rows, rows + 1 offsets from 0 to num_ids; optional per-id weights [num_ids].
struct sequence_view {
    const std::int64_t* ids = nullptr;
    std::int64_t num_ids = 0;
    const std::int64_t* offsets = nullptr;
    const float* weights = nullptr;
};

/// A request of `rows` encoded rows (global ids, as data::schema encodes them): sparse
/// [rows, num_sparse_fields] row-major, dense [rows, num_dense_fields], one sequence_view per
/// sequence field. The *_len members give the sizes of the arrays, which the server checks
/// against the model's layout.
struct request_view {
    std::int64_t rows = 0;
    const std::int64_t* sparse = nullptr;
    std::int64_t sparse_len = 0;
    const float* dense = nullptr;
    std::int64_t dense_len = 0;
    const sequence_view* sequences = nullptr;
    std::int64_t num_sequences = 0;
};

/// A served model (see the file comment). Thread-safe: any number of threads may call
/// predict / rank at once, each through its own session; open_session, close_session and
/// publish_checkpoint may be called from any thread at any time.
class model_server {
public:
    /// A thread's serving state (opaque; made by open_session).
    class session {
    public:
        virtual ~session() = default;
        /// The message of this session's last error status.
        virtual const char* last_message() const noexcept = 0;
    };

    virtual ~model_server() = default;
    /// A new session with memory reserved for the largest request; *out is null on error.
    virtual status open_session(session** out) noexcept = 0;
    virtual void close_session(session* s) noexcept = 0;
    /// Scores req into out[0 .. rows * tasks).
    virtual status predict(session* s, const request_view& req, float* out, std::int64_t out_len) noexcept = 0;
    /// Scores num_candidates candidates (ids [num_candidates, candidate_cols], the
    /// predictor's candidate_fields) for the one-row user request into out[0 .. C * tasks).
    virtual status rank(session* s, const request_view& user, const std::int64_t* candidates, std::int64_t num_candidates,
                        std::int64_t candidate_cols, float* out, std::int64_t out_len) noexcept = 0;
    /// Hot-swaps in the weights of an xrec checkpoint; a refused file leaves the live
    /// weights serving. The message lives until the next publish.
    virtual status publish_checkpoint(const char* path) noexcept = 0;
    /// The published version (0: none yet).
    virtual std::uint64_t version() const noexcept = 0;
    /// Rows' worth of outputs per request row (the layout's number of tasks).
    virtual std::int64_t tasks() const noexcept = 0;
};

}  // namespace xrec::serve
