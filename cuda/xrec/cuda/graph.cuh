#pragma once
// The batch-1 (or any fixed batch) inference path of the cuda backend: the model's whole
// forward captured once into a CUDA graph and replayed per request, so a request costs one
// graph launch instead of a launch (and a host round trip) per op.
//
// Only for CUDA translation units. Needs the model's headers (and so the cpu headers) in the
// translation unit that instantiates it, like any model on the cuda tag.
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include <cuda_runtime.h>

#include "xrec/backend/cuda_tag.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/cuda/check.cuh"
#include "xrec/cuda/memory.cuh"
#include "xrec/cuda/stream.cuh"

namespace xrec::device {

/// Pinned (page-locked) host memory of n elements: what a captured graph copies from and to.
template <class U>
class pinned {
public:
    pinned() = default;
    explicit pinned(std::int64_t n) : n_(n) {
        if (n > 0) XREC_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&p_), static_cast<std::size_t>(n) * sizeof(U)));
    }
    pinned(const pinned&) = delete;
    pinned& operator=(const pinned&) = delete;
    ~pinned() {
        if (p_) XREC_CUDA_CHECK_NOTHROW(cudaFreeHost(p_));
    }
    U* data() const noexcept { return p_; }
    std::int64_t size() const noexcept { return n_; }

private:
    U* p_ = nullptr;
    std::int64_t n_ = 0;
};

/// Replays a model's inference forward at a fixed batch size as one CUDA graph.
///
/// Construction runs the forward twice on a private infer_ctx (its device workspace grows to
/// the forward's size, then settles in one block), then captures a third run on a private
/// non-blocking stream, including the copies of the inputs from pinned staging buffers and
/// of the logits back into a pinned output, and instantiates it. `predict(b)` validates the
/// batch against the layout (shapes and id ranges: the graph itself checks nothing), copies
/// its sparse ids and dense values into the staging buffers, launches the graph, waits, and
/// returns the logits [rows, tasks] (valid until the next call). Layouts with sequence
/// fields are refused (their jagged sizes vary per request). One predictor serves one
/// thread at a time (it keeps a copy of the layout); the model must outlive it and its weights may change in place between
/// calls (the graph reads them at replay).
template <class M, class T = float>
class graph_predictor {
public:
    graph_predictor(const M& model, const feature_layout& layout, std::int64_t rows)
        : m_(model),
          layout_(layout),
          rows_(rows),
          sparse_(rows * layout.num_sparse()),
          dense_(rows * layout.num_dense()),
          out_(rows * layout.num_tasks()) {
        XREC_CHECK(rows > 0, "graph_predictor: batch size ", rows, " must be positive");
        XREC_CHECK(layout.num_sequences() == 0, "graph_predictor: the layout has ", layout.num_sequences(),
                   " sequence fields; a captured graph needs fixed input sizes");
        XREC_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
        // Valid placeholder inputs for the warm-up and capture runs: each field's first id.
        const std::int64_t F = layout.num_sparse();
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t f = 0; f < F; ++f)
                sparse_.data()[r * F + f] =
                    layout.tables[static_cast<std::size_t>(layout.sparse[static_cast<std::size_t>(f)].table)].offset;
        for (std::int64_t i = 0; i < dense_.size(); ++i) dense_.data()[i] = T(0);
        const batch<T> b = staged();
        {
            const stream_scope scope(s_);
            for (int warm = 0; warm < 2; ++warm) {
                ctx_.reset();
                (void)m_(ctx_, b);
                XREC_CUDA_CHECK(cudaDeviceSynchronize());
            }
            ctx_.reset();
            XREC_CUDA_CHECK(cudaDeviceSynchronize());
            cudaGraph_t g = nullptr;
            XREC_CUDA_CHECK(cudaStreamBeginCapture(s_, cudaStreamCaptureModeThreadLocal));
            try {
                const var<T> y = m_(ctx_, b);
                XREC_CHECK(y.numel() == out_.size(), "graph_predictor: the model returned ", y.numel(),
                           " logits for ", rows, " rows x ", layout.num_tasks(), " tasks");
                XREC_CUDA_CHECK(cudaMemcpyAsync(out_.data(), y.data, static_cast<std::size_t>(out_.size()) * sizeof(T),
                                                cudaMemcpyDeviceToHost, s_));
            } catch (...) {
                (void)cudaStreamEndCapture(s_, &g);
                if (g) (void)cudaGraphDestroy(g);
                (void)cudaGetLastError();
                throw;
            }
            XREC_CUDA_CHECK(cudaStreamEndCapture(s_, &g));
            const cudaError_t e = cudaGraphInstantiate(&exec_, g, 0);
            (void)cudaGraphDestroy(g);
            XREC_CUDA_CHECK(e);
            XREC_CUDA_CHECK(cudaGraphUpload(exec_, s_));
        }
    }
    graph_predictor(const graph_predictor&) = delete;
    graph_predictor& operator=(const graph_predictor&) = delete;
    ~graph_predictor() {
        if (exec_) XREC_CUDA_CHECK_NOTHROW(cudaGraphExecDestroy(exec_));
        if (s_) XREC_CUDA_CHECK_NOTHROW(cudaStreamDestroy(s_));
    }

    /// Logits [rows, tasks] of batch b (b.rows must be the captured batch size).
    std::span<const T> predict(const batch<T>& b) {
        XREC_CHECK(b.rows == rows_, "graph_predictor::predict: batch of ", b.rows, " rows, the graph was captured for ",
                   rows_);
        b.check("graph_predictor::predict", layout_);
        if (sparse_.size())
            std::memcpy(sparse_.data(), b.sparse.data, static_cast<std::size_t>(sparse_.size()) * sizeof(std::int64_t));
        if (dense_.size())
            std::memcpy(dense_.data(), b.dense.data, static_cast<std::size_t>(dense_.size()) * sizeof(T));
        XREC_CUDA_CHECK(cudaGraphLaunch(exec_, s_));
        XREC_CUDA_CHECK(cudaStreamSynchronize(s_));
        return {out_.data(), static_cast<std::size_t>(out_.size())};
    }
    std::int64_t rows() const noexcept { return rows_; }

private:
    batch<T> staged() const {
        batch<T> b;
        b.rows = rows_;
        b.sparse = {sparse_.data(), shape{rows_, layout_.num_sparse()}};
        b.dense = {dense_.data(), shape{rows_, layout_.num_dense()}};
        return b;
    }

    const M& m_;
    feature_layout layout_;
    std::int64_t rows_;
    pinned<std::int64_t> sparse_;
    pinned<T> dense_;
    pinned<T> out_;
    cudaStream_t s_ = nullptr;
    infer_ctx<T, cuda> ctx_;
    cudaGraphExec_t exec_ = nullptr;
};

}  // namespace xrec::device
