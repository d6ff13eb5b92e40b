// The stable feature hash: pinned values (computed independently in Python with the formula in
// data/hash.hpp), compile-time evaluation, bucket range and spread.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "support/checks.hpp"
#include "xrec/data/hash.hpp"

using namespace xrec::data;

// constexpr: the same value at compile time as at run time, on any platform.
static_assert(fnv1a64("") == 0xcbf29ce484222325ull);
static_assert(stable_hash64("a") == 0x5f29c2aadd9b8527ull);

TEST_CASE("fnv1a64 and stable_hash64: pinned known values") {
    // FNV-1a 64 reference vectors
    CHECK(fnv1a64("") == 0xcbf29ce484222325ull);
    CHECK(fnv1a64("a") == 0xaf63dc4c8601ec8cull);
    CHECK(fnv1a64("foobar") == 0x85944171f73967e8ull);
    // stable_hash64 = splitmix64_mix(fnv1a64(bytes) ^ seed), values from a Python transcription
    CHECK(stable_hash64("") == 0xc3817c016ba4ff30ull);
    CHECK(stable_hash64("a") == 0x5f29c2aadd9b8527ull);
    CHECK(stable_hash64("foobar") == 0x5df295413403de4full);
    CHECK(stable_hash64("68fd1e64") == 0x319d08d4bf3cda49ull);
    CHECK(stable_hash64("alice", 7) == 0x61b6b8920ae33f15ull);
    CHECK(stable_hash64("\xc3\xa9") == 0x6e2411eb685090baull);  // bytes, not chars: same for signed char
    CHECK(hash_bucket("alice", 1000, 7) == 814);
    CHECK(hash_bucket("bob", 1000, 7) == 207);
    CHECK(hash_bucket("x", 50) == 38);
    CHECK(hash_bucket("68fd1e64", 1000000) == 531177);
}

TEST_CASE("hash_bucket: 0 only for the empty value, range [1, buckets), even spread, seeds differ") {
    CHECK(hash_bucket("", 10) == 0);
    const std::int64_t B = 64;
    std::vector<std::int64_t> count(B, 0);
    const int n = 63000;
    int same_with_other_seed = 0;
    for (int i = 0; i < n; ++i) {
        std::string v = "item";
        v += std::to_string(i);
        const auto b = hash_bucket(v, B);
        REQUIRE(b >= 1);
        REQUIRE(b < B);
        ++count[static_cast<std::size_t>(b)];
        same_with_other_seed += hash_bucket(v, B, 1) == b;
    }
    CHECK(count[0] == 0);
    // chi-square over the 63 used buckets: expected 1000 each; 63 degrees of freedom
    double chi2 = 0;
    for (std::int64_t b = 1; b < B; ++b) chi2 += std::pow(static_cast<double>(count[static_cast<std::size_t>(b)]) - 1000.0, 2) / 1000.0;
    CHECK(chi2 < 110);  // p < 0.001 above 103 for 63 dof
    CHECK(same_with_other_seed < n / 63 * 2);
    xrec_test::expect_error([] { hash_bucket("a", 1); }, {"at least 2 buckets"});
    MESSAGE("63,000 ids in 63 buckets: chi-square " << chi2 << " (63 dof); " << same_with_other_seed
                                                    << " keep their bucket under another seed (1,000 expected)");
}
