#pragma once
// Checkpoints: a param_store (dense parameters and embedding tables) plus optional extra
// named tensors (optimizer state) in one safetensors file.
//
// Layout: one tensor per store entry under its registration name (dense parameters with
// their shapes, tables as [rows, dim]), then the extra tensors, all of dtype F32 for float
// stores and F64 for double ones. "__metadata__" holds
//   "xrec_format_version" = checkpoint_format_version (bumped when this layout changes),
//   "xrec_version"        = xrec::version_string of the writer (informational),
// and the caller's config map (any other string keys).
// Saving is atomic (safetensors_writer::write: temp file, fsync, rename): a failed or
// interrupted save leaves the previous checkpoint at that path intact.
// Loading validates everything before it writes a single value, so a refused checkpoint
// leaves the store untouched; then it converts straight from the memory map into the
// store's buffers (no intermediate copy).
//
// Non-finite values: a loaded NaN or infinity is refused by default (naming the tensor and
// the first bad element). A trained model never legitimately holds one, and a server that
// loaded one would answer every request touching that row or weight with NaN, silently;
// the check is one pass over bytes that the load reads anyway. A diverged run can still be
// inspected with checkpoint_load_options::allow_nonfinite. Saving does not check (saving a
// diverged model for a post-mortem must work).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "xrec/core/arena.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/io/safetensors.hpp"
#include "xrec/version.hpp"

namespace xrec::io {

/// Version of the checkpoint layout described above; a loader refuses any other.
inline constexpr std::string_view checkpoint_format_version = "1";
/// Reserved metadata keys (a config may not use them).
inline constexpr std::string_view checkpoint_format_key = "xrec_format_version";
inline constexpr std::string_view checkpoint_xrec_version_key = "xrec_version";

/// How strict load_checkpoint is.
struct checkpoint_load_options {
    /// Accept (and ignore) tensors in the file that neither the store nor `extra` expects,
    /// e.g. to load the parameters of a checkpoint that also holds optimizer state.
    bool allow_unexpected = false;
    /// Accept NaN and infinite values (refused by default, see the header comment).
    bool allow_nonfinite = false;
};

namespace detail {
template <class T, class B>
void check_checkpoint_types() {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "checkpoints hold float (F32) or double (F64) stores");
    static_assert(backend_memory<B>::host_accessible,
                  "checkpoints read and write host memory: copy a device store to a cpu store first");
}
template <class T>
const char* type_name() {
    return std::is_same_v<T, float> ? "float" : "double";
}
/// Index of the first NaN or infinite element of `t` (a floating dtype) in `f`, or -1.
inline std::int64_t first_nonfinite(const safetensors_file& f, const safetensors_file::tensor_info& t) {
    const auto bytes = f.bytes(t.name);
    const std::byte* p = bytes.data();
    const auto n = static_cast<std::size_t>(t.s.numel());
    auto scan = [&](auto tag, auto to_float) -> std::int64_t {
        using S = decltype(tag);
        for (std::size_t i = 0; i < n; ++i)
            if (!std::isfinite(to_float(io::detail::load<S>(p + i * sizeof(S))))) return static_cast<std::int64_t>(i);
        return -1;
    };
    auto id = [](auto v) { return v; };
    switch (t.code) {
        case dtype::f64: return scan(double{}, id);
        case dtype::f32: return scan(float{}, id);
        case dtype::f16: return scan(std::uint16_t{}, io::detail::half_to_float);
        case dtype::bf16: return scan(std::uint16_t{}, io::detail::bf16_to_float);
        case dtype::f8_e4m3: return scan(std::uint8_t{}, io::detail::f8_e4m3_to_float);
        case dtype::f8_e5m2: return scan(std::uint8_t{}, io::detail::f8_e5m2_to_float);
        default: return -1;  // integers are always finite
    }
}
}  // namespace detail

/// Saves every tensor of `store` (store.named_tensors()) and of `extra` to `path`, with the
/// format version, the xrec version and `config` in the metadata. Throws xrec::error naming
/// the path on a reserved config key, a duplicate tensor name, or any I/O failure, in which
/// case an existing file at `path` is left as it was.
template <class T, class B>
void save_checkpoint(const std::string& path, param_store<T, B>& store, std::map<std::string, std::string> config = {},
                     std::vector<named_tensor<T>> extra = {}) {
    detail::check_checkpoint_types<T, B>();
    const std::string pre = "save_checkpoint: '" + path + "': ";
    for (auto key : {checkpoint_format_key, checkpoint_xrec_version_key})
        XREC_CHECK(!config.count(std::string(key)), pre, "config key '", key, "' is reserved");
    safetensors_writer w;
    try {
        for (auto& t : store.named_tensors()) w.add(t.name, t.s, static_cast<const T*>(t.data));
        for (auto& t : extra) w.add(t.name, t.s, static_cast<const T*>(t.data));
        for (auto& [k, v] : config) w.set_metadata(k, v);
    } catch (const error& e) {
        XREC_FAIL(pre, e.what());
    }
    w.set_metadata(std::string(checkpoint_format_key), std::string(checkpoint_format_version));
    w.set_metadata(std::string(checkpoint_xrec_version_key), version_string);
    w.write(path);
}

