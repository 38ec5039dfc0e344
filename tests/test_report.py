"""Tests for the evaluation's report (pipeline/evaluation/: verdict, report, markdown, html, plots, writer):
verdict sentences, tables, training-curve PNGs and sample rendering, from metrics.json-shaped dicts."""

import re
import subprocess
from pathlib import Path

import pytest

from pipeline.evaluation import report as report_module
from pipeline.evaluation.html import render_html
from pipeline.evaluation.markdown import render_markdown
from pipeline.evaluation.plots import plot_training_curves
from pipeline.evaluation.report import build_report
from pipeline.evaluation.result import EvaluationResult
from pipeline.evaluation.writer import write_report as write_result_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def markdown(metrics: dict, samples: list[dict], n_examples: int = 6) -> str:
    return render_markdown(build_report(EvaluationResult.from_dict(metrics), samples, n_examples=n_examples))


def write_report(eval_dir: Path, metrics: dict, samples: list[dict], history: list[dict]) -> Path:
    return write_result_report(eval_dir, EvaluationResult.from_dict(metrics), samples, history)


def format_table(metrics: dict) -> str:
    return report_module.format_table(EvaluationResult.from_dict(metrics))


def format_warnings(metrics: dict) -> str:
    return report_module.format_warnings(EvaluationResult.from_dict(metrics))


def _estimate(mean: float, low: float, high: float, n: int = 256) -> dict:
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n}


def _metrics(gold_difference: dict | None, proxy_difference: dict) -> dict:
    """A metrics dict in the eval/metrics.json schema; gold left out when `gold_difference` is None."""

    def policy(gold: float, proxy: float, kl: float, length: float) -> dict:
        rewards = {"reward_model": _estimate(proxy, proxy - 0.2, proxy + 0.2)}
        if gold_difference is not None:
            rewards = {"gold": _estimate(gold, gold - 0.2, gold + 0.2), **rewards}
        return {
            "rewards": rewards,
            "kl_to_reference": _estimate(kl, kl, kl + 0.01 if kl else kl),
            "response_length": _estimate(length, length - 0.5, length + 0.5),
        }

    differences = {"reward_model": proxy_difference}
    if gold_difference is not None:
        differences = {"gold": gold_difference, **differences}
    return {
        "baseline": "sft",
        "candidate": "ppo",
        "policies": {"sft": policy(0.1, -0.3, 0.0, 9.5), "ppo": policy(1.3, 0.9, 0.42, 12.25)},
        "differences": differences,
        "settings": {
            "n_prompts": 128,
            "samples_per_prompt": 2,
            "temperature": 1.0,
            "max_new_tokens": 24,
            "seed": 0,
        },
        "training": {"stage": "ppo", "steps": 32, "episodes": 512},
    }


IMPROVED = _metrics(_estimate(1.2, 0.9, 1.5, 128), _estimate(1.2, 1.0, 1.4, 128))
UNCHANGED = _metrics(_estimate(0.05, -0.1, 0.2, 128), _estimate(0.04, -0.12, 0.2, 128))
HACKED = _metrics(_estimate(-0.02, -0.2, 0.16, 128), _estimate(0.8, 0.6, 1.0, 128))

SAMPLES = [
    {
        "policy": policy,
        "prompt": f"prompt {i}",
        "completion": f"{policy} says {i}.{k}",
        "rewards": {"gold": 0.25 * i + (1.0 if policy == "ppo" else 0.0), "reward_model": -0.5 + k},
        "sample_index": k,
    }
    for i in range(8)
    for k in (1, 0)
    for policy in ("sft", "ppo")
]
HISTORY = [{"step": step, "reward": 0.1 * step, "kl": 0.01 * step, "loss": 1.0} for step in range(5)]


