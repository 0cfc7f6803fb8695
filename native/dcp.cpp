// dcp.cpp — DCP-Prune: ACGR, TATCS and their combination behind dcp_prune (contracts in prune.h).
//
// The NumPy twin (prune_reference/dcp.py) must make every choice this file makes (neighbours,
// centres, clusters, representatives), so every score that is compared is built from the same
// operations in the same order on both sides:
//   - unit rows (exact_unit_rows): the norm summed by dot_f64 (double, 8 lanes), then each value
//     is x·(1/norm) rounded to float32.
//   - cosines of unit rows (cosine_f32): float32 products summed by lane_dot in 16 lanes, which
//     the compiler vectorises without reassociating (no -ffast-math) and NumPy replays lane by lane.
//     Duplicate rows give bit-identical cosines, so their ties are exact on both sides.
//   - everything after a cosine in double, with libm's exp for the spatial kernel.
// Sums that only shape output features and masses are in double, in row order.

#include "prune_internal.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace dcp {
namespace {

// dcp: a κ at or below this is float32 rounding noise (ACGR lost nothing), not a shift to act on;
// the two implementations' κ may differ at that level, so it must not decide between stages.
constexpr float k_kappa_noise = 1e-4f;

unit_set feature_unit_rows(const dcp_tokens & t) {
    return exact_unit_rows(t.features, t.n_tokens, t.n_dim);
}

// What ACGR compares semantically: keys when given, else features.
unit_set semantic_unit_rows(const dcp_tokens & t) {
    return t.keys ? exact_unit_rows(t.keys, t.n_tokens, t.n_dim_keys) : feature_unit_rows(t);
}

// A stage's result: token k sits on input row rows[k].
struct merged_tokens {
    index_list         rows;      // (K,)
    std::vector<float> features;  // (K, d)
    std::vector<float> masses;    // (K,)
    index_list         local;     // (N,) input row → the token k it went to, -1 if dropped
};

// ---- acgr ------------------------------------------------------------------------------------

// λ·exp(-(Δr² + Δc²) / (2σ²)) between two patches, as λ·(g(|Δr|)·g(|Δc|)) from per-axis tables
// g(k) = exp(-k² / (2σ²)): N·M kernel values for grid_h + grid_w calls to exp.
struct spatial_kernel {
    std::vector<double> along_rows;  // (grid_h,)
    std::vector<double> along_cols;  // (grid_w,)
    double              weight;
    int32_t             grid_w;

    spatial_kernel(const dcp_tokens & t, const dcp_options & o)
        : along_rows(axis_table(t.grid_h, o.acgr_spatial_sigma)),
          along_cols(axis_table(t.grid_w, o.acgr_spatial_sigma)),
          weight(o.acgr_spatial_weight), grid_w(t.grid_w) {}

    static std::vector<double> axis_table(int32_t n, float sigma) {
        const double s = sigma;
        std::vector<double> g(static_cast<size_t>(n));
        for (int32_t k = 0; k < n; ++k) {
            g[size_t(k)] = std::exp(-(double(k) * double(k)) / (2.0 * s * s));
        }
        return g;
    }

    // Between the patches at grid cells (row, col) a and b.
    double operator()(const int32_t * cell_a, const int32_t * cell_b) const {
        const int32_t rows = std::abs(cell_a[0] - cell_b[0]);
        const int32_t cols = std::abs(cell_a[1] - cell_b[1]);
        return weight * (along_rows[size_t(rows)] * along_cols[size_t(cols)]);
    }

