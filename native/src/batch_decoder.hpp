// One batched decoder over the weights whisper.cpp loaded: a fixed number of slots, each
// holding one window (<= 30 s) of any job. Encoder: several windows in one graph, their
// cross-attention keys/values written into their slots. Decoder: one graph per step for
// every slot in flight, the slots in ggml's batch dimension and one flash-attention call
// per layer for all of them; beams are rows of their window's slot that see their own
// KV cells through a mask, so a beam reorder moves no memory.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "engine.hpp"
#include "greedy_summary.hpp"
#include "window_decoder.hpp"

struct ggml_backend;
struct ggml_context;
struct ggml_gallocr;
struct ggml_cgraph;
struct ggml_tensor;
struct ggml_backend_buffer;

namespace whisperd {

class CudaDecoder;
class CudaEncoder;
class CudaSampler;

struct BatchStats {
    int64_t steps = 0;
    int64_t rows = 0;          // rows computed (padding included)
    int64_t encodes = 0;       // windows encoded
    double encode_ms = 0;
    double decode_ms = 0;      // graph compute + logits read back
    double sample_ms = 0;      // logit rules and sampling (greedy rows' summaries on the GPU included)
    int64_t graph_builds = 0;  // steps whose graph shape was new
    int64_t moves = 0;         // windows moved to a lower slot (compact())
};

class BatchDecoder {
public:
    // n_slots windows at once, each with n_cells self-attention KV cells (beams share
    // a window's cells). Throws OutOfMemoryError when the caches do not fit.
    // mel_on_device (default): the log-mel spectrogram inside the encoder graph, a DFT as
    // a matrix product (~0.1 ms a window on a GPU; whisper.cpp's takes ~180 ms of a CPU
    // core, and the graph's is twice as fast on a CPU too). 0: whisper.cpp's on CPU
    // threads (tests compare the two).
    // cuda_encoder: the encoder layers as our own CUDA code (cuda_encoder.hpp) on a GPU
    // with an f16 model: -1 where f32 accumulation runs at full rate (A100, H100/H200,
    // B200), 1 on any GPU, 0 never (ggml's graph, as on a CPU).
    BatchDecoder(std::shared_ptr<ContextHandle> handle, bool use_gpu, int gpu_device,
                 int n_slots, int n_cells, int n_threads, int max_encode_batch,
                 int mel_on_device = 1, int cuda_encoder = -1);
    ~BatchDecoder();
    BatchDecoder(const BatchDecoder &) = delete;
    BatchDecoder &operator=(const BatchDecoder &) = delete;

    int capacity() const { return n_slots_; }
    int free_slots() const;
    int active() const;
    size_t memory_bytes() const;
    // Encodes the windows (in groups of max_encode_batch) into free slots.
    void add(std::vector<WindowSpec> windows, CancelToken *token);
    // One decoder step for every window in flight; returns the windows that ended.
    std::vector<WindowOutput> step(CancelToken *token);
    void drop(int64_t id);
    void close();
    BatchStats stats() const { return stats_; }
    // The log-mel frames of a window, as the encoder gets them (tests).
    std::vector<float> mel(const std::vector<float> &samples) const;
    // Compute a window's mel now (any thread), so that add() does not wait for it.
    void prepare(WindowSpec &spec) const;
    bool mel_on_device() const { return mel_on_device_; }
    // The log-mel frames of a window as the encoder graph computes them (tests compare
    // them with mel()).
    std::vector<float> device_mel(const std::vector<float> &samples);
    // Whether the encoder layers run as our CUDA code (else as a ggml graph).
    bool cuda_encoder() const;
    // Whether steps run as whisperd's CUDA code (cuda_decoder.hpp) instead of a ggml graph.
    bool cuda_decoder() const;
    // Whether a step of W slots runs as the CUDA code: up to WHISPERD_CUDA_DECODER_MAX_BATCH
    // slots (64); above, the ggml graph, whose cross-attention was faster there (H200).
    bool cuda_step_for(int W) const;
    // The slots a step covers when the highest slot in use is n - 1 (batch_decoder.cpp).
    int step_width(int n) const;
    // compact() moved a window's ggml caches from slot `from` to `to`: the CUDA step's own
    // per-slot buffers follow (batch_cuda_decoder.cpp).
    void cuda_slot_moved(int from, int to);
    // A window's cross-attention keys then values of one decoder layer, [n_audio_ctx,
    // n_state] each, as the encoder wrote them (tests compare the two encoders).
    std::vector<float> cross_kv(int64_t id, int layer) const;
    // Whether greedy rows are summarised on the GPU (cuda_sampler.hpp) so that their logits
    // stay there; off, every row's logits are downloaded and greedy rows summarised on the
    // CPU. Only a CUDA decoder can turn it on (the default there).
    bool gpu_sampling() const;
    void set_gpu_sampling(bool on) { gpu_sampling_ = on; }
    // (id, tid, p, plog, pt, no-speech probability) that greedy decoding takes from each
    // row of logits ([rows][n_vocab]) under its mask, summarised on the CPU or, with
    // device, by the CUDA kernel (tests compare both with Whisper's rules).
    using GreedyPick = std::tuple<int, int, float, float, float, float>;
    std::vector<GreedyPick> greedy_picks(const std::vector<float> &logits, const std::vector<GreedyMask> &masks,
                                         bool device);

private:
    struct Layer {
        ggml_tensor *ck, *cv, *sk, *sv;  // cross and self caches: [n_state, cells, n_slots]
    };
    void encode_group(std::vector<WindowSpec> &group, const std::vector<int> &slots,
                      CancelToken *token);
    ggml_cgraph *build_encoder(ggml_context *ctx, int n, const std::vector<int> &slots,
                               ggml_tensor **input);
    ggml_tensor *build_mel(ggml_context *ctx, int n, ggml_tensor **pcm) const;
    std::vector<float> mel_input(const std::vector<float> &samples) const;
    void init_mel_tensors(const float *filters);  // n_mels rows of kFrame / 2 + 1
    ggml_cgraph *build_decoder(ggml_context *ctx, int w, int r, int n_kv, int r_out);
    ggml_tensor *w(const std::string &name) const;
    ggml_tensor *mlp_block(ggml_context *ctx, ggml_tensor *x, const std::string &p) const;
    ggml_tensor *conv(ggml_context *ctx, const std::string &name, ggml_tensor *x, int stride) const;
    void compute(ggml_cgraph *gf, CancelToken *token);
    void compact();  // windows into the lowest slots, so that steps cover fewer slots
    void start_cuda_encoder(int mode, int gpu_device);
    void start_cuda_decoder(int gpu_device);  // batch_cuda_decoder.cpp
    // A step's inputs as the ggml graph takes them (see step()).
    struct StepInputs {
        int W, R, n_kv, r_out;
        const int32_t *tokens, *positions;
        const int64_t *kv_rows;
        const uint16_t *mask;  // f16 bits
        const int32_t *out_rows;
    };
    // The step through whisperd's CUDA code, its logits in a ggml tensor on the GPU, then
    // sampled as the graph's are.
    std::vector<WindowOutput> cuda_step(const StepInputs &in, CancelToken *token,
                                        std::chrono::steady_clock::time_point t0);
    const void *f16_data(const std::string &name) const;  // throw std::invalid_argument if not
    const float *f32_data(const std::string &name) const;
    void start_cuda_sampler(int gpu_device);
    // A step's logits, [W * r_out][n_vocab] f32: where they are and, when that is not host
    // memory, how to copy n rows from `row` on into dst.
    struct StepLogits {
        const float *data;
        bool on_host;
        std::function<void(size_t row, size_t n, float *dst)> read;
    };
    // After a step: the logits that rows need read back, then each window fed
    // (batch_sampling.cpp).
    std::vector<WindowOutput> sample(const StepLogits &logits, int W, int r_out,
                                     std::chrono::steady_clock::time_point t0);

