// prune.cpp — the token selectors behind dcp_prune (see prune.h for the contract).
// Plain loops over flat row-major buffers; every method is O(n_tokens × n_dim).

#include "prune.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

using index_list = std::vector<int32_t>;

// Copies the feature rows of `kept` (ascending patch indices) to `out`, each with mass 1.
void emit_selection(const dcp_tokens & tokens, const index_list & kept, const dcp_selection & out) {
    const size_t n_dim = size_t(tokens.n_dim);
    for (size_t k = 0; k < kept.size(); ++k) {
        out.kept_idx[k] = kept[k];
        std::memcpy(out.features + k * n_dim, tokens.features + size_t(kept[k]) * n_dim,
                    n_dim * sizeof(float));
        out.masses[k] = 1.0f;
    }
}

index_list all_indices(int32_t n_tokens) {
    index_list indices(size_t(n_tokens), 0);
    std::iota(indices.begin(), indices.end(), 0);
    return indices;
}

// ---- full ------------------------------------------------------------------------------------

dcp_status prune_full(const dcp_tokens & tokens, const dcp_prune_params & params,
                      const dcp_selection & out) {
    if (params.n_keep != tokens.n_tokens) {
        return DCP_STATUS_BAD_N_KEEP;
    }
    emit_selection(tokens, all_indices(tokens.n_tokens), out);
    return DCP_STATUS_OK;
}

// ---- pool ------------------------------------------------------------------------------------

struct cell_grid {
    int32_t rows;
    int32_t cols;
};

// rows = the largest divisor of n_keep that is <= sqrt(n_keep): the squarest rows × cols grid.
cell_grid pool_cell_grid(int32_t n_keep) {
    int32_t rows = 1;
    for (int32_t r = 1; int64_t(r) * r <= n_keep; ++r) {
        if (n_keep % r == 0) {
            rows = r;
        }
    }
    return {rows, n_keep / rows};
}

// adaptive_avg_pool2d's cell bounds along one axis: [floor(i*n/parts), ceil((i+1)*n/parts)).
int32_t cell_start(int32_t i, int32_t n, int32_t parts) {
    return int32_t(int64_t(i) * n / parts);
}

int32_t cell_end(int32_t i, int32_t n, int32_t parts) {
    return int32_t((int64_t(i + 1) * n + parts - 1) / parts);
}

// Writes the mean feature of patch rows [r0, r1) × columns [c0, c1) to `mean`.
// Sums in double so the result does not depend on the order of the additions.
void cell_mean(const dcp_tokens & tokens, int32_t r0, int32_t r1, int32_t c0, int32_t c1,
               std::vector<double> & sum, float * mean) {
    const size_t n_dim = size_t(tokens.n_dim);
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int32_t r = r0; r < r1; ++r) {
        for (int32_t c = c0; c < c1; ++c) {
            const float * row = tokens.features + (size_t(r) * size_t(tokens.grid_w) + size_t(c)) * n_dim;
            for (size_t j = 0; j < n_dim; ++j) {
                sum[j] += row[j];
            }
        }
    }
    const double count = double(r1 - r0) * double(c1 - c0);
    for (size_t j = 0; j < n_dim; ++j) {
        mean[j] = float(sum[j] / count);
    }
}

dcp_status prune_pool(const dcp_tokens & tokens, const dcp_prune_params & params,
                      const dcp_selection & out) {
    const cell_grid cells = pool_cell_grid(params.n_keep);
    if (cells.rows > tokens.grid_h || cells.cols > tokens.grid_w) {
        return DCP_STATUS_BAD_N_KEEP;
    }
    std::vector<double> sum(size_t(tokens.n_dim));
    for (int32_t i = 0; i < cells.rows; ++i) {
        const int32_t r0 = cell_start(i, tokens.grid_h, cells.rows);
        const int32_t r1 = cell_end(i, tokens.grid_h, cells.rows);
        for (int32_t j = 0; j < cells.cols; ++j) {
            const int32_t c0 = cell_start(j, tokens.grid_w, cells.cols);
            const int32_t c1 = cell_end(j, tokens.grid_w, cells.cols);
            const size_t k = size_t(i) * size_t(cells.cols) + size_t(j);
            cell_mean(tokens, r0, r1, c0, c1, sum, out.features + k * size_t(tokens.n_dim));
            out.masses[k] = float((r1 - r0) * (c1 - c0));
            out.kept_idx[k] = ((r0 + r1 - 1) / 2) * tokens.grid_w + (c0 + c1 - 1) / 2;
        }
    }
    return DCP_STATUS_OK;
}

// ---- fastervlm -------------------------------------------------------------------------------

dcp_status prune_fastervlm(const dcp_tokens & tokens, const dcp_prune_params & params,
                           const dcp_selection & out) {
    const float * attn = tokens.cls_attn;
    // Higher attention first; ties go to the lower index so the chosen set is deterministic.
    auto ranks_higher = [attn](int32_t a, int32_t b) {
        return attn[a] > attn[b] || (attn[a] == attn[b] && a < b);
    };
    index_list kept = all_indices(tokens.n_tokens);
    std::nth_element(kept.begin(), kept.begin() + params.n_keep, kept.end(), ranks_higher);
    kept.resize(size_t(params.n_keep));
    std::sort(kept.begin(), kept.end());
    emit_selection(tokens, kept, out);
    return DCP_STATUS_OK;
}

// ---- random ----------------------------------------------------------------------------------

