// Silero VAD over whisper.cpp's ggml weights, computed by us (whisper.cpp's own VAD stays
// the reference: tests compare the two).
//
// whisper.cpp runs Silero as one small ggml graph per 512-sample frame: for a tiny model
// that means per-frame graph passes and matrix-vector products that read every weight
// once per frame. Here every frame-independent layer (the STFT as a matrix product, the
// four convolutions, the LSTM's input projection) runs for a block of frames at once as
// matrix products, and only the LSTM's recurrence runs frame by frame. The arithmetic is
// whisper.cpp's: the same weights (f16 ones widened to f32, exactly), the convolutions'
// inputs rounded to f16 as its im2col does, its padding and strides, then its
// post-processing into segments. Only the order of the sums differs, so probabilities
// agree to about 1e-6.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace whisperd {

// whisper_vad_params' fields that whisperd sets (max speech duration: unlimited, as in
// whisper.cpp's defaults).
struct SileroParams {
    float threshold = 0.5f;
    int min_speech_ms = 250;
    int min_silence_ms = 100;
    int speech_pad_ms = 30;
};

class SileroVad {
public:
    // The weights from a whisper.cpp Silero ggml file, loaded once per path for the
    // process (they are immutable; every thread shares them). Throws WhisperError.
    static std::shared_ptr<const SileroVad> load(const std::string &path);

    // One speech probability per frame_samples() samples (the last frame zero-padded).
    std::vector<float> probabilities(const float *samples, size_t n_samples) const;

    int frame_samples() const { return n_window_; }

    struct Conv {
        int in = 0, out = 0, out_padded = 0, kernel = 0, stride = 1;
        std::vector<float> weight;  // (in * kernel) x out_padded as silero::pack_panels leaves it; zero columns past out
        std::vector<float> bias;    // out_padded
    };

private:
    int n_window_ = 512;
    int hop_ = 128;  // whisper.cpp's STFT stride: hparams.lstm_input_size
    int hidden_ = 128;
    Conv stft_;                    // 1 x 256 taps -> 258 (real then imaginary parts)
    std::vector<Conv> encoder_;    // Silero's four convolutions, relu after each
    std::vector<float> ih_, hh_;   // hidden x (4 * hidden), transposed from ggml's rows, then packed
    std::vector<float> ih_bias_, hh_bias_;
    std::vector<float> final_weight_;
    float final_bias_ = 0.0f;

    friend struct SileroLoader;
};

// whisper.cpp's whisper_vad_segments_from_probs: speech as (start, end) centiseconds.
std::vector<std::pair<int64_t, int64_t>> silero_segments_cs(const std::vector<float> &probs, int n_window,
                                                            const SileroParams &params);

}  // namespace whisperd
