"""Between the job store's records and the proto messages (the contract)."""
from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from whisperd.server.jobs.model import JobOptions, JobRecord, JobStatus
from whisperd.transcript import Segment, Transcript, Word
from whisperd.v1 import transcription_pb2 as pb

STATUS_TO_PB = {
    JobStatus.QUEUED: pb.JOB_STATUS_QUEUED,
    JobStatus.RUNNING: pb.JOB_STATUS_RUNNING,
    JobStatus.DONE: pb.JOB_STATUS_DONE,
    JobStatus.FAILED: pb.JOB_STATUS_FAILED,
    JobStatus.CANCELLED: pb.JOB_STATUS_CANCELLED,
}
STATUS_FROM_PB = {v: k for k, v in STATUS_TO_PB.items()}
TASK_TO_PB = {"transcribe": pb.TASK_TRANSCRIBE, "translate": pb.TASK_TRANSLATE}
FORMAT_FROM_PB = {
    pb.TRANSCRIPT_FORMAT_UNSPECIFIED: "json",
    pb.TRANSCRIPT_FORMAT_JSON: "json",
    pb.TRANSCRIPT_FORMAT_TEXT: "txt",
    pb.TRANSCRIPT_FORMAT_SRT: "srt",
    pb.TRANSCRIPT_FORMAT_VTT: "vtt",
}
CONTENT_TYPES = {
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
}


def timestamp(epoch: float | None) -> Timestamp | None:
    if epoch is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(epoch * 1e9))
    return ts


def word_to_pb(w: Word) -> pb.Word:
    return pb.Word(text=w.text, start=w.start, end=w.end, probability=w.probability)


def segment_to_pb(s: Segment) -> pb.Segment:
    return pb.Segment(
        index=s.index, start=s.start, end=s.end, text=s.text,
        words=[word_to_pb(w) for w in s.words], no_speech_prob=s.no_speech_prob,
    )


def options_to_pb(o: JobOptions) -> pb.JobOptions:
    msg = pb.JobOptions(
        language=o.language or "",
        task=TASK_TO_PB[o.task],
        webhook_url=o.webhook_url or "",
        beam_size=o.beam_size,
        temperature=o.temperature,
        initial_prompt=o.initial_prompt or "",
        word_timestamps=o.word_timestamps,
        vad=o.vad,
        filename=o.filename or "",
        request_id=o.request_id or "",
    )
    msg.temperature_increment = o.temperature_increment
    if o.condition_on_previous_text:
        msg.condition_on_previous_text = True
    return msg


def job_to_pb(job: JobRecord, *, with_segments: bool = True) -> pb.Job:
    return pb.Job(
        id=job.id,
        status=STATUS_TO_PB[job.status],
        language=job.language or job.options.language or "",
        task=TASK_TO_PB[job.options.task],
        duration_secs=job.duration_secs,
        progress=job.progress,
        segments=[segment_to_pb(s) for s in job.segments] if with_segments else [],
        error=job.error or "",
        created_at=timestamp(job.created_at),
        started_at=timestamp(job.started_at),
        completed_at=timestamp(job.completed_at),
        model=job.model or "",
        options=options_to_pb(job.options),
        language_probability=job.language_probability or 0.0,
        attempts=job.attempts,
        warnings=list(job.warnings),
    )


def transcript_of(job: JobRecord) -> Transcript:
    """The job's result in the shape the shared formatter renders."""
    return Transcript(
        segments=tuple(job.segments),
        language=job.language or "",
        language_probability=job.language_probability or 0.0,
        duration_secs=job.duration_secs,
    )


def job_json(job: JobRecord) -> str:
    """The job as webhooks post it: protobuf's JSON mapping with the proto field names
    (duration_secs, created_at), as the earlier service's JSON had them."""
    return json_format.MessageToJson(job_to_pb(job), preserving_proto_field_name=True, indent=None)
