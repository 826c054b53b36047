// C++ exception types that nanobind turns into named Python exceptions (module.cpp).
#pragma once

#include <stdexcept>
#include <string>

namespace whisperd {

// Base of every whisper.cpp failure that is not a bad argument.
struct WhisperError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The model file is missing, corrupt, truncated or of a foreign format.
struct ModelLoadError : WhisperError {
    using WhisperError::WhisperError;
};

// The GPU (or host) ran out of memory; the server waits for VRAM on this one.
struct OutOfMemoryError : WhisperError {
    using WhisperError::WhisperError;
};

// A running transcription was stopped through its CancelToken.
struct TranscriptionAborted : WhisperError {
    using WhisperError::WhisperError;
};

}  // namespace whisperd
