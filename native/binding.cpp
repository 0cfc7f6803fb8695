// binding.cpp — nanobind wiring for dcp_prune (prune.h). No algorithm here.
// The array types state the contract (float32, C-contiguous, CPU, 1-D/2-D); arrays that break
// it are rejected with TypeError before any code below runs, and nothing is converted silently:
// dcp_desktop.prune converts user input first. A non-OK dcp_status becomes ValueError.

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <algorithm>
#include <cstdint>
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

template <typename T, typename Shape>
using numpy_out = nb::ndarray<nb::numpy, T, Shape>;

using prune_result = std::tuple<numpy_out<int32_t, nb::shape<-1>>,
                                numpy_out<float, nb::shape<-1, -1>>,
                                numpy_out<float, nb::shape<-1>>>;

// Hands a heap buffer to NumPy: the returned array owns it and frees it when collected.
template <typename T, typename Shape>
numpy_out<T, Shape> to_numpy(std::unique_ptr<T[]> data, std::initializer_list<size_t> shape) {
    nb::capsule owner(data.get(), [](void * p) noexcept { delete[] static_cast<T *>(p); });
    return numpy_out<T, Shape>(data.release(), shape, owner);
}

std::string method_choices() {
    std::string choices;
    for (int m = 0; m < DCP_METHOD_COUNT; ++m) {
        choices += (m ? ", " : "") + std::string(dcp_method_name(dcp_method(m)));
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
        + std::to_string(params.n_keep) + ", method '" + dcp_method_name(params.method) + "')");
}

dcp_tokens borrow_tokens(const features_in & features, const std::optional<scores_in> & cls_attn,
                         int32_t grid_h, int32_t grid_w) {
    if (features.shape(0) > INT32_MAX || features.shape(1) > INT32_MAX) {
        throw std::invalid_argument("features: too many rows or columns for int32 indices");
    }
    if (cls_attn && cls_attn->shape(0) != features.shape(0)) {
        throw std::invalid_argument("cls_attn: expected " + std::to_string(features.shape(0))
                                    + " values (one per feature row), got " + std::to_string(cls_attn->shape(0)));
    }
    return {features.data(), cls_attn ? cls_attn->data() : nullptr, int32_t(features.shape(0)),
            int32_t(features.shape(1)), grid_h, grid_w};
}

prune_result prune(const features_in & features, const std::optional<scores_in> & cls_attn,
                   int32_t grid_h, int32_t grid_w, int32_t n_keep, const std::string & method,
                   uint64_t seed) {
    const dcp_tokens tokens = borrow_tokens(features, cls_attn, grid_h, grid_w);
    const dcp_prune_params params = {parse_method(method), n_keep, seed};
    const size_t n_out = size_t(std::max(n_keep, 0));
    const size_t n_dim = size_t(tokens.n_dim);

    auto kept_idx = std::make_unique<int32_t[]>(n_out);
    auto kept_features = std::make_unique<float[]>(n_out * n_dim);
    auto masses = std::make_unique<float[]>(n_out);
    dcp_selection out = {kept_idx.get(), kept_features.get(), masses.get()};
    dcp_status status;
    {
        nb::gil_scoped_release no_gil; // long calls must not freeze the GUI thread
        status = dcp_prune(&tokens, params, &out);
    }
    throw_on_error(status, tokens, params);
    return {to_numpy<int32_t, nb::shape<-1>>(std::move(kept_idx), {n_out}),
            to_numpy<float, nb::shape<-1, -1>>(std::move(kept_features), {n_out, n_dim}),
            to_numpy<float, nb::shape<-1>>(std::move(masses), {n_out})};
}

} // namespace

NB_MODULE(_native, m) {
    m.doc() = "Private native core of dcp_desktop.prune; use dcp_desktop.prune.select instead.";

    nb::list names;
    for (int method = 0; method < DCP_METHOD_COUNT; ++method) {
        names.append(dcp_method_name(dcp_method(method)));
    }
    m.attr("METHODS") = nb::tuple(names);

    m.def("prune", &prune,
          nb::arg("features").noconvert(), nb::arg("cls_attn").noconvert().none(), nb::arg("grid_h"),
          nb::arg("grid_w"), nb::arg("n_keep"), nb::arg("method"), nb::arg("seed") = 0,
          "Keep n_keep of the (N, D) float32 patch features (raster order on a grid_h x grid_w grid).\n"
          "cls_attn: (N,) float32 [CLS]->patch attention, or None for methods that do not use it.\n"
          "Returns (kept_idx int32 (K,), features float32 (K, D), masses float32 (K,)), all owned.\n"
          "Raises ValueError for bad sizes or values, TypeError for arrays of the wrong dtype,\n"
          "rank, layout or device (no silent conversion).");
}
