// CUDA smoke test: arena<cuda>, buffer<float, cuda>, infer_ctx<float, cuda>, every kernel of
// kernels.cuh against a host loop, and a tiny MLP forward on the GPU against xrec's cpu ops
// (smoke_cpu.cpp). Exit 0 = all checks passed, 1 = a check failed, 77 = no CUDA device
// (ctest reports that as skipped; CI only compiles this file, it has no GPU).
//
// This translation unit includes core/ and cuda/ headers only: the #error below fails the
// build if any of them starts pulling in Eigen or xsimd.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "xrec/core/arena.hpp"
#include "xrec/core/buffer.hpp"
#include "xrec/core/context.hpp"
#include "xrec/core/init.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/cuda/kernels.cuh"
#include "xrec/cuda/memory.cuh"

#include "smoke_cpu.hpp"

#if defined(XSIMD_VERSION_MAJOR) || defined(EIGEN_WORLD_VERSION)
#error "the CUDA smoke translation unit pulled in xsimd or Eigen: the cuda/ and core/ headers must need neither"
#endif

namespace {

using xrec::cuda;
namespace kernels = xrec::kernels;

int failures = 0;

void expect(bool ok, const std::string& what) {
    std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what.c_str());
    if (!ok) ++failures;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return INFINITY;
    double m = 0;
    for (std::size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(static_cast<double>(a[i]) - b[i]));
    return m;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
    const double d = max_abs_diff(got, want);
    expect(d <= tol, what + " (max |diff| " + std::to_string(d) + ", tol " + std::to_string(tol) + ")");
}

std::vector<float> random_vector(std::int64_t n, std::uint64_t stream, float lo = -1.f, float hi = 1.f) {
    xrec::rng_stream rs{xrec::philox{2024}, stream};
    std::vector<float> v(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i)
        v[static_cast<std::size_t>(i)] = lo + (hi - lo) * rs.uniform_f(static_cast<std::uint64_t>(i));
    return v;
}

// A device copy of a host vector, owned by a buffer<float, cuda>.
xrec::buffer<float, cuda> to_device(const std::vector<float>& h) {
    xrec::buffer<float, cuda> d(static_cast<std::int64_t>(h.size()));
    xrec::device::upload(d.data(), h.data(), d.size());
    return d;
}

float host_act(xrec::activation a, float x) {
    switch (a) {
        case xrec::activation::identity: return x;
        case xrec::activation::relu: return x > 0 ? x : 0;
        case xrec::activation::sigmoid: return 1 / (1 + std::exp(-x));
        case xrec::activation::tanh: return std::tanh(x);
        case xrec::activation::gelu: return 0.5f * x * (1 + std::erf(x * 0.70710678118654752440f));
    }
    return x;
}
float host_dact(xrec::activation a, float x, float y) {
    switch (a) {
        case xrec::activation::identity: return 1;
        case xrec::activation::relu: return x > 0 ? 1 : 0;
        case xrec::activation::sigmoid: return y * (1 - y);
        case xrec::activation::tanh: return 1 - y * y;
        case xrec::activation::gelu:
            return 0.5f * (1 + std::erf(x * 0.70710678118654752440f)) +
                   x * std::exp(-0.5f * x * x) * 0.39894228040143267794f;
    }
    return 1;
}

void check_arena() {
    xrec::arena<cuda> a(1 << 12);
    void* p = a.allocate(10);
    expect(reinterpret_cast<std::uintptr_t>(p) % 64 == 0, "arena<cuda>: allocations are 64-byte aligned");
    for (int i = 0; i < 8; ++i) a.allocate(4096);
    expect(a.block_count() > 1, "arena<cuda>: grows by blocks");
    a.reset();
    expect(a.block_count() == 1, "arena<cuda>: reset coalesces into one block");
    float* f = a.allocate_n<float>(1000);
    kernels::fill(cuda{}, 1000, 2.5f, f);
    const auto h = xrec::device::to_host(f, 1000);
    expect(h == std::vector<float>(1000, 2.5f), "arena<cuda>: memory is device memory a kernel can write");
}

