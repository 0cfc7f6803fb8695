// prune_internal.h — what the method files share: exact arithmetic on flat row-major buffers,
// the output writers, and the method functions the table in methods.cpp dispatches to.
// Not part of the public API (prune.h).
//
// The exactness rule: every method has a NumPy twin (dcp_desktop/prune_reference) that must make
// the same choices (top-k, neighbours, centres, picks), so every score that is compared is built
// from the same IEEE operations in the same fixed order on both sides, and ties break the same
// way. Sums that decide anything go through lane_dot, whose order the twin replays lane by lane
// (prune_reference/common.py lane_dot); the build turns off FMA contraction and never uses -ffast-math.
// A helper whose result depends on an order NumPy does not replay (a plain float loop, BLAS)
// does not belong here.

#pragma once

#include "prune.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <vector>

namespace dcp {

using index_list = std::vector<int32_t>;  // rows of the input token set

// ---- exact arithmetic --------------------------------------------------------------------------

constexpr double k_infinity = std::numeric_limits<double>::infinity();

// Σ a[k]·b[k] in a fixed order: lane l sums k = l, l + Lanes, l + 2·Lanes, ... in Acc; then the
// lanes are added pairwise ((0+1), (2+3), ... then again) down to one. The independent lanes let
// the compiler vectorise without reassociating. Lanes is a power of two.
// Always inlined, so a vector clone (DCP_VECTOR_CLONES, below) compiles it for its own target.
#if defined(__GNUC__)
#define DCP_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DCP_ALWAYS_INLINE inline
#endif

template <typename Acc, size_t Lanes, typename A, typename B>
DCP_ALWAYS_INLINE Acc lane_dot(const A * a, const B * b, size_t n) {
    static_assert(Lanes > 0 && (Lanes & (Lanes - 1)) == 0, "Lanes must be a power of two");
    Acc lane[Lanes] = {};
    size_t k = 0;
    for (; k + Lanes <= n; k += Lanes) {
        for (size_t l = 0; l < Lanes; ++l) {
            lane[l] += Acc(a[k + l]) * Acc(b[k + l]);
        }
    }
    for (size_t l = 0; k + l < n; ++l) {
        lane[l] += Acc(a[k + l]) * Acc(b[k + l]);
    }
    for (size_t width = Lanes / 2; width > 0; width /= 2) {
        for (size_t l = 0; l < width; ++l) {
            lane[l] = lane[2 * l] + lane[2 * l + 1];
        }
    }
    return lane[0];
}

// Four dot products at once: out[r] = lane_dot<Acc, Lanes>(a[r], b[r], n) bit for bit (each sum keeps
// its own lanes, summed and folded in lane_dot's order). One lane_dot is bound by the add latency
// (Lanes independent sums); four side by side give 4·Lanes. A row passed as every a[r] (one row
// against four) is loaded once per step for all four once inlined. The similarity loops go through
// this in blocks of four rows.
template <typename Acc, size_t Lanes, typename A, typename B>
DCP_ALWAYS_INLINE void lane_dots4(const A * const * a, const B * const * b, size_t n, Acc * out) {
    static_assert(Lanes > 0 && (Lanes & (Lanes - 1)) == 0, "Lanes must be a power of two");
    const A * a0 = a[0], * a1 = a[1], * a2 = a[2], * a3 = a[3];
    const B * b0 = b[0], * b1 = b[1], * b2 = b[2], * b3 = b[3];
    Acc s0[Lanes] = {}, s1[Lanes] = {}, s2[Lanes] = {}, s3[Lanes] = {};
    size_t k = 0;
    for (; k + Lanes <= n; k += Lanes) {
        for (size_t l = 0; l < Lanes; ++l) {
            s0[l] += Acc(a0[k + l]) * Acc(b0[k + l]);
            s1[l] += Acc(a1[k + l]) * Acc(b1[k + l]);
            s2[l] += Acc(a2[k + l]) * Acc(b2[k + l]);
            s3[l] += Acc(a3[k + l]) * Acc(b3[k + l]);
        }
    }
    for (size_t l = 0; k + l < n; ++l) {
        s0[l] += Acc(a0[k + l]) * Acc(b0[k + l]);
        s1[l] += Acc(a1[k + l]) * Acc(b1[k + l]);
        s2[l] += Acc(a2[k + l]) * Acc(b2[k + l]);
        s3[l] += Acc(a3[k + l]) * Acc(b3[k + l]);
    }
    for (size_t width = Lanes / 2; width > 0; width /= 2) {
        for (size_t l = 0; l < width; ++l) {
            s0[l] = s0[2 * l] + s0[2 * l + 1];
            s1[l] = s1[2 * l] + s1[2 * l + 1];
            s2[l] = s2[2 * l] + s2[2 * l + 1];
            s3[l] = s3[2 * l] + s3[2 * l + 1];
        }
    }
    out[0] = s0[0], out[1] = s1[0], out[2] = s2[0], out[3] = s3[0];
}

// Σ a[k]·b[k] in double, 8 lanes (a float·float product is exact in double). Twin: dot_f64.
template <typename A, typename B>
DCP_ALWAYS_INLINE double dot_f64(const A * a, const B * b, size_t n) {
    return lane_dot<double, 8>(a, b, n);
}

// The hot loops are compiled three times where the toolchain can pick a clone at load time (GCC on
// x86-64 Linux): for AVX-512 (x86-64-v4), for AVX2 and for the baseline. The lanes sum in the same
// order in each (no FMA: -ffp-contract=off), so every clone gives the same bits, and the twin still
// replays them.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DCP_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define DCP_VECTOR_CLONES
#endif

// ⟨a, b⟩ of two unit rows: float32 in 16 lanes (4 SSE registers of independent sums), widened.
// Twin: cosines (prune_reference/common.py).
inline double cosine_f32(const float * a, const float * b, size_t n) {
    return double(lane_dot<float, 16>(a, b, n));
}

// Leaves new elements uninitialised (value-initialisation zero-fills): for buffers written whole
// before they are read, such as a (576, 1024) unit set, where the fill is a pass over 2.4 MB.
template <typename T>
struct uninitialised_allocator : std::allocator<T> {
    template <typename U>
    struct rebind {
        using other = uninitialised_allocator<U>;
    };
    template <typename U>
    void construct(U * p) noexcept { ::new (static_cast<void *>(p)) U; }
};

// Row-major float32 unit rows.
struct unit_set {
    std::vector<float, uninitialised_allocator<float>> data;  // (n_rows, n_cols)
    size_t             n_cols;

