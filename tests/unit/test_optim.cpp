// Optimizers: parity with PyTorch (tests/fixtures/optim_fixtures.safetensors, written by
// tests/fixtures/gen_optim_fixtures.py), FTRL-Proximal and row-wise Adagrad against scalar
// references written from the papers' update rules, the deterministic merge of duplicate
// ids, thread-count independence, lazy updates, state round trips, clipping, schedules.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "xrec/backend/tags.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/rng.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/optim/all.hpp"

namespace {

using B = xrec::cpu<>;
using xrec::init;
using xrec::param_store;
using xrec::io::safetensors_file;
namespace optim = xrec::optim;

const std::string fixture_path = std::string(XREC_FIXTURE_DIR) + "/optim_fixtures.safetensors";
constexpr int fixture_steps = 5;

double hp(const safetensors_file& f, const std::string& key, double dflt = 0) {
    auto it = f.metadata().find(key);
    return it == f.metadata().end() ? dflt : std::stod(it->second);
}
bool hp_bool(const safetensors_file& f, const std::string& key) {
    auto it = f.metadata().find(key);
    return it != f.metadata().end() && it->second == "True";
}

// Largest |got - ref| / (rtol |ref| + atol); <= 1 passes.
template <class T>
double worst_ratio(const T* got, const std::vector<double>& ref, double rtol, double atol) {
    double worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i)
        worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - ref[i]) / (rtol * std::fabs(ref[i]) + atol));
    return worst;
}

template <class T>
bool bit_equal(const T* a, const T* b, std::int64_t n) {
    return std::memcmp(a, b, static_cast<std::size_t>(n) * sizeof(T)) == 0;
}

// ---------------------------------------------------------------- PyTorch replays

// Replays a dense case: params "w" and "b" from the fixture, five steps with the fixture's
// gradients. Returns the worst error ratio over all steps.
template <class T, class Make>
double dense_replay(const safetensors_file& f, const std::string& cs, Make make, double rtol, double atol) {
    param_store<T, B> s;
    auto w = s.add("w", f.shape_of("dense.w.init"), init::zeros());
    auto b = s.add("b", f.shape_of("dense.b.init"), init::zeros());
    f.read_into("dense.w.init", w.value(), w.s.numel());
    f.read_into("dense.b.init", b.value(), b.s.numel());
    auto opt = make(s);
    double worst = 0;
    for (int k = 0; k < fixture_steps; ++k) {
        s.zero_grad();
        f.read_into("dense.w.grad." + std::to_string(k), w.grad(), w.s.numel());
        f.read_into("dense.b.grad." + std::to_string(k), b.grad(), b.s.numel());
        opt.step();
        worst = std::max(worst, worst_ratio(w.value(), f.read<double>(cs + ".w.after." + std::to_string(k)), rtol, atol));
        worst = std::max(worst, worst_ratio(b.value(), f.read<double>(cs + ".b.after." + std::to_string(k)), rtol, atol));
    }
    CHECK(opt.steps() == fixture_steps);
    return worst;
}

// Replays a sparse case on a table "emb": each step appends the fixture's (id, row) pairs
// in emission order (duplicates included) and steps. Also checks that the gradient is
// cleared and that every row not looked up in a step is bit-identical before and after it.
template <class T, class Make>
double sparse_replay(const safetensors_file& f, const std::string& cs, Make make, double rtol, double atol) {
    const xrec::shape ts = f.shape_of("sparse.init");
    param_store<T, B> s;
    auto tp = s.add_table("emb", ts[0], ts[1], init::zeros());
    auto& t = tp.table();
    f.read_into("sparse.init", t.values.data(), t.rows * t.dim);
    auto opt = make(s);
    double worst = 0;
    for (int k = 0; k < fixture_steps; ++k) {
        const auto ids = f.read<std::int64_t>("sparse.ids." + std::to_string(k));
        const auto g = f.read<T>("sparse.grad." + std::to_string(k));
        std::copy(g.begin(), g.end(), t.grad.append(static_cast<std::int64_t>(ids.size()), ids.data()));
        const std::vector<T> before(t.values.data(), t.values.data() + t.rows * t.dim);
        opt.step();
        CHECK(t.grad.count() == 0);
        for (std::int64_t r = 0; r < t.rows; ++r)
            if (std::find(ids.begin(), ids.end(), r) == ids.end()) {
                INFO(cs, ": row ", r, " was not looked up in step ", k);
                CHECK(bit_equal(t.row(r), before.data() + r * t.dim, t.dim));
            }
        worst = std::max(worst, worst_ratio(t.values.data(), f.read<double>(cs + ".after." + std::to_string(k)), rtol, atol));
    }
    return worst;
}

