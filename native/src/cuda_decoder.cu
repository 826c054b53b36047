// The batched decoder step on CUDA (cuda_decoder.hpp says why). Row-major activations
// [rows][width]; the residual stream stays f32, the products' inputs f16. A bias that
// would be its own pass is carried ("pending") into the next layer norm, which adds it to
// the residual stream as it reads it.
#include "cuda_decoder.hpp"

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>

#include "cuda_common.cuh"
#include "cuda_cross_attention.hpp"
#include "cuda_decoder_kernels.cuh"
#include "cuda_lt.hpp"
#include "errors.hpp"

namespace whisperd {

namespace {

// Device memory that grows to the largest step seen (steps change shape as windows come
// and go; their buffers are reused, never shrunk).
struct Grown {
    void *p = nullptr;
    size_t cap = 0;
    void *need(size_t bytes, size_t &total, int &generation) {
        if (bytes > cap) {
            ++generation;  // recorded CUDA graphs hold the old address
            if (p != nullptr) {
                cudaFree(p);
                total -= cap;
                p = nullptr;
                cap = 0;
            }
            check(cudaMalloc(&p, bytes), "decoder step buffers");
            cap = bytes;
            total += bytes;
        }
        return p;
    }
    ~Grown() {
        if (p != nullptr) {
            cudaFree(p);
        }
    }
};

}  // namespace

struct CudaDecoder::Impl {
    int device = 0;
    CudaDecoderShape s{};
    CudaDecoderModel m;
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    size_t bytes = 0;
    int generation = 0;  // bumped whenever a buffer moves
    // activations; qkv [row][3 C] (q | k | v), whose first rows * C also hold the
    // cross-attention's query (packed) once self-attention has read it
    Grown x, h, qkv, a, f, part, hout;
    float *logits = nullptr;                                // the caller's
    // The step's inputs (tokens, positions, kv_rows, mask, out_rows, each 256-byte
    // aligned) as one upload from pinned memory: five pageable copies, each staged and
    // waited for by the host, came before every step's launch.
    Grown inputs;
    char *staging = nullptr;
    size_t staging_cap = 0;
    const int32_t *tok_d = nullptr, *pos_d = nullptr, *out_d = nullptr;
    const int64_t *kv_d = nullptr;
    const uint16_t *mask_d = nullptr;
    void *workspace = nullptr;                              // cuBLAS's, fixed for graph capture
    static constexpr size_t kWorkspace = 32u << 20;
    // Q, K and V as one batched product: per layer 9 device pointers (wq, wk, wv; h three
    // times; qkv, qkv + C, qkv + 2C), rewritten when the buffers move (recorded graphs
    // hold the array's address, and read what it holds when they run).
    bool fused_products = true;  // WHISPERD_CUDA_STEP_FUSION
    void **qkv_ptrs = nullptr;
    std::vector<void *> qkv_host;
    int ptr_generation = -1;
    // FC1's bias and GELU in its product (cuBLASLt's epilogue, cuBLAS's workspace), which
    // takes f16 biases: b1 copied once, per layer 256-byte aligned.
    std::unique_ptr<LtMatmul> lt;
    half *b1_16 = nullptr;
    // WHISPERD_CUDA_STEP_TUNE: the other products through cuBLASLt too, each shape's
    // algorithm timed once (LtMatmul::set_tuning) against cuBLAS's own choice: a step
    // recorded with products not timed yet is run once unrecorded, which times them, and
    // recorded again.
    bool tuned_products = true;
    std::map<int, bool> qkv_batched;  // rows -> the batched Q/K/V product was timed faster
    // The step's ~500 kernels recorded once per shape and replayed (launching them one by
    // one costs more than running them at small batches). Key: W, R, n_kv, r_out.
    bool use_graphs = true;
    struct Recorded {
        cudaGraphExec_t exec = nullptr;
        int generation = -1;
    };
    std::map<std::tuple<int, int, int, int>, Recorded> graphs;
    // WHISPERD_CROSS_KV_INT8: per layer the int8 copy of ck/cv (one allocation: k, v, then
    // the scales), fixed for the decoder's life (recorded graphs hold the addresses).
    std::vector<CrossInt8> int8;
    std::vector<void *> int8_mem;
    int *slot_list = nullptr;  // quantize_cross's slots, on the device

