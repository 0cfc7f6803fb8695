// prune.cpp — dcp_prune's front door: validation, κ, the out-of-line helpers of prune_internal.h,
// and the simple selectors (full, pool, fastervlm, random). The method and option tables live in
// methods.cpp, the other methods in baselines.cpp and dcp.cpp. Plain loops over flat row-major buffers.

#include "prune.h"
#include "prune_internal.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

namespace dcp {

// ---- shared helpers (prune_internal.h) ---------------------------------------------------------

int32_t best_row(const std::vector<double> & score, const std::vector<uint8_t> & excluded) {
    int32_t best = -1;
    for (size_t i = 0; i < score.size(); ++i) {
        if (!excluded[i] && (best < 0 || score[i] > score[size_t(best)])) {
            best = int32_t(i);
        }
    }
    return best;
}

index_list top_k(const float * score, int32_t n, int32_t k) {
    index_list rows(size_t(n), 0);
    std::iota(rows.begin(), rows.end(), 0);
    // Higher score first; ties go to the lower row so the chosen set is deterministic.
    auto ranks_higher = [score](int32_t a, int32_t b) {
        return score[a] > score[b] || (score[a] == score[b] && a < b);
    };
    std::partial_sort(rows.begin(), rows.begin() + k, rows.end(), ranks_higher);
    rows.resize(size_t(k));
    return rows;
}

DCP_VECTOR_CLONES void unit_rows_f32(const float * x, size_t n_rows, size_t n_cols, float * out) {
    constexpr size_t block = 4;  // rows whose norms are summed side by side (lane_dots4)
    for (size_t i = 0; i < n_rows; i += block) {
        const size_t n_block = std::min(block, n_rows - i);
        const float * rows[block];
        for (size_t r = 0; r < block; ++r) {
            rows[r] = x + (i + std::min(r, n_block - 1)) * n_cols;  // a short block repeats its last row
        }
        double norm2[block];
        lane_dots4<double, 8>(rows, rows, n_cols, norm2);  // dot_f64(row, row) each
        for (size_t r = 0; r < n_block; ++r) {
            const double norm = std::sqrt(norm2[r]);
            const double scale = norm > 0.0 ? 1.0 / norm : 0.0;
            for (size_t j = 0; j < n_cols; ++j) {
                out[(i + r) * n_cols + j] = float(double(rows[r][j]) * scale);
            }
        }
    }
}

DCP_VECTOR_CLONES void cosines_tile(const float * const * a, size_t n_a, const unit_set & x, const int32_t * rows,
                                    size_t n_rows, double * out) {
    constexpr size_t block = 4;  // rows of x dotted with each a[i] per pass over it (lane_dots4)
    const float * other[block];
    float cosine[block];
    size_t j = 0;
    for (; j + block <= n_rows; j += block) {  // these four rows of x stay in L1 for every a[i]
        for (size_t r = 0; r < block; ++r) {
            other[r] = x.row(rows ? rows[j + r] : int32_t(j + r));
        }
        for (size_t i = 0; i < n_a; ++i) {
            const float * shared[block] = {a[i], a[i], a[i], a[i]};
            lane_dots4<float, 16>(shared, other, x.n_cols, cosine);
            for (size_t r = 0; r < block; ++r) {
                out[i * n_rows + j + r] = double(cosine[r]);
            }
        }
    }
    for (; j < n_rows; ++j) {
        for (size_t i = 0; i < n_a; ++i) {
            out[i * n_rows + j] = double(lane_dot<float, 16>(a[i], x.row(rows ? rows[j] : int32_t(j)), x.n_cols));
        }
    }
}

void emit_selection(const dcp_tokens & t, index_list rows, const dcp_selection & out) {
    std::sort(rows.begin(), rows.end());  // patch_idx ascends with the row, so this is patch order
    const size_t d = size_t(t.n_dim), n_kept = rows.size();
    index_list token(size_t(t.n_tokens), -1);  // (N,) input row → output token
    for (size_t k = 0; k < n_kept; ++k) {
        token[size_t(rows[k])] = int32_t(k);
    }
    std::vector<double> mass(n_kept);  // (K,) own mass, then each dropped row's, in row order
    for (size_t k = 0; k < n_kept; ++k) {
        mass[k] = mass_of(t, rows[k]);
    }
    if (n_kept < size_t(t.n_tokens)) {
        const unit_set x = exact_unit_rows(t.features, t.n_tokens, t.n_dim);
        constexpr size_t block = 4;  // dropped rows against the kept rows at a time (cosines_tile)
        std::vector<double> similarity(block * n_kept);  // (block, K) scratch
        index_list dropped;  // (block,) rows
        const float * unit[block];
        for (int32_t i = 0; i < t.n_tokens; ++i) {
            if (token[size_t(i)] < 0) {
                unit[dropped.size()] = x.row(i);
                dropped.push_back(i);
            }
            if (dropped.size() < block && i + 1 < t.n_tokens) {
                continue;
            }
            cosines_tile(unit, dropped.size(), x, rows.data(), n_kept, similarity.data());
            for (size_t q = 0; q < dropped.size(); ++q) {  // in row order: the masses add up as before
                const double * s = similarity.data() + q * n_kept;
                size_t nearest = 0;
                for (size_t k = 1; k < n_kept; ++k) {
                    nearest = s[k] > s[nearest] ? k : nearest;
                }
                token[size_t(dropped[q])] = int32_t(nearest);
                mass[nearest] += mass_of(t, dropped[q]);
            }
            dropped.clear();
        }
    }
    for (size_t k = 0; k < n_kept; ++k) {
        out.kept_idx[k] = patch_of(t, rows[k]);
        std::memcpy(out.features + k * d, t.features + size_t(rows[k]) * d, d * sizeof(float));
        out.masses[k] = float(mass[k]);
    }
    if (out.assignment) {
        std::copy(token.begin(), token.end(), out.assignment);
    }
}

void emit_merged(const dcp_tokens & t, const index_list & rows, const std::vector<float> & features,
                 const std::vector<float> & masses, const index_list & local, const dcp_selection & out) {
    index_list order(rows.size(), 0);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&rows](int32_t a, int32_t b) { return rows[a] < rows[b]; });
    const size_t d = size_t(t.n_dim);
    for (size_t k = 0; k < order.size(); ++k) {
        const size_t src = size_t(order[k]);
        out.kept_idx[k] = patch_of(t, rows[src]);
        std::memcpy(out.features + k * d, features.data() + src * d, d * sizeof(float));
        out.masses[k] = masses[src];
    }
    if (out.assignment) {
        index_list rank(order.size(), 0);  // method-local token → output token
        for (size_t k = 0; k < order.size(); ++k) {
            rank[size_t(order[k])] = int32_t(k);
        }
        for (size_t i = 0; i < size_t(t.n_tokens); ++i) {
            out.assignment[i] = local[i] >= 0 ? rank[size_t(local[i])] : -1;
        }
    }
}

