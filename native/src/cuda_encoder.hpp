// Whisper's audio encoder as our own CUDA code over the f16 weights whisper.cpp loaded
// onto the GPU (their ggml tensors' data are device pointers). Why not ggml: its graph
// keeps every activation in f32, converts each one to f16 before every matrix product and
// runs every bias, residual, norm and GELU as its own kernel; on an H200 that made the
// encoder 24 ms a window, three times the matrix products it needs. Here activations
// between the products are f16, the residual stream f32, the products cuBLAS (f16 in, f32
// accumulate), self-attention one fused kernel where the GPU allows (cuda_attention.hpp),
// biases are folded into the next norm or added inside the products (cuBLASLt epilogues,
// the MLP's GELU too: cuda_lt.hpp), and the cross-attention K/V of every decoder layer are
// written straight into the decoder's slots.
// The convolutional front end (with the mel spectrogram) stays a ggml graph: it is ~1 % of
// the work. Only CUDA builds compile this (WHISPERD_WITH_CUDA).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace whisperd {

struct CudaEncoderShape {
    int n_state;       // audio state (1280 for large-v3)
    int n_head;
    int n_ctx;         // audio positions of a window (1500)
    int n_ff;          // MLP width (4 * n_state)
    int n_text_state;  // decoder state: width of the cross K/V
    int n_audio_pad;   // rows of a slot's cross K/V (n_ctx padded)
    int max_windows;   // windows per encode() call
    float kscale;      // the decoder's key scale, folded into the cross keys
};

// Device pointers: matrices f16 [out][in] as ggml stores them, vectors f32.
struct CudaEncoderLayer {
    const void *wq, *wk, *wv, *wo, *w1, *w2;
    const float *bq, *bv, *bo, *b1, *b2;
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
};

// A decoder layer's cross-attention projections and where its slots' K/V live
// (f16 [slot][n_audio_pad][n_text_state]).
struct CudaCrossLayer {
    const void *wk, *wv;
    const float *bv;
    void *ck, *cv;
};

class CudaEncoder {
public:
    // Whether `device`'s tensor cores accumulate f16 products in f32 at full rate (A100,
    // H100/H200, B200): where whisperd turns this encoder on by default.
    static bool full_rate_f32_accumulate(int device);

    // Allocates the working memory for max_windows windows; throws OutOfMemoryError.
    CudaEncoder(int device, const CudaEncoderShape &shape, std::vector<CudaEncoderLayer> layers,
                const float *ln_post_w, const float *ln_post_b, std::vector<CudaCrossLayer> cross);
    ~CudaEncoder();
    CudaEncoder(const CudaEncoder &) = delete;
    CudaEncoder &operator=(const CudaEncoder &) = delete;

    // x: the front end's output, f32 [n * n_ctx][n_state] on the device (read only);
    // writes window i's cross K/V into slot slots[i]; returns when they are written.
    void encode(const float *x, int n, const std::vector<int> &slots);
    size_t memory_bytes() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace whisperd