    ~Impl() {
        cudaSetDevice(device);
        if (stream != nullptr) {
            cudaStreamSynchronize(stream);
        }
        for (auto &g : graphs) {
            if (g.second.exec != nullptr) {
                cudaGraphExecDestroy(g.second.exec);
            }
        }
        lt.reset();
        if (workspace != nullptr) {
            cudaFree(workspace);
        }
        for (void *p : {static_cast<void *>(qkv_ptrs), static_cast<void *>(b1_16)}) {
            if (p != nullptr) {
                cudaFree(p);
            }
        }
        for (void *p : int8_mem) {
            cudaFree(p);
        }
        if (staging != nullptr) {
            cudaFreeHost(staging);
        }
        if (slot_list != nullptr) {
            cudaFree(slot_list);
        }
        if (blas != nullptr) {
            cublasDestroy(blas);
        }
        if (stream != nullptr) {
            cudaStreamDestroy(stream);
        }
    }

    template <typename T>
    T *buf(Grown &g, size_t count) {
        return static_cast<T *>(g.need(count * sizeof(T), bytes, generation));
    }

    void upload(const CudaStepInputs &in);

    // Y = X W^T + beta Y (Y f16 or f32): the fastest of cuBLASLt's candidates and cuBLAS's
    // own choice (timed once per shape), else cuBLAS's.
    // Y's rows are ldy apart (0: packed).
    void product(const void *W, const half *X, int rows, int in, int out, void *Y, cudaDataType yt,
                 float beta = 0.0f, int ldy = 0) {
        if (tuned_products) {
            LtProduct p{W, X, rows, in, out, Y};
            p.y_type = yt;
            p.beta = beta;
            p.ldy = ldy;
            if (lt->run(p, [&](void *y) { linear(blas, W, X, rows, in, out, y, yt, 1.0f, beta, ldy); })) {
                return;
            }
        }
        linear(blas, W, X, rows, in, out, Y, yt, 1.0f, beta, ldy);
    }

    // Layer l's Q, K and V of h into qkv: one batched cuBLAS product, or three products
    // (as `product` takes them), whichever was timed faster at this many rows (tuning on;
    // while recording before that, the batched one, noted for an unrecorded run).
    void qkv_product(size_t l, const half *hs, int rows, half *out) {
        const CudaDecoderLayer &L = m.layers[l];
        const int C = s.n_state;
        const auto batched = [&] {
            const float one = 1.0f, zero = 0.0f;
            void **p = qkv_ptrs + l * 9;
            check(cublasGemmBatchedEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, C, rows, C, &one, p, CUDA_R_16F, C, p + 3,
                                      CUDA_R_16F, C, &zero, p + 6, CUDA_R_16F, 3 * C, 3, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT),
                  "the Q/K/V product");
        };
        const auto separate = [&] {
            const void *w[3] = {L.wq, L.wk, L.wv};
            for (int j = 0; j < 3; ++j) {
                product(w[j], hs, rows, C, C, out + j * C, CUDA_R_16F, 0.0f, 3 * C);
            }
        };
        if (!fused_products || !tuned_products) {
            fused_products ? batched() : separate();
            return;
        }
        auto it = qkv_batched.find(rows);
        if (it == qkv_batched.end()) {
            if (lt->recording()) {
                lt->note_untimed();
                batched();
                return;
            }
            separate();  // the three products' own timing, before theirs against the batched one
            const float tb = lt->time_ms(batched), ts = lt->time_ms(separate);
            it = qkv_batched.emplace(rows, tb >= 0.0f && (ts < 0.0f || tb <= ts)).first;
        }
        it->second ? batched() : separate();
    }

    void norm(float *xs, const float *pending, const float *g, const float *b, half *out, int rows) {
        add_norm<<<rows, kThreads, 0, stream>>>(xs, pending, g, b, out, s.n_state);
        check(cudaGetLastError(), "norm kernel");
    }

    void kernels(const CudaStepInputs &in);
    void record(const CudaStepInputs &in, cudaGraphExec_t &exec);
    void alloc_int8();
    void prepare_fused();
    void point_qkv();

    size_t b1_stride() const { return (static_cast<size_t>(s.n_ff) + 127) / 128 * 128; }

    // Bytes of a slot's int8 rows (K or V) and of its scales, one layer.
    size_t int8_rows() const { return static_cast<size_t>(s.n_audio_ctx) * s.n_state; }
    size_t int8_scales() const { return static_cast<size_t>(s.n_audio_ctx) * s.n_head * sizeof(half2); }
};

