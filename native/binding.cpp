// binding.cpp — nanobind wiring for dcp_prune (prune.h). No algorithm here.
// The array types state the contract (float32, C-contiguous, CPU, 1-D/2-D); arrays that break
// it are rejected with TypeError before any code below runs, and nothing is converted silently:
// dcp_desktop.prune converts user input first. A non-OK dcp_status becomes ValueError.

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

#include "prune.h"

namespace nb = nanobind;

namespace {

using features_in = nb::ndarray<const float, nb::shape<-1, -1>, nb::c_contig, nb::device::cpu>;
using scores_in   = nb::ndarray<const float, nb::shape<-1>, nb::c_contig, nb::device::cpu>;
using indices_in  = nb::ndarray<const int32_t, nb::shape<-1>, nb::c_contig, nb::device::cpu>;
using options_map = std::map<std::string, double>;

template <typename T, typename Shape>
using numpy_out = nb::ndarray<nb::numpy, T, Shape>;

using prune_result = std::tuple<numpy_out<int32_t, nb::shape<-1>>,
                                numpy_out<float, nb::shape<-1, -1>>,
                                numpy_out<float, nb::shape<-1>>, float, bool,
                                numpy_out<int32_t, nb::shape<-1>>>;

// {name: value} → dcp_options: the defaults, with each given option set by name (ranges are
// checked by dcp_prune).
dcp_options parse_options(const options_map & values) {
    dcp_options options = dcp_options_default();
    for (const auto & [name, value] : values) {
        const dcp_status status = dcp_options_set(&options, name.c_str(), value);
        if (status != DCP_STATUS_OK) {
            throw std::invalid_argument("options: " + name + ": " + dcp_status_string(status));
        }
    }
    return options;
}

std::string method_name(dcp_method method) {
    return dcp_method_info(method)->name;
}

// The method table (prune.h dcp_method_desc), one dict per method, in enum order.
nb::list methods() {
    nb::list rows;
    for (int m = 0; m < DCP_METHOD_COUNT; ++m) {
        const dcp_method_desc * desc = dcp_method_info(dcp_method(m));
        nb::dict row;
        row["name"] = desc->name;
        row["needs_cls_attn"] = desc->needs_cls_attn;
        row["text_aware"] = desc->text_aware;
        rows.append(row);
    }
    return rows;
}

// The option table (prune.h dcp_option_desc), one dict per option; `methods` as names.
nb::list options() {
    nb::list rows;
    for (int32_t i = 0; i < dcp_option_count(); ++i) {
        const dcp_option_desc * desc = dcp_option_info(i);
        nb::list used_by;
        for (int m = 0; m < DCP_METHOD_COUNT; ++m) {
            if (desc->methods & (1u << m)) {
                used_by.append(method_name(dcp_method(m)));
            }
        }
        nb::dict row;
        row["name"] = desc->name;
        row["integer"] = desc->type == DCP_OPTION_TYPE_INT32;
        row["default"] = desc->default_value;
        row["min"] = desc->min;
        row["min_exclusive"] = desc->min_exclusive;
        row["max"] = desc->max;
        row["methods"] = nb::tuple(used_by);
        row["doc"] = desc->doc;
        rows.append(row);
    }
    return rows;
}

// Hands a heap buffer to NumPy: the returned array owns it and frees it when collected.
template <typename T, typename Shape>
numpy_out<T, Shape> to_numpy(std::unique_ptr<T[]> data, std::initializer_list<size_t> shape) {
    nb::capsule owner(data.get(), [](void * p) noexcept { delete[] static_cast<T *>(p); });
    return numpy_out<T, Shape>(data.release(), shape, owner);
}

std::string method_choices() {
    std::string choices;
    for (int m = 0; m < DCP_METHOD_COUNT; ++m) {
        choices += (m ? ", " : "") + method_name(dcp_method(m));
    }
    return choices;
}

dcp_method parse_method(const std::string & name) {
    dcp_method method;
    if (dcp_method_from_name(name.c_str(), &method) != DCP_STATUS_OK) {
        throw std::invalid_argument("method: unknown '" + name + "'; choose one of " + method_choices());
    }
    return method;
}

// The Python argument a failed status points at.
const char * argument_of(dcp_status status) {
    switch (status) {
        case DCP_STATUS_BAD_METHOD:          return "method";
        case DCP_STATUS_BAD_N_KEEP:          return "n_keep";
        case DCP_STATUS_NON_FINITE_CLS_ATTN:
        case DCP_STATUS_MISSING_CLS_ATTN:    return "cls_attn";
        case DCP_STATUS_NON_FINITE_KEYS:     return "keys";
        case DCP_STATUS_NON_FINITE_TEXT:     return "text";
        case DCP_STATUS_BAD_MASSES:          return "masses";
        case DCP_STATUS_BAD_PATCH_IDX:       return "patch_idx";
        case DCP_STATUS_BAD_OPTION:          return "options";
        default:                             return "features";
    }
}

void throw_on_error(dcp_status status, const dcp_tokens & tokens, const dcp_prune_params & params) {
    if (status == DCP_STATUS_OK) {
        return;
    }
    throw std::invalid_argument(
        std::string(argument_of(status)) + ": " + dcp_status_string(status) + " (features "
        + std::to_string(tokens.n_tokens) + "x" + std::to_string(tokens.n_dim) + ", grid "
        + std::to_string(tokens.grid_h) + "x" + std::to_string(tokens.grid_w) + ", n_keep "
        + std::to_string(params.n_keep) + ", method '" + method_name(params.method) + "')");
}

// Rows of an optional per-token array must match the features.
template <typename Array>
void check_rows(const char * name, const std::optional<Array> & array, size_t n_rows) {
    if (array && array->shape(0) != n_rows) {
        throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(n_rows)
                                    + " rows (one per feature row), got " + std::to_string(array->shape(0)));
    }
}

