// embedding_bag on the cuda tag against naive host loops in double: the forward (sum, mean,
// max; with and without per-id weights; vectorised and scalar column paths; empty bags),
// the fused backward + row-wise Adagrad step, and that step's determinism (bit-identical
// tables over repeated runs, with uniform and with Zipf-skewed ids). Outputs are poisoned
// with NaN before each run, so an unwritten element fails. Exit 0 = passed, 1 = a check
// failed, 77 = no CUDA device.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "xrec/core/buffer.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/cuda/embedding_bag.cuh"
#include "xrec/cuda/memory.cuh"

namespace {

using xrec::cuda;
using xrec::pooling;
namespace kernels = xrec::kernels;

int failures = 0;
void expect(bool ok, const std::string& what) {
    std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what.c_str());
    if (!ok) ++failures;
}

struct case_data {
    std::int64_t rows, dim, batch;
    std::vector<std::int64_t> ids, offsets;
    std::vector<float> w, table;
};

std::uint64_t g_seed = 0;

// Rank of a Zipf(1.05)-like draw over [0, rows): the inverse CDF of a power law with density
// ~ x^-1.05 truncated to [1, rows + 1].
std::uint64_t zipf_rank(double u, std::int64_t rows) {
    const double a = 0.05, top = std::pow(static_cast<double>(rows) + 1, -a);
    const double x = std::pow(1 - u * (1 - top), -1 / a);
    const auto r = static_cast<std::uint64_t>(x) - 1;
    return r < static_cast<std::uint64_t>(rows) ? r : static_cast<std::uint64_t>(rows) - 1;
}

// Bags of 0..max_len ids (about one in 16 empty); ids uniform, or Zipf-like (a Pareto tail
// with exponent 1.05, folded onto the rows by a bijective multiplicative hash).
case_data make_case(std::int64_t rows, std::int64_t dim, std::int64_t batch, int max_len, bool zipf,
                    std::uint64_t stream, bool hot = false) {
    xrec::rng_stream rs{xrec::philox{g_seed}, stream};
    std::uint64_t k = 0;
    case_data c{rows, dim, batch, {}, {0}, {}, {}};
    for (std::int64_t b = 0; b < batch; ++b) {
        const int len = rs.uniform_f(k++) < 1.f / 16 ? 0 : 1 + static_cast<int>(rs.uniform_f(k++) * max_len);
        for (int i = 0; i < len; ++i) {
            std::int64_t id;
            if (zipf && hot) {
                id = 7 % rows;
            } else if (zipf) {
                const std::uint64_t r = zipf_rank(rs.uniform_f(k++), rows);
                id = static_cast<std::int64_t>((r * 2654435761ULL) % static_cast<std::uint64_t>(rows));
            } else {
                id = static_cast<std::int64_t>(rs.uniform_f(k++) * static_cast<float>(rows));
                if (id >= rows) id = rows - 1;
            }
            c.ids.push_back(id);
            c.w.push_back(0.5f + rs.uniform_f(k++));
        }
        c.offsets.push_back(static_cast<std::int64_t>(c.ids.size()));
    }
    c.table.resize(static_cast<std::size_t>(rows * dim));
    for (auto& v : c.table) v = 2 * rs.uniform_f(k++) - 1;
    return c;
}

template <class T>
xrec::buffer<T, cuda> dev(const std::vector<T>& h) {
    xrec::buffer<T, cuda> d(static_cast<std::int64_t>(h.size() ? h.size() : 1));
    xrec::device::upload(d.data(), h.data(), static_cast<std::int64_t>(h.size()));
    return d;
}

void poison(xrec::buffer<float, cuda>& b) {
    kernels::fill(cuda{}, b.size(), std::numeric_limits<float>::quiet_NaN(), b.data());
}

