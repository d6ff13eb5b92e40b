#pragma once
// Shared helpers of the libFuzzer targets (tests/fuzz/README.md).
//
// The data readers take a path and read the file in chunks, so a target hands them its
// input through an anonymous in-memory file (memfd_create): written once per input,
// opened by the reader as "/proc/self/fd/<n>" (a fresh open file description, so every
// open reads from byte 0). No disk, no temporary names, one descriptor for the whole run.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace xrec_fuzz {

/// One memfd reused for every input; path() names it for fopen / std::ifstream.
class memfd_file {
public:
    memfd_file() : fd_(::memfd_create("xrec_fuzz_input", MFD_CLOEXEC)) {
        if (fd_ < 0) {
            std::perror("xrec_fuzz: memfd_create");
            std::abort();  // the harness itself is broken: not a finding of the library
        }
        path_ = "/proc/self/fd/" + std::to_string(fd_);
    }
    memfd_file(const memfd_file&) = delete;
    memfd_file& operator=(const memfd_file&) = delete;
    ~memfd_file() { ::close(fd_); }

    /// Replaces the file's contents with [data, data + n) and returns its path.
    const std::string& write(const std::uint8_t* data, std::size_t n) {
        if (::ftruncate(fd_, 0) != 0) std::abort();
        std::size_t done = 0;
        while (done < n) {
            const ssize_t w = ::pwrite(fd_, data + done, n - done, static_cast<off_t>(done));
            if (w <= 0) std::abort();
            done += static_cast<std::size_t>(w);
        }
        return path_;
    }
    const std::string& path() const noexcept { return path_; }

private:
    int fd_;
    std::string path_;
};

/// The process-wide memfd (targets are single-threaded; libFuzzer calls them one at a time).
inline memfd_file& input_file() {
    static memfd_file f;
    return f;
}

/// Takes the first byte of the input as the target's option bits (0 for an empty input).
inline std::uint8_t take_selector(const std::uint8_t*& data, std::size_t& size) {
    if (size == 0) return 0;
    const std::uint8_t s = data[0];
    ++data;
    --size;
    return s;
}

/// Keeps a value alive so the optimiser cannot drop the reads that produced it.
template <class T>
inline void keep(const T& v) {
    asm volatile("" : : "g"(&v) : "memory");
}

}  // namespace xrec_fuzz
