// Silero's kernels (silero_kernels.hpp), written once over GCC vector types and compiled
// three times: AVX-512, AVX2+FMA and the baseline, picked once by what the CPU reports.
#include "silero_kernels.hpp"

#include <cstdint>
#include <cstring>

#include "ggml.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define WHISPERD_SILERO_X86 1
#endif

// The helpers below return vectors but are always inlined into a function built for the
// matching instruction set, so GCC's warning that their ABI would differ is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace whisperd::silero {

namespace {

template <int W>
struct Lanes {
    typedef float V __attribute__((vector_size(W * sizeof(float))));
};

template <int W>
inline __attribute__((always_inline)) typename Lanes<W>::V load(const float *p) {
    typename Lanes<W>::V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

template <int W>
inline __attribute__((always_inline)) void store(float *p, const typename Lanes<W>::V &v) {
    std::memcpy(p, &v, sizeof(v));
}

// A 4-row x 2-vector tile of C at a time: 8 independent accumulators hide the FMA latency
// and each B load serves 4 rows. Columns outermost, so a 32-column panel of B (K x 32
// floats: 49 KB at K = 387, contiguous: see pack_panels) stays in cache while every row
// block passes over it.
template <int W>
inline __attribute__((always_inline)) void gemm_impl(int M, int N, int K, const float *A, const float *B,
                                                     const float *bias, bool relu, float *C) {
    using V = typename Lanes<W>::V;
    for (int j0 = 0; j0 < N; j0 += kColBlock) {
        for (int j = j0; j < j0 + kColBlock; j += 2 * W) {
            for (int i = 0; i < M; i += kRowBlock) {
                const float *a0 = A + static_cast<size_t>(i) * K;
                const float *a1 = a0 + K;
                const float *a2 = a1 + K;
                const float *a3 = a2 + K;
                V c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {};
                const float *b = B + static_cast<size_t>(j0) * K + (j - j0);  // in the panel
                for (int k = 0; k < K; ++k, b += kColBlock) {
                    const V b0 = load<W>(b);
                    const V b1 = load<W>(b + W);
                    c00 += a0[k] * b0;
                    c01 += a0[k] * b1;
                    c10 += a1[k] * b0;
                    c11 += a1[k] * b1;
                    c20 += a2[k] * b0;
                    c21 += a2[k] * b1;
                    c30 += a3[k] * b0;
                    c31 += a3[k] * b1;
                }
                V acc[8] = {c00, c01, c10, c11, c20, c21, c30, c31};
                for (int r = 0; r < 4; ++r) {
                    for (int h = 0; h < 2; ++h) {
                        V v = acc[2 * r + h];
                        if (bias != nullptr) {
                            v += load<W>(bias + j + h * W);
                        }
                        if (relu) {
                            const V zero = {};
                            v = v > zero ? v : zero;
                        }
                        store<W>(C + static_cast<size_t>(i + r) * N + j + h * W, v);
                    }
                }
            }
        }
    }
}

// kMatvecBlock columns of y at a time over all of x: NV independent chains, reading B
// as one contiguous panel per block (see pack_panels).
template <int W>
inline __attribute__((always_inline)) void matvec_impl(int N, int K, const float *x, const float *B, float *y) {
    using V = typename Lanes<W>::V;
    constexpr int NV = kMatvecBlock / W;
    for (int j = 0; j < N; j += kMatvecBlock) {
        V c[NV];
        for (int v = 0; v < NV; ++v) {
            c[v] = load<W>(y + j + v * W);
        }
        const float *b = B + static_cast<size_t>(j) * K;  // the block's K x kMatvecBlock panel
        for (int k = 0; k < K; ++k, b += kMatvecBlock) {
            for (int v = 0; v < NV; ++v) {
                c[v] += x[k] * load<W>(b + v * W);
            }
        }
        for (int v = 0; v < NV; ++v) {
            store<W>(y + j + v * W, c[v]);
        }
    }
}

// expf to about an ulp (Cephes' polynomial on x - n ln 2, then 2^n into the exponent):
// glibc's expf and tanhf one frame at a time were a third of the LSTM's time.
template <int W>
inline __attribute__((always_inline)) typename Lanes<W>::V exp_impl(const typename Lanes<W>::V &x_in) {
    using V = typename Lanes<W>::V;
    V x = x_in;
    typedef int32_t I __attribute__((vector_size(W * sizeof(int32_t))));
    const V zero = {};
    const V lo = zero - 87.3f, hi = zero + 88.3f;  // 2^n stays a normal float
    x = x < lo ? lo : x;
    x = x > hi ? hi : x;
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const V n = (x * 1.44269504088896341f + magic) - magic;
    const V r = x - n * 0.693359375f + n * 2.12194440e-4f;
    V p = zero + 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    const I e = (__builtin_convertvector(n, I) + 127) << 23;
    V scale;
    std::memcpy(&scale, &e, sizeof(scale));
    return p * scale;
}

// The LSTM cell over pre-activations g = (i, f, g, o), hidden wide each.
template <int W>
inline __attribute__((always_inline)) void lstm_impl(int hidden, const float *g, float *c, float *h) {
    using V = typename Lanes<W>::V;
    for (int j = 0; j < hidden; j += W) {
        const V i_t = 1.0f / (1.0f + exp_impl<W>(-load<W>(g + j)));
        const V f_t = 1.0f / (1.0f + exp_impl<W>(-load<W>(g + hidden + j)));
        const V g_t = 1.0f - 2.0f / (exp_impl<W>(2.0f * load<W>(g + 2 * hidden + j)) + 1.0f);  // tanh
        const V o_t = 1.0f / (1.0f + exp_impl<W>(-load<W>(g + 3 * hidden + j)));
        const V c_t = f_t * load<W>(c + j) + i_t * g_t;
        store<W>(c + j, c_t);
        store<W>(h + j, o_t * (1.0f - 2.0f / (exp_impl<W>(2.0f * c_t) + 1.0f)));
    }
}

#ifdef WHISPERD_SILERO_X86
__attribute__((target("avx512f"))) void gemm_avx512(int M, int N, int K, const float *A, const float *B,
                                                    const float *bias, bool relu, float *C) {
    gemm_impl<16>(M, N, K, A, B, bias, relu, C);
}
__attribute__((target("avx2,fma"))) void gemm_avx2(int M, int N, int K, const float *A, const float *B,
                                                   const float *bias, bool relu, float *C) {
    gemm_impl<8>(M, N, K, A, B, bias, relu, C);
}
__attribute__((target("avx512f"))) void matvec_avx512(int N, int K, const float *x, const float *B, float *y) {
    matvec_impl<16>(N, K, x, B, y);
}
__attribute__((target("avx2,fma"))) void matvec_avx2(int N, int K, const float *x, const float *B, float *y) {
    matvec_impl<8>(N, K, x, B, y);
}
__attribute__((target("avx512f"))) void lstm_avx512(int hidden, const float *g, float *c, float *h) {
    lstm_impl<16>(hidden, g, c, h);
}
__attribute__((target("avx2,fma"))) void lstm_avx2(int hidden, const float *g, float *c, float *h) {
    lstm_impl<8>(hidden, g, c, h);
}
__attribute__((target("avx2,f16c"))) void round_f16c(float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; ++i) {
        x[i] = _cvtsh_ss(_cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT));
    }
}
#endif

