"""Submit's options, checked field by field; a bad one is INVALID_ARGUMENT naming it."""
from __future__ import annotations

import logging

from whisperd.server.api.errors import InvalidArgument
from whisperd.server.jobs.model import JobOptions
from whisperd import _native
from whisperd.inference import TranscribeOptions
from whisperd.v1 import transcription_pb2 as pb

_TASKS = {pb.TASK_UNSPECIFIED: "transcribe", pb.TASK_TRANSCRIBE: "transcribe", pb.TASK_TRANSLATE: "translate"}
_MAX_FILENAME = 255
_MAX_REQUEST_ID = 128


class _UnknownLanguageIsNotOurError(logging.Filter):
    """whisper.cpp logs an unknown language code at ERROR when we look it up; here that is
    a client's mistake, answered with INVALID_ARGUMENT, so it is worth INFO at most."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO and "unknown language" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("whisperd.native").addFilter(_UnknownLanguageIsNotOurError())


def options_from_pb(o: pb.JobOptions, *, multilingual: bool) -> JobOptions:
    language = o.language.strip() or None
    if language is not None:
        # whisper.cpp also takes full names ("english"); the API promises codes, and a
        # name would pass here only to be refused later as needing a multilingual model.
        if _native.language_id(language) < 0 or language == "auto" or len(language) > 3:
            raise InvalidArgument(
                f"options.language {o.language!r} is not a language whisper knows: use an "
                "ISO 639-1 code such as 'en' or 'de', or leave it empty to detect it"
            )
        if not multilingual and language != "en":
            raise InvalidArgument(
                f"options.language {language!r} needs a multilingual model; this server's model is English-only"
            )
    task = _TASKS.get(o.task)
    if task is None:
        raise InvalidArgument(f"options.task {o.task} is not transcribe (1) or translate (2)")
    if task == "translate" and not multilingual:
        raise InvalidArgument("options.task translate needs a multilingual model; this server's model is English-only")
    webhook = o.webhook_url.strip() or None  # checked (scheme, address) by the dispatcher
    if len(o.filename) > _MAX_FILENAME:
        raise InvalidArgument(f"options.filename is longer than {_MAX_FILENAME} characters")
    request_id = o.request_id.strip() or None
    if request_id is not None and (len(request_id) > _MAX_REQUEST_ID or not request_id.isprintable()):
        raise InvalidArgument(
            f"options.request_id must be at most {_MAX_REQUEST_ID} printable characters (a UUID, say)"
        )
    increment = o.temperature_increment if o.HasField("temperature_increment") else 0.2
    checked = TranscribeOptions(
        language=language,
        task=task,  # type: ignore[arg-type]
        beam_size=o.beam_size or 5,
        temperature=o.temperature,
        temperature_increment=increment,
        initial_prompt=o.initial_prompt or None,
        word_timestamps=o.word_timestamps,
        vad=o.vad,
    )
    try:
        checked.validate()
    except ValueError as exc:
        raise InvalidArgument(f"options.{exc}") from None
    return JobOptions(
        language=language,
        task=task,
        webhook_url=webhook,
        beam_size=checked.beam_size,
        temperature=checked.temperature,
        temperature_increment=increment,
        initial_prompt=checked.initial_prompt,
        word_timestamps=checked.word_timestamps,
        vad=checked.vad,
        filename=o.filename or None,
        condition_on_previous_text=o.condition_on_previous_text,
        request_id=request_id,
    )