template <class T>
void run_pytorch_parity(double rtol, double atol, const char* label) {
    const auto f = safetensors_file::open(fixture_path);
    auto sgd_case = [&](const std::string& cs) {
        return dense_replay<T>(
            f, cs,
            [&](param_store<T, B>& s) {
                return optim::sgd<T, B>(s, {hp(f, cs + ".lr"), hp(f, cs + ".momentum"), hp(f, cs + ".dampening"),
                                            hp(f, cs + ".weight_decay"), hp_bool(f, cs + ".nesterov")});
            },
            rtol, atol);
    };
    auto adam_opts = [&](const std::string& cs) {
        return optim::adam_options{hp(f, cs + ".lr"), hp(f, cs + ".beta1"), hp(f, cs + ".beta2"), hp(f, cs + ".eps"),
                                   hp(f, cs + ".weight_decay")};
    };
    struct row {
        const char* name;
        double worst;
    };
    std::vector<row> rows;
    rows.push_back({"sgd_plain", sgd_case("sgd_plain")});
    rows.push_back({"sgd_momentum", sgd_case("sgd_momentum")});
    rows.push_back({"sgd_nesterov", sgd_case("sgd_nesterov")});
    rows.push_back({"adam", dense_replay<T>(f, "adam", [&](param_store<T, B>& s) { return optim::adam<T, B>(s, adam_opts("adam")); },
                                            rtol, atol)});
    rows.push_back({"adamw", dense_replay<T>(f, "adamw", [&](param_store<T, B>& s) { return optim::adamw<T, B>(s, adam_opts("adamw")); },
                                             rtol, atol)});
    rows.push_back({"sparse_sgd", sparse_replay<T>(
                                      f, "sparse_sgd",
                                      [&](param_store<T, B>& s) { return optim::sparse_sgd<T, B>(s, {hp(f, "sparse_sgd.lr")}); },
                                      rtol, atol)});
    rows.push_back({"adagrad (sparse)", sparse_replay<T>(
                                            f, "adagrad",
                                            [&](param_store<T, B>& s) {
                                                return optim::sparse_adagrad<T, B>(
                                                    s, {hp(f, "adagrad.lr"), hp(f, "adagrad.lr_decay"), 0,
                                                        hp(f, "adagrad.initial_accumulator_value"), hp(f, "adagrad.eps")});
                                            },
                                            rtol, atol)});
    rows.push_back({"sparse_adam -> lazy_adam", sparse_replay<T>(
                                                    f, "sparse_adam",
                                                    [&](param_store<T, B>& s) {
                                                        return optim::lazy_adam<T, B>(
                                                            s, {hp(f, "sparse_adam.lr"), hp(f, "sparse_adam.beta1"),
                                                                hp(f, "sparse_adam.beta2"), hp(f, "sparse_adam.eps")});
                                                    },
                                                    rtol, atol)});
    for (auto& r : rows) {
        std::printf("torch parity (%s) %-26s worst error / tolerance %.3g\n", label, r.name, r.worst);
        INFO(label, " ", r.name, " worst error ratio ", r.worst);
        CHECK(r.worst <= 1.0);
    }
}

}  // namespace

TEST_CASE("optim: five steps of each optimizer match PyTorch (float)") {
    run_pytorch_parity<float>(1e-5, 1e-7, "float, tol 1e-5|ref|+1e-7");
}

TEST_CASE("optim: five steps of each optimizer match PyTorch (double)") {
    run_pytorch_parity<double>(1e-12, 1e-14, "double, tol 1e-12|ref|+1e-14");
}

// ---------------------------------------------------------------- scalar references

