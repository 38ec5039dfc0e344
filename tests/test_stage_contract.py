"""Adding a stage kind is one module and one registry line: a kind written here (a module on a temporary
path, one entry added to the registry) loads from a config, runs, feeds a later stage, is skipped when
finished and re-runs when its config changes, with no change to the config loader or the runner."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import stages
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.runner import Runner

MODULE = '''
"""A stage kind that needs no model: writes a numbered note, and appends to its input's note if given."""

from dataclasses import dataclass
from pathlib import Path

from pipeline.config_schema import InvalidValue
from pipeline.stage_config import StageConfig, input_field
from stages.base import StageContext, StageResult


@dataclass
class NoteStageConfig(StageConfig):
    text: str = "hello"
    after: str | None = input_field(None)  # a stage (or folder) whose note this one continues
    repeat: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.repeat < 1:
            raise InvalidValue("repeat", "must be at least 1.")


Config = NoteStageConfig


def run(ctx: StageContext) -> StageResult:
    before = (Path(ctx.inputs["after"]) / "note.txt").read_text() if "after" in ctx.inputs else ""
    note = before + ctx.config.text * ctx.config.repeat
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    (ctx.out_dir / "note.txt").write_text(note)
    return StageResult(metrics={"length": float(len(note))})
'''


@pytest.fixture
def note_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "note_stage.py").write_text(MODULE)  # the one new file
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(stages._MODULES, "note", "note_stage")  # the one registry line
    yield "note"
    sys.modules.pop("note_stage", None)


def test_a_new_stage_kind_needs_one_module_and_one_registry_line(note_kind: str, tmp_path: Path):
    data = {
        "stages": {
            "first": {"kind": note_kind, "text": "ab", "repeat": 2},
            "second": {"kind": note_kind, "text": "c", "after": "first"},
        }
    }
    runner = Runner(load_config(None, data=data), tmp_path / "run")
    assert runner.run() == ["first", "second"]
    assert (tmp_path / "run" / "second" / "note.txt").read_text() == "ababc"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["second"]["metrics"]["length"] == 5.0
    assert manifest["stages"]["second"]["inputs"] == {"after": str(tmp_path / "run" / "first")}
    # Finished with the same config: skipped. A changed block re-runs it and the stage after it.
    assert Runner(load_config(None, data=data), tmp_path / "run").run() == []
    data["stages"]["first"]["text"] = "x"
    assert Runner(load_config(None, data=data), tmp_path / "run").run() == ["first", "second"]
    assert (tmp_path / "run" / "second" / "note.txt").read_text() == "xxc"


def test_the_new_kind_gets_the_config_checks_every_kind_gets(note_kind: str):
    for block, message in (
        ({"kind": note_kind, "txt": "a"}, "'stages.first.txt'"),  # unknown key, with the valid ones
        ({"kind": note_kind, "repeat": 0}, "repeat"),  # the kind's own value check
        ({"kind": note_kind, "after": "nowhere/x"}, None),  # a path is accepted as an input
    ):
        if message is None:
            load_config(None, data={"stages": {"first": block}})
            continue
        with pytest.raises(ConfigError) as error:
            load_config(None, data={"stages": {"first": block}})
        assert message in str(error.value)
