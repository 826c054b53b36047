// The decoder step's cross-attention (cuda_cross_attention.hpp says why). Two kernels
// compute the parts: for greedy steps (one row a slot, the large batches) a block reads
// every head of a run of positions, so each warp streams whole contiguous 2560-byte rows
// of K and V (one head's 128-byte pieces 2560 bytes apart ran at ~3 TB/s at 128 windows,
// slower than ggml's flash-attention kernel); for several rows a slot (beams, a prompt) a
// block takes one head and scores its positions against several rows at once. Either
// writes per row, head and part the part's maximum, sum and unnormalised output, which
// cross_combine merges. A third kernel reads the int8 copy of the keys and values for
// greedy steps (WHISPERD_CROSS_KV_INT8), a fourth makes that copy. The greedy kernels read
// only the window's n_ctx positions: the padding's zero keys score exactly 0 and its zero
// values add nothing, so cross_combine adds them as a count (n_zero * exp(0 - max) to the
// sum), which is what reading them gave, up to rounding.
#include "cuda_cross_attention.hpp"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"

namespace whisperd {

namespace {

constexpr int kHead = 64;    // head size of every Whisper model
constexpr int kChunk = 128;  // by head: positions a block (a thread each)
constexpr int kGroup = 4;    // by head: rows of a slot taken together
constexpr int kCrossWarps = kChunk / 32;
constexpr int kRowWarps = 8;      // all heads: warps a block, a position each at a time
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

// Eight int8 (bytes of `w`, lowest first) as floats, exactly, without the conversion
// instruction (a small fraction of the FMA rate: at the memory's speed it would be the
// bottleneck): x + 128 as a byte placed in the mantissa of 2^23, then 2^23 + 128 taken off.
__device__ __forceinline__ void int8x8_to_float(uint2 w, float (&x)[8]) {
    const unsigned lo = w.x ^ 0x80808080u, hi = w.y ^ 0x80808080u;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        x[e] = __uint_as_float(__byte_perm(lo, 0x4b000000u, 0x7540u | e)) - 8388736.0f;
        x[4 + e] = __uint_as_float(__byte_perm(hi, 0x4b000000u, 0x7540u | e)) - 8388736.0f;
    }
}

__device__ __forceinline__ float exp2_fast(float x) {  // 2^x; 2^-inf = 0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// cross_attention_heads over the int8 copy (CrossInt8): the same parts, pieces and merge,
// with 8-byte pieces (8 values: piece c is still head c / 8, values (c % 8) * 8 + [0, 8))
// and two positions a warp at a time, so that a warp has as many bytes in flight as the
// f16 kernel's and a lane the same registers. Lane h < n_head loads the (K, V) scales of
// head h of each position, and a shuffle hands every lane its head's. Converting int8 to
// floats costs about three instructions a value: with keys and values both converted (a
// first version, 575 instructions a warp a position in its SASS) the SMs would have to
// issue ~3.3 of their 4 instructions a clock to keep up with the memory. So the scores
// are integer dot products instead (~430 a position): the query, per head, as int16
// (2^-15 of its largest value: finer than its f16), four dp2a a piece, exact int32 sums
// (64 x 32767 x 127 < 2^31), then one conversion times the two scales. Scores are kept
// in base 2 (log2(e) in the query) so that each exponential is one instruction; the
// maxima go back to base e for the merge. The values are converted and summed as floats.
template <int NC>
__global__ void __launch_bounds__(kRowWarps * 32, 2)
    cross_attention_heads_int8(const half *q, const float *bq, const int8_t *k8, const int8_t *v8,
                               const half2 *scales, float *part, int C, int n_ctx, int span, int n_split,
                               int n_head, float scale) {
    extern __shared__ float sm[];
    float *qs = sm;       // [C]: the query, bias, scale and log2(e) applied; then [C / 2] int16 pairs
    float *red = sm + C;  // [kRowWarps][n_head][kHead + 2]: each warp's o, m, l
    __shared__ float qsc[32];  // per head: the int16 query's scale
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int split = blockIdx.x;
    const size_t slot = blockIdx.y;
    const int n_pieces = C / 8;
    constexpr float kLog2e = 1.4426950408889634f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        qs[c] = (__half2float(q[slot * C + c]) + bq[c]) * (scale * kLog2e);
    }
    __syncthreads();
    for (int h = warp; h < n_head; h += kRowWarps) {
        const float a = warp_max(fmaxf(fabsf(qs[h * kHead + lane]), fabsf(qs[h * kHead + 32 + lane])));
        if (lane == 0) {
            qsc[h] = a / 32767.0f;
        }
    }
    __syncthreads();
    {
        constexpr int kPairs = (kMaxPer * kThreads / 2 + kRowWarps * 32 - 1) / (kRowWarps * 32);  // C <= 2048
        int w[kPairs];
#pragma unroll
        for (int j = 0; j < kPairs; ++j) {
            const int i = threadIdx.x + j * kRowWarps * 32;  // the pair (2i, 2i + 1), of head 2i / 64
            w[j] = 0;
            if (2 * i < C) {
                const float sc = qsc[2 * i / kHead];
                const float inv = sc > 0.0f ? 1.0f / sc : 0.0f;
                const int lo = max(-32767, min(32767, __float2int_rn(qs[2 * i] * inv)));
                const int hi = max(-32767, min(32767, __float2int_rn(qs[2 * i + 1] * inv)));
                w[j] = static_cast<int>((static_cast<unsigned>(lo) & 0xffffu) | (static_cast<unsigned>(hi) << 16));
            }
        }
        __syncthreads();  // every float read before the pairs overwrite them
#pragma unroll
        for (int j = 0; j < kPairs; ++j) {
            const int i = threadIdx.x + j * kRowWarps * 32;
            if (2 * i < C) {
                reinterpret_cast<int *>(qs)[i] = w[j];
            }
        }
    }
    __syncthreads();
    const int4 *qw = reinterpret_cast<const int4 *>(qs);  // piece c: its 8 int16 values
    float o[NC][8], m[NC], l[NC], qk[NC];
#pragma unroll
    for (int k = 0; k < NC; ++k) {
        m[k] = -INFINITY;
        l[k] = 0.0f;
        qk[k] = qsc[min((lane + 32 * k) / 8, 31)];  // meaningless (unused) past the last head
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            o[k][e] = 0.0f;
        }
    }
    const size_t first = slot * n_ctx;  // the slot's first row
    const uint2 *kb = reinterpret_cast<const uint2 *>(k8 + first * C);
    const uint2 *vb = reinterpret_cast<const uint2 *>(v8 + first * C);
    const unsigned *sb = reinterpret_cast<const unsigned *>(scales + first * n_head);
    const int p1 = min(n_ctx, (split + 1) * span);
    for (int p = split * span + 2 * warp; p < p1; p += 2 * kRowWarps) {
        const bool two = p + 1 < p1;             // uniform per warp
        const int pos[2] = {p, two ? p + 1 : p};  // a lone last position is read twice, weighted once
        uint2 kr[2][NC], vr[2][NC];
        unsigned sc[2] = {0u, 0u};
#pragma unroll
        for (int j = 0; j < 2; ++j) {  // every load first: this kernel waits on memory
#pragma unroll
            for (int k = 0; k < NC; ++k) {
                const int c = lane + 32 * k;
                if (c < n_pieces) {
                    kr[j][k] = __ldcs(kb + static_cast<size_t>(pos[j]) * n_pieces + c);
                    vr[j][k] = __ldcs(vb + static_cast<size_t>(pos[j]) * n_pieces + c);
                }
            }
            if (lane < n_head) {
                sc[j] = __ldcs(sb + static_cast<size_t>(pos[j]) * n_head + lane);
            }
        }
#pragma unroll
        for (int k = 0; k < NC; ++k) {
            const int c = lane + 32 * k;
            const bool ok = c < n_pieces;  // uniform per 8 lanes: 32 * k and n_pieces are multiples of 8
            int acc[2] = {0, 0};
            if (ok) {
                const int4 qv = qw[c];
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int kx = static_cast<int>(kr[j][k].x), ky = static_cast<int>(kr[j][k].y);
                    acc[j] = __dp2a_lo(qv.x, kx, 0);        // values 0, 1
                    acc[j] = __dp2a_hi(qv.y, kx, acc[j]);   // 2, 3
                    acc[j] = __dp2a_lo(qv.z, ky, acc[j]);   // 4, 5
                    acc[j] = __dp2a_hi(qv.w, ky, acc[j]);   // 6, 7
                }
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], 1);
                acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], 2);
                acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], 4);
            }
            // head c / 8 <= 19 (NC <= 5): lane c / 8 holds its scales; lanes past the last
            // piece fetch a meaningless pair and leave it unused
            const unsigned b0 = __shfl_sync(0xffffffffu, sc[0], c >> 3);
            const unsigned b1 = __shfl_sync(0xffffffffu, sc[1], c >> 3);
            if (ok) {
                const float2 f0 = __half22float2(*reinterpret_cast<const half2 *>(&b0));  // (K, V) scales
                const float2 f1 = __half22float2(*reinterpret_cast<const half2 *>(&b1));
                const float s0 = __int2float_rn(acc[0]) * (qk[k] * f0.x);  // base 2
                const float s1 = two ? __int2float_rn(acc[1]) * (qk[k] * f1.x) : -INFINITY;
                const float mn = fmaxf(m[k], fmaxf(s0, s1));
                const float a = exp2_fast(m[k] - mn);  // 0 on the first positions
                const float e0 = exp2_fast(s0 - mn), e1 = exp2_fast(s1 - mn);
                l[k] = l[k] * a + e0 + e1;
                m[k] = mn;
                const float w0 = e0 * f0.y, w1 = e1 * f1.y;
                float x0[8], x1[8];
                int8x8_to_float(vr[0][k], x0);
                int8x8_to_float(vr[1][k], x1);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    o[k][e] = fmaf(w1, x1[e], fmaf(w0, x0[e], o[k][e] * a));
                }
            }
        }
    }
