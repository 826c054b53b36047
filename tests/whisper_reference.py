"""Whisper's audio encoder in float64 numpy, from a GGML file's weights: an independent
reference for the encoders of the batched engine (ggml's graph and whisperd's CUDA code).
It follows OpenAI's model: attention over exactly n_audio_ctx positions, tanh GELU as ggml
computes it, layer norms with eps 1e-5. For small models only (tiny: a few seconds).

`pad_keys` adds that many zero keys and values to every self-attention, as whisper.cpp's
flash-attention encoder does (it pads them to a multiple of 256 and attends to the zeros
too: about 2 % off OpenAI's keys and values on tiny.en); the batched engine's ggml encoder
does the same, so that it gives whisper.cpp's transcripts."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from whisperd.models.ggml_file import load


class ReferenceEncoder:
    def __init__(self, path: Path, pad_keys: int = 0) -> None:
        self.pad_keys = pad_keys
        header, tensors = load(path)
        self.h = header.hparams
        self.w = {name: t.to_numpy().astype(np.float64) for name, t in tensors.items()
                  if name.startswith(("encoder.", "decoder.blocks."))}

    def _ln(self, x: np.ndarray, prefix: str) -> np.ndarray:
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * self.w[prefix + ".weight"] + self.w[prefix + ".bias"]

    @staticmethod
    def _gelu(x: np.ndarray) -> np.ndarray:
        return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))

    def _conv(self, x: np.ndarray, prefix: str, stride: int) -> np.ndarray:
        """gelu(conv1d(x) + b), kernel 3, padding 1: x [in, L] -> [L / stride, out]."""
        w = self.w[prefix + ".weight"]  # [out, in, 3]
        padded = np.pad(x, ((0, 0), (1, 1)))
        n_out = (x.shape[1] + stride - 1) // stride
        cols = np.stack([padded[:, k: k + stride * n_out: stride] for k in range(3)], axis=-1)  # [in, L', 3]
        y = np.einsum("ilk,oik->lo", cols, w) + self.w[prefix + ".bias"].reshape(-1)
        return self._gelu(y)

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """The encoder's output [n_audio_ctx, n_audio_state] from log-mel frames [n_mels, 3000]."""
        x = self._conv(mel.astype(np.float64), "encoder.conv1", 1).T
        x = self._conv(x, "encoder.conv2", 2)
        x = x + self.w["encoder.positional_embedding"][: x.shape[0]]
        n_head = self.h.n_audio_head
        hd = x.shape[1] // n_head
        for layer in range(self.h.n_audio_layer):
            p = f"encoder.blocks.{layer}."
            h = self._ln(x, p + "attn_ln")
            q = h @ self.w[p + "attn.query.weight"].T + self.w[p + "attn.query.bias"]
            k = h @ self.w[p + "attn.key.weight"].T
            v = h @ self.w[p + "attn.value.weight"].T + self.w[p + "attn.value.bias"]
            k = np.vstack([k, np.zeros((self.pad_keys, k.shape[1]))])
            v = np.vstack([v, np.zeros((self.pad_keys, v.shape[1]))])
            out = np.empty_like(q)
            for i in range(n_head):
                s = slice(i * hd, (i + 1) * hd)
                scores = q[:, s] @ k[:, s].T / np.sqrt(hd)
                scores = np.exp(scores - scores.max(axis=1, keepdims=True))
                out[:, s] = (scores / scores.sum(axis=1, keepdims=True)) @ v[:, s]
            x = x + out @ self.w[p + "attn.out.weight"].T + self.w[p + "attn.out.bias"]
            h = self._ln(x, p + "mlp_ln")
            h = self._gelu(h @ self.w[p + "mlp.0.weight"].T + self.w[p + "mlp.0.bias"])
            x = x + h @ self.w[p + "mlp.2.weight"].T + self.w[p + "mlp.2.bias"]
        return self._ln(x, "encoder.ln_post")

    def cross_kv(self, enc: np.ndarray, layer: int) -> np.ndarray:
        """Decoder layer `layer`'s cross-attention keys (scaled as whisper.cpp stores them)
        and values: [2, n_audio_ctx, n_text_state]."""
        p = f"decoder.blocks.{layer}.cross_attn."
        hd = self.h.n_text_state // self.h.n_text_head
        k = enc @ self.w[p + "key.weight"].T * hd ** -0.25
        v = enc @ self.w[p + "value.weight"].T + self.w[p + "value.bias"]
        return np.stack([k, v])
