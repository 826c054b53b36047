// Whisper's encoder layers on CUDA: cuBLAS products and a few small kernels of our own
// (see cuda_encoder.hpp for why). Row-major activations [rows][width]; cuBLAS is
// column-major, so a row-major Y = X W^T is computed as the column-major Y^T = W^T X^T,
// which is the same memory. Biases: Q's and the MLP's (with its GELU) are added inside
// their products (cuBLASLt epilogues, cuda_lt.hpp), V's folded into W_o's bias, W_o's and
// the MLP output's added by the next layer norm.
#include "cuda_encoder.hpp"

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cuda_attention.hpp"
#include "cuda_common.cuh"
#include "cuda_lt.hpp"
#include "errors.hpp"

namespace whisperd {

namespace {

// Softmax of each row of n scores in place (f32 arithmetic); rows are ld apart, n and ld
// even (pairs of f16 per load).
__global__ void softmax_rows(half *s, int n, int ld) {
    __shared__ float red[kThreads / 32];
    half2 *row = reinterpret_cast<half2 *>(s + static_cast<size_t>(blockIdx.x) * ld);
    const int n2 = n / 2;
    float2 v[kMaxPer / 2];
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < kMaxPer / 2; ++j) {
        const int c = threadIdx.x + j * kThreads;
        v[j] = c < n2 ? __half22float2(row[c]) : make_float2(-INFINITY, -INFINITY);
        m = fmaxf(m, fmaxf(v[j].x, v[j].y));
    }
    m = block_max(m, red);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxPer / 2; ++j) {
        const int c = threadIdx.x + j * kThreads;
        if (c < n2) {
            v[j].x = __expf(v[j].x - m);
            v[j].y = __expf(v[j].y - m);
            sum += v[j].x + v[j].y;
        }
    }
    const float inv = 1.0f / block_sum(sum, red);
#pragma unroll
    for (int j = 0; j < kMaxPer / 2; ++j) {
        const int c = threadIdx.x + j * kThreads;
        if (c < n2) {
            row[c] = __float22half2_rn(make_float2(v[j].x * inv, v[j].y * inv));
        }
    }
}

// out[o] = bo[o] + sum_i Wo[o][i] bv[i] (f32), one block per o. The value bias folded
// through the output projection: each row of softmax weights sums to 1, so attention over
// V + 1 bv^T is attention over V plus 1 bv^T, which W_o maps to 1 (Wo bv)^T. Exact for
// the fused and the cuBLAS attention alike, and one pass fewer per layer.
__global__ void fold_value_bias(const half *wo, const float *bv, const float *bo, float *out, int C) {
    __shared__ float red[kThreads / 32];
    const half *row = wo + static_cast<size_t>(blockIdx.x) * C;
    float s = 0.0f;
    for (int i = threadIdx.x; i < C; i += kThreads) {
        s += __half2float(row[i]) * bv[i];
    }
    s = block_sum(s, red);
    if (threadIdx.x == 0) {
        out[blockIdx.x] = bo[blockIdx.x] + s;
    }
}

__global__ void to_half(const float *x, half *y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = __float2half(x[i]);
    }
}

// cuBLASLt's workspace (its larger kernels want a few MiB; 32 as cuBLAS takes on Hopper).
constexpr size_t kLtWorkspace = 32u << 20;

// WHISPERD_CUDA_ATTENTION: "fused" (the default where it can run), "cublas" (scores
// through cuBLAS and a softmax kernel: the comparison for tests and benchmarks).
bool use_fused_attention(int device, const CudaEncoderShape &shape) {
    const char *raw = std::getenv("WHISPERD_CUDA_ATTENTION");
    const std::string want = raw == nullptr ? "" : raw;
    const bool can = fused_attention_supported(device, shape.n_state / shape.n_head, shape.n_ctx, shape.n_state);
    if (want.empty() || want == "auto") {
        return can;
    }
    if (want == "cublas") {
        return false;
    }
    if (want == "fused") {
        if (!can) {
            throw WhisperError("WHISPERD_CUDA_ATTENTION=fused: the fused attention kernel needs a GPU of compute "
                               "capability 8.0 or later, a build for it and 64-wide heads; unset it to use cuBLAS");
        }
        return true;
    }
    throw WhisperError("WHISPERD_CUDA_ATTENTION must be fused, cublas or auto (got '" + want + "')");
}

}  // namespace

