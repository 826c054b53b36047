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

__device__ __forceinline__ float exp2_fast(float x) {  // 2^x; 2^-inf = 0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

constexpr float kMagicF = 12582912.0f;  // 1.5 * 2^23: ints of |i| < 2^22 added to it are exact
constexpr int kMagicI = 0x4b400000;     // its bits: kMagicI + i are the bits of kMagicF + i
constexpr float kSlack = 20.0f;         // base 2: how far a score may lie above the running maximum

// cross_attention_heads over the int8 copy (CrossInt8): the same parts, pieces and merge,
// with 8-byte pieces (8 values: piece c is still head c / 8, values (c % 8) * 8 + [0, 8))
// and two positions a warp at a time ("a step"), so that a warp has as many bytes in flight
// as the f16 kernel's and a lane the same registers. It must issue about as few
// instructions per byte as the f16 kernel to keep up with the memory; int8 to float costs
// ~3 instructions a value, so there are almost none:
// - Scores: the query, per head, as int16 (2^-15 of its largest value: finer than its f16),
//   four dp2a a piece, exact int32 sums (64 x 32767 x 127 < 2^31), then one conversion
//   times the two scales. An even lane sums the step's first position over its head's 8
//   lanes, an odd lane the second (three shuffles for both), and each lane takes only its
//   own position's scales: lane 2h + t loads head h's (and 16 + h's) at position t.
// - Softmax: base 2 (log2(e) in the query), so an exponential is one instruction. The
//   running maximum is only a reference: a score may lie up to kSlack above it (weights up
//   to 2^20, harmless in float32), so the rescale of the sums is skipped unless a warp vote
//   finds one beyond that (expected on a warp's first step only). The maxima go back to
//   base e for the merge.
// - Values: the step's two weights (each times its position's V scale) become int16 times
//   a power of two (the larger in [8192, 16384]; 2^-14 of it at worst), the two positions'
//   value bytes are interleaved (4 byte_perm a piece), and one dp2a a value gives
//   w_a x_a + w_b x_b exactly in int32, started from the bits of 1.5 * 2^23 so that the
//   result's bits are already the float 1.5 * 2^23 + sum: one fma adds it, times the
//   power's inverse, to the float32 output; the 1.5 * 2^23s are counted and taken off at
//   the end (bench/cross_kv_int8_error.py: ~1.5e-5 of the outputs, against the int8 copy's
//   own ~5e-3).
// About 204 instructions a warp a position in the SASS for C = 1280 (an earlier version,
// converting the values to floats and rescaling every step: 382).
template <int NC>
__global__ void __launch_bounds__(kRowWarps * 32, 2)
    cross_attention_heads_int8(const half *q, const float *bq, const int8_t *k8, const int8_t *v8,
                               const half2 *scales, float *part, int C, int n_ctx, int span, int n_split,
                               int n_head, float scale) {
    extern __shared__ float sm[];
    float *qs = sm;       // [C]: the query, bias, scale and log2(e) applied; then [C / 2] int16 pairs
    float *red = sm + C;  // [kRowWarps][n_head][kHead + 2]: each warp's o, m, l
    __shared__ float qsc[32], qiv[32];  // per head: the int16 query's scale, its inverse
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int split = blockIdx.x;
    const size_t slot = blockIdx.y;
    const int n_pieces = C / 8;
    constexpr float kLog2e = 1.4426950408889634f;
    {  // this warp's first step's K and V rows on their way to L2 while the query is set up
        const int p0 = split * span + 2 * warp;
        const int bytes = min(2, min(n_ctx, (split + 1) * span) - p0) * C;  // <= 0: no step
        const size_t at = (slot * n_ctx + p0) * C;
        if (lane * 128 < bytes) {  // 2 C <= 2560 bytes: one 128-byte line a lane
            asm volatile("prefetch.global.L2 [%0];" ::"l"(k8 + at + lane * 128));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(v8 + at + lane * 128));
        }
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        qs[c] = (__half2float(q[slot * C + c]) + bq[c]) * (scale * kLog2e);
    }
    __syncthreads();
    for (int h = warp; h < n_head; h += kRowWarps) {
        const float a = warp_max(fmaxf(fabsf(qs[h * kHead + lane]), fabsf(qs[h * kHead + 32 + lane])));
        if (lane == 0) {
            const float sc = a / 32767.0f;
            qsc[h] = sc;
            qiv[h] = sc > 0.0f ? 1.0f / sc : 0.0f;
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
                const float inv = qiv[2 * i / kHead];
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
    // pieces k < NC - 1 exist for every lane (NC = ceil(n_pieces / 32)); the last one for the
    // lanes below n_pieces - 32 (NC - 1), a multiple of 8 (so uniform per head)
    const bool last_ok = lane + 32 * (NC - 1) < n_pieces;
    // Of a step's two positions, an even lane scores the first and an odd lane the second
    // ("its" position; the partner, lane ^ 1, scores the other), and each reads its own first.
    const bool odd = lane & 1;
    float o[NC][8], m[NC], l[NC], cor[NC], qk[NC];
#pragma unroll
    for (int k = 0; k < NC; ++k) {
        m[k] = -INFINITY;
        l[k] = 0.0f;  // this lane's positions' sum; the partner's is added at the end
        cor[k] = 0.0f;
        qk[k] = qsc[min((lane + 32 * k) / 8, 31)];  // meaningless (unused) past the last head
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            o[k][e] = 0.0f;
        }
    }
    const size_t first = slot * n_ctx;  // the slot's first row
    const uint2 *kb = reinterpret_cast<const uint2 *>(k8 + first * C) + lane;
    const uint2 *vb = reinterpret_cast<const uint2 *>(v8 + first * C) + lane;
    const unsigned *sb = reinterpret_cast<const unsigned *>(scales + first * n_head);
    // lane 2h + t (t = 0, 1) loads the scales of head h (sc[0]) and 16 + h (sc[1]) at the
    // step's position t, so that one shuffle hands a lane its own position's
    const int h0 = lane >> 1, h1 = 16 + (lane >> 1);
    // and lane 2 (head % 16) + (lane & 1) holds a lane's head's: head c / 8 = lane / 8 + 4k
    const int src = 2 * (lane >> 3) + (lane & 1);
    const int p1 = min(n_ctx, (split + 1) * span);
    for (int p = split * span + 2 * warp; p < p1; p += 2 * kRowWarps) {
        const bool two = p + 1 < p1;  // uniform per warp; a lone last position is read twice, weighted 0
        const int pb = two ? p + 1 : p;
        const int pos[2] = {odd ? pb : p, odd ? p : pb};  // this lane's, the partner's
        uint2 kr[2][NC], vr[2][NC];
        unsigned sc[2] = {0u, 0u};
#pragma unroll
        for (int j = 0; j < 2; ++j) {  // every load first: this kernel waits on memory
            const size_t row = static_cast<size_t>(pos[j]) * n_pieces;
#pragma unroll
            for (int k = 0; k < NC; ++k) {
                if (k < NC - 1 || last_ok) {
                    kr[j][k] = __ldcs(kb + row + 32 * k);
                    vr[j][k] = __ldcs(vb + row + 32 * k);
                }
            }
        }
        if (h0 < n_head) {
            sc[0] = __ldcs(sb + static_cast<size_t>(pos[0]) * n_head + h0);
        }
        if (NC == 5 && h1 < n_head) {  // only C = 1280 (large) has more than 16 heads
            sc[1] = __ldcs(sb + static_cast<size_t>(pos[0]) * n_head + h1);
        }
        // each lane's position's score (base 2) and V scale, every piece, and whether any
        // score lies more than kSlack above its piece's running maximum
        float s[NC], vs[NC];
        bool grow = false;
#pragma unroll
        for (int k = 0; k < NC; ++k) {
            const int c = lane + 32 * k;
            const bool ok = k < NC - 1 || last_ok;
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
            // the head's 8 lanes: the partner's sum of this lane's position is its acc[1];
            // then the lanes of the same parity (xor 2, 4) add theirs
            int mine = acc[0] + __shfl_xor_sync(0xffffffffu, acc[1], 1);
            mine += __shfl_xor_sync(0xffffffffu, mine, 2);
            mine += __shfl_xor_sync(0xffffffffu, mine, 4);
            // head c / 8 = lane / 8 + 4k: below 16 for k < 4 (sc[0]), 16 + lane / 8 for k = 4
            // (sc[1]); lanes past the last piece fetch a meaningless pair and leave it unused
            const unsigned b = __shfl_sync(0xffffffffu, sc[k / 4], src + 8 * (k % 4));
            const float2 f = __half22float2(*reinterpret_cast<const half2 *>(&b));  // (K, V) scales
            s[k] = odd && !two ? -INFINITY : __int2float_rn(mine) * (qk[k] * f.x);
            vs[k] = f.y;
            grow = grow || (ok && s[k] > m[k] + kSlack);
        }
        if (__any_sync(0xffffffffu, grow)) {  // rarely after a warp's first step
#pragma unroll
            for (int k = 0; k < NC; ++k) {
                const float sp = __shfl_xor_sync(0xffffffffu, s[k], 1);  // the partner's position's
                if (k < NC - 1 || last_ok) {
                    const float mn = fmaxf(m[k], fmaxf(s[k], sp));
                    const float a = exp2_fast(m[k] - mn);  // 0 on the first step
                    m[k] = mn;
                    l[k] *= a;
                    cor[k] *= a;
#pragma unroll
                    for (int e = 0; e < 8; ++e) {
                        o[k][e] *= a;
                    }
                }
            }
        }
#pragma unroll
        for (int k = 0; k < NC; ++k) {
            const float e = exp2_fast(s[k] - m[k]);  // <= 2^kSlack
            const float w = e * vs[k];
            const float wp = __shfl_xor_sync(0xffffffffu, w, 1);  // the partner's position's
            if (k < NC - 1 || last_ok) {
                l[k] += e;
                // the two weights as int16, times a power of two r that puts the larger in
                // [8192, 16384]: r = 2^(13 - x) for the larger's exponent x, 1 / r = 2^(x - 13)
                const unsigned ex = __float_as_uint(fmaxf(fmaxf(w, wp), 1e-30f)) & 0x7f800000u;
                const float r = __uint_as_float(0x85800000u - ex), inv = __uint_as_float(ex - 0x06800000u);
                // rounded to integers by adding 1.5 * 2^23; the low 16 bits are the integer
                const unsigned q0 = __float_as_uint(fmaf(w, r, kMagicF)), q1 = __float_as_uint(fmaf(wp, r, kMagicF));
                const int wq = static_cast<int>(__byte_perm(q0, q1, 0x5410));  // (w, wp) as int16
                // value d of this lane's and the partner's position side by side: bytes
                // (x_d, y_d, x_d+1, y_d+1)
                const unsigned x0 = vr[0][k].x, x1 = vr[0][k].y, y0 = vr[1][k].x, y1 = vr[1][k].y;
                const int v[4] = {static_cast<int>(__byte_perm(x0, y0, 0x5140)),
                                  static_cast<int>(__byte_perm(x0, y0, 0x7362)),
                                  static_cast<int>(__byte_perm(x1, y1, 0x5140)),
                                  static_cast<int>(__byte_perm(x1, y1, 0x7362))};
                // w x_d + wp y_d, exact in int32 (|.| <= 2 x 16384 x 127 < 2^22), started
                // from the bits of 1.5 * 2^23: the sum's bits are the float 1.5 * 2^23 + sum,
                // so it needs no conversion; cor counts the 1.5 * 2^23s taken off at the end
#pragma unroll
                for (int d = 0; d < 4; ++d) {
                    o[k][2 * d] = fmaf(inv, __int_as_float(__dp2a_lo(wq, v[d], kMagicI)), o[k][2 * d]);
                    o[k][2 * d + 1] = fmaf(inv, __int_as_float(__dp2a_hi(wq, v[d], kMagicI)), o[k][2 * d + 1]);
                }
                cor[k] += inv;
            }
        }
    }
#pragma unroll
    for (int k = 0; k < NC; ++k) {
        l[k] += __shfl_xor_sync(0xffffffffu, l[k], 1);  // both positions' sums
        m[k] *= 0.6931471805599453f;  // base e, as merge_warps and cross_combine take them
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            o[k][e] = fmaf(-cor[k], kMagicF, o[k][e]);
        }
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
    allow_smem(cross_attention_heads_int8<NC>, smem, 64 * sizeof(float));  // + qsc, qiv
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