void check_buffer() {
    xrec::buffer<float, cuda> b(100);
    expect(xrec::device::to_host(b.data(), 100) == std::vector<float>(100, 0.f), "buffer<float, cuda>: starts zeroed");
    kernels::fill(cuda{}, 100, 1.5f, b.data());
    b.resize(150);
    auto h = xrec::device::to_host(b.data(), 150);
    std::vector<float> want(150, 0.f);
    std::fill(want.begin(), want.begin() + 100, 1.5f);
    expect(h == want, "buffer<float, cuda>: resize keeps the contents and zeroes the new tail");
    xrec::buffer<float, cuda> c = b;
    expect(c.data() != b.data() && xrec::device::to_host(c.data(), 150) == want, "buffer<float, cuda>: deep copy");
    b.zero();
    expect(xrec::device::to_host(b.data(), 150) == std::vector<float>(150, 0.f), "buffer<float, cuda>: zero");
}

void check_elementwise() {
    const std::int64_t n = 100003;  // not a multiple of the block size, more than one grid pass
    const auto a = random_vector(n, 1), b = random_vector(n, 2);
    auto da = to_device(a), db = to_device(b);
    xrec::buffer<float, cuda> dy(n);
    std::vector<float> want(static_cast<std::size_t>(n));

    kernels::add(cuda{}, n, da.data(), db.data(), dy.data());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = a[i] + b[i];
    expect_close(xrec::device::to_host(dy.data(), n), want, 0, "add");
    kernels::sub(cuda{}, n, da.data(), db.data(), dy.data());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = a[i] - b[i];
    expect_close(xrec::device::to_host(dy.data(), n), want, 0, "sub");
    kernels::mul(cuda{}, n, da.data(), db.data(), dy.data());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = a[i] * b[i];
    expect_close(xrec::device::to_host(dy.data(), n), want, 0, "mul");
    kernels::scale(cuda{}, n, 0.25f, da.data(), dy.data());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = 0.25f * a[i];
    expect_close(xrec::device::to_host(dy.data(), n), want, 0, "scale");
    kernels::copy(cuda{}, n, db.data(), dy.data());
    kernels::axpy(cuda{}, n, -1.5f, da.data(), dy.data());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = b[i] + -1.5f * a[i];
    expect_close(xrec::device::to_host(dy.data(), n), want, 1e-6, "copy + axpy");
    kernels::fill(cuda{}, n, -3.f, dy.data());
    expect(xrec::device::to_host(dy.data(), n) == std::vector<float>(want.size(), -3.f), "fill");

    for (auto act : {xrec::activation::identity, xrec::activation::relu, xrec::activation::sigmoid,
                     xrec::activation::tanh, xrec::activation::gelu}) {
        const auto x = random_vector(n, 3, -4.f, 4.f), dy_h = random_vector(n, 4);
        auto dx_h = random_vector(n, 5);
        auto dx = to_device(x), ddy = to_device(dy_h), ddx = to_device(dx_h);
        xrec::buffer<float, cuda> y(n);
        kernels::activation_fwd(cuda{}, act, n, dx.data(), y.data());
        std::vector<float> yw(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) yw[i] = host_act(act, x[i]);
        const auto y_h = xrec::device::to_host(y.data(), n);
        expect_close(y_h, yw, 1e-5, std::string("activation_fwd ") + xrec::activation_name(act));
        kernels::activation_bwd(cuda{}, act, n, dx.data(), y.data(), ddy.data(), ddx.data());
        for (std::size_t i = 0; i < x.size(); ++i) dx_h[i] += dy_h[i] * host_dact(act, x[i], y_h[i]);
        expect_close(xrec::device::to_host(ddx.data(), n), dx_h, 1e-5,
                     std::string("activation_bwd ") + xrec::activation_name(act));
    }

    const std::int64_t rows = 2500, cols = 70;  // three chunks of the column sums
    const auto x = random_vector(rows * cols, 6), bias = random_vector(cols, 7);
    auto acc_h = random_vector(cols, 8);
    auto dx = to_device(x), dbias = to_device(bias), dacc = to_device(acc_h);
    kernels::col_sums_acc(cuda{}, rows, cols, dx.data(), dacc.data());
    // The documented fixed order: chunks of 1,024 rows; in a chunk 8 lanes, lane l summing rows
    // l, l + 8, ...; the lanes added in lane order; the chunks added to acc in chunk order (one
    // chunk: straight into acc).
    const std::int64_t R = 1024, chunks = (rows + R - 1) / R;
    for (std::int64_t j = 0; j < cols; ++j) {
        std::vector<float> part(static_cast<std::size_t>(chunks));
        for (std::int64_t c = 0; c < chunks; ++c) {
            float lanes[8] = {};
            for (std::int64_t r = c * R; r < std::min(rows, c * R + R); ++r)
                lanes[(r - c * R) % 8] += x[static_cast<std::size_t>(r * cols + j)];
            float t = lanes[0];
            for (int l = 1; l < 8; ++l) t += lanes[l];
            part[static_cast<std::size_t>(c)] = t;
        }
        float& a = acc_h[static_cast<std::size_t>(j)];
        for (std::int64_t c = 0; c < chunks; ++c) a += part[static_cast<std::size_t>(c)];
    }
    expect_close(xrec::device::to_host(dacc.data(), cols), acc_h, 0, "col_sums_acc (the fixed chunk and lane order)");
    kernels::add_row_bias(cuda{}, rows, cols, dbias.data(), dx.data());
    auto xb = x;
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t j = 0; j < cols; ++j) xb[static_cast<std::size_t>(r * cols + j)] += bias[static_cast<std::size_t>(j)];
    expect_close(xrec::device::to_host(dx.data(), rows * cols), xb, 0, "add_row_bias");
}