namespace {

// The ids and gradient rows of a few steps on a small table, with duplicates.
struct sparse_script {
    std::int64_t rows = 9, dim = 3;
    std::vector<std::vector<std::int64_t>> ids = {
        {4, 1, 4, 7, 4}, {1, 1, 2}, {7, 3, 0, 7}, {4, 8, 8, 8, 2}, {0, 1, 4, 7}, {5, 5, 4, 1}};
    std::vector<std::vector<double>> grads;
    std::vector<double> init;
    sparse_script(std::uint64_t seed, double init_scale, std::int64_t d = 3) : dim(d) {
        const xrec::rng_stream rs{xrec::philox{seed}, 1};
        std::uint64_t c = 0;
        for (auto& s : ids) {
            std::vector<double> g(s.size() * static_cast<std::size_t>(dim));
            for (auto& x : g) x = rs.normal(c++);
            grads.push_back(std::move(g));
        }
        init.resize(static_cast<std::size_t>(rows * dim));
        for (auto& x : init) x = init_scale * rs.normal(c++);
    }
    // The merged gradient of step k, dense [rows, dim], duplicates summed in emission order,
    // and which rows were touched.
    void merged(std::size_t k, std::vector<double>& g, std::vector<bool>& touched) const {
        g.assign(static_cast<std::size_t>(rows * dim), 0.0);
        touched.assign(static_cast<std::size_t>(rows), false);
        for (std::size_t j = 0; j < ids[k].size(); ++j) {
            const auto r = static_cast<std::size_t>(ids[k][j]);
            touched[r] = true;
            for (std::size_t d = 0; d < static_cast<std::size_t>(dim); ++d)
                g[r * static_cast<std::size_t>(dim) + d] += grads[k][j * static_cast<std::size_t>(dim) + d];
        }
    }
    // Runs `opt` over the script on a fresh table of T and returns the final values.
    template <class T, class Make>
    std::vector<T> run(Make make, xrec::thread_pool* pool = nullptr) const {
        param_store<T, B> s;
        auto& t = s.add_table("emb", rows, dim, init::zeros()).table();
        for (std::size_t i = 0; i < init.size(); ++i) t.values[static_cast<std::int64_t>(i)] = static_cast<T>(init[i]);
        auto opt = make(s);
        opt.set_pool(pool);
        for (std::size_t k = 0; k < ids.size(); ++k) {
            T* dst = t.grad.append(static_cast<std::int64_t>(ids[k].size()), ids[k].data());
            for (std::size_t i = 0; i < grads[k].size(); ++i) dst[i] = static_cast<T>(grads[k][i]);
            opt.step();
        }
        return {t.values.data(), t.values.data() + rows * dim};
    }
};

// FTRL-Proximal, McMahan et al. 2013, Algorithm 1, per coordinate, in double.
std::vector<double> ftrl_reference(const sparse_script& sc, double alpha, double beta, double l1, double l2) {
    std::vector<double> w = sc.init, z(w.size(), 0.0), n(w.size(), 0.0), g;
    std::vector<bool> touched;
    for (std::size_t k = 0; k < sc.ids.size(); ++k) {
        sc.merged(k, g, touched);
        for (std::size_t i = 0; i < w.size(); ++i) {
            if (!touched[i / static_cast<std::size_t>(sc.dim)]) continue;
            const double sigma = (std::sqrt(n[i] + g[i] * g[i]) - std::sqrt(n[i])) / alpha;
            z[i] += g[i] - sigma * w[i];
            n[i] += g[i] * g[i];
            const double sgn = z[i] < 0 ? -1.0 : 1.0;
            w[i] = std::fabs(z[i]) <= l1 ? 0.0 : -(z[i] - sgn * l1) / ((beta + std::sqrt(n[i])) / alpha + l2);
        }
    }
    return w;
}

// Row-wise Adagrad as FBGEMM's rowwise_adagrad (weight_decay_mode 0/1/2), in double.
std::vector<double> rowwise_reference(const sparse_script& sc, double lr, double eps, double wd, int wd_mode) {
    std::vector<double> w = sc.init, acc(static_cast<std::size_t>(sc.rows), 0.0), g;
    std::vector<bool> touched;
    const auto dim = static_cast<std::size_t>(sc.dim);
    for (std::size_t k = 0; k < sc.ids.size(); ++k) {
        sc.merged(k, g, touched);
        for (std::size_t r = 0; r < acc.size(); ++r) {
            if (!touched[r]) continue;
            double sq = 0;
            for (std::size_t d = 0; d < dim; ++d) {
                double gd = g[r * dim + d];
                if (wd_mode == 1) gd += wd * w[r * dim + d];
                sq += gd * gd;
            }
            acc[r] += sq / static_cast<double>(dim);
            const double mult = lr / (std::sqrt(acc[r]) + eps);
            const double correction = wd_mode == 1 ? 1 - mult * wd : wd_mode == 2 ? 1 - lr * wd : 1.0;
            for (std::size_t d = 0; d < dim; ++d) w[r * dim + d] = correction * w[r * dim + d] - mult * g[r * dim + d];
        }
    }
    return w;
}

template <class T>
double worst_vs(const std::vector<T>& got, const std::vector<double>& ref, double rtol, double atol) {
    REQUIRE(got.size() == ref.size());
    return worst_ratio(got.data(), ref, rtol, atol);
}

}  // namespace

TEST_CASE("optim: FTRL-Proximal matches the paper's per-coordinate rule") {
    const sparse_script from_zero(11, 0.0), from_random(12, 0.3);
    struct cfg {
        double alpha, beta, l1, l2;
    };
    for (const auto& c : {cfg{0.1, 1.0, 0.0, 0.0}, cfg{0.2, 0.5, 0.3, 0.1}, cfg{0.05, 1.0, 1.5, 1.0}}) {
        for (const auto* sc : {&from_zero, &from_random}) {
            const auto ref = ftrl_reference(*sc, c.alpha, c.beta, c.l1, c.l2);
            const optim::ftrl_options o{c.alpha, c.beta, c.l1, c.l2};
            const auto gd = sc->run<double>([&](param_store<double, B>& s) { return optim::ftrl<double, B>(s, o); });
            const auto gf = sc->run<float>([&](param_store<float, B>& s) { return optim::ftrl<float, B>(s, o); });
            const double wd = worst_vs(gd, ref, 1e-12, 1e-14), wf = worst_vs(gf, ref, 1e-5, 1e-7);
            INFO("alpha ", c.alpha, " beta ", c.beta, " l1 ", c.l1, " l2 ", c.l2, ": double ", wd, " float ", wf);
            CHECK(wd <= 1.0);
            CHECK(wf <= 1.0);
        }
    }
    // A strong l1 zeroes coordinates exactly; the reference agrees on which.
    const auto ref = ftrl_reference(from_zero, 0.05, 1.0, 1.5, 1.0);
    const auto got = from_zero.run<float>([](param_store<float, B>& s) {
        return optim::ftrl<float, B>(s, {0.05, 1.0, 1.5, 1.0});
    });
    int zeros = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        CHECK((ref[i] == 0.0) == (got[i] == 0.0f));
        zeros += ref[i] == 0.0;
    }
    CHECK(zeros > 0);
}

