// A fresh directory per test case (named after the test file's tag), removed afterwards.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace lossytp::testing {

struct TempDir {
  std::filesystem::path dir;
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    dir = std::filesystem::temp_directory_path() /
          ("lossytp_test_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string str() const { return dir.string(); }
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

}  // namespace lossytp::testing
