// io/svg.hpp: the output is well-formed XML (checked by a small parser below), names are
// escaped, NaN points are skipped and break lines, ticks are nice, writes are atomic.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "support/checks.hpp"
#include "xrec/io/svg.hpp"

namespace fs = std::filesystem;

namespace {

/// A minimal XML 1.0 well-formedness checker (enough for what an SVG writer emits):
/// an optional <?xml ...?> prolog, exactly one root element, properly nested and matched
/// tags, quoted attribute values without '<', no attribute twice on an element, and every
/// '&' starting a known entity or a character reference. Returns "" when well-formed, else
/// what is wrong and where; counts elements by name.
struct xml_check {
    std::string error;
    std::map<std::string, int> count;
    std::string text;  // all character data, entities decoded (for content checks)

    explicit xml_check(const std::string& s) { error = run(s); }

private:
    static bool name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == ':' || c == '.'; }
    static std::string at(std::size_t i) { return " at offset " + std::to_string(i); }

    // Checks an entity reference at s[i] == '&'; advances i past ';' and appends its text.
    static std::string entity(const std::string& s, std::size_t& i, std::string* out) {
        const std::size_t semi = s.find(';', i);
        if (semi == std::string::npos || semi - i > 10) return "bare '&'" + at(i);
        const std::string e = s.substr(i + 1, semi - i - 1);
        static const std::map<std::string, char> named{{"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}};
        if (auto it = named.find(e); it != named.end()) {
            if (out) *out += it->second;
        } else if (e.size() > 1 && e[0] == '#') {
            const bool hex = e[1] == 'x';
            for (std::size_t k = hex ? 2 : 1; k < e.size(); ++k)
                if (!(hex ? std::isxdigit(static_cast<unsigned char>(e[k])) : std::isdigit(static_cast<unsigned char>(e[k]))))
                    return "bad character reference '&" + e + ";'" + at(i);
        } else {
            return "unknown entity '&" + e + ";'" + at(i);
        }
        i = semi + 1;
        return "";
    }

    std::string run(const std::string& s) {
        std::size_t i = 0;
        if (s.compare(0, 5, "<?xml") == 0) {
            i = s.find("?>");
            if (i == std::string::npos) return "unterminated prolog";
            i += 2;
        }
        std::vector<std::string> stack;
        int roots = 0;
        while (i < s.size()) {
            if (s[i] != '<') {
                if (stack.empty() && !std::isspace(static_cast<unsigned char>(s[i]))) return "text outside the root" + at(i);
                if (s[i] == '&') {
                    if (auto e = entity(s, i, &text); !e.empty()) return e;
                    continue;
                }
                if (s[i] == '>') return "raw '>' in text" + at(i);  // legal in XML, but our writer escapes it
                text += s[i++];
                continue;
            }
            if (s.compare(i, 2, "</") == 0) {  // end tag
                std::size_t j = i + 2;
                while (j < s.size() && name_char(s[j])) ++j;
                const std::string name = s.substr(i + 2, j - i - 2);
                while (j < s.size() && std::isspace(static_cast<unsigned char>(s[j]))) ++j;
                if (j >= s.size() || s[j] != '>') return "bad end tag" + at(i);
                if (stack.empty() || stack.back() != name)
                    return "end tag </" + name + "> does not match <" + (stack.empty() ? "" : stack.back()) + ">" + at(i);
                stack.pop_back();
                i = j + 1;
                continue;
            }
            // Start or empty-element tag.
            std::size_t j = i + 1;
            while (j < s.size() && name_char(s[j])) ++j;
            const std::string name = s.substr(i + 1, j - i - 1);
            if (name.empty() || !std::isalpha(static_cast<unsigned char>(name[0]))) return "bad tag name" + at(i);
            if (stack.empty() && roots++ > 0) return "second root element <" + name + ">" + at(i);
            std::set<std::string> attrs;
            bool empty_elem = false;
            for (;;) {
                const std::size_t ws = j;
                while (j < s.size() && std::isspace(static_cast<unsigned char>(s[j]))) ++j;
                if (j >= s.size()) return "unterminated tag <" + name + ">";
                if (s[j] == '>') {
                    ++j;
                    break;
                }
                if (s.compare(j, 2, "/>") == 0) {
                    j += 2;
                    empty_elem = true;
                    break;
                }
                if (ws == j) return "no space before attribute in <" + name + ">" + at(j);
                const std::size_t a0 = j;
                while (j < s.size() && name_char(s[j])) ++j;
                const std::string an = s.substr(a0, j - a0);
                if (an.empty()) return "bad attribute in <" + name + ">" + at(j);
                if (!attrs.insert(an).second) return "attribute '" + an + "' twice in <" + name + ">" + at(a0);
                if (j >= s.size() || s[j] != '=') return "attribute '" + an + "' without '='" + at(j);
                ++j;
                if (j >= s.size() || (s[j] != '"' && s[j] != '\'')) return "unquoted value of '" + an + "'" + at(j);
                const char q = s[j++];
                while (j < s.size() && s[j] != q) {
                    if (s[j] == '<') return "'<' in the value of '" + an + "'" + at(j);
                    if (s[j] == '&') {
                        if (auto e = entity(s, j, nullptr); !e.empty()) return e;
                    } else {
                        ++j;
                    }
                }
                if (j >= s.size()) return "unterminated value of '" + an + "'";
                ++j;
            }
            ++count[name];
            if (!empty_elem) stack.push_back(name);
            i = j;
        }
        if (!stack.empty()) return "unclosed <" + stack.back() + ">";
        if (roots != 1) return "no root element";
        return "";
    }
};

std::size_t occurrences(const std::string& s, const std::string& what) {
    std::size_t n = 0;
    for (std::size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
    return n;
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

std::vector<xrec::io::svg_panel> demo_panels() {
    const double nan = std::nan("");
    xrec::io::svg_panel auc{"valid AUC", "epoch", "AUC", {}};
    auc.series.push_back({"A&B <deepfm>", {}, {0.61, 0.65, nan, 0.70, 0.72}, ""});
    auc.series.push_back({"lr \"baseline\"", {}, {0.60, 0.62, 0.63, 0.635, 0.64}, ""});
    xrec::io::svg_panel loss{"train loss", "epoch", "logloss", {}};
    loss.series.push_back({"A&B <deepfm>", {1, 2, 3, 4, 5}, {0.52, 0.47, 0.45, 0.44, 0.435}, ""});
    loss.series.push_back({"lr \"baseline\"", {1, 2, 3, 4, 5}, {0.55, 0.53, 0.52, 0.515, std::numeric_limits<double>::infinity()}, "#333333"});
    return {auc, loss};
}

}  // namespace

TEST_CASE("svg: the checker itself refuses malformed XML") {
    CHECK(xml_check("<a><b/></a>").error.empty());
    CHECK(!xml_check("<a><b></a>").error.empty());             // mismatched
    CHECK(!xml_check("<a x=\"1\" x=\"2\"/>").error.empty());   // duplicate attribute
    CHECK(!xml_check("<a>x & y</a>").error.empty());           // bare &
    CHECK(!xml_check("<a x=\"<\"/>").error.empty());           // < in a value
    CHECK(!xml_check("<a/><b/>").error.empty());               // two roots
    CHECK(!xml_check("<a x=1/>").error.empty());               // unquoted
    CHECK(!xml_check("<a>").error.empty());                    // unclosed
}

TEST_CASE("svg: two panels of two series are well-formed, escaped, and skip NaN points") {
    const auto panels = demo_panels();
    const std::string svg = xrec::io::render_line_charts(panels, {.title = "xrec <demo> & friends"});
    const xml_check x(svg);
    INFO(x.error);
    REQUIRE(x.error.empty());
    std::printf("[svg] %zu bytes, %d text, %d polyline, %d circle, %d g elements\n", svg.size(), x.count.at("text"),
                x.count.at("polyline"), x.count.at("circle"), x.count.at("g"));
    // Names escaped in the markup and intact once decoded; titles and labels present.
    CHECK(occurrences(svg, "A&amp;B &lt;deepfm&gt;") == 2);  // one legend entry per panel
    CHECK(occurrences(svg, "lr &quot;baseline&quot;") == 2);
    for (const char* t : {"A&B <deepfm>", "lr \"baseline\"", "xrec <demo> & friends", "valid AUC", "train loss", "epoch",
                          "logloss"})
        CHECK_MESSAGE(x.text.find(t) != std::string::npos, t);
    // No non-finite number leaks into coordinates.
    CHECK(lower(svg).find("nan") == std::string::npos);
    CHECK(lower(svg).find("inf") == std::string::npos);
    // 20 points, 2 non-finite: 18 dots. Lines: the NaN splits series 1 into two runs of two
    // points; the Inf ends series 4 early; with the 2 axes, 2 + 1 + 1 + 1 + 2 = 7 polylines.
    CHECK(x.count.at("circle") == 18);
    CHECK(x.count.at("polyline") == 7);
    CHECK(x.count.at("svg") == 1);
    CHECK(svg.find("#333333") != std::string::npos);  // an explicit colour is used
}

TEST_CASE("svg: nice ticks enclose the data at steps of 1, 2 or 5 x 10^k") {
    const auto t = xrec::io::nice_ticks(0.613, 0.742, 5);
    REQUIRE(t.size() == 4);
    CHECK(t.front() == doctest::Approx(0.60));
    CHECK(t.back() == doctest::Approx(0.75));
    CHECK(t[1] - t[0] == doctest::Approx(0.05));
    CHECK(xrec::io::tick_label(t[1], 0.05) == "0.65");
    const auto e = xrec::io::nice_ticks(1, 10, 6);  // epochs 1..10: step 2 from 0 to 10
    CHECK(e.front() == 0);
    CHECK(e.back() == 10);
    CHECK(e.size() == 6);
    const auto flat = xrec::io::nice_ticks(0.5, 0.5, 5);  // a constant series still gets an axis
    CHECK(flat.front() < 0.5);
    CHECK(flat.back() > 0.5);
    // A panel without finite points renders empty axes, still well-formed.
    xrec::io::svg_panel empty{"nothing yet", "", "", {{"s", {}, {std::nan("")}, ""}}};
    const std::vector<xrec::io::svg_panel> one{empty};
    CHECK(xml_check(xrec::io::render_line_charts(one)).error.empty());
}

TEST_CASE("svg: written atomically; a failed write leaves no temporary file") {
    const fs::path dir = fs::temp_directory_path() / ("xrec_svg_" + std::to_string(std::random_device{}()));
    fs::create_directories(dir);
    const auto panels = demo_panels();
    const std::string path = (dir / "curves.svg").string();
    xrec::io::write_line_charts(path, panels, {.title = "t"});
    std::ifstream in(path);
    const std::string back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(back == xrec::io::render_line_charts(panels, {.title = "t"}));
    // The target is a directory: the rename fails, the directory stays, the temp file is gone.
    fs::create_directories(dir / "taken.svg" / "inner");
    xrec_test::expect_error([&] { xrec::io::write_line_charts((dir / "taken.svg").string(), panels); },
                            {"taken.svg", "rename"});
    CHECK(fs::is_directory(dir / "taken.svg" / "inner"));
    int files = 0;
    for (auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
    CHECK(files == 1);  // curves.svg only
    xrec_test::expect_error([&] { xrec::io::write_line_charts((dir / "no" / "such" / "dir.svg").string(), panels); },
                            {"dir.svg", "cannot create"});
    fs::remove_all(dir);
}
