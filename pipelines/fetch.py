"""Fetching the URLs of a URL table inside the decode stage: politely, bounded, every URL to one outcome.

Each decode task fetches its batch's URLs with a bounded thread pool (`fetch_threads`), at most `fetch_per_host`
at a time per host, and decodes what arrives in the same pass: no copy on disk. Per URL:
  * only http: and https: are fetched (a URL table never reads a local file: file:/// is refused);
  * a host in `disallowed_domains` (or below one) is `opted_out` without a request;
  * `fetch_timeout_s` bounds each connect and read, and the whole response (a trickling body cannot hold a task);
  * 429 and 503 are retried up to `fetch_retries` times, after `Retry-After` seconds when given (capped at
    RETRY_AFTER_CAP_S), else after an exponential backoff; other 5xx, timeouts and resets are retried the same way;
  * redirects are followed at most `fetch_max_redirects` times; a loop or a longer chain is an `http_error`;
  * a body above `max_file_bytes` is `too_large`, decided from Content-Length, else while reading (never after);
  * `X-Robots-Tag: noai` / `noimageai` (any user agent) is `opted_out` when `respect_opt_out` (default on);
  * the request names the tool (`fetch_user_agent`) and asks for no content encoding (a gzip bomb stays bytes
    the decoder refuses).
The outcome is the bytes and the final URL, or a reject reason from the contract (schemas.images.RejectReason)
with a detail that says what happened (status, host, attempts).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import email.utils
import http.client
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from schemas.images import RejectReason

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
RETRY_AFTER_CAP_S = 30.0      # a server asking for longer is given up on for this run (a transient reject)
BACKOFF_S = 0.5               # first backoff; doubled per attempt
CHUNK = 64 * 1024
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    timeout_s: float
    retries: int
    threads: int
    per_host: int
    max_redirects: int
    max_bytes: int
    user_agent: str
    respect_opt_out: bool
    disallowed_domains: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Fetched:
    """Bytes and the URL they came from after redirects, or why there are none."""
    data: bytes | None = None
    final_url: str | None = None
    reason: RejectReason | None = None
    detail: str = ""


class _Refused(Exception):
    def __init__(self, reason: RejectReason, detail: str, retry: bool = False, wait_s: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.retry, self.wait_s = reason, detail, retry, wait_s


class _Redirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, limit: int):
        super().__init__()
        self.max_redirections = limit


def is_fetchable(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def host_disallowed(host: str, domains: frozenset[str]) -> bool:
    """`host` is a listed domain or below one (img.example.com under example.com)."""
    host = host.lower().rstrip(".")
    parts = host.split(".")
    return any(".".join(parts[i:]) in domains for i in range(len(parts)))


def read_domains(lines: Iterable[str]) -> frozenset[str]:
    """A --disallowed-domains file: one domain per line; blank lines and # comments ignored."""
    out = set()
    for line in lines:
        name = line.split("#", 1)[0].strip().lower().rstrip(".")
        if name:
            out.add(name)
    return frozenset(out)


def _opted_out(headers: http.client.HTTPMessage) -> str | None:
    """The X-Robots-Tag directive that opts this response out of AI use, if any (`ua: noai` counts for every ua)."""
    for value in headers.get_all("X-Robots-Tag") or []:
        for part in value.split(","):
            token = part.rsplit(":", 1)[-1].strip().lower()
            if token in OPT_OUT_DIRECTIVES:
                return token
    return None


def _retry_after(headers: http.client.HTTPMessage | None) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when is not None else None


def _read_body(resp, s: FetchSettings, deadline: float) -> bytes:
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > s.max_bytes:
        raise _Refused(RejectReason.TOO_LARGE, f"Content-Length {length} bytes, limit max_file_bytes={s.max_bytes}; not read")
    buf = bytearray()
    while True:
        if time.monotonic() > deadline:
            raise _Refused(RejectReason.TIMEOUT, f"the response took longer than {s.timeout_s:g} s", retry=True)
        chunk = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > s.max_bytes:
            raise _Refused(RejectReason.TOO_LARGE, f"body above max_file_bytes={s.max_bytes} bytes; stopped reading")