TEST_CASE("optim: unregularised FTRL with beta 0 equals per-coordinate adaptive gradient descent") {
    // McMahan et al. 2013, section 3.1: without regularisation FTRL-Proximal is online
    // gradient descent with rates alpha / sqrt(n_i), i.e. Adagrad with eps 0.
    const sparse_script sc(21, 0.4);
    const auto f = sc.run<double>([](param_store<double, B>& s) { return optim::ftrl<double, B>(s, {0.1, 0.0, 0.0, 0.0}); });
    const auto a = sc.run<double>([](param_store<double, B>& s) {
        return optim::sparse_adagrad<double, B>(s, {0.1, 0.0, 0.0, 0.0, 0.0});
    });
    CHECK(worst_vs(f, std::vector<double>(a.begin(), a.end()), 1e-12, 1e-14) <= 1.0);
}

TEST_CASE("optim: row-wise Adagrad matches FBGEMM's rule") {
    const sparse_script sc(31, 0.5);
    struct cfg {
        double lr, eps, wd;
        int mode;
    };
    for (const auto& c : {cfg{0.1, 1e-8, 0.0, 0}, cfg{0.2, 1e-6, 0.05, 1}, cfg{0.2, 1e-6, 0.05, 2}}) {
        const auto ref = rowwise_reference(sc, c.lr, c.eps, c.wd, c.mode);
        const optim::rowwise_adagrad_options o{c.lr, c.eps, c.wd, c.mode == 2};
        const auto gd = sc.run<double>([&](param_store<double, B>& s) { return optim::rowwise_adagrad<double, B>(s, o); });
        const auto gf = sc.run<float>([&](param_store<float, B>& s) { return optim::rowwise_adagrad<float, B>(s, o); });
        const double wd = worst_vs(gd, ref, 1e-12, 1e-14), wf = worst_vs(gf, ref, 1e-5, 1e-7);
        INFO("weight decay mode ", c.mode, ": double ", wd, " float ", wf);
        CHECK(wd <= 1.0);
        CHECK(wf <= 1.0);
    }
    // With one column the row mean is the element's square: element-wise Adagrad exactly.
    const sparse_script sc1(33, 0.5, 1);
    const auto rw = sc1.run<double>([](param_store<double, B>& s) { return optim::rowwise_adagrad<double, B>(s, {0.1, 1e-10}); });
    const auto ew = sc1.run<double>([](param_store<double, B>& s) {
        return optim::sparse_adagrad<double, B>(s, {0.1, 0.0, 0.0, 0.0, 1e-10});
    });
    // Equal up to rounding: the two compute lr * g / (sqrt(a) + eps) in different orders.
    CHECK(worst_vs(rw, std::vector<double>(ew.begin(), ew.end()), 1e-13, 1e-15) <= 1.0);
}

// ---------------------------------------------------------------- merge and determinism

TEST_CASE("optim: coalesce sums duplicates in emission order, ids ascending") {
    param_store<float, B> s;
    auto& t = s.add_table("emb", 5, 2, init::zeros()).table();
    // Row 3 gets 1e8, then 1, then -1e8: summed in this order the 1 is absorbed (1e8 + 1 ==
    // 1e8 in float), so the merged value is exactly 0; any other order gives 1.
    const std::vector<std::int64_t> ids = {3, 1, 3, 3, 1};
    const std::vector<float> rows = {1e8f, 2, 5, 6, 1, 0, -1e8f, 1, 7, 8};
    std::copy(rows.begin(), rows.end(), t.grad.append(5, ids.data()));
    optim::coalesce_scratch<float, B> scratch;
    optim::coalesce(t, scratch);
    REQUIRE(t.grad.count() == 2);
    CHECK(t.grad.ids[0] == 1);
    CHECK(t.grad.ids[1] == 3);
    CHECK(t.grad.rows[0] == 12.f);  // 5 + 7
    CHECK(t.grad.rows[1] == 14.f);  // 6 + 8
    CHECK(t.grad.rows[2] == 0.f);   // (1e8 + 1) - 1e8 in float
    CHECK(t.grad.rows[3] == 3.f);   // 2 + 0 + 1
    // Already merged: a second call changes nothing.
    optim::coalesce(t, scratch);
    CHECK(t.grad.count() == 2);
    CHECK(t.grad.rows[2] == 0.f);
    // Out-of-range ids are refused with the table named.
    t.grad.clear();
    const std::int64_t bad = 5;
    t.grad.append(1, &bad);
    CHECK_THROWS_WITH_AS(optim::coalesce(t, scratch), doctest::Contains("'emb'"), xrec::error);
}

