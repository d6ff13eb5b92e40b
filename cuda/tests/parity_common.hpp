#pragma once
// Shared by the cuda parity programs (parity_kernels.cu, parity_layers.cu): the check
// counters, the tolerance (1e-5 |cpu| + 1e-6 in float32) and compare(), which prints
// one line per check.
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

namespace xrec_parity {

using vec = std::vector<float>;

inline constexpr double rtol = 1e-5, atol = 1e-6;
inline int failures = 0, checks = 0;

// Compares a GPU result with the cpu's and prints one line. Where `ref` (the same
// computation in double on the cpu) is given, an element outside the tolerance still
// passes when the GPU is no further from the double result than the cpu's float result is
// (plus the tolerance): float sums that cancel differ between summation orders by more
// than 1e-5 of the (small) result, and then the cpu is not the better answer. The line says
// how many elements passed that way and the worst ratio against the reference.
inline void compare(const std::string& what, const vec& gpu, const vec& cpu, const std::vector<double>& ref = {}) {
    ++checks;
    if (gpu.size() != cpu.size() || (!ref.empty() && ref.size() != cpu.size())) {
        std::printf("FAIL %s: gpu has %zu values, cpu %zu, reference %zu\n", what.c_str(), gpu.size(), cpu.size(),
                    ref.size());
        ++failures;
        return;
    }
    double worst = 0, worst_ref = 0;
    std::size_t at = 0, by_ref = 0;
    bool bad = false, nan = false;
    for (std::size_t i = 0; i < gpu.size(); ++i) {
        const double g = gpu[i], c = cpu[i];
        if (std::isnan(g) != std::isnan(c)) {
            nan = bad = true;
            at = i;
            break;
        }
        if (std::isnan(g)) continue;
        const double r = std::fabs(g - c) / (rtol * std::fabs(c) + atol);
        if (r > worst) {
            worst = r;
            at = i;
        }
        if (r <= 1.0) continue;
        if (!ref.empty()) {
            // How much further from the double result the GPU is than the cpu, in tolerances.
            const double e = (std::fabs(g - ref[i]) - std::fabs(c - ref[i])) / (rtol * std::fabs(ref[i]) + atol);
            worst_ref = e > worst_ref ? e : worst_ref;
            if (e <= 1.0) {
                ++by_ref;
                continue;
            }
        }
        bad = true;
    }
    if (bad) ++failures;
    const char* head = bad ? "FAIL" : "ok  ";
    if (gpu.empty()) {
        std::printf("%s %s: no values\n", head, what.c_str());
        return;
    }
    std::printf("%s %s: max ratio %.3g%s (worst at %zu of %zu: gpu %.9g cpu %.9g", head, what.c_str(), worst,
                nan ? " NaN mismatch" : "", at, gpu.size(), static_cast<double>(gpu[at]), static_cast<double>(cpu[at]));
    if (!ref.empty()) std::printf(" ref %.9g", ref[at]);
    std::printf(")");
    if (by_ref) std::printf("; %zu beyond the ratio but no further from the double reference than the cpu (excess %.3g)", by_ref, worst_ref);
    else if (!ref.empty() && worst_ref > 0) std::printf("; excess over the cpu's error vs the double reference %.3g", worst_ref);
    std::printf("\n");
}

}  // namespace xrec_parity
