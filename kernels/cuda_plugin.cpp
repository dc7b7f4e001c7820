// The core's side of the GPU plugin (kernels/cuda_plugin.h): loading it, and a trampoline for
// each function of kernels/cuda/plugin_functions.h.
#ifdef LOSSYTP_CUDA_PLUGIN_PATH
#include "kernels/cuda_plugin.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kernels/cuda/plugin_functions.h"

namespace lossytp::cuda {

namespace {

constexpr const char* kFile = "liblossytp_cuda.so";

struct Plugin {
  void* handle = nullptr;
  const PluginTable* table = nullptr;  // null: not loaded, `error` says why
  std::string error;
};

std::string exe_dir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  const std::string p(buf, static_cast<size_t>(n));
  return p.substr(0, p.rfind('/'));
}

std::vector<std::string> candidates() {
  if (const char* e = std::getenv("LOSSYTP_CUDA_PLUGIN"); e && *e) return {e};
  std::vector<std::string> c;
  if (const std::string d = exe_dir(); !d.empty()) {
    c.push_back(d + "/" + kFile);
    c.push_back(d + "/../lib/" + kFile);
  }
  c.push_back(LOSSYTP_CUDA_PLUGIN_PATH);
  return c;
}

// The first candidate that exists is the one: a broken plugin is reported, not skipped.
Plugin load() {
  Plugin p;
  const std::string what = std::string("cannot load ") + kFile + ", the GPU half of this build: ";
  std::string looked;
  for (const std::string& path : candidates()) {
    if (access(path.c_str(), F_OK) != 0) {
      looked += (looked.empty() ? "" : ", ") + path;
      continue;
    }
    // RTLD_NODELETE: objects made by the plugin (NCCL backends) may outlive every user of it.
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!h) {
      const char* e = dlerror();
      p.error = what + (e ? e : path);
      return p;
    }
    using Entry = const PluginTable* (*)();
    auto entry = reinterpret_cast<Entry>(dlsym(h, LOSSYTP_CUDA_PLUGIN_ENTRY));
    if (!entry) {
      p.error = what + path + " has no " + LOSSYTP_CUDA_PLUGIN_ENTRY + " (not a lossytp GPU plugin)";
      return p;
    }
    const PluginTable* t = entry();
    if (std::strcmp(t->signature, kPluginSignature) != 0) {
      p.error = what + path + " was built from another revision of kernels/cuda/plugin_functions.h"
                " (rebuild it with this binary)";
      return p;
    }
    p.handle = h;
    p.table = t;
    return p;
  }
  p.error = what + "not found (looked for " + looked + "; LOSSYTP_CUDA_PLUGIN=path names it)";
  return p;
}

const Plugin& plugin() {
  static const Plugin p = load();  // once, thread-safe
  return p;
}

const PluginTable& loaded_table() {
  const Plugin& p = plugin();
  if (!p.table) throw std::runtime_error(p.error);
  return *p.table;
}

}  // namespace

std::string plugin_error() { return plugin().error; }

void* plugin_symbol(const char* name) {
  loaded_table();  // throws when not loaded
  return dlsym(plugin().handle, name);
}

#define LOSSYTP_CUDA_TRAMPOLINE(R, name, params, args) \
  R name params { return loaded_table().name args; }
#define LOSSYTP_CUDA_QUERY_TRAMPOLINE(R, name, params, args, fallback) \
  R name params {                                                      \
    const Plugin& loaded = plugin();                                   \
    if (!loaded.table) return fallback;                                \
    return loaded.table->name args;                                    \
  }
LOSSYTP_CUDA_PLUGIN_FUNCTIONS(LOSSYTP_CUDA_TRAMPOLINE, LOSSYTP_CUDA_QUERY_TRAMPOLINE)
#undef LOSSYTP_CUDA_TRAMPOLINE
#undef LOSSYTP_CUDA_QUERY_TRAMPOLINE

}  // namespace lossytp::cuda
#endif  // LOSSYTP_CUDA_PLUGIN_PATH