// ---- validation ------------------------------------------------------------------------------

namespace {

// Blocks of 256 values checked without branches (x - x is 0 for a finite x, NaN for NaN and ±Inf),
// so the loop vectorises; the checks read every input value and ran one compare-and-branch a value.
DCP_VECTOR_CLONES bool all_finite(const float * values, size_t n) {
    constexpr size_t block = 256;
    size_t i = 0;
    for (; i + block <= n; i += block) {
        float zero[16] = {};  // Σ (x - x) in 16 lanes: 0 unless a NaN or Inf went in
        for (size_t k = 0; k < block; k += 16) {
            for (size_t l = 0; l < 16; ++l) {
                zero[l] += values[i + k + l] - values[i + k + l];
            }
        }
        for (float z : zero) {
            if (z != 0.0f) {
                return false;
            }
        }
    }
    for (; i < n; ++i) {
        if (!std::isfinite(values[i])) {
            return false;
        }
    }
    return true;
}

bool shape_is_valid(const dcp_tokens & t) {
    const bool sizes = t.n_tokens >= 1 && t.n_dim >= 1 && t.grid_h >= 1 && t.grid_w >= 1
        && (!t.keys || t.n_dim_keys >= 1) && (!t.text || t.n_text >= 0);
    const int64_t n_grid = int64_t(t.grid_h) * t.grid_w;
    return sizes && (t.patch_idx ? t.n_tokens <= n_grid : t.n_tokens == n_grid);
}

bool patch_idx_is_valid(const dcp_tokens & t) {
    if (!t.patch_idx) {
        return true;
    }
    const int64_t n_grid = int64_t(t.grid_h) * t.grid_w;
    for (int32_t i = 0; i < t.n_tokens; ++i) {
        const int32_t p = t.patch_idx[i];
        if (p < 0 || p >= n_grid || (i > 0 && p <= t.patch_idx[i - 1])) {
            return false;
        }
    }
    return true;
}

bool masses_are_valid(const dcp_tokens & t) {
    if (!t.masses_in) {
        return true;
    }
    for (int32_t i = 0; i < t.n_tokens; ++i) {
        if (!(std::isfinite(t.masses_in[i]) && t.masses_in[i] > 0.0f)) {
            return false;
        }
    }
    return true;
}

// Everything dcp_prune can check before any method runs; methods add their own n_keep rules.
dcp_status check_inputs(const dcp_tokens * t, const dcp_prune_params & params,
                        const dcp_selection * out, const dcp_method_desc * method) {
    if (!t || !t->features || !out || !out->kept_idx || !out->features || !out->masses) {
        return DCP_STATUS_NULL_BUFFER;
    }
    if (!method) {
        return DCP_STATUS_BAD_METHOD;
    }
    if (!shape_is_valid(*t)) {
        return DCP_STATUS_BAD_SHAPE;
    }
    if (!patch_idx_is_valid(*t)) {
        return DCP_STATUS_BAD_PATCH_IDX;
    }
    if (params.n_keep < 1 || params.n_keep > t->n_tokens) {
        return DCP_STATUS_BAD_N_KEEP;
    }
    if (!options_are_valid(params.options)) {
        return DCP_STATUS_BAD_OPTION;
    }
    if (method->needs_cls_attn && !t->cls_attn) {
        return DCP_STATUS_MISSING_CLS_ATTN;
    }
    if (!all_finite(t->features, size_t(t->n_tokens) * size_t(t->n_dim))) {
        return DCP_STATUS_NON_FINITE_FEATURES;
    }
    if (t->cls_attn && !all_finite(t->cls_attn, size_t(t->n_tokens))) {
        return DCP_STATUS_NON_FINITE_CLS_ATTN;
    }
    if (t->keys && !all_finite(t->keys, size_t(t->n_tokens) * size_t(t->n_dim_keys))) {
        return DCP_STATUS_NON_FINITE_KEYS;
    }
    if (t->text && !all_finite(t->text, size_t(t->n_text) * size_t(t->n_dim))) {
        return DCP_STATUS_NON_FINITE_TEXT;
    }
    return masses_are_valid(*t) ? DCP_STATUS_OK : DCP_STATUS_BAD_MASSES;
}

} // namespace