template <typename T, typename Array>
const T * data_or_null(const std::optional<Array> & array) {
    return array ? array->data() : nullptr;
}

dcp_tokens borrow_tokens(const features_in & features, const std::optional<scores_in> & cls_attn,
                         const std::optional<features_in> & keys, const std::optional<scores_in> & masses,
                         const std::optional<indices_in> & patch_idx, const std::optional<features_in> & text,
                         int32_t grid_h, int32_t grid_w) {
    const size_t n = features.shape(0);
    if (n > INT32_MAX || features.shape(1) > INT32_MAX) {
        throw std::invalid_argument("features: too many rows or columns for int32 indices");
    }
    check_rows("cls_attn", cls_attn, n);
    check_rows("keys", keys, n);
    check_rows("masses", masses, n);
    check_rows("patch_idx", patch_idx, n);
    if (text && text->shape(1) != features.shape(1)) {
        throw std::invalid_argument("text: expected " + std::to_string(features.shape(1))
                                    + " columns (the feature width), got " + std::to_string(text->shape(1)));
    }
    dcp_tokens t{};
    t.features = features.data();
    t.cls_attn = data_or_null<float>(cls_attn);
    t.keys = data_or_null<float>(keys);
    t.masses_in = data_or_null<float>(masses);
    t.patch_idx = data_or_null<int32_t>(patch_idx);
    t.text = data_or_null<float>(text);
    t.n_tokens = int32_t(n);
    t.n_dim = int32_t(features.shape(1));
    t.n_dim_keys = keys ? int32_t(keys->shape(1)) : 0;
    t.n_text = text ? int32_t(text->shape(0)) : 0;
    t.grid_h = grid_h;
    t.grid_w = grid_w;
    return t;
}

