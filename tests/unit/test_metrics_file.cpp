// metrics.h5: round trip through HDF5, readability by h5dump and h5py, incremental flushes
// (only new rows written, memory bounded, a reader's file left intact), truncation on resume,
// old whole-rewritten files continued, errors that name the file, and (ctest metrics_crash)
// kill -9 of a writer at random moments.
#include <catch2/catch.hpp>

#include "common/temp_dir.h"

#include <hdf5.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "experiments/metrics_file.h"

using namespace lossytp;
namespace fs = std::filesystem;

namespace {

struct TempDir : testing::TempDir {
  TempDir() : testing::TempDir("metrics") {}
};

// No "<something>.tmp" (nor, once the writer is gone, "<something>.shadow") left behind.
bool has_tmp_files(const fs::path& dir, bool shadow_too = false) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".tmp" || (shadow_too && e.path().extension() == ".shadow"))
      return true;
  return false;
}

bool have_h5py() {
  return fs::exists("/usr/bin/python3") &&
         std::system("/usr/bin/python3 -c 'import h5py' > /dev/null 2>&1") == 0;
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
  // m keeps no flushed rows: compare with an unflushed twin
  CHECK(m.series("train/loss")->empty());
  CHECK(m.rows("train/loss") == 5);
  m = sample_file(d.file("twin.h5"));
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
    CHECK(!has_tmp_files(d.dir, true));
    CHECK(!fs::exists(p));
  }
  SECTION("a failed flush leaves the last good file and every row in memory") {
    const std::string p = d.file("good.h5");
    MetricsFile m(p);
    m.append("train/loss", 1);
    m.flush();
    m.append("train/loss", 2);
    m.flush();
    m.append("train/loss", 3);
    m.append("train/loss/x", 1);  // "train/loss" is a dataset: cannot hold a child
    CHECK_THROWS_WITH(m.flush(), Catch::Contains(p));
    CHECK(!has_tmp_files(d.dir, true));
    CHECK(*MetricsFile::load(p).series("train/loss") == std::vector<double>{1, 2});
    CHECK(m.rows("train/loss") == 3);
  }
}

TEST_CASE("flush appends only new rows and memory keeps only what a file lacks", "[hdf5]") {
  TempDir d;
  const std::string p = d.file("metrics.h5");
  const std::string shadow = MetricsFile::shadow_path(p);
  {
    MetricsFile m(p);
    m.set_attr("status", std::string("running"));
    auto add = [&](int from, int to) {
      for (int it = from; it < to; ++it) {
        m.append("train/iteration", it);
        m.append("train/loss", 1.0 / (it + 1));
      }
    };
    add(0, 10);
    m.flush();
    // <path> holds rows 0..9; there is no shadow yet (the next flush makes it a byte copy of
    // <path>): nothing kept
    CHECK(m.rows("train/loss") == 10);
    CHECK(m.first_row("train/loss") == 10);
    CHECK(m.series("train/loss")->empty());
    add(10, 25);
    m.flush();
    // <path> holds 25 rows, the shadow the 10 of the first flush: rows 10.. stay in memory
    CHECK(fs::exists(shadow));
    CHECK(m.rows("train/loss") == 25);
    CHECK(m.first_row("train/loss") == 10);
    CHECK(m.series("train/loss")->size() == 15);
    CHECK(m.series("train/loss")->front() == 1.0 / 11);
    CHECK(m.int_series("train/iteration")->front() == 10);
    m.set_attr("status", std::string("completed"));
    m.flush();  // no new rows: only the attribute
    CHECK(m.first_row("train/loss") == 25);
    CHECK(m.series("train/loss")->empty());
    add(25, 30);
    m.set_attr("tokens_per_second", 12.5);
    m.flush();

    MetricsFile r = MetricsFile::load(p);
    CHECK(std::get<std::string>(r.attrs().at("status")) == "completed");
    CHECK(std::get<double>(r.attrs().at("tokens_per_second")) == 12.5);
    REQUIRE(r.series("train/loss")->size() == 30);
    for (int it = 0; it < 30; ++it) {
      CHECK(r.series("train/loss")->at(it) == 1.0 / (it + 1));
      CHECK(r.int_series("train/iteration")->at(it) == it);
    }
    // the shadow is a complete file too, one flush behind
    MetricsFile s = MetricsFile::load(shadow);
    CHECK(s.series("train/loss")->size() == 25);
  }
  // the writer is gone: no shadow, no temporary file left
  CHECK(!has_tmp_files(d.dir, true));
  CHECK(MetricsFile::load(p).rows("train/loss") == 30);
}