TEST_CASE("optim: coalesce over ids wider than one radix pass equals a stable sort by id") {
    // 5 million rows: ids of 23 bits, three 11-bit passes; duplicates in every bucket.
    param_store<float, B> s;
    auto& t = s.add_table("wide", 5'000'000, 1, init::zeros()).table();
    std::vector<std::int64_t> ids;
    std::vector<float> rows;
    std::uint64_t x = 12345;
    for (int i = 0; i < 5000; ++i) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        const std::int64_t base[] = {0, 2047, 2048, 4'194'303, 4'194'304, 4'999'999};
        ids.push_back(i % 3 == 0 ? base[(x >> 33) % 6] : static_cast<std::int64_t>((x >> 20) % 5'000'000));
        rows.push_back(static_cast<float>(i % 97) - 48.f);
    }
    std::copy(rows.begin(), rows.end(), t.grad.append(static_cast<std::int64_t>(ids.size()), ids.data()));
    // The reference: positions stably sorted by id, each id's rows summed in that order.
    std::vector<std::int64_t> perm(ids.size());
    std::iota(perm.begin(), perm.end(), std::int64_t{0});
    std::stable_sort(perm.begin(), perm.end(), [&](std::int64_t a, std::int64_t b) {
        return ids[static_cast<std::size_t>(a)] < ids[static_cast<std::size_t>(b)];
    });
    std::vector<std::int64_t> want_ids;
    std::vector<float> want_rows;
    for (auto p : perm) {
        const auto id = ids[static_cast<std::size_t>(p)];
        if (want_ids.empty() || want_ids.back() != id) {
            want_ids.push_back(id);
            want_rows.push_back(rows[static_cast<std::size_t>(p)]);
        } else {
            want_rows.back() += rows[static_cast<std::size_t>(p)];
        }
    }
    optim::coalesce_scratch<float, B> scratch;
    optim::coalesce(t, scratch);
    REQUIRE(t.grad.count() == static_cast<std::int64_t>(want_ids.size()));
    CHECK(t.grad.ids == want_ids);
    bool same = true;
    for (std::size_t i = 0; i < want_rows.size(); ++i) same = same && t.grad.rows[static_cast<std::int64_t>(i)] == want_rows[i];
    CHECK(same);
}

namespace {
// A large sparse workload: 20000 emitted ids over 3000 rows of a 16-wide table (many
// duplicates), three steps. Returns the table and every state buffer, concatenated.
template <class Opt, class Make>
std::vector<float> big_sparse_run(Make make, xrec::thread_pool* pool) {
    param_store<float, B> s(3);
    auto& t = s.add_table("emb", 3000, 16, init::normal(0, 0.1)).table();
    auto& t2 = s.add_table("emb2", 700, 8, init::normal(0, 0.1)).table();
    Opt opt = make(s);
    opt.set_pool(pool);
    const xrec::rng_stream rs{xrec::philox{77}, 0};
    std::uint64_t c = 0;
    for (int step = 0; step < 3; ++step) {
        for (int i = 0; i < 20000; ++i) {
            const auto id = static_cast<std::int64_t>(rs.below(c++, 3000));
            float* r = t.grad.append(1, &id);
            for (int d = 0; d < 16; ++d) r[d] = static_cast<float>(rs.normal(c++));
        }
        for (int i = 0; i < 900; ++i) {
            const auto id = static_cast<std::int64_t>(rs.below(c++, 700));
            float* r = t2.grad.append(1, &id);
            for (int d = 0; d < 8; ++d) r[d] = static_cast<float>(rs.normal(c++));
        }
        opt.step();
    }
    std::vector<float> out(t.values.data(), t.values.data() + t.rows * t.dim);
    out.insert(out.end(), t2.values.data(), t2.values.data() + t2.rows * t2.dim);
    for (auto& nt : opt.state()) out.insert(out.end(), nt.data, nt.data + nt.s.numel());
    return out;
}
}  // namespace

TEST_CASE("optim: sparse updates are bitwise independent of the thread count and repeatable") {
    xrec::thread_pool pool3(3), pool2(2);
    auto check = [&](const char* name, auto make) {
        using opt_t = decltype(make(std::declval<param_store<float, B>&>()));
        const auto a = big_sparse_run<opt_t>(make, nullptr);
        const auto b = big_sparse_run<opt_t>(make, &pool3);
        const auto c = big_sparse_run<opt_t>(make, &pool2);
        const auto d = big_sparse_run<opt_t>(make, nullptr);
        INFO(name);
        CHECK(a == b);
        CHECK(a == c);
        CHECK(a == d);
    };
    check("sparse_sgd", [](param_store<float, B>& s) { return optim::sparse_sgd<float, B>(s, {0.1, 0.01}); });
    check("sparse_adagrad", [](param_store<float, B>& s) { return optim::sparse_adagrad<float, B>(s, {0.1}); });
    check("rowwise_adagrad", [](param_store<float, B>& s) { return optim::rowwise_adagrad<float, B>(s, {0.1}); });
    check("lazy_adam", [](param_store<float, B>& s) { return optim::lazy_adam<float, B>(s, {0.01}); });
    check("ftrl", [](param_store<float, B>& s) { return optim::ftrl<float, B>(s, {0.1, 1, 0.01, 0.01}); });
}

