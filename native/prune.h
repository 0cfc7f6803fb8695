// prune.h — keep K of an image's N visual tokens.
//
// Plain C API, no Python, no allocation visible to the caller: buffers in, buffers out.
// A LLaVA-1.5 image gives N = 576 CLIP patch tokens on a 24×24 grid; the language model only
// ever sees the K tokens chosen here.
//
// Data layout (all buffers are owned by the caller and never retained after a call returns):
//   features   float32 [n_tokens × n_dim], row-major; row i is patch i in raster order
//              (i = row * grid_w + col). Patch tokens only: the [CLS] token is NOT included.
//   cls_attn   float32 [n_tokens]: attention from [CLS] to each patch (e.g. mean over heads).
//              May be NULL for methods that do not use it (dcp_method_info(m)->needs_cls_attn).
//   keys       float32 [n_tokens × n_dim_keys] or NULL: the attention keys of the same layer;
//              methods that compare tokens semantically use keys when given, features otherwise.
//   masses_in  float32 [n_tokens] or NULL (= all 1): how many original patches each input token
//              already stands for (after in-encoder pruning).
//   patch_idx  int32   [n_tokens] or NULL (= 0..n_tokens-1): the grid patch each input token sits
//              on, strictly ascending. When NULL, n_tokens must equal grid_h * grid_w; when given,
//              the tokens are a subset of the grid (pool needs the whole grid).
//   text       float32 [n_text × n_dim] or NULL: the question's token embeddings mapped into the
//              feature space; text-aware methods (cdpruner, tatcs, dcp) fall back to text-free
//              scoring when it is NULL or n_text == 0.
//   kept_idx   int32   [n_keep]: the grid patch each output token sits on, strictly ascending.
//   features   float32 [n_keep × n_dim] (output), row-major, row k belongs to kept_idx[k].
//   masses     float32 [n_keep]: how many original patches each output token stands for.
//              Merging methods add up what they merge. Selection methods (full, fastervlm, random,
//              divprune, cdpruner, visionzip with n_ctx == 0) keep their rows' features, and every
//              row they drop joins the kept row its feature is most cosine-similar to (unit rows and
//              cosines as for ACGR below; ties: the lower kept row): a kept token's mass is its input
//              mass plus theirs, summed in double in row order, so the masses add up to the input's.
//   assignment int32   [n_tokens] (output, optional: NULL skips it): for each input row, the output
//              token (index into the n_keep outputs, in output order) it ended up in, -1 if dropped.
//              Selection methods: kept rows map to their own token, every other row to the kept
//              row it joined (see masses). pool: each patch maps to its cell; a patch in
//              several overlapping cells maps to the first of them in raster order of cells.
//              visionzip: dominant rows map to themselves, contextual rows to their target's
//              token (with n_ctx == 0: as a selection). acgr: anchors map to themselves, each context
//              row to the anchor with its largest edge weight w_ca (ties: the lower anchor row),
//              a row with no counted link -1. tatcs: every row maps to its cluster's token. dcp:
//              as the stage it returned (acgr or tatcs).
//   kappa      κ, the share of the input set the output set leaves uncovered (dcp_kappa), for
//              every method, so methods can be compared.
//
// Thread safety: dcp_prune keeps no global state; concurrent calls on distinct output
// buffers are safe. Every method is deterministic (random is seeded, see DCP_METHOD_RANDOM).
//
// Adding a method: one enum value below (before DCP_METHOD_COUNT), one function (declared in
// prune_internal.h) and one row in the method table in methods.cpp. Adding an option: one field in
// struct dcp_options and one row in the option table in methods.cpp. Those two tables are the only
// lists of methods and options: the accessors at the end of this file read them, and the Python
// package builds its own method and option facts from them.

