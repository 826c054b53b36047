#include "engine.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <filesystem>
#include <stdexcept>

#include "batch_decoder.hpp"
#include "engine_internal.hpp"
#include "errors.hpp"
#include "log_bridge.hpp"
#include "whisper.h"

namespace whisperd {

namespace {

constexpr int kMaxBeam = 16;

// What whisper.cpp's C callbacks need to reach back into the call.
struct CallContext {
    CancelToken *token;
    const ProgressFn *on_progress;
    const SegmentsFn *on_segments;
    std::function<SegmentData(int)> read_segment;
    std::exception_ptr error;  // a Python callback that raised: stop and rethrow later
    int last_progress = -1;

    bool should_stop() const {
        return error != nullptr || (token != nullptr && token->cancelled());
    }
};

void on_progress_cb(whisper_context *, whisper_state *, int progress, void *user) {
    auto *cc = static_cast<CallContext *>(user);
    if (cc->error || !*cc->on_progress || progress <= cc->last_progress) {
        return;
    }
    cc->last_progress = progress;
    try {
        (*cc->on_progress)(progress);
    } catch (...) {
        cc->error = std::current_exception();
    }
}

void on_new_segment_cb(whisper_context *, whisper_state *state, int n_new, void *user) {
    auto *cc = static_cast<CallContext *>(user);
    if (cc->error || !*cc->on_segments) {
        return;
    }
    const int total = whisper_full_n_segments_from_state(state);
    std::vector<SegmentData> fresh;
    for (int i = std::max(0, total - n_new); i < total; ++i) {
        fresh.push_back(cc->read_segment(i));
    }
    try {
        (*cc->on_segments)(fresh);
    } catch (...) {
        cc->error = std::current_exception();
    }
}

// Benchmark mode (Options::forced_tokens_per_window): the n-th token of every window is
// fixed, so each window decodes exactly `n` tokens whatever the weights say. The shape
// obeys whisper.cpp's timestamp rules, which run after this filter: <|0.00|>, distinct
// text tokens (repeats would trip the entropy check and a temperature fallback), a
// closing <|30.00|> that moves the window on, then end of text.
struct ForcedTokens {
    int n;
    whisper_token eot;
    whisper_token beg;
    int n_vocab;
};

void forced_tokens_cb(whisper_context *, whisper_state *, const whisper_token_data *,
                      int n_tokens, float *logits, void *user) {
    const auto *f = static_cast<const ForcedTokens *>(user);
    whisper_token want;
    if (n_tokens == 0) {
        want = f->beg;
    } else if (n_tokens >= f->n - 1) {
        want = f->eot;
    } else if (n_tokens == f->n - 2) {
        want = std::min(f->beg + 1500, f->n_vocab - 1);
    } else {
        want = 1000 + (n_tokens * 97) % 20000;  // plain text tokens in every Whisper vocabulary
    }
    for (int i = 0; i < f->n_vocab; ++i) {
        logits[i] = -INFINITY;
    }
    logits[want] = 0.0f;
}

#ifdef WHISPERD_STATE_TIMINGS
Timings timings_between(const whisper_state_timings &a, const whisper_state_timings &b) {
    Timings t;
    t.mel_ms = (b.mel_us - a.mel_us) / 1000.0;
    t.encode_ms = (b.encode_us - a.encode_us) / 1000.0;
    t.prompt_ms = (b.prompt_us - a.prompt_us) / 1000.0;
    t.decode_ms = (b.decode_us - a.decode_us) / 1000.0;
    t.batchd_ms = (b.batchd_us - a.batchd_us) / 1000.0;
    t.sample_ms = (b.sample_us - a.sample_us) / 1000.0;
    t.n_encode = b.n_encode - a.n_encode;
    t.n_prompt = b.n_prompt - a.n_prompt;
    t.n_decode = b.n_decode - a.n_decode;
    t.n_batchd = b.n_batchd - a.n_batchd;
    t.n_sample = b.n_sample - a.n_sample;
    t.n_fallbacks = (b.n_fail_p - a.n_fail_p) + (b.n_fail_h - a.n_fail_h);
    t.available = true;
    return t;
}
#endif

bool on_abort_cb(void *user) {
    const bool stop = static_cast<CallContext *>(user)->should_stop();
    if (stop) {
        set_stopping(true);  // only the calling thread logs; see log_bridge.hpp
    }
    return stop;
}

bool on_encoder_begin_cb(whisper_context *, whisper_state *, void *user) {
    const bool stop = static_cast<CallContext *>(user)->should_stop();
    if (stop) {
        set_stopping(true);
    }
    return !stop;
}

}  // namespace

ContextHandle::~ContextHandle() {
    if (ctx != nullptr) {
        whisper_free(ctx);
    }
}

const Tokenizer &ContextHandle::tokenizer() const {
    std::call_once(tokenizer_once_, [this] { tokenizer_ = std::make_unique<Tokenizer>(ctx); });
    return *tokenizer_;
}

// ---------------------------------------------------------------- Model

Model::Model(const std::string &path, bool use_gpu, bool flash_attn, int gpu_device)
    : path_(path), use_gpu_(use_gpu), flash_attn_(flash_attn), gpu_device_(gpu_device) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
        throw ModelLoadError("model file not found: " + path +
                             " (convert or download one with `whisperd model ...`, or set "
                             "WHISPER_MODEL_PATH)");
    }
    whisper_context_params cp = whisper_context_default_params();
    cp.use_gpu = use_gpu;
    cp.flash_attn = flash_attn;
    cp.gpu_device = gpu_device;

    LogCapture capture;
    whisper_context *ctx = whisper_init_from_file_with_params_no_state(path.c_str(), cp);
    if (ctx == nullptr) {
        if (capture.mentions_out_of_memory()) {
            throw OutOfMemoryError("out of memory while loading " + path + ": " +
                                   capture.summary());
        }
        throw ModelLoadError("could not load model " + path +
                             " (corrupt, truncated or not a whisper.cpp GGML file): " +
                             capture.summary());
    }
    handle_ = std::make_shared<ContextHandle>(ctx);
}