#pragma unroll
    for (int k = 0; k < NC; ++k) {
        m[k] *= 0.6931471805599453f;  // base e, as merge_warps and cross_combine take them
    }
    merge_warps<NC>(o, m, l, red, part, slot, split, n_split, n_head, n_pieces);
}

constexpr int kQuantWarps = 8;  // quantize_rows: a position a warp

// The int8 copy of position blockIdx.x * 8 + warp of slot slots[blockIdx.y]: lane l takes
// 8-value pieces l, l + 32, ... of the key row and of the value row (piece c: head c / 8),
// the 8 lanes of a head find its largest |x| with three shuffles. The scale is rounded to
// f16 before dividing by it, so that the rounding of the scale itself costs nothing.
__global__ void __launch_bounds__(kQuantWarps * 32)
    quantize_rows(const half *ck, const half *cv, int8_t *k8, int8_t *v8, half2 *scales, const int *slots, int C,
                  int n_pad, int n_ctx, int n_head) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int p = blockIdx.x * kQuantWarps + warp;
    if (p >= n_ctx) {
        return;  // the whole warp
    }
    const size_t slot = static_cast<size_t>(slots[blockIdx.y]);
    const size_t src = (slot * n_pad + p) * C, dst = (slot * n_ctx + p) * C;
    const int n_pieces = C / 8;
    for (int c0 = 0; c0 < n_pieces; c0 += 32) {  // the same trips for every lane (shuffles)
        const int c = c0 + lane;
        const bool ok = c < n_pieces;  // uniform per 8 lanes
        float xk[8], xv[8];
        float ak = 0.0f, av = 0.0f;
        if (ok) {
            const uint4 kr = *reinterpret_cast<const uint4 *>(ck + src + static_cast<size_t>(c) * 8);
            const uint4 vr = *reinterpret_cast<const uint4 *>(cv + src + static_cast<size_t>(c) * 8);
            const half2 *k2 = reinterpret_cast<const half2 *>(&kr);
            const half2 *v2 = reinterpret_cast<const half2 *>(&vr);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float2 kf = __half22float2(k2[e]), vf = __half22float2(v2[e]);
                xk[2 * e] = kf.x;
                xk[2 * e + 1] = kf.y;
                xv[2 * e] = vf.x;
                xv[2 * e + 1] = vf.y;
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                ak = fmaxf(ak, fabsf(xk[e]));
                av = fmaxf(av, fabsf(xv[e]));
            }
        }
