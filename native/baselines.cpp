// baselines.cpp — VisionZip, DivPrune and CDPruner behind dcp_prune (contracts in prune.h).
//
// Every score is a cosine computed in double from the raw float32 rows, with every dot product
// summed by dot_f64 (prune_internal.h), whose order the NumPy twin (prune_reference/baselines.py)
// replays: both get the same bits and break every tie the same way, including the exact ties
// of duplicate rows.

#include "prune_internal.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace dcp {
namespace {

// ---- exact cosines ---------------------------------------------------------------------------

// cos from a dot product and the two squared norms; 0 when either vector is zero (as a zero
// unit row). A row with itself, or with a duplicate, gives exactly 1: sqrt(s·s) == s in IEEE.
double cosine(double ab, double aa, double bb) {
    const double norms = std::sqrt(aa * bb);
    return norms > 0.0 ? ab / norms : 0.0;
}

// Borrowed row-major float32 rows with their squared norms.
struct row_set {
    const float *       data;
    size_t              n_cols;
    std::vector<double> norm2;  // (n_rows,)

    row_set(const float * x, int32_t n_rows, int32_t n_cols_) : data(x), n_cols(size_t(n_cols_)) {
        norm2.resize(size_t(n_rows));
        for (int32_t i = 0; i < n_rows; ++i) {
            norm2[size_t(i)] = dot_f64(row(i), row(i), n_cols);
        }
    }

