// Multiple-choice evaluation: reading and checking the task file, and the log-likelihood of
// each choice from the model's per-token losses.
#include "experiments/eval_task.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "models/gpt.h"

namespace lossytp {

namespace {

using nlohmann::json;

[[noreturn]] void fail_at(const std::string& path, int line, const std::string& what) {
  throw std::invalid_argument("eval task " + path + ":" + std::to_string(line) + ": " + what);
}

// A JSON array of token ids, each an integer in [0, vocab).
std::vector<int32_t> token_list(const json& v, const std::string& name, int vocab,
                                const std::string& path, int line) {
  if (!v.is_array()) fail_at(path, line, name + " is not a list of token ids");
  std::vector<int32_t> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const json& t = v[i];
    if (!t.is_number_integer())
      fail_at(path, line, name + "[" + std::to_string(i) + "] = " + t.dump() + " is not an integer token id");
    const bool in_range = t.is_number_unsigned() ? t.get<uint64_t>() < static_cast<uint64_t>(vocab)
                                                 : t.get<int64_t>() >= 0 && t.get<int64_t>() < vocab;
    if (!in_range)
      fail_at(path, line, name + "[" + std::to_string(i) + "] = " + t.dump() +
                              " is outside the model's vocabulary [0, " + std::to_string(vocab) + ")");
    out.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  return out;
}

// nlohmann's "[json.exception.parse_error.101] parse error at line 1, column 9: ..." without
// its prefix (the line is the file's, named already).
std::string json_error(const std::exception& e) {
  std::string m = e.what();
  if (auto p = m.find("] "); m.rfind("[json.exception", 0) == 0 && p != std::string::npos) m = m.substr(p + 2);
  if (m.rfind("parse error at line 1, ", 0) == 0) m = "parse error at " + m.substr(23);
  return m;
}

}  // namespace

size_t EvalTask::num_sequences() const {
  size_t n = 0;
  for (const auto& e : examples) n += e.choices.size();
  return n;
}

EvalTask load_eval_task(const std::string& path, int vocab_size, int seq_length) {
  EvalTask task;
  task.path = path;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument("eval task " + path + ": cannot be read (missing or unreadable)");
  std::string text;
  int line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;  // blank line
    json j;
    try {
      j = json::parse(text);
    } catch (const std::exception& e) {
      fail_at(path, line, "not valid JSON: " + json_error(e));
    }
    if (!j.is_object()) fail_at(path, line, "not a JSON object {\"context\": [...], \"choices\": [[...], ...], \"label\": i}");
    for (const char* key : {"context", "choices", "label"})
      if (!j.contains(key)) fail_at(path, line, std::string("no \"") + key + "\" key");
    TaskExample ex;
    ex.line = line;
    ex.context = token_list(j["context"], "context", vocab_size, path, line);
    // Something to condition on: the first choice token is predicted from the context.
    if (ex.context.empty()) fail_at(path, line, "the context is empty (it needs at least one token)");
    const json& ch = j["choices"];
    if (!ch.is_array()) fail_at(path, line, "choices is not a list of token-id lists");
    if (ch.size() < 2) fail_at(path, line, "choices has " + std::to_string(ch.size()) + " entries; at least 2 are needed");
    for (size_t c = 0; c < ch.size(); ++c) {
      const std::string name = "choices[" + std::to_string(c) + "]";
      ex.choices.push_back(token_list(ch[c], name, vocab_size, path, line));
      const size_t len = ex.choices.back().size();
      if (len == 0) fail_at(path, line, name + " is empty");
      if (len > static_cast<size_t>(seq_length))
        fail_at(path, line, name + " has " + std::to_string(len) + " tokens, more than --seq-length " +
                                std::to_string(seq_length) + " (the model sees at most seq-length inputs)");
    }
    const json& lb = j["label"];
    if (!lb.is_number_integer()) fail_at(path, line, "label = " + lb.dump() + " is not an integer");
    const bool in_range = lb.is_number_unsigned() ? lb.get<uint64_t>() < ch.size()
                                                  : lb.get<int64_t>() >= 0 && lb.get<int64_t>() < static_cast<int64_t>(ch.size());
    if (!in_range)
      fail_at(path, line, "label " + lb.dump() + " is out of range for " + std::to_string(ch.size()) +
                              " choices (0 to " + std::to_string(ch.size() - 1) + ")");
    ex.label = static_cast<int>(lb.get<int64_t>());
    // No choice keeps more than seq_length context tokens (each has >= 1 token).
    if (ex.context.size() > static_cast<size_t>(seq_length))
      ex.context.erase(ex.context.begin(), ex.context.end() - seq_length);
    task.examples.push_back(std::move(ex));
  }
  if (in.bad()) throw std::invalid_argument("eval task " + path + ": read error");
  if (task.examples.empty()) throw std::invalid_argument("eval task " + path + ": no examples (the file is empty)");
  return task;
}