const ContextHandle &Model::handle() const {
    if (!handle_) {
        throw std::runtime_error("the model has been closed");
    }
    return *handle_;
}

std::unique_ptr<State> Model::new_state() {
    const ContextHandle &h = handle();
    LogCapture capture;
    whisper_state *st = whisper_init_state(h.ctx);
    if (st == nullptr) {
        if (capture.mentions_out_of_memory()) {
            throw OutOfMemoryError("out of memory while creating a decoding state: " +
                                   capture.summary());
        }
        throw WhisperError("could not create a decoding state: " + capture.summary());
    }
    return std::make_unique<State>(handle_, st);
}

std::unique_ptr<BatchDecoder> Model::new_batch_decoder(int n_slots, int n_cells, int n_threads,
                                                       int max_encode_batch, int mel_on_device,
                                                       int cuda_encoder) {
    handle();  // throws when closed
    LogCapture capture;
    try {
        return std::make_unique<BatchDecoder>(handle_, use_gpu_, gpu_device_, n_slots, n_cells,
                                              n_threads, max_encode_batch, mel_on_device, cuda_encoder);
    } catch (const OutOfMemoryError &) {
        throw;
    } catch (const std::exception &e) {
        if (capture.mentions_out_of_memory()) {
            throw OutOfMemoryError(std::string("out of memory for the batched decoder: ") + e.what());
        }
        throw;
    }
}

void Model::close() { handle_.reset(); }

std::vector<int> Model::tokenize(const std::string &text) const {
    return handle().tokenizer().encode(text);
}

std::vector<int> Model::tokenize_reference(const std::string &text) const {
    whisper_context *ctx = handle().ctx;
    std::vector<whisper_token> out(text.size() + 8);  // never more tokens than bytes
    const int got = whisper_tokenize(ctx, text.c_str(), out.data(), static_cast<int>(out.size()));
    if (got < 0) {
        throw WhisperError("could not tokenize the prompt");
    }
    return std::vector<int>(out.begin(), out.begin() + got);
}

int Model::n_text_ctx() const { return whisper_model_n_text_ctx(handle().ctx); }
int Model::n_text_state() const { return whisper_model_n_text_state(handle().ctx); }
int Model::n_audio_ctx() const { return whisper_model_n_audio_ctx(handle().ctx); }

bool Model::multilingual() const { return whisper_is_multilingual(handle().ctx) != 0; }
std::string Model::type_name() const { return whisper_model_type_readable(handle().ctx); }
int Model::n_vocab() const { return whisper_model_n_vocab(handle().ctx); }
int Model::n_text_layer() const { return whisper_model_n_text_layer(handle().ctx); }
int Model::token_eot() const { return whisper_token_eot(handle().ctx); }

// ---------------------------------------------------------------- State

