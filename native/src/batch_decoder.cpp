#include "batch_decoder.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "errors.hpp"
#ifdef WHISPERD_WITH_CUDA
#include "cuda_encoder.hpp"
#endif
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"
#include "whisper.h"

namespace whisperd {

namespace {

constexpr int kMelFrames = 3000;  // 30 s
constexpr int kFrame = 400;       // samples per STFT frame (WHISPER_N_FFT)
constexpr int kHop = 160;         // WHISPER_HOP_LENGTH
constexpr int kBins = kFrame / 2 + 1;  // the DFT's bins, the mel filterbank's width
// whisper.cpp takes the spectrogram's maximum over every frame that sees audio: a full
// 30 s window reaches into frame 3001 (its reflected start shifts it by 200 samples).
constexpr int kMelFramesSeen = kMelFrames + 2;
constexpr int kMelInput = (kMelFramesSeen - 1) * kHop + kFrame;
constexpr int kKvPad = 256;       // flash attention walks K/V in blocks of 256 rows
constexpr int kMaxNodes = 16384;
constexpr float kEps = 1e-5f;

int pow2_at_least(int n) {
    int p = 1;
    while (p < n) {
        p *= 2;
    }
    return p;
}

// WHISPERD_BATCH_TRACE=1: each stage of setting up and running the decoder on stderr.
void trace(const char *what) {
    static const bool on = getenv("WHISPERD_BATCH_TRACE") != nullptr;
    if (on) {
        fprintf(stderr, "batch_decoder: %s\n", what);
        fflush(stderr);
    }
}

double ms_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

bool abort_cb(void *data) {
    auto *token = static_cast<CancelToken *>(data);
    return token != nullptr && token->cancelled();
}

ggml_tensor *layer_norm(ggml_context *ctx, ggml_tensor *x, ggml_tensor *w, ggml_tensor *b) {
    return ggml_add(ctx, ggml_mul(ctx, ggml_norm(ctx, x, kEps), w), b);
}

}  // namespace

// A few threads that run one function over indices 0..n-1 per call; spawning threads on
// every decoder step cost ~1 ms a step.
class BatchDecoder::Pool {
public:
    explicit Pool(int n) {
        for (int i = 1; i < n; ++i) {
            threads_.emplace_back([this]() { loop(); });
        }
    }
    ~Pool() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto &t : threads_) {
            t.join();
        }
    }
    void run(size_t n, const std::function<void(size_t)> &fn) {
        {
            std::lock_guard<std::mutex> lk(mu_);
            fn_ = &fn;
            n_ = n;
            next_ = 0;
            busy_ = threads_.size();
            ++gen_;
        }
        cv_.notify_all();
        work(fn, n);
        std::unique_lock<std::mutex> lk(mu_);
        done_.wait(lk, [this]() { return busy_ == 0; });
        fn_ = nullptr;
    }

private:
    void work(const std::function<void(size_t)> &fn, size_t n) {
        for (size_t i; (i = next_.fetch_add(1)) < n;) {
            fn(i);
        }
    }
    void loop() {
        size_t seen = 0;
        for (;;) {
            const std::function<void(size_t)> *fn;
            size_t n;
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_.wait(lk, [&]() { return stop_ || gen_ != seen; });
                if (stop_) {
                    return;
                }
                seen = gen_;
                fn = fn_;
                n = n_;
            }
            work(*fn, n);
            {
                std::lock_guard<std::mutex> lk(mu_);
                if (--busy_ == 0) {
                    done_.notify_all();
                }
            }
        }
    }
    std::vector<std::thread> threads_;
    std::mutex mu_;
    std::condition_variable cv_, done_;
    const std::function<void(size_t)> *fn_ = nullptr;
    size_t n_ = 0, busy_ = 0, gen_ = 0;
    std::atomic<size_t> next_{0};
    bool stop_ = false;
};