// Host reference of the forward, in double; mag[b, d] = sum of |terms| (the scale of float
// rounding in a sum of terms that may cancel).
void ref_fwd(const case_data& c, bool weighted, pooling mode, std::vector<double>& out, std::vector<int>& arg,
             std::vector<double>& mag) {
    out.assign(static_cast<std::size_t>(c.batch * c.dim), 0.0);
    mag.assign(static_cast<std::size_t>(c.batch * c.dim), 0.0);
    arg.assign(static_cast<std::size_t>(c.batch * c.dim), -1);
    for (std::int64_t b = 0; b < c.batch; ++b) {
        const auto beg = c.offsets[b], end = c.offsets[b + 1];
        for (std::int64_t d = 0; d < c.dim; ++d) {
            double acc = 0;
            int am = -1;
            for (auto i = beg; i < end; ++i) {
                const double y = (weighted ? c.w[i] : 1.0) * c.table[c.ids[i] * c.dim + d];
                if (mode == pooling::max) {
                    if (am < 0 || y > acc) {
                        acc = y;
                        am = static_cast<int>(i - beg);
                    }
                } else {
                    acc += y;
                }
                mag[b * c.dim + d] += std::fabs(y);
            }
            if (mode == pooling::mean && end > beg) {
                acc /= static_cast<double>(end - beg);
                mag[b * c.dim + d] /= static_cast<double>(end - beg);
            }
            out[b * c.dim + d] = acc;
            arg[b * c.dim + d] = am;
        }
    }
}

// Worst |got - want| / (1e-5 max(|want|, mag) + 1e-6) (<= 1 passes); NaN counts as a
// failure. mag, where given, is the sum of the absolute terms: a float sum of terms that
// cancel is only accurate relative to them (40 terms of float rounding ~ 2.4e-6 of mag).
double violation(const std::vector<float>& got, const std::vector<double>& want, const std::vector<double>* mag = nullptr) {
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double scale = std::max(std::fabs(want[i]), mag ? (*mag)[i] : 0.0);
        const double e = std::fabs(got[i] - want[i]) / (1e-5 * scale + 1e-6);
        if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
    }
    return worst;
}

void check_forward(std::int64_t rows, std::int64_t dim, std::int64_t batch, int max_len, std::uint64_t stream) {
    const auto c = make_case(rows, dim, batch, max_len, false, stream);
    auto d_table = dev(c.table);
    auto d_ids = dev(c.ids);
    auto d_off = dev(c.offsets);
    auto d_w = dev(c.w);
    xrec::buffer<float, cuda> d_out(batch * dim);
    xrec::buffer<std::int32_t, cuda> d_arg(batch * dim);
    for (pooling mode : {pooling::sum, pooling::mean, pooling::max}) {
        for (bool weighted : {false, true}) {
            poison(d_out);
            kernels::embedding_bag_fwd(cuda{}, d_table.data(), dim, d_ids.data(), d_off.data(), batch,
                                       weighted ? d_w.data() : nullptr, mode, d_out.data(),
                                       mode == pooling::max ? d_arg.data() : nullptr);
            std::vector<double> want, mag;
            std::vector<int> want_arg;
            ref_fwd(c, weighted, mode, want, want_arg, mag);
            const auto got = xrec::device::to_host(d_out.data(), batch * dim);
            const double v = violation(got, want, &mag);
            char what[200];
            std::snprintf(what, sizeof what, "forward %s%s rows %lld dim %lld batch %lld nnz %zu: worst error / tol %.3g",
                          xrec::pooling_name(mode), weighted ? " weighted" : "", static_cast<long long>(rows),
                          static_cast<long long>(dim), static_cast<long long>(batch), c.ids.size(), v);
            expect(v <= 1, what);
            if (mode == pooling::max) {
                const auto ga = xrec::device::to_host(d_arg.data(), batch * dim);
                std::int64_t bad = 0;
                for (std::size_t i = 0; i < ga.size(); ++i) bad += ga[i] != want_arg[i];
                expect(bad == 0, std::string("forward max argmax indices match (") + std::to_string(bad) +
                                     " of " + std::to_string(ga.size()) + " differ)");
            }
        }
    }
}

