#pragma once
// Streams of the cuda backend: the tag carries the stream (backend/cuda_tag.hpp); these turn
// it back into a cudaStream_t and own streams and events.
#include <cuda_runtime.h>

#include "xrec/backend/cuda_tag.hpp"
#include "xrec/cuda/check.cuh"

namespace xrec {
namespace device {

/// The calling thread's current stream: where kernels called with a default tag (`cuda{}`,
/// as the ops write `B{}`) are queued. Null (the legacy default stream) unless a
/// stream_scope is active on this thread.
inline cudaStream_t& current_stream_slot() noexcept {
    static thread_local cudaStream_t s = nullptr;
    return s;
}
inline cudaStream_t current_stream() noexcept { return current_stream_slot(); }

/// The stream a cuda tag names; a tag without one means the thread's current stream.
inline cudaStream_t stream_of(cuda tag) noexcept {
    return tag.stream ? static_cast<cudaStream_t>(tag.stream) : current_stream();
}

/// Makes `s` the calling thread's current stream until the scope ends (then restores the
/// previous one), so that model code written against `B{}` runs on s: how a CUDA graph of a
/// whole forward is captured on one stream (device::graph_predictor).
class stream_scope {
public:
    explicit stream_scope(cudaStream_t s) noexcept : prev_(current_stream_slot()) { current_stream_slot() = s; }
    stream_scope(const stream_scope&) = delete;
    stream_scope& operator=(const stream_scope&) = delete;
    ~stream_scope() { current_stream_slot() = prev_; }

private:
    cudaStream_t prev_;
};

/// An owned CUDA stream; `tag()` is the cuda tag that queues kernels on it.
class stream {
public:
    // Blocking (ordered with the legacy stream): backend_memory<cuda> frees on the legacy
    // stream, and that order is what keeps freed memory from being reused too early.
    stream() { XREC_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamDefault)); }
    stream(const stream&) = delete;
    stream& operator=(const stream&) = delete;
    ~stream() {
        if (s_)
            XREC_CUDA_CHECK_NOTHROW(cudaStreamDestroy(s_));
    }
    cudaStream_t get() const noexcept { return s_; }
    cuda tag() const noexcept { return cuda{static_cast<void*>(s_)}; }
    /// Waits for everything queued on the stream; rethrows an asynchronous kernel error.
    void synchronize() const { XREC_CUDA_CHECK(cudaStreamSynchronize(s_)); }

private:
    cudaStream_t s_ = nullptr;
};

/// A pair of events that times the work queued between start() and stop() on one stream.
class event_timer {
public:
    event_timer() {
        XREC_CUDA_CHECK(cudaEventCreate(&a_));
        XREC_CUDA_CHECK(cudaEventCreate(&b_));
    }
    event_timer(const event_timer&) = delete;
    event_timer& operator=(const event_timer&) = delete;
    ~event_timer() {
        XREC_CUDA_CHECK_NOTHROW(cudaEventDestroy(a_));
        XREC_CUDA_CHECK_NOTHROW(cudaEventDestroy(b_));
    }
    void start(cudaStream_t s = nullptr) { XREC_CUDA_CHECK(cudaEventRecord(a_, s)); }
    void stop(cudaStream_t s = nullptr) { XREC_CUDA_CHECK(cudaEventRecord(b_, s)); }
    /// Milliseconds between start and stop (waits for stop).
    float milliseconds() const {
        XREC_CUDA_CHECK(cudaEventSynchronize(b_));
        float ms = 0;
        XREC_CUDA_CHECK(cudaEventElapsedTime(&ms, a_, b_));
        return ms;
    }

private:
    cudaEvent_t a_ = nullptr, b_ = nullptr;
};

}  // namespace device
}  // namespace xrec