void check_gemm() {
    const std::int64_t m = 37, n = 29, k = 45;
    for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb) {
            const auto a = random_vector(m * k, 10), b = random_vector(k * n, 11);
            auto c = random_vector(m * n, 12);
            auto da = to_device(a), db = to_device(b), dc = to_device(c);
            const std::int64_t lda = ta ? m : k, ldb = tb ? k : n;
            kernels::gemm(cuda{}, ta != 0, tb != 0, m, n, k, 0.75f, da.data(), lda, db.data(), ldb, 0.5f, dc.data(), n);
            for (std::int64_t i = 0; i < m; ++i)
                for (std::int64_t j = 0; j < n; ++j) {
                    double s = 0;
                    for (std::int64_t l = 0; l < k; ++l)
                        s += static_cast<double>(a[static_cast<std::size_t>(ta ? l * lda + i : i * lda + l)]) *
                             b[static_cast<std::size_t>(tb ? j * ldb + l : l * ldb + j)];
                    float& cij = c[static_cast<std::size_t>(i * n + j)];
                    cij = static_cast<float>(0.75 * s + 0.5 * cij);
                }
            expect_close(xrec::device::to_host(dc.data(), m * n), c, 5e-5,
                         "gemm trans_a=" + std::to_string(ta) + " trans_b=" + std::to_string(tb));
        }
}