BatchDecoder::BatchDecoder(std::shared_ptr<ContextHandle> handle, bool use_gpu, int gpu_device,
                           int n_slots, int n_cells, int n_threads, int max_encode_batch,
                           int mel_on_device, int cuda_encoder)
    : handle_(std::move(handle)),
      wctx_(handle_->ctx),
      vocab_(handle_->ctx),
      n_slots_(std::max(1, n_slots)),
      n_cells_(std::max(kKvPad, ((n_cells + kKvPad - 1) / kKvPad) * kKvPad)),
      n_threads_(std::max(1, n_threads)),
      max_encode_batch_(std::max(1, max_encode_batch)) {
    trace("vocab read");
    if (whisper_model_get_tensor(wctx_, "decoder.token_embedding.weight") == nullptr) {
        throw WhisperError("this whisper.cpp build lacks the model access the batched decoder needs");
    }
    n_state_ = whisper_model_n_text_state(wctx_);
    n_head_ = whisper_model_n_text_head(wctx_);
    n_text_layer_ = whisper_model_n_text_layer(wctx_);
    n_audio_layer_ = whisper_model_n_audio_layer(wctx_);
    n_mels_ = whisper_model_n_mels(wctx_);
    n_audio_ctx_ = whisper_model_n_audio_ctx(wctx_);
    n_audio_pad_ = ((n_audio_ctx_ + kKvPad - 1) / kKvPad) * kKvPad;
    n_text_ctx_ = whisper_model_n_text_ctx(wctx_);

    int fb_mels = 0, fb_bins = 0;
    const float *filters = whisper_model_mel_filters(wctx_, &fb_mels, &fb_bins);
    if (fb_mels != n_mels_ || fb_bins != kBins) {
        throw WhisperError("the model's mel filterbank has an unexpected shape");
    }
    trace("dimensions read");
    if (use_gpu) {
        int seen = 0;
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_GPU) {
                if (seen++ == gpu_device) {
                    backend_ = ggml_backend_dev_init(dev, nullptr);
                    break;
                }
            }
        }
    }
    if (backend_ == nullptr) {
        backend_ = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr);
    }
    if (backend_ == nullptr) {
        throw WhisperError("could not start a ggml backend for the batched decoder");
    }
    trace("backend started");
    if (ggml_backend_is_cpu(backend_)) {
        ggml_backend_cpu_set_n_threads(backend_, n_threads_);
    }
    mel_on_device_ = mel_on_device != 0;

    ggml_init_params ip = {ggml_tensor_overhead() * (4 * n_text_layer_ + 8), nullptr, true};
    cache_ctx_ = ggml_init(ip);
    for (int l = 0; l < n_text_layer_; ++l) {
        Layer L;
        L.ck = ggml_new_tensor_3d(cache_ctx_, GGML_TYPE_F16, n_state_, n_audio_pad_, n_slots_);
        L.cv = ggml_new_tensor_3d(cache_ctx_, GGML_TYPE_F16, n_state_, n_audio_pad_, n_slots_);
        L.sk = ggml_new_tensor_3d(cache_ctx_, GGML_TYPE_F16, n_state_, n_cells_, n_slots_);
        L.sv = ggml_new_tensor_3d(cache_ctx_, GGML_TYPE_F16, n_state_, n_cells_, n_slots_);
        layers_.push_back(L);
    }
    const int n_audio_state = whisper_model_n_audio_state(wctx_);
    // ggml's encoder's K/V, padded for flash attention (unused by the CUDA encoder, but
    // that is only decided once the caches exist; 8 MB a window).
    pad_k_ = ggml_new_tensor_3d(cache_ctx_, GGML_TYPE_F16, n_audio_state, n_audio_pad_, max_encode_batch_);
    pad_v_ = ggml_new_tensor_3d(cache_ctx_, GGML_TYPE_F16, n_audio_state, n_audio_pad_, max_encode_batch_);
    mel_dft_ = ggml_new_tensor_2d(cache_ctx_, GGML_TYPE_F32, kFrame, 2 * kBins);
    mel_fb_ = ggml_new_tensor_2d(cache_ctx_, GGML_TYPE_F32, 2 * kBins, n_mels_);
    mel_frame_ = ggml_new_tensor_2d(cache_ctx_, GGML_TYPE_F32, kFrame, 1);
    trace("cache tensors described");
    cache_buf_ = ggml_backend_alloc_ctx_tensors(cache_ctx_, backend_);
    trace("caches allocated");
    if (cache_buf_ == nullptr) {
        ggml_free(cache_ctx_);
        cache_ctx_ = nullptr;
        ggml_backend_free(backend_);
        backend_ = nullptr;
        throw OutOfMemoryError("out of memory for the batched decoder's caches (" +
                               std::to_string(n_slots_) + " windows); lower BATCH_SIZE");
    }
    // Zeros: padding rows of the cross K/V take part in attention as whisper.cpp's do, and
    // masked cells must never hold NaN (0 x NaN poisons flash attention).
    ggml_backend_buffer_clear(cache_buf_, 0);
    trace("caches cleared");
    init_mel_tensors(filters);
    start_cuda_encoder(cuda_encoder, gpu_device);
    enc_alloc_ = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend_));
    dec_alloc_ = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend_));
    enc_meta_.resize(ggml_tensor_overhead() * kMaxNodes + ggml_graph_overhead_custom(kMaxNodes, false));
    dec_meta_.resize(ggml_tensor_overhead() * kMaxNodes + ggml_graph_overhead_custom(kMaxNodes, false));
    slots_.resize(n_slots_);
    pool_ = std::make_unique<Pool>(n_threads_);
    trace("ready");
}

BatchDecoder::~BatchDecoder() { close(); }

void BatchDecoder::close() {
    slots_.clear();
    pool_.reset();
#ifdef WHISPERD_WITH_CUDA
    cuda_enc_.reset();
#endif
    if (dec_ctx_ != nullptr) {
        ggml_free(dec_ctx_);
        dec_ctx_ = nullptr;
        dec_graph_ = nullptr;
    }
    if (enc_alloc_ != nullptr) {
        ggml_gallocr_free(enc_alloc_);
        enc_alloc_ = nullptr;
    }
    if (dec_alloc_ != nullptr) {
        ggml_gallocr_free(dec_alloc_);
        dec_alloc_ = nullptr;
    }
    if (cache_buf_ != nullptr) {
        ggml_backend_buffer_free(cache_buf_);
        cache_buf_ = nullptr;
    }
    if (cache_ctx_ != nullptr) {
        ggml_free(cache_ctx_);
        cache_ctx_ = nullptr;
    }
    if (backend_ != nullptr) {
        ggml_backend_free(backend_);
        backend_ = nullptr;
    }
    handle_.reset();
}

int BatchDecoder::free_slots() const {
    return static_cast<int>(std::count(slots_.begin(), slots_.end(), nullptr));
}

int BatchDecoder::active() const { return static_cast<int>(slots_.size()) - free_slots(); }

size_t BatchDecoder::memory_bytes() const {
    size_t b = cache_buf_ ? ggml_backend_buffer_get_size(cache_buf_) : 0;
#ifdef WHISPERD_WITH_CUDA
    b += cuda_enc_ ? cuda_enc_->memory_bytes() : 0;
#endif
    return b;
}

ggml_tensor *BatchDecoder::w(const std::string &name) const {
    ggml_tensor *t = whisper_model_get_tensor(wctx_, name.c_str());
    if (t == nullptr) {
        throw WhisperError("model has no tensor " + name);
    }
    return t;
}

std::vector<float> BatchDecoder::mel(const std::vector<float> &samples) const {
    std::vector<float> out(static_cast<size_t>(n_mels_) * kMelFrames);
    if (whisper_pcm_to_mel_frames(wctx_, samples.data(), static_cast<int>(samples.size()), 1,
                                  out.data(), kMelFrames) != 0) {
        throw WhisperError("could not compute the mel spectrogram");
    }
    return out;
}

