#pragma once
// Tuning values per backend, as constexpr members (CUB-style policies).
#include <cstdint>

#include "xrec/backend/tags.hpp"

namespace xrec {

/// Primary template: a backend without a policy cannot be used.
template <class B>
struct policy {
    static_assert(always_false<B>, "xrec: this backend has no tuning policy; specialise xrec::policy<B> for it");
};

/// Tuning values of the cpu backend. Each says what set it; values marked "first estimate"
/// have not been measured yet and are the performance issue's to tune with bench/xrec_bench.
template <class Arch>
struct policy<cpu<Arch>> {
    /// Elements per SIMD register for float.
    static constexpr std::int64_t float_lanes = static_cast<std::int64_t>(xsimd::batch<float, Arch>::size);
    /// Rows below which a GEMM stays on one thread. First estimate: a 32 x 400 x 400 product
    /// is about 10 MFLOP (~80 us on one core), well above a pool hand-off of a few us.
    static constexpr std::int64_t gemm_parallel_min_rows = 32;
    /// Rows of A B^T up to which GEMM uses the unpacked register-blocked dot kernel instead
    /// of Eigen's packed kernel. Measured with a one-off sweep on the 2-core AMD EPYC dev
    /// machine (AVX-512, 2026-11-22): at 1 x 400 x 400 the dot kernel ran 57-74 GFLOP/s and
    /// Eigen's packed kernel 62-72; at 256 x 400 x 400 the dot kernel ran 58 and the packed
    /// kernel 183. Packing pays from a few rows on; the crossover is not measured finely.
    static constexpr std::int64_t gemm_dot_max_rows = 2;
    /// Register tile of the packed GEMM (detail::gemm_packed): nr = gemm_nr_batches SIMD
    /// batches of C columns by gemm_mr rows. mr x nr accumulators + nr B batches + one A
    /// broadcast fit the register file: 12 x 2 of AVX-512's 32 zmm, 6 x 2 of the 16 ymm/xmm.
    static constexpr std::int64_t gemm_nr_batches = 2;
    template <class T>
    static constexpr std::int64_t gemm_mr = sizeof(xsimd::batch<T, Arch>) >= 64 ? 12 : 6;
    /// Cache blocking of the packed GEMM, in elements; blocks are then split evenly (k = 1000
    /// runs as 3 x 334, not 448 + 448 + 104). kc x mr of A and kc x nr of B feed the
    /// micro-kernel from L1/L2, mc x kc of A stays in L2, kc x nc of B in L2/L3. Chosen by a
    /// thread-CPU-time sweep (median of 9) on the 2-core AMD EPYC dev machine (AVX-512,
    /// 12 x 32 tile, 2026-11-22) over kc 192..512, mc 192..768 at the bench/gemm.cpp shapes:
    /// kc 448 / mc 384 was within noise (+-5%) of the best at every shape; kc >= 429 keeps
    /// the 429- and 400-deep products in one pass over C, which measured 3-8% faster than
    /// two half-depth passes at kc 256. nc only caps B's block for very wide products.
    static constexpr std::int64_t gemm_kc = 448;
    static constexpr std::int64_t gemm_mc = 384;
    static constexpr std::int64_t gemm_nc = 4096;
    /// Elements below which an elementwise op stays on one thread. First estimate: a pool
    /// hand-off costs a few microseconds, about the time of 2^15 float adds.
    static constexpr std::int64_t elementwise_parallel_min = std::int64_t{1} << 15;
    /// Bags below which embedding_bag stays on one thread. First estimate.
    static constexpr std::int64_t bag_parallel_min = 64;
    /// Rows ahead that gathers prefetch (every cache line of the row, across bag
    /// boundaries). A standalone sweep on the 2-core EPYC dev machine (1M x 64 float table,
    /// 32 ids per bag, batch 4096) took the gather from 3.0 ms with 6 rows ahead (first line
    /// only) to 2.1 ms with 16 rows ahead (all lines).
    static constexpr int gather_prefetch_rows = 16;
};

/// Tuning values of the cuda backend as the ops read them. A train_ctx or infer_ctx on the
/// cuda tag has no thread pool worth splitting over (one host thread queues all the
/// kernels, and each kernel covers its whole range), so the thresholds are set so that
/// parallel_for never splits: every op issues its kernels once for the whole problem.
template <>
struct policy<cuda> {
    static constexpr std::int64_t gemm_parallel_min_rows = std::int64_t{1} << 62;
    static constexpr std::int64_t elementwise_parallel_min = std::int64_t{1} << 62;
    static constexpr std::int64_t bag_parallel_min = std::int64_t{1} << 62;
    static constexpr int gather_prefetch_rows = 0;
};

}  // namespace xrec