TEST_CASE("optim: dense updates are bitwise independent of the thread count") {
    auto run = [](xrec::thread_pool* pool, auto make) {
        param_store<float, B> s(9);
        auto w = s.add("w", {300, 700}, init::normal(0, 0.1));
        auto b = s.add("b", {333}, init::normal(0, 0.1));
        auto opt = make(s);
        opt.set_pool(pool);
        const xrec::rng_stream rs{xrec::philox{8}, 0};
        for (int step = 0; step < 3; ++step) {
            for (std::int64_t i = 0; i < s.dense_size(); ++i) s.grads()[i] = static_cast<float>(rs.normal(step * 1000000 + i));
            (void)w;
            (void)b;
            opt.step();
        }
        return std::vector<float>(s.values(), s.values() + s.dense_size());
    };
    xrec::thread_pool pool(3);
    auto adam = [](param_store<float, B>& s) { return optim::adam<float, B>(s, {1e-3, 0.9, 0.999, 1e-8, 0.01}); };
    auto sgd = [](param_store<float, B>& s) { return optim::sgd<float, B>(s, {0.1, 0.9, 0, 0.01, true}); };
    CHECK(run(nullptr, adam) == run(&pool, adam));
    CHECK(run(nullptr, sgd) == run(&pool, sgd));
}

// ---------------------------------------------------------------- state

namespace {
// Runs 3 steps, snapshots values and state(), runs 2 more (result A); then restores the
// snapshot into a fresh store and optimizer and runs the same 2 steps (result B). A == B
// bitwise iff state() holds everything the optimizer carries between steps.
template <class Make>
void state_round_trip(const char* name, Make make) {
    auto grads_at = [](param_store<float, B>& s, int step) {
        const xrec::rng_stream rs{xrec::philox{5}, static_cast<std::uint64_t>(step)};
        s.zero_grad();
        for (std::int64_t i = 0; i < s.dense_size(); ++i) s.grads()[i] = static_cast<float>(rs.normal(static_cast<std::uint64_t>(i)));
        auto& t = s.table(0);
        for (std::int64_t j = 0; j < 12; ++j) {
            const auto id = static_cast<std::int64_t>(rs.below(1000 + static_cast<std::uint64_t>(j), 10));
            float* r = t.grad.append(1, &id);
            for (std::int64_t d = 0; d < t.dim; ++d) r[d] = static_cast<float>(rs.normal(static_cast<std::uint64_t>(2000 + j * 8 + d)));
        }
    };
    auto build = [](param_store<float, B>& s) {
        s.add("w", {4, 3}, init::normal(0, 1));
        s.add("b", {3}, init::normal(0, 1));
        s.add_table("emb", 10, 5, init::normal(0, 1));
    };
    param_store<float, B> s1(1), s2(1);
    build(s1);
    build(s2);
    auto o1 = make(s1);
    for (int k = 0; k < 3; ++k) {
        grads_at(s1, k);
        o1.step();
    }
    // Restore: parameters and optimizer state into the second store and optimizer.
    auto o2 = make(s2);
    auto p1 = s1.named_tensors(), p2 = s2.named_tensors();
    for (std::size_t i = 0; i < p1.size(); ++i) std::copy(p1[i].data, p1[i].data + p1[i].s.numel(), p2[i].data);
    auto st1 = o1.state(), st2 = o2.state();
    REQUIRE(st1.size() == st2.size());
    for (std::size_t i = 0; i < st1.size(); ++i) {
        CHECK(st1[i].name == st2[i].name);
        CHECK(st1[i].s == st2[i].s);
        std::copy(st1[i].data, st1[i].data + st1[i].s.numel(), st2[i].data);
    }
    for (int k = 3; k < 5; ++k) {
        grads_at(s1, k);
        o1.step();
        grads_at(s2, k);
        o2.step();
    }
    INFO(name);
    CHECK(o2.steps() == 5);
    auto a = s1.named_tensors(), b = s2.named_tensors();
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(bit_equal(a[i].data, b[i].data, a[i].s.numel()));
}
}  // namespace

TEST_CASE("optim: state() holds everything, so a restored optimizer continues bit-identically") {
    state_round_trip("sgd", [](param_store<float, B>& s) { return optim::sgd<float, B>(s, {0.1, 0.9, 0.1, 0.01}); });
    state_round_trip("adam", [](param_store<float, B>& s) { return optim::adam<float, B>(s, {0.01, 0.9, 0.99, 1e-8, 0.1}); });
    state_round_trip("adamw", [](param_store<float, B>& s) { return optim::adamw<float, B>(s); });
    state_round_trip("sparse_adagrad", [](param_store<float, B>& s) { return optim::sparse_adagrad<float, B>(s, {0.1, 0.05, 0, 0.1}); });
    state_round_trip("rowwise_adagrad", [](param_store<float, B>& s) { return optim::rowwise_adagrad<float, B>(s, {0.1}); });
    state_round_trip("lazy_adam", [](param_store<float, B>& s) { return optim::lazy_adam<float, B>(s, {0.01}); });
    state_round_trip("ftrl", [](param_store<float, B>& s) { return optim::ftrl<float, B>(s, {0.1, 1, 0.1, 0.1}); });
}