#pragma once

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum dcp_method {
    // No pruning: n_keep must equal n_tokens; output = input (masses copied).
    DCP_METHOD_FULL = 0,
    // Grid average pooling (torch.nn.functional.adaptive_avg_pool2d on the feature grid).
    // Needs the whole grid without masses (patch_idx and masses_in NULL).
    // The output grid is rows × cols == n_keep with rows = the largest divisor of n_keep that
    // is <= sqrt(n_keep) and cols = n_keep / rows (16 → 4×4, 32 → 4×8, 7 → 1×7). It must fit
    // the patch grid: rows <= grid_h and cols <= grid_w, else DCP_STATUS_BAD_N_KEEP (on 24×24
    // that rejects e.g. a prime n_keep > 24). Cell (r, c) covers patch rows
    // [floor(r*grid_h/rows), ceil((r+1)*grid_h/rows)) and the same rule for columns, so cells
    // overlap when the grid is not divisible. Output token = mean of the cell's features,
    // mass = number of patches in the cell (masses sum to n_tokens exactly when the cells
    // tile the grid), kept_idx = the cell's centre patch (row (start+end-1)/2, col likewise,
    // integer division). Output in raster order of cells.
    DCP_METHOD_POOL = 1,
    // FasterVLM: the n_keep tokens with the largest cls_attn; ties go to the lower index.
    // Needs cls_attn. Features copied; masses as for every selection (see masses above).
    DCP_METHOD_FASTERVLM = 2,
    // Uniform random subset, reproducible from params.seed. Generator: splitmix64 with
    //   state = seed;
    //   next(): state += 0x9E3779B97F4A7C15; z = state;
    //           z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
    //           z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
    //           return z ^ (z >> 31);          (all arithmetic mod 2^64)
    // Partial Fisher–Yates over perm = [0, 1, ..., n_tokens-1]:
    //   for i in 0 .. n_keep-1: j = i + next() % (n_tokens - i); swap(perm[i], perm[j]);
    // kept rows = perm[0 .. n_keep-1], output in patch order. Features copied; masses as for
    // every selection (see masses above).
    DCP_METHOD_RANDOM = 3,
    // VisionZip, DivPrune and CDPruner compare tokens by cosine similarity computed in double
    // from the raw rows (a zero row has cosine 0 with everything; a row and its duplicate have
    // exactly 1), so duplicates tie exactly; ties go to the lower row everywhere.
    //
    // VisionZip: dominant tokens by cls_attn + contextual tokens merged by similarity. Needs
    // cls_attn. n_dom = min(n_keep, max(1, floor(n_keep * r + 0.5))) with
    // r = options.visionzip_dominant_ratio, n_ctx = n_keep - n_dom. Dominant: the n_dom rows with
    // the largest cls_attn (as fastervlm), features copied, input masses kept. The other rows R
    // (ascending, |R| = n_tokens - n_dom), when n_ctx > 0: targets R[floor(i * |R| / n_ctx)] for
    // i = 0 .. n_ctx-1 (uniform spacing); every other row of R joins the target it is most
    // cosine-similar to, on keys when given, else features (ties: the lower target row).
    // Contextual token = mass-weighted mean feature of its target and the rows that joined it,
    // mass = their total mass, kept_idx = the target's patch. With n_ctx > 0 the output masses
    // add up to the input's; with n_ctx == 0 it is a selection of the dominant rows (masses above).
    DCP_METHOD_VISIONZIP = 4,
    // DivPrune: greedy max-min diversity on the cosine distance 1 - cos of features (keys are
    // not used). First pick: the row least cosine-similar to the mean of the unit feature rows.
    // Then, until n_keep are picked: the unpicked row whose smallest distance to the picked rows
    // is largest. Features copied; masses as for every selection (see masses above).
    DCP_METHOD_DIVPRUNE = 5,
    // CDPruner: greedy MAP of a relevance-weighted DPP. Quality w_i = 1 without text (NULL or
    // n_text == 0); with text, r_i = max_j cos(features_i, text_j), r̃ = (r - min r) / (max r - min r)
    // (all 1 when max == min) and w_i = (1 - θ) + θ * r̃_i with θ = options.cdpruner_theta.
    // Kernel L_ij = w_i * w_j * cos(features_i, features_j) (PSD). Greedy MAP with incremental
    // Cholesky (Chen, Zhang & Zhou, NeurIPS 2018): d2_i = L_ii; each step takes j = the unpicked
    // row with the largest d2. If d2_j < 1e-10 the kernel is exhausted (duplicates, zero rows,
    // n_keep > rank): the remaining picks are the unpicked rows by w descending; stop. Else pick
    // j and, for every unpicked i, e_i = (L_ji - ⟨c_j, c_i⟩) / sqrt(d2_j), append e_i to c_i,
    // d2_i -= e_i². Features copied; masses as for every selection (see masses above).
    DCP_METHOD_CDPRUNER = 6,
    // ACGR, TATCS and DCP-Prune share these rules. s = cls_attn (needed), m_i = input mass,
    // (row_i, col_i) = grid position of token i's patch. Every dot product below is summed in
    // L lanes (lane l sums j = l, l+L, ...; the lanes are then added pairwise, (0+1), (2+3), ...),
    // so a twin can replay it bit for bit. Unit row x̂ = float32(x·(1/|x|)) with |x|² summed in
    // double, L = 8 (zero rows stay zero). cos(x̂, ŷ) = their float32 dot product, L = 16,
    // widened to double; duplicate rows tie exactly. Scores are then computed in double.
    // Ties go to the lower row.
    //
    // ACGR (Anchor-Context Graph Recovery): anchors A = the n_keep rows of largest s (as
    // fastervlm); context C = the other rows. u = unit rows of keys when given, else features.
    // affinity(c, a) = cos(u_c, u_a) + λ·(g(|row_c - row_a|)·g(|col_c - col_a|)) where
    // cos(u_c, u_a) > options.acgr_min_similarity, else -inf (no link on proximity alone);
    // g(k) = exp(-k² / (2σ²)) (libm), so λ·exp(-(grid distance)² / (2σ²)) up to rounding;
    // λ = options.acgr_spatial_weight, σ = options.acgr_spatial_sigma. Each context row links to
    // its min(options.acgr_n_neighbors, n_keep) anchors of highest affinity (ties: the lower
    // anchor row); only links with affinity > 0 count, with w_ca = affinity / Σ of c's counted
    // affinities, summed best first (a row with none is dropped). ρ_c = clamp(s_c / mean s, 0, 1)
    // (1 when mean s <= 0; s summed in row order). Anchor a keeps its row, with
    // P_a = Σ_c w_ca·ρ_c·m_c and feature (m_a·x_a + Σ_c w_ca·ρ_c·m_c·x_c) / (m_a + P_a), except that
    // when its own share m_a / (m_a + P_a) is below f = options.acgr_self_share the feature is
    // f·x_a + (1 - f)·(Σ_c w_ca·ρ_c·m_c·x_c) / P_a; mass m_a + Σ_c w_ca·m_c. Every sum runs in the
    // same order (the anchor's own term, then context rows ascending, each row's links best first),
    // so the twin's recovered features are bit-identical. The masses add up to the input's, less
    // the dropped rows'. n_keep == n_tokens returns the input.
    DCP_METHOD_ACGR = 7,
    // TATCS (Text-Aware Token Cluster Selection), n_keep clusters of all input rows, x̂ = unit
    // feature rows. s̃ = s / max s (1 when max s <= 0); relevance r_i = max_j cos(x̂_i, text_j),
    // r̃ = (r - min r) / (max r - min r), all 1 without text, when max == min, or when
    // options.tatcs_use_text = 0; seed score
    // g = s̃·r̃ (all 1 when max g <= 0).
    // Centres: first argmax g; with D_i = min over centres c of 1 - cos(x̂_i, x̂_c), next = the
    // non-centre maximising D_i·(½ + ½·g_i / max g), or, when that maximum is <= 0 (only
    // duplicates left), the non-centre maximising g. Assignment: each non-centre joins the
    // centre maximising cos(x̂_i, x̂_c) - λ_t·|r̃_i - r̃_c| (λ_t = options.tatcs_text_weight; ties:
    // the centre chosen first). Reselection: μ_Q = unit(Σ_{i∈Q} m_i·x̂_i); representative = the
    // member maximising η·p_i + (1-η)·cos(x̂_i, μ_Q) (η = options.tatcs_relevance_mix; p = r̃, or s̃
    // with options.tatcs_reselect_by = 1). The output
    // token sits on the representative's row with mass Σ_{i∈Q} m_i (summed in row order) and, with
    // options.tatcs_reselect = 1, the representative's own feature; with 0, the merge
    // Σ ω_i·x_i / Σ ω_i, ω_i = m_i·max(0, cos(x̂_i, x̂_rep)), ω_rep = m_rep.
    // used_tatcs = true.
    DCP_METHOD_TATCS = 8,
    // DCP-Prune: ACGR with n_keep anchors; κ_a = dcp_kappa(input, ACGR output): the share of the image
    // ACGR's tokens leave uncovered. If κ_a <= max(options.tau, 1e-4), ACGR's output (used_tatcs = false;
    // a κ_a of 1e-4 or less is rounding noise: ACGR lost nothing). Else ACGR again with
    // M = min(n_tokens, options.dcp_anchors_per_token·n_keep) anchors, and TATCS on those M
    // recovered anchors (their recovered features and masses, s and patches; no keys) re-clusters
    // them into n_keep tokens (used_tatcs = true); with dcp_anchors_per_token = 0, TATCS on the input
    // instead (the first build's reading). assignment: each input row → its anchor → that
    // anchor's cluster (-1 if ACGR dropped it); as tatcs's with dcp_anchors_per_token = 0.
    DCP_METHOD_DCP = 9,
    DCP_METHOD_COUNT, // number of methods; not a method
};