void BatchDecoder::prepare(WindowSpec &spec) const {
    if (spec.mel.empty()) {
        spec.mel = mel_on_device_ ? mel_input(spec.samples) : mel(spec.samples);
    }
}

// ---------------------------------------------------------------- mel on the device

void BatchDecoder::init_mel_tensors(const float *filters) {
    // whisper.cpp's periodic Hann window, folded into the DFT's cosines and sines.
    std::vector<float> dft(static_cast<size_t>(kFrame) * 2 * kBins);
    for (int k = 0; k < kBins; ++k) {
        for (int j = 0; j < kFrame; ++j) {
            const float hann = 0.5f * (1.0f - cosf((2.0 * M_PI * j) / kFrame));
            const double phase = 2.0 * M_PI * static_cast<double>((static_cast<int64_t>(j) * k) % kFrame) / kFrame;
            dft[static_cast<size_t>(k) * kFrame + j] = hann * static_cast<float>(cos(phase));
            dft[static_cast<size_t>(k + kBins) * kFrame + j] = hann * static_cast<float>(sin(phase));
        }
    }
    std::vector<float> fb(static_cast<size_t>(2) * kBins * n_mels_);
    for (int m = 0; m < n_mels_; ++m) {
        for (int k = 0; k < kBins; ++k) {
            const float f = filters[static_cast<size_t>(m) * kBins + k];
            fb[static_cast<size_t>(m) * 2 * kBins + k] = f;
            fb[static_cast<size_t>(m) * 2 * kBins + kBins + k] = f;
        }
    }
    ggml_backend_tensor_set(mel_dft_, dft.data(), 0, dft.size() * sizeof(float));
    ggml_backend_tensor_set(mel_fb_, fb.data(), 0, fb.size() * sizeof(float));
}

// The samples as whisper.cpp's log_mel_spectrogram pads them: 200 reflected samples in
// front, zeros after, cut to what the first kMelFramesSeen frames read.
std::vector<float> BatchDecoder::mel_input(const std::vector<float> &samples) const {
    std::vector<float> out(kMelInput, 0.0f);
    const int n = static_cast<int>(std::min<size_t>(samples.size(), static_cast<size_t>(kMelFrames) * kHop));
    const int half = kFrame / 2;
    for (int i = 0; i < half; ++i) {
        const int src = half - i;
        out[i] = src < n ? samples[src] : 0.0f;
    }
    std::copy(samples.begin(), samples.begin() + n, out.begin() + half);
    return out;
}

// log10 of the mel power, floored 8 below each window's maximum, scaled as Whisper's:
// [kMelFrames, n_mels, n] from padded samples [kMelInput, 1, n].
ggml_tensor *BatchDecoder::build_mel(ggml_context *ctx, int n, ggml_tensor **pcm_out) const {
    const int F = kMelFramesSeen;
    ggml_tensor *pcm = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, kMelInput, 1, n);
    ggml_set_input(pcm);
    *pcm_out = pcm;
    ggml_tensor *frames = ggml_im2col(ctx, mel_frame_, pcm, kHop, 0, 0, 0, 1, 0, false, GGML_TYPE_F32);
    ggml_tensor *spec = ggml_mul_mat(ctx, mel_dft_, ggml_reshape_2d(ctx, frames, kFrame, F * n));
    ggml_tensor *m = ggml_mul_mat(ctx, mel_fb_, ggml_sqr(ctx, spec));  // [n_mels, F * n]
    m = ggml_scale(ctx, ggml_log(ctx, ggml_clamp(ctx, m, 1e-10f, 3.0e38f)), 1.0f / logf(10.0f));
    // Each window's maximum: its argmax over all its values, then that value.
    ggml_tensor *idx = ggml_argmax(ctx, ggml_reshape_2d(ctx, m, n_mels_ * F, n));
    ggml_tensor *mx = ggml_get_rows(ctx, ggml_reshape_3d(ctx, m, 1, n_mels_ * F, n), ggml_reshape_2d(ctx, idx, 1, n));
    ggml_tensor *floor = ggml_scale_bias(ctx, mx, 1.0f, -8.0f);  // [1, 1, n]
    ggml_tensor *m3 = ggml_reshape_3d(ctx, m, n_mels_, F, n);
    // max(m, floor) as floor + relu(m - floor); then (x + 4) / 4
    m3 = ggml_add(ctx, ggml_relu(ctx, ggml_sub(ctx, m3, floor)), floor);
    m3 = ggml_scale_bias(ctx, m3, 0.25f, 1.0f);
    ggml_tensor *first = ggml_view_3d(ctx, m3, n_mels_, kMelFrames, n, m3->nb[1], m3->nb[2], 0);
    return ggml_cont(ctx, ggml_permute(ctx, first, 1, 0, 2, 3));
}

std::vector<float> BatchDecoder::device_mel(const std::vector<float> &samples) {
    ggml_init_params ip = {enc_meta_.size(), enc_meta_.data(), true};
    ggml_context *ctx = ggml_init(ip);
    ggml_tensor *pcm = nullptr;
    ggml_tensor *out = build_mel(ctx, 1, &pcm);
    ggml_cgraph *gf = ggml_new_graph_custom(ctx, kMaxNodes, false);
    ggml_build_forward_expand(gf, out);
    std::vector<float> result(static_cast<size_t>(n_mels_) * kMelFrames);
    try {
        if (!ggml_gallocr_alloc_graph(enc_alloc_, gf)) {
            throw OutOfMemoryError("out of memory for the mel spectrogram");
        }
        const std::vector<float> in = mel_input(samples);
        ggml_backend_tensor_set(pcm, in.data(), 0, in.size() * sizeof(float));
        compute(gf, nullptr);
        ggml_backend_tensor_get(out, result.data(), 0, result.size() * sizeof(float));
    } catch (...) {
        ggml_free(ctx);
        throw;
    }
    ggml_free(ctx);
    return result;
}

