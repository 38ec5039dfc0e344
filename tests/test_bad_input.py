"""Every bad input gets one clear `error:` line, exit code 2, no traceback, and no stage marked finished.

Each case runs `rlhf run CONFIG --only STAGE` (or `rlhf stage ...`) in-process on a tiny config whose
stage would train in a second if its input were good; each must fail before any training starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.tokenizer_training import train_bpe_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"review {i}: this product is {'great' if i % 2 else 'bad'} and it works" for i in range(40)]
GOOD = {
    "corpus.jsonl": [{"text": t} for t in TEXTS],
    "sft.jsonl": [{"prompt": f"Review {i}:", "completion": " great product"} for i in range(8)],
    "prefs.jsonl": [{"prompt": f"Review {i}:", "chosen": " great", "rejected": " bad"} for i in range(8)],
    "prompts.jsonl": [{"prompt": f"Review {i}:"} for i in range(8)],
}
TRAIN_FAST = {"max_steps": 1, "batch_size": 4, "log_every": 100}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A from_pretrained-loadable causal LM (2 layers, 32 wide) for the stages that start from a model."""
    from pipeline.model_building import build_causal_lm
    from pipeline.models import save_pretrained
    from pipeline.stage_config import ModelConfig

    out = tmp_path_factory.mktemp("tiny-model")
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    cfg = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    save_pretrained(build_causal_lm(cfg, tokenizer), tokenizer, out)
    return out


def tiny_config(tmp_path: Path, model: Path) -> dict:
    data = {name: str(tmp_path / name) for name in GOOD}
    return {
        "name": "bad-input",
        "stages": {
            "pretrain": {
                "data": data["corpus.jsonl"],
                "model": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "vocab_size": 300},
                "block_size": 16,
                **TRAIN_FAST,
            },
            "sft": {"init_from": str(model), "data": data["sft.jsonl"], **TRAIN_FAST},
            "reward": {"init_from": str(model), "data": data["prefs.jsonl"], **TRAIN_FAST},
            "ppo": {
                "policy": str(model),
                "reward_model": str(model),
                "prompts": data["prompts.jsonl"],
                "total_episodes": 4,
                "batch_size": 4,
                "minibatch_size": 2,
                "ppo_epochs": 1,
                "max_new_tokens": 4,
            },
        },
    }


@dataclass
class Case:
    stage: str
    expected: list[str]  # words the error must contain; {tmp} is the test's folder
    files: dict[str, list | str | bytes] = field(default_factory=dict)  # replace GOOD files
    config: dict[str, object] = field(default_factory=dict)  # dotted key -> value, set in the YAML
    argv: list[str] | None = None  # instead of `run CONFIG --run-dir RUN --only STAGE`
    config_text: str | None = None  # instead of the YAML of the tiny config


def case(id_: str, **kwargs):
    return pytest.param(Case(**kwargs), id=id_)


