"""whisperd: speech transcription with whisper.cpp, served over gRPC."""

__version__ = "0.1.0"
