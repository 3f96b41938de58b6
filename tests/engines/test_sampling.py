"""Per-row logits processing against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from degen.engines import sampling
from degen.records import SamplingParams


def rows(*params: SamplingParams) -> sampling.RowParams:
    return sampling.RowParams.from_params(params, "cpu")


def test_repetition_penalty_is_multiplicative_and_per_row() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0], [2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False], [True, True, False]])
    counts = torch.zeros(2, 3)
    p = rows(SamplingParams(repetition_penalty=2.0), SamplingParams())
    out = sampling.apply_penalties(logits, p, seen, counts)
    # positive logits are divided, negative ones multiplied; unseen untouched; row 2 off
    assert out.tolist() == [[1.0, -4.0, 1.0], [2.0, -2.0, 1.0]]
    assert logits.tolist()[0] == [2.0, -2.0, 1.0]  # input not modified


def test_presence_and_frequency_are_additive_over_counts() -> None:
    logits = torch.zeros(1, 3)
    counts = torch.tensor([[3.0, 0.0, 1.0]])
    p = rows(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))
    out = sampling.apply_penalties(logits, p, torch.zeros(1, 3, dtype=torch.bool), counts)
    assert out.tolist() == [[-0.5 - 0.75, 0.0, -0.5 - 0.25]]


def test_no_knob_is_on_by_default() -> None:
    """transformers' generate quietly samples with top_k=50; degen must not."""
    logits = torch.linspace(0, 1, 200).unsqueeze(0)
    out = sampling.warp(logits, rows(SamplingParams()))
    assert torch.isfinite(out).all()
    assert torch.equal(out, logits)


def test_top_k_top_p_min_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    k2 = sampling.warp(logits, rows(SamplingParams(top_k=2)))
    assert torch.isfinite(k2).tolist() == [[True, True, False, False]]
    # top_p 0.8: 0.5 + 0.3 reaches 0.8, so the set is the first two
    p8 = sampling.warp(logits, rows(SamplingParams(top_p=0.8)))
    assert torch.isfinite(p8).tolist() == [[True, True, False, False]]
    # top_p 0.81 needs the third token too
    p81 = sampling.warp(logits, rows(SamplingParams(top_p=0.81)))
    assert torch.isfinite(p81).tolist() == [[True, True, True, False]]
    # min_p 0.2: threshold 0.1 keeps 0.5, 0.3, 0.15
    m = sampling.warp(logits, rows(SamplingParams(min_p=0.2)))
    assert torch.isfinite(m).tolist() == [[True, True, True, False]]


def test_temperature_scales_then_min_p_uses_the_scaled_distribution() -> None:
    logits = torch.tensor([[2.0, 0.0]])
    out = sampling.warp(logits, rows(SamplingParams(temperature=2.0)))
    assert out.tolist() == [[1.0, 0.0]]
    # at T=0.25 the second token's prob relative to the first is e^-8 < 0.001
    out = sampling.warp(logits, rows(SamplingParams(temperature=0.25, min_p=0.001)))
    assert math.isinf(out[0, 1].item())


def test_greedy_rows_take_the_argmax_of_penalized_logits() -> None:
    logits = torch.tensor([[3.0, 2.9, 0.0], [3.0, 2.9, 0.0]])
    seen = torch.tensor([[True, False, False], [False, False, False]])
    p = rows(SamplingParams(temperature=0, repetition_penalty=1.1),
             SamplingParams(temperature=0))
    pen = sampling.apply_penalties(logits, p, seen, torch.zeros(2, 3))
    gens = [torch.Generator().manual_seed(0) for _ in range(2)]
    assert sampling.sample(pen, p, gens).tolist() == [1, 0]


def test_each_row_draws_from_its_own_generator() -> None:
    logits = torch.zeros(3, 1000)
    p = rows(*[SamplingParams()] * 3)

    def draw(seeds: list[int]) -> list[int]:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return sampling.sample(logits, p, gens).tolist()

    a = draw([1, 2, 3])
    b = draw([9, 2, 7])
    assert a[1] == b[1]  # same seed, same draw, whatever the neighbours
    assert draw([1, 2, 3]) == a


def test_ban_tokens() -> None:
    out = sampling.ban_tokens(torch.zeros(2, 4), [[1, 3], []])
    assert torch.isinf(out).tolist() == [[False, True, False, True], [False] * 4]


def test_entropy() -> None:
    assert sampling.entropy(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