    std::shared_ptr<ContextHandle> handle_;
    whisper_context *wctx_;
    Vocab vocab_;
    GreedyVocab greedy_vocab_;
    bool gpu_sampling_ = true;
    ggml_backend *backend_ = nullptr;
    ggml_context *cache_ctx_ = nullptr;
    ggml_backend_buffer *cache_buf_ = nullptr;
    std::vector<Layer> layers_;
    ggml_tensor *pad_k_ = nullptr, *pad_v_ = nullptr;  // encoder K/V padded to 256 rows
    bool mel_on_device_ = false;
    // [400, 2 * kBins]: Hann-windowed cosines then sines; [2 * kBins, n_mels]: the
    // filterbank twice (re^2 and im^2); [400, 1]: only im2col's frame shape.
    ggml_tensor *mel_dft_ = nullptr, *mel_fb_ = nullptr, *mel_frame_ = nullptr;
    ggml_gallocr *enc_alloc_ = nullptr;
    ggml_gallocr *dec_alloc_ = nullptr;
    // The encoder's input for a group, kept between groups: in pinned memory where the
    // backend has it (the upload is then a DMA), else an ordinary vector (batch_encoder.cpp).
    ggml_backend_buffer *mel_host_buf_ = nullptr;
    std::vector<float> mel_host_vec_;
    float *mel_staging(size_t floats);
    std::vector<uint8_t> enc_meta_, dec_meta_;
    ggml_context *dec_ctx_ = nullptr;
    ggml_cgraph *dec_graph_ = nullptr;
    int dec_key_[4] = {-1, -1, -1, -1};

    int n_slots_, n_cells_, n_threads_, max_encode_batch_;
    int n_state_, n_head_, n_text_layer_, n_audio_layer_, n_mels_, n_audio_ctx_, n_audio_pad_,
        n_text_ctx_;
    std::vector<std::unique_ptr<WindowDecoder>> slots_;
    BatchStats stats_;
    std::vector<float> logits_;
    class Pool;
    std::unique_ptr<Pool> pool_;  // sampling threads, kept between steps
#ifdef WHISPERD_WITH_CUDA  // a definition private to the extension's own sources
    std::unique_ptr<CudaEncoder> cuda_enc_;
    std::unique_ptr<CudaDecoder> cuda_dec_;
    int cuda_dec_max_w_ = 1 << 20;  // steps of more slots take the ggml graph (a comparison)
    ggml_context *cuda_logits_ctx_ = nullptr;  // a ggml tensor the CUDA step writes its logits to
    ggml_backend_buffer *cuda_logits_buf_ = nullptr;
    ggml_tensor *cuda_logits_ = nullptr;
    std::unique_ptr<CudaSampler> cuda_sampler_;
#endif
};

}  // namespace whisperd
