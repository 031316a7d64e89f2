"""Labels under hostile or sloppy input: literal keys, NFC classes, broken sidecars refused in one line,
keys outside the inputs, and a sidecar that never rides in a task closure. Real Spark, real files."""
from __future__ import annotations

import json
import pickle
import unicodedata
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.preprocess import main as preprocess_main
from pipelines.config import LabelMode, PreprocessConfig
from pipelines.labels import (
    LabelResolver,
    Sidecar,
    SidecarError,
    label_from_dirs,
    parse_sidecar,
)
from pipelines.preprocess import run_preprocess
from pipelines.sources import classify, load_sources
from tests.pipelines.imagefactory import encode, photo_like

CFG = PreprocessConfig()


def _jpeg(seed: int) -> bytes:
    return encode(photo_like(40, 40, seed=seed), "JPEG")


def _rows(table: Path) -> list[dict]:
    return [r for f in sorted(table.rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _load(spark, path: Path, roots=()) -> Sidecar:
    return Sidecar.load(spark, f"file:{path}", str(path), tuple(roots))


def _labels(spark, root: Path, sidecar: Path) -> dict[str, tuple[str | None, str | None]]:
    """source_uri -> (label, matched key) for every file under `root`, through the Spark join."""
    spec = classify(spark, str(root))
    side = _load(spark, sidecar, [spec.root])
    df = side.attach(load_sources(spark, [spec], CFG, 2, exclude=(f"file:{sidecar}",)).df, 2)
    return {r["source_uri"]: (r["label"], r["label_key"]) for r in df.collect()}


# ----------------------------------------------------------------------------- matching
def test_keys_are_literal_and_matched_uri_then_relative_then_basename(spark, tmp_path):
    root = tmp_path / "in"
    for rel in ("sub/hash#1.png", "sub/1.png", "a/x.jpg", "b/x.jpg", "c/x.jpg", "q/what?.png", "z.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_jpeg(len(rel)))
    sidecar = tmp_path / "labels.csv"
    sidecar.write_text("path,label\nhash#1.png,hashed\n1.png,plain\n"
                       f"file:{root}/a/x.jpg,by-uri\na/x.jpg,by-rel\nb/x.jpg,by-rel-b\nx.jpg,by-base\n./q/what?.png,odd\n")
    got = _labels(spark, root, sidecar)
    base = f"file:{root}"
    assert got[f"{base}/sub/hash#1.png"] == ("hashed", "hash#1.png")  # not the key "1.png" after a '#'
    assert got[f"{base}/sub/1.png"] == ("plain", "1.png")
    assert got[f"{base}/a/x.jpg"] == ("by-uri", f"{base}/a/x.jpg")
    assert got[f"{base}/b/x.jpg"] == ("by-rel-b", "b/x.jpg")
    assert got[f"{base}/c/x.jpg"] == ("by-base", "x.jpg")
    assert got[f"{base}/q/what?.png"] == ("odd", "q/what?.png")
    assert got[f"{base}/z.jpg"] == (None, None)


# ----------------------------------------------------------------------------- NFC
def test_nfc_and_nfd_folder_names_are_one_class(spark, tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd and label_from_dirs(f"{nfd}/1.jpg") == nfc
    src = tmp_path / "src"
    for i, name in enumerate((nfc, nfd)):
        (src / name).mkdir(parents=True)
        (src / name / f"{i}.jpg").write_bytes(_jpeg(40 + i))
    (src / "tea").mkdir()
    (src / "tea" / "t.jpg").write_bytes(_jpeg(50))
    cfg = PreprocessConfig(resolution=32, labels=LabelMode.DIRS, min_size=16, dedup=False, progress_interval_s=60)
    m = run_preprocess(spark, [str(src)], str(tmp_path / "out"), cfg, log=lambda s: None).manifest
    assert m.classes == [nfc, "tea"] and m.label_counts == {nfc: 2, "tea": 1}
    assert {r["label"] for r in _rows(tmp_path / "out" / "images")} == {nfc, "tea"}


def test_sidecar_labels_are_nfc_too():
    nfd = unicodedata.normalize("NFD", "café")
    assert parse_sidecar(f"path,label\na.jpg,{nfd}\n", "l.csv") == {"a.jpg": unicodedata.normalize("NFC", "café")}


# ----------------------------------------------------------------------------- broken sidecars: one line each
BROKEN = [
    ("dup.csv", b"path,label\na.jpg,x\nb.jpg,y\na.jpg,z\n",
     r"dup\.csv: line 4: key 'a\.jpg' is already given on line 2; keep one entry per path"),
    ("dup.json", b'{\n  "a.jpg": "x",\n  "b.jpg": "y",\n  "a.jpg": "z"\n}\n',
     r"dup\.json: line 4: key 'a\.jpg' is already given on line 2; keep one entry per path"),
    ("dup-list.json", json.dumps([{"path": "a.jpg", "label": "x"}, {"path": "./a.jpg", "label": "x"}], indent=1).encode(),
     r"dup-list\.json: line 6: key 'a\.jpg' is already given on line 2"),
    ("quote.csv", b'path,label\na.jpg,x\n"b.jpg,y\nc.jpg,z\nd.jpg,w\n',
     r"quote\.csv: line 3: a quoted field opened on this line is never closed .*; close the quote"),
    ("latin1.csv", "path,label\na.jpg,x\nb.jpg,caf\u00e9\n".encode("latin-1"),
     r"latin1\.csv: line 3: not UTF-8 \(byte 0xe9 at column 10\); save the file as UTF-8"),
    ("latin1.json", '{"a.jpg": "x",\n "b.jpg": "caf\u00e9"}'.encode("latin-1"),
     r"latin1\.json: line 2: not UTF-8 \(byte 0xe9\); save the file as UTF-8"),
    ("bad.json", b'{"a.jpg": "x",\n "b.jpg" "y"}', r"bad\.json: line 2: not valid JSON \(expected ':'"),
    ("noheader.csv", b"a.jpg,x\n", r"noheader\.csv: line 1: expected CSV header columns 'path'"),
]


@pytest.mark.parametrize("name,data,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_sidecar_is_one_line_naming_file_line_and_fix(spark, tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SidecarError, match=message) as info:
        _load(spark, path)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(SidecarError, match=message):  # the driver-side parser says the same
        parse_sidecar(data, str(path))


def test_the_cli_prints_a_broken_sidecar_as_one_line(spark, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(_jpeg(1))
    sidecar = tmp_path / "labels.csv"
    sidecar.write_bytes('path,label\na.jpg,caf\u00e9\n'.encode("latin-1"))
    rc = preprocess_main([str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--labels", str(sidecar)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imagegen preprocess:")]
    assert rc == 2
    assert err == [f"imagegen preprocess: {sidecar}: line 2: not UTF-8 (byte 0xe9 at column 10); save the file as UTF-8"]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_utf8_bom_is_accepted(spark, tmp_path):
    csv_path, json_path = tmp_path / "bom.csv", tmp_path / "bom.json"
    csv_path.write_bytes(b"\xef\xbb\xbfpath,label\na.jpg,x\n")
    json_path.write_bytes(b'\xef\xbb\xbf{"a.jpg": "x"}')
    for path in (csv_path, json_path):
        side = _load(spark, path)
        assert side.entries == 1 and [tuple(r) for r in side.df.select("key", "label").collect()] == [("a.jpg", "x")]


# ----------------------------------------------------------------------------- keys outside the inputs
@pytest.mark.parametrize("key", ["../escape.jpg", "cat/../../escape.jpg", "/etc/passwd", "file:///etc/shadow"])
def test_a_key_outside_the_input_roots_is_refused(spark, tmp_path, key):
    root = tmp_path / "in"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.jpg").write_bytes(_jpeg(1))
    sidecar = tmp_path / "labels.csv"
    sidecar.write_text(f"path,label\ncat/a.jpg,cat\n{key},evil\n")
    with pytest.raises(SidecarError, match=r"labels\.csv: line 3: key '.*' is outside the inputs; keys are source URIs"):
        _labels(spark, root, sidecar)


def test_an_absolute_key_naming_a_listed_file_outside_the_list_folder_is_allowed(spark, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.jpg").write_bytes(_jpeg(1))
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "in.txt").write_text(f"{elsewhere / 'a.jpg'}\n")
    sidecar = tmp_path / "labels.json"
    sidecar.write_text(json.dumps({str(elsewhere / "a.jpg"): "ok"}))  # a plain absolute path: the file: spelling
    spec = classify(spark, str(lists / "in.txt"))
    side = _load(spark, sidecar, [spec.root])
    rows = side.attach(load_sources(spark, [spec], CFG, 2).df, 2).collect()
    assert [(r["source_uri"], r["label"]) for r in rows] == [(f"file:{elsewhere}/a.jpg", "ok")]


# ----------------------------------------------------------------------------- scale
def test_the_sidecar_never_rides_in_a_task_closure(spark, tmp_path):
    """50,000 entries: the resolver the decode stage pickles into every task is the same few bytes as one
    without a sidecar; the entries stay in a Spark DataFrame (broadcast-joined at this size)."""
    sidecar = tmp_path / "big.csv"
    with sidecar.open("w") as f:
        f.write("path,label\n")
        for i in range(50_000):
            f.write(f"dir/{i:06d}.jpg,class{i % 100}\n")
    side = _load(spark, sidecar)
    assert side.entries == 50_000
    pickled = pickle.dumps(LabelResolver(LabelMode.SIDECAR, side))
    assert len(pickled) == len(pickle.dumps(LabelResolver(LabelMode.SIDECAR))) < 300
    assert pickle.loads(pickled) == LabelResolver(LabelMode.SIDECAR)