TEST_CASE("optim: state names, shapes and the step counter") {
    param_store<float, B> s;
    s.add("w", {4, 3}, init::zeros());
    s.add_table("emb", 10, 5, init::zeros());
    optim::adam<float, B> adam(s);
    auto st = adam.state();
    REQUIRE(st.size() == 3);
    CHECK(st[0].name == "adam.step");
    CHECK(st[0].s == xrec::shape{2});
    CHECK(st[1].name == "adam.w.exp_avg");
    CHECK(st[1].s == xrec::shape{4, 3});
    CHECK(st[2].name == "adam.w.exp_avg_sq");
    adam.step();
    adam.step();
    CHECK(st[0].data[0] == 0.f);
    CHECK(st[0].data[1] == 2.f);
    CHECK(optim::adamw<float, B>(s).state()[1].name == "adamw.w.exp_avg");
    auto rw = optim::rowwise_adagrad<float, B>(s).state();
    REQUIRE(rw.size() == 2);
    CHECK(rw[1].name == "rowwise_adagrad.emb.sum");
    CHECK(rw[1].s == xrec::shape{10});
    auto fs = optim::ftrl<float, B>(s).state();
    REQUIRE(fs.size() == 3);
    CHECK(fs[1].name == "ftrl.emb.z");
    CHECK(fs[2].name == "ftrl.emb.n");
    CHECK(fs[2].s == xrec::shape{10, 5});
    // The counter is exact far beyond float's 2^24 integers.
    optim::detail::step_counter<float, B> c;
    const std::int64_t big = (std::int64_t{1} << 40) + 12345;
    c.set(big);
    CHECK(c.advance() == big + 1);
}

TEST_CASE("optim: dense and sparse optimizer state survives a checkpoint file") {
    // Adam on the dense parameters and lazy Adam on the table, three steps, a checkpoint
    // with both optimizers' state, then two more steps; a fresh model loaded from the
    // checkpoint takes the same two steps and must end bit-identical.
    auto build = [](param_store<float, B>& s) {
        s.add("w", {4, 3}, init::normal(0, 1));
        s.add_table("emb", 10, 5, init::normal(0, 1));
    };
    auto grads_at = [](param_store<float, B>& s, int step) {
        const xrec::rng_stream rs{xrec::philox{13}, static_cast<std::uint64_t>(step)};
        s.zero_grad();
        for (std::int64_t i = 0; i < s.dense_size(); ++i) s.grads()[i] = static_cast<float>(rs.normal(static_cast<std::uint64_t>(i)));
        const std::vector<std::int64_t> ids = {3, 7, 3, static_cast<std::int64_t>(step % 10)};
        float* r = s.table(0).grad.append(4, ids.data());
        for (int j = 0; j < 20; ++j) r[j] = static_cast<float>(rs.normal(static_cast<std::uint64_t>(100 + j)));
    };
    auto both_states = [](auto& a, auto& b) {
        auto st = a.state();
        for (auto& t : b.state()) st.push_back(t);
        return st;
    };
    const auto path = (std::filesystem::temp_directory_path() / "xrec_test_optim_state.safetensors").string();
    param_store<float, B> s1(4), s2(99);
    build(s1);
    build(s2);
    optim::adam<float, B> d1(s1, {0.01});
    optim::lazy_adam<float, B> l1(s1, {0.01});
    for (int k = 0; k < 3; ++k) {
        grads_at(s1, k);
        d1.step();
        l1.step();
    }
    xrec::io::save_checkpoint(path, s1, {}, both_states(d1, l1));
    optim::adam<float, B> d2(s2, {0.01});
    optim::lazy_adam<float, B> l2(s2, {0.01});
    xrec::io::load_checkpoint(path, s2, both_states(d2, l2));
    std::filesystem::remove(path);
    CHECK(d2.steps() == 3);
    CHECK(l2.steps() == 3);
    for (int k = 3; k < 5; ++k) {
        grads_at(s1, k);
        d1.step();
        l1.step();
        grads_at(s2, k);
        d2.step();
        l2.step();
    }
    auto a = s1.named_tensors(), b = s2.named_tensors();
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(bit_equal(a[i].data, b[i].data, a[i].s.numel()));
}

// ---------------------------------------------------------------- clipping