def test_report_contains_table_settings_plot_and_improvement_verdict(tmp_path: Path) -> None:
    report_path = write_report(tmp_path / "eval", IMPROVED, SAMPLES, HISTORY)
    assert report_path == tmp_path / "eval" / "report.md"
    report = report_path.read_text()
    assert report.startswith("# Evaluation: PPO vs SFT")
    assert (
        "The PPO policy's mean gold score is 1.200 higher than the SFT policy's (95% CI 0.900 to 1.500): "
        "a real improvement." in report
    )
    assert "fooling" not in report
    assert "| reward: gold | 0.100 [-0.100, 0.300] | 1.300 [1.100, 1.500] | 1.200 [0.900, 1.500] |" in report
    assert (
        "| reward: reward_model | -0.300 [-0.500, -0.100] | 0.900 [0.700, 1.100] | 1.200 [1.000, 1.400] |"
        in report
    )
    assert "| KL to reference | 0.000 [0.000, 0.000] | 0.420 [0.420, 0.430] | — |" in report
    assert "| response length | 9.500 [9.000, 10.000] | 12.250 [11.750, 12.750] | — |" in report
    assert "- samples_per_prompt: 2" in report and "- episodes: 512" in report
    assert "![training curves](training_curves.png)" in report
    png = tmp_path / "eval" / "training_curves.png"
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_verdict_when_interval_includes_zero() -> None:
    report = markdown(UNCHANGED, SAMPLES)
    assert (
        "The PPO policy's mean gold score is 0.050 higher than the SFT policy's (95% CI -0.100 to 0.200): "
        "not distinguishable from zero" in report
    )
    assert "real improvement" not in report and "fooling" not in report


def test_verdict_warns_when_proxy_rises_but_gold_does_not() -> None:
    report = markdown(HACKED, SAMPLES)
    assert "mean gold score is 0.020 lower than the SFT policy's (95% CI -0.200 to 0.160)" in report
    warning = "Yet the reward_model score rose by 0.800 (95% CI 0.600 to 1.000) while the gold score did not"
    assert warning in report
    assert "the policy may be fooling the reward model" in report


def test_verdict_without_gold_scorer_judges_the_proxy_and_says_so() -> None:
    metrics = _metrics(None, _estimate(0.5, 0.25, 0.75, 128))
    report = markdown(metrics, SAMPLES)
    assert "mean reward_model score is 0.500 higher than the SFT policy's (95% CI 0.250 to 0.750)" in report
    assert "no gold scorer" in report
    assert "reward: gold" not in report


def test_verdict_for_a_real_decline() -> None:
    metrics = _metrics(_estimate(-0.4, -0.6, -0.2, 128), _estimate(-0.1, -0.3, 0.1, 128))
    assert "0.400 lower than the SFT policy's (95% CI -0.600 to -0.200): a real decline." in markdown(
        metrics, []
    )


def test_empty_history_writes_no_png_and_no_image_link(tmp_path: Path) -> None:
    # A plot from an earlier run must not survive next to a report that has no history.
    write_report(tmp_path, IMPROVED, SAMPLES, HISTORY)
    report = write_report(tmp_path, IMPROVED, SAMPLES, []).read_text()
    assert not (tmp_path / "training_curves.png").exists()
    assert "![" not in report
    assert plot_training_curves([], tmp_path / "unused.png") is None
    assert not (tmp_path / "unused.png").exists()


def test_plot_tolerates_rows_without_kl(tmp_path: Path) -> None:
    history = [{"step": 0, "reward": 0.0}, {"step": 1, "reward": 0.5}]
    path = plot_training_curves(history, tmp_path / "curves.png")
    assert path is not None and path.read_bytes().startswith(PNG_MAGIC)


def test_samples_side_by_side_for_first_prompts_with_rewards() -> None:
    report = markdown(IMPROVED, SAMPLES, n_examples=2)
    assert "**Prompt 1.** `prompt 0`" in report and "**Prompt 2.** `prompt 1`" in report
    assert "prompt 2" not in report
    # The lowest sample_index per policy is shown, though sample 1 came first in the list.
    assert "| completion | `sft says 1.0` | `ppo says 1.0` |" in report
    assert "| gold | 0.250 | 1.250 |" in report
    assert "| reward_model | -0.500 | -0.500 |" in report


