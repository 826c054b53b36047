// The encoder's self-attention as one fused kernel (flash attention: tensor-core products,
// softmax online in registers). Why: through cuBLAS every window's scores were written out
// and read back (90 MB a window a layer for large-v3) and the softmax alone took a fifth of
// the encoder's GPU time on an H200. Head size 64 (every Whisper model), GPUs of compute
// capability 8.0 and later (mma.sync m16n8k16, cp.async); elsewhere the encoder keeps the
// cuBLAS path. Only CUDA builds compile this (WHISPERD_WITH_CUDA).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace whisperd {

// Whether fused_attention() can run for this device and shape.
bool fused_attention_supported(int device, int head_dim, int n_ctx, int n_state);

// O = softmax(scale * Q K^T) V for every head of `windows` windows of n_ctx positions.
// Q, K, V, O: f16 [windows * n_ctx][n_state] row-major, head h in columns [64h, 64h + 64);
// window w's rows start at w * n_ctx. Attends over exactly n_ctx keys (no padding).
void fused_attention(const half *Q, const half *K, const half *V, half *O, int windows, int n_ctx,
                     int n_state, int n_head, float scale, cudaStream_t stream);

}  // namespace whisperd
