// Reduced-precision serving weights (serve/quantize.hpp, core/reduced_precision.hpp, the
// dequantising gathers of backend/cpu_kernels.hpp):
//  - the formats: bf16 rounds to nearest even (relative error <= 2^-8), int8 row-wise reads
//    back within scale / 2 of every value, constant rows exactly;
//  - quantize_tables: the memory of each format, which tables it leaves alone, refusals;
//  - embedding_lookup and embedding_bag (sum / mean / max, weights, empty bags) on an
//    infer_ctx over reduced tables against a naive scalar reference, at widths that exercise
//    the SIMD body and the scalar tail;
//  - a training context and a checkpoint refuse a reduced table by name; dequantize_tables
//    makes the store train again;
//  - DeepFM trained briefly on a small synthetic shop serves with bf16 and int8 weights within
//    0.002 test AUC of fp32.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "support/checks.hpp"
#include "support/random.hpp"
#include "xrec/core/context.hpp"
#include "xrec/data/dataset.hpp"
#include "xrec/data/synthetic_shop.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/ops/embedding.hpp"
#include "xrec/serve/quantize.hpp"
#include "xrec/train/trainer.hpp"

namespace {

using xrec::table_precision;
using B = xrec::cpu<>;
using store_t = xrec::param_store<float, B>;
constexpr std::uint64_t tag = 0x71a4;

// The naive reference: element d of row i of a reduced table, straight from its bytes.
float ref_value(const xrec::embedding_table<float, B>& t, std::int64_t i, std::int64_t d) {
    const std::uint8_t* row = t.packed_row(i);
    if (t.precision == table_precision::bf16) {
        std::uint16_t h;
        std::memcpy(&h, row + 2 * d, 2);
        std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
        float x;
        std::memcpy(&x, &u, 4);
        return x;
    }
    float scale, bias;
    std::memcpy(&scale, row + t.dim, 4);
    std::memcpy(&bias, row + t.dim + 4, 4);
    return scale * static_cast<float>(row[d]) + bias;
}

// A store with one [rows, dim] table of N(0, 0.3) values plus a shifted row and a constant row.
std::vector<float> fill_table(store_t& s, const std::string& name, std::int64_t rows, std::int64_t dim,
                              std::uint64_t seed) {
    auto tp = s.add_table(name, rows, dim, xrec::init::zeros());
    auto v = xrec_test::normal_values<float>(rows * dim, seed, tag, 0.3);
    if (rows > 2)
        for (std::int64_t d = 0; d < dim; ++d) {
            v[static_cast<std::size_t>(dim + d)] += 5.0f;       // row 1 far from 0
            v[static_cast<std::size_t>(2 * dim + d)] = -0.75f;  // row 2 constant
        }
    std::copy(v.begin(), v.end(), tp.table().values.data());
    return v;
}

bool close(float got, double want, double rel) { return std::abs(got - want) <= rel * (std::abs(want) + 1e-3); }

}  // namespace

