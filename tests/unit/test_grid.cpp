// Grid files: expansion (product, seeds, explicit runs), stable ids, and the errors.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "experiments/grid.h"
#include "experiments/train_config.h"

#include "experiments/toml.h"

using namespace lossytp;
namespace fs = std::filesystem;

namespace {
std::string write_grid(const std::string& name, const std::string& text) {
  const fs::path dir = fs::temp_directory_path() / "lossytp-grid-unit";
  fs::create_directories(dir);
  const fs::path p = dir / name;
  std::ofstream(p) << text;
  return p.string();
}
const char* kBase = R"([base]
num-layers = 1
hidden-size = 32
num-attention-heads = 4
seq-length = 16
vocab-size = 64
train-iters = 5
)";
}  // namespace

TEST_CASE("a sweep expands to the Cartesian product with seeds last", "[grid]") {
  const std::string f = write_grid("product.toml", std::string(kBase) + R"(
[sweep]
net = ["exact", "ge:preset=one", "caat:p=0.5+drop:rate=0.01"]
tp = [1, 2]
seeds = [1, 2]
)");
  Grid g = load_grid(f, "/tmp/out");
  REQUIRE(g.runs.size() == 12);
  CHECK(g.runs[0].id == "net=exact_tp=1_seed=1");
  CHECK(g.runs[1].id == "net=exact_tp=1_seed=2");
  CHECK(g.runs[2].id == "net=exact_tp=2_seed=1");
  CHECK(g.runs[4].id == "net=ge-one_tp=1_seed=1");
  CHECK(g.runs[8].id == "net=caat-0.5+drop-0.01_tp=1_seed=1");
  CHECK(g.runs[3].cfg.tp == 2);
  CHECK(g.runs[3].cfg.seed == 2);
  CHECK(g.runs[3].cfg.net == "exact");
  CHECK(g.runs[3].cfg.model.hidden_size == 32);
  CHECK(g.runs[3].cfg.out == "/tmp/out/net=exact_tp=2_seed=2");
  CHECK(g.runs[3].swept["tp"] == 2);
  CHECK(g.runs[3].swept["net"] == "exact");
  CHECK(g.runs[3].cfg.save_interval == 50);  // grids checkpoint by default
  // the same file gives the same ids and hash
  Grid again = load_grid(f, "/tmp/out");
  for (size_t i = 0; i < g.runs.size(); ++i) CHECK(again.runs[i].id == g.runs[i].id);
  CHECK(again.file_hash == g.file_hash);
}

TEST_CASE("[[runs]] add single runs to a sweep", "[grid]") {
  const std::string f = write_grid("runs.toml", std::string(kBase) + R"(
[sweep]
seeds = [1, 2]

[[runs]]
net = "drop:rate=0.1"
lr = 0.01

[[runs]]
net = "ge:preset=default"
)");
  Grid g = load_grid(f, "out");
  REQUIRE(g.runs.size() == 4);
  CHECK(g.runs[0].id == "seed=1");
  CHECK(g.runs[2].id == "lr=0.01_net=drop-0.1");
  CHECK(g.runs[2].cfg.lr == Approx(0.01));
  CHECK(g.runs[3].id == "net=ge-default");
  CHECK(g.runs[3].cfg.lr == Approx(1e-3));  // base default
}

TEST_CASE("long ids are shortened with a hash", "[grid]") {
  const std::string f = write_grid("long.toml", std::string(kBase) + R"(
[sweep]
net = ["caat:p=0.5+ge:p=0.00123456,r=0.2345678,k=0.999999,h=0.1234567+drop:rate=0.0123456789,packet=4096,fill=rescale,mode=endpoint"]
)");
  Grid g = load_grid(f, "out");
  CHECK(g.runs[0].id.size() <= 120);
  CHECK(g.runs[0].id.rfind("net=caat-0.5+ge", 0) == 0);
}

