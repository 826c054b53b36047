// Module-level utilities with no model or state: build and device information, and the
// quantisation of float rows into ggml block types. Apart from engine.cpp's model and states.
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine.hpp"
#include "ggml-backend.h"
#include "ggml.h"
#include "whisper.h"

#ifndef WHISPERD_CUDA_ARCHS
#define WHISPERD_CUDA_ARCHS ""
#endif

namespace whisperd {

namespace {

const std::map<std::string, ggml_type> &quant_types() {
    static const std::map<std::string, ggml_type> types = {
        {"q4_0", GGML_TYPE_Q4_0}, {"q4_1", GGML_TYPE_Q4_1}, {"q5_0", GGML_TYPE_Q5_0},
        {"q5_1", GGML_TYPE_Q5_1}, {"q8_0", GGML_TYPE_Q8_0},
    };
    return types;
}

}  // namespace

// ---------------------------------------------------------------- info

std::string system_info() { return whisper_print_system_info(); }
std::string whisper_version() { return ::whisper_version(); }

bool built_with_cuda() {
#ifdef WHISPERD_WITH_CUDA
    return true;
#else
    return false;
#endif
}

std::string cuda_architectures() { return WHISPERD_CUDA_ARCHS; }

std::vector<Device> devices() {
    std::vector<Device> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        size_t free = 0, total = 0;
        ggml_backend_dev_memory(dev, &free, &total);
        const char *type = "cpu";
        switch (ggml_backend_dev_type(dev)) {
            case GGML_BACKEND_DEVICE_TYPE_CPU: type = "cpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_GPU: type = "gpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU: type = "igpu"; break;
            default: type = "accel"; break;
        }
        out.push_back(Device{ggml_backend_dev_name(dev), ggml_backend_dev_description(dev), type,
                             free, total});
    }
    return out;
}

std::string quantize_rows(const std::string &qtype, const float *data, int64_t n_rows,
                          int64_t n_per_row) {
    const auto &types = quant_types();
    const auto it = types.find(qtype);
    if (it == types.end()) {
        std::string names;
        for (const auto &kv : types) {
            names += (names.empty() ? "" : ", ") + kv.first;
        }
        throw std::invalid_argument("unknown quantisation type '" + qtype + "' (use one of " +
                                    names + ")");
    }
    const ggml_type type = it->second;
    if (n_per_row % ggml_blck_size(type) != 0) {
        throw std::invalid_argument("row length " + std::to_string(n_per_row) +
                                    " is not a multiple of the block size " +
                                    std::to_string(ggml_blck_size(type)) + " of " + qtype);
    }
    std::string out(ggml_row_size(type, n_per_row) * n_rows, '\0');
    const size_t written =
        ggml_quantize_chunk(type, data, out.data(), 0, n_rows, n_per_row, nullptr);
    out.resize(written);
    return out;
}

}  // namespace whisperd