#pragma unroll
        for (int o = 1; o < 8; o <<= 1) {
            ak = fmaxf(ak, __shfl_xor_sync(0xffffffffu, ak, o));
            av = fmaxf(av, __shfl_xor_sync(0xffffffffu, av, o));
        }
        if (ok) {
            const half sk = __float2half_rn(ak / 127.0f), sv = __float2half_rn(av / 127.0f);
            const float fk = __half2float(sk), fv = __half2float(sv);
            const float ik = fk > 0.0f ? 1.0f / fk : 0.0f, iv = fv > 0.0f ? 1.0f / fv : 0.0f;
            unsigned bk[2] = {0u, 0u}, bv[2] = {0u, 0u};
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int qk = max(-127, min(127, __float2int_rn(xk[e] * ik)));
                const int qv = max(-127, min(127, __float2int_rn(xv[e] * iv)));
                bk[e / 4] |= (static_cast<unsigned>(qk) & 0xffu) << (8 * (e % 4));
                bv[e / 4] |= (static_cast<unsigned>(qv) & 0xffu) << (8 * (e % 4));
            }
            *reinterpret_cast<uint2 *>(k8 + dst + static_cast<size_t>(c) * 8) = make_uint2(bk[0], bk[1]);
            *reinterpret_cast<uint2 *>(v8 + dst + static_cast<size_t>(c) * 8) = make_uint2(bv[0], bv[1]);
            if (c % 8 == 0) {
                scales[(slot * n_ctx + p) * n_head + c / 8] = __halves2half2(sk, sv);
            }
        }
    }
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