prune_result prune(const features_in & features, const std::optional<scores_in> & cls_attn,
                   const std::optional<features_in> & keys, const std::optional<scores_in> & masses,
                   const std::optional<indices_in> & patch_idx, const std::optional<features_in> & text,
                   int32_t grid_h, int32_t grid_w, int32_t n_keep, const std::string & method,
                   uint64_t seed, const options_map & options) {
    const dcp_tokens tokens = borrow_tokens(features, cls_attn, keys, masses, patch_idx, text, grid_h, grid_w);
    const dcp_prune_params params = {parse_method(method), n_keep, seed, parse_options(options)};
    const size_t n_out = size_t(std::max(n_keep, 0));
    const size_t n_dim = size_t(tokens.n_dim);

    auto kept_idx = std::make_unique<int32_t[]>(n_out);
    auto kept_features = std::make_unique<float[]>(n_out * n_dim);
    auto kept_masses = std::make_unique<float[]>(n_out);
    const size_t n_in = size_t(tokens.n_tokens);
    auto assignment = std::make_unique<int32_t[]>(n_in);
    dcp_selection out = {kept_idx.get(), kept_features.get(), kept_masses.get(), assignment.get(), 0.0f, false};
    dcp_status status;
    {
        nb::gil_scoped_release no_gil; // long calls must not freeze the GUI thread
        status = dcp_prune(&tokens, params, &out);
    }
    throw_on_error(status, tokens, params);
    return {to_numpy<int32_t, nb::shape<-1>>(std::move(kept_idx), {n_out}),
            to_numpy<float, nb::shape<-1, -1>>(std::move(kept_features), {n_out, n_dim}),
            to_numpy<float, nb::shape<-1>>(std::move(kept_masses), {n_out}), out.kappa, out.used_tatcs,
            to_numpy<int32_t, nb::shape<-1>>(std::move(assignment), {n_in})};
}

float kappa(const features_in & a, const std::optional<scores_in> & masses_a, const features_in & b) {
    if (a.shape(1) != b.shape(1) || a.shape(0) < 1 || b.shape(0) < 1) {
        throw std::invalid_argument("kappa: expected two non-empty (n, D) arrays of the same width");
    }
    check_rows("masses_a", masses_a, a.shape(0));
    nb::gil_scoped_release no_gil;
    return dcp_kappa(a.data(), data_or_null<float>(masses_a), int32_t(a.shape(0)), b.data(), int32_t(b.shape(0)),
                     int32_t(a.shape(1)));
}

} // namespace

NB_MODULE(_native, m) {
    m.doc() = "Private native core of dcp_desktop.prune; use dcp_desktop.prune.select instead.";

    m.def("methods", &methods, "The method table: [{name, needs_cls_attn, text_aware}] in prune.h's enum order.");
    m.def("options", &options,
          "The option table: [{name, integer, default, min, min_exclusive, max, methods, doc}]; a value v is\n"
          "in range when finite, min <= v (min < v if min_exclusive) and v <= max (see prune.h).");
    m.def("kappa", &kappa, nb::arg("a").noconvert(), nb::arg("masses_a").noconvert().none(), nb::arg("b").noconvert(),
          "κ from set a to set b (see dcp_kappa in prune.h).");
    m.def("prune", &prune,
          nb::arg("features").noconvert(), nb::arg("cls_attn").noconvert().none(),
          nb::arg("keys").noconvert().none(), nb::arg("masses").noconvert().none(),
          nb::arg("patch_idx").noconvert().none(), nb::arg("text").noconvert().none(),
          nb::arg("grid_h"), nb::arg("grid_w"), nb::arg("n_keep"), nb::arg("method"), nb::arg("seed"),
          nb::arg("options"),
          "Keep n_keep of the (N, D) float32 tokens (see prune.h for every argument).\n"
          "cls_attn, masses: (N,) float32; keys: (N, Dk) float32; patch_idx: (N,) int32; text: (T, D)\n"
          "float32; each may be None. options: {name: value} overriding the defaults of options().\n"
          "Returns (kept_idx int32 (K,), features float32 (K, D), masses float32 (K,), kappa, used_tatcs,\n"
          "assignment int32 (N,): the output token each input row went to, -1 if dropped).\n"
          "Raises ValueError for bad sizes or values, TypeError for arrays of the wrong dtype,\n"
          "rank, layout or device (no silent conversion).");
}
