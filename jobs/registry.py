"""The model registry: file-based, under ROOT/registry/ (the nightly loop's ROOT).

    registry/
      versions/v0001/model.pt (+ .sha256)   the checkpoint, copied (training/checkpoint.py format, verified on copy)
      versions/v0001/version.json           metrics, dataset manifest id, training config, code version, night, status
      current.json                          {"version": "v0003", ...}: the promoted model, replaced atomically
      history.jsonl                         one line per promotion or rollback (time, from, to, reason)

A version is registered once and never changed afterwards except its `status` ("candidate" -> "promoted" |
"rejected"); promotion switches `current.json` with one os.replace, so a reader sees the old pointer or the new,
never a half-written one, and a crash leaves the promoted model as it was. Rollback moves the pointer back to the
version promoted before the current one (from history.jsonl).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import re
import reprlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

from training import checkpoint

__all__ = ["Registry", "RegistryError", "code_version", "write_json_atomic"]


class RegistryError(ValueError):
    pass


VERSION_RE = re.compile(r"^v\d{4}$")  # the only names register() makes; nothing else is ever a path under versions/
_short = reprlib.Repr()
_short.maxstring = 80


def check_version_name(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise RegistryError(f"{_short.repr(version)} is not a version name: versions are v followed by four digits (v0003)")
    return version


def _read_json(path: Path, what: str) -> Any:
    """A registry file's JSON, or one line naming the file and what is wrong with it."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RegistryError(f"{path}: {what} cannot be read ({type(e).__name__}: {_short.repr(str(e))}); "
                            "restore it from a backup or remove the version") from None


def code_version() -> str:
    """The git commit of this checkout (with "+dirty" when it has changes), else the installed package version."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "imagegen " + version("imagegen")
        except PackageNotFoundError:
            return "unknown"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON to `path` through a fsynced sibling and os.replace: readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class Registry:
    root: Path  # ROOT/registry

    @classmethod
    def at(cls, nightly_root: str | os.PathLike) -> "Registry":
        return cls(Path(nightly_root) / "registry")

    @property
    def _versions(self) -> Path:
        return self.root / "versions"

    def versions(self) -> list[dict[str, Any]]:
        """Every version's record, oldest first. A damaged version.json is a record with status "damaged" and the
        reason in `error`: the other versions are still listed."""
        if not self._versions.is_dir():
            return []
        out = []
        for d in sorted(self._versions.iterdir()):
            if not (VERSION_RE.match(d.name) and (d / "version.json").is_file()):
                continue
            try:
                out.append(self._record(d.name))
            except RegistryError as e:
                out.append({"version": d.name, "status": "damaged", "error": str(e), "metrics": {}, "manifest_id": "-",
                            "code_version": "-", "night": None})
        return out

    def _record(self, version: str) -> dict[str, Any]:
        path = self._versions / version / "version.json"
        record = _read_json(path, "the version record")
        if not isinstance(record, dict) or record.get("version") != version or not isinstance(record.get("status"), str):
            raise RegistryError(f"{path}: the version record is not one the registry wrote (expected an object with "
                                f"version {version!r} and a status); restore it from a backup or remove the version")
        return record

    def get(self, version: str) -> dict[str, Any]:
        check_version_name(version)
        path = self._versions / version / "version.json"
        if not path.is_file():
            known = [v["version"] for v in self.versions()]
            raise RegistryError(f"no version {version!r} in {self.root} (versions: {', '.join(known) or 'none'})")
        return self._record(version)

    def checkpoint(self, version: str) -> Path:
        self.get(version)
        return self._versions / version / "model.pt"

    def current(self) -> str | None:
        path = self.root / "current.json"
        if not path.is_file():
            return None
        pointer = _read_json(path, "the current-version pointer")
        version = pointer.get("version") if isinstance(pointer, dict) else None
        if not (isinstance(version, str) and VERSION_RE.match(version)):
            raise RegistryError(f"{path}: the current-version pointer names no version ({_short.repr(pointer)}); "
                                "run `imagegen models promote VERSION` to set it")
        return version

    def history(self) -> list[dict[str, Any]]:
        path = self.root / "history.jsonl"
        if not path.is_file():
            return []
        events = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                raise RegistryError(f"{path}:{n}: not a history line the registry wrote ({_short.repr(line)})") from None
            events.append(event)
        return events

    @contextlib.contextmanager
    def _writer(self):
        """One writer of current.json and history.jsonl at a time (an flock on registry/.lock, released on exit or death)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def register(self, ckpt: str | os.PathLike, *, metrics: dict[str, Any], manifest_id: str, config: dict[str, Any],
                 night: str | None = None, notes: str = "") -> dict[str, Any]:
        """Copy a verified checkpoint in as the next version (status "candidate")."""
        checkpoint.load(ckpt)  # refuses a corrupt or unsafe file before it enters the registry
        with self._writer():
            return self._register(ckpt, metrics=metrics, manifest_id=manifest_id, config=config, night=night, notes=notes)

    def _register(self, ckpt, *, metrics, manifest_id, config, night, notes) -> dict[str, Any]:
        self._versions.mkdir(parents=True, exist_ok=True)
        n = 1 + max((int(d.name[1:]) for d in self._versions.iterdir() if d.name[1:].isdigit()), default=0)
        version = f"v{n:04d}"
        staging = self._versions / f".{version}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        shutil.copyfile(ckpt, staging / "model.pt")
        shutil.copyfile(f"{ckpt}.sha256", staging / "model.pt.sha256")
        record = {"version": version, "created": _now(), "status": "candidate", "metrics": metrics,
                  "manifest_id": manifest_id, "config": config, "code_version": code_version(), "night": night,
                  "source_checkpoint": str(ckpt), "notes": notes}
        write_json_atomic(staging / "version.json", record)
        os.replace(staging, self._versions / version)  # a version appears whole or not at all
        return record

    def _set_status(self, version: str, status: str) -> None:
        record = self.get(version) | {"status": status}
        write_json_atomic(self._versions / version / "version.json", record)

    def promote(self, version: str, reason: str, action: str = "promote") -> None:
        """Make `version` current: one atomic pointer switch, then a history line."""
        with self._writer():
            self._promote(version, reason, action)

    def _promote(self, version: str, reason: str, action: str) -> None:
        self.get(version)
        before = self.current()
        self._set_status(version, "promoted")
        write_json_atomic(self.root / "current.json", {"version": version, "since": _now(), "reason": reason})
        with open(self.root / "history.jsonl", "a") as f:
            f.write(json.dumps({"time": _now(), "action": action, "from": before, "to": version, "reason": reason}) + "\n")

    def reject(self, version: str) -> None:
        with self._writer():
            self._set_status(version, "rejected")

    def rollback(self, reason: str = "manual rollback") -> str:
        """Point `current` back at the version that was current before it; returns that version."""
        with self._writer():
            return self._rollback(reason)

    def _rollback(self, reason: str) -> str:
        current = self.current()
        if current is None:
            raise RegistryError(f"{self.root}: nothing is promoted, nothing to roll back")
        for event in reversed(self.history()):
            if event["to"] == current and event["from"] is not None:
                self._promote(event["from"], reason, action="rollback")
                return event["from"]
        raise RegistryError(f"{self.root}: {current} is the first promoted version; there is nothing before it")
