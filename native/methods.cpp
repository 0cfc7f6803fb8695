// methods.cpp — the method table and the option table. Every fact about a method (its name, the
// inputs it reads, its function) and about an option (type, default, range, the methods that read
// it, a one-line doc) lives in one row here: dcp_prune dispatches through the first and checks
// options against the second, and the accessors in prune.h hand both to the binding (and so to
// dcp_desktop.prune), so no other list of methods or options exists on either side.

#include "prune.h"
#include "prune_internal.h"

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

static_assert(std::numeric_limits<float>::is_iec559, "options are rounded to float32 by IEEE rules");

namespace dcp {
namespace {

// ---- methods ---------------------------------------------------------------------------------

struct method_row {
    dcp_method_desc desc;
    prune_fn        run;
};

constexpr method_row k_methods[] = {
    //  method                 name         needs_cls_attn  text_aware
    {{DCP_METHOD_FULL,      "full",      false,          false}, prune_full},
    {{DCP_METHOD_POOL,      "pool",      false,          false}, prune_pool},
    {{DCP_METHOD_FASTERVLM, "fastervlm", true,           false}, prune_fastervlm},
    {{DCP_METHOD_RANDOM,    "random",    false,          false}, prune_random},
    {{DCP_METHOD_VISIONZIP, "visionzip", true,           false}, prune_visionzip},
    {{DCP_METHOD_DIVPRUNE,  "divprune",  false,          false}, prune_divprune},
    {{DCP_METHOD_CDPRUNER,  "cdpruner",  false,          true},  prune_cdpruner},
    {{DCP_METHOD_ACGR,      "acgr",      true,           false}, prune_acgr},
    {{DCP_METHOD_TATCS,     "tatcs",     true,           true},  prune_tatcs},
    {{DCP_METHOD_DCP,       "dcp",       true,           true},  prune_dcp},
};
static_assert(sizeof(k_methods) / sizeof(k_methods[0]) == DCP_METHOD_COUNT,
              "every dcp_method needs a row in k_methods");

const method_row * find_method(dcp_method method) {
    for (const method_row & row : k_methods) {
        if (row.desc.method == method) {
            return &row;
        }
    }
    return nullptr;
}

// ---- options ---------------------------------------------------------------------------------

struct option_row {
    dcp_option_desc desc;
    float   dcp_options::* real;     // the field when desc.type is DCP_OPTION_TYPE_FLOAT, else nullptr
    int32_t dcp_options::* integer;  // the field when desc.type is DCP_OPTION_TYPE_INT32, else nullptr
};

constexpr uint32_t used_by(dcp_method a) { return 1u << a; }
constexpr uint32_t used_by(dcp_method a, dcp_method b) { return used_by(a) | used_by(b); }

constexpr double k_finite = FLT_MAX;  // as a maximum: any finite float32

// The DCP-Prune knobs were chosen on the validation split with the demo model
// (python -m dcp_desktop.eval.calibrate; docs/results/calibration-validation.md); the four added with
// the second build (acgr_self_share, acgr_min_similarity, dcp_anchors_per_token, tatcs_reselect) and
// tatcs_use_text by the paired ablations in docs/dcp-prune.md (reasons in prune_reference/dcp.py).
constexpr option_row k_options[] = {
    {{"acgr_n_neighbors", DCP_OPTION_TYPE_INT32, 4, 1, false, INT32_MAX,
      used_by(DCP_METHOD_ACGR, DCP_METHOD_DCP), "anchors each context token links to"},
     nullptr, &dcp_options::acgr_n_neighbors},
    {{"acgr_spatial_weight", DCP_OPTION_TYPE_FLOAT, 0.5, 0, false, k_finite,
      used_by(DCP_METHOD_ACGR, DCP_METHOD_DCP), "weight of grid proximity vs semantic similarity"},
     &dcp_options::acgr_spatial_weight, nullptr},
    {{"acgr_spatial_sigma", DCP_OPTION_TYPE_FLOAT, 2.0, 0, true, k_finite,
      used_by(DCP_METHOD_ACGR, DCP_METHOD_DCP), "grid distance (in patches) at which proximity falls to e^-1/2"},
     &dcp_options::acgr_spatial_sigma, nullptr},
    // 0.04: the one τ with the best mean gated accuracy over 16, 32 and 64 tokens on validation (kappa_gate)
    {{"tau", DCP_OPTION_TYPE_FLOAT, 0.04, 0, false, k_finite,
      used_by(DCP_METHOD_DCP), "dcp runs TATCS when the kappa of ACGR's output exceeds tau"},
     &dcp_options::tau, nullptr},
    {{"tatcs_text_weight", DCP_OPTION_TYPE_FLOAT, 0.25, 0, false, k_finite,
      used_by(DCP_METHOD_TATCS, DCP_METHOD_DCP), "how much relevance differences separate clusters"},
     &dcp_options::tatcs_text_weight, nullptr},
    {{"tatcs_relevance_mix", DCP_OPTION_TYPE_FLOAT, 0.5, 0, false, 1,
      used_by(DCP_METHOD_TATCS, DCP_METHOD_DCP), "reselection: relevance (1) vs centrality (0)"},
     &dcp_options::tatcs_relevance_mix, nullptr},
    {{"acgr_self_share", DCP_OPTION_TYPE_FLOAT, 0.5, 0, false, 1,
      used_by(DCP_METHOD_ACGR, DCP_METHOD_DCP), "the least share of its own feature an anchor keeps"},
     &dcp_options::acgr_self_share, nullptr},
    {{"acgr_min_similarity", DCP_OPTION_TYPE_FLOAT, 0.0, -1, false, 1,
      used_by(DCP_METHOD_ACGR, DCP_METHOD_DCP), "a context token links only to anchors more cosine-similar than this"},
     &dcp_options::acgr_min_similarity, nullptr},
    {{"dcp_anchors_per_token", DCP_OPTION_TYPE_INT32, 0, 0, false, 64,
      used_by(DCP_METHOD_DCP), "TATCS re-clusters this many recovered anchors per kept token (0: all input rows)"},
     nullptr, &dcp_options::dcp_anchors_per_token},
    {{"tatcs_reselect", DCP_OPTION_TYPE_INT32, 1, 0, false, 1,
      used_by(DCP_METHOD_TATCS, DCP_METHOD_DCP), "1: each cluster is its representative's own row; 0: their merged mean"},
     nullptr, &dcp_options::tatcs_reselect},
    {{"tatcs_use_text", DCP_OPTION_TYPE_INT32, 0, 0, false, 1,
      used_by(DCP_METHOD_TATCS, DCP_METHOD_DCP), "1: the question's relevance shapes the clusters; 0: text-free"},
     nullptr, &dcp_options::tatcs_use_text},
    {{"tatcs_reselect_by", DCP_OPTION_TYPE_INT32, 0, 0, false, 1,
      used_by(DCP_METHOD_TATCS, DCP_METHOD_DCP), "reselection prefers 0: relevance, 1: [CLS] attention"},
     nullptr, &dcp_options::tatcs_reselect_by},
    // VisionZip's own split: 54 dominant + 10 contextual of 64.
    {{"visionzip_dominant_ratio", DCP_OPTION_TYPE_FLOAT, 54.0 / 64.0, 0, false, 1,
      used_by(DCP_METHOD_VISIONZIP), "share of n_keep kept as dominant tokens"},
     &dcp_options::visionzip_dominant_ratio, nullptr},
    {{"cdpruner_theta", DCP_OPTION_TYPE_FLOAT, 0.5, 0, false, 1,
      used_by(DCP_METHOD_CDPRUNER), "relevance weight in the DPP kernel"},
     &dcp_options::cdpruner_theta, nullptr},
};
constexpr int32_t k_n_options = int32_t(sizeof(k_options) / sizeof(k_options[0]));

double value_of(const dcp_options & options, const option_row & row) {
    return row.real ? double(options.*row.real) : double(options.*row.integer);
}

bool in_range(const dcp_option_desc & d, double value) {
    return std::isfinite(value) && (d.min_exclusive ? value > d.min : value >= d.min) && value <= d.max;
}

} // namespace

prune_fn method_function(dcp_method method) {
    const method_row * row = find_method(method);
    return row ? row->run : nullptr;
}

bool options_are_valid(const dcp_options & options) {
    for (const option_row & row : k_options) {
        if (!in_range(row.desc, value_of(options, row))) {
            return false;
        }
    }
    return true;
}

} // namespace dcp

