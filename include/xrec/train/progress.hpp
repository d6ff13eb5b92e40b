#pragma once
// A training progress display: samples/s, the running loss and the time left, redrawn in place
// on a terminal, plain periodic lines otherwise (log files, CI).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

namespace xrec::train {

/// Where and how often progress is shown.
///  - stream: where it goes (stderr by default; a test passes a file).
///  - tty: 1 redraws one line in place with '\r' (a terminal), 0 prints plain lines, -1 asks
///    isatty() about the stream.
///  - min_redraw_s: the fastest a terminal line is redrawn.
///  - line_every_s / line_every_steps: in plain mode a line is printed when either this many
///    seconds or this many steps (0: never by steps) have passed since the last line.
struct progress_options {
    bool enabled = true;
    std::FILE* stream = stderr;
    int tty = -1;
    double min_redraw_s = 0.1;
    double line_every_s = 10;
    std::int64_t line_every_steps = 0;
};

/// Formats seconds as "42s", "3m05s" or "1h02m".
inline std::string format_duration(double s) {
    if (!std::isfinite(s) || s < 0) return "?";
    char b[32];
    const auto t = static_cast<long long>(s + 0.5);
    if (t < 60) std::snprintf(b, sizeof b, "%llds", t);
    else if (t < 3600) std::snprintf(b, sizeof b, "%lldm%02llds", t / 60, t % 60);
    else std::snprintf(b, sizeof b, "%lldh%02lldm", t / 3600, (t % 3600) / 60);
    return b;
}

/// One progress display for one pass over `total` samples (0: unknown, then no ETA and no
/// bar). Call update() after every step with the samples done so far and the running loss,
/// and finish() once at the end, which prints the final state (a terminal line is ended with
/// '\n'). On a terminal the line looks like
///     epoch 2/10 [#########...........]  45% 180000/400000  52.1k samples/s  loss 0.4521  ETA 4s
/// and in plain mode the same text without the bar, one line at a time.
/// Timing uses steady_clock; nothing here affects training results.
class progress_bar {
public:
    progress_bar(std::string label, std::int64_t total, progress_options o = {})
        : label_(std::move(label)), total_(total), o_(o), t0_(clock::now()), last_(t0_) {
        tty_ = o_.tty >= 0 ? o_.tty == 1 : (o_.stream && ::isatty(::fileno(o_.stream)) == 1);
    }
    progress_bar(const progress_bar&) = delete;
    progress_bar& operator=(const progress_bar&) = delete;

    /// After a step: `done` samples so far in this pass, `loss` the running mean loss.
    void update(std::int64_t done, double loss) {
        ++steps_;
        done_ = done;
        loss_ = loss;
        if (!o_.enabled || !o_.stream) return;
        const auto now = clock::now();
        const double since = seconds(last_, now);
        if (tty_) {
            if (since < o_.min_redraw_s) return;
            draw(now, false);
        } else {
            if (total_ > 0 && done_ >= total_) return;  // finish() prints the complete pass once
            const bool by_steps = o_.line_every_steps > 0 && steps_ - last_step_ >= o_.line_every_steps;
            if (!by_steps && since < o_.line_every_s) return;
            draw(now, false);
        }
        last_ = now;
        last_step_ = steps_;
    }

    /// Prints the final state once (idempotent); `suffix` is appended (e.g. validation metrics).
    void finish(const std::string& suffix = "") {
        if (finished_) return;
        finished_ = true;
        if (!o_.enabled || !o_.stream) return;
        suffix_ = suffix;
        draw(clock::now(), true);
    }

    /// Samples per second so far.
    double rate() const { return rate_at(clock::now()); }
    double elapsed() const { return seconds(t0_, clock::now()); }
    bool is_tty() const noexcept { return tty_; }
    std::int64_t lines() const noexcept { return lines_; }

private:
    using clock = std::chrono::steady_clock;
    static double seconds(clock::time_point a, clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
    double rate_at(clock::time_point now) const {
        const double s = seconds(t0_, now);
        return s > 0 ? static_cast<double>(done_) / s : 0.0;
    }

    static std::string human(double v) {
        char b[32];
        if (v >= 1e6) std::snprintf(b, sizeof b, "%.2fM", v / 1e6);
        else if (v >= 1e3) std::snprintf(b, sizeof b, "%.1fk", v / 1e3);
        else std::snprintf(b, sizeof b, "%.0f", v);
        return b;
    }

    void draw(clock::time_point now, bool final) {
        const double r = rate_at(now);
        std::string line = label_;
        if (total_ > 0) {
            const double frac = std::clamp(static_cast<double>(done_) / static_cast<double>(total_), 0.0, 1.0);
            if (tty_) {
                constexpr int width = 24;
                const int fill = static_cast<int>(frac * width + 1e-9);
                line += " [" + std::string(static_cast<std::size_t>(fill), '#') +
                        std::string(static_cast<std::size_t>(width - fill), '.') + "]";
            }
            char b[96];
            std::snprintf(b, sizeof b, " %3.0f%% %lld/%lld", 100 * frac, static_cast<long long>(done_),
                          static_cast<long long>(total_));
            line += b;
        } else {
            line += " " + std::to_string(done_) + " samples";
        }
        line += "  " + human(r) + " samples/s";
        if (std::isfinite(loss_)) {
            char b[48];
            std::snprintf(b, sizeof b, "  loss %.4f", loss_);
            line += b;
        }
        if (final) line += "  done in " + format_duration(seconds(t0_, now));
        else if (total_ > 0 && r > 0) line += "  ETA " + format_duration(static_cast<double>(total_ - done_) / r);
        if (final && !suffix_.empty()) line += "  " + suffix_;
        if (tty_) {
            // Pad over the previous, possibly longer, line; end the line only when finished.
            const std::size_t pad = prev_len_ > line.size() ? prev_len_ - line.size() : 0;
            prev_len_ = line.size();
            std::fprintf(o_.stream, "\r%s%s%s", line.c_str(), std::string(pad, ' ').c_str(), final ? "\n" : "");
        } else {
            std::fprintf(o_.stream, "%s\n", line.c_str());
        }
        std::fflush(o_.stream);
        ++lines_;
    }

    std::string label_;
    std::int64_t total_;
    progress_options o_;
    bool tty_ = false, finished_ = false;
    clock::time_point t0_, last_;
    std::int64_t done_ = 0, steps_ = 0, last_step_ = 0, lines_ = 0;
    double loss_ = NAN;
    std::size_t prev_len_ = 0;
    std::string suffix_;
};

}  // namespace xrec::train
