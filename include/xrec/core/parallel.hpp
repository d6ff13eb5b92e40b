#pragma once
// A small fixed-size thread pool for parallelism inside one training op. Work is split
// statically into one contiguous chunk per thread and reductions are summed in thread
// order, so a result depends only on the thread count, never on scheduling. Serving
// never uses it: an infer_ctx runs on the calling thread.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace xrec {

/// `n` threads in all: the caller plus n-1 workers. `run(fn, arg)` calls fn(arg, t, n)
/// for t = 0..n-1, t = 0 on the caller, and returns when all are done. Calls must not
/// nest and one pool serves one caller thread at a time.
class thread_pool {
public:
    using task_fn = void (*)(void*, int, int);

    explicit thread_pool(int n = 1) : n_(std::max(1, n)) {
        workers_.reserve(static_cast<std::size_t>(n_ - 1));
        for (int t = 1; t < n_; ++t) workers_.emplace_back([this, t] { loop(t); });
    }
    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;
    ~thread_pool() {
        {
            std::lock_guard<std::mutex> lk(m_);
            stop_ = true;
            ++gen_;
        }
        cv_.notify_all();
        for (auto& w : workers_) w.join();
    }

    int size() const noexcept { return n_; }

    void run(task_fn fn, void* arg) {
        if (n_ == 1) {
            fn(arg, 0, 1);
            return;
        }
        {
            std::lock_guard<std::mutex> lk(m_);
            fn_ = fn;
            arg_ = arg;
            pending_ = n_ - 1;
            ++gen_;
        }
        cv_.notify_all();
        fn(arg, 0, n_);
        std::unique_lock<std::mutex> lk(m_);
        done_cv_.wait(lk, [&] { return pending_ == 0; });
    }

private:
    void loop(int t) {
        std::uint64_t seen = 0;
        for (;;) {
            task_fn fn;
            void* arg;
            {
                std::unique_lock<std::mutex> lk(m_);
                cv_.wait(lk, [&] { return gen_ != seen; });
                seen = gen_;
                if (stop_) return;
                fn = fn_;
                arg = arg_;
            }
            fn(arg, t, n_);
            {
                std::lock_guard<std::mutex> lk(m_);
                if (--pending_ == 0) done_cv_.notify_one();
            }
        }
    }

    int n_;
    std::vector<std::thread> workers_;
    std::mutex m_;
    std::condition_variable cv_, done_cv_;
    task_fn fn_ = nullptr;
    void* arg_ = nullptr;
    int pending_ = 0;
    std::uint64_t gen_ = 0;
    bool stop_ = false;
};

/// a = min(a, v), atomically: how parallel scans keep the first index any thread found, so
/// the answer does not depend on the threads.
inline void fetch_min(std::atomic<std::int64_t>& a, std::int64_t v) {
    std::int64_t cur = a.load();
    while (v < cur && !a.compare_exchange_weak(cur, v)) {
    }
}

/// The static chunk [begin, end) of `n` items that thread t of `threads` owns.
inline void static_chunk(std::int64_t n, int t, int threads, std::int64_t& begin, std::int64_t& end) {
    const std::int64_t q = n / threads, r = n % threads;
    begin = t * q + std::min<std::int64_t>(t, r);
    end = begin + q + (t < r ? 1 : 0);
}

/// Calls f(begin, end, t) on static chunks of [0, n), one per pool thread. Runs inline
/// when `pool` is null, has one thread, or n is below `min_parallel`.
template <class F>
void parallel_for(thread_pool* pool, std::int64_t n, std::int64_t min_parallel, F&& f) {
    if (!pool || pool->size() == 1 || n < min_parallel) {
        f(std::int64_t{0}, n, 0);
        return;
    }
    struct job {
        F* f;
        std::int64_t n;
    } j{&f, n};
    pool->run(
        [](void* a, int t, int threads) {
            auto* jb = static_cast<job*>(a);
            std::int64_t b, e;
            static_chunk(jb->n, t, threads, b, e);
            if (b < e) (*jb->f)(b, e, t);
        },
        &j);
}

}  // namespace xrec
