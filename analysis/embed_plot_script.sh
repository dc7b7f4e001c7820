#!/usr/bin/env bash
# Regenerates analysis/plot_script.cpp from analysis/plot.py (the script `lossytp plot` runs).
# usage: bash analysis/embed_plot_script.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py="$here/plot.py"; cpp="$here/plot_script.cpp"
if grep -q ')PY"' "$py"; then echo "plot.py contains the delimiter )PY\" - change it" >&2; exit 1; fi
tmp=$(mktemp "$cpp.XXXXXX")
{
  echo '// GENERATED from analysis/plot.py by analysis/embed_plot_script.sh - do not edit by hand.'
  echo '#include "analysis/plot_script.h"'
  echo
  echo 'namespace lossytp::analysis {'
  echo
  echo 'namespace {'
  echo 'constexpr char kPlotScript[] = R"PY('"$(cat "$py")"
  echo ')PY";'
  echo '}  // namespace'
  echo
  echo 'std::string_view plot_script() { return std::string_view(kPlotScript, sizeof kPlotScript - 1); }'
  echo
  echo '}  // namespace lossytp::analysis'
} > "$tmp"
mv "$tmp" "$cpp"
echo "wrote $cpp"
