// Silero VAD's forward pass and whisper.cpp's segment post-processing (silero_vad.hpp says
// why this is ours). Layer shapes and constants follow whisper.cpp's
// whisper_vad_build_graph; the post-processing follows whisper_vad_segments_from_probs.
#include "silero_vad.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>

#include "errors.hpp"
#include "ggml.h"
#include "silero_kernels.hpp"

namespace whisperd {

namespace {

constexpr int kSampleRate = 16000;
constexpr int kReflectPad = 64;  // whisper.cpp pads each frame by reflection, 64 each side
constexpr int kFramesPerBlock = 128;  // frames per pass of the batched layers (~2.5 MB of buffers)
constexpr int kEncoderStrides[4] = {1, 2, 2, 1};

int round_up(int n, int m) { return (n + m - 1) / m * m; }

struct Tensor {
    std::vector<int64_t> ne;
    std::vector<float> data;  // widened to f32
};

// Rows of `in` (frame-major: row f * l_in + p holds position p's channels, row stride
// `ld_in`) as im2col rows for conv: row f * l_out + q holds (tap, channel) pairs at
// tap * in + channel (whole input rows copied; ggml's order is channel-major, the weights
// are permuted to match), zero where the tap falls in the padding of 1.
void im2col(const float *in, int ld_in, int frames, int l_in, const SileroVad::Conv &conv, int l_out,
            std::vector<float> &out) {
    const int width = conv.in * conv.kernel;
    out.assign(static_cast<size_t>(round_up(frames * l_out, silero::kRowBlock)) * width, 0.0f);
    for (int f = 0; f < frames; ++f) {
        for (int q = 0; q < l_out; ++q) {
            float *row = out.data() + static_cast<size_t>(f * l_out + q) * width;
            for (int k = 0; k < conv.kernel; ++k) {
                const int p = q * conv.stride + k - 1;
                if (p < 0 || p >= l_in) {
                    continue;
                }
                const float *src = in + static_cast<size_t>(f * l_in + p) * ld_in;
                std::copy(src, src + conv.in, row + k * conv.in);
            }
        }
    }
}

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }  // ggml's op_sigmoid

}  // namespace

// Reads whisper.cpp's Silero file format (whisper_vad_init_with_params).
struct SileroLoader {
    std::ifstream in;
    std::string path;

    template <typename T>
    T read() {
        T v{};
        in.read(reinterpret_cast<char *>(&v), sizeof(v));
        if (!in) {
            throw ModelLoadError("the VAD model " + path + " is truncated");
        }
        return v;
    }