// bf16 keeps 8 significant bits (7 stored + the implicit one), so its unit roundoff is
// 2^-8: a normal x rounds to x' with |x - x'| <= 2^-8 |x| (half an ulp, 2^(e-8), over
// |x| >= 2^e). 2^-9 would need 9 bits; the measured worst case below is just under 2^-8.
TEST_CASE("quantize: bf16 rounds to nearest even with relative error <= 2^-8") {
    CHECK(xrec::to_bf16(1.0f) == 0x3f80);
    CHECK(xrec::to_bf16(-2.0f) == 0xc000);
    // 1 + 2^-8 is half a bf16 ulp above 1: the tie goes to the even mantissa (1.0);
    // 1 + 3 * 2^-8 is half an ulp above 1 + 2^-7 (odd): up to 1 + 2^-6.
    CHECK(xrec::round_bf16(1.0f + std::ldexp(1.0f, -8)) == 1.0f);
    CHECK(xrec::round_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 1.0f + std::ldexp(1.0f, -6));
    CHECK(xrec::round_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 1.0f + std::ldexp(1.0f, -7));
    CHECK(std::isnan(xrec::round_bf16(std::numeric_limits<float>::quiet_NaN())));
    CHECK(std::isnan(xrec::round_bf16(std::numeric_limits<float>::signaling_NaN())));
    CHECK(xrec::round_bf16(std::numeric_limits<float>::infinity()) == std::numeric_limits<float>::infinity());
    CHECK(xrec::round_bf16(std::numeric_limits<float>::max()) == std::numeric_limits<float>::infinity());
    const auto v = xrec_test::normal_values<float>(100000, 1, tag + 1, 10.0);
    double worst = 0;
    for (float x : v) {
        const float r = xrec::round_bf16(x);
        worst = std::max(worst, std::abs(static_cast<double>(r) - x) / std::abs(static_cast<double>(x)));
        // Nearest: no bf16 neighbour is closer.
        const std::uint16_t h = xrec::to_bf16(x);
        for (int step : {-1, 1}) {
            const float nb = xrec::from_bf16(static_cast<std::uint16_t>(h + step));
            CHECK_MESSAGE(std::abs(nb - x) >= std::abs(r - x), "x = " << x);
        }
    }
    MESSAGE("bf16 worst relative error over 1e5 N(0, 100) values: " << worst << " (bound 2^-8 = " << std::ldexp(1.0, -8)
                                                                       << ")");
    CHECK(worst <= std::ldexp(1.0, -8));
    CHECK(worst > std::ldexp(1.0, -9));  // the bound is nearly reached: the rounding really rounds
}

TEST_CASE("quantize: int8 row-wise reads back within scale/2, constant rows exactly") {
    for (std::int64_t dim : {1, 7, 16, 64, 100}) {
        const auto x = xrec_test::normal_values<float>(dim, 2, tag + static_cast<std::uint64_t>(dim), 3.0, 1.0);
        std::vector<std::uint8_t> row(static_cast<std::size_t>(dim + 8));
        xrec::quantize_row_int8(x.data(), dim, row.data());
        const auto p = xrec::read_int8_row_params(row.data(), dim);
        const float lo = *std::min_element(x.begin(), x.end()), hi = *std::max_element(x.begin(), x.end());
        CHECK(p.bias == lo);
        CHECK(p.scale == doctest::Approx((hi - lo) / 255.0f).epsilon(1e-6));
        double worst = 0;
        for (std::int64_t d = 0; d < dim; ++d) {
            const float back = xrec::dequantize_int8(row.data(), dim, d);
            const double err = std::abs(static_cast<double>(back) - x[static_cast<std::size_t>(d)]);
            worst = std::max(worst, err / std::max<double>(p.scale, 1e-30));
            // scale / 2 from the code, plus the float rounding of scale * q + bias.
            CHECK(err <= p.scale / 2 + 4 * std::numeric_limits<float>::epsilon() * (std::abs(lo) + std::abs(hi)));
        }
        if (dim >= 16) CHECK(worst > 0.3);  // codes are really rounded, not exact by accident
    }
    const std::vector<float> flat(9, -1.25f);
    std::vector<std::uint8_t> row(17);
    xrec::quantize_row_int8(flat.data(), 9, row.data());
    CHECK(xrec::read_int8_row_params(row.data(), 9).scale == 0.0f);
    for (std::int64_t d = 0; d < 9; ++d) CHECK(xrec::dequantize_int8(row.data(), 9, d) == -1.25f);
}