TEST_CASE("a reader holding the file keeps its copy intact", "[hdf5]") {
  TempDir d;
  const std::string p = d.file("metrics.h5");
  MetricsFile m(p);
  for (int it = 0; it < 5; ++it) m.append("train/loss", it);
  m.flush();
  m.append("train/loss", 5);
  m.flush();
  // A reader opens <path> (6 rows) with HDF5's file locking, as h5py and h5dump do.
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_file_locking(fapl, true, true);
  hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDONLY, fapl);
  REQUIRE(f >= 0);
  hid_t ds = H5Dopen2(f, "train/loss", H5P_DEFAULT);
  REQUIRE(ds >= 0);
  // Two more flushes: the first swaps the reader's file into the shadow's place, the second
  // finds it locked and writes a fresh copy instead of modifying it.
  for (int it = 6; it < 2000; ++it) m.append("train/loss", it);
  m.flush();
  for (int it = 2000; it < 3000; ++it) m.append("train/loss", it);
  m.flush();
  hid_t space = H5Dget_space(ds);
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space, &n, nullptr);
  CHECK(n == 6);
  std::vector<double> v(n);
  CHECK(H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0);
  CHECK(v == std::vector<double>{0, 1, 2, 3, 4, 5});
  H5Sclose(space);
  H5Dclose(ds);
  H5Fclose(f);
  H5Pclose(fapl);
  MetricsFile r = MetricsFile::load(p);
  REQUIRE(r.series("train/loss")->size() == 3000);
  CHECK(r.series("train/loss")->at(2999) == 2999);
  // and the writer goes on alternating between the two files
  m.append("train/loss", 3000);
  m.flush();
  m.append("train/loss", 3001);
  m.flush();
  CHECK(MetricsFile::load(p).series("train/loss")->size() == 3002);
}

TEST_CASE("resume: load, truncate, continue; also after rows left memory", "[hdf5]") {
  TempDir d;
  const std::string p = d.file("metrics.h5");
  {
    MetricsFile m(p);
    for (int it = 1; it <= 100; ++it) {
      m.append("train/iteration", it);
      m.append("train/loss", it * 0.5);
      m.append("comm/iteration", it);
      m.append_int("comm/a.fwd/bytes", it);
      if (it % 10 == 0) {
        m.append("eval/iteration", it);
        m.append("eval/loss", it * 0.25);
        m.flush();
      }
    }
    m.set_attr("status", std::string("running"));
    m.flush();
  }
  // A run resumed from the checkpoint of iteration 60.
  MetricsFile m = MetricsFile::load(p);
  for (const char* g : {"train", "eval", "comm"}) m.truncate_after(g, 60);
  CHECK(m.rows("train/loss") == 60);
  for (int it = 61; it <= 70; ++it) {
    m.append("train/iteration", it);
    m.append("train/loss", it * 0.5 + 1000);  // the continued run differs: the new rows show
    m.append("comm/iteration", it);
    m.append_int("comm/a.fwd/bytes", it);
  }
  m.append("eval/iteration", 70);
  m.append("eval/loss", 1.0);
  m.flush();
  m.flush();
  {
    MetricsFile r = MetricsFile::load(p);
    REQUIRE(r.series("train/loss")->size() == 70);
    CHECK(r.series("train/loss")->at(59) == 30.0);
    CHECK(r.series("train/loss")->at(60) == 61 * 0.5 + 1000);
    CHECK(r.int_series("comm/a.fwd/bytes")->size() == 70);
    CHECK(*r.int_series("eval/iteration") == std::vector<int64_t>{10, 20, 30, 40, 50, 60, 70});
  }
  // The rows before 70 have left memory; truncation reads the iteration series back.
  REQUIRE(m.first_row("train/iteration") > 0);
  m.truncate_after("train", 65);
  m.truncate_after("comm", 62);
  CHECK(m.rows("train/loss") == 65);
  CHECK(m.rows("comm/a.fwd/bytes") == 62);
  m.append("train/iteration", 66);
  m.append("train/loss", -1.0);
  m.flush();
  MetricsFile r = MetricsFile::load(p);
  REQUIRE(r.series("train/loss")->size() == 66);
  CHECK(r.series("train/loss")->back() == -1.0);
  CHECK(r.series("train/loss")->at(64) == 65 * 0.5 + 1000);
  CHECK(r.int_series("comm/a.fwd/bytes")->size() == 62);
  CHECK(r.int_series("comm/iteration")->size() == 62);
  CHECK(r.series("eval/loss")->size() == 7);
}

