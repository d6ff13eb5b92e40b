#pragma once
// A stable 64-bit hash of bytes for feature hashing: the same bytes give the same bucket at
// training and serving time, in every process, on every platform and compiler, so a hashed
// field needs no vocabulary file.
#include <cstdint>
#include <string_view>

#include "xrec/core/error.hpp"

namespace xrec::data {

/// FNV-1a, 64 bit (Fowler, Noll, Vo): h = 0xcbf29ce484222325; for each byte b:
/// h = (h xor b) * 0x100000001b3 (mod 2^64). Bytes are taken as unsigned 8-bit values, so the
/// result does not depend on the signedness of char. Known values: "" -> 0xcbf29ce484222325,
/// "a" -> 0xaf63dc4c8601ec8c, "foobar" -> 0x85944171f73967e8.
constexpr std::uint64_t fnv1a64(std::string_view bytes) noexcept {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (char c : bytes) {
        h ^= static_cast<std::uint64_t>(static_cast<unsigned char>(c));
        h *= 0x100000001b3ull;
    }
    return h;
}

/// The SplitMix64 output function (Steele, Lea, Flood 2014): z += 0x9e3779b97f4a7c15;
/// z = (z ^ z>>30) * 0xbf58476d1ce4e5b9; z = (z ^ z>>27) * 0x94d049bb133111eb; z ^ z>>31.
/// A bijection on 64-bit words that makes every output bit depend on every input bit; FNV-1a
/// alone mixes its last bytes poorly into the high bits, which a modulus by a power of two
/// would expose.
constexpr std::uint64_t splitmix64_mix(std::uint64_t z) noexcept {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/// The stable hash of xrec: stable_hash64(bytes, seed) = splitmix64_mix(fnv1a64(bytes) xor seed).
/// `seed` salts the hash per field (two fields hashed into one table with different seeds
/// collide independently). Pure integer arithmetic, constexpr: identical everywhere.
constexpr std::uint64_t stable_hash64(std::string_view bytes, std::uint64_t seed = 0) noexcept {
    return splitmix64_mix(fnv1a64(bytes) ^ seed);
}

/// The bucket of a value in a hashed table of `buckets` rows (buckets >= 2). Bucket 0 is
/// reserved for the empty (missing) value, so the table's row 0 keeps its meaning
/// "out of vocabulary / missing" shared with vocabulary tables:
///   bucket("") = 0;  bucket(v) = 1 + stable_hash64(v, seed) mod (buckets - 1).
inline std::int64_t hash_bucket(std::string_view value, std::int64_t buckets, std::uint64_t seed = 0) {
    XREC_CHECK(buckets >= 2, "hash_bucket: a hashed table needs at least 2 buckets (bucket 0 is 'missing'), got ",
               buckets);
    if (value.empty()) return 0;
    return 1 + static_cast<std::int64_t>(stable_hash64(value, seed) % static_cast<std::uint64_t>(buckets - 1));
}

/// Transparent hasher for unordered containers keyed by std::string and looked up by
/// std::string_view (no temporary string per lookup).
struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return static_cast<std::size_t>(stable_hash64(s)); }
};

}  // namespace xrec::data
