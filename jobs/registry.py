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

import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from training import checkpoint

__all__ = ["Registry", "RegistryError", "code_version", "write_json_atomic"]


class RegistryError(ValueError):
    pass


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
        """Every version's record, oldest first."""
        if not self._versions.is_dir():
            return []
        return [json.loads((d / "version.json").read_text()) for d in sorted(self._versions.iterdir())
                if (d / "version.json").is_file()]

    def get(self, version: str) -> dict[str, Any]:
        path = self._versions / version / "version.json"
        if not path.is_file():
            known = [v["version"] for v in self.versions()]
            raise RegistryError(f"no version {version!r} in {self.root} (versions: {', '.join(known) or 'none'})")
        return json.loads(path.read_text())

    def checkpoint(self, version: str) -> Path:
        self.get(version)
        return self._versions / version / "model.pt"

    def current(self) -> str | None:
        path = self.root / "current.json"
        return json.loads(path.read_text())["version"] if path.is_file() else None

    def history(self) -> list[dict[str, Any]]:
        path = self.root / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def register(self, ckpt: str | os.PathLike, *, metrics: dict[str, Any], manifest_id: str, config: dict[str, Any],
                 night: str | None = None, notes: str = "") -> dict[str, Any]:
        """Copy a verified checkpoint in as the next version (status "candidate")."""
        checkpoint.load(ckpt)  # refuses a corrupt or unsafe file before it enters the registry
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
        self.get(version)
        before = self.current()
        self._set_status(version, "promoted")
        write_json_atomic(self.root / "current.json", {"version": version, "since": _now(), "reason": reason})
        with open(self.root / "history.jsonl", "a") as f:
            f.write(json.dumps({"time": _now(), "action": action, "from": before, "to": version, "reason": reason}) + "\n")

    def reject(self, version: str) -> None:
        self._set_status(version, "rejected")

    def rollback(self, reason: str = "manual rollback") -> str:
        """Point `current` back at the version that was current before it; returns that version."""
        current = self.current()
        if current is None:
            raise RegistryError(f"{self.root}: nothing is promoted, nothing to roll back")
        for event in reversed(self.history()):
            if event["to"] == current and event["from"] is not None:
                self.promote(event["from"], reason, action="rollback")
                return event["from"]
        raise RegistryError(f"{self.root}: {current} is the first promoted version; there is nothing before it")
