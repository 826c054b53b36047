// Which slots the batched decoder's windows sit in: a step's width, windows moved down
// to lower slots, windows dropped. (batch_decoder.cpp: set-up and the step.)
#include <algorithm>
#include <cstdint>
#include <memory>

#include "batch_decoder.hpp"
#include "batch_internal.hpp"
#include "errors.hpp"
#include "ggml-backend.h"
#include "ggml.h"

namespace whisperd {

using namespace batch_detail;

void BatchDecoder::drop(int64_t id) {
    for (auto &s : slots_) {
        if (s != nullptr && s->id() == id) {
            s.reset();
        }
    }
}

// The slots a step covers when the highest in use is n - 1. The ggml graph is rebuilt for
// each new shape, so its widths are powers of two; a CUDA step records a CUDA graph per
// width once, so above 32 its widths are multiples of 32: 157 windows were stepped as
// 256 slots (each empty slot costs as much as a window: its cross-attention is computed).
int BatchDecoder::step_width(int n) const {
    const int p = pow2_at_least(std::max(1, n));
    if (p > 32) {
        const int w = ((n + 31) / 32) * 32;
        if (cuda_step_for(std::min(n_slots_, w))) {
            return std::min(n_slots_, w);
        }
    }
    return std::min(n_slots_, p);
}

// Windows are kept in the lowest slots: a step covers every slot up to the highest in use
// (step_width), so a few windows left in high slots after the others finished made each
// step as costly as a full one (the H200 service: steps of 128 slots held 78 windows on
// average). A window moves with its caches; its rows' cells count from its slot, so only
// the slot changes. For large-v3 that is ~0.5 GB of copies on the GPU (well under a
// millisecond) against every later step at least 32 slots narrower.
void BatchDecoder::compact() {
    int n = 0, last = -1;
    for (int s = 0; s < n_slots_; ++s) {
        if (slots_[s] != nullptr) {
            ++n;
            last = s;
        }
    }
    const int want = step_width(n);
    if (last < 0 || step_width(last + 1) <= want) {
        return;
    }
    ggml_init_params ip = {ggml_tensor_overhead() * 8, nullptr, true};
    ggml_context *ctx = ggml_init(ip);
    int hole = 0;
    try {
        for (int from = last; from >= want; --from) {
            if (slots_[from] == nullptr) {
                continue;
            }
            while (slots_[hole] != nullptr) {
                ++hole;  // below `want`: n windows, at most want - 1 of them below it
            }
            for (const Layer &L : layers_) {
                for (ggml_tensor *t : {L.ck, L.cv, L.sk, L.sv}) {
                    const size_t slot_bytes = t->nb[2];
                    const int64_t n_elems = static_cast<int64_t>(slot_bytes / ggml_element_size(t));
                    ggml_tensor *src = ggml_view_1d(ctx, t, n_elems, static_cast<size_t>(from) * slot_bytes);
                    ggml_tensor *dst = ggml_view_1d(ctx, t, n_elems, static_cast<size_t>(hole) * slot_bytes);
                    if (ggml_backend_view_init(src) != GGML_STATUS_SUCCESS ||
                        ggml_backend_view_init(dst) != GGML_STATUS_SUCCESS) {
                        throw WhisperError("could not move a window's caches to a lower slot");
                    }
                    ggml_backend_tensor_copy(src, dst);
                }
                ggml_reset(ctx);
            }
            cuda_slot_moved(from, hole);
            slots_[hole] = std::move(slots_[from]);
            stats_.moves++;
        }
    } catch (...) {
        ggml_free(ctx);
        throw;
    }
    ggml_free(ctx);
}

}  // namespace whisperd