void BatchDecoder::compute(ggml_cgraph *gf, CancelToken *token) {
    if (ggml_backend_is_cpu(backend_)) {
        ggml_backend_cpu_set_abort_callback(backend_, abort_cb, token);
    }
    const ggml_status st = ggml_backend_graph_compute(backend_, gf);
    if (token != nullptr && token->cancelled()) {
        throw TranscriptionAborted("batched decoding stopped");
    }
    if (st != GGML_STATUS_SUCCESS) {
        throw WhisperError("batched graph failed to compute (status " + std::to_string(st) + ")");
    }
}

// ---------------------------------------------------------------- encoder

bool BatchDecoder::cuda_encoder() const {
#ifdef WHISPERD_WITH_CUDA
    return cuda_enc_ != nullptr;
#else
    return false;
#endif
}

void BatchDecoder::start_cuda_encoder(int mode, int gpu_device) {
#ifdef WHISPERD_WITH_CUDA
    if (mode == 0 || ggml_backend_is_cpu(backend_)) {
        return;
    }
    if (mode < 0 && !CudaEncoder::full_rate_f32_accumulate(gpu_device)) {
        trace("CUDA encoder off: this GPU accumulates f32 at half rate");
        return;
    }
    auto f16 = [&](const std::string &name) {
        ggml_tensor *t = w(name);
        if (t->type != GGML_TYPE_F16 || !ggml_is_contiguous(t)) {
            throw std::invalid_argument(name);
        }
        return static_cast<const void *>(t->data);
    };
    auto f32 = [&](const std::string &name) {
        ggml_tensor *t = w(name);
        if (t->type != GGML_TYPE_F32) {
            throw std::invalid_argument(name);
        }
        return static_cast<const float *>(t->data);
    };
    std::vector<CudaEncoderLayer> layers;
    std::vector<CudaCrossLayer> cross;
    const float *ln_w = nullptr, *ln_b = nullptr;
    try {
        for (int l = 0; l < n_audio_layer_; ++l) {
            const std::string p = "encoder.blocks." + std::to_string(l) + ".";
            layers.push_back({f16(p + "attn.query.weight"), f16(p + "attn.key.weight"), f16(p + "attn.value.weight"),
                              f16(p + "attn.out.weight"), f16(p + "mlp.0.weight"), f16(p + "mlp.2.weight"),
                              f32(p + "attn.query.bias"), f32(p + "attn.value.bias"), f32(p + "attn.out.bias"),
                              f32(p + "mlp.0.bias"), f32(p + "mlp.2.bias"), f32(p + "attn_ln.weight"),
                              f32(p + "attn_ln.bias"), f32(p + "mlp_ln.weight"), f32(p + "mlp_ln.bias")});
        }
        for (int l = 0; l < n_text_layer_; ++l) {
            const std::string p = "decoder.blocks." + std::to_string(l) + ".";
            cross.push_back({f16(p + "cross_attn.key.weight"), f16(p + "cross_attn.value.weight"),
                             f32(p + "cross_attn.value.bias"), layers_[l].ck->data, layers_[l].cv->data});
        }
        ln_w = f32("encoder.ln_post.weight");
        ln_b = f32("encoder.ln_post.bias");
    } catch (const std::invalid_argument &e) {
        // quantised weights: cuBLAS multiplies only plain floats
        fprintf(stderr, "whisperd: the batched encoder stays a ggml graph: %s is not f16/f32\n", e.what());
        return;
    }
    CudaEncoderShape shape{};
    shape.n_state = whisper_model_n_audio_state(wctx_);
    shape.n_head = whisper_model_n_audio_head(wctx_);
    shape.n_ctx = n_audio_ctx_;
    shape.n_ff = static_cast<int>(w("encoder.blocks.0.mlp.0.weight")->ne[1]);
    shape.n_text_state = n_state_;
    shape.n_audio_pad = n_audio_pad_;
    shape.max_windows = max_encode_batch_;
    shape.kscale = powf(static_cast<float>(n_state_ / n_head_), -0.25f);
    cuda_enc_ = std::make_unique<CudaEncoder>(gpu_device, shape, std::move(layers), ln_w, ln_b, std::move(cross));
    trace("CUDA encoder ready");
#else
    (void)mode;
    (void)gpu_device;
#endif
}

std::vector<float> BatchDecoder::cross_kv(int64_t id, int layer) const {
    if (layer < 0 || layer >= n_text_layer_) {
        throw std::invalid_argument("no such decoder layer");
    }
    for (int s = 0; s < n_slots_; ++s) {
        if (slots_[s] == nullptr || slots_[s]->id() != id) {
            continue;
        }
        const size_t n = static_cast<size_t>(n_audio_ctx_) * n_state_;
        const size_t off = static_cast<size_t>(s) * n_audio_pad_ * n_state_ * sizeof(ggml_fp16_t);
        std::vector<ggml_fp16_t> half(n);
        std::vector<float> out(2 * n);
        ggml_backend_tensor_get(layers_[layer].ck, half.data(), off, n * sizeof(ggml_fp16_t));
        ggml_fp16_to_fp32_row(half.data(), out.data(), static_cast<int64_t>(n));
        ggml_backend_tensor_get(layers_[layer].cv, half.data(), off, n * sizeof(ggml_fp16_t));
        ggml_fp16_to_fp32_row(half.data(), out.data() + n, static_cast<int64_t>(n));
        return out;
    }
    throw std::invalid_argument("no window with that id is in the decoder");
}

