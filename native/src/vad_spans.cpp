// Voice activity detection for the engine: Silero's speech spans (ours and whisper.cpp's)
// and a state's cutting of audio to them and mapping times back. Apart from engine.cpp,
// which runs whisper.cpp's transcription over whatever audio this leaves.
#include <algorithm>
#include <utility>
#include <vector>

#include "engine.hpp"
#include "engine_internal.hpp"
#include "errors.hpp"
#include "silero_vad.hpp"
#include "whisper.h"

namespace whisperd {

int64_t State::to_original_cs(int64_t filtered_cs) const {
    if (spans_.empty()) {
        return filtered_cs;
    }
    const int64_t sample = filtered_cs * kSampleRate / 100;
    const SpeechSpan *span = &spans_.front();
    for (const auto &s : spans_) {
        if (s.filtered_start > sample) {
            break;
        }
        span = &s;
    }
    const int64_t within = std::clamp<int64_t>(sample - span->filtered_start, 0, span->length);
    return (span->original_start + within) * 100 / kSampleRate;
}

namespace {

whisper_vad_context *open_vad(const Options &opts, int threads) {
    whisper_vad_context_params vp = whisper_vad_default_context_params();
    // Silero's per-frame graphs are tiny: past 2 threads ggml's barriers cost more than
    // they share (4 threads on 2 cores: 14x slower than 1). Parallel work is split by
    // pieces of audio instead (whisperd/windows.py).
    vp.n_threads = std::min(2, threads > 0 ? threads : default_threads());
    vp.use_gpu = false;  // Silero is tiny: the CPU avoids a second CUDA context
    whisper_vad_context *vad = whisper_vad_init_from_file_with_params(opts.vad_model_path.c_str(), vp);
    if (vad == nullptr) {
        throw WhisperError("could not load the VAD model " + opts.vad_model_path);
    }
    return vad;
}

// Segments in centiseconds (whisper.cpp's unit) as (start, end) sample offsets within the
// audio. whisper.cpp hands them out as floats: the product stays in float, as it did when
// this read them straight from whisper.cpp, so both paths round alike.
std::vector<std::pair<int64_t, int64_t>> spans_from_cs(const std::vector<std::pair<int64_t, int64_t>> &cs,
                                                       size_t n_samples) {
    std::vector<std::pair<int64_t, int64_t>> spans;
    const auto limit = static_cast<int64_t>(n_samples);
    for (const auto &[t0, t1] : cs) {
        const int64_t start =
            std::clamp<int64_t>(static_cast<int64_t>(static_cast<float>(t0) * kSampleRate / 100), 0, limit);
        const int64_t end =
            std::clamp<int64_t>(static_cast<int64_t>(static_cast<float>(t1) * kSampleRate / 100), 0, limit);
        if (end > start) {
            spans.emplace_back(start, end);
        }
    }
    return spans;
}

// The speech Silero finds, as (start, end) sample offsets within the audio.
std::vector<std::pair<int64_t, int64_t>> speech_segments(whisper_vad_context *vad, const float *samples,
                                                         size_t n_samples, const Options &opts) {
    whisper_vad_params params = whisper_vad_default_params();
    params.threshold = opts.vad_threshold;
    params.min_speech_duration_ms = opts.vad_min_speech_ms;
    params.min_silence_duration_ms = opts.vad_min_silence_ms;
    params.speech_pad_ms = opts.vad_speech_pad_ms;
    whisper_vad_segments *segments =
        whisper_vad_segments_from_samples(vad, params, samples, static_cast<int>(n_samples));
    if (segments == nullptr) {
        throw WhisperError("voice activity detection failed");
    }
    std::vector<std::pair<int64_t, int64_t>> cs;
    const int n = whisper_vad_segments_n_segments(segments);
    for (int i = 0; i < n; ++i) {
        cs.emplace_back(static_cast<int64_t>(whisper_vad_segments_get_segment_t0(segments, i)),
                        static_cast<int64_t>(whisper_vad_segments_get_segment_t1(segments, i)));
    }
    whisper_vad_free_segments(segments);
    return spans_from_cs(cs, n_samples);
}

}  // namespace

std::vector<float> State::keep_speech(const float *samples, size_t n_samples, const Options &opts,
                                      int threads) {
    std::vector<float> speech;
    const int64_t gap = kSampleRate / 10;  // 0.1 s of silence between kept stretches
    for (const auto &[start, end] : vad_speech_spans(samples, n_samples, opts, threads)) {
        if (!speech.empty()) {
            speech.insert(speech.end(), gap, 0.0f);
        }
        spans_.push_back(SpeechSpan{start, static_cast<int64_t>(speech.size()), end - start});
        speech.insert(speech.end(), samples + start, samples + end);
    }
    return speech;
}

// Our Silero forward (silero_vad.hpp): one thread, whatever `threads` says; parallel work
// is split by pieces of audio (whisperd/windows.py).
std::vector<std::pair<int64_t, int64_t>> vad_speech_spans(const float *samples, size_t n_samples,
                                                          const Options &opts, int /*threads*/) {
    const auto vad = SileroVad::load(opts.vad_model_path);
    SileroParams params;
    params.threshold = opts.vad_threshold;
    params.min_speech_ms = opts.vad_min_speech_ms;
    params.min_silence_ms = opts.vad_min_silence_ms;
    params.speech_pad_ms = opts.vad_speech_pad_ms;
    const auto cs = silero_segments_cs(vad->probabilities(samples, n_samples), vad->frame_samples(), params);
    return spans_from_cs(cs, n_samples);
}

std::vector<float> vad_probabilities(const float *samples, size_t n_samples, const Options &opts) {
    return SileroVad::load(opts.vad_model_path)->probabilities(samples, n_samples);
}

std::vector<float> vad_probabilities_reference(const float *samples, size_t n_samples, const Options &opts) {
    whisper_vad_context *vad = open_vad(opts, 1);
    const bool ok = whisper_vad_detect_speech(vad, samples, static_cast<int>(n_samples));
    std::vector<float> probs;
    if (ok) {
        probs.assign(whisper_vad_probs(vad), whisper_vad_probs(vad) + whisper_vad_n_probs(vad));
    }
    whisper_vad_free(vad);
    if (!ok) {
        throw WhisperError("voice activity detection failed");
    }
    return probs;
}

std::vector<std::pair<int64_t, int64_t>> vad_speech_spans_reference(const float *samples, size_t n_samples,
                                                                    const Options &opts, int threads) {
    whisper_vad_context *vad = open_vad(opts, threads);
    try {
        auto spans = speech_segments(vad, samples, n_samples, opts);
        whisper_vad_free(vad);
        return spans;
    } catch (...) {
        whisper_vad_free(vad);
        throw;
    }
}

}  // namespace whisperd
