// --eval-task files: what a valid line gives (context truncation, blank lines, extra keys) and
// that every malformed line is refused naming file:line and the problem. The log-likelihoods
// themselves are checked against the model in tests/mpi/test_eval_task.cpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <limits>
#include <string>

#include "common/temp_dir.h"
#include "experiments/eval_task.h"

using namespace lossytp;
using namespace lossytp::testing;

namespace {

std::string write(const TempDir& d, const std::string& text) {
  const std::string path = d.file("task.jsonl");
  std::ofstream(path) << text;
  return path;
}

// The error load_eval_task gives for a file of `text` (vocab 50, seq-length 8).
std::string error_of(const std::string& text) {
  TempDir d("eval_task");
  const std::string path = write(d, text);
  try {
    load_eval_task(path, 50, 8);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("a valid task file: blank lines, extra keys, context truncated to seq-length", "[eval_task]") {
  TempDir d("eval_task");
  const std::string path = write(d,
      "{\"context\": [1, 2, 3], \"choices\": [[4], [5, 6]], \"label\": 1, \"id\": \"x\"}\n"
      "\n   \r\n"
      "{\"label\": 0, \"choices\": [[7, 8, 9, 10, 11, 12, 13, 14], [1], [2]], "
      "\"context\": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}\r\n");
  const EvalTask t = load_eval_task(path, 50, 8);
  REQUIRE(t.examples.size() == 2);
  CHECK(t.num_sequences() == 5);
  CHECK(t.examples[0].context == std::vector<int32_t>{1, 2, 3});
  CHECK(t.examples[0].choices[1] == std::vector<int32_t>{5, 6});
  CHECK(t.examples[0].label == 1);
  CHECK(t.examples[0].line == 1);
  CHECK(t.examples[1].line == 4);
  // at most seq-length context tokens are ever used (a choice has >= 1 token)
  CHECK(t.examples[1].context == std::vector<int32_t>{4, 5, 6, 7, 8, 9, 10, 11});
  // a choice of exactly seq-length tokens is fine
  CHECK(t.examples[1].choices[0].size() == 8);
}

TEST_CASE("malformed task lines are refused naming file:line and the problem", "[eval_task]") {
  const std::string ok = "{\"context\": [1], \"choices\": [[2], [3]], \"label\": 0}\n";
  struct Case { std::string line, want; };
  const Case cases[] = {
      {"{\"context\": [1], \"choices\": [[2], [3]], \"label\": 0", "not valid JSON"},
      {"[1, 2]", "not a JSON object"},
      {"{\"choices\": [[2], [3]], \"label\": 0}", "no \"context\" key"},
      {"{\"context\": [1], \"label\": 0}", "no \"choices\" key"},
      {"{\"context\": [1], \"choices\": [[2], [3]]}", "no \"label\" key"},
      {"{\"context\": \"abc\", \"choices\": [[2], [3]], \"label\": 0}", "context is not a list of token ids"},
      {"{\"context\": [1.5], \"choices\": [[2], [3]], \"label\": 0}", "context[0] = 1.5 is not an integer token id"},
      {"{\"context\": [], \"choices\": [[2], [3]], \"label\": 0}", "the context is empty"},
      {"{\"context\": [1], \"choices\": [[2]], \"label\": 0}", "choices has 1 entries; at least 2"},
      {"{\"context\": [1], \"choices\": [2, 3], \"label\": 0}", "choices[0] is not a list of token ids"},
      {"{\"context\": [1], \"choices\": [[2], []], \"label\": 0}", "choices[1] is empty"},
      {"{\"context\": [1], \"choices\": [[2], [3]], \"label\": 2}", "label 2 is out of range for 2 choices"},
      {"{\"context\": [1], \"choices\": [[2], [3]], \"label\": -1}", "label -1 is out of range"},
      {"{\"context\": [1], \"choices\": [[2], [3]], \"label\": \"0\"}", "label = \"0\" is not an integer"},
      {"{\"context\": [1], \"choices\": [[2], [3]], \"label\": true}", "label = true is not an integer"},
      {"{\"context\": [50], \"choices\": [[2], [3]], \"label\": 0}",
       "context[0] = 50 is outside the model's vocabulary [0, 50)"},
      {"{\"context\": [1], \"choices\": [[2], [3, -4]], \"label\": 0}", "choices[1][1] = -4 is outside"},
      {"{\"context\": [1], \"choices\": [[2], [3, 99999999999999999999]], \"label\": 0}", "choices[1][1] = "},
      {"{\"context\": [1], \"choices\": [[1, 2, 3, 4, 5, 6, 7, 8, 9], [3]], \"label\": 0}",
       "choices[0] has 9 tokens, more than --seq-length 8"},
  };
  for (const Case& c : cases) {
    INFO(c.line);
    const std::string msg = error_of(ok + "\n" + c.line + "\n" + ok);
    CHECK_THAT(msg, Catch::Contains("task.jsonl:3: ") && Catch::Contains(c.want));
  }
  CHECK_THAT(error_of(""), Catch::Contains("task.jsonl: no examples"));
  CHECK_THAT(error_of("\n\n"), Catch::Contains("no examples"));
  try {
    load_eval_task("/nonexistent/task.jsonl", 50, 8);
    FAIL("no error");
  } catch (const std::invalid_argument& e) {
    CHECK_THAT(e.what(), Catch::Contains("/nonexistent/task.jsonl: cannot be read"));
  }
}

TEST_CASE("argmax_choice: first among equals, NaN never wins", "[eval_task]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(argmax_choice({-3.0, -1.0, -2.0}) == 1);
  CHECK(argmax_choice({-1.0, -1.0}) == 0);
  CHECK(argmax_choice({nan, -5.0, nan}) == 1);
  CHECK(argmax_choice({nan, nan}) == -1);
}
