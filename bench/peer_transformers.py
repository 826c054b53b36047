"""Peer benchmark for issue 6: Hugging Face transformers Whisper, large-v3 geometry, on a GPU.

What: the throughput a bulk user gets from transformers on the same GPU and the same audio,
to put beside whisperd's figures for a large-v3-sized model. The weights are RANDOM (a
WhisperConfig with large-v3's dimensions, randomly initialised: the GPU host has no
network and no checkpoints); speed depends only on shapes and dtypes, never report
accuracy from it. fp16, attention through PyTorch SDPA (`attn_implementation="sdpa"`),
the default dynamic KV cache.

How (long-form the way a bulk user would run it, "chunked"): the WAV is cut into 30 s
windows; each window gets 128-bin log-mel features from transformers' own
WhisperFeatureExtractor (built offline from its constructor arguments, no hub); windows
are batched `batch_size` at a time; every window decodes exactly `--tokens-per-window`
tokens after the prompt <|startoftranscript|><|en|><|transcribe|><|notimestamps|>.
Random weights would stop at a random point, so end-of-text is suppressed: in `generate`
mode by `min_new_tokens=N` (transformers' MinNewTokensLengthLogitsProcessor) with
`max_new_tokens=N`; in `loop` mode by setting the end-of-text logit to -inf.

Two ways to decode (`--modes`, both by default):
- `generate`: `model.generate(input_features, generation_config=<built by hand>,
  language="en", task="transcribe", max_new_tokens=N, min_new_tokens=N)`, what a user
  calls. The GenerationConfig is written here (decoder_start_token_id 50258, the language
  and task token maps of large-v3, no suppress lists), so nothing is fetched.
- `loop`: a hand-written greedy loop over the model's forward (encoder once per batch, then
  one decoder call per token with the DynamicCache the model returns, argmax on the GPU,
  no host sync per step): the lean lower bound of eager transformers, without generate()'s
  per-step logits processors and stopping criteria.

Timed per batch size after one untimed warm-up batch of that size, with
torch.cuda.synchronize() around each part: features (the feature extractor, on the GPU
when it supports `device=`), encoder, decoder. Reported: windows, tokens decoded, wall
seconds (features + encode + decode, best of --repeat), x real time (audio seconds / wall),
ms per token step (decoder time / (batches x N): one step decodes one token for every
window of a batch), peak VRAM (torch.cuda.max_memory_allocated over the timed run).

Usage:
  python bench/peer_transformers.py --wav speech.wav --tile-to 960 --json out/peer.json
  python bench/peer_transformers.py --wav speech.wav --shape tiny --device cpu \
      --dtype float32 --batch-sizes 1,2 --tokens-per-window 8        # local smoke test
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import transformers
from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

SR = 16000
WINDOW_S = 30
WINDOW = SR * WINDOW_S

# Token ids of large-v3's vocabulary (n_vocab 51866, 100 languages).
EOT = 50257
SOT = 50258
LANG_EN = 50259
TRANSLATE = 50359
TRANSCRIBE = 50360
NO_TIMESTAMPS = 50364
PROMPT = (SOT, LANG_EN, TRANSCRIBE, NO_TIMESTAMPS)

_COMMON = dict(
    vocab_size=51866, num_mel_bins=128, max_source_positions=1500, max_target_positions=448,
    pad_token_id=EOT, bos_token_id=EOT, eos_token_id=EOT, decoder_start_token_id=SOT,
)
SHAPES: dict[str, dict[str, int]] = {
    "large-v3": dict(_COMMON, d_model=1280, encoder_layers=32, decoder_layers=32,
                     encoder_attention_heads=20, decoder_attention_heads=20,
                     encoder_ffn_dim=5120, decoder_ffn_dim=5120),
    # tiny's dimensions with large-v3's vocabulary and mels: for a quick check on a CPU.
    "tiny": dict(_COMMON, d_model=384, encoder_layers=4, decoder_layers=4,
                 encoder_attention_heads=6, decoder_attention_heads=6,
                 encoder_ffn_dim=1536, decoder_ffn_dim=1536),
}


@dataclass
class Row:
    mode: str
    batch_size: int
    windows: int
    batches: int
    tokens_decoded: int
    audio_s: float
    wall_s: float
    features_s: float
    encode_s: float
    decode_s: float
    x_real_time: float
    ms_per_token_step: float
    peak_vram_mib: float
    runs_s: list[float]


# ---------------------------------------------------------------------------------------
# Input


def read_wav(path: Path) -> np.ndarray:
    """16 kHz PCM WAV (8/16/32-bit) as float32 mono in [-1, 1]; channels are averaged."""
    with wave.open(str(path), "rb") as w:
        rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    if rate != SR:
        raise SystemExit(f"{path}: {rate} Hz; this benchmark reads 16 kHz WAV only (no resampling)")
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648
    else:
        raise SystemExit(f"{path}: {8 * width}-bit samples are not supported")
    return x.reshape(-1, channels).mean(axis=1) if channels > 1 else x


def windows_of(audio: np.ndarray) -> list[np.ndarray]:
    """Consecutive 30 s windows; the last may be shorter (the extractor pads it)."""
    return [audio[i : i + WINDOW] for i in range(0, len(audio), WINDOW)]


# ---------------------------------------------------------------------------------------
# Model


def build_model(shape: str, device: torch.device, dtype: torch.dtype) -> WhisperForConditionalGeneration:
    """Randomly initialised Whisper of `shape`, created directly on `device`."""
    config = WhisperConfig(**SHAPES[shape])
    with device:  # parameters are allocated and initialised on the device
        model = WhisperForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    return model.to(dtype=dtype).eval()


def generation_config(n_tokens: int) -> GenerationConfig:
    """What openai/whisper-large-v3's generation_config.json would supply, minus the
    suppress lists and alignment heads: written by hand so that nothing is downloaded."""
    return GenerationConfig(
        decoder_start_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, bos_token_id=EOT,
        no_timestamps_token_id=NO_TIMESTAMPS, is_multilingual=True,
        lang_to_id={"<|en|>": LANG_EN}, task_to_id={"transcribe": TRANSCRIBE, "translate": TRANSLATE},
        forced_decoder_ids=None, max_new_tokens=n_tokens, min_new_tokens=n_tokens,
        do_sample=False, num_beams=1, return_timestamps=False,
    )


def decode_generate(model: WhisperForConditionalGeneration, feats: torch.Tensor, n_tokens: int,
                    gen: GenerationConfig) -> tuple[torch.Tensor, float, float]:
    """model.generate(); encoder and decoder are not separable here: (tokens, 0, total)."""
    t0 = time.perf_counter()
    assert gen.max_new_tokens == gen.min_new_tokens == n_tokens
    out = model.generate(input_features=feats, generation_config=gen, language="en", task="transcribe")
    seq = out if isinstance(out, torch.Tensor) else out["sequences"]
    sync(feats.device)
    return seq, 0.0, time.perf_counter() - t0


def decode_loop(model: WhisperForConditionalGeneration, feats: torch.Tensor, n_tokens: int,
                gen: GenerationConfig) -> tuple[torch.Tensor, float, float]:
    """Greedy: encoder once, then one decoder call per token on the returned KV cache."""
    t0 = time.perf_counter()
    enc = BaseModelOutput(last_hidden_state=model.get_encoder()(feats).last_hidden_state)
    sync(feats.device)
    t1 = time.perf_counter()
    ids = torch.tensor(PROMPT, device=feats.device).expand(feats.shape[0], -1)
    out = model(encoder_outputs=enc, decoder_input_ids=ids, use_cache=True)
    new: list[torch.Tensor] = []
    for step in range(n_tokens):
        logits = out.logits[:, -1, :]
        logits[:, EOT] = -math.inf  # exactly n_tokens per window
        nxt = logits.argmax(dim=-1, keepdim=True)
        new.append(nxt)
        if step + 1 < n_tokens:
            out = model(encoder_outputs=enc, decoder_input_ids=nxt, past_key_values=out.past_key_values,
                        use_cache=True)
    seq = torch.cat([ids, *new], dim=1)
    sync(feats.device)
    return seq, t1 - t0, time.perf_counter() - t1


DECODERS: dict[str, Callable[..., tuple[torch.Tensor, float, float]]] = {
    "generate": decode_generate, "loop": decode_loop,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------


class Features:
    """WhisperFeatureExtractor for 128 mels, on the GPU when this transformers allows it."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=SR, hop_length=160,
                                          chunk_length=WINDOW_S, n_fft=400)
        self.device, self.dtype = device, dtype
        self.on_device = False
        if device.type == "cuda":
            try:
                self.fe([np.zeros(SR, np.float32)], sampling_rate=SR, return_tensors="pt", device=str(device))
                self.on_device = True
            except TypeError:  # older transformers: numpy on the CPU
                pass

    def __call__(self, chunk: list[np.ndarray]) -> torch.Tensor:
        kw: dict[str, Any] = {"device": str(self.device)} if self.on_device else {}
        feats = self.fe(chunk, sampling_rate=SR, return_tensors="pt", **kw).input_features
        return feats.to(self.device, self.dtype, non_blocking=True)


