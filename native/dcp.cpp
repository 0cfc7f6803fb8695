// dcp.cpp — DCP-Prune: ACGR, TATCS and their combination behind dcp_prune (contracts in prune.h).
// PLACEHOLDER while the methods are written: every call reports DCP_STATUS_BAD_METHOD.

#include "prune_internal.h"

namespace dcp {

dcp_status prune_acgr(const dcp_tokens &, const dcp_prune_params &, dcp_selection &) { return DCP_STATUS_BAD_METHOD; }
dcp_status prune_tatcs(const dcp_tokens &, const dcp_prune_params &, dcp_selection &) { return DCP_STATUS_BAD_METHOD; }
dcp_status prune_dcp(const dcp_tokens &, const dcp_prune_params &, dcp_selection &) { return DCP_STATUS_BAD_METHOD; }

} // namespace dcp
