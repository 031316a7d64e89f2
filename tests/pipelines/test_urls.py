"""URL tables fetched inside the decode stage (14/14), against a real HTTP server on 127.0.0.1 started by the test:
every route a collection meets in the wild ends as the outcome the contract names, each URL exactly once."""
from __future__ import annotations

import functools
import gzip
import http.server
import json
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import PreprocessConfig
from pipelines.fetch import fetch, host_disallowed, read_domains
from pipelines.preprocess import run_preprocess
from schemas import Manifest, listed_files
from tests.pipelines.imagefactory import encode, photo_like

MAX_BYTES = 2 * 1024 * 1024
FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "webp": "WEBP", "tif": "TIFF"}


@functools.cache
def _gzip_bomb() -> bytes:
    """64 MiB of zeros in ~64 KiB of gzip."""
    return gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)


def _image(name: str, fmt: str = "PNG") -> bytes:
    return encode(photo_like(96, 80, seed=sum(map(ord, name))), fmt)


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: Counter = Counter()
    agents: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "image/png", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: C901  one branch per route, read top to bottom
        path = self.path.split("?")[0]
        self.hits[path] += 1
        self.agents.append(self.headers.get("User-Agent", ""))
        name = path.rsplit("/", 1)[-1]
        if path.startswith("/img/"):
            ext = name.rsplit(".", 1)[-1]
            return self._send(200, _image(name, FORMATS.get(ext, "PNG")), f"image/{ext}")
        if path == "/404":
            return self._send(404, b"no", "text/plain")
        if path == "/500":
            return self._send(500, b"broken", "text/plain")
        if path == "/slow":
            time.sleep(3)
            return self._send(200, _image("slow"))
        if path == "/429":  # busy once, then fine
            if self.hits[path] == 1:
                return self._send(429, b"later", "text/plain", Retry_After="1")
            return self._send(200, _image("after-429"))
        if path.startswith("/hop/"):  # /hop/3 -> /hop/2 -> /hop/1 -> /hop/0 -> an image
            left = int(name)
            if left == 0:
                return self._send(200, _image("hops"))
            self.send_response(302)
            self.send_header("Location", f"/hop/{left - 1}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if path == "/html-as-jpeg":
            return self._send(200, b"<html><body>not found</body></html>", "image/jpeg")
        if path == "/png-as-html":
            return self._send(200, _image("png-as-html"), "text/html")
        if path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return None
        if path == "/gzip-bomb":  # sent compressed although we asked for identity
            return self._send(200, _gzip_bomb(), "image/png", Content_Encoding="gzip")
        if path == "/reset":  # promises 100 kB, sends 1 kB, then resets the connection
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(_image("reset")[:1000])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return None
        if path == "/noai":
            return self._send(200, _image("noai"), X_Robots_Tag="noindex, noai")
        if path == "/noimageai-for-one-bot":
            return self._send(200, _image("bot"), X_Robots_Tag="somebot: noimageai")
        return self._send(404, b"unknown route", "text/plain")


@pytest.fixture(scope="module")
def server():
    _gzip_bomb()  # made before the first request, so that it never counts against a timeout
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(**changes) -> PreprocessConfig:
    return PreprocessConfig(resolution=32, url_column="url", fetch_timeout_s=1.0, fetch_retries=1,
                            max_file_bytes=MAX_BYTES, **changes)


def _expected(base: str) -> dict[str, str]:
    """URL -> where it must end: "written", or the reject reason."""
    out = {f"{base}/img/a.{ext}": "written" for ext in FORMATS}
    out.update({
        f"{base}/404": "http_error", f"{base}/500": "http_error", f"{base}/slow": "timeout",
        f"{base}/429": "written", f"{base}/hop/3": "written", f"{base}/loop": "http_error",
        f"{base}/html-as-jpeg": "not_an_image", f"{base}/png-as-html": "written", f"{base}/endless": "too_large",
        f"{base}/gzip-bomb": "not_an_image", f"{base}/reset": "read_error", f"{base}/noai": "opted_out",
        f"{base}/noimageai-for-one-bot": "opted_out", f"http://127.0.0.1:{_closed_port()}/x.png": "connect_error",
        "file:///etc/passwd": "read_error",
    })
    return out


def test_each_route_ends_as_the_contract_says(server):
    settings = _cfg().fetch_settings()
    for url, want in _expected(server).items():
        got = fetch(url, settings)
        outcome = "written" if got.reason is None else got.reason.value
        if want in ("written", "not_an_image"):  # the bytes arrived; the decoder decides
            assert got.reason is None and got.data, (url, got)
        else:
            assert outcome == want, (url, got)
    hop = fetch(f"{server}/hop/3", settings)
    assert hop.final_url == f"{server}/hop/0"
    assert fetch(f"{server}/hop/3", _cfg(fetch_max_redirects=2).fetch_settings()).reason.value == "http_error"
    assert "429" not in fetch(f"{server}/429", settings).detail
    assert all(a.startswith("imagegen/") for a in _Handler.agents)


def test_opt_out_is_a_setting_and_domains_are_matched_with_their_subdomains(server):
    assert fetch(f"{server}/noai", _cfg(respect_opt_out=False).fetch_settings()).reason is None
    domains = read_domains(["# hosts never fetched", "Example.COM.", "", "127.0.0.1  # loopback"])
    assert domains == frozenset({"example.com", "127.0.0.1"})
    assert host_disallowed("img.cdn.example.com", domains) and not host_disallowed("notexample.com", domains)
    got = fetch(f"{server}/img/a.png", _cfg(disallowed_domains=("127.0.0.1",)).fetch_settings())
    assert got.reason.value == "opted_out" and "disallowed" in got.detail


def _outcomes(out: Path) -> dict[str, str]:
    m = Manifest.read(str(out))
    found: dict[str, str] = {}
    for path in listed_files(str(out), m, "images"):
        for uri in pq.read_table(path, columns=["source_uri"]).column(0).to_pylist():
            assert uri not in found
            found[uri] = "written"
    for path in listed_files(str(out), m, "rejects"):
        t = pq.read_table(path, columns=["source_uri", "reason"])
        for uri, reason in zip(t.column(0).to_pylist(), t.column(1).to_pylist()):
            assert uri not in found
            found[uri] = reason
    return found


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_url_table_through_the_job_places_every_url_once(spark, server, tmp_path, fmt):
    expected = _expected(server)
    urls = list(expected) + [f"{server}/img/a.png"]  # a repeated URL is one input
    table = tmp_path / f"urls.{fmt}"
    if fmt == "csv":
        table.write_text("url,caption\n" + "".join(f"{u},caption {i}\n" for i, u in enumerate(urls)) + ",no url here\n")
    else:
        table.write_text("".join(json.dumps({"url": u, "caption": f"caption {i}"}) + "\n" for i, u in enumerate(urls))
                         + json.dumps({"caption": "no url here"}) + "\n")
    out = tmp_path / "out"
    result = run_preprocess(spark, [str(table)], str(out), _cfg(dedup=False), log=lambda s: None)
    found = _outcomes(out)
    no_url = [u for u in found if u not in expected]
    assert len(no_url) == 1 and found[no_url[0]] == "read_error" and "#row=" in no_url[0]
    assert {u: found[u] for u in expected} == expected
    counts = result.manifest.counts
    assert counts["inputs"] == len(expected) + 1 and counts["repeated_inputs"] == 1
    assert counts["written"] + sum(counts["rejected"].values()) == counts["inputs"]
