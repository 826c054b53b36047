// Private to cross-attention's two files, cuda_cross_attention.cu (the f16 kernels, the
// merge, the public entry points) and cuda_cross_attention_int8.cu (the int8 copy's greedy
// kernel and the kernel that makes the copy): what both use. Like cuda_common.cuh, in an
// anonymous namespace, so each .cu file gets its own copy; only cross_heads_int8 links
// across them.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "cuda_common.cuh"
#include "cuda_cross_attention.hpp"

namespace whisperd {

namespace {

constexpr int kHead = 64;     // head size of every Whisper model
constexpr int kRowWarps = 8;  // all heads: warps a block, a position each at a time

// The end of both all-heads kernels: each warp's running maximum, sum and output of its
// pieces into shared memory (`red`, [kRowWarps][n_head][kHead + 2]), then every (head,
// value) merged over the warps into the block's part.
template <int NC>
__device__ __forceinline__ void merge_warps(const float (&o)[NC][8], const float (&m)[NC], const float (&l)[NC],
                                            float *red, float *part, size_t slot, int split, int n_split, int n_head,
                                            int n_pieces) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    constexpr int kStride = kHead + 2;
#pragma unroll
    for (int k = 0; k < NC; ++k) {
        const int c = lane + 32 * k;
        if (c < n_pieces) {
            float *r = red + (static_cast<size_t>(warp) * n_head + c / 8) * kStride;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                r[(c % 8) * 8 + e] = o[k][e];
            }
            if (c % 8 == 0) {
                r[kHead] = m[k];
                r[kHead + 1] = l[k];
            }
        }
    }
    __syncthreads();
    for (int t = threadIdx.x; t < n_head * kHead; t += blockDim.x) {
        const int h = t / kHead, d = t % kHead;
        float mx = -INFINITY;
        for (int w = 0; w < kRowWarps; ++w) {
            mx = fmaxf(mx, red[(w * n_head + h) * kStride + kHead]);
        }
        float acc = 0.0f, sum = 0.0f;
        for (int w = 0; w < kRowWarps; ++w) {
            const float *r = red + (w * n_head + h) * kStride;
            const float f = r[kHead] == -INFINITY ? 0.0f : __expf(r[kHead] - mx);  // a warp without positions
            acc += r[d] * f;
            sum += r[kHead + 1] * f;
        }
        float *dst = part + ((slot * n_head + h) * n_split + split) * kStride;
        dst[d] = acc;
        if (d == 0) {
            dst[kHead] = mx;
            dst[kHead + 1] = sum;
        }
    }
}

// Dynamic shared memory of the all-heads kernels: the query and the warps' results.
size_t heads_smem(int C, int n_head) {
    return (static_cast<size_t>(C) + static_cast<size_t>(kRowWarps) * n_head * (kHead + 2)) * sizeof(float);
}

// Past 48 KB a block (with the kernel's static shared memory) the kernel must ask for it.
template <typename Kernel>
void allow_smem(Kernel kernel, size_t smem, size_t static_smem) {
    if (smem + static_smem > 48 * 1024) {
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
              "cross-attention shared memory");
    }
}

}  // namespace

// The int8 all-heads kernel (cuda_cross_attention_int8.cu) over W slots' n_ctx positions,
// parts of `span` positions, n_split a slot; nc: pieces a lane (heads_pieces).
void cross_heads_int8(int nc, const half *q, const float *bq, const CrossInt8 &q8, float *part, int W, int C,
                      int n_ctx, int n_head, float scale, int span, int n_split, cudaStream_t stream);

}  // namespace whisperd