def test_pipe_in_completion_is_escaped_and_backticks_survive() -> None:
    samples = [
        {
            "policy": "sft",
            "prompt": "a|b",
            "completion": "x | y",
            "rewards": {"gold": 0.0},
            "sample_index": 0,
        },
        {
            "policy": "ppo",
            "prompt": "a|b",
            "completion": "use `ls`\nthen",
            "rewards": {"gold": 1.0},
            "sample_index": 0,
        },
    ]
    report = markdown(IMPROVED, samples)
    assert "| completion | `x \\| y` | ``use `ls`\\nthen`` |" in report
    assert "x | y" not in report


def test_format_table_is_aligned_plain_text() -> None:
    table = format_table(IMPROVED)
    lines = table.splitlines()
    assert lines[0] == "mean [95% CI]"
    assert lines[1].split() == ["metric", "SFT", "(before)", "PPO", "(after)", "difference"]
    assert "|" not in table
    rows = lines[3:]
    assert [row.split("  ")[0].strip() for row in rows] == [
        "reward: gold",
        "reward: reward_model",
        "KL to reference",
        "response length",
    ]
    assert rows[0].endswith("1.200 [0.900, 1.500]")
    # Right-aligned numeric columns: every "after" value ends at the same column.
    after_values = [
        "1.300 [1.100, 1.500]",
        "0.900 [0.700, 1.100]",
        "0.420 [0.420, 0.430]",
        "12.250 [11.750, 12.750]",
    ]
    after_ends = {row.index(value) + len(value) for row, value in zip(rows, after_values)}
    assert len(after_ends) == 1


def test_negative_zero_is_printed_as_zero() -> None:
    metrics = _metrics(_estimate(-0.0001, -0.2, 0.2, 128), _estimate(0.0, -0.1, 0.1, 128))
    report = markdown(metrics, [])
    assert "-0.000" not in report
    assert "0.000 lower" in report


def _full_metrics() -> dict:
    """IMPROVED plus what the evaluation adds: a third policy, win rates, diversity, perplexity, warnings,
    snapshots and the best checkpoint."""
    metrics = _metrics(_estimate(1.2, 0.9, 1.5, 128), _estimate(1.2, 1.0, 1.4, 128))
    extras = {"distinct_1": 0.25, "distinct_2": 0.5, "unique_completions": 0.75}
    for name, policy in metrics["policies"].items():
        policy.update(extras, perplexity_under_reference=_estimate(12.0, 11.0, 13.5))
        if name != "sft":
            policy["win_rate"] = {"gold": _estimate(0.8125, 0.75, 0.875, 128)}
    metrics["policies"]["base"] = {
        **metrics["policies"]["sft"],
        "win_rate": {"gold": _estimate(0.25, 0.125, 0.375, 128)},
        "distinct_2": 0.875,
    }
    metrics["snapshots"] = [
        {"step": 0, "episodes": 0, "kl": 0.0, "rewards": {"reward_model": 0.0, "gold": 0.1}, "path": None},
        {"step": 2, "episodes": 128, "kl": 1.5, "rewards": {"reward_model": 0.7, "gold": 0.9}, "path": "s/2"},
        {"step": 4, "episodes": 256, "kl": 4.0, "rewards": {"reward_model": 1.1, "gold": 0.4}, "path": "s/4"},
    ]
    metrics["best_checkpoint"] = {**metrics["snapshots"][1], "stage": "ppo", "judged_by": "gold"}
    metrics["warnings"] = [
        {"kind": "overoptimization", "step": 2, "message": "Over-optimisation <b>: gold fell."},
        {"kind": "empty_responses", "step": 3, "message": "Responses collapsed to an immediate end."},
    ]
    return metrics


HEALTHY_HISTORY = [
    {
        "step": s,
        "reward": 0.2 * s,
        "kl": 0.5 * s,
        "entropy": 2.0 - 0.1 * s,
        "unique_fraction": 0.9,
        "response_length": 10.0,
        "value_loss": 0.4,
        "reward/reward_model": 0.2 * s,
    }
    for s in range(1, 6)
]


