// Flash attention for the encoder (cuda_attention.hpp says why). The shape of the work: a
// block takes 64 queries of one head of one window, four warps of 16 queries; it streams
// the head's keys and values through shared memory 64 at a time (cp.async, two buffers, so
// the next tile loads while this one is used) and keeps, per query row, the running
// maximum, the running sum and the output in registers. The tensor-core product
// mma.m16n8k16 leaves the scores in the exact register layout its A operand wants, so the
// probabilities go from the first product into the second without touching memory (the
// arrangement of FlashAttention-2).
#include "cuda_attention.hpp"

#include <cstdint>
#include <cstring>
#include <string>

#include "errors.hpp"

namespace whisperd {

namespace {

constexpr int kHead = 64;               // head size of every Whisper model
constexpr int kWarps = 4;               // 16 queries each
constexpr int kQueries = kWarps * 16;   // a block's queries
constexpr float kLog2e = 1.4426950408889634f;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

constexpr int kKeys = 64;  // keys a tile
// Shared-memory row pitch in f16: 144 bytes puts the 8 rows a warp reads at once in 8
// different groups of 4 banks (a pitch of 128 bytes would be an 8-way conflict) and keeps
// rows 16-byte aligned for cp.async and ldmatrix.
constexpr int kPitch = kHead + 8;

__device__ __forceinline__ uint32_t pack_half2(float a, float b) {
    const half2 h = __floats2half2_rn(a, b);
    uint32_t u;
    memcpy(&u, &h, sizeof(u));
    return u;
}

__device__ __forceinline__ uint32_t load_pair(const half *p) { return *reinterpret_cast<const uint32_t *>(p); }

// d += a b: a 16x16 (row-major) f16, b 16x8 (column-major) f16, d 16x8 f32.
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 f16 matrices from shared memory, transposed: lanes 8i..8i+7 give the row
// addresses of matrix i; r[i] holds this lane's pair of matrix i's column lane/4.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const half *p) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ void copy16_async(half *smem, const half *gmem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}

#endif

// grid (ceil(T / 64), heads, windows), block 128 threads. scale_log2: the softmax scale
// times log2(e) (exp2 is one instruction).
__global__ void __launch_bounds__(kWarps * 32)
    flash_attention_kernel(const half *__restrict__ Q, const half *__restrict__ K, const half *__restrict__ V,
                           half *__restrict__ O, int T, int C, float scale_log2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    __shared__ __align__(16) half ks[2][kKeys * kPitch];
    __shared__ __align__(16) half vs[2][kKeys * kPitch];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;  // the mma fragments' row group and column pair
    const size_t base = static_cast<size_t>(blockIdx.z) * T;
    const int col0 = blockIdx.y * kHead;
    const int q0 = blockIdx.x * kQueries + warp * 16;

    // This warp's queries as A fragments (rows g and g + 8, four chunks of 16 dims). Rows
    // past the window repeat its last row: computed, never stored.
    uint32_t qa[4][4];
    {
        const half *p0 = Q + (base + min(q0 + g, T - 1)) * C + col0 + 2 * t;
        const half *p1 = Q + (base + min(q0 + g + 8, T - 1)) * C + col0 + 2 * t;
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) {
            qa[kc][0] = load_pair(p0 + kc * 16);
            qa[kc][1] = load_pair(p1 + kc * 16);
            qa[kc][2] = load_pair(p0 + kc * 16 + 8);
            qa[kc][3] = load_pair(p1 + kc * 16 + 8);
        }
    }