    // The grid cells (row, col) of the given rows' patches ((|rows|, 2)), so the kernel divides once per row.
    std::vector<int32_t> cells(const dcp_tokens & t, const index_list & rows) const {
        std::vector<int32_t> cell(2 * rows.size());
        for (size_t k = 0; k < rows.size(); ++k) {
            cell[2 * k] = patch_of(t, rows[k]) / grid_w;
            cell[2 * k + 1] = patch_of(t, rows[k]) % grid_w;
        }
        return cell;
    }
};

// ρ_c = clamp(s_c / s̄, 0, 1): how much of its content a context row hands over (1 when s̄ <= 0).
std::vector<double> handover_weights(const dcp_tokens & t) {
    double total = 0.0;
    for (int32_t i = 0; i < t.n_tokens; ++i) {
        total += t.cls_attn[i];
    }
    const double mean = total / t.n_tokens;
    std::vector<double> rho(size_t(t.n_tokens), 1.0);
    for (size_t i = 0; mean > 0.0 && i < rho.size(); ++i) {
        rho[i] = std::min(1.0, std::max(0.0, double(t.cls_attn[i]) / mean));
    }
    return rho;
}

// Per anchor: Σ of (weight · feature) and of weight, seeded with the anchor itself, and the
// absorbed mass. Anchors are addressed by their position in the ascending anchor list.
struct recovery {
    std::vector<double> numerator;    // (M, d)
    std::vector<double> denominator;  // (M,)
    std::vector<double> mass;         // (M,)
};

recovery start_recovery(const dcp_tokens & t, const index_list & anchors) {
    const size_t d = size_t(t.n_dim);
    recovery r{std::vector<double>(anchors.size() * d), std::vector<double>(anchors.size()),
               std::vector<double>(anchors.size())};
    for (size_t a = 0; a < anchors.size(); ++a) {
        const double m = mass_of(t, anchors[a]);
        const float * x = t.features + size_t(anchors[a]) * d;
        for (size_t j = 0; j < d; ++j) {
            r.numerator[a * d + j] = m * double(x[j]);
        }
        r.denominator[a] = m;
        r.mass[a] = m;
    }
    return r;
}

// affinity[a] = ⟨u_row, u_anchor⟩ + spatial kernel where that cosine (cosine[a]) exceeds
// min_similarity, else -inf (no link on proximity alone), for every anchor a (grid cells in anchor_cells).
void anchor_affinities(const dcp_tokens & t, const double * cosine, const std::vector<int32_t> & anchor_cells,
                       const spatial_kernel & spatial, double min_similarity, int32_t row,
                       std::vector<double> & affinity) {
    const int32_t cell[2] = {patch_of(t, row) / spatial.grid_w, patch_of(t, row) % spatial.grid_w};
    for (size_t a = 0; a < affinity.size(); ++a) {
        affinity[a] = cosine[a] > min_similarity ? cosine[a] + spatial(cell, anchor_cells.data() + 2 * a)
                                                 : -k_infinity;
    }
}

// order[0 .. n) = the n anchors of highest affinity, ties to the lower position, best first: what
// std::partial_sort leaves there (the ranking is a strict total order), by insertion, since a row
// needs its n_neighbors best of M.
void best_first(const std::vector<double> & affinity, int32_t n, index_list & order) {
    int32_t filled = 0;
    for (int32_t a = 0; a < int32_t(affinity.size()); ++a) {
        int32_t pos = filled;  // a ranks below every equal affinity already placed (all lower positions)
        while (pos > 0 && affinity[size_t(a)] > affinity[size_t(order[size_t(pos - 1)])]) {
            --pos;
        }
        if (pos < n) {
            for (int32_t k = std::min(filled, n - 1); k > pos; --k) {
                order[size_t(k)] = order[size_t(k - 1)];
            }
            order[size_t(pos)] = a;
            filled = std::min(filled + 1, n);
        }
    }
}

// Context row `row` hands ρ·w of its feature mass-weighted (and w of its mass) to each of its
// positively linked anchors: order[0 .. n_neighbors) by affinity, best first, so the positive
// links are a prefix; w = affinity / Σ positive affinities.
// Returns the number of counted links (0: the row is dropped).
DCP_VECTOR_CLONES int32_t absorb(const dcp_tokens & t, int32_t row, double rho, const std::vector<double> & affinity,
            const index_list & order, int32_t n_neighbors, recovery & r) {
    int32_t n_links = 0;
    double total = 0.0;
    for (; n_links < n_neighbors && affinity[size_t(order[size_t(n_links)])] > 0.0; ++n_links) {
        total += affinity[size_t(order[size_t(n_links)])];
    }
    const size_t d = size_t(t.n_dim);
    const double m = mass_of(t, row);
    const float * x = t.features + size_t(row) * d;
    for (size_t k = 0; k < size_t(n_links); ++k) {
        const size_t a = size_t(order[k]);
        const double w = affinity[a] / total;
        const double pull = w * rho * m;
        double * numerator = r.numerator.data() + a * d;
        for (size_t j = 0; j < d; ++j) {
            numerator[j] += pull * double(x[j]);
        }
        r.denominator[a] += pull;
        r.mass[a] += w * m;
    }
    return n_links;
}

// Feature = numerator / denominator, except that an anchor whose own share m_a / denominator fell
// below f = self_share becomes f·x_a + (1 - f)·(mean of what it absorbed).
merged_tokens finish_recovery(const dcp_tokens & t, const index_list & anchors, const recovery & r,
                              double self_share, index_list local) {
    const size_t d = size_t(t.n_dim);
    merged_tokens out{anchors, std::vector<float>(anchors.size() * d), std::vector<float>(anchors.size()),
                      std::move(local)};
    for (size_t a = 0; a < anchors.size(); ++a) {
        const double m = mass_of(t, anchors[a]);
        const double absorbed = r.denominator[a] - m;
        const float * x = t.features + size_t(anchors[a]) * d;
        const double * numerator = r.numerator.data() + a * d;
        const bool diluted = m < self_share * r.denominator[a] && absorbed > 0.0;
        for (size_t j = 0; j < d; ++j) {
            out.features[a * d + j] = diluted
                ? float(self_share * double(x[j]) + (1.0 - self_share) * ((numerator[j] - m * double(x[j])) / absorbed))
                : float(numerator[j] / r.denominator[a]);
        }
        out.masses[a] = float(r.mass[a]);
    }
    return out;
}

// ACGR with n_anchors anchors (contract in prune.h); `whole` = semantic_unit_rows(t) when the caller
// has it, else NULL (ACGR normalises its rows a block at a time).
merged_tokens anchor_context_recovery(const dcp_tokens & t, int32_t n_anchors, const dcp_options & o,
                                      const unit_set * whole) {
    index_list anchors = top_k(t.cls_attn, t.n_tokens, n_anchors);
    std::sort(anchors.begin(), anchors.end());  // positions ascend with rows: ties go to the lower row
    std::vector<uint8_t> is_anchor(size_t(t.n_tokens), 0);
    for (int32_t a : anchors) {
        is_anchor[size_t(a)] = 1;
    }
    unit_row_blocks u(t.keys ? t.keys : t.features, t.keys ? t.n_dim_keys : t.n_dim, whole);  // keys, else features
    const unit_set anchor_units = u.gather(anchors);  // (M, ds)
    const spatial_kernel spatial(t, o);
    const std::vector<double> rho = handover_weights(t);
    const int32_t n_neighbors = std::min(o.acgr_n_neighbors, n_anchors);
    recovery r = start_recovery(t, anchors);
    std::vector<double> affinity(anchors.size());  // (M,) scratch
    index_list order(anchors.size());              // (M,) scratch
    index_list local(size_t(t.n_tokens), -1);      // (N,) anchors: themselves; context: the best link
    for (size_t a = 0; a < anchors.size(); ++a) {
        local[size_t(anchors[a])] = int32_t(a);
    }
    const std::vector<int32_t> anchor_cells = spatial.cells(t, anchors);  // (M, 2)
    const int32_t n_block = unit_row_blocks::k_block;
    std::vector<double> cosine(size_t(n_block) * anchors.size());  // (block, M) scratch
    for (int32_t first = 0; first < t.n_tokens; first += n_block) {
        const int32_t n_rows = std::min(n_block, t.n_tokens - first);
        const float * unit[unit_row_blocks::k_block];
        u.rows(first, n_rows, unit);
        cosines_tile(unit, size_t(n_rows), anchor_units, nullptr, anchors.size(), cosine.data());
        for (int32_t row = first; row < first + n_rows; ++row) {
            if (is_anchor[size_t(row)]) {
                continue;
            }
            anchor_affinities(t, cosine.data() + size_t(row - first) * anchors.size(), anchor_cells, spatial,
                              o.acgr_min_similarity, row, affinity);
            best_first(affinity, n_neighbors, order);
            if (absorb(t, row, rho[size_t(row)], affinity, order, n_neighbors, r) > 0) {
                local[size_t(row)] = order[0];  // largest affinity = largest w_ca; ties: the lower anchor row
            }
        }
    }
    return finish_recovery(t, anchors, r, o.acgr_self_share, std::move(local));
}

// ---- tatcs -----------------------------------------------------------------------------------

// r̃: max_j cos(x_i, text_j) min-max normalised to [0, 1]; all 1 without text or when constant.
std::vector<double> normalised_relevance(const dcp_tokens & t, const unit_set & x) {
    std::vector<double> relevance(size_t(t.n_tokens), 1.0);
    if (!t.text || t.n_text < 1) {
        return relevance;
    }
    const unit_set words = exact_unit_rows(t.text, t.n_text, t.n_dim);
    for (int32_t i = 0; i < t.n_tokens; ++i) {
        double best = -k_infinity;
        for (int32_t w = 0; w < t.n_text; ++w) {
            best = std::max(best, cosine_f32(x.row(i), words.row(w), x.n_cols));
        }
        relevance[size_t(i)] = best;
    }
    const auto [lo, hi] = std::minmax_element(relevance.begin(), relevance.end());
    const double low = *lo, range = *hi - *lo;
    for (double & r : relevance) {
        r = range > 0.0 ? (r - low) / range : 1.0;
    }
    return relevance;
}

// s̃ = s / max s (all 1 when max s <= 0).
std::vector<double> attention_share(const dcp_tokens & t) {
    const double s_max = *std::max_element(t.cls_attn, t.cls_attn + t.n_tokens);
    std::vector<double> share(size_t(t.n_tokens), 1.0);
    for (size_t i = 0; s_max > 0.0 && i < share.size(); ++i) {
        share[i] = double(t.cls_attn[i]) / s_max;
    }
    return share;
}

// Seed score g = s̃·r̃ with s̃ = s / max s (1 when max s <= 0); all 1 when max g <= 0.
std::vector<double> seed_scores(const dcp_tokens & t, const std::vector<double> & relevance) {
    const double s_max = *std::max_element(t.cls_attn, t.cls_attn + t.n_tokens);
    std::vector<double> seed(relevance.size());
    for (size_t i = 0; i < seed.size(); ++i) {
        seed[i] = (s_max > 0.0 ? double(t.cls_attn[i]) / s_max : 1.0) * relevance[i];
    }
    if (*std::max_element(seed.begin(), seed.end()) <= 0.0) {
        std::fill(seed.begin(), seed.end(), 1.0);
    }
    return seed;
}

struct cluster_centres {
    index_list         rows;        // (K,) in the order chosen
    std::vector<float> similarity;  // (K, n): ⟨x̂_i, x̂_centre_k⟩, reused by the assignment
};

// The next centre: the non-centre farthest from every centre, favouring high seed scores
// (distance·(½ + ½·g/max g)); when no distance is left (only duplicates), the best seed.
int32_t next_centre(const std::vector<double> & min_distance, const std::vector<double> & preference,
                    const std::vector<double> & seed, const std::vector<uint8_t> & is_centre,
                    std::vector<double> & score) {
    for (size_t i = 0; i < score.size(); ++i) {
        score[i] = min_distance[i] * preference[i];
    }
    const int32_t best = best_row(score, is_centre);
    return score[size_t(best)] > 0.0 ? best : best_row(seed, is_centre);
}

// Greedy representative initialisation: K centres, starting from the best seed score.
cluster_centres greedy_centres(const unit_set & x, const std::vector<double> & seed, int32_t n_centres) {
    const size_t n = seed.size();
    const double seed_max = *std::max_element(seed.begin(), seed.end());
    std::vector<double> preference(n), min_distance(n, k_infinity), score(n);
    for (size_t i = 0; i < n; ++i) {
        preference[i] = 0.5 + 0.5 * seed[i] / seed_max;
    }
    std::vector<uint8_t> is_centre(n, 0);
    std::vector<double> cosine(n);  // (n,) scratch
    index_list backward(n);         // every other pass runs from the last row down: the rows the
    std::iota(backward.rbegin(), backward.rend(), 0);  // last pass read last are still in cache
    cluster_centres c{{}, std::vector<float>(size_t(n_centres) * n)};
    c.rows.reserve(size_t(n_centres));
    int32_t next = best_row(seed, is_centre);
    for (size_t k = 0; k < size_t(n_centres); ++k) {
        c.rows.push_back(next);
        is_centre[size_t(next)] = 1;
        float * similarity = c.similarity.data() + k * n;
        const bool down = k % 2 == 1;
        cosines_with(x.row(next), x, down ? backward.data() : nullptr, n, cosine.data());  // = ⟨x̂_i, x̂_next⟩
        for (size_t i = 0; i < n; ++i) {
            similarity[i] = float(cosine[down ? n - 1 - i : i]);
            min_distance[i] = std::min(min_distance[i], 1.0 - double(similarity[i]));
        }
        if (k + 1 < size_t(n_centres)) {
            next = next_centre(min_distance, preference, seed, is_centre, score);
        }
    }
    return c;
}

// cluster[i] = the centre (position in c.rows) maximising ⟨x̂_i, x̂_c⟩ - λ_t·|r̃_i - r̃_c|;
// ties go to the centre chosen earlier; centres belong to themselves.
index_list assign_clusters(const cluster_centres & c, const std::vector<double> & relevance, float text_weight) {
    const size_t n = relevance.size();
    const auto score = [&](size_t i, size_t k) {
        const double gap = std::fabs(relevance[i] - relevance[size_t(c.rows[k])]);
        return double(c.similarity[k * n + i]) - double(text_weight) * gap;
    };
    index_list cluster(n, -1);
    for (size_t k = 0; k < c.rows.size(); ++k) {
        cluster[size_t(c.rows[k])] = int32_t(k);
    }
    for (size_t i = 0; i < n; ++i) {
        if (cluster[i] >= 0) {
            continue;
        }
        cluster[i] = 0;
        for (size_t k = 1; k < c.rows.size(); ++k) {
            if (score(i, k) > score(i, size_t(cluster[i]))) {
                cluster[i] = int32_t(k);
            }
        }
    }
    return cluster;
}

// μ_Q per cluster: the unit vector of Σ m_i·x̂_i (summed in double in row order).
DCP_VECTOR_CLONES unit_set cluster_directions(const dcp_tokens & t, const unit_set & x, const index_list & cluster, size_t n_clusters) {
    const size_t d = x.n_cols;
    std::vector<double> sum(n_clusters * d, 0.0);  // (K, d)
    for (int32_t i = 0; i < t.n_tokens; ++i) {
        const double m = mass_of(t, i);
        double * s = sum.data() + size_t(cluster[size_t(i)]) * d;
        for (size_t j = 0; j < d; ++j) {
            s[j] += m * double(x.row(i)[j]);
        }
    }
    return exact_unit_rows(sum.data(), int32_t(n_clusters), int32_t(d));
}

// Per cluster, the member with the best η·r̃_i + (1-η)·⟨x̂_i, μ_Q⟩; ties go to the lower row.
index_list reselect(const dcp_tokens & t, const unit_set & x, const index_list & cluster, size_t n_clusters,
                    const std::vector<double> & relevance, float relevance_mix) {
    const unit_set mu = cluster_directions(t, x, cluster, n_clusters);
    const double eta = relevance_mix;
    index_list representative(n_clusters, -1);
    std::vector<double> best(n_clusters, -k_infinity);
    for (int32_t i = 0; i < t.n_tokens; ++i) {
        const size_t k = size_t(cluster[size_t(i)]);
        const double centrality = cosine_f32(x.row(i), mu.row(int32_t(k)), x.n_cols);
        const double score = eta * relevance[size_t(i)] + (1.0 - eta) * centrality;
        if (representative[k] < 0 || score > best[k]) {
            best[k] = score;
            representative[k] = i;
        }
    }
    return representative;
}

// Each cluster as its representative's own row, with the cluster's total mass (summed in row order).
merged_tokens representatives(const dcp_tokens & t, const index_list & cluster, const index_list & representative) {
    const size_t d = size_t(t.n_dim), n_clusters = representative.size();
    std::vector<double> mass(n_clusters, 0.0);
    for (int32_t i = 0; i < t.n_tokens; ++i) {
        mass[size_t(cluster[size_t(i)])] += mass_of(t, i);
    }
    merged_tokens out{representative, std::vector<float>(n_clusters * d), std::vector<float>(n_clusters), cluster};
    for (size_t k = 0; k < n_clusters; ++k) {
        std::copy_n(t.features + size_t(representative[k]) * d, d, out.features.begin() + std::ptrdiff_t(k * d));
        out.masses[k] = float(mass[k]);
    }
    return out;
}

// Each cluster merged into its representative: ω_i = m_i·max(0, ⟨x̂_i, x̂_rep⟩), ω_rep = m_rep,
// feature = Σ ω_i·x_i / Σ ω_i, mass = Σ m_i.
merged_tokens merge_into_representatives(const dcp_tokens & t, const unit_set & x, const index_list & cluster,
                                         const index_list & representative) {
    const size_t d = size_t(t.n_dim), n_clusters = representative.size();
    std::vector<double> sum(n_clusters * d, 0.0), weight(n_clusters, 0.0), mass(n_clusters, 0.0);
    for (int32_t i = 0; i < t.n_tokens; ++i) {
        const size_t k = size_t(cluster[size_t(i)]);
        const int32_t rep = representative[k];
        const double m = mass_of(t, i);
        const double omega = i == rep ? m : m * std::max(0.0, cosine_f32(x.row(i), x.row(rep), d));
        const float * feature = t.features + size_t(i) * d;
        for (size_t j = 0; j < d; ++j) {
            sum[k * d + j] += omega * double(feature[j]);
        }
        weight[k] += omega;
        mass[k] += m;
    }
    merged_tokens out{representative, std::vector<float>(n_clusters * d), std::vector<float>(n_clusters), cluster};
    for (size_t k = 0; k < n_clusters; ++k) {
        for (size_t j = 0; j < d; ++j) {
            out.features[k * d + j] = float(sum[k * d + j] / weight[k]);
        }
        out.masses[k] = float(mass[k]);
    }
    return out;
}

// TATCS on all input rows with n_clusters clusters (contract in prune.h); x = feature_unit_rows(t).
merged_tokens text_aware_cluster_selection(const dcp_tokens & t, int32_t n_clusters, const dcp_options & o,
                                           const unit_set & x) {
    const std::vector<double> relevance = o.tatcs_use_text ? normalised_relevance(t, x)
                                                           : std::vector<double>(size_t(t.n_tokens), 1.0);
    const cluster_centres centres = greedy_centres(x, seed_scores(t, relevance), n_clusters);
    const index_list cluster = assign_clusters(centres, relevance, o.tatcs_text_weight);
    const index_list representative =
        reselect(t, x, cluster, size_t(n_clusters), o.tatcs_reselect_by ? attention_share(t) : relevance,
                 o.tatcs_relevance_mix);
    return o.tatcs_reselect ? representatives(t, cluster, representative)
                            : merge_into_representatives(t, x, cluster, representative);
}

void emit(const dcp_tokens & t, const merged_tokens & m, dcp_selection & out) {
    emit_merged(t, m.rows, m.features, m.masses, m.local, out);
}

} // namespace

