#pragma once
// What the evaluation programs share (xrec_eval, rank_cf): `--key value` arguments, comma
// lists, and the mean and standard error of a metric over seeds.
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

namespace xrec_eval {

/// `--key value` pairs; get() and num() fall back to a default for a missing key.
struct args {
    std::map<std::string, std::string> kv;
    std::string get(const std::string& k, const std::string& d) const {
        auto it = kv.find(k);
        return it == kv.end() ? d : it->second;
    }
    long num(const std::string& k, long d) const { return std::stol(get(k, std::to_string(d))); }

    /// Reads argv[first ..] as `--key value` pairs. False (with a message on stderr naming
    /// `who` and the argument) when an argument is not of that form.
    bool parse(int argc, char** argv, int first, const char* who) {
        for (int i = first; i < argc; i += 2) {
            const std::string k = argv[i];
            if (k.rfind("--", 0) != 0 || i + 1 >= argc) {
                std::fprintf(stderr, "%s: expected --key value, got '%s'\n", who, argv[i]);
                return false;
            }
            kv[k.substr(2)] = argv[i + 1];
        }
        return true;
    }
};

/// "a,b,,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split_list(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    for (std::string x; std::getline(ss, x, ',');)
        if (!x.empty()) out.push_back(x);
    return out;
}

/// The mean of v and its standard error (sample standard deviation / sqrt(n); 0 for n < 2).
struct mean_se {
    double mean = 0, se = 0;
};
inline mean_se summarize(const std::vector<double>& v) {
    mean_se r;
    if (v.empty()) return r;
    r.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
    if (v.size() > 1) {
        double ss = 0;
        for (double x : v) ss += (x - r.mean) * (x - r.mean);
        r.se = std::sqrt(ss / static_cast<double>(v.size() - 1) / static_cast<double>(v.size()));
    }
    return r;
}

}  // namespace xrec_eval