// gelu(conv1d(x) + bias) with padding 1, channels first out: [OC, OL, n] from x [IL, IC, n].
// (ggml_conv_1d mixes up the batch dimension when n > 1.)
ggml_tensor *BatchDecoder::conv(ggml_context *ctx, const std::string &name, ggml_tensor *x,
                                int stride) const {
    ggml_tensor *k = w(name + ".weight");  // [K, IC, OC]
    ggml_tensor *b = w(name + ".bias");    // [1, OC]
    ggml_tensor *cols = ggml_im2col(ctx, k, x, stride, 0, 1, 0, 1, 0, false, GGML_TYPE_F32);  // [IC*K, OL, n]
    ggml_tensor *y = ggml_mul_mat(ctx, ggml_reshape_2d(ctx, k, k->ne[0] * k->ne[1], k->ne[2]),
                                  ggml_reshape_2d(ctx, cols, cols->ne[0], cols->ne[1] * cols->ne[2]));
    y = ggml_reshape_3d(ctx, y, k->ne[2], cols->ne[1], cols->ne[2]);
    return ggml_gelu(ctx, ggml_add(ctx, y, ggml_reshape_2d(ctx, b, ggml_nelements(b), 1)));
}

ggml_cgraph *BatchDecoder::build_encoder(ggml_context *ctx, int n, const std::vector<int> &slots,
                                         ggml_tensor **input) {
    const int n_as = whisper_model_n_audio_state(wctx_);
    const int n_ah = whisper_model_n_audio_head(wctx_);
    const int hd = n_as / n_ah;
    const int T = n_audio_ctx_;
    ggml_cgraph *gf = ggml_new_graph_custom(ctx, kMaxNodes, false);
    ggml_tensor *mel = nullptr;
    if (mel_on_device_) {
        mel = build_mel(ctx, n, input);
    } else {
        mel = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, 2 * T, n_mels_, n);
        ggml_set_input(mel);
        *input = mel;
    }

    ggml_tensor *cur = conv(ctx, "encoder.conv1", mel, 1);  // [n_as, 2T, n]
    cur = ggml_cont(ctx, ggml_permute(ctx, cur, 1, 0, 2, 3));  // [2T, n_as, n]
    cur = conv(ctx, "encoder.conv2", cur, 2);                  // [n_as, T, n]
    // Activations stay 2-D, [n_as, T*n]: every projection is one large matrix product.
    cur = ggml_reshape_2d(ctx, cur, n_as, T * n);
    ggml_tensor *pe = w("encoder.positional_embedding");
    cur = ggml_add(ctx, cur, ggml_view_2d(ctx, pe, pe->ne[0], T, pe->nb[1], 0));
    if (cuda_encoder()) {  // the layers run as our CUDA code on this output
        ggml_set_output(cur);
        ggml_build_forward_expand(gf, cur);
        return gf;
    }

    const float scale = 1.0f / sqrtf(static_cast<float>(hd));
    const size_t es = ggml_element_size(pad_k_);
    ggml_tensor *x = cur;
    for (int l = 0; l < n_audio_layer_; ++l) {
        const std::string p = "encoder.blocks." + std::to_string(l) + ".";
        cur = layer_norm(ctx, x, w(p + "attn_ln.weight"), w(p + "attn_ln.bias"));
        ggml_tensor *q = ggml_add(ctx, ggml_mul_mat(ctx, w(p + "attn.query.weight"), cur), w(p + "attn.query.bias"));
        ggml_tensor *k = ggml_mul_mat(ctx, w(p + "attn.key.weight"), cur);
        ggml_tensor *v = ggml_add(ctx, ggml_mul_mat(ctx, w(p + "attn.value.weight"), cur), w(p + "attn.value.bias"));
        // K/V into zero-padded rows, as whisper.cpp's encoder does for flash attention.
        // A copy per window: contiguous to contiguous is ggml-cuda's fast copy (one strided
        // copy of all windows measured 1.8x slower).
        for (int i = 0; i < n; ++i) {
            const size_t dst_off = static_cast<size_t>(i) * n_as * n_audio_pad_ * es;
            ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_view_2d(ctx, k, n_as, T, k->nb[1], i * T * k->nb[1]),
                                                   ggml_view_2d(ctx, pad_k_, n_as, T, n_as * es, dst_off)));
            ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_view_2d(ctx, v, n_as, T, v->nb[1], i * T * v->nb[1]),
                                                   ggml_view_2d(ctx, pad_v_, n_as, T, n_as * es, dst_off)));
        }
        ggml_tensor *Q = ggml_permute(ctx, ggml_reshape_4d(ctx, q, hd, n_ah, T, n), 0, 2, 1, 3);
        ggml_tensor *K = ggml_permute(ctx,
            ggml_view_4d(ctx, pad_k_, hd, n_ah, n_audio_pad_, n, hd * es, n_as * es, n_as * n_audio_pad_ * es, 0),
            0, 2, 1, 3);
        ggml_tensor *V = ggml_permute(ctx,
            ggml_view_4d(ctx, pad_v_, hd, n_ah, n_audio_pad_, n, hd * es, n_as * es, n_as * n_audio_pad_ * es, 0),
            0, 2, 1, 3);
        ggml_tensor *a = ggml_flash_attn_ext(ctx, Q, K, V, nullptr, scale, 0.0f, 0.0f);
        a = ggml_reshape_2d(ctx, a, n_as, T * n);
        a = ggml_add(ctx, ggml_mul_mat(ctx, w(p + "attn.out.weight"), a), w(p + "attn.out.bias"));
        x = ggml_add(ctx, a, x);
        cur = layer_norm(ctx, x, w(p + "mlp_ln.weight"), w(p + "mlp_ln.bias"));
        cur = ggml_gelu(ctx, ggml_add(ctx, ggml_mul_mat(ctx, w(p + "mlp.0.weight"), cur), w(p + "mlp.0.bias")));
        cur = ggml_add(ctx, ggml_mul_mat(ctx, w(p + "mlp.2.weight"), cur), w(p + "mlp.2.bias"));
        x = ggml_add(ctx, cur, x);
    }
    ggml_tensor *enc = layer_norm(ctx, x, w("encoder.ln_post.weight"), w("encoder.ln_post.bias"));

    // Cross-attention keys/values of every decoder layer, into each window's slot.
    const int hd_t = n_state_ / n_head_;
    const float kscale = powf(static_cast<float>(hd_t), -0.25f);
    for (int l = 0; l < n_text_layer_; ++l) {
        const std::string p = "decoder.blocks." + std::to_string(l) + ".";
        ggml_tensor *kc = ggml_scale(ctx, ggml_mul_mat(ctx, w(p + "cross_attn.key.weight"), enc), kscale);
        ggml_tensor *vc = ggml_add(ctx, ggml_mul_mat(ctx, w(p + "cross_attn.value.weight"), enc), w(p + "cross_attn.value.bias"));
        const Layer &L = layers_[l];
        for (int i = 0; i < n; ++i) {
            const size_t es = ggml_element_size(L.ck);
            ggml_tensor *ksrc = ggml_view_2d(ctx, kc, n_state_, T, kc->nb[1], i * T * kc->nb[1]);
            ggml_tensor *vsrc = ggml_view_2d(ctx, vc, n_state_, T, vc->nb[1], i * T * vc->nb[1]);
            const size_t off = static_cast<size_t>(slots[i]) * n_state_ * n_audio_pad_ * es;
            ggml_build_forward_expand(gf, ggml_cpy(ctx, ksrc, ggml_view_2d(ctx, L.ck, n_state_, T, n_state_ * es, off)));
            ggml_build_forward_expand(gf, ggml_cpy(ctx, vsrc, ggml_view_2d(ctx, L.cv, n_state_, T, n_state_ * es, off)));
        }
    }
    return gf;
}

