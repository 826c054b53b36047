// Flash attention for the encoder (cuda_attention.hpp says why). The shape of the work: a
// block takes 128 queries of one head of one window, four warps of 32 queries (two row
// tiles of 16 per warp, so every key and value fragment a warp reads from shared memory
// feeds two tensor-core products, and every tile of keys a block loads serves twice the
// queries of a 64-query block: half the L2 traffic and half the shared-memory reads per
// product). It streams the head's keys and values through shared memory 64 at a time
// (cp.async, two buffers: the next tile loads while this one is used, one barrier a tile),
// reads the block's queries from shared memory too (in registers, with the rest, they
// pushed ptxas into spills), and keeps, per query row, the running maximum, the running
// sum and the output in registers. The tensor-core product mma.m16n8k16 leaves the scores
// in the exact register layout its A operand wants, so the probabilities go from the
// first product into the second without touching memory (the arrangement of
// FlashAttention-2, whose head-size-64 kernel has the same four warps of 32 queries).
#include "cuda_attention.hpp"

#include <climits>
#include <cstdint>
#include <cstring>
#include <string>

#include "errors.hpp"

namespace whisperd {

namespace {

constexpr int kHead = 64;                    // head size of every Whisper model
constexpr int kWarps = 4;
constexpr int kWarpRows = 32;                // two m16 row tiles a warp
constexpr int kQueries = kWarps * kWarpRows;  // a block's queries
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;

constexpr int kKeys = 64;  // keys a tile (128 would need 64 more registers for the scores)
// Shared-memory row pitch in f16: 144 bytes puts the 8 rows an ldmatrix phase reads in 8
// different groups of 4 banks (a pitch of 128 bytes would be an 8-way conflict) and keeps
// rows 16-byte aligned for cp.async and ldmatrix.
constexpr int kPitch = kHead + 8;
// K and V double-buffered and the queries: 54 KB, more than the 48 KB of static shared memory
// (two blocks an SM still fit in its 228 KB).
constexpr int kSmemBytes = (4 * kKeys + kQueries) * kPitch * static_cast<int>(sizeof(half));

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

constexpr int kCopies = kKeys * kHead / 8 / kThreads;  // 16-byte copies a thread makes a tile a matrix
constexpr int kTileElems = kKeys * kPitch;

__device__ __forceinline__ uint32_t pack_half2(float a, float b) {
    const half2 h = __floats2half2_rn(a, b);
    uint32_t u;
    memcpy(&u, &h, sizeof(u));
    return u;
}

// 2^x in one instruction: exp2f adds a denormal fix-up around it, and a probability below
// 2^-126 is nothing to an f16 product anyway. 2^-inf = +0 (the masked keys).
__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// d += a b: a 16x16 (row-major) f16, b 16x8 (column-major) f16, d 16x8 f32. With g = lane/4,
// t = lane%4: a = {A[g][2t..2t+1], A[g+8][2t..], A[g][2t+8..2t+9], A[g+8][2t+8..]},
// b = {B[2t..2t+1][g], B[2t+8..2t+9][g]}, d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 f16 matrices from shared memory: lanes 8i..8i+7 give the row addresses of
// matrix i; r[i] holds this lane's pair of matrix i's row lane/4, columns 2(lane%4) and
// 2(lane%4) + 1.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const half *p) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// The same, transposed: r[i] holds matrix i's rows 2(lane%4) and 2(lane%4) + 1 of column
// lane/4.
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

// grid (ceil(T / 128), heads, windows), block 128 threads, kSmemBytes of dynamic shared
// memory. scale_log2: the softmax scale times log2(e) (exp2 is one instruction). Two blocks
// an SM: ptxas may use up to 255 registers a thread for the 32 rows a warp keeps (scores and
// output: 128) and the fragments in flight (sm_90: 216, no spills; with the queries' 32
// fragments kept in registers too it spilled).
__global__ void __launch_bounds__(kThreads, 2)
    flash_attention_kernel(const half *__restrict__ Q, const half *__restrict__ K, const half *__restrict__ V,
                           half *__restrict__ O, int T, int C, float scale_log2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // [K tile 0][K tile 1][V tile 0][V tile 1][the block's queries], rows kPitch apart
    extern __shared__ __align__(16) half smem[];
    half *const qs = smem + 4 * kTileElems;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;  // the mma fragments' row group and column pair
    const size_t base = static_cast<size_t>(blockIdx.z) * T;
    const int col0 = blockIdx.y * kHead;
    const int q0 = blockIdx.x * kQueries + warp * kWarpRows;

    // Every copy moves 16 bytes: piece threadIdx.x % 8 of rows threadIdx.x / 8 + 16u. Rows
    // past the window (queries and keys) load its last row, finite values: a query row
    // there is computed, never stored; a key there is masked out of the scores (and its
    // value must not be NaN: 0 * NaN would poison the output).
    const int crow = threadIdx.x >> 3, ccol = (threadIdx.x & 7) * 8;
    {
        const half *qg = Q + base * C + col0 + ccol;
        const int row0 = blockIdx.x * kQueries;
#pragma unroll
        for (int u = 0; u < kQueries / (kThreads / 8); ++u) {
            const int r = crow + u * (kThreads / 8);
            copy16_async(&qs[r * kPitch + ccol], qg + static_cast<size_t>(min(row0 + r, T - 1)) * C);
        }
    }
    const half *kg = K + base * C + col0 + ccol;
    const half *vg = V + base * C + col0 + ccol;
    // Offsets inside a window in 32 bits (fused_attention_supported() keeps n_ctx * n_state
    // below 2^31): a 64-bit multiply for every copy was most of the loop's integer work.
    const int row_off = crow * C, row_step = (kThreads / 8) * C;
    auto load_tile = [&](int buf, int k0) {
        half *const kd = smem + buf * kTileElems + crow * kPitch + ccol;
        half *const vd = kd + 2 * kTileElems;
        if (k0 + kKeys <= T) {
            const int off = k0 * C + row_off;
#pragma unroll
            for (int u = 0; u < kCopies; ++u) {
                copy16_async(kd + u * (kThreads / 8) * kPitch, kg + (off + u * row_step));
                copy16_async(vd + u * (kThreads / 8) * kPitch, vg + (off + u * row_step));
            }
        } else {  // the last tile
#pragma unroll
            for (int u = 0; u < kCopies; ++u) {
                const int off = min(k0 + crow + u * (kThreads / 8), T - 1) * C;
                copy16_async(kd + u * (kThreads / 8) * kPitch, kg + off);
                copy16_async(vd + u * (kThreads / 8) * kPitch, vg + off);
            }
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };

    // ldmatrix row addresses (lane 8i + r gives row r of matrix i). Q (A, 16 rows x 16
    // dims): matrix i is rows 8(i%2)..+7, dims 8(i/2)..+7, which are A's registers 0-3 in
    // order. V (transposed; keys as rows = B's rows): the same pattern over 16 keys x 16
    // dims gives the B fragments of dims 0-7 (r[0], r[1]) and 8-15 (r[2], r[3]). K (not
    // transposed; keys as rows = B's columns): matrix i is keys 8(i/2)..+7, dims
    // 8(i%2)..+7, the B fragments of keys 0-7 (r[0], r[1]) and 8-15 (r[2], r[3]).
    const int a_lane = (((lane >> 3) & 1) * 8 + (lane & 7)) * kPitch + (lane >> 4) * 8;
    const int k_lane = ((lane >> 4) * 8 + (lane & 7)) * kPitch + ((lane >> 3) & 1) * 8;
    const half *const qw = qs + warp * kWarpRows * kPitch + a_lane;

    float o[2][kHead / 8][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int d = 0; d < kHead / 8; ++d) {
            o[mt][d][0] = o[mt][d][1] = o[mt][d][2] = o[mt][d][3] = 0.0f;
        }
    }
    // Per row r = 2mt + h (query q0 + 16mt + 8h + g): the running maximum of the raw scores
    // and the running sum of this lane's columns, scaled to that maximum.
    float m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    float l[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int n_tiles = (T + kKeys - 1) / kKeys;
    load_tile(0, 0);  // the queries' copies join its group
#pragma unroll 1
    for (int it = 0; it < n_tiles; ++it) {
        const int buf = it & 1;
        asm volatile("cp.async.wait_group 0;\n" ::);
        // After it, every thread's copies of this tile are visible and every warp is done
        // with the previous tile, whose buffer the next load reuses: one barrier a tile.
        __syncthreads();
        if (it + 1 < n_tiles) {
            load_tile(buf ^ 1, (it + 1) * kKeys);
        }
        const half *kt = smem + buf * kTileElems + k_lane;
        const half *vt = smem + (2 + buf) * kTileElems + a_lane;

        // scores: 32 queries x 64 keys, eight tiles of 8 keys for each of the two row tiles,
        // 16 dims at a time; the queries' fragments come from shared memory every tile (8
        // loads against 128 products), each K fragment serves both row tiles.
        float s[2][kKeys / 8][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
            for (int j = 0; j < kKeys / 8; ++j) {
                s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
            }
        }
#pragma unroll
        for (int kc = 0; kc < kHead / 16; ++kc) {
            uint32_t qa[2][4];
            ldmatrix_x4(qa[0], qw + kc * 16);
            ldmatrix_x4(qa[1], qw + 16 * kPitch + kc * 16);
#pragma unroll
            for (int jp = 0; jp < kKeys / 16; ++jp) {
                uint32_t kb[4];
                ldmatrix_x4(kb, kt + jp * 16 * kPitch + kc * 16);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    mma16816(s[mt][2 * jp], qa[mt], kb[0], kb[1]);
                    mma16816(s[mt][2 * jp + 1], qa[mt], kb[2], kb[3]);
                }
            }
        }
        const int k0 = it * kKeys;
        if (k0 + kKeys > T) {  // only the last tile reaches past the window (uniform branch)
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        if (k0 + j * 8 + 2 * t + (e & 1) >= T) {
                            s[mt][j][e] = -INFINITY;
                        }
                    }
                }
            }
        }
        float mx[4] = {m[0], m[1], m[2], m[3]};
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
            for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    mx[2 * mt + (e >> 1)] = fmaxf(mx[2 * mt + (e >> 1)], s[mt][j][e]);
                }
            }
        }
        bool grew = false;