struct CudaEncoder::Impl {
    int device = 0;
    CudaEncoderShape s{};
    std::vector<CudaEncoderLayer> layers;
    const float *ln_post_w, *ln_post_b;
    std::vector<CudaCrossLayer> cross;
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    // residual stream f32; h: normed input of the products, then attention output; f: MLP
    float *x = nullptr;
    half *h = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *f = nullptr;
    // One window's attention scores, [n_head][n_ctx][ld]: rows padded to 8 values (16
    // bytes), as cuBLAS's fast kernels and the softmax's paired loads want them (rows of
    // 1500 f16 start on 8-byte boundaries; ncu showed cuBLAS falling back to a slow kernel).
    half *scores = nullptr;
    int ld = 0;
    bool fused = false;  // attention as one kernel (cuda_attention.hpp) instead of the above
    // Products with their bias (and GELU) in cuBLASLt's epilogue; it takes f16 biases (D's
    // type), copied once into bias16: per layer bq and b1, per decoder layer the cross bv.
    std::unique_ptr<LtMatmul> lt;
    half *bias16 = nullptr;
    std::vector<const half *> bq16, b1_16, cbv16;
    float *bo_folded = nullptr;  // per layer bo + Wo bv (fold_value_bias), f32 [layer][n_state]
    size_t bytes = 0;

    ~Impl() {
        cudaSetDevice(device);
        if (stream != nullptr) {
            cudaStreamSynchronize(stream);
        }
        for (void *p : {static_cast<void *>(x), static_cast<void *>(h), static_cast<void *>(q),
                        static_cast<void *>(k), static_cast<void *>(v), static_cast<void *>(f),
                        static_cast<void *>(scores), static_cast<void *>(bias16),
                        static_cast<void *>(bo_folded)}) {
            if (p != nullptr) {
                cudaFree(p);
            }
        }
        lt.reset();
        if (blas != nullptr) {
            cublasDestroy(blas);
        }
        if (stream != nullptr) {
            cudaStreamDestroy(stream);
        }
    }

    template <typename T>
    void alloc(T **p, size_t count) {
        const size_t b = count * sizeof(T);
        check(cudaMalloc(reinterpret_cast<void **>(p), b), "workspace");
        bytes += b;
    }

    void linear(const void *W, const half *X, int rows, int in, int out, void *Y, cudaDataType yt,
                float alpha = 1.0f, float beta = 0.0f) {
        whisperd::linear(blas, W, X, rows, in, out, Y, yt, alpha, beta);
    }

    void bias(half *y, const float *b, size_t rows, int C, bool with_gelu) {
        const size_t n2 = rows * C / 2;
        if (with_gelu) {
            add_bias<true><<<grid_for(n2), kThreads, 0, stream>>>(reinterpret_cast<half2 *>(y), b, n2, C / 2);
        } else {
            add_bias<false><<<grid_for(n2), kThreads, 0, stream>>>(reinterpret_cast<half2 *>(y), b, n2, C / 2);
        }
        check(cudaGetLastError(), "bias kernel");
    }

    // Y = X W^T + b (then GELU) as one cuBLASLt product, else cuBLAS and the bias pass.
    void product(const void *W, const half *X, int rows, int in, int out, half *Y, const half *b16,
                 const float *b32, bool with_gelu) {
        LtProduct p{W, X, rows, in, out, Y};
        p.epilogue = with_gelu ? LtEpilogue::kGeluBias : LtEpilogue::kBias;
        p.bias = b16;
        if (!lt->run(p)) {
            linear(W, X, rows, in, out, Y, CUDA_R_16F);
            bias(Y, b32, rows, out, with_gelu);
        }
    }

    // A decoder layer's cross K (b32 null) or V of `count` windows whose encoder output
    // rows follow each other from X, into slots slot0, slot0 + 1, ...: one batched product.
    void cross_product(const void *W, const half *X, int count, void *cache, int slot0, const half *b16,
                       const float *b32, float alpha) {
        const int T = s.n_ctx, C = s.n_state, D = s.n_text_state;
        const size_t slot_elems = static_cast<size_t>(s.n_audio_pad) * D;
        half *Y = static_cast<half *>(cache) + static_cast<size_t>(slot0) * slot_elems;
        LtProduct p{W, X, T, C, D, Y};
        p.epilogue = b16 != nullptr ? LtEpilogue::kBias : LtEpilogue::kNone;
        p.bias = b16;
        p.alpha = alpha;
        p.batch = count;
        p.x_stride = static_cast<long long>(T) * C;
        p.y_stride = static_cast<long long>(slot_elems);
        if (lt->run(p)) {
            return;
        }
        for (int i = 0; i < count; ++i) {
            half *y = Y + i * slot_elems;
            linear(W, X + static_cast<size_t>(i) * T * C, T, C, D, y, CUDA_R_16F, alpha);
            if (b32 != nullptr) {
                bias(y, b32, T, D, false);
            }
        }
    }