TEST_CASE("quantize: quantize_tables stores the reduced form and reports its memory") {
    store_t s(1);
    const auto big = fill_table(s, "big", 1000, 64, 3);
    fill_table(s, "narrow", 50, 1, 4);
    fill_table(s, "one_row", 1, 64, 5);  // one-row tables (layer state) stay float
    s.add("w", xrec::shape{3}, xrec::init::constant(0.1));

    SUBCASE("int8") {
        const auto rep = xrec::serve::quantize_tables(s, table_precision::int8_rowwise);
        REQUIRE(rep.tables.size() == 3);
        CHECK(rep.tables[0].precision == table_precision::int8_rowwise);
        CHECK(rep.tables[0].bytes_before == 1000 * 64 * 4);
        CHECK(rep.tables[0].bytes_after == 1000 * (64 + 8));  // 1M x 64 would be 72 MB for 256 MB
        CHECK(rep.tables[1].precision == table_precision::bf16);  // dim 1 < int8_min_dim
        CHECK(rep.tables[1].bytes_after == 50 * 2);
        CHECK(rep.tables[2].precision == table_precision::full);
        CHECK(s.table(0).values.size() == 0);  // the float rows are gone
        CHECK(s.table(0).packed.size() == 1000 * 72);
        // Every element within scale / 2 of the original.
        for (std::int64_t i = 0; i < 1000; ++i) {
            const auto p = xrec::read_int8_row_params(s.table(0).packed_row(i), 64);
            for (std::int64_t d = 0; d < 64; ++d)
                REQUIRE(std::abs(ref_value(s.table(0), i, d) - big[static_cast<std::size_t>(i * 64 + d)]) <=
                        p.scale / 2 + 1e-5f);
        }
        // Idempotent in the same format; another format is refused by name.
        CHECK_NOTHROW(xrec::serve::quantize_tables(s, table_precision::int8_rowwise));
        xrec_test::expect_error(
            [&] { xrec::serve::quantize_tables(s, table_precision::bf16); }, {"'big' is already stored as int8_rowwise"});
    }
    SUBCASE("bf16") {
        const auto rep = xrec::serve::quantize_tables(s, table_precision::bf16);
        CHECK(rep.tables[0].bytes_after == 1000 * 64 * 2);
        CHECK(rep.bytes_before == (1000 * 64 + 50 + 64) * 4);
        CHECK(rep.bytes_after == 1000 * 64 * 2 + 50 * 2 + 64 * 4);
        for (std::int64_t i = 0; i < 1000; ++i)
            for (std::int64_t d = 0; d < 64; ++d)
                REQUIRE(ref_value(s.table(0), i, d) == xrec::round_bf16(big[static_cast<std::size_t>(i * 64 + d)]));
    }
    SUBCASE("dense weights round to bf16 values") {
        s.values()[s.find("w")->offset] = 1.0f + 3 * std::ldexp(1.0f, -8);
        CHECK(xrec::serve::round_dense_to_bf16(s) == 3);
        CHECK(s.values()[s.find("w")->offset] == 1.0f + std::ldexp(1.0f, -6));
        CHECK(s.values()[s.find("w")->offset + 1] == xrec::round_bf16(0.1f));
    }
}

TEST_CASE("quantize: bad input is refused by name") {
    store_t s(1);
    fill_table(s, "emb", 10, 8, 6);
    SUBCASE("non-finite value") {
        s.table(0).values[3 * 8 + 5] = std::numeric_limits<float>::quiet_NaN();
        xrec_test::expect_error([&] { xrec::serve::quantize_tables(s, table_precision::bf16); },
                                     {"table 'emb' row 3 element 5"});
        CHECK(!s.table(0).reduced());  // nothing converted
    }
    SUBCASE("int8 range overflow") {
        s.table(0).values[4 * 8] = 3e38f;
        s.table(0).values[4 * 8 + 1] = -3e38f;
        xrec_test::expect_error([&] { xrec::serve::quantize_tables(s, table_precision::int8_rowwise); },
                                     {"table 'emb' row 4"});
    }
    SUBCASE("full is not a target") {
        xrec_test::expect_error([&] { xrec::serve::quantize_tables(s, table_precision::full); }, {"bf16 or int8"});
    }
    SUBCASE("training, checkpoints and out-of-range ids on a reduced table") {
        xrec::serve::quantize_tables(s, table_precision::int8_rowwise);
        const xrec::table_param<float, B> tp{&s, 0};
        xrec::train_ctx<float, B> tc;
        const std::vector<std::int64_t> ids{1, 2};
        xrec_test::expect_error([&] { xrec::ops::embedding_lookup(tc, tp, ids); },
                                     {"table 'emb' is stored as int8_rowwise for serving; training"});
        const std::vector<std::int64_t> offs{0, 2};
        xrec_test::expect_error([&] { xrec::ops::embedding_bag(tc, tp, {ids, offs}, xrec::pooling::sum); },
                                     {"table 'emb' is stored as int8_rowwise"});
        xrec_test::expect_error([&] { s.named_tensors(); }, {"table 'emb' is stored as int8_rowwise"});
        xrec::infer_ctx<float, B> ic;
        const std::vector<std::int64_t> bad{1, 10};
        xrec_test::expect_error([&] { xrec::ops::embedding_lookup(ic, tp, bad); }, {"id 10 at position 1"});
        const std::vector<std::int64_t> bad_offs{0, 3};
        xrec_test::expect_error([&] { xrec::ops::embedding_bag(ic, tp, {ids, bad_offs}, xrec::pooling::sum); },
                                     {"last offset"});
        // Dequantised, the store trains and checkpoints again, with the int8 rounding kept.
        const float back = ref_value(s.table(0), 2, 3);
        xrec::serve::dequantize_tables(s);
        CHECK(!s.table(0).reduced());
        CHECK(s.table(0).values[2 * 8 + 3] == back);
        CHECK_NOTHROW(s.named_tensors());
        CHECK_NOTHROW(xrec::ops::embedding_lookup(tc, tp, ids));
    }
}