    std::shared_ptr<SileroVad> load() {
        if (read<uint32_t>() != GGML_FILE_MAGIC) {
            throw ModelLoadError("the VAD model " + path + " is not a ggml file");
        }
        auto vad = std::make_shared<SileroVad>();
        in.ignore(read<int32_t>());  // model type
        for (int i = 0; i < 3; ++i) {
            read<int32_t>();  // version
        }
        vad->n_window_ = read<int32_t>();
        read<int32_t>();  // n_context: whisper.cpp does not use it either
        const int layers = read<int32_t>();
        if (layers != 4) {
            throw ModelLoadError("the VAD model " + path + " has " + std::to_string(layers) +
                                 " encoder layers, not Silero's 4");
        }
        vad->encoder_.resize(4);
        for (int i = 0; i < 4; ++i) {
            auto &c = vad->encoder_[i];
            c.in = read<int32_t>();
            c.out = read<int32_t>();
            c.kernel = read<int32_t>();
            c.stride = kEncoderStrides[i];
        }
        vad->hop_ = read<int32_t>();     // lstm_input_size: whisper.cpp's STFT stride
        vad->hidden_ = read<int32_t>();  // lstm_hidden_size
        read<int32_t>();                 // final_conv_in
        read<int32_t>();                 // final_conv_out

        std::map<std::string, Tensor> tensors;
        while (true) {
            int32_t dims = 0;
            in.read(reinterpret_cast<char *>(&dims), sizeof(dims));
            if (in.eof()) {
                break;
            }
            const int32_t name_len = read<int32_t>();
            const int32_t type = read<int32_t>();
            Tensor t;
            int64_t n = 1;
            for (int i = 0; i < dims; ++i) {
                t.ne.push_back(read<int32_t>());
                n *= t.ne.back();
            }
            std::string name(name_len, '\0');
            in.read(name.data(), name_len);
            t.data.resize(n);
            if (type == GGML_TYPE_F32) {
                in.read(reinterpret_cast<char *>(t.data.data()), n * sizeof(float));
            } else if (type == GGML_TYPE_F16) {
                std::vector<ggml_fp16_t> half(n);
                in.read(reinterpret_cast<char *>(half.data()), n * sizeof(ggml_fp16_t));
                ggml_fp16_to_fp32_row(half.data(), t.data.data(), n);
            } else {
                throw ModelLoadError("the VAD model " + path + " has tensor " + name + " of type " +
                                     std::to_string(type) + " (only f32 and f16 are read)");
            }
            if (!in) {
                throw ModelLoadError("the VAD model " + path + " is truncated");
            }
            tensors[name] = std::move(t);
        }
        auto take = [&](const std::string &name, int64_t size) {
            auto it = tensors.find("_model." + name);
            if (it == tensors.end() || static_cast<int64_t>(it->second.data.size()) != size) {
                throw ModelLoadError("the VAD model " + path + " lacks " + name + " of " + std::to_string(size) +
                                     " values");
            }
            return std::move(it->second.data);
        };
        // ggml keeps a convolution's weights as [kernel, in, out]: out rows of in * kernel,
        // channel-major. Ours: (tap, channel) rows of out_padded columns (see im2col).
        auto conv = [&](SileroVad::Conv &c, const std::string &w, const std::string &b) {
            const std::vector<float> rows = take(w, static_cast<int64_t>(c.in) * c.kernel * c.out);
            c.out_padded = round_up(c.out, silero::kColBlock);
            c.weight.assign(static_cast<size_t>(c.in) * c.kernel * c.out_padded, 0.0f);
            for (int o = 0; o < c.out; ++o) {
                for (int ch = 0; ch < c.in; ++ch) {
                    for (int k = 0; k < c.kernel; ++k) {
                        c.weight[static_cast<size_t>(k * c.in + ch) * c.out_padded + o] =
                            rows[(static_cast<size_t>(o) * c.in + ch) * c.kernel + k];
                    }
                }
            }
            c.weight = silero::pack_panels(c.out_padded, c.in * c.kernel, c.weight.data(), silero::kColBlock);
            c.bias.assign(c.out_padded, 0.0f);
            if (!b.empty()) {
                const std::vector<float> bias = take(b, c.out);
                std::copy(bias.begin(), bias.end(), c.bias.begin());
            }
        };
        auto &stft = vad->stft_;
        stft.in = 1;
        stft.kernel = 256;
        stft.out = 258;
        stft.stride = vad->hop_;
        conv(stft, "stft.forward_basis_buffer", "");
        for (int i = 0; i < 4; ++i) {
            const std::string p = "encoder." + std::to_string(i) + ".reparam_conv.";
            conv(vad->encoder_[i], p + "weight", p + "bias");
        }
        const int h = vad->hidden_, gates = 4 * vad->hidden_;
        if (vad->encoder_[3].out != h || h % 16 != 0 || gates % silero::kMatvecBlock != 0 ||
            vad->n_window_ + 2 * kReflectPad < stft.kernel) {
            throw ModelLoadError("the VAD model " + path + " is not shaped like Silero v5/v6");
        }
        // The LSTM's [hidden, 4 * hidden] weights as hidden x 4 * hidden matrices for x * W.
        auto lstm = [&](const std::string &name, std::vector<float> &out) {
            const std::vector<float> rows = take(name, static_cast<int64_t>(h) * gates);
            out.assign(rows.size(), 0.0f);
            for (int g = 0; g < gates; ++g) {
                for (int i = 0; i < h; ++i) {
                    out[static_cast<size_t>(i) * gates + g] = rows[static_cast<size_t>(g) * h + i];
                }
            }
        };
        lstm("decoder.rnn.weight_ih", vad->ih_);
        lstm("decoder.rnn.weight_hh", vad->hh_);
        vad->ih_ = silero::pack_panels(gates, h, vad->ih_.data(), silero::kColBlock);
        vad->hh_ = silero::pack_panels(gates, h, vad->hh_.data(), silero::kMatvecBlock);
        vad->ih_bias_ = take("decoder.rnn.bias_ih", gates);
        vad->hh_bias_ = take("decoder.rnn.bias_hh", gates);
        vad->final_weight_ = take("decoder.decoder.2.weight", h);
        vad->final_bias_ = take("decoder.decoder.2.bias", 1)[0];
        return vad;
    }
};

