#pragma once
// Device memory for the cuda tag: backend_memory<cuda> makes arena<cuda>, buffer<T, cuda>
// and the contexts' value arenas live in GPU memory, drawn from a caching pool; plus
// host <-> device transfers and a growing workspace for two-phase kernels.
//
// Only for CUDA translation units. Needs core/ and the CUDA runtime, never Eigen or xsimd.
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include <cuda_runtime.h>

#include "xrec/backend/cuda_tag.hpp"
#include "xrec/core/arena.hpp"
#include "xrec/core/error.hpp"
#include "xrec/cuda/check.cuh"
#include "xrec/cuda/stream.cuh"

namespace xrec {

namespace device {

/// The caching pool of the current device: CUDA's stream-ordered default memory pool with
/// its release threshold raised to "never", so memory freed into it stays reserved and the
/// next allocation of a fitting size is served from it without cudaMalloc (the driver's pool
/// does what a hand-written size-binned cache would, and also knows stream order). Set once
/// per device, on first use; thread-safe (a function-local static, one per program).
inline cudaMemPool_t caching_pool() {
    int dev = 0;
    XREC_CUDA_CHECK(cudaGetDevice(&dev));
    struct holder {
        std::mutex m;
        cudaMemPool_t pools[64] = {};
        bool ready[64] = {};
    };
    static holder h;  // inline function: one object per program, not per translation unit
    XREC_CHECK(dev >= 0 && dev < 64, "device::caching_pool: device index ", dev, " out of range");
    static thread_local int last_dev = -1;
    static thread_local cudaMemPool_t last_pool = nullptr;
    if (dev == last_dev)
        return last_pool;
    const std::lock_guard<std::mutex> lock(h.m);
    if (!h.ready[dev]) {
        cudaMemPool_t p = nullptr;
        XREC_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&p, dev));
        std::uint64_t keep = ~std::uint64_t{0};
        XREC_CUDA_CHECK(cudaMemPoolSetAttribute(p, cudaMemPoolAttrReleaseThreshold, &keep));
        h.pools[dev] = p;
        h.ready[dev] = true;
    }
    last_dev = dev;
    last_pool = h.pools[dev];
    return last_pool;
}

/// Bytes the caching pool holds from the driver (reserved) and hands out (used) right now.
struct pool_usage {
    std::uint64_t reserved = 0, used = 0;
};
inline pool_usage caching_pool_usage() {
    pool_usage u;
    cudaMemPool_t p = caching_pool();
    XREC_CUDA_CHECK(cudaMemPoolGetAttribute(p, cudaMemPoolAttrReservedMemCurrent, &u.reserved));
    XREC_CUDA_CHECK(cudaMemPoolGetAttribute(p, cudaMemPoolAttrUsedMemCurrent, &u.used));
    return u;
}

}  // namespace device

/// Device memory from the caching pool (device::caching_pool), stream-ordered on the legacy
/// default stream. device::stream creates blocking streams, which the legacy stream orders
/// with, so memory freed here is never reused while such a stream still reads it. The pool
/// aligns to at least 256 bytes, so every alignment xrec asks for (64) holds. `zero` and
/// `copy` run on the thread's current stream (device::stream_scope; the legacy stream
/// otherwise); `copy` (cudaMemcpyDefault, unified addressing) takes device or host pointers
/// on either side and returns when the copy is done, except while that stream is being
/// captured into a graph, where it only records the copy (whose host side must then be
/// pinned memory that stays valid for the graph's replays).
template <>
struct backend_memory<cuda> {
    static constexpr bool host_accessible = false;
    static void* allocate(std::size_t bytes, std::size_t align) {
        XREC_CHECK(align <= 256, "backend_memory<cuda>: alignment ", align, " exceeds the pool's 256 bytes");
        void* p = nullptr;
        const cudaError_t e = cudaMallocFromPoolAsync(&p, bytes, device::caching_pool(), nullptr);
        if (e == cudaErrorMemoryAllocation) {
            (void)cudaGetLastError();
            size_t free_b = 0, total_b = 0;
            (void)cudaMemGetInfo(&free_b, &total_b);
            XREC_FAIL("backend_memory<cuda>: out of device memory allocating ", bytes, " bytes (", free_b, " of ",
                      total_b, " bytes free)");
        }
        XREC_CUDA_CHECK(e);
        return p;
    }
    static void deallocate(void* p, std::size_t /*align*/) noexcept {
        if (p)
            XREC_CUDA_CHECK_NOTHROW(cudaFreeAsync(p, nullptr));
    }
    static void zero(void* p, std::size_t bytes) {
        XREC_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, device::current_stream()));
    }
    static void copy(void* dst, const void* src, std::size_t bytes) {
        const cudaStream_t s = device::current_stream();
        XREC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s));
        cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
        XREC_CUDA_CHECK(cudaStreamIsCapturing(s, &st));
        if (st == cudaStreamCaptureStatusNone) XREC_CUDA_CHECK(cudaStreamSynchronize(s));
    }
    /// Device to device on the current stream, without waiting.
    static void copy_async(void* dst, const void* src, std::size_t bytes) {
        XREC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, device::current_stream()));
    }
};

