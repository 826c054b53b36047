// Python bindings for the native core: whisperd._native.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include "batch_bindings.hpp"
#include "engine.hpp"
#include "errors.hpp"
#include "log_bridge.hpp"
#include "whisper.h"

namespace nb = nanobind;
using namespace nb::literals;
using namespace whisperd;

using Audio = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Matrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

namespace {
// Decoded text with any broken UTF-8 sequence replaced rather than raising.
nb::str utf8_lenient(const std::string &s) {
    return nb::steal<nb::str>(PyUnicode_DecodeUTF8(s.data(), (Py_ssize_t) s.size(), "replace"));
}
}  // namespace

NB_MODULE(_native, m) {
    m.doc() = "whisper.cpp inside whisperd: models, decoding states, transcription.";

    // Registered base first: nanobind tries the newest translator first, so derived
    // types must come after their base to be caught as themselves.
    auto whisper_error = nb::exception<WhisperError>(m, "WhisperError", PyExc_RuntimeError);
    nb::exception<ModelLoadError>(m, "ModelLoadError", whisper_error);
    nb::exception<OutOfMemoryError>(m, "OutOfMemoryError", whisper_error);
    nb::exception<TranscriptionAborted>(m, "TranscriptionAborted", whisper_error);

    nb::class_<CancelToken>(m, "CancelToken",
                            "Stops a running transcription; safe to call from any thread.")
        .def(nb::init<>())
        .def("cancel", &CancelToken::cancel)
        .def_prop_ro("cancelled", &CancelToken::cancelled);

    nb::class_<Options>(m, "Options", "Per-call decoding options (see whisperd.inference).")
        .def(nb::init<>())
        .def_rw("language", &Options::language)
        .def_rw("translate", &Options::translate)
        .def_rw("beam_size", &Options::beam_size)
        .def_rw("best_of", &Options::best_of)
        .def_rw("temperature", &Options::temperature)
        .def_rw("temperature_increment", &Options::temperature_increment)
        .def_rw("no_speech_threshold", &Options::no_speech_threshold)
        .def_rw("logprob_threshold", &Options::logprob_threshold)
        .def_rw("entropy_threshold", &Options::entropy_threshold)
        .def_rw("initial_prompt", &Options::initial_prompt)
        .def_rw("token_timestamps", &Options::token_timestamps)
        .def_rw("vad", &Options::vad)
        .def_rw("vad_model_path", &Options::vad_model_path)
        .def_rw("vad_threshold", &Options::vad_threshold)
        .def_rw("vad_min_speech_ms", &Options::vad_min_speech_ms)
        .def_rw("vad_min_silence_ms", &Options::vad_min_silence_ms)
        .def_rw("vad_speech_pad_ms", &Options::vad_speech_pad_ms)
        .def_rw("n_threads", &Options::n_threads)
        .def_rw("no_context", &Options::no_context)
        .def_rw("forced_tokens_per_window", &Options::forced_tokens_per_window);

    nb::class_<Timings>(m, "Timings", "Where one call's time went (milliseconds, counts).")
        .def_ro("mel_ms", &Timings::mel_ms)
        .def_ro("encode_ms", &Timings::encode_ms)
        .def_ro("prompt_ms", &Timings::prompt_ms)
        .def_ro("decode_ms", &Timings::decode_ms)
        .def_ro("batchd_ms", &Timings::batchd_ms)
        .def_ro("sample_ms", &Timings::sample_ms)
        .def_ro("n_encode", &Timings::n_encode)
        .def_ro("n_prompt", &Timings::n_prompt)
        .def_ro("n_decode", &Timings::n_decode)
        .def_ro("n_batchd", &Timings::n_batchd)
        .def_ro("n_sample", &Timings::n_sample)
        .def_ro("n_fallbacks", &Timings::n_fallbacks)
        .def_ro("available", &Timings::available);

    nb::class_<Token>(m, "Token")
        .def_ro("id", &Token::id)
        // Raw bytes: one UTF-8 character may be split across tokens.
        .def_prop_ro("text", [](const Token &t) { return nb::bytes(t.text.data(), t.text.size()); })
        .def_ro("p", &Token::p)
        .def_ro("t0", &Token::t0)
        .def_ro("t1", &Token::t1);

    nb::class_<SegmentData>(m, "SegmentData")
        .def_ro("index", &SegmentData::index)
        .def_ro("t0", &SegmentData::t0)
        .def_ro("t1", &SegmentData::t1)
        .def_prop_ro("text", [](const SegmentData &s) { return utf8_lenient(s.text); })
        .def_ro("no_speech_prob", &SegmentData::no_speech_prob)
        .def_ro("tokens", &SegmentData::tokens);

    nb::class_<Result>(m, "Result")
        .def_ro("segments", &Result::segments)
        .def_ro("language", &Result::language)
        .def_ro("language_probability", &Result::language_probability)
        .def_ro("timings", &Result::timings);

    nb::class_<State>(m, "State", "One decoding state; one transcription at a time.")
        .def(
            "transcribe",
            [](State &self, Audio audio, const Options &opts, CancelToken *token,
               nb::object on_progress, nb::object on_segments) {
                ProgressFn progress;
                SegmentsFn segments;
                // The callables are only touched with the GIL re-acquired.
                if (!on_progress.is_none()) {
                    progress = [&on_progress](int pct) {
                        nb::gil_scoped_acquire gil;
                        on_progress(pct);
                    };
                }
                if (!on_segments.is_none()) {
                    segments = [&on_segments](const std::vector<SegmentData> &segs) {
                        nb::gil_scoped_acquire gil;
                        on_segments(nb::cast(segs));
                    };
                }
                nb::gil_scoped_release release;
                return self.transcribe(audio.data(), audio.shape(0), opts, token, progress,
                                       segments);
            },
            "audio"_a, "options"_a, "token"_a.none() = nb::none(),
            "on_progress"_a.none() = nb::none(), "on_segments"_a.none() = nb::none(),
            "Transcribe 16 kHz mono float32 samples; the GIL is released meanwhile.")
        .def("close", &State::close, "Free this state's memory now.")
        .def_prop_ro("closed", &State::closed);

    auto model = nb::class_<Model>(m, "Model", "Loaded whisper.cpp weights, shared by every state made from them.");
    model.def(nb::init<const std::string &, bool, bool, int>(), "path"_a, "use_gpu"_a = true,
             "flash_attn"_a = true, "gpu_device"_a = 0,
             nb::call_guard<nb::gil_scoped_release>())
        .def("new_state", &Model::new_state, nb::call_guard<nb::gil_scoped_release>())
        .def("close", &Model::close, nb::call_guard<nb::gil_scoped_release>(),
             "Release the weights once every state is closed too.")
        .def_prop_ro("closed", &Model::closed)
        .def_prop_ro("path", &Model::path)
        .def_prop_ro("multilingual", &Model::multilingual)
        .def_prop_ro("type_name", &Model::type_name)
        .def_prop_ro("n_vocab", &Model::n_vocab)
        .def_prop_ro("n_text_layer", &Model::n_text_layer)
        .def_prop_ro("token_eot", &Model::token_eot)
        .def_prop_ro("use_gpu", &Model::use_gpu);
    bind_batch(m, model);

    nb::class_<Device>(m, "Device")
        .def_ro("name", &Device::name)
        .def_ro("description", &Device::description)
        .def_ro("type", &Device::type)
        .def_ro("memory_free", &Device::memory_free)
        .def_ro("memory_total", &Device::memory_total);

    m.def("system_info", &system_info, "whisper.cpp's report of the CPU features in use.");
    m.def("whisper_version", &whisperd::whisper_version);
    m.def("language_id", [](const std::string &code) { return whisper_lang_id(code.c_str()); },
          "code"_a, "whisper's id of an ISO 639-1 language code, -1 when unknown.");
    m.def("built_with_cuda", &built_with_cuda);
    m.def("cuda_architectures", &cuda_architectures);
    m.def("devices", &devices, "ggml's compute devices with their memory.");
    m.def("set_log_sink", [](nb::object sink) { set_log_sink(sink.ptr()); }, "sink"_a.none(),
          "Send whisper.cpp/ggml log lines to sink(level, line); None drops them.");
    m.def(
        "quantize_rows",
        [](const std::string &qtype, Matrix data) {
            std::string out;
            {
                nb::gil_scoped_release release;
                out = quantize_rows(qtype, data.data(), data.shape(0), data.shape(1));
            }
            return nb::bytes(out.data(), out.size());
        },
        "qtype"_a, "data"_a, "Quantise float32 rows into a ggml block type; returns raw bytes.");

    // Quiet from the first moment: nothing reaches stderr until Python installs its sink.
    set_log_sink(Py_None);
}