// Host reference of backward + row-wise Adagrad in double, positions in ascending order.
void ref_adagrad(const case_data& c, bool weighted, pooling mode, const std::vector<int>& arg,
                 const std::vector<float>& gy, const xrec::kernels::rowwise_adagrad_step& o, std::vector<double>& table,
                 std::vector<double>& acc) {
    std::vector<double> g(static_cast<std::size_t>(c.rows * c.dim), 0.0);
    std::vector<char> touched(static_cast<std::size_t>(c.rows), 0);
    for (std::int64_t b = 0; b < c.batch; ++b) {
        const auto beg = c.offsets[b], end = c.offsets[b + 1];
        for (auto i = beg; i < end; ++i) {
            const auto r = c.ids[i];
            touched[r] = 1;
            double coef = weighted ? c.w[i] : 1.0;
            if (mode == pooling::mean) coef /= static_cast<double>(end - beg);
            for (std::int64_t d = 0; d < c.dim; ++d) {
                if (mode == pooling::max && arg[b * c.dim + d] != i - beg) continue;
                g[r * c.dim + d] += coef * gy[b * c.dim + d];
            }
        }
    }
    for (std::int64_t r = 0; r < c.rows; ++r) {
        if (!touched[r]) continue;
        double sq = 0;
        for (std::int64_t d = 0; d < c.dim; ++d) {
            double& gd = g[r * c.dim + d];
            gd += o.weight_decay * table[r * c.dim + d];
            sq += gd * gd;
        }
        acc[r] += sq / static_cast<double>(c.dim);
        const double m = o.lr / (std::sqrt(acc[r]) + o.eps);
        for (std::int64_t d = 0; d < c.dim; ++d) table[r * c.dim + d] -= m * g[r * c.dim + d];
    }
}

void check_adagrad(std::int64_t rows, std::int64_t dim, std::int64_t batch, int max_len, bool zipf,
                   std::uint64_t stream, bool hot = false) {
    const auto c = make_case(rows, dim, batch, max_len, zipf, stream, hot);
    const std::int64_t nnz = static_cast<std::int64_t>(c.ids.size());
    xrec::rng_stream rs{xrec::philox{g_seed}, stream + 1000};
    std::vector<float> gy(static_cast<std::size_t>(batch * dim)), acc0(static_cast<std::size_t>(rows));
    for (std::size_t i = 0; i < gy.size(); ++i) gy[i] = 2 * rs.uniform_f(i) - 1;
    for (std::size_t i = 0; i < acc0.size(); ++i) acc0[i] = 0.1f * rs.uniform_f(i + gy.size());
    auto d_ids = dev(c.ids);
    auto d_off = dev(c.offsets);
    auto d_w = dev(c.w);
    auto d_gy = dev(gy);
    xrec::device::workspace ws;
    xrec::kernels::rowwise_adagrad_step o;
    o.lr = 0.05;
    o.eps = 1e-8;
    o.weight_decay = 1e-3;
    for (pooling mode : {pooling::sum, pooling::mean, pooling::max}) {
        for (bool weighted : {false, true}) {
            auto d_table = dev(c.table);
            auto d_acc = dev(acc0);
            xrec::buffer<float, cuda> d_out(batch * dim);
            xrec::buffer<std::int32_t, cuda> d_arg(batch * dim);
            const float* w = weighted ? d_w.data() : nullptr;
            kernels::embedding_bag_fwd(cuda{}, d_table.data(), dim, d_ids.data(), d_off.data(), batch, w, mode,
                                       d_out.data(), d_arg.data());
            const auto arg32 = xrec::device::to_host(d_arg.data(), batch * dim);
            std::vector<int> arg(arg32.begin(), arg32.end());
            kernels::embedding_bag_adagrad(cuda{}, d_table.data(), d_acc.data(), rows, dim, d_ids.data(),
                                           d_off.data(), batch, nnz, w, mode, d_arg.data(), d_gy.data(), o, ws);
            std::vector<double> t(c.table.begin(), c.table.end()), a(acc0.begin(), acc0.end());
            ref_adagrad(c, weighted, mode, arg, gy, o, t, a);
            const double vt = violation(xrec::device::to_host(d_table.data(), rows * dim), t);
            const double va = violation(xrec::device::to_host(d_acc.data(), rows), a);
            char what[220];
            std::snprintf(what, sizeof what,
                          "backward + rowwise adagrad %s%s%s rows %lld dim %lld batch %lld nnz %lld: table %.3g, "
                          "accumulator %.3g (worst error / tol)",
                          xrec::pooling_name(mode), weighted ? " weighted" : "", hot ? " one id" : zipf ? " zipf" : "",
                          static_cast<long long>(rows), static_cast<long long>(dim), static_cast<long long>(batch),
                          static_cast<long long>(nnz), vt, va);
            expect(vt <= 1 && va <= 1, what);
        }
    }
    // Determinism: the same step from the same state, five times, bit for bit.
    std::vector<float> first;
    bool same = true;
    for (int run = 0; run < 5; ++run) {
        auto d_table = dev(c.table);
        auto d_acc = dev(acc0);
        kernels::embedding_bag_adagrad(cuda{}, d_table.data(), d_acc.data(), rows, dim, d_ids.data(), d_off.data(),
                                       batch, nnz, d_w.data(), pooling::sum, static_cast<const std::int32_t*>(nullptr),
                                       d_gy.data(), o, ws);
        const auto h = xrec::device::to_host(d_table.data(), rows * dim);
        if (run == 0)
            first = h;
        else
            same = same && std::memcmp(first.data(), h.data(), h.size() * sizeof(float)) == 0;
    }
    expect(same, std::string("backward + rowwise adagrad bit-identical over 5 runs") + (zipf ? " (zipf ids)" : ""));
    expect(ws.grow_count() == 1, "workspace allocated once for repeated steps (grew " +
                                     std::to_string(ws.grow_count()) + " times)");
}

