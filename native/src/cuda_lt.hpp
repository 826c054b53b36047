// f16 products through cuBLASLt, for what plain cuBLAS cannot do in the same kernel: add a
// bias, or a bias then GELU, to the f32 accumulators before they are rounded to f16 (each
// of those was its own pass over the product's output, 13 % of the encoder's GPU time on
// an H200), and strided batches that write into memory laid out by someone else (the
// decoder's cross K/V slots); and, for the decoder step's products of a few rows, a
// choice of algorithm timed on the GPU rather than the heuristic's first. Descriptors,
// layouts and the chosen algorithm are made once per shape and kept. Only CUDA builds
// compile this (WHISPERD_WITH_CUDA).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <memory>

namespace whisperd {

enum class LtEpilogue { kNone, kBias, kGeluBias };

// Y[rows][out] = epilogue(alpha * X[rows][in] W^T + beta * Y + bias), W f16 [out][in]
// (ggml's layout), X and bias f16, Y f16 (or f32: y_type), f32 accumulation, bias per
// output column (Whisper's biases; f16 outputs only). With batch > 1: `batch` such
// products, the b-th reading X + b * x_stride and writing Y + b * y_stride (elements),
// all with the same W and bias.
struct LtProduct {
    const void *w;
    const half *x;
    int rows, in, out;
    void *y;
    LtEpilogue epilogue = LtEpilogue::kNone;
    const half *bias = nullptr;  // out values; needed unless epilogue is kNone
    float alpha = 1.0f;
    int batch = 1;
    long long x_stride = 0, y_stride = 0;
    cudaDataType y_type = CUDA_R_16F;
    float beta = 0.0f;
    long long ldy = 0;  // elements between Y's rows (0: out, packed); batch 1 only
};

class LtMatmul {
public:
    // A cuBLASLt handle on the current device, products enqueued on `stream`, and a
    // workspace of that many bytes for them (throws OutOfMemoryError); or, given
    // `shared`, that workspace of the caller's (e.g. its cuBLAS handle's: products on one
    // stream never overlap), which stays the caller's to free.
    LtMatmul(cudaStream_t stream, size_t workspace_bytes, void *shared = nullptr);
    ~LtMatmul();
    LtMatmul(const LtMatmul &) = delete;
    LtMatmul &operator=(const LtMatmul &) = delete;

    // Enqueues the product; false (nothing enqueued) when cuBLASLt has no algorithm for
    // it on this GPU, or when `other` (the caller's other way of computing it, given where
    // to write Y) was timed faster, where the caller computes it that other way.
    bool run(const LtProduct &p, const std::function<void(void *y)> &other = {});
    size_t memory_bytes() const;  // its own workspace's (0 when shared)

    // With tuning on, a shape's first product enqueued while its stream is not being
    // recorded into a CUDA graph takes the fastest of cuBLASLt's first few candidates and
    // run()'s `other`, timed there on the product's own operands (into scratch memory: Y
    // is untouched);
    // while recording, the heuristic's first, until such a product comes. The choice is
    // kept for the process (by device and shape): later LtMatmuls take it untimed.
    // cuBLAS's heuristic alone leaves products of <= 128 rows at a fraction of the GPU's
    // blocks.
    void set_tuning(bool on);
    // Whether a product was enqueued (while recording) with the heuristic's choice since
    // the last call, tuning on: run it again unrecorded to time its candidates.
    bool take_untimed();
    void note_untimed();  // a choice of the caller's own was recorded untimed

    bool tuning() const;
    bool recording() const;  // whether its stream is being recorded into a CUDA graph
    // ms of 5 runs of `run` (enqueued on the stream) after a warm-up one, the GPU's time,
    // or -1 when it threw; not while recording (it waits for the stream).
    float time_ms(const std::function<void()> &run);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace whisperd