void BatchDecoder::encode_group(std::vector<WindowSpec> &group, const std::vector<int> &slots,
                                CancelToken *token) {
    const auto t0 = std::chrono::steady_clock::now();
    const int n = static_cast<int>(group.size());
    // Mel spectrograms on the CPU (those not prepared ahead), a window per thread; or,
    // with the mel on the device, only the padded samples.
    const size_t per = mel_on_device_ ? static_cast<size_t>(kMelInput) : static_cast<size_t>(n_mels_) * kMelFrames;
    std::vector<float> mels(static_cast<size_t>(n) * per);
    {
        std::vector<std::string> errors(n);
        pool_->run(n, [&](size_t i) {
            try {
                if (group[i].mel.size() != per) {
                    group[i].mel = {};  // prepared for the other kind of input
                }
                prepare(group[i]);
                std::copy(group[i].mel.begin(), group[i].mel.end(), mels.begin() + i * per);
                group[i].mel = {};
            } catch (const std::exception &e) {
                errors[i] = e.what();
            }
        });
        for (const auto &e : errors) {
            if (!e.empty()) {
                throw WhisperError(e);
            }
        }
    }
    ggml_init_params ip = {enc_meta_.size(), enc_meta_.data(), true};
    ggml_context *ctx = ggml_init(ip);
    ggml_tensor *mel_in = nullptr;
    trace("mels computed");
    ggml_cgraph *gf = build_encoder(ctx, n, slots, &mel_in);
    trace("encoder graph built");
    if (!ggml_gallocr_alloc_graph(enc_alloc_, gf)) {
        ggml_free(ctx);
        throw OutOfMemoryError("out of memory for the batched encoder (" + std::to_string(n) + " windows)");
    }
    ggml_backend_tensor_set(mel_in, mels.data(), 0, mels.size() * sizeof(float));
    trace("encoder graph allocated");
    try {
        compute(gf, token);
        trace("encoder computed");
#ifdef WHISPERD_WITH_CUDA
        if (cuda_enc_ != nullptr) {
            const ggml_tensor *front = ggml_graph_node(gf, -1);
            cuda_enc_->encode(static_cast<const float *>(front->data), n, slots);
            trace("CUDA encoder layers computed");
        }
#endif
    } catch (...) {
        ggml_free(ctx);
        throw;
    }
    ggml_free(ctx);
    stats_.encodes += n;
    stats_.encode_ms += ms_since(t0);
}

void BatchDecoder::add(std::vector<WindowSpec> windows, CancelToken *token) {
    if (static_cast<int>(windows.size()) > free_slots()) {
        throw std::invalid_argument("more windows than free slots");
    }
    size_t i = 0;
    while (i < windows.size()) {
        std::vector<WindowSpec> group;
        std::vector<int> slots;
        for (int s = 0; s < n_slots_ && static_cast<int>(group.size()) < max_encode_batch_ && i < windows.size(); ++s) {
            if (slots_[s] == nullptr && std::find(slots.begin(), slots.end(), s) == slots.end()) {
                if (windows[i].samples.size() > static_cast<size_t>(kMelFrames) * 160) {
                    throw std::invalid_argument("a window is longer than 30 s");
                }
                group.push_back(std::move(windows[i++]));
                slots.push_back(s);
            }
        }
        encode_group(group, slots, token);
        for (size_t g = 0; g < group.size(); ++g) {
            slots_[slots[g]] = std::make_unique<WindowDecoder>(vocab_, std::move(group[g]), n_cells_, n_text_ctx_);
        }
    }
}

void BatchDecoder::drop(int64_t id) {
    for (auto &s : slots_) {
        if (s != nullptr && s->id() == id) {
            s.reset();
        }
    }
}

// ---------------------------------------------------------------- decoder