enum dcp_status {
    DCP_STATUS_OK = 0,
    DCP_STATUS_NULL_BUFFER,          // a required pointer (features, or an output buffer) is NULL
    DCP_STATUS_BAD_SHAPE,            // n_tokens != grid_h * grid_w, or a size < 1
    DCP_STATUS_BAD_METHOD,           // method is not a dcp_method value
    DCP_STATUS_BAD_N_KEEP,           // n_keep outside 1..n_tokens, or not allowed by the method
    DCP_STATUS_NON_FINITE_FEATURES,  // a feature value is NaN or ±Inf
    DCP_STATUS_NON_FINITE_CLS_ATTN,  // a cls_attn value is NaN or ±Inf
    DCP_STATUS_MISSING_CLS_ATTN,     // the method needs cls_attn and it is NULL
    DCP_STATUS_NON_FINITE_KEYS,      // a keys value is NaN or ±Inf
    DCP_STATUS_NON_FINITE_TEXT,      // a text value is NaN or ±Inf
    DCP_STATUS_BAD_MASSES,           // a mass is not finite or not > 0
    DCP_STATUS_BAD_PATCH_IDX,        // patch_idx not strictly ascending inside the grid, or
                                     // given to a method that needs the whole grid (pool)
    DCP_STATUS_BAD_OPTION,           // an option is out of its range (dcp_option_info), or
                                     // dcp_options_set got a value its int32 field cannot hold
    DCP_STATUS_UNKNOWN_OPTION,       // dcp_options_set: no option has this name
};

