// PyTorch state_dicts (include/xrec/io/state_dict.hpp):
//  - the round trip: the plain PyTorch DeepFM, DCN-V2 (full rank parallel, low rank stacked)
//    and DIN of examples/pytorch_interop/torch_models.py, trained and saved by
//    tests/fixtures/gen_torch_state_dict_fixtures.py (tests/fixtures/torch_<case>.safetensors),
//    load through the built-in torch_maps:: and reproduce PyTorch's float64 golden logits
//    within 1e-5 relative in float and 1e-9 in double (the worst error is printed);
//  - F64 weights load the same as F32 ones; BatchNorm running statistics land in Dice;
//  - name_map: exact names, numbered parts with affine / pick index maps, {*}, ignore,
//    include under a prefix, bad rules refused;
//  - bad input, refused before the store changes: a missing key, an unmapped key, a shape
//    mismatch (both keys and both shapes named), row blocks that overlap, a NaN, and a wrong
//    golden output (the worst row and both values named).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "support/temp_file.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/io/state_dict.hpp"
#include "xrec/models/dcn_v2.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/models/din.hpp"

namespace {

using xrec::cpu;
using xrec::feature_layout;
using xrec::param_store;
namespace io = xrec::io;
namespace models = xrec::models;
namespace layers = xrec::layers;

std::string fixture(const std::string& c) { return XREC_FIXTURE_DIR "/torch_" + c + ".safetensors"; }

// The generator's layouts (gen_torch_state_dict_fixtures.py: CTR and DIN).
feature_layout ctr_layout() {
    feature_layout l;
    l.tables = {{"user", 10}, {"item", 30}, {"cate", 6}, {"city", 5}};
    l.sparse = {{"user_id", 0}, {"item_id", 1}, {"cate_id", 2}, {"city_id", 3}};
    l.dense = {"d0", "d1"};
    l.finish();
    return l;
}
feature_layout din_layout() {
    feature_layout l;
    l.tables = {{"user", 10}, {"item", 30}, {"cate", 6}};
    l.sparse = {{"user_id", 0}, {"item_id", 1}, {"cate_id", 2}};
    l.dense = {"d0", "d1"};
    l.sequences = {{"hist_item_id", 1, 8}, {"hist_cate_id", 2, 8}};
    l.finish();
    return l;
}

// One case: builds the xrec model over the store, loads `path` through the case's map and
// runs the golden check; returns the report.
template <class T>
struct loaded_case {
    param_store<T, cpu<>> store{7};
    io::golden_report golden;
    io::state_dict_report report;
};

template <class T>
void run_case(const std::string& c, const std::string& path, double tol, loaded_case<T>& out) {
    if (c == "deepfm") {
        const auto l = ctr_layout();
        models::deepfm<T> m(out.store, l, {.dim = 4, .dnn = {.hidden = {16, 8}}});
        out.report = io::load_state_dict(path, out.store, io::torch_maps::deepfm(l));
        out.golden = io::verify_golden(m, out.store, path, tol);
    } else if (c == "dcn_v2" || c == "dcn_v2_low_rank") {
        const auto l = ctr_layout();
        models::dcn_v2_options o{.dim = 4, .dnn = {.hidden = {16, 8}}};
        if (c == "dcn_v2_low_rank") {
            o.cross = {.layers = 2, .kind = layers::cross_kind::low_rank, .rank = 3};
            o.structure = models::dcn_structure::stacked;
        }
        models::dcn_v2<T> m(out.store, l, o);
        out.report = io::load_state_dict(path, out.store, io::torch_maps::dcn_v2(l));
        out.golden = io::verify_golden(m, out.store, path, tol);
    } else {
        const auto l = din_layout();
        typename models::din<T>::options o;
        o.inputs.dim = 4;
        o.pairs = {{"item_id", "hist_item_id"}, {"cate_id", "hist_cate_id"}};
        o.attention.hidden = {8, 4};
        o.attention.act = layers::unit_activation::dice;
        o.mlp = {{16, 8}, layers::unit_activation::dice, 0, {}};
        models::din<T> m(out.store, l, o);
        out.report = io::load_state_dict(path, out.store, io::torch_maps::din(l, 2, 2));
        out.golden = io::verify_golden(m, out.store, path, tol);
    }
}

// A copy of a safetensors file with `edit` applied to its tensor list (name, dtype, shape,
// bytes), written to a temp file.
struct tensor_copy {
    std::string name, dtype;
    xrec::shape s;
    std::vector<std::byte> bytes;
};
struct edited_file {
    xrec_test::temp_file file;
    edited_file(const std::string& src, const std::function<void(std::vector<tensor_copy>&)>& edit)
        : file("state_dict.safetensors", "") {
        const auto f = io::safetensors_file::open(src);
        std::vector<tensor_copy> ts;
        for (const auto& t : f.tensors()) {
            const auto b = f.bytes(t.name);
            ts.push_back({t.name, t.dtype, t.s, std::vector<std::byte>(b.begin(), b.end())});
        }
        edit(ts);
        io::safetensors_writer w;
        for (const auto& t : ts) w.add(t.name, t.dtype, t.s, t.bytes.data());
        w.write(file.str());
    }
    std::string str() const { return file.str(); }
};
tensor_copy* find(std::vector<tensor_copy>& ts, const std::string& name) {
    for (auto& t : ts)
        if (t.name == name) return &t;
    FAIL("no tensor ", name);
    return nullptr;
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const xrec::error& e) {
        return e.what();
    }
    return "";
}

