#pragma once
// A small dependency-free SVG writer for training curves: line charts with several series,
// axes with "nice" ticks and labels, a legend, a title, and several panels side by side
// (e.g. validation AUC and training loss per epoch of two models). Written atomically.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "xrec/core/error.hpp"

namespace xrec::io {

/// One line of a chart: the points (x[i], y[i]) joined in order. `x` may be empty, then the
/// points sit at x = 1, 2, ..., n (epochs). A point with a non-finite coordinate (NaN for a
/// metric that was undefined that epoch) is skipped and breaks the line there. `color` is
/// any SVG colour; empty takes the palette colour of the series' index, so a model keeps its
/// colour across panels.
struct svg_series {
    std::string name;
    std::vector<double> x, y;
    std::string color;
};

/// One chart: a title above it, axis labels, its series and a legend in the corner of the
/// plot area that hides the fewest points.
struct svg_panel {
    std::string title, x_label, y_label;
    std::vector<svg_series> series;
};

/// The figure: an optional title over all panels, each panel `panel_width` x `panel_height`
/// pixels, panels placed left to right.
struct svg_options {
    std::string title;
    double panel_width = 440, panel_height = 320;
};

namespace detail {

inline constexpr const char* svg_palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                              "#9467bd", "#8c564b", "#e377c2", "#17becf"};

inline std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

/// Rounds a positive step up to 1, 2 or 5 times a power of ten.
inline double nice_step(double raw) {
    const double p = std::pow(10.0, std::floor(std::log10(raw)));
    const double f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

/// Writes all of `n` bytes, retrying short writes and EINTR.
inline bool write_all(int fd, const char* p, std::size_t n) {
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += w;
        n -= static_cast<std::size_t>(w);
    }
    return true;
}

}  // namespace detail

/// Text escaped for XML character data and attribute values: & < > " ' become entities, and
/// the control characters XML 1.0 forbids (all below 0x20 except tab, newline, return) are
/// dropped.
inline std::string xml_escape(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&quot;"; break;
            case '\'': out += "&apos;"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r') break;
                out += c;
        }
    }
    return out;
}

/// Axis ticks: about `target` evenly spaced values at a step of 1, 2 or 5 x 10^k, from the
/// largest multiple of the step <= lo to the smallest >= hi (so the ticks enclose [lo, hi]).
/// lo == hi is widened to a unit-ish interval around it; non-finite bounds give [0, 1].
inline std::vector<double> nice_ticks(double lo, double hi, int target = 5) {
    if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
    if (lo > hi) std::swap(lo, hi);
    if (hi - lo < 1e-12 * std::max(1.0, std::fabs(lo))) {
        const double pad = lo == 0 ? 0.5 : std::fabs(lo) * 0.05;
        lo -= pad, hi += pad;
    }
    const double step = detail::nice_step((hi - lo) / std::max(1, target));
    const double first = std::floor(lo / step + 1e-9), last = std::ceil(hi / step - 1e-9);
    std::vector<double> t;
    for (double k = first; k <= last + 0.5; k += 1) t.push_back(k * step == 0 ? 0.0 : k * step);  // no "-0"
    return t;
}

/// A tick value printed with as many decimals as the tick step needs (0.05 -> "0.05", 2 -> "2").
inline std::string tick_label(double v, double step) {
    const int dec = std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 10);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", dec, v);
    return buf;
}