    // Keys past the window's end load a real row (finite values: 0 * NaN would poison the
    // output) and are masked out of the scores.
    auto load_tile = [&](int buf, int k0) {
        for (int i = threadIdx.x; i < kKeys * (kHead / 8); i += kWarps * 32) {
            const int r = i / (kHead / 8), c = (i % (kHead / 8)) * 8;
            const size_t off = (base + min(k0 + r, T - 1)) * C + col0 + c;
            copy16_async(&ks[buf][r * kPitch + c], K + off);
            copy16_async(&vs[buf][r * kPitch + c], V + off);
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };

    float o[kHead / 8][4];
#pragma unroll
    for (int d = 0; d < kHead / 8; ++d) {
        o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    }
    float m[2] = {-INFINITY, -INFINITY};  // running maximum of rows g, g + 8 (log2 units)
    float l[2] = {0.0f, 0.0f};            // running sum of this lane's columns
    const int n_tiles = (T + kKeys - 1) / kKeys;
    load_tile(0, 0);
    for (int it = 0; it < n_tiles; ++it) {
        const int buf = it & 1;
        if (it + 1 < n_tiles) {
            load_tile(buf ^ 1, (it + 1) * kKeys);
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();
        const half *kt = ks[buf], *vt = vs[buf];

        // scores: 16 queries x 64 keys, eight tiles of 8 keys
        float s[kKeys / 8][4];
#pragma unroll
        for (int j = 0; j < kKeys / 8; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            const half *kr = kt + (j * 8 + g) * kPitch + 2 * t;
#pragma unroll
            for (int kc = 0; kc < 4; ++kc) {
                mma16816(s[j], qa[kc], load_pair(kr + kc * 16), load_pair(kr + kc * 16 + 8));
            }
        }
        const int k0 = it * kKeys;
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + j * 8 + 2 * t + (e & 1);
                s[j][e] = key < T ? s[j][e] * scale_log2 : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
            }
        }
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {  // the four lanes of a row share its maximum
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            alpha[r] = exp2f(m[r] - mx[r]);  // 0 on the first tile (m = -inf, mx finite)
            m[r] = mx[r];
            l[r] *= alpha[r];
        }
#pragma unroll
        for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[j][e] = exp2f(s[j][e] - m[e >> 1]);
                l[e >> 1] += s[j][e];
            }
        }
#pragma unroll
        for (int d = 0; d < kHead / 8; ++d) {
            o[d][0] *= alpha[0];
            o[d][1] *= alpha[0];
            o[d][2] *= alpha[1];
            o[d][3] *= alpha[1];
        }

        // o += p v, 16 keys at a time: score tiles 2kc and 2kc + 1 are the A fragment.
#pragma unroll
        for (int kc = 0; kc < kKeys / 16; ++kc) {
            const uint32_t pa[4] = {pack_half2(s[2 * kc][0], s[2 * kc][1]), pack_half2(s[2 * kc][2], s[2 * kc][3]),
                                    pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                    pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3])};
            const half *vr = vt + (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * kPitch + (lane >> 4) * 8;
#pragma unroll
            for (int dp = 0; dp < kHead / 16; ++dp) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, vr + dp * 16);
                mma16816(o[2 * dp], pa, b[0], b[1]);
                mma16816(o[2 * dp + 1], pa, b[2], b[3]);
            }
        }
        __syncthreads();  // the next iteration's loads overwrite the other buffer
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    const float inv0 = 1.0f / l[0], inv1 = 1.0f / l[1];
    const int r0 = q0 + g, r1 = q0 + g + 8;
#pragma unroll
    for (int d = 0; d < kHead / 8; ++d) {
        const int c = col0 + d * 8 + 2 * t;
        if (r0 < T) {
            *reinterpret_cast<half2 *>(O + (base + r0) * C + c) = __floats2half2_rn(o[d][0] * inv0, o[d][1] * inv0);
        }
        if (r1 < T) {
            *reinterpret_cast<half2 *>(O + (base + r1) * C + c) = __floats2half2_rn(o[d][2] * inv1, o[d][3] * inv1);
        }
    }
#else
    __trap();  // never launched: fused_attention_supported() checks the code's architecture
#endif
}

}  // namespace

bool fused_attention_supported(int device, int head_dim, int n_ctx, int n_state) {
    if (head_dim != kHead || n_ctx < 1 || n_state % 8 != 0) {
        return false;
    }
    int major = 0;
    cudaFuncAttributes attr{};
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaFuncGetAttributes(&attr, flash_attention_kernel) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    // The code the driver runs must come from an sm_80+ compilation: a build for sm_75
    // runs its compute_75 PTX, JIT-compiled, on newer GPUs too (ptxVersion 75 there).
    return major >= 8 && attr.ptxVersion >= 80 && attr.binaryVersion >= 80;
}

void fused_attention(const half *Q, const half *K, const half *V, half *O, int windows, int n_ctx, int n_state,
                     int n_head, float scale, cudaStream_t stream) {
    const dim3 grid((n_ctx + kQueries - 1) / kQueries, n_head, windows);
    flash_attention_kernel<<<grid, kWarps * 32, 0, stream>>>(Q, K, V, O, n_ctx, n_state, scale * kLog2e);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        throw WhisperError(std::string("CUDA encoder: fused attention: ") + cudaGetErrorString(e));
    }
}

}  // namespace whisperd
