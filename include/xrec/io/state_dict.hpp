#pragma once
// PyTorch state_dicts: name maps from a module's state_dict keys to xrec parameter names,
// loading a state_dict saved as safetensors into a param_store, and the golden check that
// the loaded model computes what PyTorch computed.
//
// A PyTorch module names its tensors after its attributes ("dnn.0.weight",
// "embeddings.item.weight", "tower.1.bn.running_mean"); xrec names them after its layers
// ("deepfm.dnn.0.weight", "din.embedding", "din.mlp.0.act.running_mean"). A name_map is the
// translation: an ordered list of rules, each taking one key (exactly, or by a pattern with
// numbered parts) to one xrec parameter, with a transform when the layouts differ (nn.Linear
// stored [in, out], a [C] buffer that xrec keeps as [1, C], one table per field that xrec
// lays end to end in one). torch_maps:: has the maps of the reference modules in
// examples/pytorch_interop/torch_models.py; a user extends one with rules for their own
// module (see name_map).
//
// The file is read through safetensors_file (F32, F64, BF16 and F16 convert to the store's
// type). Keys under "__golden__/" are never parameters: they hold a golden input and the
// logits PyTorch computed for it, which verify_golden replays (format below).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "xrec/core/context.hpp"
#include "xrec/core/error.hpp"
#include "xrec/core/features.hpp"
#include "xrec/core/param_store.hpp"
#include "xrec/core/shape.hpp"
#include "xrec/core/tensor.hpp"
#include "xrec/io/safetensors.hpp"

namespace xrec::io {

/// How a numbered part "{i}" of a PyTorch key becomes the text of the xrec name.
///  - same():                 the number itself ("dnn.3" -> "3");
///  - affine(stride, offset): (i - offset) / stride, and the rule does not apply unless
///    i >= offset and stride divides i - offset. nn.Sequential(Linear, ReLU, Linear, ReLU)
///    numbers its Linears 0, 2 while xrec's mlp numbers them 0, 1: affine(2); the activations
///    with parameters sit at 1, 3: affine(2, 1);
///  - pick({{0, "0"}, {2, "1"}, {4, "out"}}): a list; an index not in it does not apply
///    (e.g. the last Linear of a Sequential is xrec's "out" layer).
struct index_map {
    enum class kind { same, affine, pick };
    kind k = kind::same;
    std::int64_t stride = 1, offset = 0;
    std::vector<std::pair<std::int64_t, std::string>> picks;

    static index_map same() { return {}; }
    static index_map affine(std::int64_t stride, std::int64_t offset = 0) {
        XREC_CHECK(stride >= 1 && offset >= 0, "index_map::affine: needs stride >= 1 and offset >= 0, got stride ",
                   stride, ", offset ", offset);
        index_map m;
        m.k = kind::affine;
        m.stride = stride;
        m.offset = offset;
        return m;
    }
    static index_map pick(std::vector<std::pair<std::int64_t, std::string>> list) {
        index_map m;
        m.k = kind::pick;
        m.picks = std::move(list);
        return m;
    }
    /// The xrec text for PyTorch index i, or nothing when the rule does not apply to i.
    std::optional<std::string> apply(std::int64_t i) const {
        switch (k) {
            case kind::same: return std::to_string(i);
            case kind::affine:
                if (i < offset || (i - offset) % stride != 0) return std::nullopt;
                return std::to_string((i - offset) / stride);
            case kind::pick:
                for (const auto& [from, to] : picks)
                    if (from == i) return to;
                return std::nullopt;
        }
        return std::nullopt;
    }
};

/// One rule of a name_map: PyTorch key pattern `from` -> xrec name `to`.
///
/// Patterns: literal text, "{name}" (an identifier) matching a decimal number (1 to 18
/// digits) whose xrec text comes from the rule's index_map for that name (same() unless
/// set with index()), and "{*}" matching any non-empty text. `to` may use every "{name}" of
/// `from` and "{*}" (the text the first "{*}" matched). A pattern without braces is an exact
/// name.
///
/// Transform of the PyTorch tensor P before it is compared with the xrec parameter X:
///  - none (default): P must have X's shape;
///  - transpose(): P is 2-D [a, b] and is written as its transpose [b, a] (a weight stored
///    [in, out], or a low-rank factor nn.Linear(d, r).weight [r, d] that xrec keeps [d, r]);
///  - reshape(s): P is reinterpreted (row-major, same number of elements) as s; reshape()
///    with no shape takes X's shape (a BatchNorm buffer [C] -> xrec's [1, C]);
///  - rows_at(r): after the above, P [n, ...] fills rows [r, r + n) of X [R, ...] (same
///    trailing extents). Several keys then build X by concatenation along its first axis
///    (one nn.Embedding per table -> xrec's one table over the global id space, the tables
///    end to end); load_state_dict checks they cover X exactly once.
struct name_rule {
    std::string from, to;
    std::vector<std::pair<std::string, index_map>> indices;
    enum class transform { none, transpose, reshape };
    transform how = transform::none;
    shape reshape_to;             // rank 0: X's shape
    std::int64_t row_offset = -1;  // >= 0 with rows_at

