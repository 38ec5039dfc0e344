"""How the cost of one RL step grows with response length, batch size and model size, so a user can predict a
larger run. Each point is our `rl` stage (PPO, bench/rl.yaml) run by bench/profile_rl.py in its own process,
on a random-initialised Llama (bench/make_sized.py): a random policy almost never samples EOS, so every
response runs to exactly max_new_tokens and the points are comparable.

  .venv/bin/python bench/scaling.py [--threads 1] [--steps 5] [--quick] [--plot docs/benchmarks_scaling.png]

Prints a table (ms per step, split into generation / scoring / update), fits a cost model, and writes
.peers-results/scaling.json and the plot. Needs the harness's tiny tokenizer: run bench/compare_peers.py
(or bench/run.sh) once first, or pass --tokenizer.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OURS, ROOT, load_line, machine, run, table  # noqa: E402

BASE = {"hidden": 64, "layers": 2, "batch": 16, "length": 16}
AXES = {
    "length": [8, 16, 32, 64],
    "batch": [4, 8, 16, 32, 64],
    "model": [(64, 2), (128, 4), (256, 4), (256, 8), (512, 8)],
}
QUICK_AXES = {"length": [8, 32], "batch": [8, 32], "model": [(64, 2), (256, 4)]}
SCORING = ("logprobs (no grad)", "values (no grad)", "reward model", "decode", "advantages")


def point(args, results: Path, hidden: int, layers: int, batch: int, length: int) -> dict:
    sized = results / "sized" / f"h{hidden}-l{layers}"
    made = run(
        [
            str(OURS / "python"),
            str(ROOT / "bench" / "make_sized.py"),
            "--tokenizer",
            args.tokenizer,
            "--out",
            str(sized),
            "--hidden",
            str(hidden),
            "--layers",
            str(layers),
        ]
    )
    params = made.last_json()["params"]
    tag = f"_scaling_h{hidden}_l{layers}_b{batch}_r{length}"
    done = run(
        [
            str(OURS / "python"),
            str(ROOT / "bench" / "profile_rl.py"),
            "--stage",
            "ppo",
            "--threads",
            str(args.threads),
            "--policy",
            str(sized / "policy"),
            "--reward",
            str(sized / "reward"),
            "--results",
            str(results),
            "--tag",
            tag,
            f"stages.ppo.batch_size={batch}",
            f"stages.ppo.minibatch_size={batch}",
            f"stages.ppo.total_episodes={batch * args.steps}",
            f"stages.ppo.max_new_tokens={length}",
            "stages.ppo.missing_eos_penalty=null",
        ],
        log=results / "logs" / f"scaling{tag}.log",
    )
    report = json.loads((results / "profile" / f"ppo{tag}.json").read_text())
    steps, seconds = report["steps"], report["seconds"]
    ms = lambda names: 1000 * sum(seconds.get(n, 0.0) for n in names) / steps  # noqa: E731
    row = {
        "hidden": hidden,
        "layers": layers,
        "params": params,
        "batch": batch,
        "length": length,
        "ms_per_step": 1000 * report["loop_s"] / steps,
        "generation_ms": ms(["generation"]),
        "scoring_ms": ms(SCORING),
        "update_ms": ms([k for k in seconds if k.startswith("update")]),
        "episodes_per_s": report["episodes"] / report["loop_s"],
        "mean_response_length": report["mean_response_length"],
        "peak_rss_mb": done.peak_rss_mb,
        "load": [done.load_before, done.load_after],
    }
    print(
        "  " + json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}), flush=True
    )
    return row


def fit_power(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares of log y = log a + b log x: returns (a, b)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    b = sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / sum((x - mx) ** 2 for x in lx)
    return math.exp(my - b * mx), b


def fit_linear(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares of y = a + b x: returns (a, b)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def plot(rows_by_axis: dict, path: Path, caption: str) -> None:
    """One panel per axis: a stacked bar per point (generation, scoring, update), the step's total on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    titles = {
        "length": "response length (tokens), batch 16, 0.16M params",
        "batch": "batch size (episodes per step), 16 tokens, 0.16M params",
        "model": "policy size, batch 16, 16 tokens",
    }
    for ax, (axis, rows) in zip(axes, rows_by_axis.items()):
        names = [f"{r['params'] / 1e6:.2g}M" if axis == "model" else str(r[axis]) for r in rows]
        xs = list(range(len(rows)))
        bottom = [0.0] * len(rows)
        for key, colour in (
            ("generation_ms", "#4c72b0"),
            ("scoring_ms", "#dd8452"),
            ("update_ms", "#55a868"),
        ):
            ys = [r[key] for r in rows]
            ax.bar(xs, ys, bottom=bottom, color=colour, label=key.removesuffix("_ms"))
            bottom = [b + y for b, y in zip(bottom, ys)]
        for x, r in zip(xs, rows):
            ax.annotate(
                f"{r['ms_per_step']:.0f}", (x, r["ms_per_step"]), ha="center", va="bottom", fontsize=8
            )
        ax.set_xticks(xs, names)
        ax.set_title(titles[axis], fontsize=9)
        ax.set_ylabel("ms per PPO step")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--steps", type=int, default=5, help="PPO steps per point (ms/step = loop time / steps)"
    )
    parser.add_argument("--quick", action="store_true", help="two points per axis")
    parser.add_argument("--results", default=str(ROOT / ".peers-results"))
    parser.add_argument("--tokenizer", default=None, help="default: the harness's tiny tokenizer")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "benchmarks_scaling.png"))
    args = parser.parse_args()
    results = Path(args.results).resolve()
    args.tokenizer = args.tokenizer or str(results / "tiny" / "tokenizer")
    if not Path(args.tokenizer).exists():
        sys.exit(f"no tokenizer at {args.tokenizer}: run bench/compare_peers.py first, or pass --tokenizer")
    axes = QUICK_AXES if args.quick else AXES
    info = machine()
    print(f"machine: {json.dumps(info)}; {load_line()}", flush=True)
    rows_by_axis: dict[str, list[dict]] = {}
    for axis, values in axes.items():
        print(f"[{axis}] ({load_line()})", flush=True)
        rows = []
        for value in values:
            settings = dict(BASE)
            if axis == "model":
                settings["hidden"], settings["layers"] = value
            else:
                settings[axis] = value
            rows.append(point(args, results, **settings))
        rows_by_axis[axis] = rows

    # cost model: per axis, time = a + b * x for length and batch (tokens), power law in parameters
    fits = {}
    for axis in ("length", "batch"):
        rows = rows_by_axis[axis]
        fits[axis] = fit_linear([r[axis] for r in rows], [r["ms_per_step"] for r in rows])
    rows = rows_by_axis["model"]
    fits["model"] = fit_power([r["params"] for r in rows], [r["ms_per_step"] for r in rows])
    big = [r for r in rows if r["params"] >= 1e6]
    fits["model_over_1M"] = (
        fit_power([r["params"] for r in big], [r["ms_per_step"] for r in big]) if len(big) >= 2 else None
    )

    text = []
    caption = (
        f"PPO step on {info['cpu']} ({info['cores']} cores), threads={args.threads}, "
        f"torch {info.get('torch')}, "
        f"{args.steps} steps per point; {load_line()} at the end"
    )
    for axis, rows in rows_by_axis.items():
        body = [
            [
                f"{r['params'] / 1e6:.2f}M (h{r['hidden']}, {r['layers']}L)",
                r["batch"],
                f"{r['length']} ({r['mean_response_length']:.1f})",
                f"{r['ms_per_step']:.0f}",
                f"{r['generation_ms']:.0f}",
                f"{r['scoring_ms']:.0f}",
                f"{r['update_ms']:.0f}",
                f"{r['episodes_per_s']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['load'][0]:.1f}–{r['load'][1]:.1f}",
            ]
            for r in rows
        ]
        text.append(
            f"Varying {axis}\n\n"
            + table(
                [
                    "policy",
                    "batch",
                    "response tokens (mean sampled)",
                    "ms / step",
                    "generation",
                    "scoring",
                    "update",
                    "episodes/s",
                    "peak RSS MB",
                    "load avg",
                ],
                body,
            )
        )
    (a_len, b_len), (a_b, b_b), (_, p_m) = fits["length"], fits["batch"], fits["model"]
    summary = (
        f"Fits: ms/step ≈ {a_len:.0f} + {b_len:.1f}·R (batch 16, 0.16M params); "
        f"≈ {a_b:.0f} + {b_b:.1f}·B (16 tokens); ∝ params^{p_m:.2f} over all sizes"
    )
    if fits["model_over_1M"]:
        summary += f", ^{fits['model_over_1M'][1]:.2f} from 1M parameters up"
    text.append(summary + ".")
    print("\n" + caption + "\n\n" + "\n\n".join(text))
    (results / "scaling.json").write_text(
        json.dumps({"machine": info, "threads": args.threads, "rows": rows_by_axis, "fits": fits}, indent=1)
    )
    (results / "scaling.md").write_text(caption + "\n\n" + "\n\n".join(text) + "\n")
    plot(rows_by_axis, Path(args.plot), caption)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
