"""Sampling noise that is a pure function of its counters: (seed, step, round, token, global row, vocab id).

Each uniform number is splitmix64 (Steele et al., 2014) of those counters, computed with int64 tensor
arithmetic. So a row samples the same tokens whichever process holds it and whatever else is in the batch
(1 process and N processes agree exactly), the work and memory are this process's rows x vocabulary (not the
global batch's), and the CPU and a GPU draw the same numbers. Gumbel-max over tempered logits with this
noise is exact categorical sampling: argmax(logits / T + G) with G ~ Gumbel(0, 1) i.i.d. per vocab entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: 2^64 / golden ratio
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 that holds it (tensor arithmetic wraps modulo 2^64)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's >> on int64 copies the sign bit)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix(z: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 tensors, bit for bit (wrapping multiplication)."""
    z = (z ^ _shift_right(z, 30)) * _signed(_MUL1)
    z = (z ^ _shift_right(z, 27)) * _signed(_MUL2)
    return z ^ _shift_right(z, 31)


def mix_int(z: int) -> int:
    """The same finaliser on a Python int (the reference the tensor version is tested against)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return z ^ (z >> 31)


def counter_key(*counters: int) -> int:
    """One 64-bit key from several counters, each folded in through the finaliser."""
    key = 0
    for counter in counters:
        key = mix_int(key + _GOLDEN + counter)
    return key


def uniforms(row_keys: Tensor, vocab: int) -> Tensor:
    """[rows, vocab] float32 uniforms in (0, 1): the top 24 bits of mix(row key + (v + 1) * golden), centred
    in their interval so that neither 0 nor 1 occurs (24 bits: what a float32 holds exactly)."""
    ids = torch.arange(1, vocab + 1, device=row_keys.device, dtype=torch.int64) * _signed(_GOLDEN)
    bits = _shift_right(mix(row_keys[:, None] + ids[None, :]), 40)
    return (bits.float() + 0.5) * (1.0 / (1 << 24))


@dataclass
class SamplingNoise:
    """Gumbel noise for this process's rows of one sampling round: global rows `first_row`, `first_row + 1`,
    ... at token t. Nothing here depends on the size of the global batch."""

    seed: int
    step: int
    first_row: int  # global index of this process's first row
    round: int = 0  # dynamic sampling's further rounds of the same step draw other noise

    def gumbel(self, t: int, rows: int, vocab: int, device) -> Tensor:
        """[rows, vocab] standard Gumbel noise for token t."""
        base = counter_key(self.seed, self.step, self.round, t)
        global_rows = torch.arange(self.first_row, self.first_row + rows, device=device, dtype=torch.int64)
        row_keys = mix(global_rows * _signed(_GOLDEN) + _signed(base))
        return -torch.log(-torch.log(uniforms(row_keys, vocab)))