    /// Sets the index map of placeholder "{name}".
    name_rule& index(const std::string& name, index_map m) {
        XREC_CHECK(from.find("{" + name + "}") != std::string::npos, "name_rule '", from, "' -> '", to,
                   "': index(\"", name, "\") names no placeholder {", name, "} of the PyTorch pattern");
        for (auto& [n, im] : indices)
            if (n == name) {
                im = std::move(m);
                return *this;
            }
        indices.emplace_back(name, std::move(m));
        return *this;
    }
    name_rule& transpose() {
        how = transform::transpose;
        return *this;
    }
    name_rule& reshape(shape s = {}) {
        how = transform::reshape;
        reshape_to = s;
        return *this;
    }
    name_rule& rows_at(std::int64_t row) {
        XREC_CHECK(row >= 0, "name_rule '", from, "' -> '", to, "': rows_at needs a row >= 0, got ", row);
        row_offset = row;
        return *this;
    }
};

namespace detail {

// A parsed pattern: literal text, a numbered part {name}, or {*}.
struct pattern_token {
    enum class kind { text, number, any };
    kind k;
    std::string s;  // the text, or the placeholder's name
};

inline std::vector<pattern_token> parse_pattern(const std::string& p, const std::string& rule) {
    std::vector<pattern_token> out;
    std::size_t i = 0;
    while (i < p.size()) {
        const std::size_t open = p.find('{', i);
        const std::size_t close_stray = p.find('}', i);
        XREC_CHECK(close_stray == std::string::npos || (open != std::string::npos && open < close_stray), "name_map rule ",
                   rule, ": '}' without '{' in pattern '", p, "'");
        if (open == std::string::npos) {
            out.push_back({pattern_token::kind::text, p.substr(i)});
            break;
        }
        if (open > i) out.push_back({pattern_token::kind::text, p.substr(i, open - i)});
        const std::size_t close = p.find('}', open);
        XREC_CHECK(close != std::string::npos, "name_map rule ", rule, ": unclosed '{' in pattern '", p, "'");
        const std::string name = p.substr(open + 1, close - open - 1);
        if (name == "*") {
            out.push_back({pattern_token::kind::any, name});
        } else {
            bool ok = !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0]));
            for (char c : name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
            XREC_CHECK(ok, "name_map rule ", rule, ": placeholder {", name, "} in pattern '", p,
                       "' is neither an identifier nor *");
            out.push_back({pattern_token::kind::number, name});
        }
        XREC_CHECK(out.size() < 2 || out[out.size() - 2].k == pattern_token::kind::text ||
                       out.back().k == pattern_token::kind::text,
                   "name_map rule ", rule, ": two placeholders touch in pattern '", p,
                   "' (put literal text between them)");
        i = close + 1;
    }
    return out;
}

// What a match captured: numbers by placeholder name and the text of the first {*}.
struct pattern_captures {
    std::vector<std::pair<std::string, std::int64_t>> numbers;
    std::optional<std::string> any;
};

// Backtracking match of key[pos..] against tokens[t..]. Placeholders never touch (checked
// at parse time), so each placeholder's extent is fixed by the literal after it: the search
// is at most quadratic in the key's length per placeholder, and keys are short.
inline bool match_from(const std::vector<pattern_token>& toks, std::size_t t, std::string_view key, std::size_t pos,
                       pattern_captures& cap) {
    if (t == toks.size()) return pos == key.size();
    const auto& tok = toks[t];
    if (tok.k == pattern_token::kind::text) {
        if (key.substr(pos, tok.s.size()) != tok.s) return false;
        return match_from(toks, t + 1, key, pos + tok.s.size(), cap);
    }
    std::size_t max_len = key.size() - pos;
    if (tok.k == pattern_token::kind::number) {
        std::size_t digits = 0;
        while (pos + digits < key.size() && std::isdigit(static_cast<unsigned char>(key[pos + digits]))) ++digits;
        max_len = std::min<std::size_t>(digits, 18);
    }
    for (std::size_t len = max_len; len >= 1; --len) {
        pattern_captures next = cap;
        if (tok.k == pattern_token::kind::number) {
            next.numbers.emplace_back(tok.s, std::stoll(std::string(key.substr(pos, len))));
        } else if (!next.any) {
            next.any = std::string(key.substr(pos, len));
        }
        if (match_from(toks, t + 1, key, pos + len, next)) {
            cap = std::move(next);
            return true;
        }
    }
    return false;
}

}  // namespace detail