#pragma unroll
        for (int r = 0; r < 4; ++r) {  // the four lanes of a row (a quad) share its maximum
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            grew |= mx[r] != m[r];
        }
        // Where no row of the warp got a larger maximum (more often as the maxima settle),
        // every factor below is exactly 1: the warp skips the 64 multiplies.
        if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                // Every tile has a key inside the window, so mx is finite; on the first
                // tile m is -inf and alpha 0.
                const float alpha = exp2_ftz((m[r] - mx[r]) * scale_log2);
                m[r] = mx[r];
                l[r] *= alpha;
#pragma unroll
                for (int d = 0; d < kHead / 8; ++d) {
                    o[r >> 1][d][(r & 1) * 2] *= alpha;
                    o[r >> 1][d][(r & 1) * 2 + 1] *= alpha;
                }
            }
        }
        float neg_mc[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            neg_mc[r] = -m[r] * scale_log2;
        }
        // p = 2^(s c - m c): the scale folds into one FMA (the softmax's scale is positive,
        // so the raw scores' maximum is the scaled scores' one). The probabilities go to f16
        // pairs at once (half the registers) in the A fragments of the second product: score
        // tiles 2kc and 2kc + 1 of a row tile are chunk kc's fragment (D's {row g, row g + 8}
        // x {key 2t, 2t + 1} pairs are A's registers 0-1, the next 8 keys' registers 2-3).
        uint32_t pa[2][kKeys / 16][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
            for (int j = 0; j < kKeys / 8; ++j) {
                float p[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = 2 * mt + (e >> 1);
                    p[e] = exp2_ftz(fmaf(s[mt][j][e], scale_log2, neg_mc[r]));
                    l[r] += p[e];
                }
                pa[mt][j >> 1][(j & 1) * 2] = pack_half2(p[0], p[1]);
                pa[mt][j >> 1][(j & 1) * 2 + 1] = pack_half2(p[2], p[3]);
            }
        }

        // o += p v, 16 keys at a time