CASES = [
    # -- data files
    case(
        "missing-data-file",
        stage="sft",
        config={"stages.sft.data": "{tmp}/nope.jsonl"},
        expected=["Data file '{tmp}/nope.jsonl' does not exist."],
    ),
    case(
        "empty-data-file",
        stage="sft",
        files={"sft.jsonl": "\n\n"},
        expected=["file '{tmp}/sft.jsonl' is empty: expected rows with fields prompt, completion."],
    ),
    case(
        "directory-instead-of-file",
        stage="sft",
        config={"stages.sft.data": "{tmp}"},
        expected=["Data source '{tmp}' is a directory; give a .jsonl, .json or .parquet file."],
    ),
    case(
        "csv-suffix",
        stage="sft",
        files={"sft.csv": "prompt,completion\nhi,there\n"},
        config={"stages.sft.data": "{tmp}/sft.csv"},
        expected=["Data file '{tmp}/sft.csv' has suffix '.csv'; expected .jsonl, .json or .parquet."],
    ),
    case(
        "invalid-json-line-3",
        stage="sft",
        files={
            "sft.jsonl": '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n{"prompt":'
        },
        expected=["File '{tmp}/sft.jsonl', line 3: not valid JSON (Expecting value)."],
    ),
    case(
        "missing-column-completion",
        stage="sft",
        files={"sft.jsonl": [{"prompt": "a", "completion": "b"}, {"prompt": "c"}]},
        expected=[
            "'{tmp}/sft.jsonl', line 2: missing field(s) completion",
            "must have fields prompt, completion",
        ],
    ),
    case(
        "missing-column-after-blank-line",
        stage="sft",
        files={"sft.jsonl": '{"prompt": "a", "completion": "b"}\n\n{"prompt": "c"}\n'},
        expected=["'{tmp}/sft.jsonl', line 3: missing field(s) completion"],
    ),
    case(
        "extra-column",
        stage="sft",
        files={"sft.jsonl": [{"prompt": "a", "completion": "b", "score": 1}]},
        expected=[
            "'{tmp}/sft.jsonl', line 1: unexpected field(s) score",
            "exactly the fields prompt, completion",
        ],
    ),
    case(
        "completion-is-a-number",
        stage="sft",
        files={"sft.jsonl": [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": 5}]},
        expected=["'{tmp}/sft.jsonl', line 2: field 'completion' must be a string, got int 5."],
    ),
    case(
        "row-is-not-an-object",
        stage="sft",
        files={"sft.jsonl": '["a", "b"]\n'},
        expected=[
            "'{tmp}/sft.jsonl', line 1: expected a JSON object with fields prompt, completion, got list."
        ],
    ),
    case(
        "empty-string",
        stage="sft",
        files={"sft.jsonl": [{"prompt": "a", "completion": "b"}, {"prompt": "  ", "completion": "d"}]},
        expected=["'{tmp}/sft.jsonl', line 2: field 'prompt' is empty."],
    ),
    case(
        "non-utf8-bytes",
        stage="sft",
        files={
            "sft.jsonl": b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "d"}\n'
        },
        expected=["File '{tmp}/sft.jsonl', line 2: bytes that are not UTF-8 (at byte 50)."],
    ),
    case(
        "chosen-equals-rejected",
        stage="reward",
        files={
            "prefs.jsonl": [
                {"prompt": "p", "chosen": "a", "rejected": "b"},
                {"prompt": "p", "chosen": "x", "rejected": "x"},
            ]
        },
        expected=["'{tmp}/prefs.jsonl', line 2: 'chosen' and 'rejected' are identical"],
    ),
    case(
        "json-not-a-list",
        stage="pretrain",
        files={"corpus.json": '{"text": "one document"}'},
        config={"stages.pretrain.data": "{tmp}/corpus.json"},
        expected=["File '{tmp}/corpus.json': expected a JSON list of objects, got dict."],
    ),
    case(
        "no-data-source-set",
        stage="pretrain",
        config={"stages.pretrain.data": ""},
        expected=["No pretraining data source is set: give a .jsonl/.json/.parquet path"],
    ),
    case(
        "eval-data-bad",
        stage="sft",
        files={"sft_eval.jsonl": [{"prompt": "a", "completions": "b"}]},
        config={"stages.sft.eval_data": "{tmp}/sft_eval.jsonl"},
        expected=["'{tmp}/sft_eval.jsonl', line 1: missing field(s) completion"],
    ),
    case(
        "prompt-longer-than-max-prompt-length",
        stage="ppo",
        files={"prompts.jsonl": [{"prompt": "Review 1:"}, {"prompt": "this product is great " * 20}]},
        config={"stages.ppo.max_prompt_length": 16},
        expected=["prompts.jsonl, row 2: the prompt is", "tokens, longer than max_prompt_length=16"],
    ),
    # -- config
    case(
        "unknown-config-key",
        stage="sft",
        config={"stages.sft.epoch": 3},
        expected=["Unknown config key 'stages.sft.epoch'. Did you mean 'epochs'?", "Valid keys here:"],
    ),
    case(
        "unknown-key-in-override",
        stage="sft",
        argv=["run", "{config}", "--run-dir", "{run}", "--only", "sft", "stages.sft.lora.rr=4"],
        expected=["Unknown config key 'stages.sft.lora.rr'. Did you mean 'r'?"],
    ),
    case(
        "wrong-type",
        stage="sft",
        config={"stages.sft.epochs": "many"},
        expected=["Config key 'stages.sft.epochs' must be a number, got a string 'many'."],
    ),
    case(
        "only-mistyped-stage",
        stage="sft",
        argv=["run", "{config}", "--run-dir", "{run}", "--only", "sfft"],
        expected=["--only sfft: no such stage. Did you mean 'sft'?", "Stages: pretrain, sft, reward, ppo."],
    ),
    case(
        "from-mistyped-stage",
        stage="reward",
        argv=["run", "{config}", "--run-dir", "{run}", "--from", "rewrad"],
        expected=["--from rewrad: no such stage. Did you mean 'reward'?"],
    ),
    case(
        "only-stage-whose-input-has-not-run",
        stage="sft",
        config={"stages.sft.init_from": "pretrain"},
        expected=["Stage 'sft' needs stage 'pretrain', which has not finished in '{tmp}/run'."],
    ),
    case(
        "config-file-missing",
        stage="sft",
        argv=["run", "{tmp}/nope.yaml", "--run-dir", "{run}", "--only", "sft"],
        expected=["Config file '{tmp}/nope.yaml' does not exist."],
    ),
    case(
        "config-not-a-mapping",
        stage="sft",
        config_text="- pretrain\n- sft\n",
        expected=["Config file '{tmp}/config.yaml' must contain a mapping with a 'stages' section."],
    ),
    case(
        "config-invalid-yaml",
        stage="sft",
        config_text="stages:\n  sft: {data: [\n",
        expected=[
            "Config file '{tmp}/config.yaml' is not valid YAML: line 3, column 1: "
            "expected the node content, but found '<stream end>'."
        ],
    ),
    # -- models and paths
    case(
        "init-from-folder-without-config-json",
        stage="sft",
        files={"empty-model/.keep": ""},
        config={"stages.sft.init_from": "{tmp}/empty-model"},
        expected=[
            "'{tmp}/empty-model' is not a model or tokenizer folder: it has no config.json or tokenizer.json"
        ],
    ),
    case(
        "run-dir-under-a-regular-file",
        stage="sft",
        files={"a-file": "not a folder"},
        argv=["run", "{config}", "--run-dir", "{tmp}/a-file/run", "--only", "sft"],
        expected=["Run directory '{tmp}/a-file/run' cannot be written: Not a directory."],
    ),
    # -- `rlhf stage`
    case(
        "stage-command-mistyped-name",
        stage="sft",
        argv=["stage", "sfft", "--config", "{config}", "--out", "{run}/sft"],
        expected=["No stage 'sfft' in the config. Did you mean 'sft'?"],
    ),
    case(
        "stage-command-missing-column",
        stage="sft",
        files={"sft.jsonl": [{"prompt": "a"}]},
        argv=["stage", "sft", "--config", "{config}", "--out", "{run}/sft"],
        expected=["'{tmp}/sft.jsonl', line 1: missing field(s) completion"],
    ),
    case(
        "stage-command-input-is-a-stage",
        stage="sft",
        config={"stages.sft.init_from": "pretrain"},
        argv=["stage", "sft", "--config", "{config}", "--out", "{run}/sft"],
        expected=["Stage 'sft' takes 'init_from' from stage 'pretrain', which does not exist outside a run."],
    ),
]


def set_key(data: dict, dotted: str, value: object) -> None:
    *sections, key = dotted.split(".")
    for section in sections:
        data = data[section]
    data[key] = value


def write_files(tmp_path: Path, files: dict[str, list | str | bytes]) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, list):
            path.write_text("".join(json.dumps(row) + "\n" for row in content), encoding="utf-8")
        else:
            path.write_text(content, encoding="utf-8")