/// Renders the panels as one SVG document (UTF-8 text). Axis ranges are taken from the finite
/// points of each panel and widened to nice ticks; a panel without any finite point gets
/// empty [0, 1] axes. All text is escaped.
inline std::string render_line_charts(std::span<const svg_panel> panels, const svg_options& o = {}) {
    using detail::fmt;
    const double ml = 64, mr = 16, mt = 36, mb = 52;  // margins of the plot area inside a panel
    const double title_h = o.title.empty() ? 0 : 32;
    const double W = o.panel_width * static_cast<double>(std::max<std::size_t>(1, panels.size()));
    const double H = o.panel_height + title_h;
    std::string s;
    s += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
    s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + fmt("%.0f", W) + "\" height=\"" + fmt("%.0f", H) +
         "\" viewBox=\"0 0 " + fmt("%.0f", W) + " " + fmt("%.0f", H) +
         "\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n";
    s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    if (!o.title.empty())
        s += "<text x=\"" + fmt("%.1f", W / 2) + "\" y=\"22\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">" +
             xml_escape(o.title) + "</text>\n";

    for (std::size_t pi = 0; pi < panels.size(); ++pi) {
        const svg_panel& p = panels[pi];
        const double x0 = static_cast<double>(pi) * o.panel_width + ml, y0 = title_h + mt;
        const double pw = o.panel_width - ml - mr, ph = o.panel_height - mt - mb;
        // Data ranges over the finite points.
        double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
        auto x_of = [](const svg_series& sr, std::size_t i) {
            return sr.x.empty() ? static_cast<double>(i + 1) : i < sr.x.size() ? sr.x[i] : NAN;
        };
        for (const auto& sr : p.series)
            for (std::size_t i = 0; i < sr.y.size(); ++i) {
                const double x = x_of(sr, i), y = sr.y[i];
                if (!std::isfinite(x) || !std::isfinite(y)) continue;
                xlo = std::min(xlo, x), xhi = std::max(xhi, x), ylo = std::min(ylo, y), yhi = std::max(yhi, y);
            }
        if (!std::isfinite(xlo)) xlo = 0, xhi = 1, ylo = 0, yhi = 1;
        const auto xt = nice_ticks(xlo, xhi, 6), yt = nice_ticks(ylo, yhi, 5);
        const double ax0 = xt.front(), ax1 = xt.back(), ay0 = yt.front(), ay1 = yt.back();
        auto px = [&](double x) { return x0 + (x - ax0) / (ax1 - ax0) * pw; };
        auto py = [&](double y) { return y0 + ph - (y - ay0) / (ay1 - ay0) * ph; };

        s += "<g class=\"panel\">\n";
        if (!p.title.empty())
            s += "<text x=\"" + fmt("%.1f", x0 + pw / 2) + "\" y=\"" + fmt("%.1f", y0 - 14) +
                 "\" text-anchor=\"middle\" font-size=\"14\">" + xml_escape(p.title) + "</text>\n";
        // Grid, ticks and tick labels.
        const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1, ystep = yt.size() > 1 ? yt[1] - yt[0] : 1;
        for (double v : yt) {
            const std::string y = fmt("%.2f", py(v));
            s += "<line x1=\"" + fmt("%.2f", x0) + "\" y1=\"" + y + "\" x2=\"" + fmt("%.2f", x0 + pw) + "\" y2=\"" + y +
                 "\" stroke=\"#e5e5e5\"/>\n";
            s += "<text x=\"" + fmt("%.2f", x0 - 6) + "\" y=\"" + fmt("%.2f", py(v) + 4) + "\" text-anchor=\"end\">" +
                 xml_escape(tick_label(v, ystep)) + "</text>\n";
        }
        for (double v : xt) {
            const std::string x = fmt("%.2f", px(v));
            s += "<line x1=\"" + x + "\" y1=\"" + fmt("%.2f", y0 + ph) + "\" x2=\"" + x + "\" y2=\"" +
                 fmt("%.2f", y0 + ph + 5) + "\" stroke=\"black\"/>\n";
            s += "<text x=\"" + x + "\" y=\"" + fmt("%.2f", y0 + ph + 18) + "\" text-anchor=\"middle\">" +
                 xml_escape(tick_label(v, xstep)) + "</text>\n";
        }
        // Axes.
        s += "<polyline points=\"" + fmt("%.2f", x0) + "," + fmt("%.2f", y0) + " " + fmt("%.2f", x0) + "," +
             fmt("%.2f", y0 + ph) + " " + fmt("%.2f", x0 + pw) + "," + fmt("%.2f", y0 + ph) +
             "\" fill=\"none\" stroke=\"black\"/>\n";
        if (!p.x_label.empty())
            s += "<text x=\"" + fmt("%.2f", x0 + pw / 2) + "\" y=\"" + fmt("%.2f", y0 + ph + 38) +
                 "\" text-anchor=\"middle\">" + xml_escape(p.x_label) + "</text>\n";
        if (!p.y_label.empty()) {
            const double lx = x0 - 48, ly = y0 + ph / 2;
            s += "<text x=\"" + fmt("%.2f", lx) + "\" y=\"" + fmt("%.2f", ly) + "\" text-anchor=\"middle\" transform=\"rotate(-90 " +
                 fmt("%.2f", lx) + " " + fmt("%.2f", ly) + ")\">" + xml_escape(p.y_label) + "</text>\n";
        }
        // Series: one polyline per run of finite points, a dot on every point.
        for (std::size_t si = 0; si < p.series.size(); ++si) {
            const svg_series& sr = p.series[si];
            const std::string color = xml_escape(sr.color.empty() ? detail::svg_palette[si % 8] : sr.color);
            s += "<g class=\"series\" stroke=\"" + color + "\" fill=\"" + color + "\">\n";
            std::string run;
            std::size_t run_points = 0;
            auto flush = [&] {
                if (run_points > 1) s += "<polyline points=\"" + run + "\" fill=\"none\" stroke-width=\"2\"/>\n";
                run.clear();
                run_points = 0;
            };
            for (std::size_t i = 0; i < sr.y.size(); ++i) {
                const double x = x_of(sr, i), y = sr.y[i];
                if (!std::isfinite(x) || !std::isfinite(y)) {
                    flush();
                    continue;
                }
                const std::string pt = fmt("%.2f", px(x)) + "," + fmt("%.2f", py(y));
                run += (run_points ? " " : "") + pt;
                ++run_points;
                s += "<circle cx=\"" + fmt("%.2f", px(x)) + "\" cy=\"" + fmt("%.2f", py(y)) + "\" r=\"2.5\"/>\n";
            }
            flush();
            s += "</g>\n";
        }
        // Legend inside the plot area.
        if (!p.series.empty()) {
            std::size_t longest = 0;
            for (const auto& sr : p.series) longest = std::max(longest, sr.name.size());
            const double lw = 34 + 7 * static_cast<double>(longest), lh = 8 + 16 * static_cast<double>(p.series.size());
            // The corner whose box covers the least of the data (points, and the lines sampled
            // at 8 places per segment; top right on a tie, then top left, bottom right, bottom
            // left), so the legend hides as little as it can.
            std::vector<std::pair<double, double>> ink;
            for (const auto& sr : p.series) {
                bool prev = false;
                double X0 = 0, Y0 = 0;
                for (std::size_t i = 0; i < sr.y.size(); ++i) {
                    const double x = x_of(sr, i), y = sr.y[i];
                    if (!std::isfinite(x) || !std::isfinite(y)) {
                        prev = false;
                        continue;
                    }
                    const double X = px(x), Y = py(y);
                    ink.emplace_back(X, Y);
                    if (prev)
                        for (int k = 1; k < 8; ++k) ink.emplace_back(X0 + (X - X0) * k / 8, Y0 + (Y - Y0) * k / 8);
                    prev = true, X0 = X, Y0 = Y;
                }
            }
            const double cx[4] = {x0 + pw - lw - 6, x0 + 6, x0 + pw - lw - 6, x0 + 6};
            const double cy[4] = {y0 + 6, y0 + 6, y0 + ph - lh - 6, y0 + ph - lh - 6};
            int corner = 0;
            std::size_t fewest = SIZE_MAX;
            for (int c = 0; c < 4; ++c) {
                std::size_t covered = 0;
                for (const auto& [X, Y] : ink)
                    covered += X >= cx[c] - 4 && X <= cx[c] + lw + 4 && Y >= cy[c] - 4 && Y <= cy[c] + lh + 4;
                if (covered < fewest) fewest = covered, corner = c;
            }
            const double lx = cx[corner], ly = cy[corner];
            s += "<g class=\"legend\">\n<rect x=\"" + fmt("%.2f", lx) + "\" y=\"" + fmt("%.2f", ly) + "\" width=\"" +
                 fmt("%.2f", lw) + "\" height=\"" + fmt("%.2f", lh) +
                 "\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#999999\"/>\n";
            for (std::size_t si = 0; si < p.series.size(); ++si) {
                const svg_series& sr = p.series[si];
                const std::string color = xml_escape(sr.color.empty() ? detail::svg_palette[si % 8] : sr.color);
                const double yy = ly + 14 + 16 * static_cast<double>(si);
                s += "<line x1=\"" + fmt("%.2f", lx + 6) + "\" y1=\"" + fmt("%.2f", yy - 4) + "\" x2=\"" +
                     fmt("%.2f", lx + 24) + "\" y2=\"" + fmt("%.2f", yy - 4) + "\" stroke=\"" + color +
                     "\" stroke-width=\"2\"/>\n";
                s += "<text x=\"" + fmt("%.2f", lx + 28) + "\" y=\"" + fmt("%.2f", yy) + "\">" + xml_escape(sr.name) +
                     "</text>\n";
            }
            s += "</g>\n";
        }
        s += "</g>\n";
    }
    s += "</svg>\n";
    return s;
}

