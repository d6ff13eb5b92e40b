#pragma once
// What the exception-free test unit (noexcept_client.cpp, built with -fno-exceptions) sees of
// the server unit (noexcept_server.cpp, built with exceptions): plain declarations only.
#include <cstdint>
#include <memory>
#include <vector>

#include "xrec/serve/api.hpp"

namespace noexcept_test {

/// A deepfm server over a small layout (user, item, cate; a history of items, max_len 8;
/// one dense value), published from a checkpoint of seeded random weights written to `path`;
/// candidate fields item and cate.
xrec::serve::status make_server(const char* path, std::unique_ptr<xrec::serve::model_server>& out) noexcept;
/// Writes a checkpoint of other weights (seed) to path; false on failure.
bool write_checkpoint(const char* path, std::uint64_t seed) noexcept;
/// The probabilities xrec computes for these rows with the weights of `seed`, without the
/// server (model forward on an infer_ctx): the reference.
std::vector<float> reference(std::uint64_t seed, const xrec::serve::request_view& req) noexcept;

}  // namespace noexcept_test