/// An ordered list of name_rules plus patterns of keys to ignore: the translation of one
/// PyTorch module's state_dict into xrec parameter names.
///
/// A key resolves through the first rule whose pattern matches and whose index maps apply;
/// a key matched by an ignore pattern is skipped (BatchNorm's num_batches_tracked: xrec does
/// not keep it); keys under "__golden__/" are always skipped (verify_golden reads them). A
/// built-in map (torch_maps::) lists its reference module's keys; to load your own module,
///   name_map m = torch_maps::deepfm(layout);           // the part you kept as is
///   m.map("head.{i}.weight", "deepfm.dnn.{i}.weight").index("i", index_map::affine(3));
///   m.map("norm.{i}.running_mean", "deepfm.x.{i}.running_mean").reshape();
///   m.ignore("aux_head.{*}");                          // trained but not served
/// or mount a whole map under a prefix: m.include(torch_maps::din(...), "backbone.").
/// Rules added later lose to earlier ones for the same key; prepend() puts a rule first.
class name_map {
public:
    /// Adds a rule at the end (see name_rule for the pattern and the transforms).
    name_rule& map(std::string from, std::string to) {
        check_rule(from, to);
        rules_.push_back(name_rule{std::move(from), std::move(to), {}, name_rule::transform::none, {}, -1});
        return rules_.back();
    }
    /// Adds a rule before all others (to override one of a built-in map).
    name_rule& prepend(std::string from, std::string to) {
        check_rule(from, to);
        rules_.insert(rules_.begin(), name_rule{std::move(from), std::move(to), {}, name_rule::transform::none, {}, -1});
        return rules_.front();
    }
    /// Keys matching `pattern` (same syntax) are skipped.
    name_map& ignore(std::string pattern) {
        (void)detail::parse_pattern(pattern, "ignore '" + pattern + "'");
        ignores_.push_back(std::move(pattern));
        return *this;
    }
    /// Appends another map's rules and ignore patterns, with `key_prefix` put in front of
    /// each PyTorch pattern (a reference module held as an attribute of yours).
    name_map& include(const name_map& other, const std::string& key_prefix = "") {
        for (auto r : other.rules_) {
            r.from = key_prefix + r.from;
            check_rule(r.from, r.to);
            rules_.push_back(std::move(r));
        }
        for (const auto& p : other.ignores_) ignore(key_prefix + p);
        return *this;
    }

    /// The xrec name a key maps to and the rule that mapped it.
    struct resolved {
        std::string name;
        const name_rule* rule;
    };
    /// The first rule that maps `key`, or nothing.
    std::optional<resolved> resolve(const std::string& key) const {
        for (const auto& r : rules_) {
            detail::pattern_captures cap;
            if (!detail::match_from(detail::parse_pattern(r.from, r.from), 0, key, 0, cap)) continue;
            std::optional<std::string> name = substitute(r, cap);
            if (name) return resolved{std::move(*name), &r};
        }
        return std::nullopt;
    }
    /// True when an ignore pattern matches `key`.
    bool ignored(const std::string& key) const {
        for (const auto& p : ignores_) {
            detail::pattern_captures cap;
            if (detail::match_from(detail::parse_pattern(p, p), 0, key, 0, cap)) return true;
        }
        return false;
    }
    const std::vector<name_rule>& rules() const noexcept { return rules_; }
    const std::vector<std::string>& ignores() const noexcept { return ignores_; }

private:
    static void check_rule(const std::string& from, const std::string& to) {
        const std::string rule = "'" + from + "' -> '" + to + "'";
        const auto f = detail::parse_pattern(from, rule);
        const auto t = detail::parse_pattern(to, rule);
        for (const auto& tok : t) {
            if (tok.k == detail::pattern_token::kind::text) continue;
            bool found = false;
            for (const auto& ft : f) found = found || (ft.k == tok.k && ft.s == tok.s);
            XREC_CHECK(found, "name_map rule ", rule, ": the xrec name uses {", tok.s,
                       "}, which the PyTorch pattern does not have");
        }
    }
    // The rule's `to` with its placeholders replaced, or nothing when an index map does not
    // apply to the captured number.
    static std::optional<std::string> substitute(const name_rule& r, const detail::pattern_captures& cap) {
        std::string out;
        for (const auto& tok : detail::parse_pattern(r.to, r.to)) {
            if (tok.k == detail::pattern_token::kind::text) {
                out += tok.s;
            } else if (tok.k == detail::pattern_token::kind::any) {
                out += *cap.any;
            } else {
                std::int64_t v = -1;
                for (const auto& [n, x] : cap.numbers)
                    if (n == tok.s) v = x;
                index_map m;
                for (const auto& [n, im] : r.indices)
                    if (n == tok.s) m = im;
                const auto text = m.apply(v);
                if (!text) return std::nullopt;
                out += *text;
            }
        }
        // A numbered part that `to` does not use must still satisfy its index map (a pick
        // list that names the keys a rule is for).
        for (const auto& [n, im] : r.indices)
            for (const auto& [cn, v] : cap.numbers)
                if (cn == n && !im.apply(v)) return std::nullopt;
        return out;
    }

    std::vector<name_rule> rules_;
    std::vector<std::string> ignores_;
};

/// The prefix of the reserved golden keys (never parameters).
inline constexpr std::string_view golden_prefix = "__golden__/";

/// How strict load_state_dict is.
struct state_dict_options {
    /// Skip PyTorch keys that no rule maps and no ignore pattern names (refused by default:
    /// a key nobody maps is usually a rule that is missing, and its weights would be lost).
    bool allow_unmapped = false;
    /// Accept NaN and infinite values (refused by default, naming the key and the element).
    bool allow_nonfinite = false;
};

/// What load_state_dict did: (PyTorch key, xrec name) for every tensor it wrote, the keys
/// ignored by the map, and the unmapped keys it skipped (allow_unmapped).
struct state_dict_report {
    std::vector<std::pair<std::string, std::string>> loaded;
    std::vector<std::string> ignored, unmapped;
};

namespace detail {
inline std::string shape_of_key(const safetensors_file::tensor_info& t) {
    return "'" + t.name + "' " + t.s.str() + " " + t.dtype;
}
}  // namespace detail

