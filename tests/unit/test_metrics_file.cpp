// metrics.h5: round trip through HDF5, readability by h5dump and h5py, atomic flushes,
// truncation on resume, and errors that name the file.
#include <catch2/catch.hpp>

#include "common/temp_dir.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "experiments/metrics_file.h"

using namespace lossytp;
namespace fs = std::filesystem;

namespace {

struct TempDir : testing::TempDir {
  TempDir() : testing::TempDir("metrics") {}
};

// No "<something>.tmp" left in the directory.
bool has_tmp_files(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".tmp") return true;
  return false;
}

MetricsFile sample_file(const std::string& path) {
  MetricsFile m(path);
  m.set_attr("status", std::string("running"));
  m.set_attr("config", std::string("{\"model\": {\"layers\": 2}, \"name\": \"caf\xc3\xa9\"}"));
  m.set_attr("version", std::string("0.1.0"));
  m.set_attr("entropy_floor", 1.9906);
  m.set_attr("world_size", int64_t{4});
  m.set_attr("empty", std::string());
  for (int it = 0; it < 5; ++it) {
    m.append("train/iteration", it);
    m.append("train/loss", 5.0 - 0.5 * it);
    m.append("train/lr", 1e-3);
    m.append_int("train/tokens", int64_t{1} << (40 + it));
    m.append("comm/layer0.attn.proj.fwd/bytes", 1024.0 * it);
    m.append("comm/layer0.attn.proj.fwd/rel_error", 1e-3 / (it + 1));
  }
  m.append("eval/iteration", 4);
  m.append("eval/loss", 3.25);
  // Empty series (here emptied by truncation) are written too.
  m.append_int("empty/iteration", 5);
  m.append("empty/value", 1.0);
  m.truncate_after("empty", 0);
  return m;
}

}  // namespace

TEST_CASE("metrics series types and lookup", "[hdf5]") {
  MetricsFile m("/nonexistent/metrics.h5");
  m.append("train/iteration", 3);
  m.append("train/loss", 2.5);
  m.append_int("train/tokens", 7);
  REQUIRE(m.int_series("train/iteration"));
  CHECK(*m.int_series("train/iteration") == std::vector<int64_t>{3});
  CHECK(m.series("train/iteration") == nullptr);
  REQUIRE(m.series("train/loss"));
  CHECK(*m.series("train/loss") == std::vector<double>{2.5});
  CHECK(m.int_series("train/loss") == nullptr);
  CHECK(*m.int_series("train/tokens") == std::vector<int64_t>{7});
  CHECK(m.series("nope") == nullptr);
  // An existing series keeps its type.
  m.append("train/tokens", 8.0);
  CHECK(*m.int_series("train/tokens") == std::vector<int64_t>{7, 8});
  m.append_int("train/loss", 2);
  CHECK(*m.series("train/loss") == std::vector<double>{2.5, 2.0});
  // Leading slashes are ignored.
  m.append("/eval/loss", 1.0);
  CHECK(m.series("eval/loss"));
}

TEST_CASE("metrics file round-trips attributes and series", "[hdf5]") {
  TempDir d;
  const std::string p = d.file("metrics.h5");
  MetricsFile m = sample_file(p);
  m.flush();
  REQUIRE(fs::exists(p));
  CHECK(!has_tmp_files(d.dir));

  MetricsFile r = MetricsFile::load(p);
  CHECK(r.path() == p);
  CHECK(r.attrs() == m.attrs());
  CHECK(std::get<std::string>(r.attrs().at("status")) == "running");
  CHECK(std::get<double>(r.attrs().at("entropy_floor")) == 1.9906);
  CHECK(std::get<int64_t>(r.attrs().at("world_size")) == 4);
  CHECK(std::get<std::string>(r.attrs().at("empty")).empty());
  for (const char* name : {"train/loss", "train/lr", "comm/layer0.attn.proj.fwd/bytes",
                           "comm/layer0.attn.proj.fwd/rel_error", "eval/loss"}) {
    INFO(name);
    REQUIRE(r.series(name));
    CHECK(*r.series(name) == *m.series(name));
  }
  for (const char* name : {"train/iteration", "train/tokens", "eval/iteration"}) {
    INFO(name);
    REQUIRE(r.int_series(name));
    CHECK(*r.int_series(name) == *m.int_series(name));
  }
  REQUIRE(r.int_series("empty/iteration"));
  CHECK(r.int_series("empty/iteration")->empty());
  REQUIRE(r.series("empty/value"));
  CHECK(r.series("empty/value")->empty());
  CHECK(r.int_series("train/tokens")->back() == int64_t{1} << 44);
}

