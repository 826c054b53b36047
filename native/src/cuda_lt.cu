// cuBLASLt products with a fused epilogue (cuda_lt.hpp says why). Row-major Y = X W^T is
// the column-major Y^T = W^T X^T over the same memory (as `linear` in cuda_common.cuh), so
// the output's rows in cuBLASLt's terms are our output columns: its bias epilogue, which
// broadcasts a vector over the rows of D ("bias vector length must match matrix D rows"),
// adds one value per output feature, as Whisper's biases are.
#include "cuda_lt.hpp"

#include <cublasLt.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "cuda_common.cuh"
#include "errors.hpp"

namespace whisperd {

namespace {

// The largest power of two up to 256 that p is aligned to: cuBLASLt's heuristic assumes
// 256-byte aligned matrices unless told otherwise, and its kernels may then fail on less.
uint32_t alignment(const void *p) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    uint32_t al = 256;
    while (al > 1 && a % al != 0) {
        al /= 2;
    }
    return al;
}

cublasLtEpilogue_t lt_epilogue(LtEpilogue e) {
    switch (e) {
    case LtEpilogue::kBias:
        return CUBLASLT_EPILOGUE_BIAS;
    case LtEpilogue::kGeluBias:
        // cuBLASLt's GELU is the tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x +
        // 0.044715 x^3))) (PyTorch's fused addmm + GELU, which calls this epilogue, is
        // documented as approximate='tanh' on CUDA for that reason): the form of gelu() in
        // cuda_common.cuh, ggml's and so whisper.cpp's. The bias is added to the f32
        // accumulator first and the GELU taken in f32, then one rounding to f16 (the
        // separate pass rounded the product to f16 before adding the bias).
        return CUBLASLT_EPILOGUE_GELU_BIAS;
    case LtEpilogue::kNone:
        break;
    }
    return CUBLASLT_EPILOGUE_DEFAULT;
}

template <typename T>
void set(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const T &v, const char *what) {
    check(cublasLtMatmulDescSetAttribute(d, a, &v, sizeof(v)), what);
}

template <typename T>
void set(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t a, const T &v, const char *what) {
    check(cublasLtMatrixLayoutSetAttribute(l, a, &v, sizeof(v)), what);
}

template <typename T>
void set(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a, const T &v, const char *what) {
    check(cublasLtMatmulPreferenceSetAttribute(p, a, &v, sizeof(v)), what);
}

// Holds the stream for about `cycles` clocks: the timed products enqueued behind it then
// run back to back, so that their time is the GPU's, not the host's launches'.
__global__ void hold(long long cycles) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}

}  // namespace

struct LtMatmul::Impl {
    // One shape's descriptors and algorithm; ok false: cuBLASLt has none for it here.
    struct Plan {
        cublasLtMatmulDesc_t desc = nullptr;
        cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
        cublasLtMatmulAlgo_t algo{};
        bool ok = false;
        std::vector<cublasLtMatmulAlgo_t> candidates;  // tuning's, best first by the heuristic
        bool tuned = false;
        bool other = false;  // the caller's other way was timed faster
    };
    struct Choice {
        cublasLtMatmulAlgo_t algo;
        bool other;
    };
    // out, rows, in, epilogue, batch, x_stride, y_stride, the alignments of W, X, Y and
    // the bias (the algorithm is chosen for them), Y's type, whether beta is 0, Y's row pitch
    using Key = std::tuple<int, int, int, int, int, long long, long long, uint32_t, uint32_t, uint32_t, uint32_t, int,
                           bool, long long>;
    static constexpr int kCandidates = 16;

    // Tuning's choices for the whole process, by device and shape: a decoder made later
    // (a benchmark's next batch size, a model loaded again) takes them without timing.
    static std::mutex &chosen_lock() {
        static std::mutex mu;
        return mu;
    }
    static std::map<std::pair<int, Key>, Choice> &chosen() {
        static std::map<std::pair<int, Key>, Choice> c;
        return c;
    }
    int device = 0;

