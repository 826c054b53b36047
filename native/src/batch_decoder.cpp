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

#include "batch_internal.hpp"
#include "errors.hpp"
#ifdef WHISPERD_WITH_CUDA
#include "cuda_decoder.hpp"
#include "cuda_encoder.hpp"
#include "cuda_sampler.hpp"
#endif
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"
#include "whisper.h"

namespace whisperd {

using namespace batch_detail;

namespace {

bool abort_cb(void *data) {
    auto *token = static_cast<CancelToken *>(data);
    return token != nullptr && token->cancelled();
}

}  // namespace

BatchDecoder::BatchDecoder(std::shared_ptr<ContextHandle> handle, bool use_gpu, int gpu_device,
                           int n_slots, int n_cells, int n_threads, int max_encode_batch,
                           int mel_on_device, int cuda_encoder)
    : handle_(std::move(handle)),
      wctx_(handle_->ctx),
      vocab_(handle_->ctx),
      greedy_vocab_(vocab_),
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
    start_cuda_decoder(gpu_device);
    start_cuda_sampler(gpu_device);
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
    cuda_dec_.reset();  // before the caches it reads are freed
    if (cuda_logits_buf_ != nullptr) {
        ggml_backend_buffer_free(cuda_logits_buf_);
        cuda_logits_buf_ = nullptr;
    }
    if (cuda_logits_ctx_ != nullptr) {
        ggml_free(cuda_logits_ctx_);
        cuda_logits_ctx_ = nullptr;
        cuda_logits_ = nullptr;
    }
    cuda_sampler_.reset();
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
    if (mel_host_buf_ != nullptr) {
        ggml_backend_buffer_free(mel_host_buf_);
        mel_host_buf_ = nullptr;
    }
    mel_host_vec_ = {};
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
    b += cuda_dec_ ? cuda_dec_->memory_bytes() : 0;
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

// x + MLP(layer_norm(x)) of the block whose tensors start with p: the same in the
// encoder's and the decoder's blocks.
ggml_tensor *BatchDecoder::mlp_block(ggml_context *ctx, ggml_tensor *x, const std::string &p) const {
    ggml_tensor *cur = layer_norm(ctx, x, w(p + "mlp_ln.weight"), w(p + "mlp_ln.bias"));
    cur = ggml_gelu(ctx, ggml_add(ctx, ggml_mul_mat(ctx, w(p + "mlp.0.weight"), cur), w(p + "mlp.0.bias")));
    cur = ggml_add(ctx, ggml_mul_mat(ctx, w(p + "mlp.2.weight"), cur), w(p + "mlp.2.bias"));
    return ggml_add(ctx, cur, x);
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
        x = mlp_block(ctx, ggml_add(ctx, a, x), p);
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
    compact();
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
    const int W = step_width(last + 1);
    // Rows per slot as needed (1 greedy, the beam count, a prompt's length): padding them
    // to powers of two cost up to 60% more work per step for a shape that changes rarely.
    R = R <= 8 ? R : pow2_at_least(R);
    const int n_kv = std::min(n_cells_, ((max_cells + kKvPad - 1) / kKvPad) * kKvPad);
    const int n_rows = W * R;
    const int key[4] = {W, R, n_kv, r_out};
    const bool own = cuda_step_for(W);  // whisperd's CUDA step instead of the graph
    if (!own && (dec_graph_ == nullptr || !std::equal(key, key + 4, dec_key_))) {
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
    if (own) {
        const StepInputs in{W, R, n_kv, r_out, tok.data(), pos.data(), kvr.data(), mask.data(), outs.data()};
        return cuda_step(in, token, t0);
    }
    ggml_backend_tensor_set(ggml_graph_get_tensor(dec_graph_, "tokens"), tok.data(), 0, tok.size() * sizeof(int32_t));
    ggml_backend_tensor_set(ggml_graph_get_tensor(dec_graph_, "pos"), pos.data(), 0, pos.size() * sizeof(int32_t));
    ggml_backend_tensor_set(ggml_graph_get_tensor(dec_graph_, "kv_rows"), kvr.data(), 0, kvr.size() * sizeof(int64_t));
    ggml_backend_tensor_set(ggml_graph_get_tensor(dec_graph_, "mask"), mask.data(), 0, mask.size() * sizeof(ggml_fp16_t));
    ggml_backend_tensor_set(ggml_graph_get_tensor(dec_graph_, "out_rows"), outs.data(), 0, outs.size() * sizeof(int32_t));
    trace("decoder inputs set");
    compute(dec_graph_, token);
    trace("decoder step computed");
    stats_.steps++;
    stats_.rows += n_rows;
    ggml_tensor *lg = ggml_graph_get_tensor(dec_graph_, "logits");
    const size_t row_bytes = static_cast<size_t>(vocab_.n_vocab) * sizeof(float);
    return sample({static_cast<const float *>(lg->data), ggml_backend_buffer_is_host(lg->buffer),
                   [&](size_t row, size_t n, float *dst) {
                       ggml_backend_tensor_get(lg, dst, row * row_bytes, n * row_bytes);
                   }},
                  W, r_out, t0);
}

}  // namespace whisperd