void CudaDecoder::Impl::alloc_int8() {
    const size_t rows = static_cast<size_t>(s.n_slots) * int8_rows();
    const size_t size = 2 * rows + static_cast<size_t>(s.n_slots) * int8_scales();
    for (size_t l = 0; l < m.layers.size(); ++l) {
        void *p = nullptr;
        check(cudaMalloc(&p, size), "the int8 cross K/V");
        int8_mem.push_back(p);
        bytes += size;
        // zeros: a step covers empty slots too, whose copy must hold finite numbers (on
        // this stream: it does not wait for the legacy default stream)
        check(cudaMemsetAsync(p, 0, size, stream), "clear the int8 cross K/V");
        int8_t *b = static_cast<int8_t *>(p);
        int8.push_back(CrossInt8{b, b + rows, reinterpret_cast<const half2 *>(b + 2 * rows)});
    }
    check(cudaMalloc(reinterpret_cast<void **>(&slot_list), static_cast<size_t>(s.n_slots) * sizeof(int)),
          "the int8 cross K/V's slot list");
    check(cudaStreamSynchronize(stream), "clear the int8 cross K/V");
}

void CudaDecoder::Impl::prepare_fused() {
    const size_t n = m.layers.size();
    check(cudaMalloc(reinterpret_cast<void **>(&qkv_ptrs), n * 9 * sizeof(void *)), "the Q/K/V product's pointers");
    bytes += n * 9 * sizeof(void *);
    qkv_host.assign(n * 9, nullptr);
    check(cudaMalloc(reinterpret_cast<void **>(&b1_16), n * b1_stride() * sizeof(half)), "f16 biases");
    bytes += n * b1_stride() * sizeof(half);
    for (size_t l = 0; l < n; ++l) {
        to_half<<<(s.n_ff + kThreads - 1) / kThreads, kThreads, 0, stream>>>(m.layers[l].b1, b1_16 + l * b1_stride(),
                                                                            s.n_ff);
        check(cudaGetLastError(), "f16 biases");
    }
    check(cudaStreamSynchronize(stream), "f16 biases");
}

// The Q/K/V product's pointer arrays for the buffers as they are now (before a step is
// run or recorded; the previous step has finished: step() waits for it).
void CudaDecoder::Impl::point_qkv() {
    if (qkv_ptrs == nullptr || ptr_generation == generation) {
        return;
    }
    const size_t C = s.n_state;
    half *out = static_cast<half *>(qkv.p);
    for (size_t l = 0; l < m.layers.size(); ++l) {
        const CudaDecoderLayer &L = m.layers[l];
        void **p = qkv_host.data() + l * 9;
        p[0] = const_cast<void *>(L.wq);
        p[1] = const_cast<void *>(L.wk);
        p[2] = const_cast<void *>(L.wv);
        p[3] = p[4] = p[5] = h.p;
        p[6] = out;
        p[7] = out + C;
        p[8] = out + 2 * C;
    }
    check(cudaMemcpyAsync(qkv_ptrs, qkv_host.data(), qkv_host.size() * sizeof(void *), cudaMemcpyHostToDevice, stream),
          "the Q/K/V product's pointers");
    ptr_generation = generation;
}

CudaDecoder::CudaDecoder(int device, const CudaDecoderShape &shape, CudaDecoderModel model)
    : impl_(std::make_unique<Impl>()) {
    Impl &m = *impl_;
    m.device = device;
    m.s = shape;
    m.m = std::move(model);
    if (shape.n_state != shape.n_head * kHead || shape.n_state > kThreads * kMaxPer || shape.n_ff % 2 != 0 ||
        shape.n_audio_pad % 128 != 0 || shape.n_audio_ctx < 1 || shape.n_audio_ctx > shape.n_audio_pad ||
        (shape.cross_int8 && shape.n_slots < 1) || m.m.layers.empty()) {
        throw WhisperError("the CUDA decoder does not support this model's shape");
    }
    check(cudaSetDevice(device), "select the GPU");
    try {
        check(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "stream");
        check(cublasCreate(&m.blas), "create");
        check(cublasSetStream(m.blas, m.stream), "set stream");
        check(cudaMalloc(&m.workspace, Impl::kWorkspace), "cuBLAS workspace");
        m.bytes += Impl::kWorkspace;
        check(cublasSetWorkspace(m.blas, m.workspace, Impl::kWorkspace), "set workspace");
        const char *g = std::getenv("WHISPERD_CUDA_GRAPHS");  // 0: launch one by one (tests, profiling)
        m.use_graphs = g == nullptr || std::string(g) != "0";
        m.lt = std::make_unique<LtMatmul>(m.stream, Impl::kWorkspace, m.workspace);
        m.tuned_products = shape.tuned_products;
        m.lt->set_tuning(m.tuned_products);
        m.fused_products = shape.fused_products;
        if (m.fused_products) {
            m.prepare_fused();
        }
        if (shape.cross_int8) {
            if (cross_int8_supported(shape.n_state, shape.n_head)) {
                m.alloc_int8();
            } else {
                fprintf(stderr, "whisperd: WHISPERD_CROSS_KV_INT8 ignored: no int8 kernel for %d heads\n",
                        shape.n_head);
            }
        }
    } catch (...) {
        impl_.reset();
        throw;
    }
}

