// Downstream accuracy (--eval-task FILE.jsonl): multiple-choice examples of token ids, scored as
// lm-evaluation-harness scores them: the log-likelihood of each choice given the context, the
// prediction the choice with the largest one ("acc"), or with the largest one per choice token
// ("acc_norm"; the harness divides by the choice's length in bytes, which token ids alone do not
// give). docs/experiments.md describes the file format.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sim/backend.h"
#include "sim/comm.h"

namespace lossytp {

class GPTModel;

struct TaskExample {
  std::vector<int32_t> context;               // its last seq_length tokens at most
  std::vector<std::vector<int32_t>> choices;  // >= 2, each non-empty
  int label = 0;
  int line = 0;  // 1-based line of the file, for messages
};

struct EvalTask {
  std::string path;
  std::vector<TaskExample> examples;
  size_t num_sequences() const;  // (example, choice) pairs
};

// Reads and checks a task file: one JSON object per line {"context": [ids], "choices": [[ids],
// ...], "label": i} (other keys ignored, blank lines skipped). Throws std::invalid_argument
// "eval task FILE:LINE: ..." for a JSON syntax error, a missing key or one of the wrong type, an
// empty context, fewer than 2 choices, an empty choice, a label outside [0, choices), a token id
// outside [0, vocab_size), or a choice longer than seq_length tokens; and for a missing or empty
// file. A context + choice longer than seq_length + 1 tokens loses context tokens from its left
// (the model sees at most seq_length inputs).
EvalTask load_eval_task(const std::string& path, int vocab_size, int seq_length);

// The log-likelihood (natural log) of every choice of examples [first, last) of the task, given
// its context: sequence = context + choice, inputs = sequence[:-1], targets = sequence[1:],
// minus the sum of the token losses at the choice's positions. The sequences go one per row
// into micro-batches of micro_batch_size x seq_length (padded with token 0, whose losses are
// ignored) through the model's forward, and so through `tp` and its network model. Every TP rank
// of the group must call it with the same arguments.
std::vector<std::vector<double>> choice_log_likelihoods(const EvalTask& task, GPTModel& model,
                                                        int micro_batch_size, Comm& tp,
                                                        size_t first, size_t last);

// The choice with the largest score (the first among equals; NaN never wins).
int argmax_choice(const std::vector<double>& scores);

struct TaskScores {
  double acc = 0, acc_norm = 0;  // fractions of the examples predicted right
  int64_t n = 0;                 // examples
};

// The task's accuracy over every example: each DP rank scores a contiguous share of the
// examples and the counts are summed over `dp` (host doubles, all_reduce_f64). Every rank of the
// run calls it (a rank with no share still takes part in the sum).
TaskScores evaluate_task(const EvalTask& task, GPTModel& model, int micro_batch_size, Comm& tp,
                         Backend& dp, int dp_rank, int dp_size);

}  // namespace lossytp
