// The plotting script (analysis/plot.py) embedded in the binary, so `lossytp plot` works from
// any directory without the source tree. CMake generates its definition from analysis/plot.py
// at configure time (and re-configures when the script changes).
#pragma once
#include <string_view>

namespace lossytp::analysis {

// The full text of analysis/plot.py.
std::string_view plot_script();

}  // namespace lossytp::analysis