// Every knob of the methods above (their comments say how each is used). Each field's default,
// range, the methods that read it and a one-line doc are a row of the option table
// (dcp_option_info, below); get the defaults from dcp_options_default(). The DCP-Prune defaults
// are chosen on the benchmark's validation split (see README, "Calibration").
struct dcp_options {
    int32_t acgr_n_neighbors;
    float   acgr_spatial_weight;
    float   acgr_spatial_sigma;
    float   tau;
    float   tatcs_text_weight;
    float   tatcs_relevance_mix;
    float   visionzip_dominant_ratio;
    float   cdpruner_theta;
    float   acgr_self_share;
    float   acgr_min_similarity;
    int32_t dcp_anchors_per_token;
    int32_t tatcs_reselect;
    int32_t tatcs_use_text;
    int32_t tatcs_reselect_by;
};

struct dcp_prune_params {
    enum dcp_method    method;
    int32_t            n_keep;   // K, the number of output tokens
    uint64_t           seed;     // used by DCP_METHOD_RANDOM only
    struct dcp_options options;
};

// The tokens of one image (borrowed, read-only). See the data layout above.
struct dcp_tokens {
    const float   * features;   // [n_tokens × n_dim]
    const float   * cls_attn;   // [n_tokens] or NULL
    const float   * keys;       // [n_tokens × n_dim_keys] or NULL
    const float   * masses_in;  // [n_tokens] or NULL
    const int32_t * patch_idx;  // [n_tokens] or NULL
    const float   * text;       // [n_text × n_dim] or NULL
    int32_t         n_tokens;
    int32_t         n_dim;
    int32_t         n_dim_keys; // ignored when keys is NULL
    int32_t         n_text;     // ignored when text is NULL
    int32_t         grid_h;     // patch rows
    int32_t         grid_w;     // patch columns
};

// Where the result goes (caller-owned, each sized for params.n_keep tokens).
struct dcp_selection {
    int32_t * kept_idx;   // [n_keep]
    float   * features;   // [n_keep × n_dim]
    float   * masses;     // [n_keep]
    int32_t * assignment; // [n_tokens] or NULL: for each INPUT row, the output token (0..n_keep-1, output order) it ended up in, -1 if dropped
    float     kappa;      // written: κ(input, output)
    bool      used_tatcs; // written: dcp ran TATCS (κ > tau); tatcs: always; others: false
};

