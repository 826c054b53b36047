// Small CUDA pieces whisperd's encoder and decoder share: error checks, block reductions,
// layer norm with a pending bias, bias (+ GELU) over f16 rows, products through cuBLAS.
// In an anonymous namespace: each .cu file that includes it gets its own copy.
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "errors.hpp"

namespace whisperd {
namespace {

constexpr int kThreads = 256;  // per row kernel
constexpr int kMaxPer = 8;     // values per thread: rows up to 2048 wide
constexpr float kEps = 1e-5f;  // Whisper's layer norm

void check(cudaError_t e, const char *what) {
    if (e == cudaSuccess) {
        return;
    }
    cudaGetLastError();  // clear the sticky state of recoverable errors
    if (e == cudaErrorMemoryAllocation) {
        throw OutOfMemoryError(std::string("out of GPU memory for whisperd's CUDA code (") + what + ")");
    }
    throw WhisperError(std::string("whisperd CUDA code: ") + what + ": " + cudaGetErrorString(e));
}

void check(cublasStatus_t s, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) {
        return;
    }
    if (s == CUBLAS_STATUS_ALLOC_FAILED) {
        throw OutOfMemoryError(std::string("out of GPU memory for cuBLAS (") + what + ")");
    }
    throw WhisperError(std::string("whisperd CUDA code: cuBLAS ") + what + " failed (status " +
                       std::to_string(static_cast<int>(s)) + ")");
}

__device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

__device__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    return v;
}

// Sum (or max) over the block; every thread gets it. `red` holds one value per warp.
__device__ float block_sum(float v, float *red) {
    v = warp_sum(v);
    __syncthreads();  // an earlier call's readers are done with red
    if ((threadIdx.x & 31) == 0) {
        red[threadIdx.x >> 5] = v;
    }
    __syncthreads();
    float t = 0.0f;
    for (int i = 0; i < (kThreads >> 5); ++i) {
        t += red[i];
    }
    return t;
}

__device__ float block_max(float v, float *red) {
    v = warp_max(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {
        red[threadIdx.x >> 5] = v;
    }
    __syncthreads();
    float t = -INFINITY;
    for (int i = 0; i < (kThreads >> 5); ++i) {
        t = fmaxf(t, red[i]);
    }
    return t;
}

// One row of a block: t = src + bias (bias optional), written to dst when given (the
// residual stream), then out = layer_norm(t) * g + b in f16 for the next products.
__device__ void norm_row(const float *src, float *dst, const float *bias, const float *g, const float *b, half *out,
                         int C) {
    __shared__ float red[kThreads / 32];
    float v[kMaxPer];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxPer; ++j) {
        const int c = threadIdx.x + j * kThreads;
        v[j] = 0.0f;
        if (c < C) {
            float t = src[c];
            if (bias != nullptr) {
                t += bias[c];
            }
            if (dst != nullptr) {
                dst[c] = t;
            }
            v[j] = t;
            s += t;
        }
    }
    const float mean = block_sum(s, red) / C;
    float q = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxPer; ++j) {
        const int c = threadIdx.x + j * kThreads;
        if (c < C) {
            const float d = v[j] - mean;
            q += d * d;
        }
    }
    const float inv = rsqrtf(block_sum(q, red) / C + kEps);
#pragma unroll
    for (int j = 0; j < kMaxPer; ++j) {
        const int c = threadIdx.x + j * kThreads;
        if (c < C) {
            out[c] = __float2half((v[j] - mean) * inv * g[c] + b[c]);
        }
    }
}

// One row per block: x += bias (when given, written back: the residual stream), then
// y = layer_norm(x) * g + b in f16 for the next products.
__global__ void add_norm(float *x, const float *bias, const float *g, const float *b, half *y, int C) {
    float *row = x + static_cast<size_t>(blockIdx.x) * C;
    norm_row(row, bias != nullptr ? row : nullptr, bias, g, b, y + static_cast<size_t>(blockIdx.x) * C, C);
}

__device__ float gelu(float x) {  // ggml's (tanh) form, as whisper.cpp's encoder uses
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * x * (1.0f + 0.044715f * x * x)));
}

// y[r][c] += b[c] (optionally then GELU), over n2 pairs of f16 in rows of C2 pairs.
template <bool kGelu>
__global__ void add_bias(half2 *y, const float *b, size_t n2, int C2) {
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n2; i += stride) {
        const int c = static_cast<int>(i % C2) * 2;
        float2 f = __half22float2(y[i]);
        f.x += b[c];
        f.y += b[c + 1];
        if (kGelu) {
            f.x = gelu(f.x);
            f.y = gelu(f.y);
        }
        y[i] = __float22half2_rn(f);
    }
}

int grid_for(size_t n) {
    const size_t blocks = (n + kThreads - 1) / kThreads;
    return static_cast<int>(blocks < 65536 ? blocks : 65536);
}

// Y[rows][out] = alpha * X[rows][in] W^T + beta * Y, W f16 [out][in] (row-major as ggml
// stores it; cuBLAS is column-major, so this is Y^T = W^T X^T over the same memory). Y's
// rows are ldy apart (0: out, packed).
void linear(cublasHandle_t blas, const void *W, const half *X, int rows, int in, int out, void *Y,
            cudaDataType yt, float alpha = 1.0f, float beta = 0.0f, int ldy = 0) {
    check(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, W, CUDA_R_16F, in, X, CUDA_R_16F,
                       in, &beta, Y, yt, ldy > 0 ? ldy : out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "linear");
}

}  // namespace
}  // namespace whisperd