TEST_CASE("quantize: lookup and bags over reduced tables match the scalar reference") {
    for (auto prec : {table_precision::bf16, table_precision::int8_rowwise}) {
        for (std::int64_t dim : {3, 8, 16, 37, 64}) {
            const std::string prec_name = xrec::table_precision_name(prec);
            CAPTURE(prec_name);
            CAPTURE(dim);
            store_t s(1);
            const std::int64_t rows = 300;
            fill_table(s, "t", rows, dim, 7 + static_cast<std::uint64_t>(dim));
            xrec::serve::quantize_options o;
            o.int8_min_dim = 1;  // int8 at every width here
            xrec::serve::quantize_tables(s, prec, o);
            const auto& t = s.table(0);
            REQUIRE(t.precision == prec);
            const xrec::table_param<float, B> tp{&s, 0};
            xrec::infer_ctx<float, B> ctx;
            // int8 reads fold scale and bias into fmas: a few ulps from the reference.
            const double rel = prec == table_precision::bf16 ? 0 : 1e-6;

            std::vector<std::int64_t> ids;
            for (std::int64_t i = 0; i < 57; ++i) ids.push_back((i * 131 + 7) % rows);
            ids.push_back(1);
            ids.push_back(2);
            const auto y = xrec::ops::embedding_lookup(ctx, tp, ids);
            REQUIRE(y.s == xrec::shape{static_cast<std::int64_t>(ids.size()), dim});
            for (std::size_t i = 0; i < ids.size(); ++i)
                for (std::int64_t d = 0; d < dim; ++d)
                    REQUIRE(close(y.data[static_cast<std::int64_t>(i) * dim + d], ref_value(t, ids[i], d), rel));

            // Bags of 0 .. 9 ids, the empty one in the middle, with and without weights.
            std::vector<std::int64_t> vals, offs{0};
            for (std::int64_t b = 0; b < 10; ++b) {
                const std::int64_t n = (b * 7) % 10;
                for (std::int64_t k = 0; k < n; ++k) vals.push_back((b * 37 + k * 53 + 1) % rows);
                offs.push_back(static_cast<std::int64_t>(vals.size()));
            }
            const auto wv = xrec_test::normal_values<float>(static_cast<std::int64_t>(vals.size()), 8, tag, 1.0);
            for (auto mode : {xrec::pooling::sum, xrec::pooling::mean, xrec::pooling::max})
                for (bool weighted : {false, true}) {
                    const std::string mode_name = xrec::pooling_name(mode);
                    CAPTURE(mode_name);
                    CAPTURE(weighted);
                    ctx.reset();
                    const xrec::var<float> w =
                        weighted ? ctx.input({wv.data(), xrec::shape{static_cast<std::int64_t>(wv.size())}})
                                 : xrec::var<float>{};
                    const auto yb = xrec::ops::embedding_bag(ctx, tp, {vals, offs}, mode, w);
                    for (std::int64_t b = 0; b < 10; ++b)
                        for (std::int64_t d = 0; d < dim; ++d) {
                            double want = 0, mag = 0;
                            const std::int64_t n = offs[static_cast<std::size_t>(b + 1)] - offs[static_cast<std::size_t>(b)];
                            for (std::int64_t k = offs[static_cast<std::size_t>(b)]; k < offs[static_cast<std::size_t>(b + 1)];
                                 ++k) {
                                const double v = (weighted ? wv[static_cast<std::size_t>(k)] : 1.0) *
                                                 ref_value(t, vals[static_cast<std::size_t>(k)], d);
                                mag += std::abs(v);
                                if (mode == xrec::pooling::max)
                                    want = k == offs[static_cast<std::size_t>(b)] ? v : std::max(want, v);
                                else
                                    want += v;
                            }
                            if (mode == xrec::pooling::mean && n > 0) want /= static_cast<double>(n), mag /= static_cast<double>(n);
                            // Float sums in another order (int8: the biases summed apart) with
                            // cancellation: within 1e-6 of the sum of magnitudes; max picks one
                            // element (a few ulps for int8's fma).
                            CAPTURE(b);
                            CAPTURE(d);
                            REQUIRE(std::abs(yb.data[b * dim + d] - want) <= 1e-6 * mag + 1e-7);
                        }
                }
        }
    }
}