TEST_CASE("an old whole-rewritten file (and h5py's fixed-size datasets) is continued", "[hdf5]") {
  if (!have_h5py()) {
    WARN("/usr/bin/python3 with h5py not available; skipping");
    return;
  }
  TempDir d;
  const std::string p = d.file("metrics.h5");
  const std::string sp = d.file("old.py");
  // The layout the earlier writer produced (HDF5 1.8 objects, chunks of clamp(n, 64, 4096)
  // rows, unlimited max size, variable-length UTF-8 string attributes), plus one fixed-size
  // dataset as another tool would write it.
  std::ofstream(sp) << "import h5py, numpy as np\n"
                       "f = h5py.File('" + p + "', 'w', libver=('earliest', 'v108'))\n"
                       "f.attrs['status'] = 'running'\n"
                       "f.attrs['config'] = '{}'\n"
                       "f.attrs['version'] = '0.1.0'\n"
                       "n = 100\n"
                       "f.create_dataset('train/iteration', data=np.arange(1, n + 1, dtype='i8'),"
                       " chunks=(100,), maxshape=(None,))\n"
                       "f.create_dataset('train/loss', data=np.arange(1, n + 1) * 0.5,"
                       " chunks=(100,), maxshape=(None,))\n"
                       "f['train/fixed'] = np.arange(n, dtype='f8')\n"
                       "f.close()\n";
  REQUIRE(std::system(("/usr/bin/python3 '" + sp + "'").c_str()) == 0);
  {
    MetricsFile m = MetricsFile::load(p);
    m.truncate_after("train", 80);
    for (int it = 81; it <= 5000; ++it) {
      m.append("train/iteration", it);
      m.append("train/loss", it * 0.5);
      m.append("train/fixed", it - 1);
      if (it % 1000 == 0) m.flush();
    }
    m.set_attr("status", std::string("completed"));
    m.flush();
  }
  std::ofstream(sp) << "import h5py, numpy as np\n"
                       "f = h5py.File('" + p + "', 'r')\n"
                       "assert f.attrs['status'] == 'completed'\n"
                       "assert (f['train/iteration'][:] == np.arange(1, 5001)).all()\n"
                       "assert (f['train/loss'][:] == np.arange(1, 5001) * 0.5).all()\n"
                       "assert (f['train/fixed'][:] == np.arange(5000)).all()\n"
                       "assert f['train/fixed'].maxshape == (None,)\n";
  CHECK(std::system(("/usr/bin/python3 '" + sp + "'").c_str()) == 0);
}

// ---- kill -9 at random moments (ctest metrics_crash; hidden from the plain unit run) ---------

