"""Orders the stage graph, skips finished stages, runs the rest and records them in the manifest.

The runner knows stages only by name, kind and input fields; it never knows how they train.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import platform
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import distributed
from pipeline.atomic import atomic_write_json, atomic_write_text
from pipeline.config import ResolvedConfig, stage_dependencies, stage_inputs, upstream
from pipeline.config_schema import suggest, to_dict
from pipeline.errors import ConfigError, UserError
from pipeline.evaluation.evaluate import METRICS_FILE, evaluate
from pipeline.evaluation.evaluate import check as check_evaluation
from pipeline.evaluation.result import EvaluationResult
from pipeline.log import log
from pipeline.memory import PeakMemory
from pipeline.rundir import CONFIG, EVAL_DIR, RunDir
from stages import stage_module
from stages.base import HISTORY_FILE, STAGE_RECORD_FILE, StageContext
from stages.tracking import check_installed

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name


@dataclass
class StageNode:
    name: str
    kind: str
    config: Any
    inputs: dict[str, str]  # field -> raw value from the config
    depends_on: list[str] = field(default_factory=list)


def build_graph(config: ResolvedConfig) -> dict[str, StageNode]:
    names = list(config.stages)
    nodes = {}
    for name, cfg in config.stages.items():
        inputs = stage_inputs(cfg)
        deps = stage_dependencies(cfg, config.stages)
        for key, value in inputs.items():
            check_input_reference(name, key, value, names)
        nodes[name] = StageNode(name, cfg.kind, cfg, inputs, deps)
    return nodes


def check_input_reference(stage: str, key: str, value: str, stage_names: list[str]) -> None:
    """An input is a stage of this pipeline, an existing path, or a hub id (`org/name`, or `hf:name`)."""
    if value in stage_names or Path(value).exists() or value.startswith("hf:") or HUB_ID.fullmatch(value):
        return
    if "/" in value or value.startswith(("~", ".")):
        raise ConfigError(f"'{key}' of stage '{stage}' is the path '{value}', which does not exist.")
    raise ConfigError(
        f"'{key}' of stage '{stage}' is '{value}', which is not a stage of this pipeline "
        f"({', '.join(stage_names)}), an existing path or a hub id.{suggest(value, stage_names)} "
        "(Write a hub id without an organisation as hf:NAME.)"
    )


def topological_order(nodes: dict[str, StageNode]) -> list[str]:
    """Kahn's algorithm; ties keep the order of the config file. A cycle is refused, naming its stages."""
    order: list[str] = []
    remaining = dict(nodes)
    while remaining:
        ready = [n for n, node in remaining.items() if all(d in order for d in node.depends_on)]
        if not ready:
            cycle = find_cycle({n: node.depends_on for n, node in remaining.items()})
            raise ConfigError(
                "The stages form a cycle through their inputs: "
                + " <- ".join([*cycle, cycle[0]])
                + " (a <- b: a takes an input from b). A stage may only take inputs from stages that do not "
                "depend on it."
            )
        order.append(ready[0])
        del remaining[ready[0]]
    return order


def find_cycle(depends_on: dict[str, list[str]]) -> list[str]:
    """One cycle of the dependency graph (each stage followed by the stage it takes an input from)."""
    node = next(iter(depends_on))
    path: list[str] = []
    while node not in path:  # every remaining node has a remaining dependency, so this walk must loop
        path.append(node)
        node = next(d for d in depends_on[node] if d in depends_on)
    return path[path.index(node) :]


def fingerprint(kind: str, config: Any, resolved_inputs: dict[str, str], input_prints: dict[str, str]) -> str:
    """A stage is reusable when this hash is unchanged: its config plus what it was built from."""
    payload = {"kind": kind, "config": to_dict(config), "inputs": resolved_inputs, "upstream": input_prints}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "rlhf-pipeline"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return versions


