"""The run directory contract: resolved config, manifest, one folder per stage, atomic publishing, lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline import distributed
from pipeline.atomic import atomic_write_json
from pipeline.errors import UserError

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
EVAL_DIR = "eval"


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def prepare(self) -> None:
        if not distributed.is_main():  # only the main process writes; the others wait at a barrier
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"Run directory '{self.root}' cannot be written: {exc.strerror or exc}.") from exc

    def check_shared(self) -> None:
        """Every process must see the run directory the main process writes (on many nodes: a filesystem
        they all mount). The main process writes a marker with a fresh token; each process reads it back.
        A process that cannot see it stops every process, before any work, with a message saying so."""
        marker = self.root / ".shared-marker"
        token = secrets.token_hex(8) if distributed.is_main() else None
        if distributed.is_main():
            marker.write_text(token)
        token = distributed.broadcast_from_main(token)
        distributed.barrier()
        try:
            seen = marker.read_text() == token
        except OSError:
            seen = False
        if not distributed.all_true(seen):
            who = f"process {distributed.rank()} on {socket.gethostname()}"
            raise UserError(
                f"{'This' if not seen else 'Another'} process ({who if not seen else 'see its message'}) "
                f"cannot see the run directory's marker file '{marker}' that the main process wrote: the run "
                "directory must be on a filesystem every node mounts at the same path (NFS, Lustre, ...), "
                "given as the same --run-dir on every node."
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One rlhf process per run directory. flock is released by the OS if the holder dies. In a
        multi-process launch the main process holds it for all of them."""
        if not distributed.is_main():
            yield
            return
        handle = open(self.root / ".lock", "a+")  # not "w": a refused process must not blank the holder's pid
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise UserError(
                f"Run directory '{self.root}' is in use by another rlhf process. Wait for it to finish, "
                "or pass a different --run-dir."
            ) from exc
        try:
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    # -- manifest -------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.exists():
            return {"stages": {}}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"'{path}' is not valid JSON ({exc}); it was not written by rlhf.") from exc

    def update_stage(self, name: str, replace: bool = False, **entry: Any) -> None:
        """Merge `entry` into the stage's record; `replace` starts a fresh record (a new attempt)."""
        if not distributed.is_main():
            return
        manifest = self.manifest()
        stages = manifest.setdefault("stages", {})
        if replace:
            stages[name] = {}
        stages.setdefault(name, {}).update(entry)
        atomic_write_json(self.root / MANIFEST, manifest)

    def update_manifest(self, **entry: Any) -> None:
        if not distributed.is_main():
            return
        manifest = self.manifest()
        manifest.update(entry)
        atomic_write_json(self.root / MANIFEST, manifest)

    def stage_entry(self, name: str) -> dict[str, Any]:
        return self.manifest().get("stages", {}).get(name, {})

    def is_finished(self, name: str) -> bool:
        entry = self.stage_entry(name)
        return entry.get("status") == "finished" and self.stage_path(name).is_dir()

    # -- stage folders ----------------------------------------------------------------------------
    def stage_path(self, name: str) -> Path:
        return self.root / name

    def work_path(self, name: str) -> Path:
        return self.root / ".work" / name

    def staging_path(self, name: str) -> Path:
        """Where a stage writes while it runs; never mistaken for finished output."""
        path = self.root / f".{name}.incomplete"
        if distributed.is_main():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
        distributed.barrier()
        return path

    def publish(self, staging: Path, name: str) -> Path:
        """Replace the stage's folder by the completed staging folder (rename is the commit point)."""
        final = self.stage_path(name)
        if not distributed.is_main():
            return final
        if final.exists():
            old = self.root / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
        return final