ggml_cgraph *BatchDecoder::build_decoder(ggml_context *ctx, int W, int R, int n_kv, int r_out) {
    const int hd = n_state_ / n_head_;
    const int n_rows = W * R;
    const float kq_scale = powf(static_cast<float>(hd), -0.25f);
    ggml_cgraph *gf = ggml_new_graph_custom(ctx, kMaxNodes, false);

    ggml_tensor *tokens = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_rows);
    ggml_set_name(tokens, "tokens");
    ggml_set_input(tokens);
    ggml_tensor *pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_rows);
    ggml_set_name(pos, "pos");
    ggml_set_input(pos);
    ggml_tensor *kv_rows = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, n_rows);
    ggml_set_name(kv_rows, "kv_rows");
    ggml_set_input(kv_rows);
    ggml_tensor *mask = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, n_kv, R, 1, W);
    ggml_set_name(mask, "mask");
    ggml_set_input(mask);
    ggml_tensor *out_rows = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, W * r_out);
    ggml_set_name(out_rows, "out_rows");
    ggml_set_input(out_rows);

    ggml_tensor *x = ggml_add(ctx, ggml_get_rows(ctx, w("decoder.token_embedding.weight"), tokens),
                              ggml_get_rows(ctx, w("decoder.positional_embedding"), pos));
    for (int l = 0; l < n_text_layer_; ++l) {
        const std::string p = "decoder.blocks." + std::to_string(l) + ".";
        const Layer &L = layers_[l];
        const size_t es = ggml_element_size(L.sk);
        // self-attention over each row's own visible cells
        ggml_tensor *cur = layer_norm(ctx, x, w(p + "attn_ln.weight"), w(p + "attn_ln.bias"));
        ggml_tensor *q = ggml_scale(ctx, ggml_add(ctx, ggml_mul_mat(ctx, w(p + "attn.query.weight"), cur), w(p + "attn.query.bias")), kq_scale);
        ggml_tensor *k = ggml_scale(ctx, ggml_mul_mat(ctx, w(p + "attn.key.weight"), cur), kq_scale);
        ggml_tensor *v = ggml_add(ctx, ggml_mul_mat(ctx, w(p + "attn.value.weight"), cur), w(p + "attn.value.bias"));
        ggml_tensor *sk2 = ggml_view_2d(ctx, L.sk, n_state_, n_cells_ * W, n_state_ * es, 0);
        ggml_tensor *sv2 = ggml_view_2d(ctx, L.sv, n_state_, n_cells_ * W, n_state_ * es, 0);
        ggml_build_forward_expand(gf, ggml_set_rows(ctx, sk2, k, kv_rows));
        ggml_build_forward_expand(gf, ggml_set_rows(ctx, sv2, v, kv_rows));
        ggml_tensor *Q = ggml_permute(ctx, ggml_reshape_4d(ctx, q, hd, n_head_, R, W), 0, 2, 1, 3);
        ggml_tensor *K = ggml_permute(ctx,
            ggml_view_4d(ctx, L.sk, hd, n_head_, n_kv, W, hd * es, n_state_ * es, n_state_ * n_cells_ * es, 0),
            0, 2, 1, 3);
        ggml_tensor *V = ggml_permute(ctx,
            ggml_view_4d(ctx, L.sv, hd, n_head_, n_kv, W, hd * es, n_state_ * es, n_state_ * n_cells_ * es, 0),
            0, 2, 1, 3);
        ggml_tensor *a = ggml_flash_attn_ext(ctx, Q, K, V, mask, 1.0f, 0.0f, 0.0f);
        a = ggml_reshape_2d(ctx, a, n_state_, n_rows);
        a = ggml_add(ctx, ggml_mul_mat(ctx, w(p + "attn.out.weight"), a), w(p + "attn.out.bias"));
        x = ggml_add(ctx, a, x);
        // cross-attention over the slot's window
        cur = layer_norm(ctx, x, w(p + "cross_attn_ln.weight"), w(p + "cross_attn_ln.bias"));
        q = ggml_add(ctx, ggml_mul_mat(ctx, w(p + "cross_attn.query.weight"), cur), w(p + "cross_attn.query.bias"));
        Q = ggml_permute(ctx, ggml_reshape_4d(ctx, q, hd, n_head_, R, W), 0, 2, 1, 3);
        K = ggml_permute(ctx,
            ggml_view_4d(ctx, L.ck, hd, n_head_, n_audio_pad_, W, hd * es, n_state_ * es, n_state_ * n_audio_pad_ * es, 0),
            0, 2, 1, 3);
        V = ggml_permute(ctx,
            ggml_view_4d(ctx, L.cv, hd, n_head_, n_audio_pad_, W, hd * es, n_state_ * es, n_state_ * n_audio_pad_ * es, 0),
            0, 2, 1, 3);
        a = ggml_flash_attn_ext(ctx, Q, K, V, nullptr, kq_scale, 0.0f, 0.0f);
        a = ggml_reshape_2d(ctx, a, n_state_, n_rows);
        a = ggml_add(ctx, ggml_mul_mat(ctx, w(p + "cross_attn.out.weight"), a), w(p + "cross_attn.out.bias"));
        x = ggml_add(ctx, a, x);
        // MLP
        cur = layer_norm(ctx, x, w(p + "mlp_ln.weight"), w(p + "mlp_ln.bias"));
        cur = ggml_gelu(ctx, ggml_add(ctx, ggml_mul_mat(ctx, w(p + "mlp.0.weight"), cur), w(p + "mlp.0.bias")));
        cur = ggml_add(ctx, ggml_mul_mat(ctx, w(p + "mlp.2.weight"), cur), w(p + "mlp.2.bias"));
        x = ggml_add(ctx, cur, x);
    }
    x = layer_norm(ctx, x, w("decoder.ln.weight"), w("decoder.ln.bias"));
    x = ggml_get_rows(ctx, x, out_rows);
    ggml_tensor *logits = ggml_mul_mat(ctx, w("decoder.token_embedding.weight"), x);
    ggml_set_name(logits, "logits");
    ggml_set_output(logits);
    ggml_build_forward_expand(gf, logits);
    return gf;
}

