// libFuzzer target: token data files (llm.c header or raw uint16) read by load_corpus with
// --data-format auto, llmc and uint16. Each either loads or throws std::runtime_error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "experiments/dataset.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lossytp;
  static const std::string path = fuzz::temp_path("tokens.bin");
  fuzz::write_file(path, data, size);
  for (const char* format : {"auto", "llmc", "uint16"}) {
    DataOptions opt;
    opt.path = path;
    opt.format = format;
    try {
      TokenCorpus c = load_corpus(opt);
      if (c.train.empty() || c.val.empty() || c.vocab_size <= 0) std::abort();
    } catch (const std::runtime_error&) {
    }
  }
  return 0;
}