State::State(std::shared_ptr<ContextHandle> handle, whisper_state *state)
    : handle_(std::move(handle)), state_(state) {}

State::~State() { close(); }

void State::close() {
    if (state_ != nullptr) {
        whisper_free_state(state_);
        state_ = nullptr;
    }
    handle_.reset();
}

SegmentData State::read_segment(int i, bool with_tokens) const {
    SegmentData seg;
    seg.index = i;
    seg.t0 = to_original_cs(whisper_full_get_segment_t0_from_state(state_, i));
    seg.t1 = to_original_cs(whisper_full_get_segment_t1_from_state(state_, i));
    seg.text = whisper_full_get_segment_text_from_state(state_, i);
    seg.no_speech_prob = whisper_full_get_segment_no_speech_prob_from_state(state_, i);
    if (with_tokens) {
        const int n = whisper_full_n_tokens_from_state(state_, i);
        seg.tokens.reserve(n);
        for (int j = 0; j < n; ++j) {
            const whisper_token_data d = whisper_full_get_token_data_from_state(state_, i, j);
            seg.tokens.push_back(Token{
                d.id, whisper_full_get_token_text_from_state(handle_->ctx, state_, i, j), d.p,
                to_original_cs(d.t0), to_original_cs(d.t1)});
        }
    }
    return seg;
}