def _attempt(url: str, s: FetchSettings) -> Fetched:
    request = urllib.request.Request(url, headers={"User-Agent": s.user_agent, "Accept-Encoding": "identity",
                                                   "Accept": "image/*,*/*;q=0.5"})
    opener = urllib.request.build_opener(_Redirects(s.max_redirects))
    deadline = time.monotonic() + 2 * s.timeout_s
    try:
        with opener.open(request, timeout=s.timeout_s) as resp:
            final = resp.geturl()
            if host_disallowed(urllib.parse.urlsplit(final).hostname or "", s.disallowed_domains):
                raise _Refused(RejectReason.OPTED_OUT, f"redirected to {final}, a disallowed domain")
            directive = _opted_out(resp.headers) if s.respect_opt_out else None
            if directive is not None:
                raise _Refused(RejectReason.OPTED_OUT, f"X-Robots-Tag: {directive}")
            return Fetched(data=_read_body(resp, s, deadline), final_url=final)
    except urllib.error.HTTPError as e:
        if e.code in (301, 302, 303, 307, 308):
            raise _Refused(RejectReason.HTTP_ERROR, f"HTTP {e.code}: {e.reason} (more than {s.max_redirects} redirects, or a loop)") from None
        retry = e.code in RETRY_STATUS
        raise _Refused(RejectReason.HTTP_ERROR, f"HTTP {e.code}", retry=retry, wait_s=_retry_after(e.headers)) from None
    except urllib.error.URLError as e:
        cause = e.reason
        if isinstance(cause, socket.gaierror):
            raise _Refused(RejectReason.DNS_ERROR, f"cannot resolve the host: {cause}") from None
        if isinstance(cause, (TimeoutError, socket.timeout)):
            raise _Refused(RejectReason.TIMEOUT, f"no answer within {s.timeout_s:g} s", retry=True) from None
        raise _Refused(RejectReason.CONNECT_ERROR, f"{type(cause).__name__}: {cause}", retry=True) from None
    except (TimeoutError, socket.timeout):
        raise _Refused(RejectReason.TIMEOUT, f"no data within {s.timeout_s:g} s", retry=True) from None
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        raise _Refused(RejectReason.READ_ERROR, f"the connection broke mid-response: {type(e).__name__}: {e}", retry=True) from None


def fetch(url: str, s: FetchSettings, slots: "_HostSlots | None" = None) -> Fetched:
    """One URL to its bytes or its reject, with the retries and limits above."""
    if not is_fetchable(url):
        return Fetched(reason=RejectReason.READ_ERROR, detail=f"not an http(s) URL: {url[:200]!r}; URL tables fetch only http and https")
    host = urllib.parse.urlsplit(url).hostname or ""
    if host_disallowed(host, s.disallowed_domains):
        return Fetched(reason=RejectReason.OPTED_OUT, detail=f"{host} is in disallowed_domains; not fetched")
    attempt, wait = 0, BACKOFF_S
    while True:
        attempt += 1
        try:
            with slots.hold(host) if slots is not None else contextlib.nullcontext():
                return _attempt(url, s)
        except _Refused as r:
            if not r.retry or attempt > s.retries:
                return Fetched(reason=r.reason, detail=f"{r.detail} ({attempt} attempt{'s' if attempt > 1 else ''})")
            pause = wait if r.wait_s is None else r.wait_s
            if pause > RETRY_AFTER_CAP_S:
                return Fetched(reason=r.reason, detail=f"{r.detail}; Retry-After {pause:g} s is above {RETRY_AFTER_CAP_S:g} s")
            time.sleep(pause)
            wait *= 2


class _HostSlots:
    """At most `per_host` requests at a time to one host, across the task's threads."""

    def __init__(self, per_host: int):
        self._lock = threading.Lock()
        self._sems: dict[str, threading.Semaphore] = collections.defaultdict(lambda: threading.Semaphore(per_host))

    def hold(self, host: str) -> threading.Semaphore:
        with self._lock:
            return self._sems[host]


def fetch_all(urls: list[str], s: FetchSettings) -> list[Fetched]:
    """Each URL's outcome, in order, fetched `s.threads` at a time."""
    if not urls:
        return []
    slots = _HostSlots(s.per_host)
    with ThreadPoolExecutor(max_workers=min(s.threads, len(urls)), thread_name_prefix="imagegen-fetch") as pool:
        return list(pool.map(lambda u: fetch(u, s, slots), urls))
