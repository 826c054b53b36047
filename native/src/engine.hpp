// The thin native core: a loaded model, decoding states over it, and one transcription
// call with callbacks and cancellation. Queues, lifecycle and formats live in Python.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tokenizer.hpp"

struct whisper_context;
struct whisper_state;

namespace whisperd {

// Set from any thread (no GIL needed); checked by ggml between graph computations.
class CancelToken {
public:
    void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
    bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

private:
    std::atomic<bool> cancelled_{false};
};

struct Options {
    std::string language;           // ISO 639-1; empty = detect
    bool translate = false;         // translate to English instead of transcribing
    int beam_size = 5;              // 1 = greedy
    int best_of = 5;                // candidates when sampling at temperature > 0
    float temperature = 0.0f;
    float temperature_increment = 0.2f;  // fallback step; 0 disables the fallback
    float no_speech_threshold = 0.6f;
    float logprob_threshold = -1.0f;
    float entropy_threshold = 2.4f;
    std::string initial_prompt;
    bool token_timestamps = false;  // per-token times, grouped into words by Python
    bool vad = false;
    std::string vad_model_path;
    float vad_threshold = 0.5f;
    int vad_min_speech_ms = 250;
    int vad_min_silence_ms = 100;
    int vad_speech_pad_ms = 30;
    int n_threads = 0;              // 0 = every CPU
    // Start each call without the previous call's text as a prompt (a reused state keeps
    // it); windows within one call still condition on each other.
    bool no_context = true;
    // Benchmarks only: decode exactly this many tokens in every 30 s window whatever the
    // model predicts (a timestamp, text tokens, a closing timestamp), so that models with
    // random weights do a fixed, comparable amount of work. 0 = off.
    int forced_tokens_per_window = 0;
};

// Where one call's time went, as whisper.cpp counts it for the state (milliseconds).
struct Timings {
    double mel_ms = 0;
    double encode_ms = 0;
    double prompt_ms = 0;   // decoder passes over the prompt
    double decode_ms = 0;   // single-sequence decoder steps (greedy)
    double batchd_ms = 0;   // batched decoder steps (beam search, best-of)
    double sample_ms = 0;   // choosing tokens from the logits, on the CPU
    int n_encode = 0;
    int n_prompt = 0;
    int n_decode = 0;
    int n_batchd = 0;
    int n_sample = 0;
    int n_fallbacks = 0;    // windows decoded again at a higher temperature
    bool available = false; // false when built against a whisper.cpp without the counters
};

struct Token {
    int32_t id;
    std::string text;
    float p;
    int64_t t0;  // centiseconds
    int64_t t1;
};

struct SegmentData {
    int index;
    int64_t t0;  // centiseconds
    int64_t t1;
    std::string text;
    float no_speech_prob;
    std::vector<Token> tokens;
};

struct Result {
    std::vector<SegmentData> segments;
    std::string language;
    float language_probability;
    Timings timings;
};

// Owns the whisper context (the weights); freed when the model and all its states let go.
struct ContextHandle {
    explicit ContextHandle(whisper_context *c) : ctx(c) {}
    ~ContextHandle();
    ContextHandle(const ContextHandle &) = delete;
    ContextHandle &operator=(const ContextHandle &) = delete;
    // Prompts go through our tokenizer, never whisper_tokenize (tokenizer.hpp says why);
    // built on first use, from any thread.
    const Tokenizer &tokenizer() const;
    whisper_context *ctx;

private:
    mutable std::once_flag tokenizer_once_;
    mutable std::unique_ptr<Tokenizer> tokenizer_;
};

class State;
class BatchDecoder;

class Model {
public:
    Model(const std::string &path, bool use_gpu, bool flash_attn, int gpu_device);