    // bias16's copies and bo_folded, once (kernels on the stream, waited for).
    void prepare_biases() {
        const auto padded = [](int n) { return (static_cast<size_t>(n) + 127) / 128 * 128; };  // 256 bytes
        alloc(&bias16, layers.size() * (padded(s.n_state) + padded(s.n_ff)) + cross.size() * padded(s.n_text_state));
        alloc(&bo_folded, layers.size() * s.n_state);
        half *at = bias16;
        const auto copy = [&](const float *b, int n) {
            to_half<<<(n + kThreads - 1) / kThreads, kThreads, 0, stream>>>(b, at, n);
            const half *copied = at;
            at += padded(n);
            return copied;
        };
        for (size_t l = 0; l < layers.size(); ++l) {
            const CudaEncoderLayer &L = layers[l];
            bq16.push_back(copy(L.bq, s.n_state));
            b1_16.push_back(copy(L.b1, s.n_ff));
            fold_value_bias<<<s.n_state, kThreads, 0, stream>>>(static_cast<const half *>(L.wo), L.bv, L.bo,
                                                                 bo_folded + l * s.n_state, s.n_state);
        }
        for (const CudaCrossLayer &X : cross) {
            cbv16.push_back(copy(X.bv, s.n_text_state));
        }
        check(cudaGetLastError(), "bias kernels");
        check(cudaStreamSynchronize(stream), "prepare the biases");
    }

    void norm(const float *add, const float *g, const float *b, int rows) {
        add_norm<<<rows, kThreads, 0, stream>>>(x, add, g, b, h, s.n_state);
        check(cudaGetLastError(), "norm kernel");
    }

    // Self-attention of one window's rows (all heads), output into h at the same rows.
    void attention(size_t row0) {
        const int T = s.n_ctx, C = s.n_state, hd = s.n_state / s.n_head;
        const half *Q = q + row0 * C, *K = k + row0 * C, *V = v + row0 * C;
        half *O = h + row0 * C;
        const float scale = 1.0f / sqrtf(static_cast<float>(hd)), one = 1.0f, zero = 0.0f;
        const long long per_head = static_cast<long long>(T) * ld;
        // scores[h][query][key] = scale * Q_h K_h^T  (column-major: keys x queries)
        check(cublasGemmStridedBatchedEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, &scale, K, CUDA_R_16F, C, hd,
                                         Q, CUDA_R_16F, C, hd, &zero, scores, CUDA_R_16F, ld, per_head, s.n_head,
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "attention scores");
        softmax_rows<<<s.n_head * T, kThreads, 0, stream>>>(scores, T, ld);
        check(cudaGetLastError(), "softmax kernel");
        // O_h[query][d] = P_h V_h  (column-major: d x queries, heads side by side in a row)
        check(cublasGemmStridedBatchedEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, &one, V, CUDA_R_16F, C, hd,
                                         scores, CUDA_R_16F, ld, per_head, &zero, O, CUDA_R_16F, C, hd, s.n_head,
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "attention values");
    }
};

bool CudaEncoder::full_rate_f32_accumulate(int device) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return (major == 8 && minor == 0) || (major == 9 && minor == 0) || (major == 10 && (minor == 0 || minor == 3));
}