    cublasLtHandle_t lt = nullptr;
    cudaStream_t stream = nullptr;
    void *workspace = nullptr;
    size_t workspace_bytes = 0;
    bool owned = true;  // the workspace is ours to free
    bool tuning = false;
    bool untimed = false;  // a product enqueued untimed since take_untimed()
    std::map<Key, Plan> plans;

    ~Impl() {
        for (auto &kv : plans) {
            destroy(kv.second);
        }
        if (workspace != nullptr && owned) {
            cudaFree(workspace);
        }
        if (lt != nullptr) {
            cublasLtDestroy(lt);
        }
    }

    static void destroy(Plan &p) {
        if (p.desc != nullptr) {
            cublasLtMatmulDescDestroy(p.desc);
        }
        for (cublasLtMatrixLayout_t l : {p.a, p.b, p.d}) {
            if (l != nullptr) {
                cublasLtMatrixLayoutDestroy(l);
            }
        }
    }

    static Key key_of(const LtProduct &p) {
        return Key{p.out,
                   p.rows,
                   p.in,
                   static_cast<int>(p.epilogue),
                   p.batch,
                   p.x_stride,
                   p.y_stride,
                   alignment(p.w),
                   alignment(p.x),
                   alignment(p.y),
                   alignment(p.bias),
                   static_cast<int>(p.y_type),
                   p.beta == 0.0f,
                   p.ldy};
    }

    Plan &plan(const LtProduct &p) {
        const Key key = key_of(p);
        auto found = plans.find(key);
        if (found != plans.end()) {
            return found->second;
        }
        Plan pl;
        try {
            make(p, pl);
        } catch (...) {
            destroy(pl);
            throw;
        }
        return plans.emplace(key, pl).first->second;
    }

