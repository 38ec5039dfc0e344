"""The evaluation of a tiny run with a third policy and an extra reward function: every number in
metrics.json is recomputed here from samples.jsonl with plain loops, and found again in both reports."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from pipeline.cli import eval_overrides
from pipeline.config import load_config
from pipeline.diversity import distinct_n, unique_fraction
from pipeline.evaluation.evaluate import evaluate
from pipeline.runner import Runner

PROMPTS, SAMPLES_PER_PROMPT = 8, 2
SNAPSHOTS = [  # constructed: the proxy keeps rising while gold peaks at step 4
    {
        "step": 2,
        "episodes": 64,
        "rewards": {"reward_model": 0.2, "gold": 0.1},
        "kl": 0.5,
        "response_length": 9.0,
        "path": None,
    },
    {
        "step": 4,
        "episodes": 128,
        "rewards": {"reward_model": 0.6, "gold": 0.8},
        "kl": 1.5,
        "response_length": 8.0,
        "path": "snapshots/step-000004",
    },
    {
        "step": 6,
        "episodes": 192,
        "rewards": {"reward_model": 0.9, "gold": 0.3},
        "kl": 3.0,
        "response_length": 7.0,
        "path": "snapshots/step-000006",
    },
]


@pytest.fixture(scope="module")
def evaluated(tiny_run: Path, tmp_path_factory) -> tuple[dict, list[dict], Path]:
    # A copy of the run whose best snapshot (step 4) holds the SFT weights, so that evaluating it as a
    # fourth policy must reproduce the SFT policy's samples exactly (same weights, same seed).
    run = tmp_path_factory.mktemp("evaluation") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval", ".*"))
    shutil.copytree(run / "sft", run / "ppo" / "snapshots" / "step-000004")
    # Everything the evaluation knows of the candidate's training it reads from the candidate's folder.
    (run / "ppo" / "snapshots.json").write_text(json.dumps(SNAPSHOTS))
    config = load_config(
        run / "config.yaml",
        [
            "evaluation.policies.pretrain=pretrain",
            "evaluation.reward_functions.period=reward_models.rules:ends_with_period",
            f"evaluation.max_prompts={PROMPTS}",
            f"evaluation.samples_per_prompt={SAMPLES_PER_PROMPT}",
            "evaluation.bootstrap_resamples=300",
        ],
    )
    out = run / "eval"
    result = evaluate(config.pipeline.evaluation, Runner(config, run).resolve, out, seed=0)
    metrics = result.to_dict()
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert result.training["stage"] == "ppo" and result.training["steps"] > 0  # from ppo/rlhf_stage.json
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return metrics, samples, out


def by_policy(samples: list[dict], policy: str) -> list[dict]:
    return [s for s in samples if s["policy"] == policy]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def my_win_rate(mine: list[dict], theirs: list[dict], source: str) -> float:
    """Per prompt: every (my sample, baseline sample) pair, 1 for a win, 1/2 for a tie; mean over prompts."""
    per_prompt = []
    for prompt in dict.fromkeys(s["prompt"] for s in mine):
        a = [s["rewards"][source] for s in mine if s["prompt"] == prompt]
        b = [s["rewards"][source] for s in theirs if s["prompt"] == prompt]
        points = [1.0 if x - y > 1e-6 else 0.5 if abs(x - y) <= 1e-6 else 0.0 for x in a for y in b]
        per_prompt.append(sum(points) / len(points))
    return mean(per_prompt)


def my_distinct(texts: list[str], n: int) -> float:
    seen, total = set(), 0
    for text in texts:
        words = text.split()
        for i in range(len(words) - n + 1):
            seen.add(tuple(words[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0


def test_every_number_matches_an_independent_recomputation(evaluated):
    metrics, samples, _ = evaluated
    assert list(metrics["policies"]) == ["sft", "ppo", "pretrain", "ppo@4"]
    assert len(samples) == 4 * PROMPTS * SAMPLES_PER_PROMPT
    baseline = by_policy(samples, "sft")
    for policy, stats in metrics["policies"].items():
        rows = by_policy(samples, policy)
        assert set(stats["rewards"]) == {"gold", "reward_model", "period"}
        for source, estimate in stats["rewards"].items():
            assert estimate["mean"] == pytest.approx(mean([s["rewards"][source] for s in rows]), abs=1e-9)
            assert estimate["ci_low"] <= estimate["mean"] <= estimate["ci_high"]
            assert estimate["n"] == PROMPTS and estimate["samples"] == len(rows)
        assert stats["response_length"]["mean"] == pytest.approx(mean([s["length"] for s in rows]))
        assert stats["kl_to_reference"]["mean"] == pytest.approx(mean([s["kl"] for s in rows]))
        nll_per_token = sum(s["reference_nll"] for s in rows) / sum(s["length"] for s in rows)
        perplexity = stats["perplexity_under_reference"]
        assert perplexity["mean"] == pytest.approx(math.exp(nll_per_token))
        assert perplexity["ci_low"] <= perplexity["mean"] <= perplexity["ci_high"]
        for n in (1, 2):
            assert stats[f"distinct_{n}"] == pytest.approx(my_distinct([s["completion"] for s in rows], n))
        if policy == "sft":
            assert "win_rate" not in stats  # the baseline is what the others are judged against
            assert stats["kl_to_reference"]["mean"] == 0.0  # its own reference
            continue
        for source, estimate in stats["win_rate"].items():
            assert estimate["mean"] == pytest.approx(my_win_rate(rows, baseline, source))
            assert estimate["ci_low"] <= estimate["mean"] <= estimate["ci_high"] and estimate["n"] == PROMPTS
    ppo = by_policy(samples, "ppo")
    for source, difference in metrics["differences"].items():
        expected = mean([a["rewards"][source] - b["rewards"][source] for a, b in zip(ppo, baseline)])
        assert difference["mean"] == pytest.approx(expected, abs=1e-9)
    assert metrics["settings"]["reward_sources"]["period"] == "reward_models.rules:ends_with_period"


def test_warnings_snapshots_and_best_checkpoint(evaluated):
    metrics, _, _ = evaluated
    assert metrics["snapshots"] == SNAPSHOTS
    over = [w for w in metrics["warnings"] if w["kind"] == "overoptimization"]
    assert [w["step"] for w in over] == [4]
    assert set(metrics["warnings"][0]) == {"kind", "step", "message"}
    best = metrics["best_checkpoint"]
    assert (best["step"], best["stage"], best["judged_by"]) == (4, "ppo", "gold")
    assert best["path"] == "snapshots/step-000004" and best["evaluated_as"] == "ppo@4"


def test_the_best_checkpoint_is_evaluated_as_a_policy(evaluated):
    metrics, samples, _ = evaluated
    assert metrics["policies"]["ppo@4"]["source"] == "ppo/snapshots/step-000004"
    # Its weights are SFT's: same seed, same samples, same scores, and a win rate of exactly one half.
    sft, best = by_policy(samples, "sft"), by_policy(samples, "ppo@4")
    assert [(s["completion"], s["rewards"]) for s in best] == [(s["completion"], s["rewards"]) for s in sft]
    assert {e["mean"] for e in metrics["policies"]["ppo@4"]["win_rate"].values()} == {0.5}


def test_reports_show_the_numbers(evaluated):
    metrics, _, out = evaluated
    report, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    pretrain = metrics["policies"]["pretrain"]
    numbers = [
        f"{pretrain['rewards']['gold']['mean']:.3f} [{pretrain['rewards']['gold']['ci_low']:.3f}, "
        f"{pretrain['rewards']['gold']['ci_high']:.3f}]",
        f"{metrics['policies']['ppo']['win_rate']['gold']['mean']:.3f}",
        f"{pretrain['win_rate']['period']['mean']:.3f}",
        f"{pretrain['distinct_2']:.3f}",
        f"{metrics['policies']['ppo']['perplexity_under_reference']['mean']:.3f}",
    ]
    for number in numbers:
        assert number in report and number in html, number
    assert "| win rate vs SFT: gold | — |" in report
    assert "PRETRAIN" in report and "PRETRAIN" in html
    assert "Over-optimisation" in report and "Over-optimisation" in html
    assert "Best checkpoint by gold: step 4" in report and "ppo/snapshots/step-000004" in report
    assert "It is evaluated above as PPO@4" in report and "PPO@4" in html
    for image in ("training_curves.png", "training_health.png", "reward_kl_frontier.png"):
        assert (out / image).read_bytes().startswith(b"\x89PNG"), image
        assert f"]({image})" in report
    # Self-contained: plots inline, nothing fetched from elsewhere.
    assert html.count('src="data:image/png;base64,') == 3
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "<script" not in html


def test_distinct_n_and_unique_fraction_by_hand():
    texts = ["a b a b", "a b c", ""]
    # unigrams: a b a b a b c -> 3 unique / 7; bigrams: ab ba ab | ab bc -> {ab, ba, bc} 3 / 5
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["one"], 2) == 0.0  # no bigram at all
    assert unique_fraction(["x", "x", "y", "x"]) == 0.5


def test_eval_flags_become_overrides():
    overrides = eval_overrides(
        policies=["base=runs/x/pretrain", "other=org/model"],
        reward_functions=["short=reward_models.rules:length_penalty"],
        reward_models=["heldout=runs/y/reward"],
        baseline="sft",
        candidate=None,
    )
    assert overrides == [
        'evaluation.baseline="sft"',
        'evaluation.policies.base="runs/x/pretrain"',
        'evaluation.policies.other="org/model"',
        'evaluation.reward_models.heldout="runs/y/reward"',
        'evaluation.reward_functions.short="reward_models.rules:length_penalty"',
    ]
    config = load_config(None, overrides, data={"stages": {"sft": {"kind": "sft"}}})
    assert config.pipeline.evaluation.policies == {"base": "runs/x/pretrain", "other": "org/model"}
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="NAME=SOURCE"):
        eval_overrides(policies=["runs/x/pretrain"])
