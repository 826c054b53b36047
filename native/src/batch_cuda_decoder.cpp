// The batched decoder's step as whisperd's CUDA code (cuda_decoder.hpp): whether it runs,
// and its weights and caches gathered from the model whisper.cpp loaded.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "batch_decoder.hpp"
#include "batch_internal.hpp"
#include "errors.hpp"
#ifdef WHISPERD_WITH_CUDA
#include "cuda_decoder.hpp"
#include "cuda_encoder.hpp"
#endif
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "whisper.h"

namespace whisperd {

using namespace batch_detail;

bool BatchDecoder::cuda_decoder() const {
#ifdef WHISPERD_WITH_CUDA
    return cuda_dec_ != nullptr;
#else
    return false;
#endif
}

bool BatchDecoder::cuda_step_for(int W) const {
#ifdef WHISPERD_WITH_CUDA
    return cuda_dec_ != nullptr && W <= cuda_dec_max_w_;
#else
    (void)W;
    return false;
#endif
}

void BatchDecoder::cuda_slot_moved(int from, int to) {
    // The CUDA step's own per-slot state: the int8 copy of the cross K/V (WHISPERD_CROSS_KV_INT8).
#ifdef WHISPERD_WITH_CUDA
    if (cuda_dec_ != nullptr) {
        cuda_dec_->move_cross(from, to);
    }
#else
    (void)from;
    (void)to;
#endif
}

#ifdef WHISPERD_WITH_CUDA
namespace {

// WHISPERD_CUDA_DECODER: auto (the default: where the CUDA encoder is on by default), 1,
// 0 (the ggml graph: the comparison for tests and benchmarks).
int cuda_decoder_mode() {
    const char *raw = std::getenv("WHISPERD_CUDA_DECODER");
    const std::string v = raw == nullptr ? "" : raw;
    if (v.empty() || v == "auto") {
        return -1;
    }
    if (v == "0" || v == "1") {
        return v == "1" ? 1 : 0;
    }
    throw WhisperError("WHISPERD_CUDA_DECODER must be 0, 1 or auto (got '" + v + "')");
}

// WHISPERD_CUDA_DECODER_MAX_BATCH: the most slots a step takes the CUDA code for.
int cuda_decoder_max_batch() {
    const char *raw = std::getenv("WHISPERD_CUDA_DECODER_MAX_BATCH");
    if (raw == nullptr || *raw == '\0') {
        // Every step: H200, large-v3, a step of 64 takes 7.6 ms here, 8.9 as a graph; of 128
        // 11.7 and 14.0 (the cross-attention reading whole K/V rows, cuda_cross_attention.cu).
        return 1 << 20;
    }
    char *end = nullptr;
    const long n = std::strtol(raw, &end, 10);
    if (*end != '\0' || n < 0 || n > 1 << 20) {
        throw WhisperError(std::string("WHISPERD_CUDA_DECODER_MAX_BATCH must be a number of windows (got '") + raw +
                           "')");
    }
    return static_cast<int>(n);
}

// A switch that is on unless set to 0 (unset or empty: on); any other value is refused
// with its name. The three below are its uses:
// WHISPERD_CROSS_KV_INT8: 1 keeps an int8 copy of the cross K/V for greedy CUDA steps
// (half the bytes of their cross-attention, ~1e-2 error in those K/V, the same words in
// every comparison made); 0, only the f16 caches. Without the CUDA step it changes nothing.
// WHISPERD_CUDA_STEP_FUSION: 1 runs the step's Q, K and V as one batched product and FC1
// with its bias and GELU in one; 0, as separate products and a bias pass (an A/B of the
// two in one build).
// WHISPERD_CUDA_STEP_TUNE: 1 times a few of cuBLASLt's algorithms and cuBLAS's own choice
// for each of the step's product shapes once and keeps the fastest; 0 takes cuBLAS's choice.
bool switch_on(const char *name) {
    const char *raw = std::getenv(name);
    const std::string v = raw == nullptr ? "" : raw;
    if (v.empty() || v == "0" || v == "1") {
        return v != "0";
    }
    throw WhisperError(std::string(name) + " must be 0 or 1 (got '" + v + "')");
}

}  // namespace
#endif

void BatchDecoder::start_cuda_decoder(int gpu_device) {
#ifdef WHISPERD_WITH_CUDA
    const int mode = cuda_decoder_mode();
    cuda_dec_max_w_ = cuda_decoder_max_batch();
    const bool int8 = switch_on("WHISPERD_CROSS_KV_INT8");
    const bool fusion = switch_on("WHISPERD_CUDA_STEP_FUSION");
    const bool tune = switch_on("WHISPERD_CUDA_STEP_TUNE");
    if (mode == 0 || ggml_backend_is_cpu(backend_)) {
        return;
    }
    if (mode < 0 && !CudaEncoder::full_rate_f32_accumulate(gpu_device)) {
        return;
    }
    CudaDecoderModel model;
    try {
        for (int l = 0; l < n_text_layer_; ++l) {
            const std::string p = "decoder.blocks." + std::to_string(l) + ".";
            CudaDecoderLayer L{};
            L.wq = f16_data(p + "attn.query.weight");
            L.wk = f16_data(p + "attn.key.weight");
            L.wv = f16_data(p + "attn.value.weight");
            L.wo = f16_data(p + "attn.out.weight");
            L.cwq = f16_data(p + "cross_attn.query.weight");
            L.cwo = f16_data(p + "cross_attn.out.weight");
            L.w1 = f16_data(p + "mlp.0.weight");
            L.w2 = f16_data(p + "mlp.2.weight");
            L.bq = f32_data(p + "attn.query.bias");
            L.bv = f32_data(p + "attn.value.bias");
            L.bo = f32_data(p + "attn.out.bias");
            L.cbq = f32_data(p + "cross_attn.query.bias");
            L.cbo = f32_data(p + "cross_attn.out.bias");
            L.b1 = f32_data(p + "mlp.0.bias");
            L.b2 = f32_data(p + "mlp.2.bias");
            L.ln1_w = f32_data(p + "attn_ln.weight");
            L.ln1_b = f32_data(p + "attn_ln.bias");
            L.ln2_w = f32_data(p + "cross_attn_ln.weight");
            L.ln2_b = f32_data(p + "cross_attn_ln.bias");
            L.ln3_w = f32_data(p + "mlp_ln.weight");
            L.ln3_b = f32_data(p + "mlp_ln.bias");
            L.sk = layers_[l].sk->data;
            L.sv = layers_[l].sv->data;
            L.ck = layers_[l].ck->data;
            L.cv = layers_[l].cv->data;
            model.layers.push_back(L);
        }
        model.token_embedding = f16_data("decoder.token_embedding.weight");
        model.positional_embedding = f32_data("decoder.positional_embedding");
        model.ln_w = f32_data("decoder.ln.weight");
        model.ln_b = f32_data("decoder.ln.bias");
    } catch (const std::invalid_argument &e) {
        if (mode > 0) {
            fprintf(stderr, "whisperd: the decoder step stays a ggml graph: %s is not f16/f32\n", e.what());
        }
        return;
    }
    CudaDecoderShape shape{};
    shape.n_state = n_state_;
    shape.n_head = n_head_;
    shape.n_ff = static_cast<int>(w("decoder.blocks.0.mlp.0.weight")->ne[1]);
    shape.n_vocab = vocab_.n_vocab;
    shape.n_text_ctx = n_text_ctx_;
    shape.n_cells = n_cells_;
    shape.n_audio_pad = n_audio_pad_;
    shape.n_audio_ctx = n_audio_ctx_;
    shape.n_slots = n_slots_;
    shape.cross_int8 = int8;
    shape.fused_products = fusion;
    shape.tuned_products = tune;
    shape.kq_scale = powf(static_cast<float>(n_state_ / n_head_), -0.25f);
    cuda_dec_ = std::make_unique<CudaDecoder>(gpu_device, shape, std::move(model));
    trace("CUDA decoder ready");
#else
    (void)gpu_device;
#endif
}

std::vector<WindowOutput> BatchDecoder::cuda_step(const StepInputs &in, CancelToken *token,
                                                  std::chrono::steady_clock::time_point t0) {
#ifdef WHISPERD_WITH_CUDA
    const int n_out = in.W * in.r_out;
    // The logits live in a ggml tensor so that sampling reads them as it reads the graph's
    // (on the GPU for greedy rows, copied back for the others); it grows with the step.
    if (cuda_logits_ == nullptr || cuda_logits_->ne[1] < n_out) {
        if (cuda_logits_buf_ != nullptr) {
            ggml_backend_buffer_free(cuda_logits_buf_);
            cuda_logits_buf_ = nullptr;
        }
        if (cuda_logits_ctx_ == nullptr) {
            ggml_init_params ip = {ggml_tensor_overhead() * 2, nullptr, true};
            cuda_logits_ctx_ = ggml_init(ip);
        }
        cuda_logits_ = ggml_new_tensor_2d(cuda_logits_ctx_, GGML_TYPE_F32, vocab_.n_vocab, std::max(n_out, n_slots_));
        cuda_logits_buf_ = ggml_backend_alloc_ctx_tensors(cuda_logits_ctx_, backend_);
        if (cuda_logits_buf_ == nullptr) {
            throw OutOfMemoryError("out of GPU memory for the logits of " + std::to_string(n_out) + " rows");
        }
    }
    const CudaStepInputs ci{in.W, in.R, in.n_kv, in.r_out, in.tokens, in.positions, in.kv_rows, in.mask, in.out_rows};
    cuda_dec_->step(ci, static_cast<float *>(cuda_logits_->data));
    if (token != nullptr && token->cancelled()) {
        throw TranscriptionAborted("batched decoding stopped");
    }
    stats_.steps++;
    stats_.rows += static_cast<int64_t>(in.W) * in.R;
    ggml_tensor *lg = cuda_logits_;
    const size_t row_bytes = static_cast<size_t>(vocab_.n_vocab) * sizeof(float);
    return sample({static_cast<const float *>(lg->data), false,
                   [lg, row_bytes](size_t row, size_t n, float *dst) {
                       ggml_backend_tensor_get(lg, dst, row * row_bytes, n * row_bytes);
                   }},
                  in.W, in.r_out, t0);
#else
    (void)in;
    (void)token;
    (void)t0;
    throw WhisperError("this build has no CUDA decoder");
#endif
}

}  // namespace whisperd
