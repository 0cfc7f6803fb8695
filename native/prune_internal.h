// prune_internal.h — what the method files share: small math on flat row-major buffers, the
// output writers, and the method functions the table in prune.cpp dispatches to.
// Not part of the public API (prune.h).

#pragma once

#include "prune.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dcp {

using index_list = std::vector<int32_t>;  // rows of the input token set

// ---- small math --------------------------------------------------------------------------------

float dot(const float * a, const float * b, size_t n);

// Rows scaled to unit length; all-zero rows stay zero (their cosine with anything is 0).
std::vector<float> unit_rows(const float * x, int32_t n_rows, int32_t n_cols);

// The k rows with the highest score, best first; ties go to the lower row.
index_list top_k(const float * score, int32_t n, int32_t k);

// ---- token accessors ---------------------------------------------------------------------------

inline float mass_of(const dcp_tokens & t, int32_t row) { return t.masses_in ? t.masses_in[row] : 1.0f; }
inline int32_t patch_of(const dcp_tokens & t, int32_t row) { return t.patch_idx ? t.patch_idx[row] : row; }

// The vectors semantic similarity is measured on: keys when given, else features. Unit rows.
std::vector<float> unit_semantic_rows(const dcp_tokens & t, int32_t * n_cols);

// Text relevance r_i = max_j cos(feature_i, text_j), one per token; empty when there is no text.
std::vector<float> text_relevance(const dcp_tokens & t);

// ---- writing the result ------------------------------------------------------------------------

// Copies the input rows `rows` (any order) to `out` in patch order, with their input masses.
void emit_selection(const dcp_tokens & t, index_list rows, const dcp_selection & out);

// Writes merged tokens: token k sits on input row rows[k] with feature features[k*n_dim ..] and
// mass masses[k]. Sorted into patch order on the way out.
void emit_merged(const dcp_tokens & t, const index_list & rows, const std::vector<float> & features,
                 const std::vector<float> & masses, const dcp_selection & out);

// ---- the methods (each in its own file; inputs already validated by dcp_prune) -----------------

using prune_fn = dcp_status (*)(const dcp_tokens &, const dcp_prune_params &, dcp_selection &);

// baselines.cpp
dcp_status prune_visionzip(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);
dcp_status prune_divprune(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);
dcp_status prune_cdpruner(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);

// dcp.cpp
dcp_status prune_acgr(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);
dcp_status prune_tatcs(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);
dcp_status prune_dcp(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);

} // namespace dcp
