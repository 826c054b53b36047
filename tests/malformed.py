"""Hostile and damaged inputs, generated on the spot: lying WAV headers, truncations,
odd rates and bit depths, corrupt protobuf. Shared by the edge tests and bench/chaos.py."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def wav_bytes(
    *,
    rate: int = 16000,
    channels: int = 1,
    bits: int = 16,
    format_tag: int = 1,
    data: bytes | None = None,
    declared_data: int | None = None,
) -> bytes:
    """A RIFF/WAVE file whose header says what the arguments say, whatever `data` holds."""
    if data is None:
        data = b"\0" * 64000
    block = max(1, channels * bits // 8)
    fmt = struct.pack("<HHIIHH", format_tag, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    size = len(data) if declared_data is None else declared_data
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    riff = len(body) if declared_data is None else min(0xFFFFFFFF, declared_data + 36)
    return b"RIFF" + struct.pack("<I", riff) + body


def tone(secs: float, rate: int = 16000) -> bytes:
    t = np.arange(int(secs * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


# (name, file name, bytes, expected gRPC status name, words the message must contain)
def corpus(jfk_mp3: Path) -> list[tuple[str, str, bytes, str, str]]:
    mp3 = jfk_mp3.read_bytes()
    return [
        ("rate 1 Hz (32,000 s claimed)", "a.wav", wav_bytes(rate=1), "INVALID_ARGUMENT", "sample rate 1 Hz"),
        ("rate 8 Hz", "a.wav", wav_bytes(rate=8), "INVALID_ARGUMENT", "sample rate 8 Hz"),
        ("rate 2147483647 Hz", "a.wav", wav_bytes(rate=2147483647), "INVALID_ARGUMENT", "sample rate"),
        ("255 channels", "a.wav", wav_bytes(channels=255, data=b"\0" * 255 * 2 * 800), "INVALID_ARGUMENT", "channel count 255"),
        ("0 bits per sample", "a.wav", wav_bytes(bits=0), "INVALID_ARGUMENT", "unsupported audio encoding"),
        ("33 bits per sample", "a.wav", wav_bytes(bits=33), "INVALID_ARGUMENT", "unsupported audio encoding"),
        ("unknown format tag", "a.wav", wav_bytes(format_tag=0x7777), "INVALID_ARGUMENT", "unsupported audio encoding"),
        ("4 GB claimed, 1 KB held", "a.wav", wav_bytes(data=b"\1\0" * 512, declared_data=0xFFFFFFF0), "INVALID_ARGUMENT", "too little"),
        ("header only", "a.wav", wav_bytes(data=b""), "INVALID_ARGUMENT", "audio"),
        ("mp3 cut to 400 bytes", "a.mp3", mp3[:400], "INVALID_ARGUMENT", "audio"),
        ("random bytes named .mp3", "a.mp3", np.random.default_rng(3).bytes(50_000), "INVALID_ARGUMENT", "audio"),
        ("text named .wav", "a.wav", b"hello, I am not audio\n" * 100, "INVALID_ARGUMENT", "audio"),
    ]


# Raw request bodies that do not parse as the method's message.
CORRUPT_SUBMIT = b"\x0a\xff\xff\xff\xff\x0f"  # field 1 with a length past the end
NON_UTF8_ID = b"\x0a\x02\xff\xfe"  # GetJobRequest.id = bytes that are not UTF-8
