"""Which format a per-class input file is in, and gzip-transparent streamed reading of it.

File names say the format, content says the compression: ``<word>.ndjson``, ``<word>.csv`` (Kaggle train),
``<word>.bin`` (Google's binary simplified drawings), ``<word>.npz`` / ``<word>.full.npz`` (Sketch-RNN stroke-3),
each of the first three also as ``<word>.<ext>.gz``. Whether a file is gzip-compressed is decided by its first two
bytes (0x1f 0x8b), never by the name, so a compressed file without ``.gz`` and a plain one with it both read right.
A damaged compressed stream (cut short, bad CRC, not deflate) is one :class:`FormatError` naming the file and how far
it got: the rows before the damage cannot be told from a complete file, so a class is never packed from part of one.
"""
from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"
_SUFFIXES = ((".full.npz", "npz"), (".npz", "npz"), (".ndjson", "ndjson"), (".csv", "csv"), (".bin", "bin"))
READ_BYTES = 4 << 20


class FormatError(ValueError):
    """An input file (or folder) that cannot be read as a whole; the message is the one error line for the user."""


def split_name(name: str) -> tuple[str, str] | None:
    """(class name, format) of a per-class file name, or None for a name in none of the formats.

    ``cat.ndjson.gz`` -> ("cat", "ndjson"); ``cat.full.npz`` -> ("cat", "npz"). An ``.npz`` is a zip file already, so
    ``.npz.gz`` is not a format.
    """
    gz = name.endswith(".gz")
    base = name[:-3] if gz else name
    for suffix, fmt in _SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return None if gz and fmt == "npz" else (base[:-len(suffix)], fmt)
    return None


def class_name(path: Path) -> str:
    """The class a per-class file holds, from its name (the stem when the name is in no format)."""
    got = split_name(Path(path).name)
    return got[0] if got else Path(path).stem


def scan_folder(path: Path) -> tuple[str, dict[str, Path]]:
    """The one format of a per-class folder and its files (class name -> path).

    Raises:
        FormatError: no such folder, no file in any format, files of several formats side by side (a mixed folder
            would give a store of some classes only, silently), or one class in two files (``cat.npz`` next to
            ``cat.full.npz``, ``cat.ndjson`` next to ``cat.ndjson.gz``).
    """
    path = Path(path)
    if not path.is_dir():
        raise FormatError(f"{path}: no such folder (expected a folder of <word>.ndjson, .csv, .bin or .npz files)")
    by_format: dict[str, dict[str, list[Path]]] = {}
    for p in sorted(path.iterdir()):
        got = split_name(p.name) if p.is_file() and not p.name.startswith(".") else None
        if got:
            by_format.setdefault(got[1], {}).setdefault(got[0], []).append(p)
    if not by_format:
        raise FormatError(f"{path}: holds no .ndjson or .csv files (nor .bin, .npz or .gz ones)")
    if len(by_format) > 1:
        counts = ", ".join(f"{sum(map(len, v.values()))} .{k}" for k, v in sorted(by_format.items()))
        raise FormatError(f"{path}: mixes formats ({counts}); keep one format per folder")
    fmt, files = next(iter(by_format.items()))
    twice = [f"{', '.join(q.name for q in ps)}" for ps in files.values() if len(ps) > 1]
    if twice:
        raise FormatError(f"{path}: one class in several files ({'; '.join(twice)}); keep one of each")
    return fmt, {name: ps[0] for name, ps in files.items()}


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def _damaged(path: Path, done: int, exc: BaseException) -> FormatError:
    return FormatError(f"{path}: damaged gzip stream after {done} decompressed bytes ({exc or type(exc).__name__}); "
                       "download the file again")


def read_chunks(path: Path, size: int = READ_BYTES) -> Iterator[bytes]:
    """The file's (decompressed) bytes in chunks of about size; FormatError for a damaged gzip stream."""
    path = Path(path)
    gz = is_gzip(path)
    done = 0
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        while True:
            try:
                data = f.read(size)
            except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
                if not gz:
                    raise
                raise _damaged(path, done, exc) from None
            if not data:
                return
            done += len(data)
            yield data


def text_lines(path: Path) -> Iterator[str]:
    """The file's lines as text, decompressed when gzip; a non-UTF-8 byte spoils one row (counted), never the file."""
    path = Path(path)
    if not is_gzip(path):
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            yield from f
        return
    done = 0
    with io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline="") as f:
        while True:
            try:
                line = f.readline()
            except (EOFError, OSError, zlib.error) as exc:
                raise _damaged(path, done, exc) from None
            if not line:
                return
            done += len(line)
            yield line


def first_line(path: Path) -> str:
    """The first line of a (possibly compressed) text file, '' when empty."""
    return next(text_lines(path), "")