const char* const cases[] = {"deepfm", "dcn_v2", "dcn_v2_low_rank", "din"};

}  // namespace

TEST_CASE("state_dict: PyTorch round trip of deepfm, dcn_v2 and din within 1e-5 relative") {
    for (const char* c : cases) {
        CAPTURE(c);
        loaded_case<float> f;
        run_case<float>(c, fixture(c), 1e-5, f);
        loaded_case<double> d;
        run_case<double>(c, fixture(c), 1e-9, d);
        MESSAGE(std::string(c), ": worst relative error float ", f.golden.max_rel_err, " (row ", f.golden.worst_row, "), double ",
                d.golden.max_rel_err, " over ", f.golden.rows, " golden rows");
        CHECK(f.golden.rows == 8);
        CHECK(f.golden.max_rel_err <= 1e-5);
        CHECK(d.golden.max_rel_err <= 1e-9);
        CHECK(f.report.unmapped.empty());
        // Every tensor of the store was written (load_state_dict refuses otherwise) and the
        // float and double stores hold the same values.
        auto tf = f.store.named_tensors();
        auto td = d.store.named_tensors();
        REQUIRE(tf.size() == td.size());
        for (std::size_t i = 0; i < tf.size(); ++i)
            for (std::int64_t j = 0; j < tf[i].s.numel(); ++j) REQUIRE(double(tf[i].data[j]) == td[i].data[j]);
    }
}

TEST_CASE("state_dict: BatchNorm running statistics land in Dice, num_batches_tracked is ignored") {
    loaded_case<float> lc;
    run_case<float>("din", fixture("din"), 1e-5, lc);
    const auto f = io::safetensors_file::open(fixture("din"));
    const auto want = f.read<float>("tower.1.bn.running_var");
    const auto idx = lc.store.find_table("din.mlp.0.act.running_var");
    REQUIRE(idx >= 0);
    const auto& t = lc.store.table(idx);
    REQUIRE(t.rows == 1);
    REQUIRE(t.dim == static_cast<std::int64_t>(want.size()));
    bool nontrivial = false;
    for (std::size_t i = 0; i < want.size(); ++i) {
        CHECK(t.values.data()[i] == want[i]);
        nontrivial = nontrivial || std::abs(want[i] - 1.0f) > 1e-3f;
    }
    CHECK(nontrivial);  // trained statistics, not BatchNorm's initial ones
    CHECK(lc.report.ignored.size() == 4);  // two Dice in the unit, two in the tower
    for (const auto& k : lc.report.ignored) CHECK(k.find("num_batches_tracked") != std::string::npos);
}

TEST_CASE("state_dict: F64 weights load as F32 ones do") {
    edited_file f64(fixture("dcn_v2_low_rank"), [](std::vector<tensor_copy>& ts) {
        for (auto& t : ts) {
            if (t.dtype != "F32" || t.name.rfind("__golden__/", 0) == 0) continue;
            std::vector<std::byte> out(t.bytes.size() * 2);
            for (std::size_t i = 0; i < t.bytes.size() / 4; ++i) {
                float v;
                std::memcpy(&v, t.bytes.data() + 4 * i, 4);
                const double d = v;
                std::memcpy(out.data() + 8 * i, &d, 8);
            }
            t.dtype = "F64";
            t.bytes = std::move(out);
        }
    });
    loaded_case<float> a, b;
    run_case<float>("dcn_v2_low_rank", fixture("dcn_v2_low_rank"), 1e-5, a);
    run_case<float>("dcn_v2_low_rank", f64.str(), 1e-5, b);
    CHECK(a.golden.max_rel_err == b.golden.max_rel_err);
    CHECK(a.golden.got == b.golden.got);
}