TEST_CASE("quantize: DeepFM on the synthetic shop serves bf16 and int8 within 0.002 AUC of fp32") {
    const auto t0 = std::chrono::steady_clock::now();
    xrec::data::shop_options so;
    so.train_rows = 200000;
    so.valid_rows = 1000;
    so.test_rows = 100000;
    so.purchase_task = false;
    so.seed = 3;
    const auto sh = xrec::data::make_shop(so);
    store_t s(3);
    xrec::models::deepfm<float, B> model(s, sh.train.layout(), {.dim = 16, .dnn = {.hidden = {64, 32}}});
    xrec::train::trainer_options o;
    o.epochs = 1;
    o.batch_size = 256;
    o.seed = 3;
    o.dense_lr = 2e-3;
    o.sparse = xrec::train::sparse_optimizer::rowwise_adagrad;
    o.sparse_lr = 0.05;
    o.progress = false;
    xrec::train::trainer tr(model, s, o);
    tr.fit(sh.train);
    const double fp32 = tr.evaluate(sh.test).at(0).auc;
    // The same weights in each serving precision: snapshot, quantize, evaluate, restore.
    auto snapshot = [&] {
        std::vector<std::vector<float>> v;
        for (auto& nt : s.named_tensors()) v.emplace_back(nt.data, nt.data + nt.s.numel());
        return v;
    };
    auto restore = [&](const std::vector<std::vector<float>>& v) {
        xrec::serve::dequantize_tables(s);
        auto nts = s.named_tensors();
        for (std::size_t i = 0; i < nts.size(); ++i) std::copy(v[i].begin(), v[i].end(), nts[i].data);
    };
    const auto fp32_weights = snapshot();
    xrec::serve::quantize(s, xrec::serve::serving_precision::bf16);
    REQUIRE(s.table(0).precision == table_precision::bf16);
    const double bf16 = tr.evaluate(sh.test).at(0).auc;
    restore(fp32_weights);
    const auto rep = xrec::serve::quantize(s, xrec::serve::serving_precision::bf16_int8);
    REQUIRE(s.table(0).precision == table_precision::int8_rowwise);
    const double int8 = tr.evaluate(sh.test).at(0).auc;
    restore(fp32_weights);
    CHECK(tr.evaluate(sh.test).at(0).auc == fp32);  // restored exactly
    MESSAGE("shop deepfm test AUC: fp32 " << fp32 << ", bf16 " << bf16 << " (" << bf16 - fp32 << "), int8 " << int8
                                          << " (" << int8 - fp32 << "); tables " << rep.bytes_before << " -> "
                                          << rep.bytes_after << " bytes; "
                                          << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()
                                          << " s");
    CHECK(fp32 > 0.7);  // it learned something worth serving
    CHECK(std::abs(bf16 - fp32) < 0.002);
    CHECK(std::abs(int8 - fp32) < 0.002);
    CHECK(bf16 != fp32);  // the precisions really differ (weights changed, scores moved)
}
