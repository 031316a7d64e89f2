"""`imagegen doctor --json`, run as users run it, checked field by field."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from jobs.doctor import PINS, Check, Status, _version_matches, format_table

REPO = Path(__file__).resolve().parents[2]


def test_doctor_json_reports_every_check(venv_bin, subprocess_env):
    proc = subprocess.run([str(venv_bin / "imagegen"), "doctor", "--json"], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    for c in report["checks"]:
        assert set(c) == {"name", "status", "found", "expected", "detail", "seconds"}
        assert c["status"] in ("ok", "warn"), c
    assert checks["python"]["found"].startswith("3.11.")
    for name in PINS:
        assert _version_matches(checks[f"package {name}"]["found"], PINS[name])
    assert checks["package pyarrow"]["found"] == "14.0.2"
    assert checks["package petastorm"]["found"] == "0.12.1"
    assert int(checks["java"]["found"]) >= 17
    assert checks["spark local job"]["found"].startswith("spark 4.0.") and checks["spark local job"]["found"].endswith("sum=499500")
    assert checks["petastorm read"]["found"] == "10 rows"
    assert "torch=yes" in checks["horovod build"]["found"] and "gloo=yes" in checks["horovod build"]["found"]
    assert re.search(r"cuda=(yes|no)", checks["torch device"]["found"])
    assert re.match(r"\d+ usable of \d+", checks["cpu cores"]["found"])


def test_doctor_pins_agree_with_constraints():
    pinned = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#"))
    for name, pin in PINS.items():
        if name == "horovod":  # built from source by scripts/setup.sh, not in the constraints file
            assert f"HOROVOD_VERSION={pin}" in (REPO / "scripts" / "setup.sh").read_text()
            continue
        assert _version_matches(pinned[name], pin), (name, pinned[name], pin)


def test_version_matching_rules():
    assert _version_matches("2.13.0+cu130", "2.13.")  # a CUDA build of the pinned torch is fine
    assert _version_matches("1.26.4", "<2") and not _version_matches("2.0.0", "<2")
    assert _version_matches("14.0.2", "14.0.2") and not _version_matches("15.0.0", "14.0.2")
    assert not _version_matches("4.1.0", "4.0.")


def test_failed_check_prints_its_reason():
    table = format_table([Check("java", Status.FAIL, "11", ">= 17", "java 11 is too old")])
    assert "FAIL" in table and "java: java 11 is too old" in table