// Every option at its default (the option table's default_value, rounded to the field's type).
struct dcp_options dcp_options_default(void);

// Defaults: method = DCP_METHOD_DCP, n_keep = 16, seed = 0, options = dcp_options_default().
// The same method and budget as the app's (dcp_desktop.pipeline DEFAULT_METHOD, DEFAULT_TOKENS).
struct dcp_prune_params dcp_prune_params_default(void);

// κ: how much of the input set (a, [n_a × n_dim], masses_a: NULL = all 1) the output set (b,
// [n_b × n_dim]) fails to cover: one minus the mass-weighted mean, over a's rows, of each row's
// best cosine to a row of b,
//   κ = 1 - Σ_i m_i · max_k cos(a_i, b_k) / Σ_i m_i   (clamped at 0; unit rows and cosines as the
// exactness rule in prune_internal.h; the sums in double, in row order).
// 0 when every input row is in b; grows as parts of the image have no similar kept token. b's masses
// do not enter: each input patch counts once, by its own mass. Chosen on validation over the earlier
// mean-shift + spread form because it predicts a token set's accuracy loss better (docs/dcp-prune.md, κ).
// O(n_a · n_b · n_dim).
float dcp_kappa(const float * a, const float * masses_a, int32_t n_a, const float * b, int32_t n_b, int32_t n_dim);

// Selects params.n_keep tokens from `tokens` into `out`.
// Validates everything before writing: on any status other than DCP_STATUS_OK the output
// buffers are left untouched. Cost: O(n_tokens × n_dim) for full/pool/fastervlm/random,
// O(n_keep × n_tokens × n_dim) for the others.
enum dcp_status dcp_prune(const struct dcp_tokens * tokens,
                          struct dcp_prune_params   params,
                          struct dcp_selection    * out);

// A short English description of a status; never NULL ("unknown status" for unknown values).
const char * dcp_status_string(enum dcp_status status);

// ---- the method and option tables (static storage: never freed, safe to read from any thread) ----

// One row of the method table.
struct dcp_method_desc {
    enum dcp_method method;
    const char *    name;            // lower case: "full", "pool", "fastervlm", "random", "visionzip",
                                     // "divprune", "cdpruner", "acgr", "tatcs", "dcp"
    bool            needs_cls_attn;  // reads tokens->cls_attn; DCP_STATUS_MISSING_CLS_ATTN without it
    bool            text_aware;      // reads tokens->text when given; text-free scores without it
};

// The row of `method`; NULL for values that are not a dcp_method.
const struct dcp_method_desc * dcp_method_info(enum dcp_method method);

// Parses a dcp_method_desc name. Returns DCP_STATUS_BAD_METHOD (and leaves *method untouched)
// for an unknown or NULL name.
enum dcp_status dcp_method_from_name(const char * name, enum dcp_method * method);

// How a dcp_options field stores its value.
enum dcp_option_type {
    DCP_OPTION_TYPE_INT32 = 0,  // a whole number; dcp_options_set truncates toward zero
    DCP_OPTION_TYPE_FLOAT = 1,  // float32; dcp_options_set rounds to nearest (beyond FLT_MAX: ±Inf)
};

// One row of the option table. A value v is in range when it is finite,
// min <= v (min < v when min_exclusive) and v <= max; FLT_MAX as max means any finite float32.
struct dcp_option_desc {
    const char *         name;           // the dcp_options field, e.g. "tau"
    enum dcp_option_type type;
    double               default_value;  // before rounding to the type (tau: 0.04)
    double               min;
    bool                 min_exclusive;
    double               max;
    uint32_t             methods;        // bit (1u << m) set for each dcp_method m that reads it
    const char *         doc;            // one line of English
};

// The number of options; their rows are dcp_option_info(0 .. dcp_option_count() - 1).
int32_t dcp_option_count(void);

// Row `index` of the option table; NULL outside 0 .. dcp_option_count() - 1.
const struct dcp_option_desc * dcp_option_info(int32_t index);

// Sets the option called `name` in *options to `value`, converted to the field's type. Does not
// check the range: dcp_prune does. Returns DCP_STATUS_UNKNOWN_OPTION for an unknown or NULL name,
// DCP_STATUS_BAD_OPTION for an int32 option given NaN or a value outside int32; *options is then
// left untouched.
enum dcp_status dcp_options_set(struct dcp_options * options, const char * name, double value);

#ifdef __cplusplus
}
#endif
