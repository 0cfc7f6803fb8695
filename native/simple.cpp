// simple.cpp — the simple selectors: full, pool, fastervlm, random (contracts in prune.h).
// The NumPy twin is prune_reference/simple.py. Plain loops over flat row-major buffers.

#include "prune_internal.h"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace dcp {
namespace {

index_list all_rows(int32_t n_tokens) {
    index_list rows(size_t(n_tokens), 0);
    std::iota(rows.begin(), rows.end(), 0);
    return rows;
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

// ---- random ----------------------------------------------------------------------------------

uint64_t splitmix64_next(uint64_t & state) {
    state += 0x9E3779B97F4A7C15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

} // namespace

// ---- the selectors (inputs validated by dcp_prune) ---------------------------------------------

dcp_status prune_full(const dcp_tokens & tokens, const dcp_prune_params & params, dcp_selection & out) {
    if (params.n_keep != tokens.n_tokens) {
        return DCP_STATUS_BAD_N_KEEP;
    }
    emit_selection(tokens, all_rows(tokens.n_tokens), out);
    out.kappa = 0.0f;  // every input row is kept: nothing uncovered (and no n × n cosine pass)
    return DCP_STATUS_OK;
}

dcp_status prune_pool(const dcp_tokens & tokens, const dcp_prune_params & params, dcp_selection & out) {
    if (tokens.patch_idx || tokens.masses_in) {
        return DCP_STATUS_BAD_PATCH_IDX;  // pooling is defined on the whole, unmerged grid
    }
    const cell_grid cells = pool_cell_grid(params.n_keep);
    if (cells.rows > tokens.grid_h || cells.cols > tokens.grid_w) {
        return DCP_STATUS_BAD_N_KEEP;
    }
    std::vector<double> sum(size_t(tokens.n_dim));
    if (out.assignment) {
        std::fill(out.assignment, out.assignment + tokens.n_tokens, -1);
    }
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
            for (int32_t r = r0; out.assignment && r < r1; ++r) {
                for (int32_t c = c0; c < c1; ++c) {
                    int32_t & a = out.assignment[size_t(r) * size_t(tokens.grid_w) + size_t(c)];
                    if (a < 0) {
                        a = int32_t(k);  // overlapping cells: the first cell in raster order wins
                    }
                }
            }
        }
    }
    return DCP_STATUS_OK;
}

dcp_status prune_fastervlm(const dcp_tokens & tokens, const dcp_prune_params & params, dcp_selection & out) {
    emit_selection(tokens, top_k(tokens.cls_attn, tokens.n_tokens, params.n_keep), out);
    return DCP_STATUS_OK;
}

dcp_status prune_random(const dcp_tokens & tokens, const dcp_prune_params & params, dcp_selection & out) {
    index_list perm = all_rows(tokens.n_tokens);
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

} // namespace dcp
