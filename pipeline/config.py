"""The one config surface: YAML + `a.b.c=value` overrides -> typed, validated dataclasses.

The pipeline file's top level and its `evaluation` block are typed here; each stage block is typed by the
`Config` of its kind's module (through the stage registry), built from `pipeline/stage_config.py`."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config_schema import InvalidValue, build, suggest, to_dict
from pipeline.errors import ConfigError
from pipeline.evaluation.config import EvaluationConfig
from pipeline.stage_config import StageConfig, check_positive_if_set, check_seed
from stages import ALIASES, config_class, known_kinds


@dataclass
class PipelineConfig:
    stages: dict[str, dict[str, Any]]
    name: str = "run"
    seed: int = 0
    run_dir: str | None = None
    threads: int | None = None  # torch threads; None: all cores
    evaluation: EvaluationConfig | None = None
    compare: dict[str, dict[str, Any]] = field(default_factory=dict)  # `rlhf compare`: algorithm -> overrides

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise InvalidValue("name", "must not be empty: it names the run (runs/<name> by default).")
        check_seed(self)
        check_positive_if_set(self, "threads", "all cores")


@dataclass
class ResolvedConfig:
    """The pipeline config with every stage block typed by its kind."""

    pipeline: PipelineConfig
    stages: dict[str, StageConfig]
    raw: dict[str, Any]
    source: Path | None = None

    def to_yaml(self) -> str:
        data = to_dict(self.pipeline)
        data["stages"] = {name: to_dict(cfg) for name, cfg in self.stages.items()}
        return yaml.safe_dump(data, sort_keys=False)


def stage_inputs(cfg: Any) -> dict[str, str]:
    """The input fields of a stage config that are set: {field name: stage name, path or hub id}.

    A dict-valued input field (e.g. the evaluation's `policies`) contributes one entry per item,
    keyed `field.key`.
    """
    inputs: dict[str, str] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not f.metadata.get("input") or not value:
            continue
        if isinstance(value, dict):
            inputs.update({f"{f.name}.{key}": item for key, item in value.items() if item})
        else:
            inputs[f.name] = value
    return inputs


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (so 3e-4, true, [1,2] work)."""
    if "=" not in assignment:
        raise ConfigError(f"Override '{assignment}' must look like key.path=value.")
    path, _, text = assignment.partition("=")
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"Override '{assignment}' has an empty key path.")
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"Override '{assignment}': '{'.'.join(keys[: i + 1])}' is a value, not a section."
            )
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc  # the one-line reason, without the position dump
        raise ConfigError(f"Override '{assignment}': the value is not valid YAML ({problem}).") from exc


def read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"Config file '{path}' is a directory; give a YAML file.")
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Config file '{path}' is not UTF-8 text (bad byte at offset {exc.start})."
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"Config file '{path}' is not valid YAML: {where}{problem}.") from exc
    except OSError as exc:
        raise ConfigError(f"Config file '{path}' cannot be read: {exc.strerror or exc}.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must contain a mapping with a 'stages' section.")
    return data


def check_positions(stages: dict[str, StageConfig]) -> None:
    """No stage feeds a model longer sequences than the learned position table of a model built from scratch
    upstream of it (gpt2, bert): past it there is no embedding, and training fails with an index error."""
    for name, cfg in stages.items():
        longest = cfg.longest_sequence()
        if longest is None:
            continue
        tokens, keys = longest
        for ancestor in upstream(stages, name):
            limit = stages[ancestor].position_limit()
            if limit is not None and tokens > limit:
                raise ConfigError(
                    f"Stage '{name}' feeds sequences of up to {tokens} tokens ({keys}), but stage "
                    f"'{ancestor}' builds its model from scratch with model.max_position_embeddings {limit}, "
                    f"a learned table with no position beyond it: raise that or lower {keys}."
                )


def stage_dependencies(cfg: Any, stages: dict[str, Any]) -> list[str]:
    """The stages of the pipeline that a stage takes an input from (an input naming a stage)."""
    return [value for value in stage_inputs(cfg).values() if value in stages]


def upstream(stages: dict[str, Any], name: str) -> list[str]:
    """Every stage whose output `name` starts from, directly or through others, in config order."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dependency in stage_dependencies(stages[todo.pop()], stages):
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return [stage for stage in stages if stage in seen and stage != name]


def resolve_kind(name: str, block: dict[str, Any]) -> Any:
    """The stage's kind: `kind`, or the stage's name when unset; an older name (`ppo`) becomes the kind it
    stands for (`rl`, whose `algorithm` still picks what runs), so the loaded config has one name per kind."""
    kind = block.get("kind", name)
    return ALIASES.get(kind, kind) if isinstance(kind, str) else kind


def raw_config(
    path: str | Path | None, overrides: list[str] = (), data: dict | None = None
) -> dict[str, Any]:
    """The config as data, before typing: the YAML file (or a copy of `data`) with the overrides applied."""
    raw = copy.deepcopy(data) if data is not None else read_yaml(Path(path))
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw


def load_config(
    path: str | Path | None, overrides: list[str] = (), data: dict | None = None
) -> ResolvedConfig:
    """Read a YAML file (or take `data`), apply overrides, type every stage block by its kind."""
    raw = raw_config(path, overrides, data)
    pipeline = build(PipelineConfig, raw, "")
    if not pipeline.stages:
        raise ConfigError("The config has no stages: add a 'stages' section.")
    typed: dict[str, StageConfig] = {}
    for name, block in pipeline.stages.items():
        block = dict(block or {})
        kind = block["kind"] = resolve_kind(name, block)
        if kind not in known_kinds():
            raise ConfigError(
                f"Stage '{name}' has unknown kind '{kind}'.{suggest(str(kind), known_kinds())} "
                f"Known kinds: {', '.join(known_kinds())}."
            )
        typed[name] = build(config_class(kind), block, f"stages.{name}")
        if typed[name].seed is None:  # resolved here so the seed is saved and fingerprinted with the stage
            typed[name].seed = pipeline.seed
    check_positions(typed)
    if pipeline.evaluation is not None and pipeline.evaluation.seed is None:
        pipeline.evaluation.seed = pipeline.seed
    return ResolvedConfig(pipeline=pipeline, stages=typed, raw=raw, source=Path(path) if path else None)
