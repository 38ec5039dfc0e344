"""The `rlhf` command: run | stage | eval | data."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import distributed, faults
from pipeline.errors import UserError

if TYPE_CHECKING:  # the commands import what they need when they run, so `rlhf --help` starts fast
    from pipeline.evaluation.result import EvaluationResult

EPILOG = "Any number of key.path=value arguments override config values, e.g. stages.ppo.lr=1e-4."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (`run CONFIG --run-dir D a.b=1`): argparse stops its
    # positional list at the first option, so collect the rest here.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    launch = getattr(args, "nproc", None) or getattr(args, "nnodes", None)
    if launch and max(args.nproc or 1, args.nnodes or 1) > 1 and distributed.world_size() == 1:
        return relaunch(argv if argv is not None else sys.argv[1:], args, parser)
    distributed.setup()
    faults.arm_from_environment()  # the resume tests' crash hook, read here once and not in training loops
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--dist-timeout")


def relaunch(argv: list[str], args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Start this command's processes on this node under torchrun (they find each other through its env
    variables): `--nproc` of them; with `--nnodes M`, this node's share of M nodes that meet at
    `--master-addr` (node 0's address) and `--master-port`."""
    import subprocess

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in LAUNCH_OPTIONS)):
            rest.append(arg)
    nodes = args.nnodes or 1
    if nodes > 1 and not args.master_addr:
        parser.error("--nnodes > 1 needs --master-addr: the address of node 0, which every node can reach")
    if not 0 <= args.node_rank < nodes:
        parser.error(f"--node-rank must be in [0, {nodes - 1}] for --nnodes {nodes}, got {args.node_rank}")
    where = (
        [f"--nnodes={nodes}", f"--node_rank={args.node_rank}"]
        + [f"--master_addr={args.master_addr}", f"--master_port={args.master_port}"]
        if nodes > 1
        else ["--standalone"]
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc_per_node={args.nproc or 1}",
        "-m",
        "pipeline",
        *rest,
    ]
    env = {**os.environ, distributed.TIMEOUT_VARIABLE: str(args.dist_timeout)}
    return subprocess.call(command, env=env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="A staged RLHF pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline of a config", epilog=EPILOG)
    run.add_argument("config", help="pipeline YAML, e.g. configs/demo.yaml")
    run.add_argument("overrides", nargs="*", metavar="key.path=value")
    run.add_argument("--run-dir", help="where stages write (default: the config's run_dir, or runs/<name>)")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--only", metavar="STAGE", help="run just this stage (its inputs must be finished)")
    which.add_argument(
        "--from",
        dest="start",
        metavar="STAGE",
        help="re-run this stage and everything after it, reusing earlier finished stages",
    )
    run.add_argument("--no-eval", action="store_true", help="skip the evaluation after the stages")
    run.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="run on N processes (torchrun); for GPUs, one per GPU. Same as `torchrun "
        "--nproc_per_node N -m pipeline run ...`",
    )
    run.add_argument("--nnodes", type=int, metavar="M", help="nodes taking part (run the command on each)")
    run.add_argument("--node-rank", type=int, default=0, metavar="R", help="this node's number, 0 .. M-1")
    run.add_argument("--master-addr", metavar="HOST", help="node 0's address, reachable from every node")
    run.add_argument("--master-port", type=int, default=29500, metavar="PORT", help="node 0's free port")
    run.add_argument(
        "--dist-timeout",
        type=float,
        default=distributed.DEFAULT_TIMEOUT_MINUTES,
        metavar="MINUTES",
        help="how long a collective waits for the slowest process (default 60; NCCL's own is 10)",
    )
    run.set_defaults(handler=cmd_run)

    stage = commands.add_parser("stage", help="run one stage of a config on any checkpoint", epilog=EPILOG)
    stage.add_argument("name", help="the stage's name in the config, e.g. sft")
    stage.add_argument("--config", required=True)
    stage.add_argument("--init-from", help="checkpoint path or hub id for the stage's first input")
    stage.add_argument("--out", required=True, help="output folder (a from_pretrained-loadable model)")
    stage.add_argument("overrides", nargs="*", metavar="key.path=value")
    stage.set_defaults(handler=cmd_stage)

    ev = commands.add_parser(
        "eval",
        help="(re)compute the evaluation of a run, on any policies and reward sources",
        epilog=EPILOG + " Policies and learned reward models are stage names of the run, paths or hub ids.",
    )
    ev.add_argument("--run-dir", required=True)
    ev.add_argument("--baseline", metavar="SOURCE", help="the policy the others are judged against")
    ev.add_argument("--candidate", metavar="SOURCE", help="the policy after RL")
    ev.add_argument(
        "--policy", action="append", default=[], metavar="NAME=SOURCE", help="one more policy (repeatable)"
    )
    ev.add_argument(
        "--reward-model",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="one more learned reward model (repeatable)",
    )
    ev.add_argument(
        "--reward-function",
        action="append",
        default=[],
        metavar="NAME=MODULE:FUNCTION",
        help="one more programmatic reward (repeatable)",
    )
    ev.add_argument("overrides", nargs="*", metavar="key.path=value")
    ev.set_defaults(handler=cmd_eval)

    cmp = commands.add_parser(
        "compare", help="train several RL algorithms from the same SFT policy; one table", epilog=EPILOG
    )
    cmp.add_argument("config")
    cmp.add_argument("overrides", nargs="*", metavar="key.path=value")
    cmp.add_argument(
        "--algorithms",
        help="comma-separated registered RL algorithms and dpo (default: those the config's compare section "
        "names, else all)",
    )
    cmp.add_argument("--run-dir", help="default: runs/<name>-compare")
    cmp.set_defaults(handler=cmd_compare)

    data = commands.add_parser("data", help="write a demo task's data as jsonl files")
    data.add_argument("task", help="reviews or support")
    data.add_argument("--out", required=True)
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(handler=cmd_data)
    return parser


