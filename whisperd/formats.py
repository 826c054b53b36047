"""Transcript rendering: txt, srt, vtt and json, in one place.

The CLI, the gRPC client and the server all render through `render`, so a transcript
fetched any way prints the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from whisperd.transcript import Segment, Transcript

FORMATS: tuple[str, ...] = ("txt", "srt", "vtt", "json")

# Other names people type for the same thing.
_ALIASES: dict[str, str] = {"text": "txt"}


def normalise_format(fmt: str) -> str:
    """The canonical name of `fmt` ("text" -> "txt", any case), or ValueError if unknown."""
    name = fmt.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in FORMATS:
        raise ValueError(
            f"unknown transcript format {fmt!r}: choose one of {', '.join(FORMATS)} "
            f"(or {', '.join(repr(a) for a in _ALIASES)} for txt)"
        )
    return name


def render(transcript: Transcript, fmt: str) -> str:
    """The transcript as text in format `fmt` (one of FORMATS, or an alias)."""
    return _RENDERERS[normalise_format(fmt)](transcript)


# --- the formats ------------------------------------------------------------------------


def _render_txt(transcript: Transcript) -> str:
    lines = [text for s in transcript.segments if (text := _cue_text(s))]
    return "".join(f"{line}\n" for line in lines)


def _render_srt(transcript: Transcript) -> str:
    cues = []
    for number, (segment, text) in enumerate(_cues(transcript), start=1):
        start, end = _span(segment)
        cues.append(f"{number}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n")
    return "\n".join(cues)


def _render_vtt(transcript: Transcript) -> str:
    cues = ["WEBVTT\n"]
    for segment, text in _cues(transcript):
        start, end = _span(segment)
        # WebVTT cue text is markup: a bare & or < would start an entity or a tag.
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        cues.append(f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{escaped}\n")
    return "\n".join(cues)


def _render_json(transcript: Transcript) -> str:
    document = {
        "language": transcript.language,
        "language_probability": _probability(transcript.language_probability),
        "duration_secs": _seconds(transcript.duration_secs),
        "text": transcript.text,
        "segments": [
            {
                "index": s.index,
                "start": _seconds(s.start),
                "end": _seconds(s.end),
                "text": s.text,
                "no_speech_prob": _probability(s.no_speech_prob),
                "words": [
                    {
                        "text": w.text,
                        "start": _seconds(w.start),
                        "end": _seconds(w.end),
                        "probability": _probability(w.probability),
                    }
                    for w in s.words
                ],
            }
            for s in transcript.segments
        ],
    }
    # ensure_ascii=False keeps non-Latin transcripts readable; indent makes it diffable.
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


_RENDERERS: dict[str, Callable[[Transcript], str]] = {
    "txt": _render_txt,
    "srt": _render_srt,
    "vtt": _render_vtt,
    "json": _render_json,
}


# --- helpers ----------------------------------------------------------------------------


def _cue_text(segment: Segment) -> str:
    """Segment text fit for one cue: stripped, and with no blank line (which ends a cue)."""
    lines = (line.strip() for line in segment.text.strip().splitlines())
    return "\n".join(line for line in lines if line)


def _cues(transcript: Transcript) -> list[tuple[Segment, str]]:
    # Segments with no text (silence the decoder kept) would be empty cues, which
    # subtitle players and parsers treat inconsistently; they are left out.
    return [(s, text) for s in transcript.segments if (text := _cue_text(s))]


def _span(segment: Segment) -> tuple[float, float]:
    """Cue times, clamped so a cue never starts before 0 or ends before it starts."""
    start = max(segment.start, 0.0)
    return start, max(segment.end, start)


def _milliseconds(seconds: float) -> int:
    return max(round(seconds * 1000), 0)


# JSON numbers are rounded (times to the millisecond, probabilities to 4 places) so that
# the same transcript renders to the same bytes whether its floats are the engine's
# doubles or came through a float32 proto field.
def _seconds(seconds: float) -> float:
    return _milliseconds(seconds) / 1000


def _probability(value: float) -> float:
    return round(float(value), 4)


def _timestamp(seconds: float, decimal_mark: str) -> str:
    """HH:MM:SS<mark>mmm; hours grow past two digits rather than wrapping."""
    hours, rest = divmod(_milliseconds(seconds), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_mark}{millis:03d}"