// ---- public API ------------------------------------------------------------------------------

using namespace dcp;

const dcp_method_desc * dcp_method_info(dcp_method method) {
    const method_row * row = find_method(method);
    return row ? &row->desc : nullptr;
}

dcp_status dcp_method_from_name(const char * name, dcp_method * method) {
    for (const method_row & row : k_methods) {
        if (name && std::strcmp(name, row.desc.name) == 0) {
            *method = row.desc.method;
            return DCP_STATUS_OK;
        }
    }
    return DCP_STATUS_BAD_METHOD;
}

int32_t dcp_option_count(void) {
    return k_n_options;
}

const dcp_option_desc * dcp_option_info(int32_t index) {
    return index >= 0 && index < k_n_options ? &k_options[index].desc : nullptr;
}

dcp_status dcp_options_set(dcp_options * options, const char * name, double value) {
    for (const option_row & row : k_options) {
        if (!name || std::strcmp(name, row.desc.name) != 0) {
            continue;
        }
        if (row.real) {
            options->*row.real = float(value);
            return DCP_STATUS_OK;
        }
        if (!(value > double(INT32_MIN) - 1.0 && value < double(INT32_MAX) + 1.0)) {
            return DCP_STATUS_BAD_OPTION;  // no int32 holds it (or NaN): truncating would be undefined
        }
        options->*row.integer = int32_t(value);
        return DCP_STATUS_OK;
    }
    return DCP_STATUS_UNKNOWN_OPTION;
}

dcp_options dcp_options_default(void) {
    dcp_options options{};
    for (const option_row & row : k_options) {
        dcp_options_set(&options, row.desc.name, row.desc.default_value);
    }
    return options;
}

dcp_prune_params dcp_prune_params_default(void) {
    return {DCP_METHOD_DCP, 16, 0, dcp_options_default()};
}
