// Python bindings for the batched decoder (whisperd._native.BatchDecoder and its data).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include "batch_bindings.hpp"
#include "batch_decoder.hpp"
#include "engine.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace whisperd {

using Audio = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Rows = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

void bind_batch(nb::module_ &m, nb::class_<Model> &model) {
    nb::class_<WindowSpec>(m, "WindowSpec", "One window (<= 30 s) for the batched decoder.")
        .def(nb::init<>())
        .def_rw("id", &WindowSpec::id)
        .def_prop_rw(
            "samples", [](const WindowSpec &w) { return w.samples.size(); },
            [](WindowSpec &w, Audio a) { w.samples.assign(a.data(), a.data() + a.shape(0)); },
            "16 kHz mono float32 (copied); reads back the number of samples")
        .def_rw("language", &WindowSpec::language)
        .def_rw("translate", &WindowSpec::translate)
        .def_rw("beam_size", &WindowSpec::beam_size)
        .def_rw("best_of", &WindowSpec::best_of)
        .def_rw("temperature", &WindowSpec::temperature)
        .def_rw("temperature_increment", &WindowSpec::temperature_increment)
        .def_rw("no_speech_threshold", &WindowSpec::no_speech_threshold)
        .def_rw("logprob_threshold", &WindowSpec::logprob_threshold)
        .def_rw("entropy_threshold", &WindowSpec::entropy_threshold)
        .def_rw("prompt_tokens", &WindowSpec::prompt_tokens)
        .def_rw("forced_tokens", &WindowSpec::forced_tokens);

    nb::class_<WindowOutput>(m, "WindowOutput", "A decoded window; times in centiseconds from its start.")
        .def_ro("id", &WindowOutput::id)
        .def_ro("segments", &WindowOutput::segments)
        .def_ro("language", &WindowOutput::language)
        .def_ro("language_probability", &WindowOutput::language_probability)
        .def_ro("no_speech_prob", &WindowOutput::no_speech_prob)
        .def_ro("n_tokens", &WindowOutput::n_tokens)
        .def_ro("n_fallbacks", &WindowOutput::n_fallbacks)
        .def_ro("end_cs", &WindowOutput::end_cs)
        .def_ro("text_tokens", &WindowOutput::text_tokens);

    nb::class_<BatchStats>(m, "BatchStats")
        .def_ro("steps", &BatchStats::steps)
        .def_ro("rows", &BatchStats::rows)
        .def_ro("encodes", &BatchStats::encodes)
        .def_ro("encode_ms", &BatchStats::encode_ms)
        .def_ro("decode_ms", &BatchStats::decode_ms)
        .def_ro("sample_ms", &BatchStats::sample_ms)
        .def_ro("graph_builds", &BatchStats::graph_builds)
        .def_ro("moves", &BatchStats::moves);

    nb::class_<GreedyMask>(m, "GreedyMask", "What Whisper's rules allow of a greedy row (tests).")
        .def(nb::init<>())
        .def_rw("flags", &GreedyMask::flags, "GREEDY_TEXT_OFF | GREEDY_INITIAL | GREEDY_RAW")
        .def_rw("ts_lo", &GreedyMask::ts_lo)
        .def_rw("ts_hi", &GreedyMask::ts_hi)
        .def_rw("forced", &GreedyMask::forced);
    m.attr("GREEDY_TEXT_OFF") = kMaskTextOff;
    m.attr("GREEDY_INITIAL") = kMaskInitial;
    m.attr("GREEDY_RAW") = kMaskRaw;

    nb::class_<BatchDecoder>(m, "BatchDecoder", "Windows of any jobs decoded together, one graph per step.")
        .def_prop_ro("capacity", &BatchDecoder::capacity)
        .def("free_slots", &BatchDecoder::free_slots)
        .def("active", &BatchDecoder::active)
        .def_prop_ro("memory_bytes", &BatchDecoder::memory_bytes)
        // The specs are taken by pointer and their samples moved, not copied: a list of
        // WindowSpec converted to std::vector<WindowSpec> copied every window's samples and
        // padded input (~4 MB, fresh pages) with the GIL held: ~0.27 s of the H200 benchmark's
        // 2.4 s at 128 windows, and the job threads' planning stalled behind it.
        .def(
            "add",
            [](BatchDecoder &d, const std::vector<WindowSpec *> &windows, CancelToken *token) {
                for (const WindowSpec *w : windows) {
                    if (w == nullptr) {
                        throw std::invalid_argument("a window spec is None");
                    }
                }
                nb::gil_scoped_release release;
                std::vector<WindowSpec> owned;
                owned.reserve(windows.size());
                for (WindowSpec *w : windows) {
                    owned.push_back(std::move(*w));  // the caller's specs are spent
                }
                d.add(std::move(owned), token);
            },
            "windows"_a, "token"_a.none() = nb::none(),
            "Encode the windows into free slots; their specs' samples are moved out (spent).")
        .def("step", &BatchDecoder::step, "token"_a.none() = nb::none(),
             nb::call_guard<nb::gil_scoped_release>())
        .def("drop", &BatchDecoder::drop, "id"_a)
        .def("close", &BatchDecoder::close, nb::call_guard<nb::gil_scoped_release>())
        .def("stats", &BatchDecoder::stats)
        .def("mel", &BatchDecoder::mel, "samples"_a)
        .def("device_mel", &BatchDecoder::device_mel, "samples"_a, nb::call_guard<nb::gil_scoped_release>(),
             "The window's log-mel frames as the encoder graph computes them.")
        .def_prop_ro("mel_on_device", &BatchDecoder::mel_on_device)
        .def_prop_ro("cuda_decoder", &BatchDecoder::cuda_decoder,
                     "Whether decoder steps run as whisperd's CUDA code (else a ggml graph).")
        .def_prop_ro("cuda_encoder", &BatchDecoder::cuda_encoder,
                     "Whether the encoder layers run as whisperd's CUDA code (else a ggml graph).")
        .def_prop_rw("gpu_sampling", &BatchDecoder::gpu_sampling, &BatchDecoder::set_gpu_sampling,
                     "Whether greedy rows are summarised on the GPU (only a CUDA decoder can).")
        .def(
            "greedy_picks",
            [](BatchDecoder &d, Rows logits, const std::vector<GreedyMask> &masks, bool device) {
                std::vector<float> flat(logits.data(), logits.data() + logits.size());
                nb::gil_scoped_release release;
                return d.greedy_picks(flat, masks, device);
            },
            "logits"_a, "masks"_a, "device"_a = false,
            "(id, tid, p, plog, pt, no-speech probability) greedy decoding takes from each row (tests).")
        .def("cross_kv", &BatchDecoder::cross_kv, "id"_a, "layer"_a, nb::call_guard<nb::gil_scoped_release>(),
             "A window's cross-attention keys then values of one decoder layer (tests).")
        .def("prepare", &BatchDecoder::prepare, "spec"_a, nb::call_guard<nb::gil_scoped_release>(),
             "Compute the window's mel spectrogram now (any thread), ahead of add().");

    model.def("new_batch_decoder", &Model::new_batch_decoder, "n_slots"_a, "n_cells"_a,
              "n_threads"_a, "max_encode_batch"_a, "mel_on_device"_a = 1, "cuda_encoder"_a = -1,
              nb::call_guard<nb::gil_scoped_release>(),
              "A batched decoder of n_slots windows over these weights.");

    model.def("tokenize", &Model::tokenize, "text"_a, "The text's tokens (no special tokens).")
        .def("tokenize_reference", &Model::tokenize_reference, "text"_a,
             "The text's tokens from whisper.cpp's whisper_tokenize (tests).")
        .def_prop_ro("n_text_ctx", &Model::n_text_ctx)
        .def_prop_ro("n_text_state", &Model::n_text_state)
        .def_prop_ro("n_audio_ctx", &Model::n_audio_ctx)
        .def_prop_ro("gpu_device", &Model::gpu_device);

    m.def(
        "vad_speech_spans",
        [](Audio audio, const Options &opts, int threads) {
            nb::gil_scoped_release release;
            return vad_speech_spans(audio.data(), audio.shape(0), opts, threads);
        },
        "audio"_a, "options"_a, "threads"_a = 0,
        "Speech found by Silero VAD (options.vad_model_path, thresholds) as (start, end) samples.");
    m.def(
        "vad_speech_spans_reference",
        [](Audio audio, const Options &opts, int threads) {
            nb::gil_scoped_release release;
            return vad_speech_spans_reference(audio.data(), audio.shape(0), opts, threads);
        },
        "audio"_a, "options"_a, "threads"_a = 0, "vad_speech_spans through whisper.cpp's own VAD (tests).");
    m.def(
        "vad_probabilities",
        [](Audio audio, const Options &opts) {
            nb::gil_scoped_release release;
            return vad_probabilities(audio.data(), audio.shape(0), opts);
        },
        "audio"_a, "options"_a, "Silero's speech probability per 512-sample frame (the last zero-padded).");
    m.def(
        "vad_probabilities_reference",
        [](Audio audio, const Options &opts) {
            nb::gil_scoped_release release;
            return vad_probabilities_reference(audio.data(), audio.shape(0), opts);
        },
        "audio"_a, "options"_a, "vad_probabilities through whisper.cpp's own VAD (tests).");
}

}  // namespace whisperd