class Runner:
    def __init__(self, config: ResolvedConfig, run_dir: str | Path):
        self.config = config
        self.rundir = RunDir(run_dir)
        self.nodes = build_graph(config)
        self.order = topological_order(self.nodes)
        self.prints: dict[str, str] = {}
        self.evaluation: EvaluationResult | None = None

    # -- selection --------------------------------------------------------------------------------
    def select(self, only: str | None, start: str | None) -> tuple[list[str], set[str]]:
        """(stages to consider, in order; stages to force even if finished)."""
        for flag, name in (("--only", only), ("--from", start)):
            if name is not None and name not in self.nodes:
                raise UserError(
                    f"{flag} {name}: no such stage.{suggest(name, self.order)} "
                    f"Stages: {', '.join(self.order)}."
                )
        if only:
            return [only], {only}
        if start:
            forced = {n for n in self.order if n == start or start in upstream(self.config.stages, n)}
            return self.order, forced
        return self.order, set()

    def resolve_inputs(self, node: StageNode) -> dict[str, str]:
        return {key: self.resolve(value) for key, value in node.inputs.items()}

    def resolve(self, value: str) -> str:
        """A stage name becomes its published folder; anything else is passed through as path / hub id."""
        if value in self.nodes:
            if not self.rundir.is_finished(value):
                raise UserError(
                    f"Stage '{value}' has not finished in '{self.rundir.root}', but a later stage needs it. "
                    f"Run it first (e.g. `rlhf run ... --from {value}`)."
                )
            return str(self.rundir.stage_path(value))
        return value.removeprefix("hf:")

    # -- running ------------------------------------------------------------------------------------
    def run(self, only: str | None = None, start: str | None = None, evaluate: bool = False) -> list[str]:
        """Run the selected stages, then the evaluation if asked, under one lock.

        Returns the names of the stages that trained; the evaluation's result lands in `self.evaluation`.
        """
        self.rundir.prepare()
        distributed.barrier()
        self.rundir.check_shared()
        with self.rundir.lock():
            to_run = self.plan(only, start)
            self.check_before_training(to_run, evaluate)
            distributed.barrier()  # every process planned from the same manifest before it changes
            if distributed.is_main():
                atomic_write_text(self.rundir.root / CONFIG, self.config.to_yaml())
            self.rundir.update_manifest(name=self.config.pipeline.name, order=self.order)
            for name in to_run:
                node = self.nodes[name]
                self.execute(node, self.resolve_inputs(node), self.prints[name])
            if evaluate:  # sampling and scoring on the main process; the others wait
                if distributed.is_main():
                    self.evaluation = self.evaluate()
                distributed.barrier()
            return to_run

    def plan(self, only: str | None, start: str | None) -> list[str]:
        """The stages that will train, in order (fingerprints land in self.prints); logs the skipped ones."""
        selected, forced = self.select(only, start)
        to_run: list[str] = []
        for name in self.order:
            node, entry = self.nodes[name], self.rundir.stage_entry(name)
            if name not in selected:
                self.prints[name] = entry.get("fingerprint", "")
                continue
            upstream_prints = {k: self.prints.get(v, "") for k, v in node.inputs.items() if v in self.nodes}
            self.prints[name] = fingerprint(node.kind, node.config, node.inputs, upstream_prints)
            reusable = self.rundir.is_finished(name) and entry.get("fingerprint") == self.prints[name]
            if name in forced or not reusable:
                to_run.append(name)
            else:
                log(f"[{name}] finished earlier with the same config and inputs: skipped")
        for name in to_run:
            for dep in self.nodes[name].depends_on:
                if dep not in to_run and not self.rundir.is_finished(dep):
                    raise UserError(
                        f"Stage '{name}' needs stage '{dep}', which has not finished in "
                        f"'{self.rundir.root}'. Run it first (e.g. `rlhf run ... --from {dep}`)."
                    )
        return to_run

    def check_before_training(self, to_run: list[str], evaluate: bool) -> None:
        """Validate every stage's data (and the evaluation's) up front: a bad file fails in seconds,
        not after the stages before it have trained."""
        for name in to_run:
            check_installed(self.nodes[name].config.report_to, name)
            check = getattr(stage_module(self.nodes[name].kind), "check", None)
            if check is not None:
                check(self.nodes[name].config)
        cfg = self.config.pipeline.evaluation
        if evaluate and cfg is not None:
            check_evaluation(cfg)

    def execute(self, node: StageNode, inputs: dict[str, str], print_: str) -> None:
        staging = self.rundir.staging_path(node.name)
        started = time.time()
        self.rundir.update_stage(
            node.name,
            replace=True,
            status="running",
            kind=node.kind,
            started_at=_now(),
            fingerprint=print_,
            config_hash=fingerprint(node.kind, node.config, {}, {}),
            inputs=inputs,
        )
        log(f"[{node.name}] running ({node.kind}) -> {self.rundir.stage_path(node.name)}")
        try:
            result = execute_stage(
                node,
                inputs,
                staging,
                self.rundir.work_path(node.name),
                self.config.pipeline,
                self.rundir.root,
            )
            distributed.barrier()  # every process finished the stage before its folder is published
            self.rundir.publish(staging, node.name)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.rundir.update_stage(node.name, status="failed", error=str(exc)[:2000], finished_at=_now())
            raise
        wall = time.time() - started
        self.rundir.update_stage(
            node.name,
            status="finished",
            output=str(self.rundir.stage_path(node.name)),
            metrics=result.metrics,
            wall_time_s=round(wall, 2),
            finished_at=_now(),
            versions=library_versions(),
        )
        if distributed.is_main():
            shutil.rmtree(self.rundir.work_path(node.name), ignore_errors=True)
        distributed.barrier()  # "finished" is on disk before any process resolves the next inputs
        log(f"[{node.name}] finished in {wall:.1f}s: {format_metrics(result.metrics)}")

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, force: bool = False) -> EvaluationResult | None:
        """Evaluate baseline vs candidate into <run-dir>/eval, unless it is up to date."""
        cfg = self.config.pipeline.evaluation
        if cfg is None:
            return None
        names = [v for v in stage_inputs(cfg).values() if v in self.nodes]
        # a stage re-run with an unchanged config (--from) has new weights: its finish time tells
        prints = {
            n: [self.rundir.stage_entry(n).get(k, "") for k in ("fingerprint", "finished_at")] for n in names
        }
        print_ = fingerprint("evaluation", cfg, stage_inputs(cfg), prints)
        entry = self.rundir.manifest().get("evaluation", {})
        if (
            not force
            and entry.get("fingerprint") == print_
            and (self.rundir.root / EVAL_DIR / METRICS_FILE).exists()
        ):
            log("[eval] up to date with the stages it evaluates: skipped")
            return EvaluationResult.from_dict(
                json.loads((self.rundir.root / EVAL_DIR / METRICS_FILE).read_text())
            )
        staging = self.rundir.staging_path(EVAL_DIR)
        started = time.time()
        try:
            result = evaluate(cfg, self.resolve, staging, self.config.pipeline.seed)
            self.rundir.publish(staging, EVAL_DIR)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.rundir.update_manifest(
            evaluation={
                "status": "finished",
                "fingerprint": print_,
                "finished_at": _now(),
                "wall_time_s": round(time.time() - started, 2),
                "output": str(self.rundir.root / EVAL_DIR),
            }
        )
        return result


