// Token data for training: the built-in synthetic Markov corpus (the default, with an exactly
// known entropy floor) and files: byte-level text, nanoGPT raw uint16, llm.c headered .bin.
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
  std::string format;          // "synthetic", "text", "uint16", "llmc"
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
  std::string format = "auto"; // auto|text|uint16|llmc
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

// Sample `sample` of iteration `iteration`: x = split[o .. o+T), y = split[o+1 .. o+T+1) with
// offset o drawn by Philox from (seed, stream, iteration, sample). stream 0 = train, 1 = eval.
void fill_sequence(const std::vector<int32_t>& split, uint64_t seed, uint64_t stream,
                   int64_t iteration, int64_t sample, int T, int32_t* x, int32_t* y);

}  // namespace lossytp
