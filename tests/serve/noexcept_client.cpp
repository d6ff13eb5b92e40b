// Built with -fno-exceptions: an engine's code using xrec's serving API (serve/api.hpp) and
// nothing else of xrec. It must compile without exceptions (the build proves it) and get
// every answer, good or bad, as a status. A plain main: no test framework in this unit.
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#error "noexcept_client.cpp must be compiled with -fno-exceptions"
#endif
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <unistd.h>

#include "noexcept_api.hpp"

namespace {
int failures = 0;
void check(bool ok, const char* what, const char* detail = "") {
    if (!ok) {
        ++failures;
        std::printf("FAILED: %s %s\n", what, detail);
    } else {
        std::printf("ok: %s\n", what);
    }
}
bool contains(const char* msg, const char* part) { return std::strstr(msg, part) != nullptr; }
}  // namespace

int main() {
    using namespace xrec::serve;
    const std::string dir = "/tmp/xrec_noexcept_" + std::to_string(::getpid());
    const std::string ck1 = dir + "_1.safetensors", ck2 = dir + "_2.safetensors";
    std::unique_ptr<model_server> m;
    status st = noexcept_test::make_server(ck1.c_str(), m);
    check(st.ok() && m && m->version() == 1, "make_server publishes the checkpoint", st.message);
    if (!m) return 1;

    model_server::session* s = nullptr;
    st = m->open_session(&s);
    check(st.ok() && s, "open_session", st.message);

    // Two rows: user, item, cate (global ids: user 0..29, item 30..79, cate 80..85); history of items.
    std::int64_t sparse[6] = {3, 41, 82, 17, 77, 80};
    float dense[2] = {0.25f, -1.5f};
    std::int64_t hist[5] = {31, 35, 60, 44, 79};
    std::int64_t offs[3] = {0, 3, 5};
    sequence_view seq{hist, 5, offs, nullptr};
    request_view req{2, sparse, 6, dense, 2, &seq, 1};
    float out[32] = {};
    st = m->predict(s, req, out, 32);
    check(st.ok(), "predict", st.message);
    const auto ref = noexcept_test::reference(1, req);
    check(ref.size() == 2 && std::abs(out[0] - ref[0]) < 1e-6f && std::abs(out[1] - ref[1]) < 1e-6f,
          "predict equals the model's forward");

    // rank: user row 0 with 3 candidates (item, cate); the second's item out of range (OOV row).
    std::int64_t cand[6] = {41, 82, 9999, 81, 77, 80};
    request_view user{1, sparse, 3, dense, 1, &seq, 1};
    std::int64_t offs1[2] = {0, 3};
    sequence_view seq1{hist, 3, offs1, nullptr};
    user.sequences = &seq1;
    st = m->rank(s, user, cand, 3, 2, out, 32);
    check(st.ok(), "rank", st.message);
    check(std::abs(out[0] - ref[0]) < 1e-5f, "rank's first candidate is predict's first row");

    // Bad requests answer by status.
    dense[1] = std::numeric_limits<float>::quiet_NaN();
    st = m->predict(s, req, out, 32);
    check(st.code == status_code::invalid_argument && contains(st.message, "dense field 'price' is NaN"), "NaN refused",
          st.message);
    dense[1] = -1.5f;
    req.sparse_len = 5;
    st = m->predict(s, req, out, 32);
    check(st.code == status_code::invalid_argument && contains(st.message, "sparse ids"), "wrong field count refused",
          st.message);
    req.sparse_len = 6;
    st = m->predict(s, req, out, 1);
    check(st.code == status_code::invalid_argument && contains(st.message, "output has 1 values"), "short output refused",
          st.message);
    st = m->rank(s, req, cand, 3, 2, out, 32);
    check(st.code == status_code::invalid_argument && contains(st.message, "not 1"), "two-row user refused", st.message);
    st = m->predict(nullptr, req, out, 32);
    check(st.code == status_code::invalid_argument, "no session refused", st.message);

    // Publishing: a missing file and a bad file are refused, the live weights keep serving.
    st = m->publish_checkpoint((dir + "_missing.safetensors").c_str());
    check(st.code == status_code::not_found, "missing checkpoint: not_found", st.message);
    FILE* f = std::fopen(ck2.c_str(), "wb");
    std::fputs("not a checkpoint at all", f);
    std::fclose(f);
    st = m->publish_checkpoint(ck2.c_str());
    check(st.code == status_code::data_loss, "corrupt checkpoint: data_loss", st.message);
    check(m->version() == 1, "still version 1");
    // Other weights hot-swap in.
    check(noexcept_test::write_checkpoint(ck2.c_str(), 2), "write other weights");
    st = m->publish_checkpoint(ck2.c_str());
    check(st.ok() && m->version() == 2, "publish other weights", st.message);
    st = m->predict(s, req, out, 32);
    const auto ref2 = noexcept_test::reference(2, req);
    check(st.ok() && ref2.size() == 2 && std::abs(out[0] - ref2[0]) < 1e-6f, "serves the new weights");

    m->close_session(s);
    std::remove(ck1.c_str());
    std::remove(ck2.c_str());
    std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
    return failures ? 1 : 0;
}