/// Writes `text` to `path` atomically: into a temporary file beside it, fsync, then rename
/// over `path`, so a reader never sees a half-written file and a failed write leaves an
/// existing file as it was (the temporary file is removed). Throws xrec::error naming the
/// path and the system error.
inline void write_file_atomic(const std::string& path, std::string_view text) {
    static std::atomic<unsigned> counter{0};
    const std::string tmp = path + ".xrec-tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    XREC_CHECK(fd >= 0, "write_file_atomic: '", path, "': cannot create temporary file '", tmp, "': ", std::strerror(errno));
    auto fail = [&](const char* what, int err, bool opened) {
        if (opened) ::close(fd);
        ::unlink(tmp.c_str());
        XREC_FAIL("write_file_atomic: '", path, "': ", what, ": ", std::strerror(err));
    };
    if (!detail::write_all(fd, text.data(), text.size())) fail("write failed", errno, true);
    if (::fsync(fd) != 0) fail("fsync failed", errno, true);
    if (::close(fd) != 0) fail("close failed", errno, false);
    if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename of the temporary file failed", errno, false);
}

/// render_line_charts, written atomically to `path` (conventionally *.svg).
inline void write_line_charts(const std::string& path, std::span<const svg_panel> panels, const svg_options& o = {}) {
    write_file_atomic(path, render_line_charts(panels, o));
}

}  // namespace xrec::io