TEST_CASE("metrics file is readable by h5dump", "[hdf5]") {
  TempDir d;
  const std::string p = d.file("metrics.h5");
  sample_file(p).flush();
  std::string cmd = "h5dump -H '" + p + "' > /dev/null 2>&1";
  int rc = std::system(cmd.c_str());
  if (rc != 0 && std::system("command -v h5dump > /dev/null 2>&1") != 0) {
    WARN("h5dump not installed; skipping");
    return;
  }
  CHECK(rc == 0);
  // Full dump (data too) works as well.
  cmd = "h5dump '" + p + "' > /dev/null 2>&1";
  CHECK(std::system(cmd.c_str()) == 0);
}

TEST_CASE("metrics file is readable by h5py", "[hdf5]") {
  const char* py = "/usr/bin/python3";
  if (!fs::exists(py) || std::system("/usr/bin/python3 -c 'import h5py' > /dev/null 2>&1") != 0) {
    WARN("/usr/bin/python3 with h5py not available; skipping");
    return;
  }
  TempDir d;
  const std::string p = d.file("metrics.h5");
  sample_file(p).flush();
  std::string script =
      "import h5py, json\n"
      "f = h5py.File('" + p + "', 'r')\n"
      "assert f.attrs['status'] == 'running', repr(f.attrs['status'])\n"
      "assert isinstance(f.attrs['config'], str)\n"
      "assert json.loads(f.attrs['config'])['name'] == 'caf\\u00e9'\n"
      "assert f.attrs['world_size'] == 4 and f.attrs['world_size'].dtype == 'int64'\n"
      "assert f.attrs['entropy_floor'] == 1.9906\n"
      "assert f['train/loss'].maxshape == (None,), f['train/loss'].maxshape\n"
      "assert f['train/loss'].shape == (5,)\n"
      "assert list(f['train/loss'][:]) == [5.0, 4.5, 4.0, 3.5, 3.0]\n"
      "assert f['train/iteration'].dtype == 'int64'\n"
      "assert f['train/loss'].dtype == 'float64'\n"
      "assert f['empty/value'].shape == (0,)\n"
      "assert f['empty/value'].maxshape == (None,)\n"
      "assert 'layer0.attn.proj.fwd' in f['comm']\n"
      "assert list(f['comm/layer0.attn.proj.fwd/bytes'][:]) == [0, 1024, 2048, 3072, 4096]\n";
  const std::string sp = d.file("check.py");
  std::ofstream(sp) << script;
  int rc = std::system(("/usr/bin/python3 '" + sp + "'").c_str());
  CHECK(rc == 0);

  // And the reverse: a file h5py wrote (fixed-length string attribute, int32 / float32
  // datasets, a scalar dataset that load() ignores) loads with the types mapped.
  const std::string q = d.file("from_h5py.h5");
  std::ofstream(sp) << "import h5py, numpy as np\n"
                       "f = h5py.File('" + q + "', 'w')\n"
                       "f.attrs['status'] = np.bytes_(b'done')\n"
                       "f.attrs['vstatus'] = 'ok'\n"
                       "f.attrs['steps'] = np.int32(7)\n"
                       "f.attrs['lr'] = 0.5\n"
                       "f['train/iteration'] = np.arange(3, dtype=np.int32)\n"
                       "f['train/loss'] = np.array([1.5, 2.5], dtype=np.float32)\n"
                       "f['scalar'] = 3.0\n"
                       "f.close()\n";
  REQUIRE(std::system(("/usr/bin/python3 '" + sp + "'").c_str()) == 0);
  MetricsFile r = MetricsFile::load(q);
  CHECK(std::get<std::string>(r.attrs().at("status")) == "done");
  CHECK(std::get<std::string>(r.attrs().at("vstatus")) == "ok");
  CHECK(std::get<int64_t>(r.attrs().at("steps")) == 7);
  CHECK(std::get<double>(r.attrs().at("lr")) == 0.5);
  REQUIRE(r.int_series("train/iteration"));
  CHECK(*r.int_series("train/iteration") == std::vector<int64_t>{0, 1, 2});
  REQUIRE(r.series("train/loss"));
  CHECK(*r.series("train/loss") == std::vector<double>{1.5, 2.5});
  CHECK(r.series("scalar") == nullptr);
}