    int32_t n_rows() const { return int32_t(norm2.size()); }
    const float * row(int32_t i) const { return data + size_t(i) * n_cols; }
};

// cos(a_i, b_j) for rows of two sets of the same width.
double cos_rows(const row_set & a, int32_t i, const row_set & b, int32_t j) {
    return cosine(dot_f64(a.row(i), b.row(j), a.n_cols), a.norm2[size_t(i)], b.norm2[size_t(j)]);
}

// ---- visionzip -------------------------------------------------------------------------------

int32_t visionzip_n_dominant(int32_t n_keep, float ratio) {
    const int32_t rounded = int32_t(std::floor(double(n_keep) * double(ratio) + 0.5));
    return std::min(n_keep, std::max(1, rounded));
}

// Rows 0..n_rows-1 that are not in `taken`, ascending.
index_list rows_except(const index_list & taken, int32_t n_rows) {
    std::vector<uint8_t> is_taken(size_t(n_rows), 0);
    for (int32_t row : taken) {
        is_taken[size_t(row)] = 1;
    }
    index_list rest;
    for (int32_t row = 0; row < n_rows; ++row) {
        if (!is_taken[size_t(row)]) {
            rest.push_back(row);
        }
    }
    return rest;
}

// Positions in `rest` of the n_ctx targets, spread uniformly: floor(i * |rest| / n_ctx).
index_list spread_targets(size_t n_rest, int32_t n_ctx) {
    index_list positions(size_t(n_ctx), 0);
    for (int32_t i = 0; i < n_ctx; ++i) {
        positions[size_t(i)] = int32_t(int64_t(i) * int64_t(n_rest) / n_ctx);
    }
    return positions;
}

// For each position in `rest`, the target it merges into: a target keeps itself, every other
// row joins its most cosine-similar target (ties go to the lower target row).
index_list nearest_targets(const row_set & semantic, const index_list & rest, const index_list & target_pos) {
    index_list cluster(rest.size(), -1);
    for (size_t c = 0; c < target_pos.size(); ++c) {
        cluster[size_t(target_pos[c])] = int32_t(c);
    }
    for (size_t q = 0; q < rest.size(); ++q) {
        if (cluster[q] >= 0) {
            continue;
        }
        double best = -k_infinity;
        for (size_t c = 0; c < target_pos.size(); ++c) {
            const double similarity = cos_rows(semantic, rest[q], semantic, rest[size_t(target_pos[c])]);
            if (similarity > best) {
                best = similarity;
                cluster[q] = int32_t(c);
            }
        }
    }
    return cluster;
}

// Contextual token c = mass-weighted mean feature of cluster c, mass = the cluster's total.
// Sums in double, in row order (the twin uses the same order, so the masses agree exactly).
void merge_clusters(const dcp_tokens & t, const index_list & rest, const index_list & cluster, int32_t n_ctx,
                    float * features, float * masses) {
    const size_t d = size_t(t.n_dim);
    std::vector<double> sum(size_t(n_ctx) * d, 0.0), mass(size_t(n_ctx), 0.0);
    for (size_t q = 0; q < rest.size(); ++q) {
        const double m = mass_of(t, rest[q]);
        const float * x = t.features + size_t(rest[q]) * d;
        double * s = sum.data() + size_t(cluster[q]) * d;
        mass[size_t(cluster[q])] += m;
        for (size_t j = 0; j < d; ++j) {
            s[j] += m * double(x[j]);
        }
    }
    for (size_t c = 0; c < size_t(n_ctx); ++c) {
        masses[c] = float(mass[c]);
        for (size_t j = 0; j < d; ++j) {
            features[c * d + j] = float(sum[c * d + j] / mass[c]);
        }
    }
}

// ---- divprune --------------------------------------------------------------------------------

// The row least cosine-similar to the mean unit row (ties go to the lower row). The mean's
// direction is Σ x_i / |x_i| over the non-zero rows, summed in row order.
int32_t least_typical_row(const row_set & x) {
    const size_t d = x.n_cols;
    std::vector<double> direction(d, 0.0);
    for (int32_t i = 0; i < x.n_rows(); ++i) {
        if (x.norm2[size_t(i)] > 0.0) {
            const double norm = std::sqrt(x.norm2[size_t(i)]);
            for (size_t j = 0; j < d; ++j) {
                direction[j] += double(x.row(i)[j]) / norm;
            }
        }
    }
    const double direction_norm2 = dot_f64(direction.data(), direction.data(), d);
    int32_t first = 0;
    double lowest = k_infinity;
    for (int32_t i = 0; i < x.n_rows(); ++i) {
        const double similarity = cosine(dot_f64(x.row(i), direction.data(), d), x.norm2[size_t(i)], direction_norm2);
        if (similarity < lowest) {
            lowest = similarity;
            first = i;
        }
    }
    return first;
}

// ---- cdpruner --------------------------------------------------------------------------------

constexpr double k_exhausted_gain = 1e-10;  // a DPP gain below this adds nothing new

// The DPP quality of each row: 1 without text, else (1 - θ) + θ·r̃ with r̃ the min-max normalised
// relevance r_i = max_j cos(x_i, text_j) (all 1 when r is constant).
std::vector<double> quality_weights(const dcp_tokens & t, const row_set & x, float theta) {
    std::vector<double> w(size_t(t.n_tokens), 1.0);
    if (!t.text || t.n_text < 1) {
        return w;
    }
    const row_set words(t.text, t.n_text, t.n_dim);
    std::vector<double> relevance(size_t(t.n_tokens), -k_infinity);
    for (int32_t i = 0; i < t.n_tokens; ++i) {
        for (int32_t k = 0; k < t.n_text; ++k) {
            relevance[size_t(i)] = std::max(relevance[size_t(i)], cos_rows(x, i, words, k));
        }
    }
    const auto [lo, hi] = std::minmax_element(relevance.begin(), relevance.end());
    const double low = *lo, range = *hi - *lo;
    for (size_t i = 0; i < w.size(); ++i) {
        const double normalised = range > 0.0 ? (relevance[i] - low) / range : 1.0;
        w[i] = (1.0 - double(theta)) + double(theta) * normalised;
    }
    return w;
}

// Greedy DPP MAP state (Chen, Zhang & Zhou, NeurIPS 2018): d2_i is row i's remaining gain, and
// c holds one row of Cholesky factors per pick ((n_keep, n_tokens), step-major).
struct dpp_state {
    std::vector<double>  d2;      // (n,)
    std::vector<double>  c;       // (n_keep, n)
    std::vector<double>  c_dot;   // (n,) scratch: ⟨c_j, c_i⟩
    std::vector<uint8_t> picked;  // (n,)

    dpp_state(size_t n, size_t n_keep) : d2(n), c(n_keep * n, 0.0), c_dot(n), picked(n, 0) {}
};

// After picking row j at step `step`: e_i = (L_ji - ⟨c_j, c_i⟩) / sqrt(d2_j) for every unpicked
// row i, with L_ji = w_j·w_i·cos(x_j, x_i) computed on the fly; c_i gets e_i, d2_i loses e_i².
void cholesky_step(const row_set & x, const std::vector<double> & w, int32_t j, size_t step, dpp_state & s) {
    const size_t n = s.d2.size();
    std::fill(s.c_dot.begin(), s.c_dot.end(), 0.0);
    for (size_t k = 0; k < step; ++k) {
        const double * c_k = s.c.data() + k * n;
        const double c_kj = c_k[size_t(j)];
        for (size_t i = 0; i < n; ++i) {
            s.c_dot[i] += c_kj * c_k[i];
        }
    }
    const double root = std::sqrt(s.d2[size_t(j)]);
    double * e = s.c.data() + step * n;
    for (size_t i = 0; i < n; ++i) {
        if (!s.picked[i]) {
            const double kernel = w[size_t(j)] * w[i] * cos_rows(x, j, x, int32_t(i));
            e[i] = (kernel - s.c_dot[i]) / root;
            s.d2[i] -= e[i] * e[i];
        }
    }
}

// The kernel is exhausted: the remaining picks go to the unpicked rows of highest weight
// (ties go to the lower row).
void fill_by_weight(const std::vector<double> & w, const std::vector<uint8_t> & picked, int32_t n_keep,
                    index_list & rows) {
    index_list rest;
    for (size_t i = 0; i < w.size(); ++i) {
        if (!picked[i]) {
            rest.push_back(int32_t(i));
        }
    }
    std::stable_sort(rest.begin(), rest.end(), [&w](int32_t a, int32_t b) { return w[size_t(a)] > w[size_t(b)]; });
    rows.insert(rows.end(), rest.begin(), rest.begin() + (n_keep - int32_t(rows.size())));
}

} // namespace

