// libFuzzer target: the safetensors reader (safetensors_file::from_bytes, the same
// validation as open() on a mapped file), every dtype conversion, and load_checkpoint on
// the validated file.
//
// Expected refusals are xrec::error and are caught; anything else (a sanitizer report, a
// crash, another exception, a hang, a large allocation) is a finding. After a successful
// open the target also checks the reader's promises: every tensor lies inside the buffer
// and the byte sizes agree with the shapes.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "xrec/backend/tags.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/io/checkpoint.hpp"
#include "xrec/io/safetensors.hpp"

namespace {

// The store the seed checkpoints were saved from (tests/fuzz/gen_corpus.py): a weight
// [2, 3], a bias [3], a table of 4 rows of 2, and an optimizer-state extra "step" [1].
struct small_model {
    xrec::param_store<float, xrec::cpu<>> store{1};
    std::vector<float> step{0};
    small_model() {
        store.add("w", {2, 3}, xrec::init::zeros());
        store.add("b", {3}, xrec::init::zeros());
        store.add_table("emb", 4, 2, xrec::init::zeros());
    }
};

template <class U>
void try_read(const xrec::io::safetensors_file& f, const std::string& name) {
    try {
        const auto v = f.read<U>(name);
        xrec_fuzz::keep(v);
    } catch (const xrec::error&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto bytes = std::as_bytes(std::span<const std::uint8_t>(data, size));
    xrec::io::safetensors_file f;
    try {
        f = xrec::io::safetensors_file::from_bytes(bytes, "fuzz.safetensors");
    } catch (const xrec::error&) {
        return 0;
    }
    std::size_t total = 0;
    for (const auto& t : f.tensors()) {
        // The reader's promises; a violation is a bug even without a sanitizer report.
        if (t.begin > t.end || t.end - t.begin != static_cast<std::size_t>(t.s.numel()) * xrec::io::dtype_size(t.code))
            __builtin_trap();
        total += t.end - t.begin;
        const auto b = f.bytes(t.name);
        xrec_fuzz::keep(b);
        try_read<double>(f, t.name);
        try_read<float>(f, t.name);
        try_read<std::int64_t>(f, t.name);
        try_read<std::uint8_t>(f, t.name);
        try_read<std::int8_t>(f, t.name);
    }
    xrec_fuzz::keep(total);
    for (const bool lenient : {false, true}) {
        small_model m;
        xrec::io::checkpoint_load_options opt;
        opt.allow_unexpected = lenient;
        opt.allow_nonfinite = lenient;
        try {
            const auto config = xrec::io::load_checkpoint(f, m.store, {{"step", {1}, m.step.data()}}, opt);
            xrec_fuzz::keep(config);
        } catch (const xrec::error&) {
        }
    }
    return 0;
}