    void make(const LtProduct &p, Plan &pl) {
        check(cublasLtMatmulDescCreate(&pl.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "Lt descriptor");
        set(pl.desc, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T, "Lt transpose");
        set(pl.desc, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N, "Lt transpose");
        set(pl.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, lt_epilogue(p.epilogue), "Lt epilogue");
        if (p.epilogue != LtEpilogue::kNone) {
            // The bias's type is left at its default, D's (f16): the one every cuBLAS
            // version takes for f16 outputs. Set here too because the heuristic reads
            // the pointer's alignment; run() sets each call's own.
            set(pl.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void *>(p.bias), "Lt bias");
        }
        // W f16 [out][in] row-major = column-major in x out, transposed; X column-major
        // in x rows; Y column-major out x rows. Batches: W shared (stride 0).
        check(cublasLtMatrixLayoutCreate(&pl.a, CUDA_R_16F, p.in, p.out, p.in), "Lt layout");
        check(cublasLtMatrixLayoutCreate(&pl.b, CUDA_R_16F, p.in, p.rows, p.in), "Lt layout");
        check(cublasLtMatrixLayoutCreate(&pl.d, p.y_type, p.out, p.rows, p.ldy > 0 ? p.ldy : p.out), "Lt layout");
        if (p.batch > 1) {
            const int64_t zero = 0, x_stride = p.x_stride, y_stride = p.y_stride;
            const int32_t batch = p.batch;
            for (cublasLtMatrixLayout_t l : {pl.a, pl.b, pl.d}) {
                set(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, batch, "Lt batch");
            }
            set(pl.a, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, zero, "Lt batch stride");
            set(pl.b, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, x_stride, "Lt batch stride");
            set(pl.d, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, y_stride, "Lt batch stride");
        }
        cublasLtMatmulPreference_t pref = nullptr;
        check(cublasLtMatmulPreferenceCreate(&pref), "Lt preference");
        cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
        const int wanted = tuning ? kCandidates : 1;
        int found = 0;
        cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
        try {
            const uint64_t ws = workspace_bytes;
            set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, ws, "Lt workspace");
            set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment(p.w), "Lt alignment");
            set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment(p.x), "Lt alignment");
            set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment(p.y), "Lt alignment");
            set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment(p.y), "Lt alignment");
            st = cublasLtMatmulAlgoGetHeuristic(lt, pl.desc, pl.a, pl.b, pl.d, pl.d, pref, wanted, results, &found);
        } catch (...) {
            cublasLtMatmulPreferenceDestroy(pref);
            throw;
        }
        cublasLtMatmulPreferenceDestroy(pref);
        if (st == CUBLAS_STATUS_NOT_SUPPORTED || (st == CUBLAS_STATUS_SUCCESS && found == 0)) {
            return;  // ok stays false, kept: the caller's other way, every time
        }
        check(st, "Lt heuristic");
        check(results[0].state, "Lt heuristic");
        pl.algo = results[0].algo;
        pl.ok = true;
        for (int i = 0; i < found; ++i) {
            if (results[i].state == CUBLAS_STATUS_SUCCESS) {
                pl.candidates.push_back(results[i].algo);
            }
        }
        pl.tuned = !tuning || pl.candidates.empty();
    }

    static size_t element_bytes(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }

    // pl.algo = the fastest of pl.candidates on p's operands, each run into scratch memory
    // (C and D alike: beta != 0 reads scratch, not Y) and timed over a few repeats; and
    // `other` (the caller's way, given the scratch as its Y) too: pl.other when it wins.
    // Only while the stream is not being recorded (synchronises with it); errors of a
    // candidate just leave it out.
    void tune(const LtProduct &p, Plan &pl, const std::function<void(void *)> &other) {
        pl.tuned = true;
        const size_t pitch = p.ldy > 0 ? static_cast<size_t>(p.ldy) : static_cast<size_t>(p.out);
        const size_t y_bytes =
            (static_cast<size_t>(p.batch - 1) * static_cast<size_t>(p.y_stride) + static_cast<size_t>(p.rows) * pitch) *
            element_bytes(p.y_type);
        void *scratch = nullptr;
        cudaEvent_t start = nullptr, stop = nullptr;
        if (cudaMalloc(&scratch, y_bytes) != cudaSuccess || cudaEventCreate(&start) != cudaSuccess ||
            cudaEventCreate(&stop) != cudaSuccess) {
            cudaGetLastError();  // no room to tune: the heuristic's choice stays
        } else if (cudaMemsetAsync(scratch, 0, y_bytes, stream) == cudaSuccess) {
            const auto timed = [&](const std::function<bool()> &once) { return time_ms(once, start, stop); };
            float best = -1.0f;
            for (const cublasLtMatmulAlgo_t &algo : pl.candidates) {
                const float ms = timed([&] {
                    return cublasLtMatmul(lt, pl.desc, &p.alpha, p.w, pl.a, p.x, pl.b, &p.beta, scratch, pl.d,
                                          scratch, pl.d, &algo, workspace, workspace_bytes, stream) ==
                           CUBLAS_STATUS_SUCCESS;
                });
                if (ms >= 0.0f && (best < 0.0f || ms < best)) {
                    best = ms;
                    pl.algo = algo;
                }
            }
            if (other) {
                const float ms = timed([&] {
                    try {
                        other(scratch);
                        return true;
                    } catch (const std::exception &) {
                        return false;
                    }
                });
                pl.other = ms >= 0.0f && (best < 0.0f || ms < best);
            }
        }
        cudaStreamSynchronize(stream);  // scratch is free to go
        for (cudaEvent_t e : {start, stop}) {
            if (e != nullptr) {
                cudaEventDestroy(e);
            }
        }
        if (scratch != nullptr) {
            cudaFree(scratch);
        }
        cudaGetLastError();
    }

    // ms of kRepeats runs of `once` after a warm-up one (false: it failed; then -1), behind
    // a kernel that holds the stream long enough for the host to enqueue them all.
    float time_ms(const std::function<bool()> &once, cudaEvent_t start, cudaEvent_t stop) {
        constexpr int kRepeats = 5;
        if (!once()) {
            return -1.0f;
        }
        hold<<<1, 1, 0, stream>>>(100000);  // ~60 us
        bool ran = cudaEventRecord(start, stream) == cudaSuccess;
        for (int r = 0; r < kRepeats && ran; ++r) {
            ran = once();
        }
        float ms = 0.0f;
        if (ran && cudaEventRecord(stop, stream) == cudaSuccess && cudaEventSynchronize(stop) == cudaSuccess &&
            cudaEventElapsedTime(&ms, start, stop) == cudaSuccess) {
            return ms;
        }
        return -1.0f;
    }

    bool recording() const {
        cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
        return cudaStreamIsCapturing(stream, &status) != cudaSuccess || status != cudaStreamCaptureStatusNone;
    }
};

