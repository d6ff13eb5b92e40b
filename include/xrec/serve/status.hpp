#pragma once
// The result of a serving call, for callers that do not use exceptions (engines built with
// -fno-exceptions call through serve/api.hpp, which returns these) and for the hot path of
// serve::predictor, where a bad request is an answer, not an exceptional event.
//
// This header throws nothing and includes nothing that does, so it compiles with
// -fno-exceptions.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

namespace xrec::serve {

/// What went wrong, coarsely (the message says exactly what).
enum class status_code : std::uint8_t {
    ok = 0,
    invalid_argument,  ///< the request does not fit the model: field counts, shapes, NaN/Inf, too many rows
    out_of_range,      ///< an id outside its table with request_policy::ids == reject
    not_found,         ///< a file or a tensor that is not there
    data_loss,         ///< a file that is there but is not a valid checkpoint or schema
    unavailable,       ///< nothing published yet
    internal,          ///< a bug in xrec: please report the message
};

inline const char* status_code_name(status_code c) noexcept {
    switch (c) {
        case status_code::ok: return "ok";
        case status_code::invalid_argument: return "invalid_argument";
        case status_code::out_of_range: return "out_of_range";
        case status_code::not_found: return "not_found";
        case status_code::data_loss: return "data_loss";
        case status_code::unavailable: return "unavailable";
        case status_code::internal: return "internal";
    }
    return "?";
}

/// A code and a message. The message points into storage owned by whoever returned the
/// status (a session's message buffer): valid until the next call on that session. `ok()`
/// statuses carry an empty message. Trivially copyable; making one allocates nothing.
struct status {
    status_code code = status_code::ok;
    const char* message = "";

    bool ok() const noexcept { return code == status_code::ok; }
    explicit operator bool() const noexcept { return ok(); }
};

/// A fixed message buffer (one per session): formatting an error allocates nothing, and a
/// message longer than the buffer is cut, never overflowing it.
class message_buffer {
public:
    static constexpr std::size_t capacity = 512;

    /// printf-style message; returns a status pointing at this buffer.
    template <class... A>
    status set(status_code c, const char* fmt, A... a) noexcept {
        if constexpr (sizeof...(A) == 0) {
            std::snprintf(buf_, capacity, "%s", fmt);
        } else {
            std::snprintf(buf_, capacity, fmt, a...);
        }
        return {c, buf_};
    }
    /// Copies a message made elsewhere (an exception's text), cut to the capacity.
    status copy(status_code c, const char* text) noexcept {
        std::snprintf(buf_, capacity, "%s", text);
        return {c, buf_};
    }
    const char* str() const noexcept { return buf_; }

private:
    char buf_[capacity] = {};
};

}  // namespace xrec::serve
