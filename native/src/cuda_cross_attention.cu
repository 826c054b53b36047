// The decoder step's cross-attention (cuda_cross_attention.hpp says why). Two kernels
// compute the parts: for greedy steps (one row a slot, the large batches) a block reads
// every head of a run of positions, so each warp streams whole contiguous 2560-byte rows
// of K and V (one head's 128-byte pieces 2560 bytes apart ran at ~3 TB/s at 128 windows,
// slower than ggml's flash-attention kernel); for several rows a slot (beams, a prompt) a
// block takes one head and scores its positions against several rows at once. Either
// writes per row, head and part the part's maximum, sum and unnormalised output, which
// cross_combine merges. The int8 copy of the keys and values (WHISPERD_CROSS_KV_INT8) has
// its greedy kernel, and the kernel that makes it, in cuda_cross_attention_int8.cu; what
// both files share is in cuda_cross_attention_common.cuh. The greedy kernels read
// only the window's n_ctx positions: the padding's zero keys score exactly 0 and its zero
// values add nothing, so cross_combine adds them as a count (n_zero * exp(0 - max) to the
// sum), which is what reading them gave, up to rounding.
#include "cuda_cross_attention.hpp"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"
#include "cuda_cross_attention_common.cuh"

namespace whisperd {

namespace {

constexpr int kChunk = 128;  // by head: positions a block (a thread each)
constexpr int kGroup = 4;    // by head: rows of a slot taken together
constexpr int kCrossWarps = kChunk / 32;
constexpr int kMinSpan = 32;      // all heads: fewest positions a block
constexpr int kTargetBlocks = 1536;  // all heads: ~6 waves of 2 blocks on an H200's 132 SMs

// By head, one part: positions [blockIdx.x * 128, + 128) of slot blockIdx.z's
// window, head blockIdx.y, for each of the slot's R rows. A thread holds one position's
// key (64 values) in registers and scores it against up to 8 rows at once; each warp sums
// 32 positions' values per row (a lane: two of the 64). Both the keys and the values are
// loaded into registers before any arithmetic: this kernel is bound by memory, and with
// the values loaded only after the scores (a first version) half the time went to waiting.
// Per row the part's maximum, sum and unnormalised output go to `part` for cross_combine
// (flash decoding).
__global__ void __launch_bounds__(kChunk, 3)
    cross_by_head(const half *q, const float *bq, const half *ck, const half *cv, float *part, int R, int C,
                    int n_pad, int n_split, int n_head, float scale) {
    __shared__ float qs[kGroup][kHead];
    __shared__ float ps[kGroup][kChunk];
    __shared__ float ml[kGroup][2];
    __shared__ float2 ored[kCrossWarps][kGroup][32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int split = blockIdx.x, h = blockIdx.y;
    const size_t slot = blockIdx.z;
    const int pos0 = split * kChunk;
    const int key = pos0 + threadIdx.x;
    uint4 kr[kHead / 8];  // this thread's key
    half2 vr[32];         // this lane's pair of the warp's 32 positions' values
    {
        const uint4 *src = reinterpret_cast<const uint4 *>(ck + (slot * n_pad + key) * C + h * kHead);
#pragma unroll
        for (int j = 0; j < kHead / 8; ++j) {
            kr[j] = src[j];
        }
        const half2 *vb = reinterpret_cast<const half2 *>(cv + (slot * n_pad + pos0 + warp * 32) * C + h * kHead) + lane;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            vr[j] = vb[static_cast<size_t>(j) * (C / 2)];
        }
    }
    for (int g0 = 0; g0 < R; g0 += kGroup) {
        const int nr = min(kGroup, R - g0);
        for (int t = threadIdx.x; t < nr * kHead; t += blockDim.x) {
            const int r = t / kHead, d = t % kHead;
            const size_t row = slot * R + g0 + r;
            qs[r][d] = (__half2float(q[row * C + h * kHead + d]) + bq[h * kHead + d]) * scale;
        }
        __syncthreads();
        for (int r = 0; r < nr; ++r) {
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < kHead / 8; ++j) {
                const half2 *k2 = reinterpret_cast<const half2 *>(&kr[j]);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float2 kf = __half22float2(k2[e]);
                    s += qs[r][j * 8 + 2 * e] * kf.x + qs[r][j * 8 + 2 * e + 1] * kf.y;
                }
            }
            ps[r][threadIdx.x] = s;
        }
        __syncthreads();
        for (int r = warp; r < nr; r += kCrossWarps) {  // softmax statistics of row r over this part
            float mx = -INFINITY;
            for (int c = lane; c < kChunk; c += 32) {
                mx = fmaxf(mx, ps[r][c]);
            }
            mx = warp_max(mx);
            float sum = 0.0f;
            for (int c = lane; c < kChunk; c += 32) {
                const float p = __expf(ps[r][c] - mx);
                ps[r][c] = p;
                sum += p;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                ml[r][0] = mx;
                ml[r][1] = sum;
            }
        }
        __syncthreads();
        float2 o[kGroup];
#pragma unroll
        for (int r = 0; r < kGroup; ++r) {
            o[r] = make_float2(0.0f, 0.0f);
        }
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            const float2 vf = __half22float2(vr[j]);
#pragma unroll
            for (int r = 0; r < kGroup; ++r) {
                if (r < nr) {
                    const float p = ps[r][warp * 32 + j];
                    o[r].x += p * vf.x;
                    o[r].y += p * vf.y;
                }
            }
        }
#pragma unroll
        for (int r = 0; r < kGroup; ++r) {
            if (r < nr) {
                ored[warp][r][lane] = o[r];
            }
        }
        __syncthreads();
        for (int t = threadIdx.x; t < nr * 32; t += blockDim.x) {
            const int r = t / 32, l = t % 32;
            float2 s = make_float2(0.0f, 0.0f);
            for (int w = 0; w < kCrossWarps; ++w) {
                s.x += ored[w][r][l].x;
                s.y += ored[w][r][l].y;
            }
            const size_t row = slot * R + g0 + r;
            float *dst = part + ((row * n_head + h) * n_split + split) * (kHead + 2);
            dst[2 * l] = s.x;
            dst[2 * l + 1] = s.y;
            if (l == 0) {
                dst[kHead] = ml[r][0];
                dst[kHead + 1] = ml[r][1];
            }
        }
        __syncthreads();  // qs, ps, ml, ored are refilled by the next group
    }
}

