#!/usr/bin/env python3
"""What WHISPERD_CROSS_KV_INT8 costs in accuracy, measured on the CPU with real cross K/V.

The CUDA decoder step can read an int8 copy of every window's cross-attention keys and
values (native/src/cuda_cross_attention_int8.cu): symmetric, one f16 scale per (position, head,
K or V), i.e. per 64 values, scale = round_f16(max|x| / 127), x_q = clamp(rint(x / scale),
-127, 127). This script quantises the f16 cross K/V the CPU batched decoder's encoder wrote
(BatchDecoder.cross_kv) exactly so, and compares cross-attention outputs
softmax(q K^T) V per decoder layer, f16 against int8 (the query as the kernel takes it
there: int16 per head), for three kinds of query:

- decoder: the real cross-attention queries of a greedy decode in float32 numpy over the
  f16 K/V (the model's own decoder on the real window; the greedy transcript is decoded
  again over the int8 K/V and the two token sequences compared);
- keys: rows of the keys themselves (sharp, encoder-like attention);
- random: Gaussian queries as large as the decoder's (broad attention).

The 1536 - 1500 zero padding positions take part, as in whisperd's step.

    .venv/bin/python bench/cross_kv_int8_error.py [--models tiny.en base]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from whisperd import paths  # noqa: E402
from whisperd.audio import decode_audio  # noqa: E402
from whisperd.batch_decoder import BatchDecoder  # noqa: E402
from whisperd.batching import WindowRequest  # noqa: E402
from whisperd.inference import TranscribeOptions, WhisperModel  # noqa: E402
from whisperd.models.ggml_file import load  # noqa: E402

SR = 16000
KV_PAD = 256
HEAD = 64


def quantise_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [n, C] (f16 values) as the kernel's int8 copy: [n, C] int8 and [n, C / 64] scales."""
    n, c = x.shape
    g = x.reshape(n, c // HEAD, HEAD).astype(np.float32)
    amax = np.abs(g).max(axis=2, keepdims=True)
    scale = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    inv = np.where(scale > 0, np.float32(1) / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    q = np.clip(np.rint(g * inv), -127, 127)
    return q.reshape(n, c).astype(np.int8), scale[:, :, 0]


def quantise(x: np.ndarray) -> np.ndarray:
    """x [n, C] (f16 values) through the kernel's int8 copy and back (f32)."""
    q, scale = quantise_int8(x)
    n, c = x.shape
    return (q.reshape(n, c // HEAD, HEAD) * scale[:, :, None]).reshape(n, c).astype(np.float32)


def quantise_query(q: np.ndarray) -> np.ndarray:
    """q [r, C] as the int8 kernel scores with it: int16 per head, scale max|q| / 32767."""
    r, c = q.shape
    g = q.reshape(r, c // HEAD, HEAD).astype(np.float32)
    scale = np.abs(g).max(axis=2, keepdims=True) / np.float32(32767)
    inv = np.where(scale > 0, np.float32(1) / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    return (np.clip(np.rint(g * inv), -32767, 32767) * scale).reshape(r, c)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int) -> np.ndarray:
    """softmax(q k^T) v per head: q [r, C] (scaled), k/v [n, C] -> [r, C] (float64)."""
    r, c = q.shape
    out = np.empty((r, c))
    for h in range(n_head):
        s = slice(h * HEAD, (h + 1) * HEAD)
        sc = q[:, s].astype(np.float64) @ k[:, s].T.astype(np.float64)
        p = np.exp(sc - sc.max(axis=1, keepdims=True))
        out[:, s] = (p / p.sum(axis=1, keepdims=True)) @ v[:, s]
    return out


MAGIC = 12582912.0  # 1.5 * 2^23
SPAN = 256  # positions a block of the kernel takes at 128 windows (and more): 16 steps a warp


def attention_kernel(q: np.ndarray, k: np.ndarray, v8: np.ndarray, vscale: np.ndarray, n_head: int,
                     n_zero: int) -> np.ndarray:
    """The int8 kernel's arithmetic for softmax(q k^T) v: q [r, C] (int16-quantised, scaled),
    k [n, C] (the int8 keys, dequantised), v8 [n, C] int8 with vscale [n, C / 64], and n_zero
    zero positions after them. Positions go in pairs (2i, 2i + 1); each pair's two weights
    e * vscale become int16 times a power of two that puts the larger in [8192, 16384], their
    integer dot products with the int8 values are added in float32 to 1.5 * 2^23 (the bits
    the kernel gets for free) times that power's inverse, by fma, a warp's pairs in turn
    (warp w of block b takes pairs SPAN / 2 * b + w + 8 t), the 1.5 * 2^23s taken off at the
    end. The weights are relative to the window's maximum, not each warp's running one: the
    same relative rounding."""
    r, c = q.shape
    n = k.shape[0]
    n_pairs = -(-n // 2)
    steps = SPAN // 16  # pairs a warp
    n_warp = -(-n_pairs // (SPAN // 2)) * 8  # whole blocks of 8 warps
    out = np.empty((r, c))
    for h in range(n_head):
        s = slice(h * HEAD, (h + 1) * HEAD)
        sc = (q[:, s].astype(np.float64) @ k[:, s].T.astype(np.float64)) * np.log2(np.e)  # base 2
        mx = np.maximum(sc.max(axis=1, keepdims=True), 0.0 if n_zero else -np.inf)
        e = np.exp2(sc - mx).astype(np.float32)  # [r, n]
        w = e * vscale[None, :, h].astype(np.float32)
        wp = np.zeros((r, n_warp * steps * 2), np.float32)
        wp[:, :n] = w
        wp = wp.reshape(r, n_warp * steps, 2)  # pairs in order
        wm = np.maximum(wp.max(axis=2), np.float32(1e-30))
        x = np.floor(np.log2(wm.astype(np.float64)))
        rr = np.exp2(13 - x)[:, :, None]
        wq = np.rint(wp.astype(np.float64) * rr)  # exact: w * r < 2^14 (fma, then rounding)
        vv = np.zeros((n_warp * steps * 2, HEAD))
        vv[:n] = v8[:, s]
        vv = vv.reshape(n_warp * steps, 2, HEAD)
        dots = np.einsum("rpj,pjd->rpd", wq, vv)  # exact integers, |.| < 2^22
        inv = np.exp2(x - 13)  # [r, pairs]
        # pair index SPAN / 2 * b + w + 8 t -> [r, block b, step t, warp w]
        blocks = n_warp // 8
        dots = dots.reshape(r, blocks, steps, 8, HEAD)
        inv = inv.reshape(r, blocks, steps, 8)
        o = np.zeros((r, blocks, 8, HEAD), np.float32)
        cor = np.zeros((r, blocks, 8), np.float32)
        for t in range(steps):
            o = (inv[:, :, t, :, None] * (MAGIC + dots[:, :, t]) + o.astype(np.float64)).astype(np.float32)
            cor = (cor.astype(np.float64) + inv[:, :, t]).astype(np.float32)
        o = (o.astype(np.float64) - cor[..., None].astype(np.float64) * MAGIC).astype(np.float32)
        num = o.astype(np.float64).sum(axis=(1, 2))
        den = e.astype(np.float64).sum(axis=1) + n_zero * np.exp2(-mx[:, 0])
        out[:, s] = num / den[:, None]
    return out


class NumpyDecoder:
    """Whisper's text decoder in float32 numpy over given cross K/V (K pre-scaled by
    head_size^-1/4, as whisper.cpp and whisperd store it), greedy, no timestamps."""

    def __init__(self, path: Path) -> None:
        header, tensors = load(path)
        self.h = header.hparams
        self.tokens = header.tokens
        self.w = {n: t.to_numpy().astype(np.float32) for n, t in tensors.items() if n.startswith("decoder.")}
        multilingual = self.h.is_multilingual
        self.eot = 50257 if multilingual else 50256
        sot = self.eot + 1
        # whisper.cpp's ids: <|en|> <|transcribe|> <|notimestamps|> (multilingual), <|notimestamps|> (.en)
        self.prefix = [sot, sot + 1, 50359, 50363] if multilingual else [sot, 50362]

    def _ln(self, x: np.ndarray, p: str) -> np.ndarray:
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * self.w[p + ".weight"] + self.w[p + ".bias"]

    def decode(self, ck: list[np.ndarray], cv: list[np.ndarray], max_tokens: int,
               kernel8: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] | None = None
               ) -> tuple[list[int], list[np.ndarray]]:
        """Greedy tokens, and per layer the cross queries of every row (scaled); with
        `kernel8` (per layer: dequantised keys, int8 values, their scales, zero positions)
        cross-attention as the int8 kernel computes it instead of over ck/cv."""
        n_head = self.h.n_text_head
        scale = np.float32(HEAD ** -0.25)
        toks = list(self.prefix)
        x = self.w["decoder.token_embedding.weight"][toks] + self.w["decoder.positional_embedding"][: len(toks)]
        queries: list[list[np.ndarray]] = [[] for _ in range(self.h.n_text_layer)]
        # the whole sequence each step (short: a window is < 100 tokens)
        out: list[int] = []
        for _ in range(max_tokens):
            n = x.shape[0]
            y = x
            causal = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
            for layer in range(self.h.n_text_layer):
                p = f"decoder.blocks.{layer}."
                a = self._ln(y, p + "attn_ln")
                q = (a @ self.w[p + "attn.query.weight"].T + self.w[p + "attn.query.bias"]) * scale
                k = (a @ self.w[p + "attn.key.weight"].T) * scale
                v = a @ self.w[p + "attn.value.weight"].T + self.w[p + "attn.value.bias"]
                o = np.empty_like(q)
                for hh in range(n_head):
                    s = slice(hh * HEAD, (hh + 1) * HEAD)
                    sc = q[:, s] @ k[:, s].T + causal
                    pr = np.exp(sc - sc.max(axis=1, keepdims=True))
                    o[:, s] = (pr / pr.sum(axis=1, keepdims=True)) @ v[:, s]
                y = y + o @ self.w[p + "attn.out.weight"].T + self.w[p + "attn.out.bias"]
                a = self._ln(y, p + "cross_attn_ln")
                q = (a @ self.w[p + "cross_attn.query.weight"].T + self.w[p + "cross_attn.query.bias"]) * scale
                queries[layer].append(q[-1:])
                if kernel8 is not None:
                    o = attention_kernel(quantise_query(q), *kernel8[layer][:3], n_head, kernel8[layer][3])
                else:
                    o = attention(q, ck[layer], cv[layer], n_head)
                o = o.astype(np.float32)
                y = y + o @ self.w[p + "cross_attn.out.weight"].T + self.w[p + "cross_attn.out.bias"]
                a = self._ln(y, p + "mlp_ln")
                hid = a @ self.w[p + "mlp.0.weight"].T + self.w[p + "mlp.0.bias"]
                hid = 0.5 * hid * (1.0 + np.tanh(0.7978845608028654 * hid * (1.0 + 0.044715 * hid * hid)))
                y = y + hid @ self.w[p + "mlp.2.weight"].T + self.w[p + "mlp.2.bias"]
            logits = self._ln(y[-1], "decoder.ln") @ self.w["decoder.token_embedding.weight"].T
            t = int(np.argmax(logits[: self.eot + 1]))  # text tokens and the end
            if t == self.eot:
                break
            out.append(t)
            toks.append(t)
            row = self.w["decoder.token_embedding.weight"][t] + self.w["decoder.positional_embedding"][len(toks) - 1]
            x = np.vstack([x, row[None]])
        return out, [np.vstack(q) for q in queries]

    def text(self, toks: list[int]) -> str:
        return b"".join(self.tokens[t] for t in toks).decode("utf-8", "replace").strip()


def cross_kv(path: Path, clips: dict[int, np.ndarray]) -> tuple[dict[int, list[np.ndarray]], int]:
    """Every clip's cross K/V per layer, [2, n_audio_ctx, C] f32 (f16 values), from the CPU
    batched decoder's encoder; and n_audio_ctx."""
    model = WhisperModel(path, use_gpu=False)
    try:
        dec = BatchDecoder(model, len(clips), 1, encode_batch=len(clips))
        try:
            dec.add([WindowRequest(i, s, TranscribeOptions()) for i, s in clips.items()])
            n_layer = model.native.n_text_layer
            kv = {i: [dec.cross_kv(i, layer) for layer in range(n_layer)] for i in clips}
            return kv, model.native.n_audio_ctx
        finally:
            dec.close()
    finally:
        model.close()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def worst_row(a: np.ndarray, b: np.ndarray, n_head: int) -> float:
    """The largest per (row, head) relative error."""
    d = (a - b).reshape(a.shape[0], n_head, HEAD)
    r = b.reshape(b.shape[0], n_head, HEAD)
    return float((np.linalg.norm(d, axis=2) / np.maximum(np.linalg.norm(r, axis=2), 1e-30)).max())


def run(name: str, path: Path, clips: dict[int, np.ndarray], max_tokens: int) -> None:
    kv, n_ctx = cross_kv(path, clips)
    nd = NumpyDecoder(path)
    C, n_head, n_layer = nd.h.n_text_state, nd.h.n_text_head, nd.h.n_text_layer
    n_pad = -(-n_ctx // KV_PAD) * KV_PAD
    rng = np.random.default_rng(0)
    print(f"\n{name}: n_state {C}, {n_head} heads, {n_layer} layers, {n_ctx} positions (+{n_pad - n_ctx} zero)")
    cols = ("kv", "decoder", "decoder_worst", "keys", "random", "arith")
    per_layer: dict[str, list[list[float]]] = {k: [[] for _ in range(n_layer)] for k in cols}
    for i, layers in kv.items():
        ck16, cv16, ck8, cv8 = [], [], [], []
        k8: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []  # as attention_kernel takes them
        for layer in range(n_layer):
            k, v = layers[layer][0], layers[layer][1]
            zeros = np.zeros((n_pad - n_ctx, C), np.float32)
            kq, vq = quantise(k), quantise(v)
            ck16.append(np.vstack([k, zeros]))
            cv16.append(np.vstack([v, zeros]))
            ck8.append(np.vstack([kq, zeros]))
            cv8.append(np.vstack([vq, zeros]))
            k8.append((kq, *quantise_int8(v), n_pad - n_ctx))
            per_layer["kv"][layer].append(max(rel(kq, k), rel(vq, v)))
        toks16, queries = nd.decode(ck16, cv16, max_tokens)
        toks8, _ = nd.decode(ck8, cv8, max_tokens, kernel8=k8)
        same = toks16 == toks8
        first = next((j for j, (a, b) in enumerate(zip(toks16, toks8)) if a != b), min(len(toks16), len(toks8)))
        print(f"  window {i} ({len(clips[i]) / SR:.1f} s): {len(toks16)} tokens, int8 greedy tokens "
              f"{'identical' if same else f'differ from token {first}'}")
        print(f"    f16 : {nd.text(toks16)[:120]}")
        if not same:
            print(f"    int8: {nd.text(toks8)[:120]}")
        for layer in range(n_layer):
            q = queries[layer]
            a16 = attention(q, ck16[layer], cv16[layer], n_head)
            a8 = attention_kernel(quantise_query(q), *k8[layer][:3], n_head, k8[layer][3])
            per_layer["decoder"][layer].append(rel(a8, a16))
            per_layer["decoder_worst"][layer].append(worst_row(a8, a16, n_head))
            # what the kernel's arithmetic (int16 weights, the 1.5 * 2^23 sums) adds to the
            # int8 copy's own error: against exact arithmetic over the same int8 K/V
            per_layer["arith"][layer].append(rel(a8, attention(quantise_query(q), ck8[layer], cv8[layer], n_head)))
            qk = ck16[layer][rng.choice(n_ctx, 64, replace=False)]
            per_layer["keys"][layer].append(rel(attention_kernel(quantise_query(qk), *k8[layer][:3], n_head,
                                                                 k8[layer][3]),
                                                attention(qk, ck16[layer], cv16[layer], n_head)))
            qr = rng.standard_normal((64, C)).astype(np.float32) * float(np.sqrt((q ** 2).mean()))
            per_layer["random"][layer].append(rel(attention_kernel(quantise_query(qr), *k8[layer][:3], n_head,
                                                                   k8[layer][3]),
                                                  attention(qr, ck16[layer], cv16[layer], n_head)))
    print("  relative error of cross-attention outputs, int8 against f16 (the largest over the windows):")
    print("  | layer | K/V themselves | decoder queries | worst (row, head) | key queries | random queries "
          "| kernel arithmetic vs exact (decoder queries) |")
    print("  |---|---|---|---|---|---|---|")
    for layer in range(n_layer):
        vals = [max(per_layer[k][layer]) for k in cols]
        print(f"  | {layer} | " + " | ".join(f"{c:.2e}" for c in vals) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    ap.add_argument("--max-tokens", type=int, default=100)
    args = ap.parse_args()
    jfk = decode_audio(paths.samples_dir() / "jfk.wav")
    # the GPU tests' three windows: speech, a full 30 s window, a cut clip
    clips = {1: jfk, 2: np.tile(jfk, 3)[: 30 * SR], 3: jfk[5 * SR:]}
    for name in args.models:
        run(name, paths.models_dir() / f"ggml-{name}.bin", clips, args.max_tokens)


if __name__ == "__main__":
    main()
