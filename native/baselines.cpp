// baselines.cpp — VisionZip, DivPrune and CDPruner behind dcp_prune (contracts in prune.h).
// PLACEHOLDER while the methods are written: every call reports DCP_STATUS_BAD_METHOD.

#include "prune_internal.h"

namespace dcp {

dcp_status prune_visionzip(const dcp_tokens &, const dcp_prune_params &, dcp_selection &) { return DCP_STATUS_BAD_METHOD; }
dcp_status prune_divprune(const dcp_tokens &, const dcp_prune_params &, dcp_selection &) { return DCP_STATUS_BAD_METHOD; }
dcp_status prune_cdpruner(const dcp_tokens &, const dcp_prune_params &, dcp_selection &) { return DCP_STATUS_BAD_METHOD; }

} // namespace dcp