void check_errors() {
    xrec::buffer<float, cuda> t(64), a(16), gy(16);
    xrec::buffer<std::int64_t, cuda> ids(4), off(2);
    xrec::device::workspace ws;
    bool threw = false;
    try {
        kernels::embedding_bag_adagrad(cuda{}, t.data(), a.data(), 16, 4, ids.data(), off.data(), 1, 4,
                                       static_cast<const float*>(nullptr), pooling::max,
                                       static_cast<const std::int32_t*>(nullptr), gy.data(), {}, ws);
    } catch (const xrec::error& e) {
        threw = std::strstr(e.what(), "max pooling needs") != nullptr;
    }
    expect(threw, "max pooling without the forward's argmax is refused with a message");
}

}  // namespace

int main(int argc, char** argv) {
    if (xrec::device::count() == 0) {
        std::printf("no CUDA device: skipped\n");
        return 77;
    }
    g_seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 0x5eed0000ULL + static_cast<std::uint64_t>(std::time(nullptr));
    std::printf("seed %llu\n", static_cast<unsigned long long>(g_seed));
    try {
        check_forward(1000, 64, 300, 40, 1);   // float4 path, 16 threads per bag
        check_forward(777, 3, 257, 9, 2);      // scalar path, odd dim
        check_forward(500, 100, 129, 20, 3);   // float4, 25 lanes -> 32-thread groups
        check_forward(300, 256, 64, 12, 4);    // float4, 64 lanes -> two column tiles
        check_forward(300, 130, 33, 7, 5);     // scalar, 130 columns over 32 lanes
        check_forward(50, 1, 40, 5, 6);        // one column
        check_adagrad(2000, 64, 500, 40, false, 11);
        check_adagrad(2000, 64, 500, 40, true, 12);
        check_adagrad(700, 3, 200, 9, false, 13);
        check_adagrad(400, 100, 100, 20, true, 14);
        check_adagrad(300, 512, 40, 8, false, 15);
        check_adagrad(5000, 64, 4000, 40, true, 16);        // hot ids: runs of thousands of positions
        check_adagrad(100, 64, 3000, 30, true, 17, true);  // every id the same: one run of ~40k
        check_adagrad(100, 4, 3000, 30, true, 18, true);   // ... with 1-thread groups
        check_errors();
        xrec::device::synchronize();
    } catch (const std::exception& e) {
        std::printf("FAIL: exception: %s\n", e.what());
        return 1;
    }
    std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
    return failures ? 1 : 0;
}
