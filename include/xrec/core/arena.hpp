#pragma once
// A bump arena with 64-byte aligned allocations: the memory of tapes, forward values,
// gradients and inference workspaces.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "xrec/core/error.hpp"

namespace xrec {

/// Where a backend's tensor memory comes from. The primary template is host memory;
/// a backend with its own memory (the cuda tag) specializes it in its own headers.
template <class Backend>
struct backend_memory {
    static constexpr bool host_accessible = true;
    static void* allocate(std::size_t bytes, std::size_t align) {
        void* p = ::operator new(bytes, std::align_val_t(align));
        return p;
    }
    static void deallocate(void* p, std::size_t align) noexcept { ::operator delete(p, std::align_val_t(align)); }
    static void zero(void* p, std::size_t bytes) noexcept { std::memset(p, 0, bytes); }
    static void copy(void* dst, const void* src, std::size_t bytes) noexcept { std::memcpy(dst, src, bytes); }
    /// Within the backend's memory, in stream order where the backend has streams (the source
    /// must stay valid until the copy has run); here simply a copy.
    static void copy_async(void* dst, const void* src, std::size_t bytes) noexcept { std::memcpy(dst, src, bytes); }
};

/// Where memory that an op or a batch points at lives: the host's, or the backend's (a
/// batch already staged on the device). On the cpu both are the host's.
enum class memory_space { host, backend };

/// n elements at p in backend B's memory, readable on the host: p itself where B's memory
/// is host memory, else a copy in `tmp` (which grows as needed). For read-outs of small
/// results (a loss, a batch of scores) on any backend.
template <class B, class T>
const T* host_readable(const T* p, std::int64_t n, std::vector<T>& tmp) {
    if constexpr (backend_memory<B>::host_accessible) {
        return p;
    } else {
        if (static_cast<std::int64_t>(tmp.size()) < n) tmp.resize(static_cast<std::size_t>(n));
        if (n > 0) backend_memory<B>::copy(tmp.data(), p, static_cast<std::size_t>(n) * sizeof(T));
        return tmp.data();
    }
}
/// One value at p in backend B's memory, on the host.
template <class B, class T>
T host_value(const T* p) {
    T v{};
    backend_memory<B>::copy(&v, p, sizeof(T));
    return v;
}

/// Host memory for tape nodes, whatever the backend.
struct host_memory_tag {};

/// Bump arena over blocks from `backend_memory<Backend>`. `allocate` is a pointer bump;
/// `reset()` rewinds, and when the last cycle spilled into several blocks it replaces them
/// by one block of their total size, so the steady state is one block and zero heap
/// allocations per cycle. `epoch()` counts resets so that views into a rewound arena can be
/// recognised as stale.
template <class Backend = host_memory_tag>
class arena {
public:
    static constexpr std::size_t alignment = 64;

    explicit arena(std::size_t initial_bytes = 0) {
        if (initial_bytes) reserve(initial_bytes);
    }
    arena(const arena&) = delete;
    arena& operator=(const arena&) = delete;
    arena(arena&& o) noexcept { swap(o); }
    arena& operator=(arena&& o) noexcept {
        if (this != &o) {
            release();
            swap(o);
        }
        return *this;
    }
    ~arena() { release(); }

    /// Ensures that the next cycle up to `bytes` needs no allocation.
    void reserve(std::size_t bytes) {
        if (blocks_.size() == 1 && blocks_[0].size >= bytes) return;
        if (used_total() != 0) XREC_FAIL("arena::reserve called while the arena is in use; call reset() first");
        release();
        add_block(bytes);
    }

    /// Uninitialised memory for `bytes` bytes, 64-byte aligned.
    void* allocate(std::size_t bytes) {
        bytes = round_up(bytes == 0 ? 1 : bytes);
        if (!blocks_.empty()) {
            block& b = blocks_[cur_];
            if (b.used + bytes <= b.size) {
                void* p = static_cast<char*>(b.ptr) + b.used;
                b.used += bytes;
                high_ = std::max(high_, used_total());
                return p;
            }
            // Try a later block kept from an earlier cycle before allocating a new one.
            for (std::size_t i = cur_ + 1; i < blocks_.size(); ++i) {
                if (blocks_[i].size >= bytes) {
                    cur_ = i;
                    blocks_[i].used = bytes;
                    high_ = std::max(high_, used_total());
                    return blocks_[i].ptr;
                }
            }
        }
        std::size_t grow = blocks_.empty() ? 0 : blocks_.back().size;
        add_block(std::max(bytes, std::max<std::size_t>(grow, 1u << 16)));
        cur_ = blocks_.size() - 1;
        blocks_[cur_].used = bytes;
        high_ = std::max(high_, used_total());
        return blocks_[cur_].ptr;
    }

    template <class T>
    T* allocate_n(std::int64_t n) {
        return static_cast<T*>(allocate(static_cast<std::size_t>(n) * sizeof(T)));
    }

    /// Rewinds every block; coalesces into one block when the cycle used several.
    void reset() {
        if (blocks_.size() > 1) {
            std::size_t total = 0;
            for (auto& b : blocks_) total += b.size;
            total = std::max(total, high_);
            release();
            add_block(total);
        }
        for (auto& b : blocks_) b.used = 0;
        cur_ = 0;
        ++epoch_;
    }

    std::uint32_t epoch() const noexcept { return epoch_; }
    std::size_t capacity() const noexcept {
        std::size_t t = 0;
        for (auto& b : blocks_) t += b.size;
        return t;
    }
    std::size_t used_total() const noexcept {
        std::size_t t = 0;
        for (auto& b : blocks_) t += b.used;
        return t;
    }
    std::size_t high_water() const noexcept { return high_; }
    std::size_t block_count() const noexcept { return blocks_.size(); }

private:
    using memory = backend_memory<Backend>;
    struct block {
        void* ptr;
        std::size_t size;
        std::size_t used;
    };
    static std::size_t round_up(std::size_t n) { return (n + alignment - 1) & ~(alignment - 1); }
    void add_block(std::size_t bytes) {
        bytes = round_up(bytes);
        blocks_.reserve(blocks_.size() + 1);
        blocks_.push_back({memory::allocate(bytes, alignment), bytes, 0});
    }
    void release() noexcept {
        for (auto& b : blocks_) memory::deallocate(b.ptr, alignment);
        blocks_.clear();
        cur_ = 0;
    }
    void swap(arena& o) noexcept {
        std::swap(blocks_, o.blocks_);
        std::swap(cur_, o.cur_);
        std::swap(epoch_, o.epoch_);
        std::swap(high_, o.high_);
    }

    std::vector<block> blocks_;
    std::size_t cur_ = 0;
    std::uint32_t epoch_ = 1;
    std::size_t high_ = 0;
};

/// std::allocator-compatible allocator with 64-byte alignment, for owning buffers
/// (parameter stores, optimizer state) that SIMD kernels read with aligned loads.
template <class T>
struct aligned_allocator {
    using value_type = T;
    aligned_allocator() = default;
    template <class U>
    aligned_allocator(const aligned_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
    void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t(64)); }
    template <class U>
    bool operator==(const aligned_allocator<U>&) const noexcept { return true; }
};

template <class T>
using aligned_vector = std::vector<T, aligned_allocator<T>>;

}  // namespace xrec