/// Loads the PyTorch state_dict in `f` (a safetensors file, e.g. written by
/// safetensors.torch.save_file(module.state_dict(), path)) into `store` through `m`.
///
/// Checks, before writing a single value, and refuses listing every problem (each naming
/// the PyTorch key and the xrec name with both shapes where both exist):
///  - every key is mapped by a rule, ignored, or golden (else "unmapped", unless
///    opt.allow_unmapped); a mapped key names a parameter of the store and has a floating
///    dtype; its shape after the rule's transform equals the parameter's (or, with rows_at,
///    fits its rows);
///  - every parameter of the store receives exactly one tensor, or row blocks that tile it
///    exactly (a parameter nobody fills, or filled twice, is named with the keys involved);
///  - no value is NaN or infinite (unless opt.allow_nonfinite).
/// Then it converts each tensor straight into the store (through a scratch copy of one
/// tensor when a transform applies). The finiteness check reads each tensor once more
/// into a scratch buffer, so the extra memory is that of the largest tensor, not of the
/// whole state_dict. Host stores only (load a cpu store, then copy it to a device).
template <class T, class B>
state_dict_report load_state_dict(const safetensors_file& f, param_store<T, B>& store, const name_map& m,
                                  state_dict_options opt = {}) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "load_state_dict: float or double stores");
    static_assert(backend_memory<B>::host_accessible,
                  "load_state_dict writes host memory: load a cpu store, then copy it to the device");
    const std::string pre = "load_state_dict: '" + f.path() + "': ";
    struct target {
        named_tensor<T> t;
        std::vector<std::size_t> parts;  // indices into `jobs`
    };
    struct job {
        const safetensors_file::tensor_info* src;
        std::size_t target;
        const name_rule* rule;
        std::int64_t row0 = 0, rows = 0;  // the rows of the target it fills
    };
    std::vector<target> targets;
    std::vector<bool> refused;  // a key for this target was refused (no second message for it)
    for (auto& t : store.named_tensors()) targets.push_back({t, {}});
    refused.assign(targets.size(), false);
    auto find_target = [&](const std::string& name) -> std::int64_t {
        for (std::size_t i = 0; i < targets.size(); ++i)
            if (targets[i].t.name == name) return static_cast<std::int64_t>(i);
        return -1;
    };

    state_dict_report report;
    std::vector<std::string> problems;
    std::vector<job> jobs;
    for (const auto& src : f.tensors()) {
        if (std::string_view(src.name).substr(0, golden_prefix.size()) == golden_prefix) continue;
        const std::string key = "PyTorch key " + detail::shape_of_key(src);
        if (m.ignored(src.name)) {
            report.ignored.push_back(src.name);
            continue;
        }
        const auto r = m.resolve(src.name);
        if (!r) {
            if (opt.allow_unmapped) report.unmapped.push_back(src.name);
            else problems.push_back(key + " is mapped by no rule (add a rule or an ignore pattern to the name_map, or "
                                          "state_dict_options::allow_unmapped skips it)");
            continue;
        }
        const std::int64_t ti = find_target(r->name);
        if (ti < 0) {
            problems.push_back(key + " maps to xrec '" + r->name + "', which is not a parameter of the store");
            continue;
        }
        const named_tensor<T>& x = targets[static_cast<std::size_t>(ti)].t;
        refused[static_cast<std::size_t>(ti)] = true;  // until the checks below pass
        const std::string both = key + " -> xrec '" + x.name + "' " + x.s.str();
        if (!is_floating(src.code)) {
            problems.push_back(both + ": dtype " + src.dtype + " is not a floating type");
            continue;
        }
        // The shape of the tensor after the rule's transform.
        shape s = src.s;
        const name_rule& rule = *r->rule;
        if (rule.how == name_rule::transform::transpose) {
            if (s.rank != 2) {
                problems.push_back(both + ": the rule transposes, which needs a 2-D tensor");
                continue;
            }
            s = shape{src.s[1], src.s[0]};
        } else if (rule.how == name_rule::transform::reshape) {
            shape to = rule.reshape_to.rank > 0 ? rule.reshape_to : x.s;
            if (rule.reshape_to.rank == 0 && rule.row_offset >= 0) {
                problems.push_back(both + ": reshape() to the parameter's shape cannot be combined with rows_at (give the "
                                          "block's shape)");
                continue;
            }
            if (to.numel() != s.numel()) {
                problems.push_back(both + ": the rule reshapes to " + to.str() + ", which has " +
                                   std::to_string(to.numel()) + " elements, not " + std::to_string(s.numel()));
                continue;
            }
            s = to;
        }
        job j{&src, static_cast<std::size_t>(ti), &rule, 0, x.s.rank > 0 ? x.s[0] : 1};
        if (rule.row_offset >= 0) {
            bool tail_ok = s.rank == x.s.rank && s.rank >= 1;
            for (int d = 1; tail_ok && d < s.rank; ++d) tail_ok = s[d] == x.s[d];
            if (!tail_ok || rule.row_offset + s[0] > x.s[0]) {
                problems.push_back(both + ": as rows [" + std::to_string(rule.row_offset) + ", " +
                                   std::to_string(rule.row_offset + (s.rank ? s[0] : 0)) + ") of the parameter, " +
                                   (tail_ok ? "it runs past the parameter's rows" : "its trailing extents differ") +
                                   (rule.how == name_rule::transform::none ? "" : " (after the rule's transform: " + s.str() + ")"));
                continue;
            }
            j.row0 = rule.row_offset;
            j.rows = s[0];
        } else if (!(s == x.s)) {
            problems.push_back(both + ": shape mismatch" +
                               (rule.how == name_rule::transform::none ? "" : " (after the rule's transform: " + s.str() + ")"));
            continue;
        }
        refused[static_cast<std::size_t>(ti)] = false;
        targets[static_cast<std::size_t>(ti)].parts.push_back(jobs.size());
        jobs.push_back(j);
    }
    // Every parameter filled exactly once: one whole tensor, or row blocks tiling it.
    for (std::size_t ti = 0; ti < targets.size(); ++ti) {
        const target& tg = targets[ti];
        const std::string x = "xrec '" + tg.t.name + "' " + tg.t.s.str();
        if (tg.parts.empty()) {
            if (refused[ti]) continue;  // its key's problem is already listed
            problems.push_back(x + " receives no tensor from the state_dict (no key maps to it)");
            continue;
        }
        std::string keys;
        for (auto p : tg.parts) keys += (keys.empty() ? "'" : ", '") + jobs[p].src->name + "' " + jobs[p].src->s.str();
        bool whole = false;
        for (auto p : tg.parts) whole = whole || jobs[p].rule->row_offset < 0;
        if (whole) {
            if (tg.parts.size() > 1) problems.push_back(x + " receives " + std::to_string(tg.parts.size()) + " tensors: " + keys);
            continue;
        }
        std::vector<std::size_t> by_row = tg.parts;
        std::sort(by_row.begin(), by_row.end(), [&](auto a, auto b) { return jobs[a].row0 < jobs[b].row0; });
        std::int64_t next = 0;
        for (auto p : by_row) {
            if (jobs[p].row0 != next) {
                problems.push_back(x + ": row blocks from " + keys + (jobs[p].row0 < next ? " overlap" : " leave a gap") +
                                   " at row " + std::to_string(std::min(next, jobs[p].row0)));
                next = -1;
                break;
            }
            next += jobs[p].rows;
        }
        if (next >= 0 && next != tg.t.s[0])
            problems.push_back(x + ": row blocks from " + keys + " cover rows [0, " + std::to_string(next) + ") of " +
                               std::to_string(tg.t.s[0]));
    }
    if (problems.empty() && !opt.allow_nonfinite)
        for (const auto& j : jobs) {
            const std::vector<T> v = f.read<T>(j.src->name);
            for (std::size_t i = 0; i < v.size(); ++i)
                if (!std::isfinite(v[i])) {
                    problems.push_back("PyTorch key " + detail::shape_of_key(*j.src) + " -> xrec '" +
                                       targets[j.target].t.name + "' holds a non-finite value at element " +
                                       std::to_string(i) + " (state_dict_options::allow_nonfinite accepts it)");
                    break;
                }
        }
    if (!problems.empty()) {
        std::string msg;
        const std::size_t shown = std::min<std::size_t>(problems.size(), 20);
        for (std::size_t i = 0; i < shown; ++i) msg += (i ? "; " : "") + problems[i];
        if (shown < problems.size()) msg += "; and " + std::to_string(problems.size() - shown) + " more";
        XREC_FAIL(pre, problems.size(), problems.size() == 1 ? " problem: " : " problems: ", msg);
    }

    for (const auto& j : jobs) {
        const named_tensor<T>& x = targets[j.target].t;
        const std::int64_t row_len = x.s.rank > 0 && x.s[0] > 0 ? x.s.numel() / x.s[0] : x.s.numel();
        T* dst = x.data + j.row0 * row_len;
        const std::int64_t n = j.src->s.numel();
        if (j.rule->how == name_rule::transform::transpose) {
            const std::vector<T> v = f.read<T>(j.src->name);
            const std::int64_t a = j.src->s[0], b = j.src->s[1];
            for (std::int64_t r = 0; r < a; ++r)
                for (std::int64_t c = 0; c < b; ++c) dst[c * a + r] = v[static_cast<std::size_t>(r * b + c)];
        } else {
            f.read_into(j.src->name, dst, n);  // reshape and row blocks are the same bytes
        }
        report.loaded.emplace_back(j.src->name, x.name);
    }
    return report;
}

