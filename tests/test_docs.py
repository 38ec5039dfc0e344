"""The docs cannot drift from the config: every key of every stage kind, of the evaluation block and of the
pipeline itself is named (in backticks) in the README or in docs/."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.evaluation.config import EvaluationConfig
from stages import config_class, known_kinds

ROOT = Path(__file__).resolve().parent.parent


def documented_names() -> set[str]:
    """Names a page documents: the leading key (or dotted path) of an inline code span (`kl_coef`,
    `lora.r`, `engine: fsdp2`, `stages.ppo.rollout.engine=paged`), the keys of a span listing a block's keys
    (`lora: {enabled, r, alpha}`), and the keys of YAML lines in code blocks."""
    names: set[str] = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            names.update(re.findall(r"^\s*([A-Za-z_]\w*):", block, flags=re.M))
        for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
            lead = re.match(r"\s*([A-Za-z_][\w.]*)", span)
            if lead:
                names.update(lead.group(1).split("."))
            block = re.match(r"\s*[\w.]+:\s*\{(.*)\}\s*$", span)  # `lora: {enabled, r, alpha, ...}`
            if block:
                names.update(re.findall(r"[A-Za-z_]\w*", block.group(1)))
    return names


def config_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += config_keys(type(default), f"{prefix}{f.name}.")
    return keys


def test_every_config_key_is_named_in_the_docs():
    named = documented_names()
    sections = {f"stages.<{kind}>": config_class(kind) for kind in known_kinds()}
    sections |= {"evaluation": EvaluationConfig, "(top level)": PipelineConfig}
    missing = [
        f"{section}: {key}"
        for section, cls in sections.items()
        for key in config_keys(cls)
        if key.rsplit(".", 1)[-1] not in named
    ]
    assert not missing, "config keys no README or docs page names:\n" + "\n".join(missing)


def module_map() -> str:
    text = (ROOT / "docs" / "design.md").read_text()
    return text[text.index("## Module map") : text.index("## Configuration")]


def test_the_module_map_names_every_module_of_the_tree():
    """A module is named by its path, by its file name on the row of a sibling (`a/x.py`, `y.py`), or by a
    folder row (`pipeline/demo/`) that describes the whole package."""
    rows = module_map().splitlines()
    missing = []
    for package in ("pipeline", "stages", "reward_models"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            folder = relative.rpartition("/")[0]
            named = any(
                f"`{relative}`" in row
                or (f"`{path.name}`" in row and f"`{folder}/" in row)
                or any(f"`{parent}/`" in row for parent in _parents(folder))
                for row in rows
            )
            if not named and path.name not in ("__init__.py", "__main__.py"):
                missing.append(relative)
    assert missing == []


def _parents(folder: str) -> list[str]:
    parts = folder.split("/")
    return ["/".join(parts[:n]) for n in range(2, len(parts) + 1)]
