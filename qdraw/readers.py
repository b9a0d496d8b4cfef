"""Streamed readers for the Quick, Draw! text layouts, and layout detection for every per-class format.

Layouts: Kaggle ``train_simplified/<word>.csv`` and ``train_raw/<word>.csv`` (countrycode,drawing,key_id,recognized,
timestamp,word), Kaggle ``test_simplified.csv`` / ``test_raw.csv`` (key_id,countrycode,drawing), and Google
``<word>.ndjson`` (one JSON object a line, simplified or raw), each plain or gzip-compressed. Every reader yields one
:class:`Row` per input line and never holds a file in memory; a row that cannot be read carries ``error`` instead of
raising, so prepare_data counts it. Google's binary ``<word>.bin`` and Sketch-RNN ``<word>.npz`` folders are detected
here too; their readers are qdraw.binfmt and qdraw.sketchrnn (docs/FORMATS.md describes every format).
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson

from .formats import first_line, scan_folder, text_lines
from .strokes import loads_json

# Kaggle rows hold whole drawings in one field; raw drawings exceed csv's default 128 KB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Row:
    """One input drawing: ``drawing`` is JSON text (CSV) or an already-parsed list (ndjson); error says why not."""

    key_id: int = 0
    drawing: object = None
    word: str | None = None
    country: str = ""
    recognized: int = -1
    error: str | None = None


def _lines(path: Path) -> Iterator[str]:
    # errors="replace": a non-UTF-8 byte spoils one row (bad JSON, counted), never the whole file; gzip is read too.
    return text_lines(path)


def ndjson_row(line: str) -> Row:
    """One Google ndjson line → Row (error set when it is not a drawing record)."""
    try:
        obj = loads_json(line)
        rec = obj.get("recognized")
        return Row(int(obj["key_id"]), obj["drawing"], obj.get("word"), str(obj.get("countrycode") or ""),
                   -1 if rec is None else int(bool(rec)))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return Row(error="bad JSON line")


def read_ndjson(path: Path) -> Iterator[Row]:
    """Google ndjson (simplified or raw), one object a line; blank lines are skipped."""
    for line in _lines(path):
        if line.strip():
            yield ndjson_row(line)


def csv_columns(header: list[str], required: tuple[str, ...], where: object = "CSV") -> dict[str, int]:
    """Column name → index; ValueError naming what is missing."""
    cols = {name: i for i, name in enumerate(header)}
    missing = [c for c in required if c not in cols]
    if missing:
        raise ValueError(f"{where}: CSV header lacks {', '.join(missing)} (found {', '.join(header)})")
    return cols


TRAIN_COLUMNS = ("countrycode", "drawing", "key_id", "recognized", "word")
TEST_COLUMNS = ("key_id", "countrycode", "drawing")


def kaggle_row(cols: dict[str, int], r: list[str] | None) -> Row:
    """One Kaggle CSV row (train: countrycode,drawing,key_id,recognized,timestamp,word; test: key_id,countrycode,
    drawing) → Row."""
    if r is None:
        return Row(error="bad CSV row")
    try:
        rec = cols.get("recognized")
        word = cols.get("word")
        return Row(int(r[cols["key_id"]]), r[cols["drawing"]], None if word is None else r[word],
                   r[cols["countrycode"]], -1 if rec is None else int(r[rec] == "True"))
    except (IndexError, ValueError):
        return Row(error="bad CSV row")


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[dict[str, int], list[str] | None]]:
    """(columns, fields) per non-blank line; fields None for a line the csv module cannot split."""
    lines = _lines(path)
    header = next(lines, None)
    if header is None:
        return
    cols = csv_columns(next(csv.reader([header])), required, path)
    for line in lines:
        if line.strip():
            yield cols, split_csv_line(line)


def split_csv_line(line: str) -> list[str] | None:
    """One CSV line's fields, or None when it is not valid CSV (a stray quote or carriage return, say)."""
    try:
        return next(csv.reader([line]), None)
    except csv.Error:
        return None


def read_kaggle_train(path: Path) -> Iterator[Row]:
    """Kaggle train CSV: countrycode,drawing,key_id,recognized,timestamp,word."""
    for cols, r in _csv_rows(path, TRAIN_COLUMNS):
        yield kaggle_row(cols, r)


def read_kaggle_test(path: Path) -> Iterator[Row]:
    """Kaggle test CSV: key_id,countrycode,drawing (no labels)."""
    for cols, r in _csv_rows(path, TEST_COLUMNS):
        yield kaggle_row(cols, r)


def read_solution(path: Path) -> dict[int, str]:
    """Kaggle solution CSV (key_id,word; spaces in names written as '_') → {key_id: word with '_' kept}."""
    out = {}
    for cols, r in _csv_rows(path, ("key_id", "word")):
        try:
            out[int(r[cols["key_id"]])] = r[cols["word"]]
        except (IndexError, ValueError):
            continue
    return out


@dataclass
class Layout:
    """What detect_layout found: the layout name ("ndjson", "kaggle_train", "bin" or "npz"), the per-class files
    (class name -> path) and, for the text layouts, a row reader."""

    name: str
    files: dict[str, Path]

    @property
    def kind(self) -> str | None:
        """'simplified' for the binary and Sketch-RNN formats (they hold nothing else); None: look at the rows."""
        return "simplified" if self.name in ("bin", "npz") else None

    def read(self, path: Path) -> Iterator[Row]:
        if self.name not in ("ndjson", "kaggle_train"):
            raise ValueError(f"{self.name} files have no row reader (qdraw.binfmt / qdraw.sketchrnn read them)")
        return read_ndjson(path) if self.name == "ndjson" else read_kaggle_train(path)


def detect_layout(path: Path) -> Layout:
    """Detect a per-class folder layout from its file names (qdraw.formats.scan_folder: one format per folder).

    Raises:
        ValueError: no such folder, no per-class file, mixed formats, or a CSV that is not a Kaggle train CSV.
    """
    fmt, files = scan_folder(Path(path))
    if fmt != "csv":
        return Layout(fmt, files)
    for p in files.values():
        head = first_line(p).strip().split(",")
        if "drawing" in head and "word" in head:
            return Layout("kaggle_train", files)
        raise ValueError(f"{p}: not a Kaggle train CSV (header {','.join(head)})")
    raise AssertionError("scan_folder returns at least one file")
