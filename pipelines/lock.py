"""One writer per dataset: a lock file OUT/_lock holding who took it (pid, host, process start, command, time).

Taken with an atomic exclusive create (FileSystem.create_exclusive), removed when the writer ends. A lock whose
holder is provably dead is stale and is taken over, with a line saying so: same host and no process with that pid
(or a different process now has that pid: its start time differs, read from /proc). A lock from another host is
never presumed dead; the error says how to remove it by hand. A lock file left empty or unreadable by a writer killed
while creating it counts as stale once older than EMPTY_LOCK_GRACE_S.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from pipelines.fs import FileSystem

__all__ = ["EMPTY_LOCK_GRACE_S", "LockedError", "dataset_lock"]

EMPTY_LOCK_GRACE_S = 30.0  # a writer fills its lock file within milliseconds of creating it


class LockedError(RuntimeError):
    """Another live writer holds the lock."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    now = _process_start(pid)
    return start is None or now is None or now == start


def _holder_is_dead(holder: dict[str, Any] | None, age_s: float) -> bool:
    if holder is None:  # empty or garbled: a writer killed between creating and filling the file
        return age_s > EMPTY_LOCK_GRACE_S
    if holder.get("host") != socket.gethostname():
        return False
    return not _alive(int(holder["pid"]), holder.get("start"))


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unreadable lock file"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('time')} ({holder.get('command')})"


@contextlib.contextmanager
def dataset_lock(fs: FileSystem, uri: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock file `uri` for the duration of the block; raise LockedError if a live writer holds it."""
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": _process_start(os.getpid()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv)[:300],
        "token": uuid.uuid4().hex,
    }
    text = json.dumps(me)
    for _ in range(2):  # the second try follows the removal of a stale lock
        if fs.create_exclusive(uri, text):
            break
        try:
            holder = json.loads(fs.read_text(uri))
            holder = holder if isinstance(holder, dict) and "pid" in holder else None
            age = time.time() - fs.mtime(uri)
        except FileNotFoundError:  # released between our create and our read: try again
            continue
        except ValueError:
            holder, age = None, time.time() - fs.mtime(uri)
        if not _holder_is_dead(holder, age):
            raise LockedError(
                f"{uri} is held by {_describe(holder)}: another writer is using this dataset; wait for it to finish "
                f"(or, if that process is gone, remove {uri})"
            )
        log(f"imagegen: removed the stale lock {uri} of {_describe(holder)}, which is no longer running")
        fs.delete(uri)
    else:
        raise LockedError(f"{uri}: could not take the lock after removing a stale one (another writer took it)")
    try:
        yield
    finally:
        try:
            if json.loads(fs.read_text(uri)).get("token") == me["token"]:
                fs.delete(uri)
        except (OSError, ValueError):
            pass
