// The batched decoder's mel spectrogram (inside the encoder graph) and encoder: several
// new windows at a time, as a ggml graph or, on full-rate GPUs with an f16 model, the
// ggml front end followed by whisperd's CUDA layers (cuda_encoder.hpp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include "batch_decoder.hpp"
#include "batch_internal.hpp"
#include "errors.hpp"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "whisper.h"
#ifdef WHISPERD_WITH_CUDA
#include "cuda_decoder.hpp"
#include "cuda_encoder.hpp"
#endif

namespace whisperd {

using namespace batch_detail;

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

// ---------------------------------------------------------------- encoder

const void *BatchDecoder::f16_data(const std::string &name) const {
    ggml_tensor *t = w(name);
    if (t->type != GGML_TYPE_F16 || !ggml_is_contiguous(t)) {
        throw std::invalid_argument(name);
    }
    return t->data;
}

const float *BatchDecoder::f32_data(const std::string &name) const {
    ggml_tensor *t = w(name);
    if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t)) {
        throw std::invalid_argument(name);
    }
    return static_cast<const float *>(t->data);
}

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
    auto f16 = [&](const std::string &name) { return f16_data(name); };
    auto f32 = [&](const std::string &name) { return f32_data(name); };
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
        x = mlp_block(ctx, ggml_add(ctx, a, x), p);
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

// A group's input was a fresh vector each time (~2 MB a window of new pages) uploaded from
// pageable memory: together ~0.3-0.5 ms a window of the ~0.6 ms between the encoder's
// GPU time (5.7 ms a window, ncu) and its wall time on the H200. One buffer for the
// largest group instead, pinned where the backend offers it.
float *BatchDecoder::mel_staging(size_t floats) {
    const size_t bytes = floats * sizeof(float);
    if (mel_host_buf_ != nullptr && ggml_backend_buffer_get_size(mel_host_buf_) >= bytes) {
        return static_cast<float *>(ggml_backend_buffer_get_base(mel_host_buf_));
    }
    if (mel_host_buf_ == nullptr && mel_host_vec_.size() >= floats) {
        return mel_host_vec_.data();
    }
    if (mel_host_buf_ != nullptr) {
        ggml_backend_buffer_free(mel_host_buf_);
        mel_host_buf_ = nullptr;
    }
    ggml_backend_dev_t dev = ggml_backend_get_device(backend_);
    ggml_backend_buffer_type_t host = dev != nullptr ? ggml_backend_dev_host_buffer_type(dev) : nullptr;
    if (host != nullptr) {
        mel_host_buf_ = ggml_backend_buft_alloc_buffer(host, bytes);  // nullptr: pageable after all
    }
    if (mel_host_buf_ != nullptr) {
        mel_host_vec_ = {};
        return static_cast<float *>(ggml_backend_buffer_get_base(mel_host_buf_));
    }
    mel_host_vec_.resize(floats);
    return mel_host_vec_.data();
}

void BatchDecoder::encode_group(std::vector<WindowSpec> &group, const std::vector<int> &slots,
                                CancelToken *token) {
    const auto t0 = std::chrono::steady_clock::now();
    const int n = static_cast<int>(group.size());
    // Mel spectrograms on the CPU (those not prepared ahead), a window per thread; or,
    // with the mel on the device, only the padded samples.
    const size_t per = mel_on_device_ ? static_cast<size_t>(kMelInput) : static_cast<size_t>(n_mels_) * kMelFrames;
    // Sized for the largest group once, so later groups reuse the same pages.
    float *mels = mel_staging(static_cast<size_t>(std::max(n, max_encode_batch_)) * per);
    {
        std::vector<std::string> errors(n);
        pool_->run(n, [&](size_t i) {
            try {
                if (group[i].mel.size() != per) {
                    group[i].mel = {};  // prepared for the other kind of input
                }
                prepare(group[i]);
                std::copy(group[i].mel.begin(), group[i].mel.end(), mels + i * per);
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
    ggml_backend_tensor_set(mel_in, mels, 0, static_cast<size_t>(n) * per * sizeof(float));
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
        // Both encoders have finished writing (ggml's compute and encode() wait for their
        // streams): the CUDA step's int8 copy of these slots' cross K/V.
        if (cuda_dec_ != nullptr && cuda_dec_->cross_int8()) {
            cuda_dec_->quantize_cross(slots);
            trace("cross K/V quantised");
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

}  // namespace whisperd
