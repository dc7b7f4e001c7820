// caat:p=P -- CAAT-Net partial synchronisation. Only the fraction P of the channels of a
// row-parallel output is all-reduced; the rest stays a rank-local partial sum (the channel
// selection, the sqrt(tp) scaling and the matching backward live in sim/ and models/). Here we
// only read P into NetSpec::caat_p.
#include "netmodels/registry.h"

namespace lossytp::net {

void make_caat(const KeyValues& keys, NetSpec& spec) {
  KeyReader k("caat", keys);
  spec.caat = true;
  spec.caat_p = k.required("p", 0.0, 1.0, /*lo_open=*/true);
  k.finish();
}

}  // namespace lossytp::net