// ---- the methods (contracts in prune.h) ----------------------------------------------------------

dcp_status prune_visionzip(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out) {
    const int32_t n_dom = visionzip_n_dominant(p.n_keep, p.options.visionzip_dominant_ratio);
    const int32_t n_ctx = p.n_keep - n_dom;
    const size_t d = size_t(t.n_dim);
    index_list rows = top_k(t.cls_attn, t.n_tokens, n_dom);  // dominant, then contextual targets
    if (n_ctx == 0) {
        emit_selection(t, rows, out);  // the dominant rows; the rest join them
        return DCP_STATUS_OK;
    }
    std::vector<float> features(size_t(p.n_keep) * d), masses(size_t(p.n_keep));
    for (size_t k = 0; k < size_t(n_dom); ++k) {
        std::memcpy(features.data() + k * d, t.features + size_t(rows[k]) * d, d * sizeof(float));
        masses[k] = mass_of(t, rows[k]);
    }
    index_list local(size_t(t.n_tokens), -1);  // input row → index into rows
    for (size_t k = 0; k < size_t(n_dom); ++k) {
        local[size_t(rows[k])] = int32_t(k);
    }
    const index_list rest = rows_except(rows, t.n_tokens);
    const index_list target_pos = spread_targets(rest.size(), n_ctx);
    const row_set semantic = t.keys ? row_set(t.keys, t.n_tokens, t.n_dim_keys)
                                    : row_set(t.features, t.n_tokens, t.n_dim);
    const index_list cluster = nearest_targets(semantic, rest, target_pos);
    merge_clusters(t, rest, cluster, n_ctx, features.data() + size_t(n_dom) * d, masses.data() + n_dom);
    for (int32_t position : target_pos) {
        rows.push_back(rest[size_t(position)]);
    }
    for (size_t q = 0; q < rest.size(); ++q) {
        local[size_t(rest[q])] = n_dom + cluster[q];
    }
    emit_merged(t, rows, features, masses, local, out);
    return DCP_STATUS_OK;
}

dcp_status prune_divprune(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out) {
    const row_set x(t.features, t.n_tokens, t.n_dim);
    std::vector<double> min_distance(size_t(t.n_tokens), k_infinity);  // to the picked rows
    std::vector<uint8_t> picked(size_t(t.n_tokens), 0);
    index_list rows;
    int32_t next = least_typical_row(x);
    while (true) {
        rows.push_back(next);
        picked[size_t(next)] = 1;
        if (int32_t(rows.size()) == p.n_keep) {
            break;
        }
        for (int32_t i = 0; i < t.n_tokens; ++i) {
            if (!picked[size_t(i)]) {
                min_distance[size_t(i)] = std::min(min_distance[size_t(i)], 1.0 - cos_rows(x, i, x, next));
            }
        }
        next = best_row(min_distance, picked);
    }
    emit_selection(t, rows, out);
    return DCP_STATUS_OK;
}

dcp_status prune_cdpruner(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out) {
    const size_t n = size_t(t.n_tokens);
    const row_set x(t.features, t.n_tokens, t.n_dim);
    const std::vector<double> w = quality_weights(t, x, p.options.cdpruner_theta);
    dpp_state s(n, size_t(p.n_keep));
    for (size_t i = 0; i < n; ++i) {
        s.d2[i] = x.norm2[i] > 0.0 ? w[i] * w[i] : 0.0;  // L_ii; a zero row adds nothing
    }
    index_list rows;
    for (size_t step = 0; step < size_t(p.n_keep); ++step) {
        const int32_t j = best_row(s.d2, s.picked);
        if (s.d2[size_t(j)] < k_exhausted_gain) {
            fill_by_weight(w, s.picked, p.n_keep, rows);
            break;
        }
        rows.push_back(j);
        s.picked[size_t(j)] = 1;
        cholesky_step(x, w, j, step, s);
    }
    emit_selection(t, rows, out);
    return DCP_STATUS_OK;
}

} // namespace dcp