CudaEncoder::CudaEncoder(int device, const CudaEncoderShape &shape, std::vector<CudaEncoderLayer> layers,
                         const float *ln_post_w, const float *ln_post_b, std::vector<CudaCrossLayer> cross)
    : impl_(std::make_unique<Impl>()) {
    Impl &m = *impl_;
    m.device = device;
    m.s = shape;
    m.layers = std::move(layers);
    m.ln_post_w = ln_post_w;
    m.ln_post_b = ln_post_b;
    m.cross = std::move(cross);
    if (shape.n_state > kThreads * kMaxPer || shape.n_ctx > kThreads * kMaxPer || shape.n_state % 2 != 0 ||
        shape.n_ff % 2 != 0 || shape.n_text_state % 2 != 0 || shape.n_state % shape.n_head != 0 ||
        shape.n_ctx % 2 != 0) {
        throw WhisperError("the CUDA encoder does not support this model's shape");
    }
    check(cudaSetDevice(device), "select the GPU");
    try {
        check(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "stream");
        check(cublasCreate(&m.blas), "create");
        check(cublasSetStream(m.blas, m.stream), "set stream");
        const size_t rows = static_cast<size_t>(shape.max_windows) * shape.n_ctx;
        m.alloc(&m.x, rows * shape.n_state);
        m.alloc(&m.h, rows * shape.n_state);
        m.alloc(&m.q, rows * shape.n_state);
        m.alloc(&m.k, rows * shape.n_state);
        m.alloc(&m.v, rows * shape.n_state);
        m.alloc(&m.f, rows * shape.n_ff);
        m.lt = std::make_unique<LtMatmul>(m.stream, kLtWorkspace);
        m.bytes += m.lt->memory_bytes();
        m.prepare_biases();
        m.fused = use_fused_attention(device, shape);
        if (!m.fused) {
            m.ld = (shape.n_ctx + 7) / 8 * 8;
            m.alloc(&m.scores, static_cast<size_t>(shape.n_head) * shape.n_ctx * m.ld);
        }
    } catch (...) {
        impl_.reset();  // frees what was allocated (~CudaEncoder does not run on a throw)
        throw;
    }
}

CudaEncoder::~CudaEncoder() = default;

size_t CudaEncoder::memory_bytes() const { return impl_ ? impl_->bytes : 0; }

void CudaEncoder::encode(const float *x_in, int n, const std::vector<int> &slots) {
    Impl &m = *impl_;
    const CudaEncoderShape &s = m.s;
    if (n < 1 || n > s.max_windows || static_cast<int>(slots.size()) != n) {
        throw std::invalid_argument("CUDA encoder: bad window count");
    }
    check(cudaSetDevice(m.device), "select the GPU");
    const int T = s.n_ctx, C = s.n_state;
    const int rows = n * T;
    check(cudaMemcpyAsync(m.x, x_in, static_cast<size_t>(rows) * C * sizeof(float), cudaMemcpyDeviceToDevice,
                          m.stream),
          "copy the front end's output");
    const float *pending = nullptr;  // the last MLP's bias, added by the next norm
    for (size_t l = 0; l < m.layers.size(); ++l) {
        const CudaEncoderLayer &L = m.layers[l];
        m.norm(pending, L.ln1_w, L.ln1_b, rows);
        m.product(L.wq, m.h, rows, C, C, m.q, m.bq16[l], L.bq, false);
        m.linear(L.wk, m.h, rows, C, C, m.k, CUDA_R_16F);
        m.linear(L.wv, m.h, rows, C, C, m.v, CUDA_R_16F);  // its bias is in bo_folded
        if (m.fused) {
            fused_attention(m.q, m.k, m.v, m.h, n, T, C, s.n_head,
                            1.0f / sqrtf(static_cast<float>(C / s.n_head)), m.stream);
        } else {
            for (int i = 0; i < n; ++i) {
                m.attention(static_cast<size_t>(i) * T);
            }
        }
        m.linear(L.wo, m.h, rows, C, C, m.x, CUDA_R_32F, 1.0f, 1.0f);  // x += attention W_o^T
        m.norm(m.bo_folded + l * C, L.ln2_w, L.ln2_b, rows);  // x += bo + Wo bv
        m.product(L.w1, m.h, rows, C, s.n_ff, m.f, m.b1_16[l], L.b1, true);
        m.linear(L.w2, m.f, rows, s.n_ff, C, m.x, CUDA_R_32F, 1.0f, 1.0f);  // x += mlp
        pending = L.b2;
    }
    m.norm(pending, m.ln_post_w, m.ln_post_b, rows);  // h: the encoder's output
    // Windows whose slots follow each other (the usual case: free slots are taken in
    // order) share each cross product as one batched call: a single window's 1500 x 1280
    // output is too few tiles to keep an H200's 132 SMs busy.
    for (int i = 0, j = 0; i < n; i = j) {
        for (j = i + 1; j < n && slots[j] == slots[j - 1] + 1; ++j) {
        }
        const half *enc = m.h + static_cast<size_t>(i) * T * C;
        for (size_t c = 0; c < m.cross.size(); ++c) {
            const CudaCrossLayer &X = m.cross[c];
            m.cross_product(X.wk, enc, j - i, X.ck, slots[i], nullptr, nullptr, s.kscale);
            m.cross_product(X.wv, enc, j - i, X.cv, slots[i], m.cbv16[c], X.bv, 1.0f);
        }
    }
    check(cudaStreamSynchronize(m.stream), "encode");
}

}  // namespace whisperd
