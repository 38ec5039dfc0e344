"""Where one RL step's time goes: the RL stage run in-process with timers wrapped around the calls it makes
(from outside: nothing in stages/ changes), on the harness's tiny checkpoints with bench/rl.yaml.

  .venv/bin/python bench/profile_rl.py [--stage ppo] [--threads 2] [--torch-profile] [key.path=value ...]

Prints a table of phases (total seconds, share of the RL loop, ms per step) and writes it, with the raw
numbers, under .peers-results/profile/. Phases, in the order of a step:
  generation           stages.rl.rollout.sample: the KV-cache sampling loop
  decode               tokenizer.batch_decode of the responses (for text rewards and logging)
  logprobs (no grad)   batched_response_logprobs: old log-probs of the policy and of the reference
  values (no grad)     values_of: the value model's V(s_t) (PPO only)
  reward model         RewardMix.score: the learned reward model's forward on prompt+response+EOS
  advantages           algorithms.compute: KL penalty, GAE or group baselines, whitening
  update: policy fwd   response_logits + token_logprobs inside the update (with grad)
  update: value fwd    the value model's forward inside the update (PPO only)
  update: backward     Tensor.backward (the loss's backward pass)
  update: clip+step    torch.nn.utils.clip_grad_norm_ and AdamW.step
  update: other        the loss functions, entropy, .item() of the logged statistics
  loop overhead        everything else inside the loop (prompt batching, padding, logging, the progress bar)
--torch-profile also prints the top operators by self CPU time (torch.profiler) for the whole loop.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, fmt, load_line, table  # noqa: E402

TOTALS: dict[str, float] = defaultdict(float)
COUNTS: dict[str, int] = defaultdict(int)
PEAK_MB: dict[str, float] = defaultdict(float)  # highest RSS seen while inside each phase
FIRST_MB: dict[str, float] = {}  # RSS when each phase was first entered: what was held before it ran
CURRENT: list[str] = ["setup (imports, loading models)"]  # the innermost phase running now


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if name not in FIRST_MB:
            FIRST_MB[name] = rss_mb()
        start = time.perf_counter()
        CURRENT.append(name)
        try:
            return fn(*args, **kwargs)
        finally:
            CURRENT.pop()
            TOTALS[name] += time.perf_counter() - start
            COUNTS[name] += 1

    return wrapper


def sample_memory(stop: threading.Event, interval_s: float = 0.01) -> None:
    """Attribute the process's RSS to the phase running at each sample."""
    import psutil

    process = psutil.Process()
    while not stop.wait(interval_s):
        mb = process.memory_info().rss / 2**20
        phase = CURRENT[-1]
        PEAK_MB[phase] = max(PEAK_MB[phase], mb)