def prepare(c: Case, tmp_path: Path, model: Path) -> tuple[list[str], Path]:
    """Write the case's files and config; returns (argv, run dir)."""
    fill = {"tmp": str(tmp_path), "run": str(tmp_path / "run"), "config": str(tmp_path / "config.yaml")}
    write_files(tmp_path, {**GOOD, **c.files})
    config = tiny_config(tmp_path, model)
    for key, value in c.config.items():
        set_key(config, key, value.format(**fill) if isinstance(value, str) else value)
    text = c.config_text if c.config_text is not None else yaml.safe_dump(config, sort_keys=False)
    (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
    argv = c.argv or ["run", "{config}", "--run-dir", "{run}", "--only", c.stage]
    return [a.format(**fill) for a in argv], tmp_path / "run"


def assert_failed_cleanly(code: int, stderr: str, run_dir: Path, stage: str, expected: list[str]) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, stderr
    for words in expected:
        assert words in stderr
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        entry = json.loads(manifest.read_text()).get("stages", {}).get(stage, {})
        assert entry.get("status") != "finished"
    assert not (run_dir / stage).exists()


@pytest.mark.parametrize("c", CASES)
def test_bad_input_gets_one_clear_error(c: Case, tmp_path: Path, tiny_model: Path, capsys) -> None:
    argv, run_dir = prepare(c, tmp_path, tiny_model)
    code = main(argv)
    captured = capsys.readouterr()
    fill = {"tmp": str(tmp_path)}
    assert_failed_cleanly(code, captured.err, run_dir, c.stage, [w.format(**fill) for w in c.expected])
    assert not any(run_dir.glob(".*.incomplete")), "a failed stage left its staging folder"


@pytest.mark.filterwarnings("ignore:.*pin_memory")
def test_the_same_config_trains_when_the_input_is_good(tmp_path: Path, tiny_model: Path, capsys) -> None:
    """The control: the errors above come from the bad input, not from a broken tiny config."""
    argv, run_dir = prepare(Case(stage="reward", expected=[]), tmp_path, tiny_model)
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["reward"]["status"] == "finished"
    assert (run_dir / "reward" / "config.json").is_file()


def test_a_stage_that_fails_while_running_is_recorded_as_failed(
    tmp_path: Path, tiny_model: Path, capsys
) -> None:
    (tmp_path / "not-a-model").mkdir()
    c = Case(stage="sft", config={"stages.sft.init_from": str(tmp_path / "not-a-model")}, expected=[])
    argv, run_dir = prepare(c, tmp_path, tiny_model)
    assert main(argv) == 2
    entry = json.loads((run_dir / "manifest.json").read_text())["stages"]["sft"]
    assert entry["status"] == "failed"
    assert "is not a model or tokenizer folder" in entry["error"]
    assert "error: " in capsys.readouterr().err


def test_bad_data_of_a_later_stage_stops_the_run_before_anything_trains(
    tmp_path: Path, tiny_model: Path, capsys
) -> None:
    """All stages' data is validated up front: pretrain must not train when the SFT data is broken."""
    c = Case(stage="sft", files={"sft.jsonl": [{"prompt": "a"}]}, expected=[])
    argv, run_dir = prepare(c, tmp_path, tiny_model)
    full_run = [a for a in argv if a not in ("--only", "sft")]
    assert main(full_run) == 2
    assert "sft.jsonl', line 1: missing field(s) completion" in capsys.readouterr().err
    manifest = run_dir / "manifest.json"
    stages = json.loads(manifest.read_text()).get("stages", {}) if manifest.exists() else {}
    assert stages == {} and not (run_dir / "pretrain").exists()


def test_overlong_prompt_is_refused_by_encode_prompts() -> None:
    from stages.rl.rollout import encode_prompts

    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    prompts = ["Review 1:", "this product is great " * 10]
    assert len(encode_prompts(tokenizer, prompts[:1], max_length=16)) == 1
    with pytest.raises(
        UserError, match=r"p.jsonl, row 2: the prompt is \d+ tokens, longer than max_prompt_length=16"
    ):
        encode_prompts(tokenizer, prompts, max_length=16, source="p.jsonl")


def test_command_line_bad_input_exits_2_without_traceback(tmp_path: Path, tiny_model: Path) -> None:
    c = Case(stage="sft", files={"sft.jsonl": [{"prompt": "a", "completion": 5}]}, expected=[])
    argv, run_dir = prepare(c, tmp_path, tiny_model)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert_failed_cleanly(
        result.returncode,
        result.stderr,
        run_dir,
        "sft",
        [f"error: file '{tmp_path}/sft.jsonl', line 1: field 'completion' must be a string, got int 5."],
    )