std::shared_ptr<const SileroVad> SileroVad::load(const std::string &path) {
    static std::mutex mutex;
    static std::map<std::string, std::shared_ptr<const SileroVad>> loaded;
    std::lock_guard<std::mutex> lock(mutex);
    auto it = loaded.find(path);
    if (it != loaded.end()) {
        return it->second;
    }
    SileroLoader loader;
    loader.path = path;
    loader.in.open(path, std::ios::binary);
    if (!loader.in) {
        throw ModelLoadError("could not open the VAD model " + path);
    }
    auto vad = loader.load();
    loaded[path] = vad;
    return vad;
}

std::vector<float> SileroVad::probabilities(const float *samples, size_t n_samples) const {
    const size_t n_frames = (n_samples + n_window_ - 1) / n_window_;
    std::vector<float> probs(n_frames);
    const int padded_len = n_window_ + 2 * kReflectPad;
    const int l_stft = (padded_len - stft_.kernel) / stft_.stride + 1;
    const int bins = stft_.out / 2;  // real parts, then as many imaginary ones
    const int gates = 4 * hidden_;

    std::vector<float> frame(n_window_), padded(padded_len), rows, out, mag, gate_in;
    std::vector<float> c(hidden_, 0.0f), h(hidden_, 0.0f), g(gates), relu_h(hidden_);
    for (size_t f0 = 0; f0 < n_frames; f0 += kFramesPerBlock) {
        const int frames = static_cast<int>(std::min<size_t>(kFramesPerBlock, n_frames - f0));
        // The STFT: each reflect-padded frame as l_stft rows of kernel samples, rounded to f16.
        rows.assign(static_cast<size_t>(round_up(frames * l_stft, silero::kRowBlock)) * stft_.kernel, 0.0f);
        for (int f = 0; f < frames; ++f) {
            const size_t start = (f0 + f) * n_window_;
            const size_t n = std::min<size_t>(n_window_, n_samples - start);
            std::fill(frame.begin(), frame.end(), 0.0f);  // whisper.cpp zero-pads the last frame
            std::copy(samples + start, samples + start + n, frame.begin());
            std::copy(frame.begin(), frame.end(), padded.begin() + kReflectPad);
            for (int i = 1; i <= kReflectPad; ++i) {
                padded[kReflectPad - i] = frame[i];
                padded[kReflectPad + n_window_ - 1 + i] = frame[n_window_ - 1 - i];
            }
            silero::round_to_f16(padded.data(), padded.size());
            for (int p = 0; p < l_stft; ++p) {
                std::copy(padded.begin() + p * stft_.stride, padded.begin() + p * stft_.stride + stft_.kernel,
                          rows.begin() + static_cast<size_t>(f * l_stft + p) * stft_.kernel);
            }
        }
        const int m_stft = static_cast<int>(rows.size() / stft_.kernel);
        out.resize(static_cast<size_t>(m_stft) * stft_.out_padded);
        silero::gemm(m_stft, stft_.out_padded, stft_.kernel, rows.data(), stft_.weight.data(), nullptr, false,
                     out.data());
        // Magnitudes as ggml computes them (square, square, add, sqrt), one row a position.
        mag.resize(static_cast<size_t>(frames) * l_stft * bins);
        for (int r = 0; r < frames * l_stft; ++r) {
            const float *s = out.data() + static_cast<size_t>(r) * stft_.out_padded;
            float *m = mag.data() + static_cast<size_t>(r) * bins;
            for (int b = 0; b < bins; ++b) {
                const float re2 = s[b] * s[b];
                const float im2 = s[bins + b] * s[bins + b];
                m[b] = std::sqrt(re2 + im2);
            }
        }
        // The encoder: each convolution's input rounded to f16 (ggml's im2col), then
        // weights, bias and relu in one matrix product.
        std::vector<float> cur = std::move(mag);
        const float *act = cur.data();
        int ld = bins, len = l_stft;
        for (const Conv &conv : encoder_) {
            const int l_out = (len + 2 - conv.kernel) / conv.stride + 1;
            silero::round_to_f16(cur.data(), static_cast<size_t>(frames) * len * ld);
            im2col(act, ld, frames, len, conv, l_out, rows);
            const int m = static_cast<int>(rows.size() / (conv.in * conv.kernel));
            out.resize(static_cast<size_t>(m) * conv.out_padded);
            silero::gemm(m, conv.out_padded, conv.in * conv.kernel, rows.data(), conv.weight.data(), conv.bias.data(),
                         true, out.data());
            cur.swap(out);
            act = cur.data();
            ld = conv.out_padded;
            len = l_out;
        }
        // Silero reads position 0 of the last convolution (one position left: whisper.cpp's
        // [:, :, 0]); its LSTM input projection for every frame at once, in f32.
        const int m_in = round_up(frames, silero::kRowBlock);
        rows.assign(static_cast<size_t>(m_in) * hidden_, 0.0f);
        for (int f = 0; f < frames; ++f) {
            std::copy(act + static_cast<size_t>(f * len) * ld, act + static_cast<size_t>(f * len) * ld + hidden_,
                      rows.begin() + static_cast<size_t>(f) * hidden_);
        }
        gate_in.resize(static_cast<size_t>(m_in) * gates);
        silero::gemm(m_in, gates, hidden_, rows.data(), ih_.data(), ih_bias_.data(), false, gate_in.data());
        // The recurrence, frame by frame: gates = (W_ih x + b_ih) + (W_hh h + b_hh).
        for (int f = 0; f < frames; ++f) {
            std::fill(g.begin(), g.end(), 0.0f);
            silero::matvec_acc(gates, hidden_, h.data(), hh_.data(), g.data());
            const float *gi = gate_in.data() + static_cast<size_t>(f) * gates;
            for (int j = 0; j < gates; ++j) {
                g[j] = gi[j] + (g[j] + hh_bias_[j]);
            }
            silero::lstm_cell(hidden_, g.data(), c.data(), h.data());
            for (int j = 0; j < hidden_; ++j) {
                relu_h[j] = h[j] > 0.0f ? h[j] : 0.0f;
            }
            // The final 1x1 convolution: its input through ggml's im2col (f16) too.
            silero::round_to_f16(relu_h.data(), relu_h.size());
            float z = 0.0f;
            for (int j = 0; j < hidden_; ++j) {
                z += final_weight_[j] * relu_h[j];
            }
            probs[f0 + f] = sigmoid(z + final_bias_);
        }
    }
    return probs;
}

