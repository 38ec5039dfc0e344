"""Resumable checkpoints that are never trusted blindly: each folder carries an index of its files' sizes and
SHA-256 hashes, written last, and a resume verifies it and falls back to an older checkpoint if it fails."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from pipeline.log import log

INDEX = "rlhf_checkpoint_index.json"
_STEP = re.compile(r"(?:checkpoint|step)-(\d+)$")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_index(folder: Path, step: int) -> None:
    """Seal a completely written checkpoint folder: the index is its commit point."""
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != INDEX
    }
    tmp = folder / f".{INDEX}.tmp"
    tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
    os.replace(tmp, folder / INDEX)


def verify(folder: Path) -> str | None:
    """None if every indexed file is present with its size and hash; otherwise what is wrong."""
    index_file = folder / INDEX
    if not index_file.is_file():
        return "it has no index (it was not completely written)"
    try:
        files = json.loads(index_file.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as exc:
        return f"its index is unreadable ({exc})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} is {path.stat().st_size} bytes, expected {expected['size']}"
        if file_digest(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def step_of(folder: Path) -> int:
    match = _STEP.search(folder.name)
    return int(match.group(1)) if match else -1


def latest_valid(parent: Path, stage: str) -> Path | None:
    """The newest checkpoint under `parent` that verifies; each one skipped is reported with its reason."""
    if not parent.is_dir():
        return None
    candidates = [p for p in parent.iterdir() if p.is_dir() and step_of(p) >= 0]
    for folder in sorted(candidates, key=step_of, reverse=True):
        problem = verify(folder)
        if problem is None:
            log(f"[{stage}] resuming from {folder.name} (verified against its index)")
            return folder
        log(f"[{stage}] checkpoint {folder.name} is not usable: {problem}; removed it, trying an older one")
        shutil.rmtree(folder, ignore_errors=True)  # a newer broken folder would be overwritten piecemeal
    return None


def prune(parent: Path, keep: int) -> None:
    """Keep the `keep` newest verified checkpoints (and anything newer); drop the rest."""
    sealed = sorted((p for p in parent.iterdir() if p.is_dir() and (p / INDEX).is_file()), key=step_of)
    for folder in sealed[:-keep] if keep > 0 else []:
        shutil.rmtree(folder, ignore_errors=True)