TEST_CASE("optim: clip_grad_norm over dense and merged sparse gradients") {
    param_store<double, B> s;
    auto w = s.add("w", {3}, init::zeros());
    auto& t = s.add_table("emb", 4, 2, init::zeros()).table();
    auto fill = [&] {
        s.zero_grad();
        w.grad()[0] = 1;
        w.grad()[1] = 2;
        w.grad()[2] = 2;  // dense: 9
        const std::vector<std::int64_t> ids = {2, 2};
        const std::vector<double> rows = {3, 0, 1, 0};  // merged (4, 0): 16, unmerged would give 10
        std::copy(rows.begin(), rows.end(), t.grad.append(2, ids.data()));
    };
    fill();
    const double n0 = optim::clip_grad_norm(s, 10.0);
    CHECK(n0 == doctest::Approx(5.0).epsilon(1e-15));
    CHECK(w.grad()[1] == 2.0);  // below the limit: unchanged
    REQUIRE(t.grad.count() == 1);  // merged in place
    CHECK(t.grad.rows[0] == 4.0);

    fill();
    const double n1 = optim::clip_grad_norm(s, 1.0);
    CHECK(n1 == doctest::Approx(5.0).epsilon(1e-15));
    const double coef = 1.0 / (5.0 + 1e-6);  // PyTorch's clip coefficient
    CHECK(w.grad()[0] == doctest::Approx(coef).epsilon(1e-15));
    CHECK(t.grad.rows[0] == doctest::Approx(4 * coef).epsilon(1e-15));
    const double after = optim::clip_grad_norm(s, 1.0);
    CHECK(after == doctest::Approx(1.0).epsilon(1e-6));
    std::printf("clip_grad_norm: norm before %.6f (expected 5), after clipping to 1: %.9f\n", n1, after);

    s.zero_grad();
    w.grad()[0] = std::numeric_limits<double>::infinity();
    CHECK(!std::isfinite(optim::clip_grad_norm(s, 1.0)));
    CHECK(std::isinf(w.grad()[0]));  // left alone so the caller can skip the step
}

// ---------------------------------------------------------------- schedules

TEST_CASE("optim: learning-rate schedules at chosen steps") {
    using optim::lr_schedule;
    const auto warm = lr_schedule::constant(0.1, 10);
    CHECK(warm.at(0) == 0.0);
    CHECK(warm.at(5) == doctest::Approx(0.05));
    CHECK(warm.at(10) == doctest::Approx(0.1));
    CHECK(warm.at(100000) == doctest::Approx(0.1));

    auto warm_f = lr_schedule::constant(1.0, 4);
    warm_f.warmup_start_factor = 0.25;
    CHECK(warm_f.at(0) == doctest::Approx(0.25));
    CHECK(warm_f.at(2) == doctest::Approx(0.625));
    CHECK(warm_f.at(4) == doctest::Approx(1.0));

    const auto st = lr_schedule::step_decay(1.0, 30, 0.1);
    CHECK(st.at(0) == 1.0);
    CHECK(st.at(29) == 1.0);
    CHECK(st.at(30) == doctest::Approx(0.1));
    CHECK(st.at(65) == doctest::Approx(0.01));
    const auto stw = lr_schedule::step_decay(1.0, 10, 0.5, 5);
    CHECK(stw.at(3) == doctest::Approx(0.6));
    CHECK(stw.at(14) == doctest::Approx(1.0));
    CHECK(stw.at(15) == doctest::Approx(0.5));
    CHECK(stw.at(35) == doctest::Approx(0.125));

    const auto cs = lr_schedule::cosine(1.0, 110, 10, 0.1);
    CHECK(cs.at(5) == doctest::Approx(0.5));
    CHECK(cs.at(10) == doctest::Approx(1.0));
    CHECK(cs.at(35) == doctest::Approx(0.1 + 0.9 * (1 + std::cos(3.14159265358979323846 / 4)) / 2));
    CHECK(cs.at(60) == doctest::Approx(0.55));
    CHECK(cs.at(110) == doctest::Approx(0.1));
    CHECK(cs.at(1000) == doctest::Approx(0.1));
    for (std::int64_t k = 11; k < 110; ++k) CHECK(cs.at(k) < cs.at(k - 1));  // strictly decreasing after warm-up

    CHECK_THROWS_AS(cs.at(-1), xrec::error);
    CHECK_THROWS_AS(lr_schedule::cosine(1.0, 10, 10).at(20), xrec::error);
    CHECK_THROWS_AS(lr_schedule::step_decay(1.0, 0, 0.5).at(3), xrec::error);

    // Driving an optimizer.
    param_store<float, B> s;
    s.add("w", {2}, init::zeros());
    optim::adam<float, B> opt(s, {0.5});
    for (std::int64_t k = 0; k < 40; ++k) {
        opt.set_lr(cs.at(k));
        opt.step();
    }
    CHECK(opt.lr() == doctest::Approx(cs.at(39)));
}

TEST_CASE("optim: bad options are refused with the optimizer named") {
    param_store<float, B> s;
    s.add("w", {2}, init::zeros());
    using sgd_t = optim::sgd<float, B>;
    using adam_t = optim::adam<float, B>;
    using ftrl_t = optim::ftrl<float, B>;
    const optim::sgd_options nesterov_without_momentum{0.1, 0.0, 0.0, 0.0, true};
    const optim::adam_options beta1_one{0.1, 1.0};
    const optim::ftrl_options alpha_zero{0.0};
    CHECK_THROWS_WITH_AS(sgd_t(s, nesterov_without_momentum), doctest::Contains("nesterov"), xrec::error);
    CHECK_THROWS_WITH_AS(adam_t(s, beta1_one), doctest::Contains("betas"), xrec::error);
    CHECK_THROWS_WITH_AS(ftrl_t(s, alpha_zero), doctest::Contains("ftrl"), xrec::error);
    CHECK_THROWS_WITH_AS(optim::clip_grad_norm(s, 0.0), doctest::Contains("max_norm"), xrec::error);
}