// The parts of row blockIdx.y, head blockIdx.x merged (64 threads, one output value each),
// with n_zero zero keys and values no part read (each a score of 0: a part of maximum 0,
// sum n_zero and output 0).
__global__ void cross_combine(const float *part, half *out, int n_split, int n_head, int C, int n_zero) {
    const size_t row = blockIdx.y;
    const int h = blockIdx.x, d = threadIdx.x;
    const float *p = part + (row * n_head + h) * n_split * (kHead + 2);
    float mx = n_zero > 0 ? 0.0f : -INFINITY;
    for (int s = 0; s < n_split; ++s) {
        mx = fmaxf(mx, p[s * (kHead + 2) + kHead]);
    }
    float sum = n_zero > 0 ? static_cast<float>(n_zero) * __expf(-mx) : 0.0f, o = 0.0f;
    for (int s = 0; s < n_split; ++s) {
        const float *q = p + s * (kHead + 2);
        const float f = __expf(q[kHead] - mx);
        sum += q[kHead + 1] * f;
        o += q[d] * f;
    }
    out[row * C + h * kHead + d] = __float2half(o / sum);
}

// All heads, one part: positions [blockIdx.x * span, + span) of slot blockIdx.y's window,
// its one row. Lane l of a warp reads 16-byte pieces l, l + 32, ... of a position's key
// and value rows: piece c is head c / 8, values (c % 8) * 8 + [0, 8), so the 8 lanes of a
// head sum its score with three shuffles, and each lane keeps its pieces' running
// maximum, sum and output (online softmax) across the warp's positions < n_ctx. The warps'
// results are merged through shared memory at the end. NC: pieces a lane (C / 256, rounded
// up).
template <int NC>
__global__ void __launch_bounds__(kRowWarps * 32, 2)
    cross_attention_heads(const half *q, const float *bq, const half *ck, const half *cv, float *part, int C,
                          int n_pad, int n_ctx, int span, int n_split, int n_head, float scale) {
    extern __shared__ float sm[];
    float *qs = sm;                  // [C]: the query, bias and scale applied
    float *red = sm + C;             // [kRowWarps][n_head][kHead + 2]: each warp's o, m, l
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int split = blockIdx.x;
    const size_t slot = blockIdx.y;
    const int n_pieces = C / 8;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        qs[c] = (__half2float(q[slot * C + c]) + bq[c]) * scale;
    }
    __syncthreads();
    float o[NC][8], m[NC], l[NC];
