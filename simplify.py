"""Convert Google's raw Quick, Draw! ndjson to the "simplified" format, and measure agreement with Google's own files.

Each output line is the input object (word, countrycode, timestamp, recognized, key_id, ...) with its ``drawing``
replaced by the simplified one (``qdraw.simplify.simplify_drawing``). Bad lines are skipped and counted on stderr.
``--compare`` matches drawings to Google's simplified files by key_id and prints the share that is identical.

    python simplify.py raw/cat.ndjson cat.simplified.ndjson
    python simplify.py raw/ all.simplified.ndjson --compare simplified/
    python simplify.py /work/shared/data/quickdraw/raw --compare /work/shared/data/quickdraw/simplified
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from qdraw.atomic import atomic_write
from qdraw.simplify import simplify_drawing, to_google_lists
from qdraw.strokes import loads_json, parse_drawing


@dataclass
class Counts:
    """What one pass over the raw input did (``matched``/``equal`` only count when a reference is given)."""

    written: int = 0
    bad: int = 0
    matched: int = 0
    equal: int = 0

    @property
    def rate(self) -> float:
        """Share of key_id-matched drawings identical to the reference (0.0 when nothing matched)."""
        return self.equal / self.matched if self.matched else 0.0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="raw ndjson file, or a folder whose *.ndjson files are read in order")
    parser.add_argument("output", type=Path, nargs="?", default=None,
                        help="simplified ndjson to write (atomically); optional with --compare (default: none)")
    parser.add_argument("--compare", type=Path, default=None, metavar="SIMPLIFIED",
                        help="Google simplified ndjson file or folder: print the share of drawings (matched by "
                             "key_id) whose simplification is identical (default: off)")
    return parser


def ndjson_files(path: Path) -> list[Path]:
    """The ndjson files behind a CLI path: the file itself, or a folder's ``*.ndjson`` sorted by name."""
    if path.is_dir():
        files = sorted(path.glob("*.ndjson"))
        if not files:
            raise SystemExit(f"error: no *.ndjson files in {path}")
        return files
    if not path.is_file():
        raise SystemExit(f"error: input not found: {path}")
    return [path]


def simplify_record(line: bytes) -> dict:
    """Parse one raw ndjson line and return the same object with its drawing simplified (Google's JSON layout).

    Raises:
        ValueError: the line is not a JSON object with a valid ``drawing`` (DrawingError is a ValueError).
    """
    try:
        record = loads_json(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError("bad JSON") from exc
    if not isinstance(record, dict) or "drawing" not in record:
        raise ValueError("not an object with a drawing")
    # reuse the project's validation (shapes, lengths, finite numbers) rather than a second, looser one
    strokes = parse_drawing(orjson.dumps(record["drawing"]))
    record["drawing"] = to_google_lists(simplify_drawing(strokes))
    return record


def load_reference(files: list[Path]) -> dict[str, bytes]:
    """Map key_id to the compact JSON of Google's simplified drawing; unreadable lines are ignored.

    Drawings are kept as orjson bytes, not lists, to hold a whole class file in a fraction of the memory.
    """
    ref = {}
    for path in files:
        with open(path, "rb") as f:
            for line in f:
                try:
                    record = loads_json(line)
                    ref[str(record["key_id"])] = orjson.dumps(record["drawing"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
    return ref


def process(files: list[Path], out: BinaryIO | None = None, reference: dict[str, bytes] | None = None) -> Counts:
    """Stream raw lines through ``simplify_record``: write each result to ``out`` and/or compare it to ``reference``."""
    counts = Counts()
    for path in files:
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = simplify_record(line)
                except ValueError:
                    counts.bad += 1
                    continue
                if out is not None:
                    out.write(orjson.dumps(record) + b"\n")
                    counts.written += 1
                twin = reference.get(str(record.get("key_id"))) if reference is not None else None
                if twin is not None:
                    counts.matched += 1
                    counts.equal += orjson.dumps(record["drawing"]) == twin
    return counts


def agreement(raw: Path, simplified: Path) -> Counts:
    """Compare our simplification of ``raw`` (file or folder) with Google's ``simplified`` twin, matched by key_id."""
    return process(ndjson_files(raw), reference=load_reference(ndjson_files(simplified)))


def convert(files: list[Path], output: Path, reference: dict[str, bytes] | None = None) -> Counts:
    """Write the simplified ndjson atomically (qdraw.atomic: a hidden temporary file, renamed once complete)."""
    if not output.parent.is_dir():
        raise SystemExit(f"error: output folder not found: {output.parent}")
    if output.is_dir():
        raise SystemExit(f"error: output {output} is a folder; give a file name")
    try:
        with atomic_write(output) as out:
            counts = process(files, out, reference)
    except OSError as exc:  # disk full, no permission: the previous output, if any, is untouched
        raise SystemExit(f"error: cannot write {output}: {exc.strerror or exc}") from None
    return counts


def main(args: argparse.Namespace) -> None:
    if args.output is None and args.compare is None:
        raise SystemExit("error: give an OUTPUT file, --compare SIMPLIFIED, or both")
    files = ndjson_files(args.input)
    reference = load_reference(ndjson_files(args.compare)) if args.compare is not None else None
    if args.output is not None:
        counts = convert(files, args.output, reference)
        print(f"wrote {counts.written} drawings to {args.output}, skipped {counts.bad} bad lines", file=sys.stderr)
    else:
        counts = process(files, reference=reference)
        print(f"skipped {counts.bad} bad lines", file=sys.stderr)
    if reference is not None:
        print(f"identical to Google's simplified twin: {counts.equal}/{counts.matched} = {counts.rate:.4f} "
              f"(drawings matched by key_id)")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