kappa_reference kappa_reference_of(const unit_set & unit_a, const float * masses_a) {
    const size_t n_a = unit_a.data.size() / unit_a.n_cols;
    kappa_reference ref{unit_a, std::vector<double>(n_a, 1.0), 0.0};
    for (size_t i = 0; i < n_a; ++i) {
        if (masses_a) {
            ref.masses[i] = masses_a[i];
        }
        ref.total += ref.masses[i];
    }
    return ref;
}

float kappa_from(const kappa_reference & ref, const float * b, int32_t n_b) {
    const unit_set unit_b = exact_unit_rows(b, n_b, int32_t(ref.unit.n_cols));
    constexpr size_t block = 4;  // input rows against every row of b at a time (cosines_tile)
    std::vector<double> cosine(block * size_t(n_b));  // (block, n_b) scratch
    double covered = 0.0;  // Σ m_i · (best cosine of row i to b), in row order
    for (size_t i = 0; i < ref.masses.size(); i += block) {
        const size_t n_rows = std::min(block, ref.masses.size() - i);
        const float * rows[block];
        for (size_t q = 0; q < n_rows; ++q) {
            rows[q] = ref.unit.row(int32_t(i + q));
        }
        cosines_tile(rows, n_rows, unit_b, nullptr, size_t(n_b), cosine.data());
        for (size_t q = 0; q < n_rows; ++q) {
            const double * s = cosine.data() + q * size_t(n_b);
            covered += ref.masses[i + q] * *std::max_element(s, s + n_b);
        }
    }
    return float(std::max(0.0, 1.0 - covered / ref.total));
}

} // namespace dcp