/// Loads the checkpoint `f` (already opened and validated as a safetensors file, e.g. by
/// safetensors_file::open or ::from_bytes) into `store` and the `extra` tensors and returns
/// the config map saved with it (the metadata without the two reserved keys). Refuses,
/// naming f.path() and listing every problem found, and before modifying anything: a
/// missing or different format version (both versions named), an expected tensor that is
/// missing, has another shape (both shapes named), a non-floating dtype, or (unless
/// `opt.allow_nonfinite`) a NaN or infinite value (the tensor and element named), and,
/// unless `opt.allow_unexpected`, a tensor in the file that nothing expects.
/// F64 checkpoints load into float stores and F32 into double ones (converted per element).
template <class T, class B>
std::map<std::string, std::string> load_checkpoint(const safetensors_file& f, param_store<T, B>& store,
                                                   std::vector<named_tensor<T>> extra = {},
                                                   checkpoint_load_options opt = {}) {
    detail::check_checkpoint_types<T, B>();
    const std::string pre = "load_checkpoint: '" + f.path() + "': ";
    const auto& md = f.metadata();
    const auto ver = md.find(std::string(checkpoint_format_key));
    XREC_CHECK(ver != md.end(), pre, "not an xrec checkpoint (no \"", checkpoint_format_key, "\" in __metadata__)");
    XREC_CHECK(ver->second == checkpoint_format_version, pre, "checkpoint format version '", ver->second,
               "' is not the version '", checkpoint_format_version, "' that this xrec ", version_string, " reads");

    std::vector<named_tensor<T>> expected = store.named_tensors();
    expected.insert(expected.end(), extra.begin(), extra.end());

    std::vector<std::string> problems;
    std::set<std::string> names;
    for (const auto& e : expected) {
        if (!names.insert(e.name).second) {
            problems.push_back("tensor '" + e.name + "' is expected twice (store and extra share a name)");
            continue;
        }
        const auto* t = f.find(e.name);
        if (!t) problems.push_back("missing tensor '" + e.name + "' (expected shape " + e.s.str() + ")");
        else if (!(t->s == e.s))
            problems.push_back("tensor '" + e.name + "' has shape " + t->s.str() + " in the checkpoint but " + e.s.str() +
                               " in the model");
        else if (!is_floating(t->code))
            problems.push_back("tensor '" + e.name + "' has dtype " + t->dtype + ", not convertible to " +
                               detail::type_name<T>());
        else if (!opt.allow_nonfinite) {
            if (const auto i = detail::first_nonfinite(f, *t); i >= 0)
                problems.push_back("tensor '" + e.name + "' holds a non-finite value (NaN or infinity) at element " +
                                   std::to_string(i) + " (checkpoint_load_options::allow_nonfinite accepts it)");
        }
    }
    if (!opt.allow_unexpected)
        for (const auto& t : f.tensors())
            if (!names.count(t.name))
                problems.push_back("unexpected tensor '" + t.name + "' " + t.s.str() +
                                   " (checkpoint_load_options::allow_unexpected ignores it)");
    if (!problems.empty()) {
        std::string msg;
        const std::size_t shown = std::min<std::size_t>(problems.size(), 20);
        for (std::size_t i = 0; i < shown; ++i) msg += (i ? "; " : "") + problems[i];
        if (shown < problems.size()) msg += "; and " + std::to_string(problems.size() - shown) + " more";
        XREC_FAIL(pre, problems.size(), problems.size() == 1 ? " problem: " : " problems: ", msg);
    }

    for (const auto& e : expected) f.read_into(e.name, e.data, e.s.numel());

    std::map<std::string, std::string> config = md;
    config.erase(std::string(checkpoint_format_key));
    config.erase(std::string(checkpoint_xrec_version_key));
    return config;
}

/// Opens `path` (safetensors_file::open: the file is validated, then memory-mapped reads
/// convert straight into the store) and loads it as the overload above does.
template <class T, class B>
std::map<std::string, std::string> load_checkpoint(const std::string& path, param_store<T, B>& store,
                                                   std::vector<named_tensor<T>> extra = {},
                                                   checkpoint_load_options opt = {}) {
    detail::check_checkpoint_types<T, B>();
    const safetensors_file f = safetensors_file::open(path);
    return load_checkpoint(f, store, std::move(extra), opt);
}

}  // namespace xrec::io
