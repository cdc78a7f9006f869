"""Reading and writing instruction/answer pairs.

``load_pairs`` reads JSON Lines (or a JSON array), CSV or Parquet through Hugging Face ``datasets``,
offline, into memory, with its cache in a throw-away directory so nothing is left behind on disk.
Every failure is a one-line :class:`DataError` that names the column or the problem, never a path, a
value or a row: the file holds patient data.
"""

from __future__ import annotations

import codecs
import json
import tempfile
from pathlib import Path
from typing import Any

from site_agent.errors import DataError
from site_agent.operators.base import Batch, batch_size

__all__ = ["SUPPORTED_SUFFIXES", "load_pairs", "save_pairs"]

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_TEXT_SUFFIXES = {".jsonl", ".json", ".csv"}


def _check_text(path: Path, suffix: str) -> None:
    """Fail early and clearly on a text file that is not UTF-8 or has no rows."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    nonblank, head, tail = 0, "", ""
    with path.open("rb") as f:
        try:
            while nonblank < 3 and (chunk := f.read(1 << 20)):
                nonblank, head, tail = _scan(decoder.decode(chunk), nonblank, head, tail)
            if nonblank < 3:
                nonblank, head, tail = _scan(decoder.decode(b"", final=True) + "\n", nonblank, head, tail)
            for chunk in iter(lambda: f.read(1 << 20), b""):  # the rest only needs to decode
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError("data file is not valid UTF-8 text (re-export it as UTF-8)") from None
    if nonblank == 0:
        raise DataError("data file is empty")
    # A CSV header alone, or an empty JSON array/object: the parsers fail on these with odd errors.
    if (suffix == ".csv" and nonblank == 1) or (nonblank == 1 and head in ("[]", "{}")):
        raise DataError("data file has no rows")


def _scan(text: str, nonblank: int, head: str, tail: str) -> tuple[int, str, str]:
    """Count non-blank complete lines (up to 3) and keep the first few non-space characters."""
    lines = (tail + text).split("\n")
    for line in lines[:-1]:
        if line.strip():
            nonblank += 1
    if len(head) < 8:
        head = (head + "".join(text.split()))[:8]
    return min(nonblank, 3), head, lines[-1]


def _read(path: Path, suffix: str, cache_dir: str, fields: tuple[str, str]) -> Any:
    from datasets import Dataset

    if suffix in (".jsonl", ".json"):
        return Dataset.from_json(str(path), cache_dir=cache_dir, keep_in_memory=True)
    if suffix == ".csv":
        # Our columns stay text exactly as written ("007" must not become 7) and an empty cell stays
        # an empty string rather than NaN.
        return Dataset.from_csv(str(path), cache_dir=cache_dir, keep_in_memory=True,
                                converters=dict.fromkeys(fields, str), na_filter=False)
    return Dataset.from_parquet(str(path), cache_dir=cache_dir, keep_in_memory=True)


def _column(values: list[Any], name: str) -> list[str]:
    out: list[str] = []
    for v in values:
        if v is None:
            out.append("")  # a missing cell is an empty text; length filters deal with it
        elif isinstance(v, str):
            out.append(v)
        elif isinstance(v, bool | int | float):
            out.append(str(v))
        else:
            raise DataError(f"column '{name}' must hold text, found a nested value")
    return out


def load_pairs(path: Path, instruction_field: str = "instruction", answer_field: str = "answer",
               extra_columns: tuple[str, ...] = ()) -> Batch:
    """Load a batch with ``instruction`` and ``answer`` columns from ``path`` (.jsonl/.json/.csv/.parquet),
    plus any of ``extra_columns`` that the file has (kept under their own names, as text)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"unsupported data file type '{suffix or '(none)'}': use one of "
                        f"{', '.join(SUPPORTED_SUFFIXES)}")
    if not path.is_file():
        raise DataError("data file not found (check the data path in the site config)")
    if path.stat().st_size == 0:
        raise DataError("data file is empty")
    if suffix in _TEXT_SUFFIXES:
        _check_text(path, suffix)

    import datasets

    # Quiet while reading: the bars are noise for a service, and datasets' own error log names the file.
    bars_were_on, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bar()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)
    try:
        with tempfile.TemporaryDirectory(prefix="autodp-load-") as cache_dir:
            try:
                ds = _read(path, suffix, cache_dir, (instruction_field, answer_field))
            except Exception as e:
                # The parser's own message may quote the offending row: keep only its type.
                raise DataError(f"data file could not be parsed as {suffix[1:]} ({type(e).__name__})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bar()
    for field in (instruction_field, answer_field):
        if field not in ds.column_names:
            raise DataError(f"data file has no column '{field}'")
    if ds.num_rows == 0:
        raise DataError("data file is empty")
    batch = {"instruction": _column(ds[instruction_field], instruction_field),
             "answer": _column(ds[answer_field], answer_field)}
    for name in extra_columns:
        if name in ds.column_names and name not in batch:
            batch[name] = _column(ds[name], name)
    return batch


def save_pairs(batch: Batch, path: Path) -> None:
    """Write ``batch`` as UTF-8 JSON Lines, one object per row with every column of the batch."""
    n = batch_size(batch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(batch)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({c: batch[c][i] for c in cols}, ensure_ascii=False) + "\n")