// ---- the methods (contracts in prune.h) ----------------------------------------------------------

dcp_status prune_acgr(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out) {
    emit(t, anchor_context_recovery(t, p.n_keep, p.options, nullptr), out);
    return DCP_STATUS_OK;
}

dcp_status prune_tatcs(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out) {
    emit(t, text_aware_cluster_selection(t, p.n_keep, p.options, feature_unit_rows(t)), out);
    out.used_tatcs = true;
    return DCP_STATUS_OK;
}

dcp_status prune_dcp(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out) {
    // Unit rows normalised whole only where a later stage reads the same rows again: the features
    // when there are no keys (TATCS on the inputs compares them too), the keys when ACGR runs twice.
    const bool tatcs_on_inputs = p.options.dcp_anchors_per_token == 0;
    const unit_set semantic = !t.keys || !tatcs_on_inputs ? semantic_unit_rows(t) : unit_set{{}, 0};
    const unit_set * whole = t.keys && tatcs_on_inputs ? nullptr : &semantic;
    merged_tokens recovered = anchor_context_recovery(t, p.n_keep, p.options, whole);
    const unit_set feature_rows = t.keys ? feature_unit_rows(t) : unit_set{{}, 0};  // κ's, and TATCS's on inputs
    const unit_set & features = t.keys ? feature_rows : semantic;  // without keys, semantic is the features
    const kappa_reference input = kappa_reference_of(features, t.masses_in);  // once
    const float kappa = kappa_from(input, recovered.features.data(), p.n_keep);
    if (kappa <= std::max(p.options.tau, k_kappa_noise)) {
        emit(t, recovered, out);
        out.kappa = kappa_from(input, out.features, p.n_keep);  // in output order, as dcp_prune's
        return DCP_STATUS_OK;
    }
    if (tatcs_on_inputs) {  // TATCS on every input row (the first build's reading)
        emit(t, text_aware_cluster_selection(t, p.n_keep, p.options, features), out);
        out.used_tatcs = true;
        out.kappa = kappa_from(input, out.features, p.n_keep);
        return DCP_STATUS_OK;
    }
    // TATCS re-clusters the recovered anchors of a wider ACGR (M = anchors_per_token·K of them).
    const int32_t n_anchors = int32_t(std::min<int64_t>(t.n_tokens, int64_t(p.options.dcp_anchors_per_token) * p.n_keep));
    if (n_anchors > p.n_keep) {
        recovered = anchor_context_recovery(t, n_anchors, p.options, whole);
    }
    const index_list & anchors = recovered.rows;
    std::vector<float> anchor_attn(anchors.size());
    index_list anchor_patch(anchors.size());
    for (size_t a = 0; a < anchors.size(); ++a) {
        anchor_attn[a] = t.cls_attn[anchors[a]];
        anchor_patch[a] = patch_of(t, anchors[a]);
    }
    dcp_tokens on_anchors = t;
    on_anchors.features = recovered.features.data();
    on_anchors.cls_attn = anchor_attn.data();
    on_anchors.keys = nullptr;
    on_anchors.masses_in = recovered.masses.data();
    on_anchors.patch_idx = anchor_patch.data();
    on_anchors.n_tokens = int32_t(anchors.size());
    merged_tokens clustered = text_aware_cluster_selection(on_anchors, p.n_keep, p.options,
                                                           feature_unit_rows(on_anchors));
    for (int32_t & row : clustered.rows) {
        row = anchors[size_t(row)];  // anchor position → input row
    }
    index_list local(size_t(t.n_tokens), -1);  // input row → its anchor → that anchor's cluster
    for (size_t i = 0; i < local.size(); ++i) {
        local[i] = recovered.local[i] >= 0 ? clustered.local[size_t(recovered.local[i])] : -1;
    }
    clustered.local = std::move(local);
    emit(t, clustered, out);
    out.used_tatcs = true;
    out.kappa = kappa_from(input, out.features, p.n_keep);
    return DCP_STATUS_OK;
}

} // namespace dcp