LtMatmul::LtMatmul(cudaStream_t stream, size_t workspace_bytes, void *shared) : impl_(std::make_unique<Impl>()) {
    Impl &m = *impl_;
    m.stream = stream;
    check(cudaGetDevice(&m.device), "Lt device");
    check(cublasLtCreate(&m.lt), "Lt create");
    if (shared != nullptr) {
        m.workspace = shared;
        m.workspace_bytes = workspace_bytes;
        m.owned = false;
    } else if (workspace_bytes > 0) {
        check(cudaMalloc(&m.workspace, workspace_bytes), "cuBLASLt workspace");
        m.workspace_bytes = workspace_bytes;
    }
}

LtMatmul::~LtMatmul() = default;

size_t LtMatmul::memory_bytes() const { return impl_->owned ? impl_->workspace_bytes : 0; }

bool LtMatmul::run(const LtProduct &p, const std::function<void(void *)> &other) {
    Impl &m = *impl_;
    Impl::Plan &pl = m.plan(p);
    if (!pl.ok) {
        return false;
    }
    if (p.epilogue != LtEpilogue::kNone) {
        set(pl.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void *>(p.bias), "Lt bias");
    }
    if (m.tuning && !pl.tuned) {
        const std::pair<int, Impl::Key> at{m.device, Impl::key_of(p)};
        {
            std::lock_guard<std::mutex> lock(Impl::chosen_lock());
            const auto c = Impl::chosen().find(at);
            if (c != Impl::chosen().end()) {
                pl.algo = c->second.algo;
                pl.other = c->second.other;
                pl.tuned = true;
            }
        }
        if (!pl.tuned && !m.recording()) {
            m.tune(p, pl, other);
            std::lock_guard<std::mutex> lock(Impl::chosen_lock());
            Impl::chosen()[at] = Impl::Choice{pl.algo, pl.other};
        }
        m.untimed = m.untimed || !pl.tuned;
    }
    if (pl.other && other) {
        return false;  // the caller's way was faster
    }
    check(cublasLtMatmul(m.lt, pl.desc, &p.alpha, p.w, pl.a, p.x, pl.b, &p.beta, p.y, pl.d, p.y, pl.d, &pl.algo,
                         m.workspace, m.workspace_bytes, m.stream),
          "Lt product");
    return true;
}

void LtMatmul::set_tuning(bool on) { impl_->tuning = on; }

bool LtMatmul::tuning() const { return impl_->tuning; }

bool LtMatmul::recording() const { return impl_->recording(); }

float LtMatmul::time_ms(const std::function<void()> &run) {
    Impl &m = *impl_;
    cudaEvent_t start = nullptr, stop = nullptr;
    float ms = -1.0f;
    if (cudaEventCreate(&start) == cudaSuccess && cudaEventCreate(&stop) == cudaSuccess) {
        ms = m.time_ms(
            [&] {
                try {
                    run();
                    return true;
                } catch (const std::exception &) {
                    return false;
                }
            },
            start, stop);
    }
    cudaStreamSynchronize(m.stream);
    for (cudaEvent_t e : {start, stop}) {
        if (e != nullptr) {
            cudaEventDestroy(e);
        }
    }
    cudaGetLastError();
    return ms;
}

void LtMatmul::note_untimed() { impl_->untimed = true; }

bool LtMatmul::take_untimed() {
    const bool was = impl_->untimed;
    impl_->untimed = false;
    return was;
}

}  // namespace whisperd