def instrument() -> list[str]:
    """Wrap the calls the RL stage makes where it looks them up (module globals, classes). Backward, clipping
    and the optimizer step are wrapped in torch itself, so they are caught however the engine calls them.
    Returns the names it could not find (the engine is changing under this script)."""
    import importlib

    import torch
    import transformers

    targets = [
        ("stages.rl.stage", "sample", "generation"),
        ("stages.rl.stage", "batched_response_logprobs", "logprobs (no grad)"),
        ("stages.rl.stage", "values_of", "values (no grad)"),
        ("stages.rl.algorithms", "compute", "advantages"),
        ("stages.rl.stage", "update", "update (all)"),
        ("stages.rl.rewards", "RewardMix.score", "reward model"),
        ("stages.rl.update", "response_logits", "update: policy fwd"),
        ("stages.rl.update", "token_logprobs", "update: policy fwd"),
        ("stages.rl.update", "token_scores", "update: value fwd"),
    ]
    missing = []
    for module_name, attr, label in targets:
        owner = importlib.import_module(module_name)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        if not hasattr(owner, name):
            missing.append(f"{module_name}.{attr}")
            continue
        setattr(owner, name, timed(label, getattr(owner, name)))
    base = transformers.PreTrainedTokenizerBase
    base.batch_decode = timed("decode", base.batch_decode)
    torch.Tensor.backward = timed("update: backward", torch.Tensor.backward)
    torch.nn.utils.clip_grad_norm_ = timed("update: clip+step", torch.nn.utils.clip_grad_norm_)
    torch.optim.AdamW.step = timed("update: clip+step", torch.optim.AdamW.step)
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", default="ppo", help="a stage of bench/rl.yaml: ppo, ppo_lora, grpo, rloo")
    parser.add_argument("--config", default=str(ROOT / "bench" / "rl.yaml"))
    parser.add_argument("--results", default=str(ROOT / ".peers-results"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torch-profile", action="store_true")
    parser.add_argument("--policy", help="policy folder (default: the tiny SFT policy)")
    parser.add_argument("--reward", help="reward model folder (default: the tiny reward model)")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("overrides", nargs="*", help="key.path=value, e.g. stages.ppo.total_episodes=512")
    args = parser.parse_args()
    results = Path(args.results)
    tiny = results / "tiny" / "ours"
    if not (tiny / "policy" / "tokenizer.json").exists():
        sys.exit(f"no tiny checkpoints under {tiny}: run bench/compare_peers.py (or bench/run.sh) first")
    stop = threading.Event()
    threading.Thread(target=sample_memory, args=(stop,), daemon=True).start()
    start = time.perf_counter()
    import torch

    from pipeline.config import load_config
    from pipeline.runner import run_standalone

    imports_s = time.perf_counter() - start
    missing = instrument()
    if missing:
        print(f"not timed (not found in the engine): {', '.join(missing)}")
    overrides = [
        f"threads={args.threads}",
        f"stages.{args.stage}.reward_model={args.reward or tiny / 'reward'}",
        f"stages.{args.stage}.prompts={results / 'data' / 'prompts_bos.jsonl'}",
        *args.overrides,
    ]
    config = load_config(args.config, overrides)
    out = results / "profile" / args.stage
    stage_name = f"stage {args.stage} (outside the timed calls)"
    FIRST_MB[stage_name] = rss_mb()
    CURRENT.append(stage_name)
    profiler = None
    if args.torch_profile:
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        profiler.__enter__()
    started = time.perf_counter()
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    metrics = run_standalone(config, args.stage, str(args.policy or tiny / "policy"), out)
    command_s = time.perf_counter() - started
    CURRENT.pop()
    stop.set()
    if profiler is not None:
        profiler.__exit__(None, None, None)
    history = json.loads((out / "history.json").read_text())
    loop_s = history[-1]["elapsed_s"]
    steps = len(history)

    phases = [
        "generation",
        "decode",
        "logprobs (no grad)",
        "values (no grad)",
        "reward model",
        "advantages",
        "update: policy fwd",
        "update: value fwd",
        "update: backward",
        "update: clip+step",
    ]
    update_parts = sum(TOTALS[p] for p in phases if p.startswith("update:"))
    seconds = {p: TOTALS[p] for p in phases}
    seconds["update: other"] = TOTALS["update (all)"] - update_parts
    seconds["loop overhead"] = loop_s - sum(seconds.values())
    rows = [
        [name, f"{s:.2f}", f"{100 * s / loop_s:.1f}%", f"{1000 * s / steps:.1f}", COUNTS.get(name, "")]
        for name, s in seconds.items()
        if s > 0 or name in ("generation", "update: backward")
    ]
    rows.append(["**RL loop**", f"{loop_s:.2f}", "100%", f"{1000 * loop_s / steps:.1f}", steps])
    text = table(["phase", "total s", "share of loop", "ms / step", "calls"], rows)
    order = sorted(PEAK_MB, key=lambda name: FIRST_MB.get(name, 0.0 if name.startswith("setup") else 1e9))
    memory_rows = [[name, fmt(FIRST_MB.get(name), 0), f"{PEAK_MB[name]:.0f}"] for name in order]
    memory_text = table(
        ["phase (in order of first call)", "RSS MB at first call", "peak RSS MB in it"], memory_rows
    )
    episodes = history[-1]["episodes"]
    lengths = [h["response_length"] for h in history]
    caption = (
        f"`{args.stage}` on {'the tiny checkpoints' if not args.policy else args.policy}, {steps} steps, "
        f"{episodes} episodes "
        f"({episodes / loop_s:.1f} episodes/s in the loop), mean response length "
        f"{sum(lengths) / len(lengths):.1f} tokens, threads={args.threads}; {load_line()}. "
        f"Outside the loop: imports {imports_s:.1f} s, the stage call {command_s:.1f} s in all "
        f"(model loading, saving: {command_s - loop_s:.1f} s)."
    )
    print(caption)
    print(text)
    print()
    print(memory_text)
    out_dir = results / "profile"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "stage": args.stage,
        "threads": args.threads,
        "steps": steps,
        "episodes": episodes,
        "loop_s": loop_s,
        "command_s": command_s,
        "imports_s": imports_s,
        "seconds": seconds,
        "mean_response_length": sum(lengths) / len(lengths),
        "calls": dict(COUNTS),
        "peak_rss_mb_by_phase": dict(PEAK_MB),
        "metrics": metrics,
        "load": load_line(),
    }
    (out_dir / f"{args.stage}{args.tag}.json").write_text(json.dumps(report, indent=1))
    (out_dir / f"{args.stage}{args.tag}.md").write_text(caption + "\n\n" + text + "\n\n" + memory_text + "\n")
    if profiler is not None:
        ops = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
        (out_dir / f"{args.stage}{args.tag}_ops.txt").write_text(ops)
        print(ops)


if __name__ == "__main__":
    main()
