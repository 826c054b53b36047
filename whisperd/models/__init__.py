"""Whisper model files: read CTranslate2 and GGML, convert, quantise, fetch the bundled ones."""
