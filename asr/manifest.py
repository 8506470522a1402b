"""Manifests: JSONL files, one utterance per line (the interface every loader produces).

Fields: `audio` (path; relative paths are relative to the manifest's folder), `text`, and
optional `speaker`, `duration`, `speech_start`, `speech_end` (seconds), `context` (names for
biasing), `split`. `read_manifest` returns rows with absolute audio paths; `write_manifest`
writes them relative to the manifest's folder where possible.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


class ManifestError(ValueError):
    """A manifest line that is not a JSON object with `audio` and `text`."""


def read_manifest(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    base = path.parent.resolve()
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "audio" not in row or "text" not in row:
                raise ManifestError(f"{path}:{n}: expected an object with 'audio' and 'text'")
            row["audio"] = str((base / row["audio"]).resolve())
            rows.append(row)
    if not rows:
        raise ManifestError(f"{path}: manifest has no utterances")
    return rows


def write_manifest(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Writes rows atomically, each `audio` made relative to the manifest's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            if "audio" not in row or "text" not in row:
                raise ManifestError(f"rows[{i}]: expected 'audio' and 'text', got {sorted(row)}")
            out = dict(row)
            out["audio"] = Path(os.path.relpath(Path(row["audio"]).resolve(), base)).as_posix()
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
