// Loads the state_dicts that train_and_export.py wrote (plain PyTorch DeepFM, DCN-V2 and
// DIN, PyTorch's own key names) into xrec's models through the built-in name maps, checks
// each against the golden input and logits stored in the same file, and prints the largest
// relative difference per model.
//
//   python3 examples/pytorch_interop/train_and_export.py --out /tmp/torch_weights
//   <build>/examples/xrec_load_torch_weights /tmp/torch_weights
//
// The layouts and options below mirror train_and_export.py (CTR_SPEC, DIN_SPEC, build()):
// the same tables in the same order, the same field order, the same widths.
#include <cstdio>
#include <exception>
#include <string>

#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/io/state_dict.hpp"
#include "xrec/models/dcn_v2.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/models/din.hpp"

namespace {

xrec::feature_layout ctr_layout() {
    xrec::feature_layout l;
    l.tables = {{"user", 50}, {"item", 200}, {"cate", 12}, {"city", 20}};
    l.sparse = {{"user_id", 0}, {"item_id", 1}, {"cate_id", 2}, {"city_id", 3}};
    l.dense = {"d0", "d1", "d2"};
    l.finish();
    return l;
}

xrec::feature_layout din_layout() {
    xrec::feature_layout l;
    l.tables = {{"user", 50}, {"item", 200}, {"cate", 12}};
    l.sparse = {{"user_id", 0}, {"item_id", 1}, {"cate_id", 2}};
    l.dense = {"d0", "d1"};
    l.sequences = {{"hist_item_id", 1, 8}, {"hist_cate_id", 2, 8}};
    l.finish();
    return l;
}

void report(const char* name, const std::string& path, const xrec::io::state_dict_report& r,
            const xrec::io::golden_report& g) {
    std::printf("%-16s %s: %zu tensors loaded, %zu ignored; %lld golden rows, max relative difference %.3g (row %lld: "
                "xrec %.7f, PyTorch %.7f)\n",
                name, path.c_str(), r.loaded.size(), r.ignored.size(), static_cast<long long>(g.rows), g.max_rel_err,
                static_cast<long long>(g.worst_row), g.got, g.want);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s DIR   (DIR: what train_and_export.py --out wrote)\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    namespace io = xrec::io;
    namespace models = xrec::models;
    using store_t = xrec::param_store<float, xrec::cpu<>>;
    try {
        const auto ctr = ctr_layout();
        {
            const std::string p = dir + "/deepfm.safetensors";
            store_t s;
            models::deepfm<float> m(s, ctr, {.dim = 8, .dnn = {.hidden = {64, 32}}});
            const auto r = io::load_state_dict(p, s, io::torch_maps::deepfm(ctr));
            report("deepfm", p, r, io::verify_golden(m, s, p, 1e-5));
        }
        {
            const std::string p = dir + "/dcn_v2.safetensors";
            store_t s;
            models::dcn_v2<float> m(s, ctr, {.dim = 8, .dnn = {.hidden = {64, 32}}});
            const auto r = io::load_state_dict(p, s, io::torch_maps::dcn_v2(ctr));
            report("dcn_v2", p, r, io::verify_golden(m, s, p, 1e-5));
        }
        {
            const std::string p = dir + "/dcn_v2_low_rank.safetensors";
            store_t s;
            models::dcn_v2_options o{.dim = 8, .dnn = {.hidden = {64, 32}}};
            o.cross = {.layers = 2, .kind = xrec::layers::cross_kind::low_rank, .rank = 3};
            o.structure = models::dcn_structure::stacked;
            models::dcn_v2<float> m(s, ctr, o);
            const auto r = io::load_state_dict(p, s, io::torch_maps::dcn_v2(ctr));
            report("dcn_v2_low_rank", p, r, io::verify_golden(m, s, p, 1e-5));
        }
        {
            const auto l = din_layout();
            const std::string p = dir + "/din.safetensors";
            store_t s;
            models::din<float>::options o;
            o.inputs.dim = 8;
            o.pairs = {{"item_id", "hist_item_id"}, {"cate_id", "hist_cate_id"}};
            o.attention.hidden = {32, 16};
            o.attention.act = xrec::layers::unit_activation::dice;
            o.mlp = {{64, 32}, xrec::layers::unit_activation::dice, 0, {}};
            models::din<float> m(s, l, o);
            const auto r = io::load_state_dict(p, s, io::torch_maps::din(l, 2, 2));
            report("din", p, r, io::verify_golden(m, s, p, 1e-5));
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