/// Opens `path` (validated and memory-mapped) and loads it as the overload above does.
template <class T, class B>
state_dict_report load_state_dict(const std::string& path, param_store<T, B>& store, const name_map& m,
                                  state_dict_options opt = {}) {
    const safetensors_file f = safetensors_file::open(path);
    return load_state_dict(f, store, m, opt);
}

// ------------------------------------------------------------------------------------------
// Golden input and output
// ------------------------------------------------------------------------------------------
//
// Stored in the state_dict's safetensors file beside the weights, for a model over an
// xrec::feature_layout, B rows (ids are LOCAL to their table, as a PyTorch nn.Embedding per
// table sees them; verify_golden adds the layout's table offsets):
//   "__golden__/sparse"          [B, num_sparse] I64 (or I32), one column per sparse field in
//                                layout order (absent when the layout has none)
//   "__golden__/dense"           [B, num_dense] floating (absent when num_dense == 0)
//   "__golden__/seq/<field>"     [B, L] I64 padded ids of sequence field <field>, oldest
//                                first, real ones in columns [0, length) (padding ignored)
//   "__golden__/lengths/<field>" [B] I64, each in [0, L]
//   "__golden__/logits"          [B, tasks] (or [B] with one task) floating, the PyTorch
//                                module's output in eval mode
// Writing the logits in float64 (the module run in double on the float32 weights) makes the
// check measure xrec's rounding alone.