def test_full_report_shows_every_policy_metric_warnings_and_checkpoints(tmp_path: Path) -> None:
    metrics = _full_metrics()
    report = write_report(tmp_path, metrics, SAMPLES, HEALTHY_HISTORY).read_text()
    assert "| metric | SFT (before) | PPO (after) | BASE | difference |" in report
    assert "| win rate vs SFT: gold | — | 0.812 [0.750, 0.875] | 0.250 [0.125, 0.375] | — |" in report
    assert "| distinct-2 | 0.500 | 0.500 | 0.875 | — |" in report
    assert "| perplexity under reference | 12.000 [11.000, 13.500] |" in report
    assert "- **overoptimization** from step 2: Over-optimisation" in report
    assert "| 2 | 128 | 1.500 | 0.700 | 0.900 | s/2 ← best |" in report
    assert "Best checkpoint by gold: step 2 (gold 0.900, KL 1.500); its weights are in `ppo/s/2`" in report
    for image in ("training_curves.png", "training_health.png", "reward_kl_frontier.png"):
        assert (tmp_path / image).read_bytes().startswith(PNG_MAGIC)
    html = (tmp_path / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "Over-optimisation &lt;b&gt;: gold fell." in html  # messages are escaped, not markup
    assert "0.812 [0.750, 0.875]" in html and 'class="best"' in html
    assert format_warnings(metrics).splitlines()[1].startswith("warning (empty_responses, from step 3)")
    # Terminal table: the third policy gets a column before the difference.
    assert format_table(metrics).splitlines()[1].split() == [
        "metric",
        "SFT",
        "(before)",
        "PPO",
        "(after)",
        "BASE",
        "difference",
    ]


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)")
def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    write_report(tmp_path / "eval", _full_metrics(), SAMPLES, HEALTHY_HISTORY)
    shot = tmp_path / "report.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        f"--screenshot={shot}",
        "--window-size=1200,2400",
        (tmp_path / "eval" / "report.html").as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG_MAGIC)
    # Page problems reach the log as console messages (a failed fetch, a script error); there are none.
    assert "CONSOLE" not in result.stderr and "Failed to load resource" not in result.stderr


def test_metrics_json_round_trips_through_the_typed_result() -> None:
    metrics = _full_metrics()
    for snapshot in metrics["snapshots"]:
        snapshot["response_length"] = 9.0
    metrics["best_checkpoint"] = {**metrics["snapshots"][1], "stage": "ppo", "judged_by": "gold"}
    for policy in metrics["policies"].values():
        policy["source"] = "x"
    result = EvaluationResult.from_dict(metrics)
    assert result.best_checkpoint.snapshot.step == 2 and result.policies["base"].distinct == {
        1: 0.25,
        2: 0.875,
    }
    again = EvaluationResult.from_dict(result.to_dict())
    assert again == result and again.to_dict() == result.to_dict()


def test_markdown_and_html_render_one_report() -> None:
    """Every sentence, table cell and sample of the Report appears in both files, so they cannot disagree."""
    report = build_report(EvaluationResult.from_dict(_full_metrics()), SAMPLES, n_examples=3)
    md, html_page = render_markdown(report), render_html(report)
    escaped = html_page.replace("&#x27;", "'").replace("&quot;", '"')
    texts = [report.title, report.verdict, report.warnings_intro, report.results_intro]
    texts += [w.message for w in report.warnings]
    texts += [cell for table in (report.results, report.checkpoints) for row in table.rows for cell in row]
    texts += [f"{key}" for key in report.settings] + list(report.settings.values())
    texts += [cell.completion for example in report.examples for cell in example.cells]
    assert report.best_checkpoint and report.best_checkpoint.replace("`", "") in escaped
    for text in texts:
        assert text in md.replace("\\|", "|"), text
        assert text.replace("<", "&lt;").replace(">", "&gt;") in escaped, text