    std::unique_ptr<State> new_state();
    // One batched decoder over these weights (see batch_decoder.hpp).
    std::unique_ptr<BatchDecoder> new_batch_decoder(int n_slots, int n_cells, int n_threads,
                                                    int max_encode_batch, int mel_on_device = 1,
                                                    int cuda_encoder = -1);
    int gpu_device() const { return gpu_device_; }
    std::vector<int> tokenize(const std::string &text) const;
    // whisper.cpp's own whisper_tokenize (tests compare it with tokenize()).
    std::vector<int> tokenize_reference(const std::string &text) const;
    int n_text_ctx() const;
    int n_text_state() const;
    int n_audio_ctx() const;
    // Drop the model's own hold on the weights; memory is freed once every state is closed.
    void close();
    bool closed() const { return handle_ == nullptr; }

    const std::string &path() const { return path_; }
    bool multilingual() const;
    std::string type_name() const;
    int n_vocab() const;
    int n_text_layer() const;
    int token_eot() const;
    bool use_gpu() const { return use_gpu_; }

private:
    const ContextHandle &handle() const;
    std::shared_ptr<ContextHandle> handle_;
    std::string path_;
    bool use_gpu_;
    bool flash_attn_;
    int gpu_device_ = 0;
};

using ProgressFn = std::function<void(int)>;
using SegmentsFn = std::function<void(const std::vector<SegmentData> &)>;

class State {
public:
    State(std::shared_ptr<ContextHandle> handle, whisper_state *state);
    ~State();
    State(const State &) = delete;
    State &operator=(const State &) = delete;

    // Runs with the GIL released; the callbacks re-acquire it themselves.
    Result transcribe(const float *samples, size_t n_samples, const Options &opts,
                      CancelToken *token, const ProgressFn &on_progress,
                      const SegmentsFn &on_segments);
    void close();
    bool closed() const { return state_ == nullptr; }

private:
    // Where a stretch of speech kept by VAD sits in the original audio (samples).
    struct SpeechSpan {
        int64_t original_start;
        int64_t filtered_start;
        int64_t length;
    };

    SegmentData read_segment(int i, bool with_tokens) const;
    int64_t to_original_cs(int64_t filtered_cs) const;
    // whisper_full_with_state ignores params.vad (only whisper_full applies it, on the
    // context's default state), so VAD is done here, per state.
    std::vector<float> keep_speech(const float *samples, size_t n_samples, const Options &opts,
                                   int threads);

    std::shared_ptr<ContextHandle> handle_;
    whisper_state *state_;
    std::vector<SpeechSpan> spans_;  // of the call in progress; empty without VAD
};

// Speech found by Silero VAD: (start, end) sample offsets. Our own forward pass
// (silero_vad.hpp), several times faster than whisper.cpp's and equal to it.
std::vector<std::pair<int64_t, int64_t>> vad_speech_spans(const float *samples, size_t n_samples,
                                                          const Options &opts, int threads);
// Silero's speech probability per 512-sample frame, ours and whisper.cpp's (tests).
std::vector<float> vad_probabilities(const float *samples, size_t n_samples, const Options &opts);
std::vector<float> vad_probabilities_reference(const float *samples, size_t n_samples, const Options &opts);
// vad_speech_spans through whisper.cpp's own VAD (tests compare the two).
std::vector<std::pair<int64_t, int64_t>> vad_speech_spans_reference(const float *samples, size_t n_samples,
                                                                    const Options &opts, int threads);

std::string system_info();
std::string whisper_version();
bool built_with_cuda();
std::string cuda_architectures();

struct Device {
    std::string name;
    std::string description;
    std::string type;  // cpu, gpu, igpu, accel
    size_t memory_free;
    size_t memory_total;
};
std::vector<Device> devices();

// Quantise rows of float32 into a ggml block type (q8_0, q5_1, q5_0, q4_1, q4_0).
std::string quantize_rows(const std::string &qtype, const float *data, int64_t n_rows,
                          int64_t n_per_row);

}  // namespace whisperd
