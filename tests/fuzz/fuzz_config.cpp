// libFuzzer target: a TOML text as a `train --config` file (expand_config_file) and as a grid
// file (load_grid). Each either succeeds or throws std::invalid_argument naming the problem.
#include <CLI/CLI.hpp>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "experiments/grid.h"
#include "experiments/train_config.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lossytp;
  static const std::string path = fuzz::temp_path("config.toml");
  fuzz::write_file(path, data, size);
  try {
    CLI::App app;
    TrainOptions opts;
    add_train_options(app, opts);
    expand_config_file({"--config", path}, app);
  } catch (const std::invalid_argument&) {
  }
  try {
    load_grid(path, fuzz::temp_path("out"));
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