/// Host <-> device helpers of the cuda backend (`xrec::cuda` is the tag type, hence the
/// separate namespace).
namespace device {

/// Number of CUDA devices; 0 when there is none or no usable driver (never throws, so a
/// program can decide to skip GPU work).
inline int count() noexcept {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // clear the sticky "no device" error
        return 0;
    }
    return n;
}

/// Waits for all work queued on the device; rethrows an asynchronous kernel error.
inline void synchronize() { XREC_CUDA_CHECK(cudaDeviceSynchronize()); }

/// Copies n elements host -> device.
template <class T>
void upload(T* dst_device, const T* src_host, std::int64_t n) {
    if (n > 0)
        XREC_CUDA_CHECK(
            cudaMemcpy(dst_device, src_host, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyHostToDevice));
}
/// Copies n elements device -> host (waits for the kernels before it on the default stream).
template <class T>
void download(T* dst_host, const T* src_device, std::int64_t n) {
    if (n > 0)
        XREC_CUDA_CHECK(
            cudaMemcpy(dst_host, src_device, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyDeviceToHost));
}
/// n elements of device memory as a host vector.
template <class T>
std::vector<T> to_host(const T* src_device, std::int64_t n) {
    std::vector<T> h(static_cast<std::size_t>(n > 0 ? n : 0));
    download(h.data(), src_device, n);
    return h;
}

/// Device scratch of one call, allocated and freed in order on stream s (from the caching
/// pool: no cudaMalloc in steady state), so it may be freed as soon as the last kernel that
/// uses it is queued, and it may be used while the stream is captured into a graph.
class stream_scratch {
public:
    stream_scratch(std::size_t bytes, cudaStream_t s) : s_(s) {
        XREC_CUDA_CHECK(cudaMallocFromPoolAsync(&p_, bytes ? bytes : 1, caching_pool(), s));
    }
    ~stream_scratch() { XREC_CUDA_CHECK_NOTHROW(cudaFreeAsync(p_, s_)); }
    stream_scratch(const stream_scratch&) = delete;
    stream_scratch& operator=(const stream_scratch&) = delete;
    template <class T>
    T* as() const noexcept {
        return static_cast<T*>(p_);
    }

private:
    void* p_ = nullptr;
    cudaStream_t s_;
};

/// Scratch device memory for two-phase kernels (CUB style: ask how many bytes, then run):
/// `get(bytes)` returns at least that many bytes, growing (through the caching pool) only
/// when a larger size is asked for, so a training loop allocates in its first step alone.
/// Not thread-safe; one per stream of work.
class workspace {
public:
    workspace() = default;
    workspace(const workspace&) = delete;
    workspace& operator=(const workspace&) = delete;
    ~workspace() { backend_memory<cuda>::deallocate(p_, 256); }
    void* get(std::size_t bytes) {
        if (bytes > size_) {
            backend_memory<cuda>::deallocate(p_, 256);
            p_ = nullptr;
            size_ = 0;
            const std::size_t grown = bytes + bytes / 4;  // a little headroom for growing batches
            p_ = backend_memory<cuda>::allocate(grown, 256);
            size_ = grown;
            ++grows_;
        }
        return p_;
    }
    std::size_t capacity() const noexcept { return size_; }
    /// How many times get() had to allocate (a steady-state loop keeps this constant).
    std::int64_t grow_count() const noexcept { return grows_; }

private:
    void* p_ = nullptr;
    std::size_t size_ = 0;
    std::int64_t grows_ = 0;
};

}  // namespace device
}  // namespace xrec
