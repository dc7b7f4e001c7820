// libFuzzer target: the input as rank 0's checkpoint file of iteration 5 (header, size and
// checksum checks): verify_checkpoint_file reports a problem or ok, find_resume_point agrees,
// and neither crashes nor throws.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "experiments/checkpoint.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lossytp;
  static const std::string run = [] {
    const std::string r = fuzz::temp_path("run");
    std::filesystem::create_directories(r + "/checkpoint");
    std::ofstream(r + "/checkpoint/latest") << 5 << "\n";
    return r;
  }();
  fuzz::write_file(checkpoint_file(run, 0, 5), data, size);
  const CheckpointCheck c = verify_checkpoint_file(run, 0, 5);
  if (!c.ok && c.problem.empty()) std::abort();
  const ResumePoint rp = find_resume_point(run, 1);
  if ((rp.iteration == 5) != c.ok) std::abort();
  return 0;
}