// ---- public API ------------------------------------------------------------------------------

using namespace dcp;

float dcp_kappa(const float * a, const float * masses_a, int32_t n_a, const float * b, int32_t n_b, int32_t n_dim) {
    const unit_set unit_a = exact_unit_rows(a, n_a, n_dim);
    return kappa_from(kappa_reference_of(unit_a, masses_a), b, n_b);
}

dcp_status dcp_prune(const dcp_tokens * tokens, dcp_prune_params params, dcp_selection * out) {
    dcp_status status = check_inputs(tokens, params, out, dcp_method_info(params.method));
    if (status != DCP_STATUS_OK) {
        return status;
    }
    out->used_tatcs = false;
    out->kappa = std::numeric_limits<float>::quiet_NaN();  // a method may write it (dcp does, from its own reference)
    status = method_function(params.method)(*tokens, params, *out);
    if (status == DCP_STATUS_OK && std::isnan(out->kappa)) {
        out->kappa = dcp_kappa(tokens->features, tokens->masses_in, tokens->n_tokens, out->features, params.n_keep,
                               tokens->n_dim);
    }
    return status;
}

const char * dcp_status_string(dcp_status status) {
    switch (status) {
        case DCP_STATUS_OK:                  return "ok";
        case DCP_STATUS_NULL_BUFFER:         return "a required buffer is NULL";
        case DCP_STATUS_BAD_SHAPE:           return "n_tokens must equal grid_h * grid_w (or fit the grid when "
                                                    "patch_idx is given) and every size must be >= 1";
        case DCP_STATUS_BAD_METHOD:          return "unknown method";
        case DCP_STATUS_BAD_N_KEEP:          return "n_keep must be in 1..n_tokens; full needs n_keep == n_tokens; "
                                                    "pool needs its rows x cols grid to fit the patch grid";
        case DCP_STATUS_NON_FINITE_FEATURES: return "features contain NaN or Inf";
        case DCP_STATUS_NON_FINITE_CLS_ATTN: return "cls_attn contains NaN or Inf";
        case DCP_STATUS_MISSING_CLS_ATTN:    return "this method needs cls_attn (the [CLS] attention row)";
        case DCP_STATUS_NON_FINITE_KEYS:     return "keys contain NaN or Inf";
        case DCP_STATUS_NON_FINITE_TEXT:     return "text contains NaN or Inf";
        case DCP_STATUS_BAD_MASSES:          return "every mass must be finite and > 0";
        case DCP_STATUS_BAD_PATCH_IDX:       return "patch_idx must be strictly ascending inside the grid; "
                                                    "pool needs the whole grid without masses";
        case DCP_STATUS_BAD_OPTION:          return "an option is out of range (see dcp_option_info in prune.h)";
        case DCP_STATUS_UNKNOWN_OPTION:      return "no option has this name (see dcp_option_info in prune.h)";
    }
    return "unknown status";
}
