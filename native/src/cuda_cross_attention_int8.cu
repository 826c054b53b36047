// The decoder step's cross-attention over the int8 copy of the cross K/V
// (WHISPERD_CROSS_KV_INT8, cuda_cross_attention.hpp): the greedy steps' all-heads kernel,
// which writes the same parts as cuda_cross_attention.cu's (merged by its cross_combine),
// and the kernel that makes the copy.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_cross_attention_common.cuh"

namespace whisperd {

namespace {

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

// One launch of cross_attention_heads_int8<NC> (cross_heads_int8 picks NC).
template <int NC>
void launch_int8(const half *q, const float *bq, const CrossInt8 &q8, float *part, int W, int C, int n_ctx,
                 int n_head, float scale, int span, int n_split, cudaStream_t stream) {
    const size_t smem = heads_smem(C, n_head);
    const dim3 grid(n_split, W);
    allow_smem(cross_attention_heads_int8<NC>, smem, 32 * sizeof(float));  // + qsc
    cross_attention_heads_int8<NC><<<grid, kRowWarps * 32, smem, stream>>>(q, bq, q8.k, q8.v, q8.scales, part, C,
                                                                          n_ctx, span, n_split, n_head, scale);
}

}  // namespace

void cross_heads_int8(int nc, const half *q, const float *bq, const CrossInt8 &q8, float *part, int W, int C,
                      int n_ctx, int n_head, float scale, int span, int n_split, cudaStream_t stream) {
    switch (nc) {
        case 2: launch_int8<2>(q, bq, q8, part, W, C, n_ctx, n_head, scale, span, n_split, stream); break;
        case 3: launch_int8<3>(q, bq, q8, part, W, C, n_ctx, n_head, scale, span, n_split, stream); break;
        case 4: launch_int8<4>(q, bq, q8, part, W, C, n_ctx, n_head, scale, span, n_split, stream); break;
        default: launch_int8<5>(q, bq, q8, part, W, C, n_ctx, n_head, scale, span, n_split, stream); break;
    }
}

void quantize_cross(const half *ck, const half *cv, int8_t *k8, int8_t *v8, half2 *scales, const int *slots, int n,
                    int C, int n_pad, int n_ctx, int n_head, cudaStream_t stream) {
    const dim3 grid((n_ctx + kQuantWarps - 1) / kQuantWarps, n);
    quantize_rows<<<grid, kQuantWarps * 32, 0, stream>>>(ck, cv, k8, v8, scales, slots, C, n_pad, n_ctx, n_head);
    check(cudaGetLastError(), "quantise the cross K/V");
}

}  // namespace whisperd