std::vector<std::pair<int64_t, int64_t>> silero_segments_cs(const std::vector<float> &probs, int n_window,
                                                            const SileroParams &params) {
    // whisper_vad_segments_from_probs with max_speech_duration_s = FLT_MAX (whisper.cpp's
    // default, which whisperd keeps): no segment is ever split for length.
    const int n_probs = static_cast<int>(probs.size());
    const int min_silence_samples = kSampleRate * params.min_silence_ms / 1000;
    const int audio_length_samples = n_probs * n_window;
    const int min_speech_samples = kSampleRate * params.min_speech_ms / 1000;
    const int speech_pad_samples = kSampleRate * params.speech_pad_ms / 1000;
    const int min_silence_samples_at_max_speech = kSampleRate * 98 / 1000;
    const float neg_threshold = std::max(params.threshold - 0.15f, 0.01f);

    struct Speech {
        int start, end;
    };
    std::vector<Speech> speeches;
    bool in_speech = false, has_curr_speech = false;
    int temp_end = 0, prev_end = 0, next_start = 0, curr_start = 0;
    for (int i = 0; i < n_probs; ++i) {
        const float p = probs[i];
        const int sample = n_window * i;
        if (p >= params.threshold && temp_end) {
            temp_end = 0;
            if (next_start < prev_end) {
                next_start = sample;
            }
        }
        if (p >= params.threshold && !in_speech) {
            in_speech = true;
            curr_start = sample;
            has_curr_speech = true;
            continue;
        }
        // (whisper.cpp's split at max_speech_samples = INT_MAX / 2 is never reached.)
        if (p < neg_threshold && in_speech) {
            if (!temp_end) {
                temp_end = sample;
            }
            if (sample - temp_end > min_silence_samples_at_max_speech) {
                prev_end = temp_end;
            }
            if (sample - temp_end < min_silence_samples) {
                continue;
            }
            if (temp_end - curr_start > min_speech_samples) {
                speeches.push_back({curr_start, temp_end});
            }
            prev_end = next_start = temp_end = 0;
            in_speech = false;
            has_curr_speech = false;
        }
    }
    if (has_curr_speech && audio_length_samples - curr_start > min_speech_samples) {
        speeches.push_back({curr_start, audio_length_samples});
    }
    // Merge neighbours less than 200 ms apart (whisper.cpp's fixed gap).
    const int max_merge_gap = kSampleRate * 200 / 1000;
    for (size_t i = 0; i + 1 < speeches.size();) {
        if (speeches[i + 1].start - speeches[i].end < max_merge_gap) {
            speeches[i].end = speeches[i + 1].end;
            speeches.erase(speeches.begin() + static_cast<std::ptrdiff_t>(i) + 1);
        } else {
            ++i;
        }
    }
    speeches.erase(std::remove_if(speeches.begin(), speeches.end(),
                                  [&](const Speech &s) { return s.end - s.start < min_speech_samples; }),
                   speeches.end());
    // Padding: full where the gap allows, else half the gap each side.
    std::vector<std::pair<int64_t, int64_t>> out;
    auto to_cs = [](int samples) {
        return static_cast<int64_t>((samples / static_cast<double>(kSampleRate)) * 100.0 + 0.5);
    };
    const int n = static_cast<int>(speeches.size());
    for (int i = 0; i < n; ++i) {
        if (i == 0) {
            speeches[i].start = speeches[i].start > speech_pad_samples ? speeches[i].start - speech_pad_samples : 0;
        }
        if (i < n - 1) {
            const int silence = speeches[i + 1].start - speeches[i].end;
            if (silence < 2 * speech_pad_samples) {
                speeches[i].end += silence / 2;
                speeches[i + 1].start = speeches[i + 1].start > silence / 2 ? speeches[i + 1].start - silence / 2 : 0;
            } else {
                speeches[i].end = std::min(speeches[i].end + speech_pad_samples, audio_length_samples);
                speeches[i + 1].start =
                    speeches[i + 1].start > speech_pad_samples ? speeches[i + 1].start - speech_pad_samples : 0;
            }
        } else {
            speeches[i].end = std::min(speeches[i].end + speech_pad_samples, audio_length_samples);
        }
        out.emplace_back(to_cs(speeches[i].start), to_cs(speeches[i].end));
    }
    return out;
}

}  // namespace whisperd