#pragma unroll
    for (int k = 0; k < NC; ++k) {
        m[k] = -INFINITY;
        l[k] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            o[k][e] = 0.0f;
        }
    }
    const uint4 *kb = reinterpret_cast<const uint4 *>(ck + slot * n_pad * C);
    const uint4 *vb = reinterpret_cast<const uint4 *>(cv + slot * n_pad * C);
    const int p1 = min(n_ctx, (split + 1) * span);
    for (int p = split * span + warp; p < p1; p += kRowWarps) {
        uint4 kr[NC], vr[NC];
#pragma unroll
        for (int k = 0; k < NC; ++k) {  // every load first: this kernel waits on memory
            const int c = lane + 32 * k;
            if (c < n_pieces) {
                kr[k] = __ldcs(kb + static_cast<size_t>(p) * n_pieces + c);
                vr[k] = __ldcs(vb + static_cast<size_t>(p) * n_pieces + c);
            }
        }
#pragma unroll
        for (int k = 0; k < NC; ++k) {
            const int c = lane + 32 * k;
            const bool ok = c < n_pieces;  // uniform per 8 lanes: 32 * k and n_pieces are multiples of 8
            float s = 0.0f;
            if (ok) {
                const half2 *k2 = reinterpret_cast<const half2 *>(&kr[k]);
                const float4 qa = *reinterpret_cast<const float4 *>(qs + c * 8);
                const float4 qb = *reinterpret_cast<const float4 *>(qs + c * 8 + 4);
                const float2 k0 = __half22float2(k2[0]), k1 = __half22float2(k2[1]);
                const float2 k2f = __half22float2(k2[2]), k3 = __half22float2(k2[3]);
                s = qa.x * k0.x + qa.y * k0.y + qa.z * k1.x + qa.w * k1.y + qb.x * k2f.x + qb.y * k2f.y +
                    qb.z * k3.x + qb.w * k3.y;
            }
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            s += __shfl_xor_sync(0xffffffffu, s, 2);
            s += __shfl_xor_sync(0xffffffffu, s, 4);
            if (ok) {
                const float mn = fmaxf(m[k], s);
                const float a = __expf(m[k] - mn), pk = __expf(s - mn);  // a = 0 on the first position
                l[k] = l[k] * a + pk;
                m[k] = mn;
                const half2 *v2 = reinterpret_cast<const half2 *>(&vr[k]);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float2 vf = __half22float2(v2[e]);
                    o[k][2 * e] = o[k][2 * e] * a + pk * vf.x;
                    o[k][2 * e + 1] = o[k][2 * e + 1] * a + pk * vf.y;
                }
            }
        }
    }
    merge_warps<NC>(o, m, l, red, part, slot, split, n_split, n_head, n_pieces);
}
// Positions a block of cross_attention_heads takes for W slots' n_ctx positions: enough
// blocks to fill the GPU a few times over (each merged part costs 66 floats a head), never
// under kMinSpan.
int heads_span(int W, int n_ctx) {
    int span = kChunk;
    while (span > kMinSpan && static_cast<long long>(W) * ((n_ctx + span - 1) / span) < kTargetBlocks) {
        span /= 2;
    }
    return span;
}