namespace {

// What the writer has published, in memory shared with the test: the rows of /train/iteration
// when its last flush returned, and those of the flush under way.
struct CrashShared {
  std::atomic<int64_t> done_rows, started_rows;
};

constexpr int kSites = 20;  // comm series: a flush touches ~50 datasets, as a real run's does
double loss_of(int64_t it) { return 1.0 / static_cast<double>(it + 1); }

// The writer: fresh or resumed (load, cut at a random earlier iteration), then appends 10 rows
// per flush forever, each row a function of its iteration, a late site from iteration 30 on.
[[noreturn]] void crash_writer(const std::string& p, bool resume, uint64_t seed, CrashShared* sh) {
  try {
    std::mt19937_64 rng(seed);
    MetricsFile m(p);
    int64_t it = 0;
    if (resume) {
      m = MetricsFile::load(p);
      const int64_t n = static_cast<int64_t>(m.rows("train/iteration"));
      it = n > 0 ? static_cast<int64_t>(rng() % static_cast<uint64_t>(n)) : 0;
      for (const char* g : {"train", "comm"}) m.truncate_after(g, it - 1);
    }
    m.set_attr("status", std::string("running"));
    m.set_attr("config", std::string("{\"seed\": ") + std::to_string(seed) + "}");
    for (;;) {
      for (int k = 0; k < 10; ++k, ++it) {
        m.append("train/iteration", it);
        m.append("train/loss", loss_of(it));
        m.append("comm/iteration", it);
        for (int s = 0; s < kSites; ++s) m.append_int("comm/s" + std::to_string(s) + "/bytes", it * s);
        if (it >= 30) {
          m.append("comm/late/iteration", it);
          m.append("comm/late/bytes", 2.0 * it);
        }
      }
      m.set_attr("rows", static_cast<int64_t>(it));
      sh->started_rows = it;
      m.flush();
      sh->done_rows = it;
      std::this_thread::sleep_for(std::chrono::microseconds(500));  // a (short) log interval
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crash writer: %s\n", e.what());
  }
  _exit(3);
}

// Checks the file as every reader sees it; returns its row count (-1 on a failed check).
int64_t check_crash_file(const std::string& p, const std::string& dir, int64_t lo, int64_t hi) {
  MetricsFile r = MetricsFile::load(p);
  const auto* its = r.int_series("train/iteration");
  REQUIRE(its);
  const int64_t n = static_cast<int64_t>(its->size());
  INFO("rows " << n << ", last completed flush " << lo << ", flush under way " << hi);
  CHECK((n == lo || n == hi));
  CHECK(std::get<int64_t>(r.attrs().at("rows")) == n);
  CHECK(std::get<std::string>(r.attrs().at("status")) == "running");
  bool ok = r.series("train/loss")->size() == static_cast<size_t>(n) &&
            r.int_series("comm/iteration")->size() == static_cast<size_t>(n);
  for (int64_t i = 0; ok && i < n; ++i)
    ok = (*its)[i] == i && r.series("train/loss")->at(i) == loss_of(i) &&
         r.int_series("comm/iteration")->at(i) == i;
  for (int s = 0; ok && s < kSites; ++s) {
    const auto* b = r.int_series("comm/s" + std::to_string(s) + "/bytes");
    ok = b && b->size() == static_cast<size_t>(n);
    for (int64_t i = 0; ok && i < n; ++i) ok = (*b)[i] == i * s;
  }
  if (n > 30) {
    const auto* li = r.int_series("comm/late/iteration");
    const auto* lb = r.series("comm/late/bytes");
    ok = ok && li && lb && li->size() == static_cast<size_t>(n - 30) && lb->size() == li->size();
    for (size_t k = 0; ok && k < li->size(); ++k) ok = (*li)[k] == 30 + int64_t(k) && (*lb)[k] == 2.0 * (30 + int64_t(k));
  }
  CHECK(ok);
  if (std::system("command -v h5dump > /dev/null 2>&1") == 0) {
    CHECK(std::system(("h5dump -H '" + p + "' > /dev/null 2>&1").c_str()) == 0);
    CHECK(std::system(("h5dump -d /train/loss '" + p + "' > /dev/null 2>&1").c_str()) == 0);
  }
  if (have_h5py()) {
    const std::string sp = dir + "/check.py";
    std::ofstream(sp) << "import h5py, numpy as np, sys\n"
                         "f = h5py.File(sys.argv[1], 'r')\n"
                         "n = f['train/iteration'].shape[0]\n"
                         "assert n == int(sys.argv[2]), (n, sys.argv[2])\n"
                         "assert f.attrs['rows'] == n\n"
                         "assert (f['train/iteration'][:] == np.arange(n)).all()\n"
                         "assert (f['train/loss'][:] == 1.0 / (np.arange(n) + 1)).all()\n"
                         "assert (f['comm/s7/bytes'][:] == 7 * np.arange(n)).all()\n";
    CHECK(std::system(("/usr/bin/python3 '" + sp + "' '" + p + "' " + std::to_string(n)).c_str()) == 0);
  }
  return ok ? n : -1;
}

}  // namespace

TEST_CASE("kill -9 of a writer at random moments keeps every flushed row", "[.][metrics_crash]") {
  const char* env = std::getenv("METRICS_CRASH_ROUNDS");
  const int rounds = env ? std::atoi(env) : 40;
  TempDir d;
  const std::string p = d.file("metrics.h5");
  auto* sh = static_cast<CrashShared*>(mmap(nullptr, sizeof(CrashShared), PROT_READ | PROT_WRITE,
                                            MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(sh != MAP_FAILED);
  std::mt19937_64 rng(12345);
  int64_t rows = -1;  // the file's rows after the last round (-1: no file yet)
  int mid_run_reads = 0, resumed = 0, mid_flush = 0;
  for (int round = 0; round < rounds; ++round) {
    INFO("round " << round);
    const bool resume = rows >= 0 && round % 2 == 1;
    sh->done_rows = sh->started_rows = std::max<int64_t>(rows, 0);
    std::fflush(nullptr);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) crash_writer(p, resume, rng(), sh);
    resumed += resume;
    const int delay_us = static_cast<int>(rng() % 200000);
    // Half the rounds, readers open the file while the writer runs: h5dump and h5py must open
    // it and find a consistent prefix (they hold HDF5's lock, so the writer leaves it alone).
    if (round % 2 == 0 && rows >= 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(delay_us / 2));
      CHECK(std::system(("h5dump -H '" + p + "' > /dev/null 2>&1").c_str()) == 0);
      if (have_h5py())
        CHECK(std::system(("/usr/bin/python3 -c \"import h5py, numpy as np, sys; "
                           "f = h5py.File(sys.argv[1], 'r'); n = f['train/iteration'].shape[0]; "
                           "assert (f['train/loss'][:] == 1.0 / (np.arange(n) + 1)).all()\" '" +
                           p + "'").c_str()) == 0);
      ++mid_run_reads;
      std::this_thread::sleep_for(std::chrono::microseconds(delay_us / 2));
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    }
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    REQUIRE(WIFSIGNALED(status));  // killed, not exited with an error
    const int64_t lo = sh->done_rows, hi = sh->started_rows;
    mid_flush += lo != hi;
    if (!fs::exists(p)) {  // killed before the very first flush finished
      CHECK(rows < 0);
      continue;
    }
    rows = check_crash_file(p, d.str(), lo, hi);
    REQUIRE(rows >= 0);
  }
  munmap(sh, sizeof(CrashShared));
  WARN(rounds << " kills (" << resumed << " of resumed writers, " << mid_flush
              << " during a flush), " << mid_run_reads
              << " rounds with h5dump and h5py reading during the run; every file complete");
}