// y = sigmoid(relu(x W1^T + b1) W2^T + b2) on the GPU through infer_ctx<float, cuda> and the
// kernels, against the same forward through xrec's cpu ops.
void check_forward() {
    const std::int64_t rows = 8, in = 16, hidden = 32, out = 4;
    xrec::param_store<float, xrec::host_memory_tag> store(2024);  // weights made on the host
    auto w1 = store.add("mlp.0.weight", {hidden, in}, xrec::init::xavier_uniform(), in, hidden);
    auto b1 = store.add("mlp.0.bias", {hidden}, xrec::init::uniform(-0.1, 0.1));
    auto w2 = store.add("mlp.out.weight", {out, hidden}, xrec::init::xavier_uniform(), hidden, out);
    auto b2 = store.add("mlp.out.bias", {out}, xrec::init::uniform(-0.1, 0.1));
    auto host = [](const xrec::dense_param<float, xrec::host_memory_tag>& p) {
        return std::vector<float>(p.value(), p.value() + p.s.numel());
    };
    const auto x = random_vector(rows * in, 20), w1h = host(w1), b1h = host(b1), w2h = host(w2), b2h = host(b2);
    auto dx = to_device(x), dw1 = to_device(w1h), db1 = to_device(b1h), dw2 = to_device(w2h), db2 = to_device(b2h);

    xrec::infer_ctx<float, cuda> ctx;
    auto h = ctx.make({rows, hidden});
    kernels::gemm(cuda{}, false, true, rows, hidden, in, 1.f, dx.data(), in, dw1.data(), in, 0.f, h.data, hidden);
    kernels::add_row_bias(cuda{}, rows, hidden, db1.data(), h.data);
    kernels::activation_fwd(cuda{}, xrec::activation::relu, rows * hidden, h.data, h.data);
    auto y = ctx.make({rows, out});
    kernels::gemm(cuda{}, false, true, rows, out, hidden, 1.f, h.data, hidden, dw2.data(), hidden, 0.f, y.data, out);
    kernels::add_row_bias(cuda{}, rows, out, db2.data(), y.data);
    kernels::activation_fwd(cuda{}, xrec::activation::sigmoid, rows * out, y.data, y.data);
    xrec::device::synchronize();
    const auto gpu = xrec::device::to_host(y.data, y.numel());
    const auto cpu = xrec_smoke::cpu_mlp_forward(x, rows, in, w1h, b1h, hidden, w2h, b2h, out);
    std::printf("      forward y[0..3] gpu %.6f %.6f %.6f %.6f, cpu (%s) %.6f %.6f %.6f %.6f\n", gpu[0], gpu[1], gpu[2],
                gpu[3], xrec_smoke::cpu_tag_name(), cpu[0], cpu[1], cpu[2], cpu[3]);
    expect_close(gpu, cpu, 1e-5, "MLP forward 16-32-4 on infer_ctx<float, cuda> matches the cpu ops");
    expect(ctx.workspace().used_total() > 0, "infer_ctx<float, cuda>: values come from its device workspace");
}

void check_error_path() {
    try {
        float* p = nullptr;
        XREC_CUDA_CHECK(cudaMalloc(&p, std::size_t{1} << 62));  // cannot succeed
        expect(false, "XREC_CUDA_CHECK throws on a failing call");
    } catch (const xrec::error& e) {
        const std::string w = e.what();
        expect(w.find("cudaMalloc") != std::string::npos && w.find("smoke.cu") != std::string::npos,
               std::string("XREC_CUDA_CHECK names the call and the file: ") + w);
    }
    (void)cudaGetLastError();
}

}  // namespace

int main() {
    if (xrec::device::count() == 0) {
        std::printf("xrec cuda smoke: no CUDA device here; nothing to run (building this binary was the check)\n");
        return 77;
    }
    try {
        cudaDeviceProp prop{};
        XREC_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
        std::printf("xrec cuda smoke on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
        check_arena();
        check_buffer();
        check_elementwise();
        check_gemm();
        check_forward();
        check_error_path();
        xrec::device::synchronize();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL: unexpected exception: %s\n", e.what());
        return 1;
    }
    std::printf("%s: %d failed check(s)\n", failures ? "FAILED" : "passed", failures);
    return failures ? 1 : 0;
}