// NC of cross_attention_heads for this width (0: it does not apply).
int heads_pieces(int C, int n_head) {
    if (C % 8 != 0 || C != n_head * kHead) {
        return 0;
    }
    const int nc = (C / 8 + 31) / 32;
    return nc >= 2 && nc <= 5 ? nc : 0;
}

// One all-heads launch's arguments.
struct Heads {
    const half *q;
    const float *bq;
    const half *ck, *cv;
    float *part;
    int W, C, n_pad, n_ctx, n_head;
    float scale;
    int span, n_split;
};

template <int NC>
void launch_heads(const Heads &a, cudaStream_t stream) {
    const size_t smem = heads_smem(a.C, a.n_head);
    const dim3 grid(a.n_split, a.W);
    allow_smem(cross_attention_heads<NC>, smem, 0);
    cross_attention_heads<NC><<<grid, kRowWarps * 32, smem, stream>>>(a.q, a.bq, a.ck, a.cv, a.part, a.C, a.n_pad,
                                                                      a.n_ctx, a.span, a.n_split, a.n_head, a.scale);
}

}  // namespace

size_t cross_part_floats(int rows, int n_head, int n_pad) {
    const int most = (n_pad + kMinSpan - 1) / kMinSpan;  // the smallest span's parts
    return static_cast<size_t>(rows) * n_head * most * (kHead + 2);
}

bool cross_int8_supported(int C, int n_head) { return heads_pieces(C, n_head) != 0 && n_head <= 32; }

void cross_attention(const half *q, const float *bq, const half *ck, const half *cv, const CrossInt8 *q8,
                     float *part, half *out, int W, int R, int C, int n_pad, int n_ctx, int n_head, float scale,
                     cudaStream_t stream) {
    const int nc = R == 1 ? heads_pieces(C, n_head) : 0;
    int n_split = n_pad / kChunk;
    int n_zero = 0;  // padding positions the kernel leaves to cross_combine
    if (nc != 0) {
        int span = heads_span(W, n_ctx);
        // A block of the int8 kernel reads half the bytes of the f16 one's for the same
        // span, and its query set-up (int16) and merge cost it as much: twice the span
        // where that still leaves 3 waves of blocks, as many bytes a block as f16's.
        if (q8 != nullptr && static_cast<long long>(W) * ((n_ctx + 2 * span - 1) / (2 * span)) >= kTargetBlocks / 2) {
            span *= 2;
        }
        n_split = (n_ctx + span - 1) / span;
        n_zero = n_pad - n_ctx;
        if (q8 != nullptr) {
            cross_heads_int8(nc, q, bq, *q8, part, W, C, n_ctx, n_head, scale, span, n_split, stream);
        } else {
            const Heads a{q, bq, ck, cv, part, W, C, n_pad, n_ctx, n_head, scale, span, n_split};
            switch (nc) {
                case 2: launch_heads<2>(a, stream); break;
                case 3: launch_heads<3>(a, stream); break;
                case 4: launch_heads<4>(a, stream); break;
                default: launch_heads<5>(a, stream); break;
            }
        }
    } else {  // by head, over every position (the padding's zeros read)
        cross_by_head<<<dim3(n_split, n_head, W), kChunk, 0, stream>>>(q, bq, ck, cv, part, R, C, n_pad, n_split,
                                                                      n_head, scale);
    }
    cross_combine<<<dim3(n_head, W * R), kHead, 0, stream>>>(part, out, n_split, n_head, C, n_zero);
    check(cudaGetLastError(), "cross-attention kernels");
}

}  // namespace whisperd