TEST_CASE("state_dict: name_map patterns, index maps, ignore and include") {
    io::name_map m;
    m.map("head.weight", "x.out.weight");
    m.map("dnn.{i}.weight", "x.dnn.{i}.weight").index("i", io::index_map::affine(3));
    m.map("dnn.{i}.alpha", "x.dnn.{i}.act.alpha").index("i", io::index_map::affine(3, 1));
    m.map("seq.{i}.weight", "x.seq.{i}.weight").index("i", io::index_map::pick({{0, "0"}, {2, "1"}, {4, "out"}}));
    m.map("blocks.{b}.layers.{l}.w", "x.b{b}.l{l}.w");
    m.map("wrap.{*}.w", "x.{*}.w");
    m.ignore("{*}.num_batches_tracked");
    auto name = [&](const std::string& k) { return m.resolve(k) ? m.resolve(k)->name : std::string("<none>"); };
    CHECK(name("head.weight") == "x.out.weight");
    CHECK(name("head.weights") == "<none>");
    CHECK(name("dnn.0.weight") == "x.dnn.0.weight");
    CHECK(name("dnn.6.weight") == "x.dnn.2.weight");
    CHECK(name("dnn.4.weight") == "<none>");  // 4 is no multiple of 3
    CHECK(name("dnn.4.alpha") == "x.dnn.1.act.alpha");
    CHECK(name("dnn.x.weight") == "<none>");
    CHECK(name("seq.4.weight") == "x.seq.out.weight");
    CHECK(name("seq.2.weight") == "x.seq.1.weight");
    CHECK(name("seq.3.weight") == "<none>");
    CHECK(name("blocks.12.layers.3.w") == "x.b12.l3.w");
    CHECK(name("wrap.a.b.w") == "x.a.b.w");
    CHECK(m.ignored("tower.1.bn.num_batches_tracked"));
    CHECK_FALSE(m.ignored("num_batches_tracked"));
    io::name_map outer;
    outer.include(m, "backbone.");
    CHECK(outer.resolve("backbone.dnn.3.weight")->name == "x.dnn.1.weight");
    CHECK_FALSE(outer.resolve("dnn.3.weight"));
    CHECK(outer.ignored("backbone.t.num_batches_tracked"));
    // An earlier rule wins; prepend() overrides.
    outer.prepend("backbone.head.weight", "y.head");
    CHECK(outer.resolve("backbone.head.weight")->name == "y.head");
    // Bad rules are refused when added, naming the rule.
    CHECK(error_of([] { io::name_map b; b.map("a.{i}.w", "x.{j}.w"); }).find("{j}") != std::string::npos);
    CHECK(error_of([] { io::name_map b; b.map("a.{i.w", "x.w"); }).find("unclosed") != std::string::npos);
    CHECK(error_of([] { io::name_map b; b.map("a.{i}{j}", "x"); }).find("touch") != std::string::npos);
    CHECK(error_of([] { io::name_map b; b.map("a.{i}", "x.{i}").index("k", io::index_map::same()); })
              .find("index(\"k\")") != std::string::npos);
    CHECK(error_of([] { io::index_map::affine(0); }).find("stride") != std::string::npos);
}