def run_once(model: WhisperForConditionalGeneration, feats_of: Features, wins: list[np.ndarray],
             batch: int, n_tokens: int, mode: str, gen: GenerationConfig) -> tuple[float, float, float, int]:
    """All windows, `batch` at a time: (features s, encode s, decode s, tokens decoded)."""
    f_s = e_s = d_s = 0.0
    decoded = 0
    for i in range(0, len(wins), batch):
        t0 = time.perf_counter()
        feats = feats_of(wins[i : i + batch])
        sync(feats.device)
        f_s += time.perf_counter() - t0
        seq, enc, dec = DECODERS[mode](model, feats, n_tokens, gen)
        e_s += enc
        d_s += dec
        # generate() returns the prompt with the new tokens in some versions, not in others.
        has_prompt = seq.shape[1] >= len(PROMPT) and seq[0, : len(PROMPT)].tolist() == list(PROMPT)
        new = seq.shape[1] - (len(PROMPT) if has_prompt else 0)
        if new != n_tokens:
            raise RuntimeError(f"{mode}: {new} tokens decoded per window, expected {n_tokens} "
                               f"(sequence length {seq.shape[1]})")
        decoded += seq.shape[0] * new
    return f_s, e_s, d_s, decoded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wav", type=Path, required=True, help="16 kHz WAV (mono or averaged)")
    ap.add_argument("--tile-to", type=float, default=0.0,
                    help="repeat the audio up to this many seconds (enough windows for big batches)")
    ap.add_argument("--tokens-per-window", type=int, default=100)
    ap.add_argument("--batch-sizes", default="1,8,16,24,32")
    ap.add_argument("--modes", default="generate,loop", help="generate, loop, or both (comma-separated)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per batch size; the best is reported")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="large-v3")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--verbose", action="store_true", help="keep transformers' warnings")
    args = ap.parse_args(argv)
    if not args.verbose:
        transformers.logging.set_verbosity_error()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(DECODERS):
        ap.error(f"unknown mode(s) {sorted(unknown)}; use generate, loop")
    n_tokens = args.tokens_per_window
    if not 1 <= n_tokens <= SHAPES[args.shape]["max_target_positions"] - len(PROMPT):
        ap.error(f"--tokens-per-window must be 1..{SHAPES[args.shape]['max_target_positions'] - len(PROMPT)}")

    audio = read_wav(args.wav)
    if args.tile_to and len(audio) < args.tile_to * SR:
        audio = np.tile(audio, math.ceil(args.tile_to * SR / len(audio)))[: int(args.tile_to * SR)]
    audio_s = len(audio) / SR
    wins = windows_of(audio)

    torch.manual_seed(args.seed)
    t = time.perf_counter()
    model = build_model(args.shape, device, dtype)
    sync(device)
    build_s = time.perf_counter() - t
    n_params = sum(p.numel() for p in model.parameters())
    feats_of = Features(device, dtype)
    gen = generation_config(n_tokens)
    attn = getattr(model.config, "_attn_implementation", "?")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {dev_name}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
          f"transformers {transformers.__version__}; python {platform.python_version()}")
    print(f"model: random {args.shape}, {n_params / 1e6:.0f} M parameters, {args.dtype}, attention {attn}, "
          f"built in {build_s:.1f} s; features on {'the GPU' if feats_of.on_device else 'the CPU'}")
    print(f"audio: {args.wav.name} {audio_s:.1f} s -> {len(wins)} windows of 30 s; "
          f"{n_tokens} tokens per window after a {len(PROMPT)}-token prompt; modes {', '.join(modes)}")

    rows: list[Row] = []
    errors: dict[str, str] = {}
    agreement = None
    if len(modes) == 2:
        # Both modes decode greedily from the same prompt: they should pick the same tokens.
        try:
            with torch.inference_mode():
                feats = feats_of(wins[:2])
                a = decode_generate(model, feats, n_tokens, gen)[0][:, -n_tokens:]
                b = decode_loop(model, feats, n_tokens, gen)[0][:, -n_tokens:]
            agreement = float((a == b).float().mean())
            print(f"check: generate and loop pick the same token at {100 * agreement:.1f}% of "
                  f"{a.numel()} positions ({a.shape[0]} windows)")
        except Exception as exc:
            errors["check"] = f"{type(exc).__name__}: {exc}"
    for mode in modes:
        for b in batch_sizes:
            try:
                with torch.inference_mode():
                    run_once(model, feats_of, wins[:b] if len(wins) >= b else (wins * b)[:b], b, n_tokens, mode, gen)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    best: tuple[float, float, float, int] | None = None
                    runs: list[float] = []
                    for _ in range(args.repeat):
                        r = run_once(model, feats_of, wins, b, n_tokens, mode, gen)
                        runs.append(sum(r[:3]))
                        if best is None or sum(r[:3]) < sum(best[:3]):
                            best = r
            except Exception as exc:  # report and go on: one mode may not work on some version
                errors[f"{mode} b{b}"] = f"{type(exc).__name__}: {exc}"
                print(f"{mode} batch {b}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            assert best is not None
            f_s, e_s, d_s, decoded = best
            wall = f_s + e_s + d_s
            batches = math.ceil(len(wins) / b)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
            rows.append(Row(mode, b, len(wins), batches, decoded, audio_s, wall, f_s, e_s, d_s,
                            audio_s / wall, 1000 * (e_s + d_s if mode == "generate" else d_s) / (batches * n_tokens),
                            peak, runs))
            r = rows[-1]
            print(f"  {mode:<8} batch {b:>3}: wall {wall:.3f} s, {r.x_real_time:.1f}x real time", flush=True)

    print()
    print("| mode | batch | windows | tokens decoded | wall s | features s | encode s | decode s "
          "| x real time | ms / token step | peak VRAM MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        enc = "(in decode)" if r.mode == "generate" else f"{r.encode_s:.3f}"
        print(f"| {r.mode} | {r.batch_size} | {r.windows} | {r.tokens_decoded} | {r.wall_s:.3f} | "
              f"{r.features_s:.3f} | {enc} | {r.decode_s:.3f} | {r.x_real_time:.1f} | "
              f"{r.ms_per_token_step:.2f} | {r.peak_vram_mib:.0f} |")
    if any(r.mode == "generate" for r in rows):
        print("generate: the encoder runs inside generate(); its decode s and ms / token step include it.")
    for key, msg in errors.items():
        print(f"FAILED {key}: {msg}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": dev_name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "shape": args.shape, "dtype": args.dtype,
            "attn_implementation": attn, "parameters": n_params, "build_seconds": build_s,
            "features_on_device": feats_of.on_device, "wav": str(args.wav), "audio_seconds": audio_s,
            "windows": len(wins), "tokens_per_window": n_tokens, "prompt": list(PROMPT),
            "generate_loop_token_agreement": agreement,
            "rows": [asdict(r) for r in rows], "errors": errors,
        }, indent=2))
    return 1 if errors and not rows else 0


if __name__ == "__main__":
    sys.exit(main())