CudaDecoder::~CudaDecoder() = default;

size_t CudaDecoder::memory_bytes() const { return impl_ ? impl_->bytes : 0; }

bool CudaDecoder::cross_int8() const { return impl_ && !impl_->int8.empty(); }

void CudaDecoder::quantize_cross(const std::vector<int> &slots) {
    Impl &m = *impl_;
    if (m.int8.empty() || slots.empty()) {
        return;
    }
    const CudaDecoderShape &s = m.s;
    if (static_cast<int>(slots.size()) > s.n_slots) {
        throw std::invalid_argument("quantize_cross: more slots than the caches hold");
    }
    for (int slot : slots) {
        if (slot < 0 || slot >= s.n_slots) {
            throw std::invalid_argument("quantize_cross: no such slot");
        }
    }
    check(cudaSetDevice(m.device), "select the GPU");
    check(cudaMemcpyAsync(m.slot_list, slots.data(), slots.size() * sizeof(int), cudaMemcpyHostToDevice, m.stream),
          "upload the slots to quantise");
    for (size_t l = 0; l < m.int8.size(); ++l) {
        const CudaDecoderLayer &L = m.m.layers[l];
        const CrossInt8 &X = m.int8[l];
        whisperd::quantize_cross(static_cast<const half *>(L.ck), static_cast<const half *>(L.cv),
                                 const_cast<int8_t *>(X.k), const_cast<int8_t *>(X.v), const_cast<half2 *>(X.scales),
                                 m.slot_list, static_cast<int>(slots.size()), s.n_state, s.n_audio_pad,
                                 s.n_audio_ctx, s.n_head, m.stream);
    }
    check(cudaStreamSynchronize(m.stream), "quantise the cross K/V");
}

void CudaDecoder::move_cross(int from, int to) {
    Impl &m = *impl_;
    if (m.int8.empty() || from == to) {
        return;
    }
    if (from < 0 || to < 0 || from >= m.s.n_slots || to >= m.s.n_slots) {
        throw std::invalid_argument("move_cross: no such slot");
    }
    check(cudaSetDevice(m.device), "select the GPU");
    const size_t rows = m.int8_rows(), sc = m.int8_scales();
    for (const CrossInt8 &X : m.int8) {
        int8_t *k = const_cast<int8_t *>(X.k), *v = const_cast<int8_t *>(X.v);
        char *scales = reinterpret_cast<char *>(const_cast<half2 *>(X.scales));
        check(cudaMemcpyAsync(k + to * rows, k + from * rows, rows, cudaMemcpyDeviceToDevice, m.stream), "move");
        check(cudaMemcpyAsync(v + to * rows, v + from * rows, rows, cudaMemcpyDeviceToDevice, m.stream), "move");
        check(cudaMemcpyAsync(scales + to * sc, scales + from * sc, sc, cudaMemcpyDeviceToDevice, m.stream), "move");
    }
    check(cudaStreamSynchronize(m.stream), "move a slot's int8 cross K/V");
}

