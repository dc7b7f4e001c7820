// libFuzzer target: token data files (llm.c header or raw uint16) read by load_corpus with
// --data-format auto, llmc and uint16; and the same bytes as a Megatron index (PREFIX.idx beside
// a fixed 64-byte PREFIX.bin) read by read_indexed_dataset and load_corpus --data-format megatron.
// Each either loads or throws std::runtime_error.
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
  static const std::string prefix = fuzz::temp_path("indexed");
  static const bool bin_written = [] {
    uint8_t bin[64];
    for (int i = 0; i < 64; ++i) bin[i] = static_cast<uint8_t>(i % 2 ? 0 : i);  // uint16 ids < 64
    fuzz::write_file(prefix + ".bin", bin, sizeof bin);
    return true;
  }();
  (void)bin_written;
  fuzz::write_file(prefix + ".idx", data, size);
  try {
    const IndexedDataset d = read_indexed_dataset(prefix);
    if (d.sequence_lengths.size() != d.sequence_pointers.size()) std::abort();
  } catch (const std::runtime_error&) {
  }
  DataOptions opt;
  opt.path = prefix;
  opt.format = "megatron";
  try {
    TokenCorpus c = load_corpus(opt);
    if (c.train.empty() || c.val.empty()) std::abort();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
