// The one translation unit of the -fno-exceptions test that is built with exceptions: it
// includes serve/api_impl.hpp and makes the server (see serve/api.hpp).
#include <cmath>
#include <cstdio>

#include "noexcept_api.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/serve/api_impl.hpp"

namespace {

using model = xrec::models::deepfm<float, xrec::cpu<>>;

xrec::feature_layout layout() {
    xrec::feature_layout l;
    l.tables = {{"user", 30}, {"item", 50}, {"cate", 6}};
    l.sparse = {{"user", 0}, {"item", 1}, {"cate", 2}};
    l.dense = {"price"};
    l.sequences = {{"hist_item", 1, 8, xrec::pooling::mean}};
    l.finish();
    return l;
}

model::options options() {
    model::options o;
    o.dim = 4;
    o.dnn.hidden = {8};
    o.embedding_init = xrec::init::normal(0, 0.3);
    return o;
}

}  // namespace

namespace noexcept_test {

bool write_checkpoint(const char* path, std::uint64_t seed) noexcept {
    try {
        xrec::param_store<float, xrec::cpu<>> s(seed);
        model m(s, layout(), options());
        xrec::io::save_checkpoint(path, s);
        return true;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "write_checkpoint: %s\n", e.what());
        return false;
    }
}

xrec::serve::status make_server(const char* path, std::unique_ptr<xrec::serve::model_server>& out) noexcept {
    if (!write_checkpoint(path, 1)) return {xrec::serve::status_code::internal, "could not write the checkpoint"};
    return xrec::serve::make_server<model>(layout(), options(), {.max_batch = 16, .max_candidates = 32,
                                                                 .candidate_fields = {"item", "cate"}},
                                           path, out);
}

std::vector<float> reference(std::uint64_t seed, const xrec::serve::request_view& r) noexcept {
    try {
        xrec::param_store<float, xrec::cpu<>> s(seed);
        model m(s, layout(), options());
        xrec::jagged_ids seq{{r.sequences[0].ids, static_cast<std::size_t>(r.sequences[0].num_ids)},
                             {r.sequences[0].offsets, static_cast<std::size_t>(r.rows + 1)}};
        xrec::batch<float> b;
        b.rows = r.rows;
        b.sparse = {r.sparse, xrec::shape{r.rows, 3}};
        b.dense = {r.dense, xrec::shape{r.rows, 1}};
        b.sequences = {&seq, 1};
        xrec::infer_ctx<float, xrec::cpu<>> ctx;
        const auto y = m(ctx, b);
        std::vector<float> p(static_cast<std::size_t>(r.rows));
        for (std::int64_t i = 0; i < r.rows; ++i) p[static_cast<std::size_t>(i)] = 1 / (1 + std::exp(-y.data[i]));
        return p;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "reference: %s\n", e.what());
        return {};
    }
}

}  // namespace noexcept_test