// The inputs into `inputs` (the previous step has finished with both copies: step()
// waits for it). Their places depend only on the step's shape, which a recorded step's
// key holds.
void CudaDecoder::Impl::upload(const CudaStepInputs &in) {
    const size_t rows = static_cast<size_t>(in.W) * in.R, n_out = static_cast<size_t>(in.W) * in.r_out;
    const auto padded = [](size_t n) { return (n + 255) / 256 * 256; };
    const size_t sizes[5] = {rows * sizeof(int32_t), rows * sizeof(int32_t), rows * sizeof(int64_t),
                             rows * in.n_kv * sizeof(uint16_t), n_out * sizeof(int32_t)};
    const void *src[5] = {in.tokens, in.positions, in.kv_rows, in.mask, in.out_rows};
    size_t at[5], total = 0;
    for (int i = 0; i < 5; ++i) {
        at[i] = total;
        total += padded(sizes[i]);
    }
    if (total > staging_cap) {
        if (staging != nullptr) {
            check(cudaFreeHost(staging), "free the step's input staging");
            staging = nullptr;
            staging_cap = 0;
        }
        check(cudaMallocHost(reinterpret_cast<void **>(&staging), total), "the step's input staging");
        staging_cap = total;
    }
    for (int i = 0; i < 5; ++i) {
        std::memcpy(staging + at[i], src[i], sizes[i]);
    }
    char *d = buf<char>(inputs, total);
    check(cudaMemcpyAsync(d, staging, total, cudaMemcpyHostToDevice, stream), "upload a step's inputs");
    tok_d = reinterpret_cast<const int32_t *>(d + at[0]);
    pos_d = reinterpret_cast<const int32_t *>(d + at[1]);
    kv_d = reinterpret_cast<const int64_t *>(d + at[2]);
    mask_d = reinterpret_cast<const uint16_t *>(d + at[3]);
    out_d = reinterpret_cast<const int32_t *>(d + at[4]);
}

void CudaDecoder::step(const CudaStepInputs &in, float *logits) {
    Impl &m = *impl_;
    check(cudaSetDevice(m.device), "select the GPU");
    if (logits != m.logits) {
        m.logits = logits;
        ++m.generation;
    }
    const int rows = in.W * in.R, n_out = in.W * in.r_out;
    m.upload(in);
    const int C = m.s.n_state;
    m.buf<float>(m.x, static_cast<size_t>(rows) * C);
    for (Grown *g : {&m.h, &m.a}) {
        m.buf<half>(*g, static_cast<size_t>(rows) * C);
    }
    m.buf<half>(m.qkv, static_cast<size_t>(rows) * 3 * C);
    m.buf<half>(m.f, static_cast<size_t>(rows) * m.s.n_ff);
    m.buf<float>(m.part, cross_part_floats(rows, m.s.n_head, m.s.n_audio_pad));
    m.buf<half>(m.hout, static_cast<size_t>(n_out) * C);
    m.point_qkv();
    if (!m.use_graphs) {
        m.kernels(in);
    } else {
        Impl::Recorded &g = m.graphs[std::make_tuple(in.W, in.R, in.n_kv, in.r_out)];
        if (g.exec == nullptr || g.generation != m.generation) {
            m.lt->take_untimed();
            m.record(in, g.exec);
            if (m.lt->take_untimed()) {
                m.kernels(in);  // unrecorded: cuBLASLt times the new shapes' candidates
                m.record(in, g.exec);
            }
            g.generation = m.generation;
        }
        check(cudaGraphLaunch(g.exec, m.stream), "replay a step");
    }
    check(cudaStreamSynchronize(m.stream), "decoder step");
}

// The step's kernels recorded into a CUDA graph, instantiated into `exec` (replacing what
// it held).
void CudaDecoder::Impl::record(const CudaStepInputs &in, cudaGraphExec_t &exec) {
    if (exec != nullptr) {
        check(cudaGraphExecDestroy(exec), "drop a recorded step");
        exec = nullptr;
    }
    cudaGraph_t graph = nullptr;
    check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "record a step");
    try {
        kernels(in);
    } catch (...) {
        cudaStreamEndCapture(stream, &graph);
        if (graph != nullptr) {
            cudaGraphDestroy(graph);
        }
        throw;
    }
    check(cudaStreamEndCapture(stream, &graph), "record a step");
    const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    check(e, "instantiate a recorded step");
}