#pragma unroll
        for (int kc = 0; kc < kKeys / 16; ++kc) {
#pragma unroll
            for (int dp = 0; dp < kHead / 16; ++dp) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, vt + kc * 16 * kPitch + dp * 16);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    mma16816(o[mt][2 * dp], pa[mt][kc], b[0], b[1]);
                    mma16816(o[mt][2 * dp + 1], pa[mt][kc], b[2], b[3]);
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 4; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        l[r] = 1.0f / l[r];  // at least 1: the row's maximum contributes 2^0
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
        const int r0 = q0 + 16 * mt + g, r1 = r0 + 8;
#pragma unroll
        for (int d = 0; d < kHead / 8; ++d) {
            const int c = col0 + d * 8 + 2 * t;
            if (r0 < T) {
                *reinterpret_cast<half2 *>(O + (base + r0) * C + c) =
                    __floats2half2_rn(o[mt][d][0] * l[2 * mt], o[mt][d][1] * l[2 * mt]);
            }
            if (r1 < T) {
                *reinterpret_cast<half2 *>(O + (base + r1) * C + c) =
                    __floats2half2_rn(o[mt][d][2] * l[2 * mt + 1], o[mt][d][3] * l[2 * mt + 1]);
            }
        }
    }
#else
    __trap();  // never launched: fused_attention_supported() checks the code's architecture
#endif
}

}  // namespace

bool fused_attention_supported(int device, int head_dim, int n_ctx, int n_state) {
    if (head_dim != kHead || n_ctx < 1 || n_state % 8 != 0 || static_cast<long long>(n_ctx) * n_state > INT_MAX) {
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
    // The attributes are per device; setting them on every call (as FlashAttention-2 does:
    // no synchronisation, allowed while a stream is captured) spares tracking which have
    // them. The carveout is a hint that two blocks' 108 KB an SM come before L1 (the loads
    // bypass L1 anyway).
    cudaError_t e = cudaFuncSetAttribute(flash_attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         kSmemBytes);
    if (e == cudaSuccess) {
        e = cudaFuncSetAttribute(flash_attention_kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 cudaSharedmemCarveoutMaxShared);
    }
    if (e == cudaSuccess) {
        flash_attention_kernel<<<grid, kThreads, kSmemBytes, stream>>>(Q, K, V, O, n_ctx, n_state, scale * kLog2e);
        e = cudaGetLastError();
    }
    if (e != cudaSuccess) {
        throw WhisperError(std::string("CUDA encoder: fused attention: ") + cudaGetErrorString(e));
    }
}

}  // namespace whisperd
