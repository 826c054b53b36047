// Greedy rows' summaries (greedy_summary.hpp) computed on the GPU from the decoder's
// logits where the graph left them, so that a step downloads 32 bytes a greedy row
// instead of the row (26 MB a step at 128 windows of large-v3, ~0.6 s of a 4 s benchmark
// on an H200 with the CPU's masks and softmax). One block per row; the same rules and
// tie-breaking as the CPU's greedy_summary(), which the GPU tests compare it with.
// Only CUDA builds compile this (WHISPERD_WITH_CUDA).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "greedy_summary.hpp"

namespace whisperd {

class CudaSampler {
public:
    // Uploads the model's fixed suppressed specials; throws WhisperError on a CUDA error.
    CudaSampler(int device, const GreedyVocab &vocab);
    ~CudaSampler();
    CudaSampler(const CudaSampler &) = delete;
    CudaSampler &operator=(const CudaSampler &) = delete;

    // logits: device memory, rows of n_vocab f32 (the decoder graph's output, already
    // computed). out[i] summarises row rows[i] under masks[i]; returns when it is written.
    void summarise(const float *logits, const std::vector<int32_t> &rows, const std::vector<GreedyMask> &masks,
                   std::vector<GreedySummary> &out);
    // The same for rows held on the host, uploaded first (tests).
    std::vector<GreedySummary> summarise_host(const std::vector<float> &logits, const std::vector<GreedyMask> &masks);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace whisperd
