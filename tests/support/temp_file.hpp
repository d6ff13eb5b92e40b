#pragma once
// A file with given bytes in the temp folder, removed when the object goes: what the reader,
// schema and stream tests feed their readers. Names carry the process id and a counter, so
// files of different test cases never collide.
#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <unistd.h>

namespace xrec_test {

struct temp_file {
    std::filesystem::path path;
    temp_file(const std::string& name, const std::string& bytes) {
        static std::atomic<int> counter{0};
        path = std::filesystem::temp_directory_path() /
               ("xrec_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + name);
        std::ofstream(path, std::ios::binary) << bytes;
    }
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;
    ~temp_file() {
        std::error_code ec;
        std::filesystem::remove(path, ec);
    }
    std::string str() const { return path.string(); }
};

}  // namespace xrec_test