/// The result of verify_golden: rows checked, the worst relative error and where it is.
struct golden_report {
    std::int64_t rows = 0, worst_row = -1, worst_task = -1;
    double got = 0, want = 0, max_rel_err = 0;
};

/// The relative error verify_golden uses: |got - want| / max(|want|, 1), relative for logits
/// of magnitude 1 or more and absolute below. A logit near 0 is a sum of terms of order 1
/// that cancel, so float rounding leaves an absolute error of the order of those terms'
/// (1e-7), which a pure ratio would blow up without bound; and a logit's error moves the
/// probability by at most a quarter of it, so below 1 the absolute error is what matters.
inline double golden_rel_err(double got, double want) {
    return std::abs(got - want) / std::max(std::abs(want), 1.0);
}

namespace detail {
template <class M>
const feature_layout& model_layout(const M& m) {
    if constexpr (requires { m.layout.num_sparse(); }) return m.layout;
    else if constexpr (requires { m.inputs.layout.num_sparse(); }) return m.inputs.layout;
    else static_assert(sizeof(M) == 0, "verify_golden: the model has neither .layout nor .inputs.layout; pass the layout");
}
inline std::vector<std::int64_t> read_ids(const safetensors_file& f, const std::string& key, const shape& want,
                                          const std::string& pre) {
    const auto* t = f.find(key);
    XREC_CHECK(t, pre, "golden tensor '", key, "' is missing (expected ", want.str(), ")");
    XREC_CHECK(t->s == want, pre, "golden tensor '", key, "' is ", t->s.str(), ", expected ", want.str());
    XREC_CHECK(!is_floating(t->code), pre, "golden tensor '", key, "' holds ids but has dtype ", t->dtype);
    return f.read<std::int64_t>(key);
}
}  // namespace detail

/// Runs `model` on an infer_ctx (value type and backend those of `store`, whose parameters
/// the model views) over the golden input of `f` and compares its logits with the golden
/// logits: throws xrec::error naming the file, the worst row and task, both values and the
/// relative error (golden_rel_err) when it exceeds rel_tol; else returns the report. Bad
/// golden data (missing keys, wrong shapes, ids outside their table, lengths outside
/// [0, L]) is refused by name before the model runs. `layout` must be the model's.
template <class M, class T, class B>
golden_report verify_golden(const M& model, const param_store<T, B>& store, const feature_layout& layout,
                            const safetensors_file& f, double rel_tol = 1e-5) {
    (void)store;  // fixes T and B of the context: the model's parameters live there
    static_assert(backend_memory<B>::host_accessible, "verify_golden: host stores only");
    const std::string pre = "verify_golden: '" + f.path() + "': ";
    const std::string g(golden_prefix);
    const auto* lt = f.find(g + "logits");
    XREC_CHECK(lt, pre, "no golden output '", g, "logits' in the file");
    XREC_CHECK(lt->s.rank >= 1 && lt->s[0] >= 1, pre, "golden logits ", lt->s.str(), " have no rows");
    const std::int64_t n = lt->s[0], tasks = layout.num_tasks();
    XREC_CHECK(lt->s == (shape{n, tasks}) || (tasks == 1 && lt->s == shape{n}), pre, "golden logits are ", lt->s.str(),
               ", expected [", n, ", ", tasks, "] for the layout's ", tasks, " task(s)");
    XREC_CHECK(is_floating(lt->code), pre, "golden logits have dtype ", lt->dtype);
    const std::vector<double> want = f.read<double>(g + "logits");

    const std::int64_t F = layout.num_sparse(), Dn = layout.num_dense();
    std::vector<std::int64_t> sparse;
    if (F > 0) {
        sparse = detail::read_ids(f, g + "sparse", shape{n, F}, pre);
        for (std::int64_t r = 0; r < n; ++r)
            for (std::int64_t c = 0; c < F; ++c) {
                const auto& fld = layout.sparse[static_cast<std::size_t>(c)];
                const auto& tb = layout.tables[static_cast<std::size_t>(fld.table)];
                std::int64_t& id = sparse[static_cast<std::size_t>(r * F + c)];
                XREC_CHECK(id >= 0 && id < tb.rows, pre, "golden sparse row ", r, " field '", fld.name, "' id ", id,
                           " is outside table '", tb.name, "' [0, ", tb.rows, ")");
                id += tb.offset;
            }
    }
    std::vector<T> dense;
    if (Dn > 0) {
        const auto* dt = f.find(g + "dense");
        XREC_CHECK(dt && dt->s == (shape{n, Dn}) && is_floating(dt->code), pre, "golden tensor '", g,
                   "dense' must be floating [", n, ", ", Dn, "]", dt ? ", got " + dt->s.str() + " " + dt->dtype : ", missing");
        dense = f.read<T>(g + "dense");
    }
    const std::int64_t S = layout.num_sequences();
    std::vector<std::vector<std::int64_t>> seq_values(static_cast<std::size_t>(S)), seq_offsets(static_cast<std::size_t>(S));
    std::vector<jagged_ids> seqs(static_cast<std::size_t>(S));
    for (std::int64_t k = 0; k < S; ++k) {
        const auto& sf = layout.sequences[static_cast<std::size_t>(k)];
        const auto& tb = layout.tables[static_cast<std::size_t>(sf.table)];
        const std::string vk = g + "seq/" + sf.name, lk = g + "lengths/" + sf.name;
        const auto* vt = f.find(vk);
        XREC_CHECK(vt && vt->s.rank == 2 && vt->s[0] == n, pre, "golden tensor '", vk, "' must be [", n,
                   ", L] padded ids", vt ? ", got " + vt->s.str() : ", missing");
        const std::int64_t L = vt->s[1];
        const auto ids = detail::read_ids(f, vk, vt->s, pre);
        const auto len = detail::read_ids(f, lk, shape{n}, pre);
        auto& vals = seq_values[static_cast<std::size_t>(k)];
        auto& offs = seq_offsets[static_cast<std::size_t>(k)];
        offs.push_back(0);
        for (std::int64_t r = 0; r < n; ++r) {
            const std::int64_t l = len[static_cast<std::size_t>(r)];
            XREC_CHECK(l >= 0 && l <= L, pre, "golden '", lk, "' row ", r, " is ", l, ", outside [0, ", L, "]");
            for (std::int64_t j = 0; j < l; ++j) {
                const std::int64_t id = ids[static_cast<std::size_t>(r * L + j)];
                XREC_CHECK(id >= 0 && id < tb.rows, pre, "golden '", vk, "' row ", r, " position ", j, " id ", id,
                           " is outside table '", tb.name, "' [0, ", tb.rows, ")");
                vals.push_back(id + tb.offset);
            }
            offs.push_back(static_cast<std::int64_t>(vals.size()));
        }
        seqs[static_cast<std::size_t>(k)] = jagged_ids{vals, offs};
    }
    batch<T> b;
    b.rows = n;
    b.sparse = tensor_view<const std::int64_t>{sparse.data(), shape{n, F}};
    b.dense = tensor_view<const T>{dense.data(), shape{n, Dn}};
    b.sequences = seqs;
    b.labels = tensor_view<const T>{nullptr, shape{0}};  // none: a serving batch
    b.check("verify_golden", layout);

    infer_ctx<T, B> ctx;
    const var<T> y = model(ctx, b);
    XREC_CHECK(y.numel() == n * tasks, pre, "the model returned ", y.s.str(), " for ", n, " golden rows and ", tasks,
               " task(s)");
    golden_report rep;
    rep.rows = n;
    for (std::int64_t i = 0; i < n * tasks; ++i) {
        const double got = static_cast<double>(y.data[i]), w = want[static_cast<std::size_t>(i)];
        const double e = std::isfinite(got) ? golden_rel_err(got, w) : std::numeric_limits<double>::infinity();
        if (rep.worst_row < 0 || e > rep.max_rel_err || std::isnan(e)) {
            rep.max_rel_err = e;
            rep.worst_row = i / tasks;
            rep.worst_task = i % tasks;
            rep.got = got;
            rep.want = w;
        }
    }
    XREC_CHECK(rep.max_rel_err <= rel_tol, pre, "golden check failed: row ", rep.worst_row, " task '",
               layout.tasks[static_cast<std::size_t>(rep.worst_task)], "': xrec ", rep.got, " vs PyTorch ", rep.want,
               ", relative error ", rep.max_rel_err, " > tolerance ", rel_tol, " (", n, " rows)");
    return rep;
}