TEST_CASE("state_dict: a missing key, an unmapped key and a shape mismatch are refused before any write") {
    const auto l = ctr_layout();
    auto load = [&](const std::string& path, param_store<float, cpu<>>& s, io::state_dict_options o = {}) {
        if (s.find_table("deepfm.embedding") < 0) models::deepfm<float> m(s, l, {.dim = 4, .dnn = {.hidden = {16, 8}}});
        return io::load_state_dict(path, s, io::torch_maps::deepfm(l), o);
    };
    auto untouched = [](param_store<float, cpu<>>& s) {
        param_store<float, cpu<>> fresh(7);
        models::deepfm<float> m(fresh, ctr_layout(), {.dim = 4, .dnn = {.hidden = {16, 8}}});
        auto a = s.named_tensors(), b = fresh.named_tensors();
        for (std::size_t i = 0; i < a.size(); ++i)
            for (std::int64_t j = 0; j < a[i].s.numel(); ++j)
                if (a[i].data[j] != b[i].data[j]) return false;
        return true;
    };
    SUBCASE("missing key") {
        edited_file f(fixture("deepfm"), [](std::vector<tensor_copy>& ts) {
            std::erase_if(ts, [](const tensor_copy& t) { return t.name == "dnn.2.bias"; });
        });
        param_store<float, cpu<>> s(7);
        const auto e = error_of([&] { load(f.str(), s); });
        MESSAGE(e);
        CHECK(e.find("xrec 'deepfm.dnn.1.bias' [8] receives no tensor") != std::string::npos);
        CHECK(untouched(s));
    }
    SUBCASE("unmapped key") {
        edited_file f(fixture("deepfm"), [](std::vector<tensor_copy>& ts) {
            tensor_copy t = *find(ts, "dnn_out.weight");
            t.name = "aux_head.weight";
            ts.push_back(t);
        });
        param_store<float, cpu<>> s(7);
        const auto e = error_of([&] { load(f.str(), s); });
        MESSAGE(e);
        CHECK(e.find("PyTorch key 'aux_head.weight' [1, 8] F32 is mapped by no rule") != std::string::npos);
        CHECK(untouched(s));
        // Told to, the loader skips it and says so.
        const auto rep = load(f.str(), s, {.allow_unmapped = true});
        CHECK(rep.unmapped == std::vector<std::string>{"aux_head.weight"});
        CHECK_FALSE(untouched(s));
    }
    SUBCASE("shape mismatch names both keys and both shapes") {
        edited_file f(fixture("deepfm"), [](std::vector<tensor_copy>& ts) {
            auto* t = find(ts, "dnn.2.weight");  // [8, 16] -> [16, 8], as a weight saved [in, out]
            t->s = xrec::shape{16, 8};
        });
        param_store<float, cpu<>> s(7);
        const auto e = error_of([&] { load(f.str(), s); });
        MESSAGE(e);
        CHECK(e.find("PyTorch key 'dnn.2.weight' [16, 8] F32 -> xrec 'deepfm.dnn.1.weight' [8, 16]: shape mismatch") !=
              std::string::npos);
        CHECK(untouched(s));
        // A rule that transposes it (prepended: it must win over the built-in one) loads it.
        auto m = io::torch_maps::deepfm(l);
        m.prepend("dnn.2.weight", "deepfm.dnn.1.weight").transpose();
        param_store<float, cpu<>> s2(7);
        models::deepfm<float> model(s2, l, {.dim = 4, .dnn = {.hidden = {16, 8}}});
        CHECK_NOTHROW(io::load_state_dict(f.str(), s2, m));
        const auto w = io::safetensors_file::open(f.str()).read<float>("dnn.2.weight");
        const auto* entry = s2.find("deepfm.dnn.1.weight");
        REQUIRE(entry);
        CHECK(s2.values()[entry->offset + 1 * 16 + 3] == w[3 * 8 + 1]);  // x[1][3] == torch[3][1]
    }
    SUBCASE("row blocks that overlap, and a NaN") {
        param_store<float, cpu<>> s(7);
        auto m = io::torch_maps::deepfm(l);
        m.prepend("inputs.embeddings.item.weight", "deepfm.embedding").rows_at(5);  // user has 10 rows
        models::deepfm<float> model(s, l, {.dim = 4, .dnn = {.hidden = {16, 8}}});
        const auto e = error_of([&] { io::load_state_dict(fixture("deepfm"), s, m); });
        MESSAGE(e);
        CHECK(e.find("xrec 'deepfm.embedding' [51, 4]: row blocks from") != std::string::npos);
        CHECK(e.find("overlap at row 5") != std::string::npos);
        edited_file nan(fixture("deepfm"), [](std::vector<tensor_copy>& ts) {
            const float v = NAN;
            std::memcpy(find(ts, "dnn.0.bias")->bytes.data() + 4 * 3, &v, 4);
        });
        const auto e2 = error_of([&] { load(nan.str(), s); });
        CHECK(e2.find("'dnn.0.bias' [16] F32 -> xrec 'deepfm.dnn.0.bias' holds a non-finite value at element 3") !=
              std::string::npos);
        CHECK(untouched(s));
    }
}

TEST_CASE("state_dict: a wrong golden output is detected, naming the row and both values") {
    edited_file f(fixture("din"), [](std::vector<tensor_copy>& ts) {
        auto* t = find(ts, "__golden__/logits");
        double v;
        std::memcpy(&v, t->bytes.data() + 8 * 5, 8);
        v += 0.01;
        std::memcpy(t->bytes.data() + 8 * 5, &v, 8);
    });
    loaded_case<float> lc;
    const auto e = error_of([&] { run_case<float>("din", f.str(), 1e-5, lc); });
    MESSAGE(e);
    CHECK(e.find("golden check failed: row 5 task 'click': xrec ") != std::string::npos);
    CHECK(e.find("vs PyTorch ") != std::string::npos);
    CHECK(e.find("relative error ") != std::string::npos);
    // Golden ids outside their table are refused by name before the model runs.
    edited_file bad_ids(fixture("din"), [](std::vector<tensor_copy>& ts) {
        auto* t = find(ts, "__golden__/seq/hist_item_id");
        const std::int64_t v = 30;  // the item table has 30 rows
        std::memcpy(t->bytes.data() + 8 * (8 + 0), &v, 8);  // row 1 (a full history), position 0
    });
    loaded_case<float> lc2;
    const auto e2 = error_of([&] { run_case<float>("din", bad_ids.str(), 1e-5, lc2); });
    CHECK(e2.find("'__golden__/seq/hist_item_id' row 1 position 0 id 30 is outside table 'item' [0, 30)") !=
          std::string::npos);
}