void gemm_base(int M, int N, int K, const float *A, const float *B, const float *bias, bool relu, float *C) {
    gemm_impl<4>(M, N, K, A, B, bias, relu, C);
}
void matvec_base(int N, int K, const float *x, const float *B, float *y) { matvec_impl<4>(N, K, x, B, y); }
void lstm_base(int hidden, const float *g, float *c, float *h) { lstm_impl<4>(hidden, g, c, h); }
void round_base(float *x, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        x[i] = ggml_fp16_to_fp32(ggml_fp32_to_fp16(x[i]));  // ggml's own rounding
    }
}

struct Dispatch {
    decltype(&gemm_base) gemm = gemm_base;
    decltype(&matvec_base) matvec = matvec_base;
    decltype(&round_base) round = round_base;
    decltype(&lstm_base) lstm = lstm_base;
    Dispatch() {
#if defined(WHISPERD_SILERO_X86) && !defined(WHISPERD_SILERO_BASELINE_ONLY)
        __builtin_cpu_init();
        const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        if (avx2) {
            gemm = gemm_avx2;
            matvec = matvec_avx2;
            lstm = lstm_avx2;
            round = round_f16c;  // every CPU with AVX2 has F16C
        }
        if (avx2 && __builtin_cpu_supports("avx512f")) {
            gemm = gemm_avx512;
            matvec = matvec_avx512;
            lstm = lstm_avx512;
        }
#endif
    }
};

const Dispatch &dispatch() {
    static const Dispatch d;
    return d;
}

}  // namespace

void gemm(int M, int N, int K, const float *A, const float *B, const float *bias, bool relu, float *C) {
    dispatch().gemm(M, N, K, A, B, bias, relu, C);
}

void matvec_acc(int N, int K, const float *x, const float *B, float *y) { dispatch().matvec(N, K, x, B, y); }

std::vector<float> pack_panels(int N, int K, const float *B, int block) {
    std::vector<float> packed(static_cast<size_t>(N) * K);
    float *out = packed.data();
    for (int j = 0; j < N; j += block) {
        for (int k = 0; k < K; ++k, out += block) {
            std::memcpy(out, B + static_cast<size_t>(k) * N + j, block * sizeof(float));
        }
    }
    return packed;
}

void round_to_f16(float *x, size_t n) { dispatch().round(x, n); }

void lstm_cell(int hidden, const float *gates, float *c, float *h) { dispatch().lstm(hidden, gates, c, h); }

}  // namespace whisperd::silero