def execute_stage(
    node: StageNode, inputs: dict[str, str], staging: Path, work: Path, pipeline: Any, run_dir: Path | None
) -> Any:
    """Run one stage into `staging` (seeded, threads set) and write its metrics beside the model."""
    seed = node.config.seed if node.config.seed is not None else pipeline.seed
    work.mkdir(parents=True, exist_ok=True)
    seed_everything(seed, pipeline.threads)
    ctx = StageContext(node.name, node.config, inputs, staging, work, seed, run_dir)
    # Trainers print their logs; stdout is kept for the command's own result (tables, JSON).
    with contextlib.redirect_stdout(sys.stderr), PeakMemory() as peak:
        result = stage_module(node.kind).run(ctx)
    result.metrics["peak_rss_mb"] = round(peak.mb, 1)  # the process's high-water mark while the stage ran
    result.metrics["peak_rss_added_mb"] = round(
        peak.mb - peak.start_mb, 1
    )  # what this stage added at its peak
    if peak.cuda_mb is not None:
        result.metrics["peak_cuda_mb"] = round(peak.cuda_mb, 1)
    if not distributed.is_main():
        return result
    atomic_write_json(
        staging / STAGE_RECORD_FILE,
        {
            "stage": node.name,
            "kind": node.kind,
            "metrics": result.metrics,
            "config": to_dict(node.config),
            "inputs": inputs,
        },
    )
    if result.history:
        atomic_write_json(staging / HISTORY_FILE, result.history)
    return result


def run_standalone(config: ResolvedConfig, name: str, init_from: str | None, out: Path) -> dict[str, float]:
    """`rlhf stage`: one stage of a config on any checkpoint, written to `out` (published atomically)."""
    if name not in config.stages:
        raise UserError(
            f"No stage '{name}' in the config.{suggest(name, list(config.stages))} "
            f"Stages: {', '.join(config.stages)}."
        )
    cfg = config.stages[name]
    fields = [f.name for f in dataclasses.fields(cfg) if f.metadata.get("input")]
    if init_from is not None:
        setattr(cfg, fields[0], init_from)
    inputs = stage_inputs(cfg)
    for key, value in inputs.items():
        if value in config.stages:
            raise UserError(
                f"Stage '{name}' takes '{key}' from stage '{value}', which does not exist outside a run. "
                f"Give a path or hub id: --init-from for '{fields[0]}', or stages.{name}.{key}=PATH."
            )
    node = StageNode(name, cfg.kind, cfg, inputs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.incomplete"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    work = out.parent / f".{out.name}.work"
    try:
        result = execute_stage(
            node, {k: v.removeprefix("hf:") for k, v in inputs.items()}, staging, work, config.pipeline, None
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    RunDir(out.parent).publish(staging, out.name)
    shutil.rmtree(work, ignore_errors=True)
    log(f"[{name}] wrote {out}: {format_metrics(result.metrics)}")
    return result.metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))


def seed_everything(seed: int, threads: int | None) -> None:
    import torch
    from transformers import set_seed

    if threads:
        torch.set_num_threads(threads)
    set_seed(seed)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