TEST_CASE("a second flush extends the datasets", "[hdf5]") {
  TempDir d;
  const std::string p = d.file("metrics.h5");
  MetricsFile m = sample_file(p);
  m.flush();
  for (int it = 5; it < 2000; ++it) {
    m.append("train/iteration", it);
    m.append("train/loss", 1.0 / it);
  }
  m.append("comm/layer1.mlp.fwd/bytes", 12.0);  // a new nested series
  m.set_attr("status", std::string("finished"));
  m.flush();
  CHECK(!has_tmp_files(d.dir));
  MetricsFile r = MetricsFile::load(p);
  CHECK(std::get<std::string>(r.attrs().at("status")) == "finished");
  REQUIRE(r.series("train/loss"));
  CHECK(r.series("train/loss")->size() == 2000);
  CHECK(r.series("train/loss")->back() == 1.0 / 1999);
  CHECK(r.int_series("train/iteration")->size() == 2000);
  CHECK(r.series("train/lr")->size() == 5);
  REQUIRE(r.series("comm/layer1.mlp.fwd/bytes"));
  CHECK(*r.series("comm/layer1.mlp.fwd/bytes") == std::vector<double>{12.0});

  // A loaded file can be continued and flushed again.
  r.append("train/iteration", 2000);
  r.append("train/loss", 0.5);
  r.flush();
  MetricsFile r2 = MetricsFile::load(p);
  CHECK(r2.series("train/loss")->size() == 2001);
  CHECK(r2.int_series("train/iteration")->back() == 2000);
}

TEST_CASE("truncate_after drops rows past an iteration", "[hdf5]") {
  MetricsFile m("unused.h5");
  for (int it = 0; it < 10; ++it) {
    m.append("train/iteration", it * 10);
    m.append("train/loss", it);
    m.append_int("train/tokens", it);
    if (it % 3 == 0) {
      m.append("eval/iteration", it * 10);
      m.append("eval/loss", it);
    }
    m.append("comm/a.fwd/iteration", it * 10);
    m.append("comm/a.fwd/bytes", it);
  }
  m.append("comm/total_bytes", 1);  // no iteration series of its own: untouched

  m.truncate_after("train", 45);
  CHECK(*m.int_series("train/iteration") == std::vector<int64_t>{0, 10, 20, 30, 40});
  CHECK(m.series("train/loss")->size() == 5);
  CHECK(m.int_series("train/tokens")->size() == 5);
  CHECK(m.series("eval/loss")->size() == 4);  // other groups untouched
  CHECK(m.series("comm/a.fwd/bytes")->size() == 10);

  m.truncate_after("eval", 30);
  CHECK(*m.int_series("eval/iteration") == std::vector<int64_t>{0, 30});
  CHECK(*m.series("eval/loss") == std::vector<double>{0, 3});

  // A group without its own iteration series uses those of its subgroups.
  m.truncate_after("comm", 20);
  CHECK(m.series("comm/a.fwd/bytes")->size() == 3);
  CHECK(m.int_series("comm/a.fwd/iteration")->size() == 3);
  CHECK(m.series("comm/total_bytes")->size() == 1);

  // Nothing past the cut: no change; group with no iteration series: no change.
  m.truncate_after("train", 1000);
  CHECK(m.series("train/loss")->size() == 5);
  m.truncate_after("nothing", 0);
  m.truncate_after("train", -1);
  CHECK(m.series("train/loss")->empty());
  CHECK(m.int_series("train/iteration")->empty());
}

TEST_CASE("flush failures and bad files throw with the path", "[hdf5]") {
  TempDir d;
  SECTION("load of a missing file") {
    const std::string p = d.file("missing.h5");
    CHECK_THROWS_WITH(MetricsFile::load(p), Catch::Contains(p));
  }
  SECTION("load of a non-HDF5 file") {
    const std::string p = d.file("garbage.h5");
    std::ofstream(p) << "this is not an HDF5 file, just some text\n";
    CHECK_THROWS_WITH(MetricsFile::load(p), Catch::Contains(p) && Catch::Contains("not an HDF5"));
  }
  SECTION("load of an empty file") {
    const std::string p = d.file("empty.h5");
    std::ofstream{p};
    CHECK_THROWS_WITH(MetricsFile::load(p), Catch::Contains(p));
  }
  SECTION("flush into a missing directory") {
    const std::string p = d.file("no/such/dir/metrics.h5");
    MetricsFile m(p);
    m.append("train/loss", 1);
    CHECK_THROWS_WITH(m.flush(), Catch::Contains(p));
    CHECK(!has_tmp_files(d.dir));
  }
  SECTION("conflicting dataset and group names") {
    const std::string p = d.file("conflict.h5");
    MetricsFile m(p);
    m.append("train", 1);
    m.append("train/loss", 1);
    CHECK_THROWS_WITH(m.flush(), Catch::Contains(p));
    CHECK(!has_tmp_files(d.dir));
    CHECK(!fs::exists(p));
  }
}
