// Token data for training: the built-in synthetic Markov corpus (the default, with an exactly
// known entropy floor) and files: byte-level text, nanoGPT raw uint16, llm.c headered .bin
// (uint16 v1 and uint32 v7), Megatron indexed datasets (PREFIX.bin + PREFIX.idx), and optional
// loss masks (one uint8 per token) for supervised fine-tuning. docs/data.md has the formats.
// Batches are a pure function of (seed, iteration, sample index), so the tokens a run sees do
// not depend on TP, DP only picks which samples of the global batch a rank trains on, and a
// resumed run sees the same data as an uninterrupted one.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lossytp {

struct TokenCorpus {
  std::vector<int32_t> train;  // training split
  std::vector<int32_t> val;    // held-out split for eval
  int vocab_size = 0;          // smallest vocab that holds every token (text: 256)
  std::string source;          // "synthetic-markov" or the file path(s)
  std::string format;          // "synthetic", "text", "uint16", "llmc", "megatron"
  // Loss masks aligned with train / val (1: the token is a target in the loss, 0: ignored);
  // empty: every token counts. Cut by the same eval split as the tokens.
  std::vector<uint8_t> train_mask, val_mask;
  std::string train_file, val_file;  // the files the splits come from (empty: synthetic)
  // Entropy rate of the source in nats/token when known exactly (synthetic corpus only): the
  // lowest achievable expected cross-entropy, a floor for every loss curve.
  std::optional<double> entropy_floor;
};

// A stationary first-order Markov source over `vocab` tokens: each token has `branching`
// successors with random probabilities, one of them (t+1) mod vocab so the chain is irreducible,
// and a self-loop-free random rest so it is aperiodic in practice.
struct MarkovSource {
  int vocab = 0;
  int branching = 0;
  std::vector<int32_t> next;   // [vocab * branching] successor tokens
  std::vector<double> prob;    // [vocab * branching] their probabilities (rows sum to 1)
  std::vector<double> stationary;  // [vocab] stationary distribution (power iteration, 1e-13)

  static MarkovSource random(int vocab, int branching, uint64_t seed);
  // Exact entropy rate sum_s pi(s) H(P(.|s)) in nats/token.
  double entropy_rate() const;
  // A sample path of n tokens, started from the stationary distribution.
  std::vector<int32_t> sample(size_t n, uint64_t seed) const;
};

struct DataOptions {
  std::string path;            // empty: synthetic corpus
  std::string eval_path;       // optional separate held-out file (nanoGPT val.bin, llm.c _val.bin)
  std::string format = "auto"; // auto|text|uint16|llmc|megatron
  std::string loss_mask;       // optional uint8 mask file for `path` (split with it)
  std::string eval_loss_mask;  // optional uint8 mask file for `eval_path`
  double eval_fraction = 0.1;  // held-out tail when no eval_path is given
  int vocab_size = 4096;       // synthetic corpus vocab (the model's)
  uint64_t seed = 1234;        // synthetic corpus seed
  size_t synthetic_train_tokens = 1 << 21;
  size_t synthetic_val_tokens = 1 << 17;
  int synthetic_branching = 16;
};

// Loads or generates the corpus. Throws std::runtime_error with a message naming the file and
// the problem (missing, unreadable, empty, bad llm.c header, odd byte count for uint16,
// too few tokens for one sequence is checked by the caller via check_sequences()).
TokenCorpus load_corpus(const DataOptions& opt);

// Throws when a split is too short to cut one sequence of seq_len + 1 tokens.
void check_sequences(const TokenCorpus& c, int seq_len);

// Throws when a token id is >= vocab_size, naming the file, the id, its position and the vocab.
void check_vocab(const TokenCorpus& c, int vocab_size);

// A Megatron indexed dataset (megatron/core/datasets/indexed_dataset.py, version 1, without
// the multimodal modes): PREFIX.idx describes sequences of tokens stored back to back in
// PREFIX.bin. `prefix` may also be given as PREFIX.bin or PREFIX.idx. Throws naming the file
// and the problem (magic, version, dtype code, sizes, pointers, negative tokens).
struct IndexedDataset {
  int dtype_code = 0;                       // 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16
  std::vector<int32_t> sequence_lengths;    // [S] tokens
  std::vector<int64_t> sequence_pointers;   // [S] byte offsets into .bin
  std::vector<int64_t> document_indices;    // [D] 0, ..., S
  std::vector<int32_t> tokens;              // every sequence, concatenated in order
};
IndexedDataset read_indexed_dataset(const std::string& prefix);
// The prefix a Megatron path names (strips a trailing .bin / .idx).
std::string megatron_prefix(const std::string& path);

// Offset o of the window of sample `sample` of iteration `iteration` in a split of n tokens:
// drawn by Philox from (seed, stream, iteration, sample). stream 0 = train, 1 = eval.
size_t sequence_offset(size_t n, uint64_t seed, uint64_t stream, int64_t iteration,
                       int64_t sample, int T);

// Sample `sample` of iteration `iteration`: x = split[o .. o+T), y = split[o+1 .. o+T+1) with
// offset o = sequence_offset(...).
void fill_sequence(const std::vector<int32_t>& split, uint64_t seed, uint64_t stream,
                   int64_t iteration, int64_t sample, int T, int32_t* x, int32_t* y);
// The same window with a loss mask aligned with `split` (empty: none): y[t] = -1 (an ignored
// target) where mask[o+1+t] == 0.
void fill_sequence(const std::vector<int32_t>& split, const std::vector<uint8_t>& mask,
                   uint64_t seed, uint64_t stream, int64_t iteration, int64_t sample, int T,
                   int32_t* x, int32_t* y);
// Targets that count in the loss over samples [0, samples) of an iteration (a whole global
// batch): samples * T without a mask. Every rank computes it alone (batches are a pure function
// of their indices), so normalising by it needs no collective.
int64_t count_targets(size_t n, const std::vector<uint8_t>& mask, uint64_t seed, uint64_t stream,
                      int64_t iteration, int64_t samples, int T);

}  // namespace lossytp
