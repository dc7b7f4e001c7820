// The plotting script (analysis/plot.py) embedded in the binary, so `lossytp plot` works from
// any directory without the source tree. analysis/plot.py is the source of truth: after editing
// it, run analysis/embed_plot_script.sh to regenerate plot_script.cpp (a unit test fails while
// the two differ).
#pragma once
#include <string_view>

namespace lossytp::analysis {

// The full text of analysis/plot.py.
std::string_view plot_script();

}  // namespace lossytp::analysis