/// As above, the layout taken from the model (its .layout or .inputs.layout) and the file
/// opened from `path`.
template <class M, class T, class B>
golden_report verify_golden(const M& model, const param_store<T, B>& store, const std::string& path,
                            double rel_tol = 1e-5) {
    const safetensors_file f = safetensors_file::open(path);
    return verify_golden(model, store, detail::model_layout(model), f, rel_tol);
}

// ------------------------------------------------------------------------------------------
// Built-in maps of the reference modules (examples/pytorch_interop/torch_models.py)
// ------------------------------------------------------------------------------------------
namespace torch_maps {

namespace detail {
// The input block shared by the reference modules (its keys start with `k`): one
// nn.Embedding per layout table in a ModuleDict "embeddings" (keyed by table name) laid end to end into "<p>.embedding"; with
// `first_order`, the 1-wide tables "first_order.<table>.weight" into "<p>.linear", the
// dense features' nn.Linear "dense_linear" (its bias is the global bias), or a bare
// Parameter "bias" when there are no dense features.
inline void inputs(name_map& m, const feature_layout& l, const std::string& p, bool first_order, const std::string& k) {
    for (const auto& t : l.tables) {
        m.map(k + "embeddings." + t.name + ".weight", p + ".embedding").rows_at(t.offset);
        if (first_order) m.map(k + "first_order." + t.name + ".weight", p + ".linear").rows_at(t.offset);
    }
    if (first_order) {
        m.map(k + "dense_linear.weight", p + ".dense_linear.weight");
        m.map(k + "dense_linear.bias", p + ".dense_linear.bias");
        m.map(k + "bias", p + ".dense_linear.bias");
    }
    m.ignore("{*}num_batches_tracked");
}
// An nn.Sequential(Linear, act, Linear, act, ...) "seq" whose Linears are xrec's "<to>.<k>"
// and whose activation modules (Dice: "alpha" and a BatchNorm1d(affine=False) "bn"; PReLU:
// "weight") are xrec's "<to>.<k>.act"; with `out`, the Linear at index 2 * hidden is xrec's
// "<to>.out" (one activation module after each hidden Linear).
inline void sequential(name_map& m, const std::string& seq, const std::string& to, std::int64_t hidden, bool out) {
    if (out) {
        for (const char* w : {"weight", "bias"})
            m.map(seq + "." + std::to_string(2 * hidden) + "." + w, to + ".out." + w);
    }
    for (const char* w : {"weight", "bias"})
        m.map(seq + ".{i}." + w, to + ".{i}." + w).index("i", index_map::affine(2));
    m.map(seq + ".{i}.alpha", to + ".{i}.act.alpha").index("i", index_map::affine(2, 1));
    m.map(seq + ".{i}.weight", to + ".{i}.act.weight").index("i", index_map::affine(2, 1));
    for (const char* s : {"running_mean", "running_var"})
        m.map(seq + ".{i}.bn." + s, to + ".{i}.act." + s).index("i", index_map::affine(2, 1)).reshape();
}
}  // namespace detail

/// torch_models.DeepFM -> models::deepfm named `name` over `layout`:
///   inputs.embeddings.<table>.weight [rows, D] -> <name>.embedding rows [offset, offset + rows)
///   inputs.first_order.<table>.weight [rows, 1] -> <name>.linear rows [offset, offset + rows)
///   inputs.dense_linear.weight [1, Dn] / .bias [1] (inputs.bias [1] without dense features)
///                                         -> <name>.dense_linear.weight / .bias
///   dnn.<2k>.weight / .bias               -> <name>.dnn.<k>.weight / .bias  (Sequential of
///                                            Linear, ReLU pairs)
///   dnn_out.weight [1, H]                 -> <name>.dnn_linear.weight
inline name_map deepfm(const feature_layout& layout, const std::string& name = "deepfm") {
    name_map m;
    detail::inputs(m, layout, name, true, "inputs.");
    for (const char* w : {"weight", "bias"})
        m.map(std::string("dnn.{i}.") + w, name + ".dnn.{i}." + w).index("i", index_map::affine(2));
    m.map("dnn_out.weight", name + ".dnn_linear.weight");
    return m;
}

/// torch_models.DCNV2 -> models::dcn_v2 named `name` (full-rank or low-rank cross layers,
/// parallel or stacked), the inputs as deepfm, and:
///   cross.<l>.weight [d, d] / .bias [d]   -> <name>.cross.<l>.w / .b      (full rank: Linear(d, d))
///   cross.<l>.down.weight [r, d]          -> <name>.cross.<l>.v [d, r]    (transposed)
///   cross.<l>.up.weight [d, r] / .bias [d] -> <name>.cross.<l>.u / .b     (low rank)
///   dnn.<2k>.weight / .bias               -> <name>.dnn.<k>.weight / .bias
///   out.weight [1, d + H]                 -> <name>.dnn_linear.weight
inline name_map dcn_v2(const feature_layout& layout, const std::string& name = "dcn_v2") {
    name_map m;
    detail::inputs(m, layout, name, true, "inputs.");
    m.map("cross.{l}.weight", name + ".cross.{l}.w");
    m.map("cross.{l}.bias", name + ".cross.{l}.b");
    m.map("cross.{l}.down.weight", name + ".cross.{l}.v").transpose();
    m.map("cross.{l}.up.weight", name + ".cross.{l}.u");
    m.map("cross.{l}.up.bias", name + ".cross.{l}.b");
    for (const char* w : {"weight", "bias"})
        m.map(std::string("dnn.{i}.") + w, name + ".dnn.{i}." + w).index("i", index_map::affine(2));
    m.map("out.weight", name + ".dnn_linear.weight");
    return m;
}

/// torch_models.DIN -> models::din over `layout` (its prefix is always "din"), with
/// `attention_hidden` and `tower_hidden` the numbers of hidden layers of the activation unit
/// and of the tower:
///   embeddings.<table>.weight             -> din.embedding rows [offset, offset + rows)
///   attention.<2k>.weight / .bias         -> din.attention.<k>.weight / .bias
///   attention.<2H>.weight / .bias         -> din.attention.out.weight / .bias
///   attention.<2k+1>.alpha [C]            -> din.attention.<k>.act.alpha         (Dice)
///   attention.<2k+1>.bn.running_mean [C]  -> din.attention.<k>.act.running_mean [1, C]
///   attention.<2k+1>.bn.running_var [C]   -> din.attention.<k>.act.running_var [1, C]
///   attention.<2k+1>.weight [C]           -> din.attention.<k>.act.weight        (PReLU)
///   tower.*                               -> din.mlp.* the same way (tower.<2T> -> din.mlp.out)
/// BatchNorm's num_batches_tracked is ignored.
inline name_map din(const feature_layout& layout, std::int64_t attention_hidden, std::int64_t tower_hidden) {
    XREC_CHECK(attention_hidden >= 0 && tower_hidden >= 0, "torch_maps::din: hidden layer counts must be >= 0, got ",
               attention_hidden, " and ", tower_hidden);
    name_map m;
    detail::inputs(m, layout, "din", false, "");
    detail::sequential(m, "attention", "din.attention", attention_hidden, true);
    detail::sequential(m, "tower", "din.mlp", tower_hidden, true);
    return m;
}

}  // namespace torch_maps

}  // namespace xrec::io