Result State::transcribe(const float *samples, size_t n_samples, const Options &opts,
                         CancelToken *token, const ProgressFn &on_progress,
                         const SegmentsFn &on_segments) {
    if (state_ == nullptr || !handle_) {
        throw std::runtime_error("this decoding state has been closed");
    }
    whisper_context *ctx = handle_->ctx;
    if (n_samples == 0) {
        throw std::invalid_argument("empty audio: no samples to transcribe");
    }
    if (n_samples > static_cast<size_t>(INT32_MAX)) {
        throw std::invalid_argument("audio too long for one call (more than 37 hours)");
    }
    if (opts.beam_size < 1 || opts.beam_size > kMaxBeam) {
        throw std::invalid_argument("beam_size must be between 1 and " + std::to_string(kMaxBeam) +
                                    ", got " + std::to_string(opts.beam_size));
    }
    if (opts.temperature < 0.0f || opts.temperature > 1.0f) {
        throw std::invalid_argument("temperature must be between 0 and 1");
    }
    if (opts.temperature_increment < 0.0f || opts.temperature_increment > 1.0f) {
        throw std::invalid_argument("temperature_increment must be between 0 and 1");
    }
    if (opts.vad && !std::filesystem::is_regular_file(opts.vad_model_path)) {
        throw std::invalid_argument("VAD model not found: " + opts.vad_model_path);
    }
    const bool multilingual = whisper_is_multilingual(ctx) != 0;
    if (!opts.language.empty() && opts.language != "auto") {
        if (whisper_lang_id(opts.language.c_str()) < 0) {
            throw std::invalid_argument("unknown language code '" + opts.language +
                                        "' (use an ISO 639-1 code such as en, de, es, or leave "
                                        "it empty to detect)");
        }
        if (!multilingual && opts.language != "en") {
            throw std::invalid_argument("this model is English-only; language '" + opts.language +
                                        "' needs a multilingual model");
        }
    }
    if (opts.translate && !multilingual) {
        throw std::invalid_argument("this model is English-only; translate needs a multilingual "
                                    "model");
    }

    const int threads = opts.n_threads > 0 ? opts.n_threads : default_threads();
    const whisper_sampling_strategy strategy =
        opts.beam_size > 1 ? WHISPER_SAMPLING_BEAM_SEARCH : WHISPER_SAMPLING_GREEDY;
    whisper_full_params p = whisper_full_default_params(strategy);
    p.n_threads = threads;
    p.translate = opts.translate;
    p.no_context = opts.no_context;
    p.print_special = false;
    p.print_progress = false;
    p.print_realtime = false;
    p.print_timestamps = false;
    p.token_timestamps = opts.token_timestamps;
    // whisper_full would tokenize initial_prompt with whisper_tokenize; the tokens are
    // the same from our tokenizer (tokenizer.hpp).
    const std::vector<int> prompt = handle_->tokenizer().encode(opts.initial_prompt);
    p.prompt_tokens = prompt.empty() ? nullptr : prompt.data();
    p.prompt_n_tokens = static_cast<int>(prompt.size());
    p.temperature = opts.temperature;
    p.temperature_inc = opts.temperature_increment;
    p.no_speech_thold = opts.no_speech_threshold;
    p.logprob_thold = opts.logprob_threshold;
    p.entropy_thold = opts.entropy_threshold;
    p.greedy.best_of = std::max(1, opts.best_of);
    p.beam_search.beam_size = opts.beam_size;
    p.vad = false;  // done here: see keep_speech
    ForcedTokens forced{opts.forced_tokens_per_window, whisper_token_eot(ctx),
                        whisper_token_beg(ctx), whisper_n_vocab(ctx)};
    if (opts.forced_tokens_per_window > 0) {
        if (opts.forced_tokens_per_window < 3 || opts.forced_tokens_per_window > 200) {
            throw std::invalid_argument("forced_tokens_per_window must be between 3 and 200");
        }
        p.logits_filter_callback = forced_tokens_cb;
        p.logits_filter_callback_user_data = &forced;
        p.suppress_nst = false;
        p.temperature_inc = 0.0f;  // nothing to fall back from: every token is certain
    }

    LogCapture capture;
    Result result;
    spans_.clear();
    std::vector<float> speech;
    if (opts.vad) {
        speech = keep_speech(samples, n_samples, opts, threads);
        if (speech.empty()) {  // nothing but silence: nothing to transcribe
            result.language = multilingual ? opts.language : "en";
            result.language_probability = multilingual && opts.language.empty() ? 0.0f : 1.0f;
            if (on_progress) {
                on_progress(100);
            }
            return result;
        }
        samples = speech.data();
        n_samples = speech.size();
    }
    std::string language = opts.language == "auto" ? "" : opts.language;
    result.language_probability = 1.0f;
    if (!multilingual) {
        language = "en";
    } else if (language.empty()) {
        // whisper_full detects too, but keeps the probability to itself.
        const int n_detect = static_cast<int>(std::min<size_t>(n_samples, 30 * kSampleRate));
        if (whisper_pcm_to_mel_with_state(ctx, state_, samples, n_detect, threads) != 0) {
            throw WhisperError("could not compute the spectrogram for language detection: " +
                               capture.summary());
        }
        std::vector<float> probs(whisper_lang_max_id() + 1, 0.0f);
        const int id = whisper_lang_auto_detect_with_state(ctx, state_, 0, threads, probs.data());
        if (id < 0) {
            if (capture.mentions_out_of_memory()) {
                throw OutOfMemoryError("out of memory during language detection: " +
                                       capture.summary());
            }
            throw WhisperError("language detection failed: " + capture.summary());
        }
        language = whisper_lang_str(id);
        result.language_probability = probs[id];
    }
    result.language = language;
    p.language = result.language.c_str();

    CallContext cc{token, &on_progress, &on_segments,
                   [this](int i) { return read_segment(i, true); }};
    p.progress_callback = on_progress_cb;
    p.progress_callback_user_data = &cc;
    p.new_segment_callback = on_new_segment_cb;
    p.new_segment_callback_user_data = &cc;
    p.abort_callback = on_abort_cb;
    p.abort_callback_user_data = &cc;
    p.encoder_begin_callback = on_encoder_begin_cb;
    p.encoder_begin_callback_user_data = &cc;

    set_stopping(false);
#ifdef WHISPERD_STATE_TIMINGS
    const whisper_state_timings before = whisper_get_state_timings(state_);
#endif
    const int rc = whisper_full_with_state(ctx, state_, p, samples, static_cast<int>(n_samples));
    set_stopping(false);
#ifdef WHISPERD_STATE_TIMINGS
    result.timings = timings_between(before, whisper_get_state_timings(state_));
#endif
    if (cc.error) {
        std::rethrow_exception(cc.error);
    }
    if (token != nullptr && token->cancelled()) {
        throw TranscriptionAborted("transcription cancelled");
    }
    if (rc != 0) {
        if (capture.mentions_out_of_memory()) {
            throw OutOfMemoryError("out of memory during transcription: " + capture.summary());
        }
        throw WhisperError("transcription failed (whisper_full returned " + std::to_string(rc) +
                           "): " + capture.summary());
    }
    const int n = whisper_full_n_segments_from_state(state_);
    result.segments.reserve(n);
    for (int i = 0; i < n; ++i) {
        result.segments.push_back(read_segment(i, true));
    }
    if (on_progress && cc.last_progress < 100) {
        on_progress(100);
    }
    return result;
}

}  // namespace whisperd
