"""Atomic, durable writes: the one helper every writer of the project uses, and the clean-up of what a kill leaves.

A file is written under a hidden temporary name in its own folder (``.<name>.<pid>.tmp``: the same filesystem, so
the rename is atomic, and hidden, so no reader globbing ``*.qdb`` or ``*.csv`` picks it up), flushed and fsync'ed,
then renamed over the target, and the folder is fsync'ed so the rename itself survives a power cut. Readers see the
old file or the new one, never half of one; a failure at any point (a full disk, an exception in the caller's body)
removes the temporary file and leaves the previous target untouched. Folders (a class of a store, a test split) are
published the same way: built under a hidden name, then renamed into place.

``os.replace`` is called here and nowhere else in the project, so the guarantee has one implementation to test.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_TMP_RE = re.compile(r"^\..+\.(\d+)\.tmp$")


def temp_name(path: str | os.PathLike) -> Path:
    """The hidden temporary sibling this process uses for path: ``<folder>/.<name>.<pid>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Persist renames in folder (POSIX needs the directory fsync'ed too); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename src over dst (atomic on one filesystem) and fsync dst's folder: the project's only os.replace."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO]:
    """Open a hidden temporary file next to path for writing; on a clean exit fsync it and rename it over path.

    ``mode`` is "wb" or "w" (text, with encoding and newline as for open()). On an exception the temporary file is
    removed and path keeps its previous content. FileNotFoundError names path's folder when it does not exist (the
    temporary name would be a confusing thing to report).
    """
    path = Path(path)
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes whole files: mode 'wb' or 'w', got {mode!r}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder for {path.name}")
    tmp = temp_name(path)
    try:
        with open(tmp, mode, encoding=encoding if mode == "w" else None, newline=newline if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write data to path atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text to path atomically (newlines as given)."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def append_line(path: str | os.PathLike, line: bytes) -> None:
    """Append one newline-terminated record to path (created if absent) and fsync it before returning.

    For logs that grow a record at a time (serve.py --collect): the record goes out in one ``O_APPEND`` write, so
    concurrent appenders never interleave inside a line, and it is on disk when this returns. A kill during the write
    can leave at most one partial last line, which the readers skip and count as bad JSON; the lines before it are
    untouched (a rename-based rewrite would cost the whole file per record).
    """
    if not line.endswith(b"\n") or b"\n" in line[:-1]:
        raise ValueError("append_line takes exactly one line ending in a newline")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder for {path.name}")
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make a finished file (a completed download's ``.part``, say) durable, then rename it over path."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    replace(tmp, path)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make dst an atomic copy of src: a hard link where the filesystem allows (free), else a byte copy.

    A hard link is safe only because no writer here rewrites a file in place: the next write of src renames a new
    inode over the name, and dst keeps the old one.
    """
    dst = Path(dst)
    tmp = temp_name(dst)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            publish(tmp, dst)
            return
        replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a hidden temporary name next to path and rename it into place on a clean exit.

    An older folder at path is removed first (the caller decided it is stale); files inside should be written with
    :func:`atomic_write` (fsync'ed) so the published folder is durable too. On an exception the temporary folder
    is removed and path is left as it was.
    """
    path = Path(path)
    tmp = temp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}.tmp")
            os.rename(path, old)  # a non-empty folder cannot be replaced in one step: move it aside first
            shutil.rmtree(old, ignore_errors=True)
        replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that killed writers left in folder; return what was removed.

    Only names this module makes (``.<name>.<pid>.tmp``) whose process is gone are touched, so a writer still at
    work in the same folder (another rank, a parallel prepare) keeps its file.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TMP_RE.match(entry.name)
        if m is None or _alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
