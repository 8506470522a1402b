"""Manifests: JSONL files, one utterance per line (the interface every loader produces).

A row needs `audio` (path; relative paths are relative to the manifest's folder) and at least one
of `text` (the transcript) or `keywords` (words that must be recognized: for real speech without
a transcript; evaluation scores their recall). The other fields are optional; `null` is the
same as leaving a field out:

    field          type                           meaning
    audio          str, non-empty                 audio file
    text           str                            transcript
    keywords       non-empty list of non-empty str
    duration       finite number > 0              seconds (the audio header's when missing)
    speech_start   finite number >= 0             seconds; speech_start <= speech_end
    speech_end     finite number >= 0             seconds
    context        list of str                    names for biasing
    split          str                            "train", "dev", "test"
    speaker        str or int

plus the fields the project's loaders write (`KNOWN_FIELDS`). `read_manifest` checks these types
on read (errors name `path:line` and the field), keeps unknown fields, and returns rows with
absolute audio paths; `write_manifest` writes them relative to the manifest's folder where
possible. `check_rows` is the deeper check before training: the audio exists and its header
reads, the transcript has words, no unknown (misspelt) fields, durations agree with the headers.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

# Fields a row may carry: the documented ones and those the project's own loaders write. Anything
# else is reported by `check_rows` (a misspelt "txet" or "speach_end" would be silently unused).
KNOWN_FIELDS = frozenset(
    {
        # documented above
        "audio",
        "text",
        "keywords",
        "duration",
        "speech_start",
        "speech_end",
        "context",
        "split",
        "speaker",
        # train.corpus.loaders: "estimated" when speech_start/speech_end come from the detector
        "speech_bounds",
        # train.corpus.synth: request domain, eSpeak voice settings, room (rt60_s, snr_db), and
        # the end of the wake word "computer" in seconds
        "domain",
        "voice",
        "room",
        "wake_word_end",
        # read by train.data.is_real: true marks synthetic speech that has no `voice` field
        "synthetic",
        # train.corpus.loaders.load_speech_to_intent: the spoken request's intent
        "intent",
        # voice family of the speech (espeak, espeak-generated, kokoro, world, fsdd, ...), for
        # leave-one-family-out benchmarks; and the audio a resynthesized row was made from
        "family",
        "source_audio",
        # train.pseudo: the teacher's transcript of untranscribed audio {model, score, rank}
        "pseudo_label",
    }
)
DURATION_TOLERANCE_S = 0.1  # check_rows: manifest and header durations may differ this much


class ManifestError(ValueError):
    """A manifest line or row that cannot be used: not JSON, missing fields, wrong field types."""


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _keywords_ok(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(k, str) and k.strip() for k in v)


def _type_problems(row: dict) -> list[str]:
    """What is wrong with the known fields of one row (empty when nothing)."""
    out = []

    def bad(field: str, want: str) -> None:
        out.append(f"field '{field}' must be {want}, got {row[field]!r}"[:300])

    audio = row.get("audio")
    if "audio" not in row:
        out.append("field 'audio' is missing")
    elif not isinstance(audio, str) or not audio or "\0" in audio:
        bad("audio", "a non-empty path string")
    if "text" not in row and "keywords" not in row:
        fields = ", ".join(repr(str(k)) for k in sorted(row, key=str))[:200]
        out.append(
            "expected 'audio' and 'text' (transcript) or 'keywords' (words to recognize), "
            f"got fields {fields or 'none'}"
        )
    if "text" in row and not isinstance(row["text"], str):
        bad("text", "a string")
    if "keywords" in row and not _keywords_ok(row["keywords"]):
        bad("keywords", "a non-empty list of non-empty strings")
    for field in ("duration", "speech_start", "speech_end", "wake_word_end"):
        v = row.get(field)
        if v is None:
            continue
        if not _is_number(v) or not math.isfinite(v) or v < 0 or (field == "duration" and v == 0):
            bad(field, "a finite number > 0" if field == "duration" else "a finite number >= 0")
    start, end = row.get("speech_start"), row.get("speech_end")
    if _is_number(start) and _is_number(end) and start > end:
        out.append(f"field 'speech_start' ({start}) is after 'speech_end' ({end})")
    ctx = row.get("context")
    if ctx is not None and not (isinstance(ctx, list) and all(isinstance(c, str) for c in ctx)):
        bad("context", "a list of strings")
    for field in ("split", "domain", "speech_bounds"):
        if row.get(field) is not None and not isinstance(row[field], str):
            bad(field, "a string")
    spk = row.get("speaker")
    if spk is not None and (isinstance(spk, bool) or not isinstance(spk, (str, int))):
        bad("speaker", "a string or an integer")
    return out


def read_manifest(
    path: str | os.PathLike, *, with_lines: bool = False
) -> list[dict] | tuple[list[dict], list[str]]:
    """Reads a JSONL manifest: rows with absolute `audio` paths, in file order.

    Blank lines are skipped. Known fields are type-checked (module docstring); unknown ones are
    kept as they are.

    Args:
      path: the manifest file (UTF-8; a byte-order mark is allowed).
      with_lines: also return each row's name.

    Returns:
      rows, or with `with_lines` (rows, names) where names[i] is "{path}:{line}" of rows[i]
      (1-based line numbers of the file, blank lines counted).

    Raises:
      ManifestError: naming `path:line` (and the field) for a line that is not UTF-8, not a JSON
        object, or has a missing or mistyped field; naming `path` when it has no rows.
    """
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder, expected a manifest file")
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    base = path.parent.resolve()
    rows, names = [], []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ManifestError(f"{where}: not UTF-8 text (byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise ManifestError(f"{where}: not valid JSON (nested too deeply)") from None
            if not isinstance(row, dict):
                raise ManifestError(
                    f"{where}: expected a JSON object with 'audio' and 'text' or 'keywords', "
                    f"got {type(row).__name__}"
                )
            problems = _type_problems(row)
            if problems:
                raise ManifestError(f"{where}: " + "; ".join(problems))
            try:
                row["audio"] = str((base / row["audio"]).resolve())
            except (OSError, ValueError, RuntimeError) as e:  # a path the OS cannot take
                raise ManifestError(f"{where}: field 'audio' is not a usable path ({e})") from None
            rows.append(row)
            names.append(where)
    if not rows:
        raise ManifestError(f"{path}: manifest has no utterances")
    return (rows, names) if with_lines else rows


def _audio_problem(audio: str) -> tuple[str | None, float | None]:
    """(problem or None, duration from the header in seconds or None); reads the header only."""
    import soundfile as sf

    from asr.audio import MAX_RATE, MIN_RATE

    try:
        mode = os.stat(audio).st_mode
    except FileNotFoundError:
        return "no such audio file", None
    except (OSError, ValueError) as e:
        return f"cannot access the audio file ({e})", None
    if not stat.S_ISREG(mode):  # a folder, a pipe (opening it would block), a device
        return "not a regular file", None
    try:
        with sf.SoundFile(audio) as f:
            frames, rate = f.frames, f.samplerate
    except sf.SoundFileError as e:
        return f"not readable audio ({e})", None
    if not MIN_RATE <= rate <= MAX_RATE:
        return f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz", None
    if frames <= 0:
        return "no audio frames (empty file)", None
    return None, frames / rate


def check_rows(
    rows: Sequence[dict],
    *,
    names: Sequence[str] | None = None,
    need_text: bool = True,
    probe_audio: bool = True,
    extra_fields: Iterable[str] = (),
) -> tuple[list[dict], list[str]]:
    """Checks rows before they are used (training, a long evaluation): cheap enough for 100k rows.

    A row is bad when it is not an object with the known fields typed as documented, its audio
    is missing or not a regular file, its header does not read (with `probe_audio`; only the
    header is read, nothing is decoded) or says 0 frames or a rate outside 4000..384000 Hz, its
    transcript is missing or has no words (with `need_text`; keyword-only rows are then bad:
    training needs transcripts), it has a field not in `KNOWN_FIELDS`, or its `duration` differs
    from the header's by more than `DURATION_TOLERANCE_S`.

    Args:
      rows: manifest rows (as `read_manifest` returns them).
      names: names[i] names rows[i] in problems (e.g. "train.jsonl:17"); else "rows[i]".
      need_text: require a transcript with words (else `text` or `keywords` will do).
      probe_audio: read each audio header; False checks only that the file exists.
      extra_fields: fields of the user's own to accept besides `KNOWN_FIELDS` (an `accent` to
        break errors down by, say); any other unknown field is a problem, since a misspelt
        known one ("durration") would otherwise be silently unused.

    Returns:
      (good rows, problems): good rows in input order, `duration` filled from the header where
      missing (a copy; inputs are not changed); one line per bad row,
      "{name}: {audio}: {problem}; {problem}...".
    """
    from asr.text import normalize_text

    if names is not None and len(names) != len(rows):
        raise ValueError(f"names: expected one per row, got {len(names)} for {len(rows)} rows")
    known = KNOWN_FIELDS | frozenset(extra_fields)
    good, problems = [], []
    for i, row in enumerate(rows):
        name = names[i] if names is not None else f"rows[{i}]"
        if not isinstance(row, dict):
            problems.append(f"{name}: expected a row object, got {type(row).__name__}")
            continue
        found = _type_problems(row)
        audio = row.get("audio")
        header_s = None
        if isinstance(audio, str) and audio and "\0" not in audio:
            if probe_audio:
                problem, header_s = _audio_problem(audio)
            else:
                problem = None if os.path.isfile(audio) else "no such audio file"
            if problem:
                found.append(problem)
        text = row.get("text")
        if need_text and "text" not in row and "keywords" in row:
            found.append("no 'text' (only keywords): training needs a transcript")
        elif need_text and isinstance(text, str) and not normalize_text(text):
            found.append(f"empty transcript (no words in {text!r})")
        unknown = sorted(str(k) for k in row if k not in known)
        if unknown:
            found.append(
                f"unknown field{'s' if len(unknown) > 1 else ''} "
                + ", ".join(repr(k) for k in unknown)
                + " (a misspelling? see asr.manifest.KNOWN_FIELDS; fields of your own are "
                "accepted with asr train --extra-fields NAME...)"
            )
        duration = row.get("duration")
        if header_s is not None and _is_number(duration) and math.isfinite(duration):
            if abs(duration - header_s) > DURATION_TOLERANCE_S:
                found.append(f"duration {duration:g} s in the row, {header_s:g} s in the header")
        if found:
            problems.append(f"{name}: {audio}: " + "; ".join(found))
            continue
        if duration is None and header_s is not None:
            row = dict(row, duration=header_s)
        good.append(row)
    return good, problems


def write_manifest(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Writes rows atomically, each `audio` made relative to the manifest's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            if "audio" not in row or ("text" not in row and "keywords" not in row):
                raise ManifestError(
                    f"rows[{i}]: expected 'audio' and 'text' or 'keywords', got {sorted(row)}"
                )
            out = dict(row)
            out["audio"] = Path(os.path.relpath(Path(row["audio"]).resolve(), base)).as_posix()
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def named_paths(items: list[str], flag: str = "--set") -> dict[str, str]:
    """["synth=a.jsonl", "sc=b.jsonl"] -> {"synth": "a.jsonl", "sc": "b.jsonl"} (the benchmarks'
    NAME=MANIFEST arguments); SystemExit naming `flag` for an item without a name or path."""
    out = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{flag}: expected NAME=MANIFEST, got {it!r}")
        out[name] = path
    return out