uint64_t splitmix64_next(uint64_t & state) {
    state += 0x9E3779B97F4A7C15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

dcp_status prune_random(const dcp_tokens & tokens, const dcp_prune_params & params,
                        const dcp_selection & out) {
    index_list perm = all_indices(tokens.n_tokens);
    uint64_t state = params.seed;
    // Partial Fisher–Yates: perm[0..n_keep) becomes a uniform random subset.
    for (int32_t i = 0; i < params.n_keep; ++i) {
        const uint64_t remaining = uint64_t(tokens.n_tokens - i);
        const size_t j = size_t(i) + size_t(splitmix64_next(state) % remaining);
        std::swap(perm[size_t(i)], perm[j]);
    }
    perm.resize(size_t(params.n_keep));
    std::sort(perm.begin(), perm.end());
    emit_selection(tokens, perm, out);
    return DCP_STATUS_OK;
}

// ---- method table and validation -------------------------------------------------------------

using prune_fn = dcp_status (*)(const dcp_tokens &, const dcp_prune_params &, const dcp_selection &);

struct method_entry {
    dcp_method   method;
    const char * name;
    bool         needs_cls_attn;
    prune_fn     run;
};

constexpr method_entry k_methods[] = {
    {DCP_METHOD_FULL,      "full",      false, prune_full},
    {DCP_METHOD_POOL,      "pool",      false, prune_pool},
    {DCP_METHOD_FASTERVLM, "fastervlm", true,  prune_fastervlm},
    {DCP_METHOD_RANDOM,    "random",    false, prune_random},
};
static_assert(sizeof(k_methods) / sizeof(k_methods[0]) == DCP_METHOD_COUNT,
              "every dcp_method needs a row in k_methods");

const method_entry * find_method(dcp_method method) {
    for (const method_entry & entry : k_methods) {
        if (entry.method == method) {
            return &entry;
        }
    }
    return nullptr;
}

bool all_finite(const float * values, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(values[i])) {
            return false;
        }
    }
    return true;
}

bool shape_is_valid(const dcp_tokens & tokens) {
    return tokens.n_tokens >= 1 && tokens.n_dim >= 1 && tokens.grid_h >= 1 && tokens.grid_w >= 1
        && int64_t(tokens.grid_h) * tokens.grid_w == tokens.n_tokens;
}

// Everything dcp_prune can check before any method runs; methods add their own n_keep rules.
dcp_status check_inputs(const dcp_tokens * tokens, const dcp_prune_params & params,
                        const dcp_selection * out, const method_entry * entry) {
    if (!tokens || !tokens->features || !out || !out->kept_idx || !out->features || !out->masses) {
        return DCP_STATUS_NULL_BUFFER;
    }
    if (!entry) {
        return DCP_STATUS_BAD_METHOD;
    }
    if (!shape_is_valid(*tokens)) {
        return DCP_STATUS_BAD_SHAPE;
    }
    if (params.n_keep < 1 || params.n_keep > tokens->n_tokens) {
        return DCP_STATUS_BAD_N_KEEP;
    }
    if (entry->needs_cls_attn && !tokens->cls_attn) {
        return DCP_STATUS_MISSING_CLS_ATTN;
    }
    if (!all_finite(tokens->features, size_t(tokens->n_tokens) * size_t(tokens->n_dim))) {
        return DCP_STATUS_NON_FINITE_FEATURES;
    }
    if (tokens->cls_attn && !all_finite(tokens->cls_attn, size_t(tokens->n_tokens))) {
        return DCP_STATUS_NON_FINITE_CLS_ATTN;
    }
    return DCP_STATUS_OK;
}

} // namespace

// ---- public API ------------------------------------------------------------------------------

dcp_prune_params dcp_prune_params_default(void) {
    return {DCP_METHOD_POOL, 16, 0};
}

dcp_status dcp_prune(const dcp_tokens * tokens, dcp_prune_params params, dcp_selection * out) {
    const method_entry * entry = find_method(params.method);
    const dcp_status status = check_inputs(tokens, params, out, entry);
    if (status != DCP_STATUS_OK) {
        return status;
    }
    return entry->run(*tokens, params, *out);
}

const char * dcp_status_string(dcp_status status) {
    switch (status) {
        case DCP_STATUS_OK:                  return "ok";
        case DCP_STATUS_NULL_BUFFER:         return "a required buffer is NULL";
        case DCP_STATUS_BAD_SHAPE:           return "n_tokens must equal grid_h * grid_w and every size must be >= 1";
        case DCP_STATUS_BAD_METHOD:          return "unknown method";
        case DCP_STATUS_BAD_N_KEEP:          return "n_keep must be in 1..n_tokens; full needs n_keep == n_tokens; "
                                                    "pool needs its rows x cols grid to fit the patch grid";
        case DCP_STATUS_NON_FINITE_FEATURES: return "features contain NaN or Inf";
        case DCP_STATUS_NON_FINITE_CLS_ATTN: return "cls_attn contains NaN or Inf";
        case DCP_STATUS_MISSING_CLS_ATTN:    return "this method needs cls_attn (the [CLS] attention row)";
    }
    return "unknown status";
}

const char * dcp_method_name(dcp_method method) {
    const method_entry * entry = find_method(method);
    return entry ? entry->name : nullptr;
}

dcp_status dcp_method_from_name(const char * name, dcp_method * method) {
    for (const method_entry & entry : k_methods) {
        if (name && std::strcmp(name, entry.name) == 0) {
            *method = entry.method;
            return DCP_STATUS_OK;
        }
    }
    return DCP_STATUS_BAD_METHOD;
}

bool dcp_method_needs_cls_attn(dcp_method method) {
    const method_entry * entry = find_method(method);
    return entry && entry->needs_cls_attn;
}
