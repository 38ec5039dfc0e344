"""The RL sampler's counter-based noise: splitmix64 bit for bit, row-local, and exact categorical sampling."""

from __future__ import annotations

import torch

from stages.rl.noise import SamplingNoise, _signed, mix, mix_int, uniforms

# splitmix64 seeded with 0: its first output, as published with the algorithm (and in every port of it)
SPLITMIX64_FIRST_OUTPUT_FROM_SEED_0 = 0xE220A8397B1DCDAF


def test_the_finaliser_is_splitmix64_bit_for_bit():
    assert mix_int(0x9E3779B97F4A7C15) == SPLITMIX64_FIRST_OUTPUT_FROM_SEED_0
    values = [0, 1, 0x9E3779B97F4A7C15, 12345678901234567, (1 << 63), (1 << 64) - 1]
    tensor = mix(torch.tensor([_signed(v) for v in values]))
    assert tensor.tolist() == [_signed(mix_int(v)) for v in values]  # int64 wrap-around == modulo 2^64


def test_a_row_draws_the_same_noise_whatever_else_is_in_the_batch():
    alone = SamplingNoise(seed=3, step=7, first_row=5).gumbel(t=2, rows=2, vocab=50, device="cpu")
    within = SamplingNoise(seed=3, step=7, first_row=3).gumbel(t=2, rows=6, vocab=50, device="cpu")
    assert torch.equal(alone, within[2:4])


def test_the_noise_is_this_process_rows_by_vocab_whatever_the_global_batch():
    """The old sampler drew [global batch x vocab] on every process at every token (~300 MB at 512 x 150k);
    the noise now takes no global size at all: a row a trillion rows into the batch costs one row."""
    far = SamplingNoise(seed=1, step=1, first_row=10**12).gumbel(t=0, rows=3, vocab=1000, device="cpu")
    assert far.shape == (3, 1000)
    assert torch.isfinite(far).all()


def test_every_counter_changes_the_noise():
    base = dict(seed=1, step=2, first_row=0, round=0)

    def draw(t=0, **change):
        return SamplingNoise(**{**base, **change}).gumbel(t=t, rows=4, vocab=30, device="cpu")

    reference = draw()
    for other in (draw(t=1), draw(seed=2), draw(step=3), draw(round=1), draw(first_row=4)):
        assert not torch.equal(reference, other)


def test_uniforms_are_inside_the_open_interval_and_uniform():
    u = uniforms(torch.arange(200, dtype=torch.int64), 1000).flatten()
    assert 0 < u.min() and u.max() < 1
    counts = torch.histc(u, bins=10, min=0, max=1)
    expected = u.numel() / 10
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 27.88  # chi-square, 9 degrees of freedom, p = 0.001


def test_gumbel_max_with_this_noise_samples_the_softmax_distribution():
    """6,000 draws (rows) from fixed tempered logits: the token counts fit softmax(logits / T)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    temperature = 0.8
    draws = 6000
    noise = SamplingNoise(seed=11, step=0, first_row=0).gumbel(t=0, rows=draws, vocab=6, device="cpu")
    tokens = (logits / temperature + noise).argmax(-1)
    counts = torch.bincount(tokens, minlength=6).double()
    expected = torch.softmax(logits.double() / temperature, -1) * draws
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 20.52  # chi-square, 5 degrees of freedom, p = 0.001
