// The batched decoder step as whisperd's own CUDA code over the f16 weights whisper.cpp
// loaded, beside the ggml graph that does the same on every backend. Why: on an H200 the
// ggml step ran ~1200 kernels (every bias, residual, scale and K/V copy its own), which
// made a step at 8 windows 5.9x its memory floor, and its cross-attention split each
// window's keys over only 4 blocks. Here a step is ~12 kernels a layer: cuBLAS products
// (f16 in, f32 accumulate; Q, K and V as one batched product, FC1 with its bias and GELU
// in cuBLASLt's epilogue) with the other biases folded into the next layer norm or into
// the kernels that read the products, f32 residual stream, self-attention over each
// row's visible cells that also writes the row's new K/V into its cell, and
// cross-attention split over the window's positions (flash decoding) with a combining
// pass. The step reads the same caches (self K/V cells, the encoder's cross K/V)
// and the same inputs as the ggml graph, and writes the logits where the graph's would be.
// Only CUDA builds compile this (WHISPERD_WITH_CUDA).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace whisperd {

struct CudaDecoderShape {
    int n_state;
    int n_head;
    int n_ff;         // MLP width
    int n_vocab;
    int n_text_ctx;   // rows of the positional embedding
    int n_cells;      // self-attention cells a slot
    int n_audio_pad;  // cross K/V rows a slot (zero-padded past the window's positions)
    int n_audio_ctx;  // the window's positions: rows n_audio_ctx.. are zeros, never read
    float kq_scale;   // head size ^ -1/4, applied to queries and keys alike
    int n_slots;      // slots of the caches
    // WHISPERD_CROSS_KV_INT8: keep an int8 copy of the cross K/V (quantize_cross) that
    // greedy steps read instead of the f16 caches: half the bytes of their largest part.
    bool cross_int8;
    // WHISPERD_CUDA_STEP_FUSION (default on): Q, K and V as one batched product, FC1's
    // bias and GELU in its product (cuBLASLt), each where it was timed faster than the
    // unfused way when tuned_products, else always; off: three products, and FC1's bias
    // and GELU as their own pass (an A/B in one build).
    bool fused_products = true;
    // WHISPERD_CUDA_STEP_TUNE (default on): each of the other products' shapes timed once
    // on the GPU over cuBLASLt's first candidates and cuBLAS's own choice, the fastest
    // kept; off: cuBLAS's choice.
    bool tuned_products = true;
};

// Device pointers: matrices f16 [out][in] as ggml stores them, vectors f32. Caches f16:
// sk/sv [slot][cell][n_state], ck/cv [slot][n_audio_pad][n_state] (keys pre-scaled). The
// int8 copy of ck/cv, when kept, is the decoder's own (cuda_cross_attention.hpp).
struct CudaDecoderLayer {
    const void *wq, *wk, *wv, *wo, *cwq, *cwo, *w1, *w2;
    const float *bq, *bv, *bo, *cbq, *cbo, *b1, *b2;
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b, *ln3_w, *ln3_b;  // attn, cross-attn, MLP
    void *sk, *sv;
    const void *ck, *cv;
};

struct CudaDecoderModel {
    const void *token_embedding;       // f16 [n_vocab][n_state], also the output projection
    const float *positional_embedding; // f32 [n_text_ctx][n_state]
    const float *ln_w, *ln_b;
    std::vector<CudaDecoderLayer> layers;
};

// One step's inputs, as the ggml graph takes them: W slots of R rows (row i = slot * R + r),
// rows that see cells through an f16 0 / -inf mask [row][n_kv], r_out logits rows a slot.
struct CudaStepInputs {
    int W, R, n_kv, r_out;
    const int32_t *tokens, *positions;  // [W * R]
    const int64_t *kv_rows;             // [W * R]: slot * n_cells + cell the row writes
    const uint16_t *mask;               // [W * R][n_kv] f16 bits
    const int32_t *out_rows;            // [W * r_out]: which rows give logits
};

class CudaDecoder {
public:
    // Whether every tensor this decoder reads is f16 (matrices) / f32 (vectors) on `device`.
    CudaDecoder(int device, const CudaDecoderShape &shape, CudaDecoderModel model);
    ~CudaDecoder();
    CudaDecoder(const CudaDecoder &) = delete;
    CudaDecoder &operator=(const CudaDecoder &) = delete;

    // Computes the step into `logits` (device memory, f32 [W * r_out][n_vocab]); returns
    // once they are written.
    void step(const CudaStepInputs &in, float *logits);
    size_t memory_bytes() const;

    // Whether the int8 copy of the cross K/V is kept (asked for, and the model's width
    // allows it): then every slot's f16 ck/cv must be followed by quantize_cross.
    bool cross_int8() const;
    // The int8 copy of these slots' cross K/V, every layer, from the f16 caches, which must
    // be written (and the writes finished) before; returns once it is written.
    void quantize_cross(const std::vector<int> &slots);
    // A window moved from slot `from` to `to` (its f16 caches copied): its int8 copy
    // follows; returns once copied.
    void move_cross(int from, int to);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace whisperd
