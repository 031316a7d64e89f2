"""`imagegen dedup-eval` on a hand-made duplicates/ Parquet and truth files (CSV and JSON)."""
from __future__ import annotations

import json
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import dedup_eval
from schemas import SCHEMA_VERSION, Manifest
from schemas.images import DUPLICATES_ARROW

# Truth: {a1, a2, a3}, {b1, b2}, {c1}, {d1}. Our decisions: a2, a3 -> a1 (right), b2 -> c1 (wrong
# group: misses b1~b2 and invents b2~c1), x9 -> a1 (not in the truth: not scored).
# By hand: predicted pairs a1a2 a1a3 a2a3 b2c1 = 4; true pairs a1a2 a1a3 a2a3 b1b2 = 4; both = 3.
DUPS = [("a2", "a1", "near", 3, 0.97), ("a3", "a1", "exact", 0, 1.0), ("b2", "c1", "near", 9, 0.91), ("x9", "a1", "near", 2, 0.99)]
TRUTH = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2"], "C": ["c1"], "D": ["d1"]}


@pytest.fixture
def dataset(tmp_path):
    out = tmp_path / "out"
    part = out / "duplicates" / "run_id=r1"
    part.mkdir(parents=True)
    table = pa.Table.from_pylist([dict(source_uri=s, kept_source_uri=k, kind=t, distance=d, similarity=m, run_id="r1")
                                  for s, k, t, d, m in DUPS],
                                 schema=DUPLICATES_ARROW)
    pq.write_table(table.drop(["run_id"]), part / "part-0.parquet")
    img = out / "images" / "run_id=r1"
    img.mkdir(parents=True)
    pq.write_table(pa.table({"source_uri": ["a1", "b1", "c1"]}), img / "part-0.parquet")  # d1 was rejected
    # an unlisted orphan (a crashed run's): dedup-eval must not read it
    (out / "duplicates" / "run_id=crashed").mkdir()
    pq.write_table(table.drop(["run_id"]), out / "duplicates" / "run_id=crashed" / "part-0.parquet")
    files = {"images": [{"path": "images/run_id=r1/part-0.parquet", "rows": 3}], "rejects": [],
             "duplicates": [{"path": "duplicates/run_id=r1/part-0.parquet", "rows": len(DUPS)}]}
    (out / "manifest.json").write_text(Manifest(
        schema_version=SCHEMA_VERSION, run_id="r1", resolution=32, channels=3, pixel_encoding="raw", classes=[],
        counts={}, label_counts={}, pixel_mean=[0.5] * 3, pixel_std=[0.2] * 3, config={}, input_fingerprint="x",
        timings={}, versions={}, files=files).to_json())
    csv_path = tmp_path / "truth.csv"
    csv_path.write_text("source_uri,group\n" + "".join(f"{u},{g}\n" for g, us in TRUTH.items() for u in us))
    json_path = tmp_path / "truth.json"
    json_path.write_text(json.dumps(TRUTH))
    return out, csv_path, json_path


def test_scores_match_hand_count(dataset):
    out, csv_path, json_path = dataset
    for truth in (csv_path, json_path):
        r = dedup_eval.evaluate(dedup_eval.parse(["--dataset", str(out), "--truth", str(truth)]))
        assert (r.scored_images, r.predicted_pairs, r.true_pairs, r.true_positive_pairs) == (7, 4, 4, 3)
        assert r.precision == pytest.approx(0.75) and r.recall == pytest.approx(0.75) and r.f1 == pytest.approx(0.75)
        assert r.dropped_not_in_truth == 1 and r.truth_not_found == 1  # x9; d1
        # 7 scored images = 21 pairs: b2~c1 merged wrongly, b1~b2 missed, the other 16 distinct in both.
        assert (r.false_positive_pairs, r.false_negative_pairs, r.true_negative_pairs) == (1, 1, 16)
        assert [p[:2] for p in r.false_merges] == [["b2", "c1"]] and [p[:2] for p in r.misses] == [["b1", "b2"]]
        assert r.false_merges[0][2]["distance"] == 9 and r.false_merges[0][2]["similarity"] == pytest.approx(0.91)


def test_perfect_and_empty_decisions():
    truth = {"a": "1", "b": "1", "c": "2"}
    assert dedup_eval.score(truth, [("b", "a")]).f1 == 1.0
    r = dedup_eval.score(truth, [])
    assert (r.precision, r.recall) == (1.0, 0.0)


def test_cli_prints_scores_and_rejects_bad_truth(dataset, tmp_path, venv_bin, subprocess_env):
    out, csv_path, _ = dataset
    run = subprocess.run([str(venv_bin / "imagegen"), "dedup-eval", "--duplicates", str(out / "duplicates" / "run_id=r1"), "--truth", str(csv_path), "--json"],
                         capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert (got["precision"], got["recall"], got["true_positive_pairs"]) == (0.75, 0.75, 3)
    run = subprocess.run([str(venv_bin / "imagegen"), "dedup-eval", "--duplicates", str(out / "duplicates" / "run_id=r1"), "--truth", str(csv_path)],
                         capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "false merges (distinct images we merged), first 1:" in run.stdout and "pHash distance 9, similarity 0.9100" in run.stdout
    assert "misses (copies we kept apart), first 1:" in run.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("uri,cluster\na1,A\n")
    run = subprocess.run([str(venv_bin / "imagegen"), "dedup-eval", "--duplicates", str(out / "duplicates" / "run_id=r1"), "--truth", str(bad)],
                         capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert run.returncode == 2 and "expected a CSV header with columns source_uri,group" in run.stderr