std::vector<WindowOutput> BatchDecoder::step(CancelToken *token) {
    std::vector<WindowOutput> done;
    // Which slots take part, and the shape of this step.
    int last = -1, R = 1, r_out = 1, max_cells = 1;
    for (int s = 0; s < n_slots_; ++s) {
        const auto &win = slots_[s];
        if (win == nullptr) {
            continue;
        }
        last = s;
        const auto &rows = win->rows();
        int outs = 0;
        for (const Row &r : rows) {
            outs += r.output ? 1 : 0;
            max_cells = std::max(max_cells, r.cell + 1);
        }
        R = std::max<int>(R, rows.size());
        r_out = std::max(r_out, outs);
    }
    if (last < 0) {
        return done;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const int W = std::min(n_slots_, pow2_at_least(last + 1));
    // Rows per slot as needed (1 greedy, the beam count, a prompt's length): padding them
    // to powers of two cost up to 60% more work per step for a shape that changes rarely.
    R = R <= 8 ? R : pow2_at_least(R);
    const int n_kv = std::min(n_cells_, ((max_cells + kKvPad - 1) / kKvPad) * kKvPad);
    const int n_rows = W * R;
    const int key[4] = {W, R, n_kv, r_out};
    if (dec_graph_ == nullptr || !std::equal(key, key + 4, dec_key_)) {
        if (dec_ctx_ != nullptr) {
            ggml_free(dec_ctx_);
        }
        ggml_init_params ip = {dec_meta_.size(), dec_meta_.data(), true};
        dec_ctx_ = ggml_init(ip);
        dec_graph_ = build_decoder(dec_ctx_, W, R, n_kv, r_out);
        if (!ggml_gallocr_alloc_graph(dec_alloc_, dec_graph_)) {
            ggml_free(dec_ctx_);
            dec_ctx_ = nullptr;
            dec_graph_ = nullptr;
            throw OutOfMemoryError("out of memory for a batched decoder step of " + std::to_string(W) + " windows");
        }
        std::copy(key, key + 4, dec_key_);
        stats_.graph_builds++;
    }
    // Inputs. Padding rows feed token 0 at position 0 into the slot's spare last cell and
    // see only that cell: finite values, never read by a real row.
    std::vector<int32_t> tok(n_rows, 0), pos(n_rows, 0), outs(static_cast<size_t>(W) * r_out, 0);
    std::vector<int64_t> kvr(n_rows);
    std::vector<ggml_fp16_t> mask(static_cast<size_t>(n_kv) * n_rows);
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), ninf = ggml_fp32_to_fp16(-INFINITY);
    std::fill(mask.begin(), mask.end(), ninf);
    const int spare = n_cells_ - 1;
    for (int s = 0; s < W; ++s) {
        const WindowDecoder *win = slots_[s].get();
        const std::vector<Row> empty;
        const auto &rows = win ? win->rows() : empty;
        int o = 0;
        for (int r = 0; r < R; ++r) {
            const int i = s * R + r;
            ggml_fp16_t *m = mask.data() + static_cast<size_t>(i) * n_kv;
            if (r < static_cast<int>(rows.size())) {
                const Row &row = rows[r];
                tok[i] = row.token;
                pos[i] = row.pos;
                kvr[i] = static_cast<int64_t>(s) * n_cells_ + row.cell;
                for (int c : *row.visible) {
                    m[c] = zero;
                }
                if (row.output) {
                    outs[static_cast<size_t>(s) * r_out + o++] = i;
                }
            } else {
                kvr[i] = static_cast<int64_t>(s) * n_cells_ + spare;
                if (spare < n_kv) {
                    m[spare] = zero;
                } else {
                    m[0] = zero;
                }
            }
        }
        for (; o < r_out; ++o) {
            outs[static_cast<size_t>(s) * r_out + o] = s * R;
        }
    }
    ggml_backend_tensor_set(ggml_graph_get_tensor(dec_graph_, "tokens"), tok.data(), 0, tok.size() * sizeof(int32_t));
    ggml_backend_tensor_set(ggml_graph_get_tensor(dec_graph_, "pos"), pos.data(), 0, pos.size() * sizeof(int32_t));
    ggml_backend_tensor_set(ggml_graph_get_tensor(dec_graph_, "kv_rows"), kvr.data(), 0, kvr.size() * sizeof(int64_t));
    ggml_backend_tensor_set(ggml_graph_get_tensor(dec_graph_, "mask"), mask.data(), 0, mask.size() * sizeof(ggml_fp16_t));
    ggml_backend_tensor_set(ggml_graph_get_tensor(dec_graph_, "out_rows"), outs.data(), 0, outs.size() * sizeof(int32_t));
    trace("decoder inputs set");
    compute(dec_graph_, token);
    trace("decoder step computed");
    ggml_tensor *lg = ggml_graph_get_tensor(dec_graph_, "logits");
    logits_.resize(ggml_nelements(lg));
    ggml_backend_tensor_get(lg, logits_.data(), 0, logits_.size() * sizeof(float));
    stats_.decode_ms += ms_since(t0);
    stats_.steps++;
    stats_.rows += n_rows;

    // Sampling, windows spread over threads.
    const auto t1 = std::chrono::steady_clock::now();
    const int n_vocab = vocab_.n_vocab;
    std::vector<int> live;
    for (int s = 0; s < W; ++s) {
        if (slots_[s] != nullptr) {
            live.push_back(s);
        }
    }
    std::vector<std::string> errors(live.size());
    pool_->run(live.size(), [&](size_t k) {
        const int s = live[k];
        WindowDecoder &win = *slots_[s];
        int n_out = 0;
        for (const Row &r : win.rows()) {
            n_out += r.output ? 1 : 0;
        }
        std::vector<const float *> ptrs;
        for (int o = 0; o < n_out; ++o) {
            ptrs.push_back(logits_.data() + (static_cast<size_t>(s) * r_out + o) * n_vocab);
        }
        try {
            win.feed(ptrs);
        } catch (const std::exception &e) {
            errors[k] = e.what();
        }
    });
    for (const auto &e : errors) {
        if (!e.empty()) {
            throw WhisperError("batched sampling failed: " + e);
        }
    }
    for (int s : live) {
        if (slots_[s]->finished()) {
            done.push_back(slots_[s]->result());
            slots_[s].reset();
        }
    }
    stats_.sample_ms += ms_since(t1);
    return done;
}

}  // namespace whisperd