TEST_CASE("bad grid files are rejected with a message naming the problem", "[grid]") {
  auto err = [](const std::string& name, const std::string& text) {
    try {
      load_grid(write_grid(name, text), "out");
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(err("k.toml", std::string(kBase) + "bogus-key = 3\n"), Catch::Contains("unknown key 'bogus-key'"));
  CHECK_THAT(err("t.toml", std::string(kBase) + "[swept]\nlr = [1]\n"), Catch::Contains("unknown key or table 'swept'"));
  CHECK_THAT(err("e.toml", std::string(kBase) + "[sweep]\nlr = []\n"), Catch::Contains("empty sweep"));
  CHECK_THAT(err("a.toml", std::string(kBase) + "[sweep]\nlr = 0.1\n"), Catch::Contains("must be an array"));
  CHECK_THAT(err("n.toml", std::string(kBase)), Catch::Contains("no runs"));
  CHECK_THAT(err("s.toml", std::string(kBase) + "[sweep]\nnet = [\"gee\"]\n"), Catch::Contains("unknown model 'gee'"));
  CHECK_THAT(err("h.toml", std::string(kBase) + "[sweep]\ntp = [3]\n"), Catch::Contains("not divisible"));
  CHECK_THAT(err("o.toml", std::string(kBase) + "out = \"x\"\n[sweep]\nseeds=[1]\n"), Catch::Contains("set by the grid runner"));
  CHECK_THAT(err("d.toml", std::string(kBase) + "[sweep]\nseeds=[1, 1]\n"), Catch::Contains("two runs have the id"));
  CHECK_THAT(err("x.toml", "[base\n"), Catch::Contains("x.toml:1"));
  CHECK_THAT(err("missing.toml", ""), Catch::Contains("no runs"));
  CHECK_THROWS_WITH(load_grid("/nonexistent/grid.toml", "out"), Catch::Contains("cannot read grid file"));
}

// Found by tests/fuzz/fuzz_config: a malformed table header broke a precondition asserted inside
// toml++ 3.3 (experiments/toml.h), which aborted builds with assertions on (Debug, sanitizers)
// instead of reporting the error. These inputs must give the file, line and column.
TEST_CASE("malformed table headers in a grid or config file are errors, not aborts", "[grid]") {
  const std::string f = write_grid("header.toml", std::string("[base]\nmodel = \"gpt-tiny\"\n"
                                                              "train-iters = 0\n[[\x17uns]]\nnet = \"exact\"\n"));
  CHECK_THROWS_WITH(load_grid(f, "out"), Catch::StartsWith(f + ":4:3: "));
  for (const char* text : {"[/s[s", "[[[1]]]", "[[[a]]", "[[=", "a = 1\n[ /]\n"})
    CHECK_THROWS_AS(parse_toml_text(text, "x.toml"), std::invalid_argument);
  CHECK(parse_toml_text("a = 1\r\n\tb = \"\xc3\xa9\"\n", "x.toml").size() == 2);  // CRLF, tab, UTF-8
}

// Found by tests/fuzz/fuzz_config: a non-ASCII letter in a bare key ("train\u0456ters") reached
// TOML_UNREACHABLE inside toml++ 3.3 (undefined behaviour in every build). Such characters are
// refused first, naming where; in strings and comments they stay valid.
TEST_CASE("a non-ASCII character outside strings and comments is refused, naming where", "[grid]") {
  CHECK_THROWS_WITH(parse_toml_text("a = 1\ntrain\xd1\x96ters = 5\n", "x.toml"),
                    Catch::StartsWith("x.toml:2:6: a non-ASCII character"));
  CHECK_THROWS_WITH(parse_toml_text("mod\xc3\xa8l = 1", "x.toml"), Catch::StartsWith("x.toml:1:4: "));
  const auto t = parse_toml_text("# caf\xc3\xa9\n"
                                 "a = \"caf\xc3\xa9 \\\" \xc3\xa9\"  # \xc3\xa9\n"
                                 "b = 'caf\xc3\xa9'\n"
                                 "c = \"\"\"x\n\xc3\xa9 \"\" \\\"\"\" \xc3\xa9\"\"\"\n"
                                 "d = '''\xc3\xa9\n' '' \xc3\xa9'''\n"
                                 "\"k\xc3\xa9\" = 1\n",
                                 "x.toml");
  CHECK(t.size() == 5);
  CHECK(t["a"].value<std::string>() == "caf\xc3\xa9 \" \xc3\xa9");
}