    const float * row(int32_t i) const { return data.data() + size_t(i) * n_cols; }
};

// Rows of float32 or double scaled to unit length, bit-identical to the NumPy twin
// (exact_unit_rows): the norm summed by dot_f64, then x·(1/norm) rounded to float32; all-zero
// rows stay zero.
template <typename T>
unit_set exact_unit_rows(const T * x, int32_t n_rows, int32_t n_cols);

// The float32 rows (image tokens: the hot case) through a vector clone; the same bits.
DCP_VECTOR_CLONES void unit_rows_f32(const float * x, size_t n_rows, size_t n_cols, float * out);

template <>
inline unit_set exact_unit_rows<float>(const float * x, int32_t n_rows, int32_t n_cols) {
    unit_set unit{decltype(unit_set::data)(size_t(n_rows) * size_t(n_cols)), size_t(n_cols)};
    unit_rows_f32(x, size_t(n_rows), size_t(n_cols), unit.data.data());
    return unit;
}

template <typename T>
unit_set exact_unit_rows(const T * x, int32_t n_rows, int32_t n_cols) {
    const size_t d = size_t(n_cols);
    unit_set unit{decltype(unit_set::data)(size_t(n_rows) * d), d};
    for (size_t i = 0; i < size_t(n_rows); ++i) {
        const T * row = x + i * d;
        const double norm = std::sqrt(dot_f64(row, row, d));
        const double scale = norm > 0.0 ? 1.0 / norm : 0.0;
        for (size_t j = 0; j < d; ++j) {
            unit.data[i * d + j] = float(double(row[j]) * scale);
        }
    }
    return unit;
}


// The unit rows of a float32 (n, d) matrix, k_block at a time, bit-identical to exact_unit_rows: read
// from `whole` when the caller has normalised every row already, else normalised into a small scratch
// as they are asked for, so no (n, d) copy is written and each block is used while it is in cache.
class unit_row_blocks {
public:
    static constexpr int32_t k_block = 4;  // unit_rows_f32 sums four norms side by side

    unit_row_blocks(const float * x, int32_t n_cols, const unit_set * whole)
        : x_(x), n_cols_(size_t(n_cols)), whole_(whole), scratch_(whole ? 0 : size_t(k_block) * n_cols_) {}

    // Unit rows first .. first + n - 1 (n <= k_block) into unit[]; valid until the next call.
    void rows(int32_t first, int32_t n, const float ** unit) {
        if (!whole_) {
            unit_rows_f32(x_ + size_t(first) * n_cols_, size_t(n), n_cols_, scratch_.data());
        }
        for (int32_t r = 0; r < n; ++r) {
            unit[r] = whole_ ? whole_->row(first + r) : scratch_.data() + size_t(r) * n_cols_;
        }
    }

