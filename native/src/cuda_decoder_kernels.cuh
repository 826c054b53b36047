// The decoder step's own kernels (cuda_decoder.cu launches them): the embedding with the
// first norm, the final norm of the rows that give logits, and self-attention, which also
// writes each row's new K/V into its cell. Included by cuda_decoder.cu only; in an
// anonymous namespace, as cuda_common.cuh's pieces are.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "cuda_common.cuh"

namespace whisperd {
namespace {

constexpr int kHead = 64;         // head size of every Whisper model
constexpr int kSelfWarps = 4;     // self-attention: a block per (head, row)
constexpr int kSelfUnroll = 8;    // cells a warp of it has in flight at once

// x[i] = token_embedding[tokens[i]] + positional_embedding[positions[i]], then the first
// layer's norm of it into y (one launch: each thread reads back only what it wrote).
__global__ void embed_norm(const int32_t *tokens, const int32_t *positions, const half *te, const float *pe,
                           float *x, const float *g, const float *b, half *y, int C) {
    const size_t i = blockIdx.x;
    const half *t = te + static_cast<size_t>(tokens[i]) * C;
    const float *p = pe + static_cast<size_t>(positions[i]) * C;
    float *row = x + i * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        row[c] = __half2float(t[c]) + p[c];
    }
    norm_row(row, nullptr, nullptr, g, b, y + i * C, C);
}

// The final norm of the rows that give logits only: out[j] = norm(x[rows[j]] + bias) (the
// residual stream is not written back: nothing reads it after).
__global__ void norm_gather(const float *x, const int32_t *rows, const float *bias, const float *g, const float *b,
                            half *out, int C) {
    const size_t j = blockIdx.x;
    norm_row(x + static_cast<size_t>(rows[j]) * C, nullptr, bias, g, b, out + j * C, C);
}

// The new cell's key and value as the cache holds them (f16): k * scale, v + bv.
__device__ __forceinline__ half2 new_key(half2 k, float scale) {
    const float2 f = __half22float2(k);
    return __floats2half2_rn(f.x * scale, f.y * scale);
}

__device__ __forceinline__ half2 new_value(half2 v, float2 bv) {
    const float2 f = __half22float2(v);
    return __floats2half2_rn(f.x + bv.x, f.y + bv.y);
}

constexpr int kHidden = -2, kCache = -1;  // where a self-attention cell comes from (else a row)

// Self-attention of row blockIdx.y, head blockIdx.x, straight from the Q/K/V product
// (qkv [row][3 C2 pairs]: q | k | v, unbiased): the query q' = (q + bq) * scale (rounded
// to f16, as the cache's keys are); the row's key and value written into its cell of the
// cache (this head's part) for later steps; then attention over the cells the mask row
// shows (f16 0 = visible, -inf = not). Cells that this step's rows of the slot write are
// read from their product rows (rounded as the cache will hold them), not from the cache,
// which other blocks write meanwhile. A warp takes kSelfUnroll cells at once (a lane: two
// of the head's 64 values): their raw loads first, all in flight together, then their
// sums; each warp's cells, sums and their order are those of one cell at a time (as
// before this kernel took the writes too: bit for bit). Dynamic shared memory: the n_kv
// scores, then per cell where it comes from (kHidden, kCache, or the row that writes it).
__global__ void __launch_bounds__(kSelfWarps * 32)
    self_attention(const half2 *qkv, const float *bq, const float *bv, const int64_t *kv_rows, half2 *sk,
                   half2 *sv, const uint16_t *mask, half2 *out, int R, int n_kv, int n_cells, int C2,
                   float scale) {
    extern __shared__ float sc[];
    int *from = reinterpret_cast<int *>(sc + n_kv);
    __shared__ float red[kSelfWarps];
    __shared__ float2 acc[kSelfWarps][32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t i = blockIdx.y;
    const size_t slot = i / R;
    const int col = blockIdx.x * (kHead / 2) + lane;  // this lane's pair in a row of C2 pairs
    const size_t Q2 = 3 * static_cast<size_t>(C2);    // pairs of a product row
    const int64_t first = static_cast<int64_t>(slot) * n_cells;
    const uint16_t *m = mask + i * n_kv;
    for (int c = threadIdx.x; c < n_kv; c += blockDim.x) {
        from[c] = (m[c] & 0x7fff) == 0 ? kCache : kHidden;
    }
    __syncthreads();
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
        const int j = static_cast<int>(slot) * R + r;
        const int64_t cell = kv_rows[j] - first;
        if (cell >= 0 && cell < n_kv && from[cell] != kHidden) {
            from[cell] = j;  // padding rows share a cell: equal values, any of them
        }
    }
    const float2 bvf = make_float2(bv[2 * col], bv[2 * col + 1]);
    const half2 *own = qkv + i * Q2;
    if (warp == 0) {
        const size_t at = static_cast<size_t>(kv_rows[i]) * C2 + col;
        sk[at] = new_key(own[C2 + col], scale);
        sv[at] = new_value(own[2 * C2 + col], bvf);
    }
    float2 qf = __half22float2(own[col]);
    qf = __half22float2(__floats2half2_rn((qf.x + bq[2 * col]) * scale, (qf.y + bq[2 * col + 1]) * scale));
    __syncthreads();
    const half2 *kb = sk + first * C2 + col;
    const half2 *vb = sv + first * C2 + col;
    const half2 zero = __float2half2_rn(0.0f);
    for (int c0 = warp; c0 < n_kv; c0 += kSelfWarps * kSelfUnroll) {
        int f[kSelfUnroll];
        half2 raw[kSelfUnroll];
#pragma unroll
        for (int u = 0; u < kSelfUnroll; ++u) {
            const int c = c0 + u * kSelfWarps;
            f[u] = c < n_kv ? from[c] : kHidden;
        }
#pragma unroll
        for (int u = 0; u < kSelfUnroll; ++u) {  // hidden cells load the slot's first key: no branch
            const int c = c0 + u * kSelfWarps;
            const half2 *src = f[u] >= 0       ? qkv + static_cast<size_t>(f[u]) * Q2 + C2 + col
                               : f[u] == kCache ? kb + static_cast<size_t>(c) * C2
                                                : kb;
            const half2 loaded = *src;
            raw[u] = f[u] != kHidden ? loaded : zero;
        }
#pragma unroll
        for (int u = 0; u < kSelfUnroll; ++u) {
            const int c = c0 + u * kSelfWarps;
            if (c < n_kv) {  // f[u] is the same for every lane: whole warps sum or skip
                float s = -INFINITY;
                if (f[u] != kHidden) {
                    const float2 kf = __half22float2(f[u] >= 0 ? new_key(raw[u], scale) : raw[u]);
                    s = warp_sum(qf.x * kf.x + qf.y * kf.y);
                }
                if (lane == 0) {
                    sc[c] = s;
                }
            }
        }
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int c = threadIdx.x; c < n_kv; c += blockDim.x) {
        mx = fmaxf(mx, sc[c]);
    }
    mx = warp_max(mx);
    if (lane == 0) {
        red[warp] = mx;
    }
    __syncthreads();
    mx = red[0];
    for (int w = 1; w < kSelfWarps; ++w) {
        mx = fmaxf(mx, red[w]);
    }
    float2 o = make_float2(0.0f, 0.0f);
    float sum = 0.0f;  // every lane of a warp adds the same p: the warp's share of the sum
    for (int c0 = warp; c0 < n_kv; c0 += kSelfWarps * kSelfUnroll) {
        int f[kSelfUnroll];
        float score[kSelfUnroll];
        half2 raw[kSelfUnroll];
#pragma unroll
        for (int u = 0; u < kSelfUnroll; ++u) {
            const int c = c0 + u * kSelfWarps;
            f[u] = c < n_kv ? from[c] : kHidden;
            score[u] = c < n_kv ? sc[c] : -INFINITY;
        }
#pragma unroll
        for (int u = 0; u < kSelfUnroll; ++u) {
            const int c = c0 + u * kSelfWarps;
            const bool used = score[u] != -INFINITY;
            const half2 *src = !used     ? vb
                               : f[u] >= 0 ? qkv + static_cast<size_t>(f[u]) * Q2 + 2 * C2 + col
                                           : vb + static_cast<size_t>(c) * C2;
            const half2 loaded = *src;
            raw[u] = used ? loaded : zero;
        }
#pragma unroll
        for (int u = 0; u < kSelfUnroll; ++u) {  // in cell order, as one at a time would
            if (score[u] != -INFINITY) {
                const float p = __expf(score[u] - mx);
                const float2 vf = __half22float2(f[u] >= 0 ? new_value(raw[u], bvf) : raw[u]);
                o.x += p * vf.x;
                o.y += p * vf.y;
                sum += p;
            }
        }
    }
    acc[warp][lane] = o;
    __syncthreads();  // every warp has read red[] above
    if (lane == 0) {
        red[warp] = sum;
    }
    __syncthreads();
    if (warp == 0) {
        float total = 0.0f;
        float2 t = make_float2(0.0f, 0.0f);
        for (int w = 0; w < kSelfWarps; ++w) {
            total += red[w];
            t.x += acc[w][lane].x;
            t.y += acc[w][lane].y;
        }
        out[i * C2 + col] = __floats2half2_rn(t.x / total, t.y / total);
    }
}

__global__ void to_half(const float *x, half *y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = __float2half(x[i]);
    }
}

}  // namespace
}  // namespace whisperd
