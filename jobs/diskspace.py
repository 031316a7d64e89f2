"""A full disk, told in one line: found in an exception chain (a Python OSError with errno ENOSPC, or a Java
"No space left on device" inside a Py4J error), with the free space left where the job was writing."""
from __future__ import annotations

import errno
import os
import shutil

JAVA_ENOSPC = "No space left on device"  # java.io.IOException's message for ENOSPC (also Python's strerror)


def out_of_space(exc: BaseException) -> BaseException | None:
    """The exception in `exc`'s chain (itself, its causes and contexts) that says the disk is full, else None."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e
        if not isinstance(e, OSError) and JAVA_ENOSPC in str(e):  # Py4JJavaError: str() holds the Java trace
            return e
        todo += [e.__cause__, e.__context__]
    return None


def local_path(uri: str) -> str | None:
    """The local path of `uri` (a path or a file: URI), None for other file systems."""
    if uri.startswith("file:"):
        uri = uri[len("file:"):]
        while uri.startswith("//"):
            uri = uri[1:]
        return uri
    return None if "://" in uri else uri


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent), None when unknown."""
    p = os.path.abspath(os.fspath(path))
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