std::vector<std::vector<double>> choice_log_likelihoods(const EvalTask& task, GPTModel& model,
                                                        int micro_batch_size, Comm& tp,
                                                        size_t first, size_t last) {
  const int T = model.config().seq_length, B = micro_batch_size;
  std::vector<std::vector<double>> ll(last - first);
  for (size_t e = first; e < last; ++e) ll[e - first].assign(task.examples[e].choices.size(), 0.0);
  // The (example, choice) pairs in order; one row of a micro-batch each.
  struct Row { size_t example; size_t choice; int start, count; };  // target positions [start, start + count)
  std::vector<Row> rows;
  for (size_t e = first; e < last; ++e)
    for (size_t c = 0; c < task.examples[e].choices.size(); ++c) rows.push_back({e, c, 0, 0});
  std::vector<int32_t> x(static_cast<size_t>(B) * T), y(x.size());
  std::vector<float> losses(x.size());
  for (size_t r0 = 0; r0 < rows.size(); r0 += B) {
    std::fill(x.begin(), x.end(), 0);
    std::fill(y.begin(), y.end(), 0);
    for (int b = 0; b < B && r0 + b < rows.size(); ++b) {
      Row& row = rows[r0 + b];
      const TaskExample& ex = task.examples[row.example];
      const std::vector<int32_t>& choice = ex.choices[row.choice];
      const int nc = static_cast<int>(choice.size());
      // context truncated from its left so that context + choice is at most T + 1 tokens
      const int keep = std::min(static_cast<int>(ex.context.size()), T + 1 - nc);
      std::vector<int32_t> seq(ex.context.end() - keep, ex.context.end());
      seq.insert(seq.end(), choice.begin(), choice.end());
      const int n = static_cast<int>(seq.size()) - 1;  // inputs seq[:-1], targets seq[1:]
      std::copy(seq.begin(), seq.end() - 1, x.begin() + static_cast<size_t>(b) * T);
      std::copy(seq.begin() + 1, seq.end(), y.begin() + static_cast<size_t>(b) * T);
      // the choice's tokens are the last nc targets
      row.start = n - nc;
      row.count = nc;
    }
    // Padded positions follow the real ones (causal attention: they change nothing before them)
    // and their losses are not read.
    model.step(x.data(), y.data(), B, T, tp, false, 0.0f, losses.data());
    for (int b = 0; b < B && r0 + b < rows.size(); ++b) {
      const Row& row = rows[r0 + b];
      double sum = 0.0;
      for (int t = row.start; t < row.start + row.count; ++t) sum += losses[static_cast<size_t>(b) * T + t];
      ll[row.example - first][row.choice] = -sum;
    }
  }
  return ll;
}

int argmax_choice(const std::vector<double>& scores) {
  int best = -1;
  for (int i = 0; i < static_cast<int>(scores.size()); ++i)
    if (!std::isnan(scores[i]) && (best < 0 || scores[i] > scores[best])) best = i;
  return best;  // -1 when every score is NaN: counted wrong
}

TaskScores evaluate_task(const EvalTask& task, GPTModel& model, int micro_batch_size, Comm& tp,
                         Backend& dp, int dp_rank, int dp_size) {
  const size_t n = task.examples.size();
  const size_t first = n * dp_rank / dp_size, last = n * (dp_rank + 1) / dp_size;
  const auto ll = choice_log_likelihoods(task, model, micro_batch_size, tp, first, last);
  double correct[2] = {0, 0};  // acc, acc_norm
  for (size_t e = first; e < last; ++e) {
    const TaskExample& ex = task.examples[e];
    const std::vector<double>& raw = ll[e - first];
    std::vector<double> norm(raw.size());
    for (size_t c = 0; c < raw.size(); ++c) norm[c] = raw[c] / static_cast<double>(ex.choices[c].size());
    correct[0] += argmax_choice(raw) == ex.label;
    correct[1] += argmax_choice(norm) == ex.label;
  }
  // Every TP rank computed the same shares: sum over DP only.
  dp.all_reduce_f64(correct, 2, ReduceOp::Sum);
  TaskScores s;
  s.n = static_cast<int64_t>(n);
  s.acc = correct[0] / static_cast<double>(n);
  s.acc_norm = correct[1] / static_cast<double>(n);
  return s;
}

}  // namespace lossytp