void CudaDecoder::Impl::kernels(const CudaStepInputs &in) {
    Impl &m = *this;
    const CudaDecoderShape &s = m.s;
    const int rows = in.W * in.R, n_out = in.W * in.r_out, C = s.n_state, C2 = C / 2;
    const int32_t *tok = tok_d, *pos = pos_d, *outs = out_d;
    const int64_t *kvr = kv_d;
    const uint16_t *mask = mask_d;
    // step() sized every buffer for this shape
    float *x = static_cast<float *>(m.x.p), *part = static_cast<float *>(m.part.p);
    half *h = static_cast<half *>(m.h.p), *qkv = static_cast<half *>(m.qkv.p);
    half *q = qkv;  // the cross-attention's query, packed [rows][C]
    half *a = static_cast<half *>(m.a.p), *f = static_cast<half *>(m.f.p);
    half *hout = static_cast<half *>(m.hout.p);
    const size_t self_smem = static_cast<size_t>(in.n_kv) * (sizeof(float) + sizeof(int));
    const float *pending = nullptr;
    for (size_t l = 0; l < m.m.layers.size(); ++l) {
        const CudaDecoderLayer &L = m.m.layers[l];
        // self-attention: the first layer's norm is the embedding's kernel's
        if (l == 0) {
            embed_norm<<<rows, kThreads, 0, m.stream>>>(tok, pos, static_cast<const half *>(m.m.token_embedding),
                                                        m.m.positional_embedding, x, L.ln1_w, L.ln1_b, h, C);
            check(cudaGetLastError(), "embedding kernel");
        } else {
            m.norm(x, pending, L.ln1_w, L.ln1_b, h, rows);
        }
        m.qkv_product(l, h, rows, qkv);
        self_attention<<<dim3(s.n_head, rows), kSelfWarps * 32, self_smem, m.stream>>>(
            reinterpret_cast<const half2 *>(qkv), L.bq, L.bv, kvr, static_cast<half2 *>(L.sk),
            static_cast<half2 *>(L.sv), mask, reinterpret_cast<half2 *>(a), in.R, in.n_kv, s.n_cells, C2, s.kq_scale);
        check(cudaGetLastError(), "self-attention kernel");
        m.product(L.wo, a, rows, C, C, x, CUDA_R_32F, 1.0f);
        // cross-attention (the query's bias is added as the kernel reads it)
        m.norm(x, L.bo, L.ln2_w, L.ln2_b, h, rows);
        m.product(L.cwq, h, rows, C, C, q, CUDA_R_16F);
        const CrossInt8 *q8 = m.int8.empty() ? nullptr : &m.int8[l];
        cross_attention(q, L.cbq, static_cast<const half *>(L.ck), static_cast<const half *>(L.cv), q8, part, a,
                        in.W, in.R, C, s.n_audio_pad, s.n_audio_ctx, s.n_head, s.kq_scale, m.stream);
        m.product(L.cwo, a, rows, C, C, x, CUDA_R_32F, 1.0f);
        // MLP: FC1's bias and GELU in its product where cuBLASLt has one for it (the bias
        // rounded to f16, added to the f32 sums: one rounding of the output, not two)
        m.norm(x, L.cbo, L.ln3_w, L.ln3_b, h, rows);
        const size_t n2 = static_cast<size_t>(rows) * s.n_ff / 2;
        const auto fc1_bias = [&](void *y) {  // the bias and GELU as their own pass
            add_bias<true><<<grid_for(n2), kThreads, 0, m.stream>>>(static_cast<half2 *>(y), L.b1, n2, s.n_ff / 2);
            check(cudaGetLastError(), "bias kernel");
        };
        bool fc1_done = false;
        if (m.fused_products) {
            LtProduct fc1{L.w1, h, rows, C, s.n_ff, f};
            fc1.epilogue = LtEpilogue::kGeluBias;
            fc1.bias = m.b1_16 + l * m.b1_stride();
            fc1_done = m.lt->run(fc1, [&](void *y) {
                linear(m.blas, L.w1, h, rows, C, s.n_ff, y, CUDA_R_16F);
                fc1_bias(y);
            });
        }
        if (!fc1_done) {
            m.product(L.w1, h, rows, C, s.n_ff, f, CUDA_R_16F);
            fc1_bias(f);
        }
        m.product(L.w2, f, rows, s.n_ff, C, x, CUDA_R_32F, 1.0f);
        pending = L.b2;
    }
    norm_gather<<<n_out, kThreads, 0, m.stream>>>(x, outs, pending, m.m.ln_w, m.m.ln_b, hout, C);
    check(cudaGetLastError(), "final norm kernel");
    m.product(m.m.token_embedding, hout, n_out, C, s.n_vocab, logits, CUDA_R_32F);
}

}  // namespace whisperd