def run_dir_of(config, flag: str | None) -> Path:
    return Path(flag or config.pipeline.run_dir or f"runs/{config.pipeline.name}")


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.runner import Runner

    config = load_config(args.config, args.overrides)
    runner = Runner(config, run_dir_of(config, args.run_dir))
    evaluate = bool(config.pipeline.evaluation) and not args.no_eval and not args.only
    ran = runner.run(only=args.only, start=args.start, evaluate=evaluate)
    if not ran:
        print(
            f"Nothing to train: every stage in {runner.rundir.root} is finished and unchanged.",
            file=sys.stderr,
        )
    if evaluate:
        print_evaluation(runner.evaluation, runner.rundir.root)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.runner import run_standalone

    config = load_config(args.config, args.overrides)
    metrics = run_standalone(config, args.name, args.init_from, Path(args.out))
    print(json.dumps(metrics, indent=2))
    return 0


def eval_overrides(
    policies: list[str] = (),
    reward_functions: list[str] = (),
    reward_models: list[str] = (),
    baseline: str | None = None,
    candidate: str | None = None,
) -> list[str]:
    """The `rlhf eval` flags as `evaluation.*` config overrides (values quoted, so YAML reads text)."""
    overrides = [
        f"evaluation.{key}={json.dumps(value)}"
        for key, value in (("baseline", baseline), ("candidate", candidate))
        if value
    ]
    for key, items in (
        ("policies", policies),
        ("reward_models", reward_models),
        ("reward_functions", reward_functions),
    ):
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or not name or not value or "." in name:
                raise UserError(
                    f"'{item}' must look like NAME=SOURCE (a name without dots, e.g. "
                    "base=runs/demo/pretrain or period=reward_models.rules:ends_with_period)."
                )
            overrides.append(f"evaluation.{key}.{name}={json.dumps(value)}")
    return overrides


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.evaluation.html import HTML_FILE
    from pipeline.evaluation.report import format_warnings
    from pipeline.rundir import CONFIG
    from pipeline.runner import Runner

    root = Path(args.run_dir)
    if not (root / CONFIG).is_file():
        raise UserError(f"'{root}' is not a run directory: it has no {CONFIG}.")
    flags = eval_overrides(
        args.policy, args.reward_function, args.reward_model, args.baseline, args.candidate
    )
    config = load_config(root / CONFIG, [*flags, *args.overrides])
    runner = Runner(config, root)
    if config.pipeline.evaluation is None:
        raise UserError(f"The config of '{root}' has no 'evaluation' section.")
    if config.pipeline.threads:
        import torch

        torch.set_num_threads(config.pipeline.threads)
    with runner.rundir.lock():
        result = runner.evaluate(force=True)
    print_evaluation(result, root)
    warnings = format_warnings(result) if result else ""
    if warnings:
        print("\n" + warnings)
    print(f"HTML report: {root / 'eval' / HTML_FILE}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.compare import choices, compare, comparison_data, format_table
    from pipeline.config import load_config, raw_config

    raw = raw_config(args.config, args.overrides)
    if args.algorithms:
        algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    else:
        algorithms = list(raw.get("compare") or {}) or choices()
    config = load_config(args.config, data=comparison_data(raw, algorithms))  # typed and checked once
    run_dir = Path(args.run_dir or f"runs/{config.pipeline.name}-compare")
    print(format_table(compare(config, algorithms, run_dir)))
    print(f"\nTable: {run_dir / 'compare' / 'compare.md'}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from pipeline import demo

    try:
        paths = demo.write(args.task, args.out, args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    for split, path in paths.items():
        print(f"{split:>12}: {path}")
    return 0


def print_evaluation(result: EvaluationResult | None, root: Path) -> None:
    from pipeline.evaluation.report import format_table

    if result:
        print(format_table(result))
        print(f"\nReport: {root / 'eval' / 'report.md'}")
