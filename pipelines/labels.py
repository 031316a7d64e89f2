"""Labels: from directory names, from a CSV/JSON sidecar (path -> label), or none.

dirs: the label is the name of the file's parent directory, below the input root
      (`ROOT/cat/001.jpg` -> "cat"; `ROOT/a/b/002.jpg` -> "b"; a file directly in ROOT has no
      label). Tar members use the member path (`shard.tar#cat/001.jpg` -> "cat"); URI-list
      entries use the parent directory of the URI.
sidecar: a CSV with header columns `path,label` (`file`/`filename`/`uri` accepted for path) or a
      JSON object {path: label} or a JSON list of {"path": ..., "label": ...}. An entry matches
      a file when its key equals, tried in this order: the full source URI (`file:/data/x.jpg`,
      or `file:/data/s.tar#m.jpg`), the path relative to the input root (`cat/001.jpg`; for a
      tar member the member path), or the file's basename (`001.jpg`). Keys are compared after
      stripping a leading "./".
The class -> index map is the sorted list of distinct labels of the written images.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import posixpath

from pipelines.config import LabelMode

_PATH_COLUMNS = ("path", "file", "filename", "uri", "source_uri")


def label_from_dirs(rel_path: str | None) -> str | None:
    """Parent directory name of a root-relative path, or None for a file at the root."""
    if not rel_path:
        return None
    parent = posixpath.dirname(rel_path.rstrip("/"))
    name = posixpath.basename(parent)
    return name or None


def _norm_key(key: str) -> str:
    key = key.strip()
    while key.startswith("./"):
        key = key[2:]
    return key


def parse_sidecar(text: str, name: str) -> dict[str, str]:
    """CSV or JSON sidecar text -> {key: label}. `name` (the file name) picks the format and names errors."""
    mapping: dict[str, str] = {}
    if name.lower().endswith(".json"):
        data = json.loads(text)
        if isinstance(data, dict):
            items = list(data.items())
        elif isinstance(data, list):
            try:
                items = [(d["path"], d["label"]) for d in data]
            except (TypeError, KeyError):
                raise ValueError(f"{name}: a JSON list must hold objects with 'path' and 'label'") from None
        else:
            raise ValueError(f"{name}: expected a JSON object {{path: label}} or a list of {{path, label}}, found {type(data).__name__}")
    elif name.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        path_col = next((c for c in _PATH_COLUMNS if c in fields), None)
        if path_col is None or "label" not in fields:
            raise ValueError(f"{name}: expected CSV header columns 'path' (or {_PATH_COLUMNS[1:]}) and 'label', found {fields}")
        raw_fields = reader.fieldnames or []
        pkey, lkey = raw_fields[fields.index(path_col)], raw_fields[fields.index("label")]
        items = [(r[pkey], r[lkey]) for r in reader]
    else:
        raise ValueError(f"{name}: expected a .csv or .json sidecar")
    for key, label in items:
        if key is None or label is None or str(label).strip() == "":
            continue  # an entry without a label labels nothing
        mapping[_norm_key(str(key))] = str(label).strip()
    return mapping


@dataclasses.dataclass(frozen=True)
class LabelResolver:
    """Picklable: shipped to executors inside the decode stage's closure (sidecars are small: path -> label)."""

    mode: LabelMode
    sidecar: dict[str, str] = dataclasses.field(default_factory=dict)

    def resolve(self, rel_path: str | None, source_uri: str) -> tuple[str | None, str | None]:
        """-> (label or None, the sidecar key that matched or None)."""
        if self.mode == LabelMode.DIRS:
            return label_from_dirs(rel_path), None
        if self.mode == LabelMode.SIDECAR:
            candidates = [source_uri]
            if rel_path:
                candidates.append(_norm_key(rel_path))
            member = source_uri.rsplit("#", 1)[-1]
            candidates.append(posixpath.basename(member))
            for key in candidates:
                label = self.sidecar.get(key)
                if label is not None:
                    return label, key
        return None, None
