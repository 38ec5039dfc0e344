"""What the benchmark scripts share: running a command with its wall time and peak memory, the machine's
description and load, the tiny checkpoints, and a plain-text table. Standard library only, so the scripts
run before any virtual environment exists."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = Path(os.environ.get("PEERS_HARNESS", "/work/shared/peers"))  # the shared peer harness
OURS = ROOT / ".venv" / "bin"


@dataclass
class Finished:
    """One finished command: its exit code, wall time, peak RSS of the process and its last JSON line."""

    returncode: int
    wall_s: float
    peak_rss_mb: float
    output: str
    load_before: float
    load_after: float

    def last_json(self) -> dict:
        for line in reversed(self.output.splitlines()):
            line = line.strip()
            if line.startswith("{") and line.endswith("}"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
        return {}


def run(cmd: list[str], log: Path | None = None, env: dict | None = None, check: bool = True) -> Finished:
    """Run `cmd` from the repository root. Peak RSS comes from the kernel's accounting of that one child
    (os.wait4), the same measure for our commands and the peers'; stdout+stderr go to `log`."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
        text=True,
    )
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(" ".join(map(str, cmd)) + "\n\n" + output)
    result = Finished(proc.returncode, wall, usage.ru_maxrss / 1024, output, load_before, os.getloadavg()[0])
    if check and proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-25:])
        sys.exit(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return result


def machine() -> dict:
    """CPU model, cores, memory and library versions (of our venv) for the tables' captions."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found.group(1).strip() if found else cpu
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = subprocess.run(
        [
            str(OURS / "python"),
            "-c",
            "import torch, transformers, trl, peft; print(torch.__version__, transformers.__version__, "
            "trl.__version__, peft.__version__, torch.cuda.is_available())",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    names = ("torch", "transformers", "trl", "peft", "cuda")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_gb, 1),
        "python": platform.python_version(),
        **dict(zip(names, versions)),
    }


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def ensure_peers(peers: Path) -> None:
    """The peer venvs, built by the shared harness's setup script when missing (idempotent)."""
    run(["bash", str(HARNESS / "setup_peers.sh")], env={"PEERS_DIR": str(peers)})


def ensure_data(out: Path) -> Path:
    """The demo "reviews" task as jsonl (corpus, sft, prefs, prompts, eval_prompts), plus the prompts with the
    BOS token written out: the harness's tokenizer prepends <s> to every text, TRL tokenizes prompts with it,
    our RL stage tokenizes prompts without special tokens; "<s>" in the text gives our stage the same ids."""
    data = out / "data"
    if not (data / "eval_prompts.jsonl").exists():
        run([str(OURS / "rlhf"), "data", "reviews", "--out", str(data)])
    with_bos = data / "prompts_bos.jsonl"
    if not with_bos.exists():
        rows = [json.loads(line) for line in (data / "prompts.jsonl").read_text().splitlines() if line]
        with_bos.write_text("".join(json.dumps({"prompt": "<s>" + r["prompt"]}) + "\n" for r in rows))
    return data


def ensure_tiny(peers: Path, data: Path, out: Path, threads: int) -> Path:
    """The harness's tiny checkpoints (tokenizer, SFT policy, reward model); `ours/` holds the same weights
    with the tokenizer beside them, which is how our stages load a checkpoint."""
    tiny = out / "tiny"
    if not (tiny / "reward" / "model.safetensors").exists():
        made = run(
            [str(peers / "trl192/bin/python"), str(HARNESS / "make_tiny.py"), str(data), str(tiny)]
            + ["--threads", str(threads)],
            log=out / "logs" / "make_tiny.log",
        )
        (out / "make_tiny.json").write_text(json.dumps(made.last_json()))
    for name in ("policy", "reward"):
        with_tokenizer = tiny / "ours" / name
        if not (with_tokenizer / "tokenizer.json").exists():
            shutil.rmtree(with_tokenizer, ignore_errors=True)
            shutil.copytree(tiny / name, with_tokenizer)
            for f in (tiny / "tokenizer").iterdir():
                shutil.copy(f, with_tokenizer / f.name)
    return tiny


def our_history(out_dir: Path) -> list[dict]:
    return json.loads((out_dir / "history.json").read_text())


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A GitHub-markdown table (numbers right-aligned)."""
    cells = [[str(c) for c in row] for row in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def trainer_runtime(output: str) -> float | None:
    """The Trainer's own `train_runtime` from the log line it prints at the end of training."""
    found = re.findall(r"'train_runtime':\s*'?([0-9.]+)", output)
    return float(found[-1]) if found else None


def engine_fingerprint() -> str:
    """Which version of the RL engine was measured: the working tree changes under the lead's hands."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    digest = hashlib.sha256()
    for path in sorted((ROOT / "stages" / "rl").glob("*.py")):
        digest.update(path.read_bytes())
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "stages", "pipeline"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    changes = " + uncommitted changes" if dirty else ""
    return f"HEAD {head.stdout.strip()}{changes}, stages/rl sha256 {digest.hexdigest()[:12]}"