    // The unit rows of `rows`, in that order ((|rows|, d)).
    unit_set gather(const std::vector<int32_t> & rows) const {
        unit_set out{decltype(unit_set::data)(rows.size() * n_cols_), n_cols_};
        for (size_t k = 0; k < rows.size(); ++k) {
            float * dst = out.data.data() + k * n_cols_;
            whole_ ? void(std::copy_n(whole_->row(rows[k]), n_cols_, dst))
                   : unit_rows_f32(x_ + size_t(rows[k]) * n_cols_, 1, n_cols_, dst);
        }
        return out;
    }

private:
    const float *      x_;
    size_t             n_cols_;
    const unit_set *   whole_;
    std::vector<float> scratch_;  // (k_block, d) when not whole
};

// out[i·n_rows + j] = cosine_f32(a[i], x.row(rows[j])) for i < n_a, j < n_rows (x.row(j) when rows is
// NULL): blocks of four rows of x against every a[i] while they are in cache (lane_dots4), the same
// bits as one cosine_f32 at a time.
DCP_VECTOR_CLONES void cosines_tile(const float * const * a, size_t n_a, const unit_set & x, const int32_t * rows,
                                    size_t n_rows, double * out);

// out[j] = cosine_f32(a, x.row(rows[j])) for j in 0 .. n_rows-1, or with x.row(j) when rows is NULL.
inline void cosines_with(const float * a, const unit_set & x, const int32_t * rows, size_t n_rows, double * out) {
    cosines_tile(&a, 1, x, rows, n_rows, out);
}

// The row with the highest score among those not excluded (excluded[i] != 0); ties go to the
// lower row. -1 when every row is excluded. Twin: best_row.
int32_t best_row(const std::vector<double> & score, const std::vector<uint8_t> & excluded);

// The k rows with the highest score, best first; ties go to the lower row. Twin: top_k.
index_list top_k(const float * score, int32_t n, int32_t k);

// ---- κ (dcp_kappa in prune.h) in two steps, so a method that needs κ twice prepares its input once ----

struct kappa_reference {
    const unit_set &    unit;    // (n_a, n_dim) the reference set a at unit length (the caller keeps it alive:
                                 // a method that has the input's unit rows already shares them)
    std::vector<double> masses;  // (n_a,) its masses (1 when not given)
    double              total;   // Σ masses, summed in row order
};
kappa_reference kappa_reference_of(const unit_set & unit_a, const float * masses_a);
// dcp_kappa(a, b) bit for bit, from a's reference.
float kappa_from(const kappa_reference & ref, const float * b, int32_t n_b);

// ---- token accessors ---------------------------------------------------------------------------

inline float mass_of(const dcp_tokens & t, int32_t row) { return t.masses_in ? t.masses_in[row] : 1.0f; }
inline int32_t patch_of(const dcp_tokens & t, int32_t row) { return t.patch_idx ? t.patch_idx[row] : row; }

// ---- writing the result ------------------------------------------------------------------------

// Copies the input rows `rows` (any order) to `out` in patch order. Every other row joins the kept
// row whose feature it is most cosine-similar to (unit rows and cosines as cosine_f32; ties: the
// lower kept row), so a kept token's mass is its own input mass plus theirs (summed in double in row
// order) and the masses add up to the input's. out.assignment (when given): each input row → its token.
void emit_selection(const dcp_tokens & t, index_list rows, const dcp_selection & out);

// Writes merged tokens: token k sits on input row rows[k] with feature features[k*n_dim ..] and
// mass masses[k]. Sorted into patch order on the way out. local[i] (n_tokens entries) is the
// method-local token (index into rows) input row i went to, -1 if dropped; out.assignment (when
// given) gets it translated into output order.
void emit_merged(const dcp_tokens & t, const index_list & rows, const std::vector<float> & features,
                 const std::vector<float> & masses, const index_list & local, const dcp_selection & out);

// ---- the methods (inputs already validated by dcp_prune) ---------------------------------------

using prune_fn = dcp_status (*)(const dcp_tokens &, const dcp_prune_params &, dcp_selection &);

// methods.cpp: the tables
prune_fn method_function(dcp_method method);       // nullptr for values that are not a dcp_method
bool options_are_valid(const dcp_options & options);  // every option inside its table range

// simple.cpp
dcp_status prune_full(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);
dcp_status prune_pool(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);
dcp_status prune_fastervlm(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);
dcp_status prune_random(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);

// baselines.cpp
dcp_status prune_visionzip(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);
dcp_status prune_divprune(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);
dcp_status prune_cdpruner(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);

// dcp.cpp
dcp_status prune_acgr(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);
dcp_status prune_tatcs(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);
dcp_status prune_dcp(const dcp_tokens & t, const dcp_prune_params & p, dcp_selection & out);

} // namespace dcp