// One all-heads launch's arguments.
struct Heads {
    const half *q;
    const float *bq;
    const half *ck, *cv;
    const CrossInt8 *q8;
    float *part;
    int W, C, n_pad, n_ctx, n_head;
    float scale;
    int span, n_split;
};

template <int NC>
void launch_heads(const Heads &a, cudaStream_t stream) {
    const size_t smem = heads_smem(a.C, a.n_head);
    const dim3 grid(a.n_split, a.W);
    if (a.q8 != nullptr) {
        allow_smem(cross_attention_heads_int8<NC>, smem, 32 * sizeof(float));  // + qsc
        cross_attention_heads_int8<NC><<<grid, kRowWarps * 32, smem, stream>>>(
            a.q, a.bq, a.q8->k, a.q8->v, a.q8->scales, a.part, a.C, a.n_ctx, a.span, a.n_split, a.n_head, a.scale);
    } else {
        allow_smem(cross_attention_heads<NC>, smem, 0);
        cross_attention_heads<NC><<<grid, kRowWarps * 32, smem, stream>>>(
            a.q, a.bq, a.ck, a.cv, a.part, a.C, a.n_pad, a.n_ctx, a.span, a.n_split, a.n_head, a.scale);
    }
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
        const int span = heads_span(W, n_ctx);
        n_split = (n_ctx + span - 1) / span;
        n_zero = n_pad - n_ctx;
        const Heads a{q, bq, ck, cv, q8, part, W, C, n_pad, n_ctx, n_head, scale, span, n_split};
        switch (nc) {
            case 2: launch_heads<2>(a, stream); break;
            case 3: launch_heads<3>(a, stream); break;
            case 4: launch_heads<4>(a, stream); break;
            default: launch_heads<5>(a, stream); break;
        }
    } else {  // by head, over every position (the padding's zeros read)
        cross_by_head<<<dim3(n_split, n_head, W), kChunk, 0, stream>>>(q, bq, ck, cv, part, R, C, n_pad, n_split,
                                                                      n_head, scale);
    }
    cross_combine<<<dim3(n_head, W * R), kHead, 0, stream>>>(part, out, n_split, n_head, C, n_zero);
    check(cudaGetLastError(), "cross-attention kernels");
}

void quantize_cross(const half *ck, const half *cv, int8_t *k8, int8_t *v8, half2 *scales, const int *slots, int n,
                    int C, int n_pad, int n_ctx, int n_head, cudaStream_t stream) {
    const dim3 grid((n_ctx + kQuantWarps - 1) / kQuantWarps, n);
    quantize_rows<<<grid, kQuantWarps * 32, 0, stream>>>(ck, cv, k8, v8, scales, slots, C, n_pad, n_ctx, n_head);
    check(cudaGetLastError(), "quantise the cross K/V");
}

}  // namespace whisperd
