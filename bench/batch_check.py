"""Batched and sequential decoding of the same real speech, side by side (any device).

Prints, for greedy and beam 5, the transcript of each path and whether they are equal;
exits 1 when greedy differs (the batched path must reproduce whisper.cpp's greedy result
on a window). Windows in one batch: the clip several times over, so the batch really has
several slots in flight.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from whisperd.audio import decode_audio
from whisperd.batch_decoder import BatchDecoder
from whisperd.batching import WindowRequest
from whisperd.inference import TranscribeOptions, WhisperModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--wav", required=True)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    audio = decode_audio(Path(args.wav))
    model = WhisperModel(args.model, use_gpu=not args.cpu)
    bad = False
    for beam in (1, 5):
        opts = TranscribeOptions(beam_size=beam)
        with model.new_state() as state:
            t = time.perf_counter()
            seq = state.transcribe(audio, opts).text
            t_seq = time.perf_counter() - t
        dec = BatchDecoder(model, args.copies, max_beams=beam)
        t = time.perf_counter()
        dec.add([WindowRequest(i, audio, opts) for i in range(args.copies)])
        results = []
        while dec.active():
            results += dec.step()
        t_batch = time.perf_counter() - t
        dec.close()
        texts = {" ".join(s.text for s in r.segments) for r in results}
        same = texts == {seq}
        print(f"beam {beam}: sequential {t_seq:.2f} s: {seq!r}")
        print(f"beam {beam}: batched x{args.copies} {t_batch:.2f} s: {sorted(texts)!r} -> "
              f"{'same' if same else 'DIFFERENT'}")
        bad |= beam == 1 and not same
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
