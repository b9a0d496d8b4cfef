"""Download Google's per-class Quick, Draw! files (ndjson, binary or Sketch-RNN) with resume and a progress bar.

Files come from Google's public bucket (data (c) Google, CC BY 4.0, see
https://github.com/googlecreativelab/quickdraw-dataset): ``<base-url>/simplified|raw/<word>.ndjson``,
``<base-url>/binary/<word>.bin`` and ``<base-url>/sketchrnn/<word>.npz`` (``.full.npz`` with --full); the bucket
keeps sketchrnn/ beside full/, so that kind has its own default base URL. The output folder is a layout that
``prepare_data.py --input`` reads. A finished file is skipped; an interrupted one stays as ``<file>.part`` and the
next run continues it with an HTTP Range request. A class that fails (HTTP error, network error) gets one error
line; the others still download and the exit status is non-zero at the end.

    python download_data.py --kind simplified --classes cat,dog,"smiley face" --output data/quickdraw/simplified
    python download_data.py --kind raw --output data/quickdraw/raw          # all 345 classes
    python download_data.py --kind binary --classes cat,dog                 # data/quickdraw/binary/<word>.bin
    python download_data.py --kind sketchrnn --full --classes cat           # data/quickdraw/sketchrnn/cat.full.npz
    python download_data.py --classes my_classes.txt --base-url http://mirror.example/quickdraw
"""
from __future__ import annotations

import argparse
import http.client
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from qdraw.atomic import publish

DEFAULT_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset/full"
SKETCHRNN_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset"
# kind -> (folder in the bucket, file extension)
KIND_FILES = {"simplified": ("simplified", ".ndjson"), "raw": ("raw", ".ndjson"), "binary": ("binary", ".bin"),
              "sketchrnn": ("sketchrnn", ".npz")}
KINDS = tuple(KIND_FILES)

# Google's 345 class names (the file names of the bucket), sorted case-insensitively.
GOOGLE_CLASSES: list[str] = [
    "aircraft carrier", "airplane", "alarm clock", "ambulance", "angel", "animal migration", "ant", "anvil",
    "apple", "arm", "asparagus", "axe", "backpack", "banana", "bandage", "barn", "baseball", "baseball bat",
    "basket", "basketball", "bat", "bathtub", "beach", "bear", "beard", "bed", "bee", "belt", "bench", "bicycle",
    "binoculars", "bird", "birthday cake", "blackberry", "blueberry", "book", "boomerang", "bottlecap", "bowtie",
    "bracelet", "brain", "bread", "bridge", "broccoli", "broom", "bucket", "bulldozer", "bus", "bush", "butterfly",
    "cactus", "cake", "calculator", "calendar", "camel", "camera", "camouflage", "campfire", "candle", "cannon",
    "canoe", "car", "carrot", "castle", "cat", "ceiling fan", "cell phone", "cello", "chair", "chandelier",
    "church", "circle", "clarinet", "clock", "cloud", "coffee cup", "compass", "computer", "cookie", "cooler",
    "couch", "cow", "crab", "crayon", "crocodile", "crown", "cruise ship", "cup", "diamond", "dishwasher",
    "diving board", "dog", "dolphin", "donut", "door", "dragon", "dresser", "drill", "drums", "duck", "dumbbell",
    "ear", "elbow", "elephant", "envelope", "eraser", "eye", "eyeglasses", "face", "fan", "feather", "fence",
    "finger", "fire hydrant", "fireplace", "firetruck", "fish", "flamingo", "flashlight", "flip flops",
    "floor lamp", "flower", "flying saucer", "foot", "fork", "frog", "frying pan", "garden", "garden hose",
    "giraffe", "goatee", "golf club", "grapes", "grass", "guitar", "hamburger", "hammer", "hand", "harp", "hat",
    "headphones", "hedgehog", "helicopter", "helmet", "hexagon", "hockey puck", "hockey stick", "horse", "hospital",
    "hot air balloon", "hot dog", "hot tub", "hourglass", "house", "house plant", "hurricane", "ice cream",
    "jacket", "jail", "kangaroo", "key", "keyboard", "knee", "knife", "ladder", "lantern", "laptop", "leaf", "leg",
    "light bulb", "lighter", "lighthouse", "lightning", "line", "lion", "lipstick", "lobster", "lollipop",
    "mailbox", "map", "marker", "matches", "megaphone", "mermaid", "microphone", "microwave", "monkey", "moon",
    "mosquito", "motorbike", "mountain", "mouse", "moustache", "mouth", "mug", "mushroom", "nail", "necklace",
    "nose", "ocean", "octagon", "octopus", "onion", "oven", "owl", "paint can", "paintbrush", "palm tree", "panda",
    "pants", "paper clip", "parachute", "parrot", "passport", "peanut", "pear", "peas", "pencil", "penguin",
    "piano", "pickup truck", "picture frame", "pig", "pillow", "pineapple", "pizza", "pliers", "police car", "pond",
    "pool", "popsicle", "postcard", "potato", "power outlet", "purse", "rabbit", "raccoon", "radio", "rain",
    "rainbow", "rake", "remote control", "rhinoceros", "rifle", "river", "roller coaster", "rollerskates",
    "sailboat", "sandwich", "saw", "saxophone", "school bus", "scissors", "scorpion", "screwdriver", "sea turtle",
    "see saw", "shark", "sheep", "shoe", "shorts", "shovel", "sink", "skateboard", "skull", "skyscraper",
    "sleeping bag", "smiley face", "snail", "snake", "snorkel", "snowflake", "snowman", "soccer ball", "sock",
    "speedboat", "spider", "spoon", "spreadsheet", "square", "squiggle", "squirrel", "stairs", "star", "steak",
    "stereo", "stethoscope", "stitches", "stop sign", "stove", "strawberry", "streetlight", "string bean",
    "submarine", "suitcase", "sun", "swan", "sweater", "swing set", "sword", "syringe", "t-shirt", "table",
    "teapot", "teddy-bear", "telephone", "television", "tennis racquet", "tent", "The Eiffel Tower",
    "The Great Wall of China", "The Mona Lisa", "tiger", "toaster", "toe", "toilet", "tooth", "toothbrush",
    "toothpaste", "tornado", "tractor", "traffic light", "train", "tree", "triangle", "trombone", "truck",
    "trumpet", "umbrella", "underwear", "van", "vase", "violin", "washing machine", "watermelon", "waterslide",
    "whale", "wheel", "windmill", "wine bottle", "wine glass", "wristwatch", "yoga", "zebra", "zigzag",
]


class DownloadError(Exception):
    """One class could not be downloaded; the message is a short reason for the error line."""


def file_name(kind: str, word: str, full: bool = False) -> str:
    """The class file's name: ``<word>.ndjson``, ``<word>.bin``, ``<word>.npz`` or (full) ``<word>.full.npz``."""
    ext = KIND_FILES[kind][1]
    return f"{word}{'.full' if full else ''}{ext}"


def class_url(base_url: str, kind: str, word: str, full: bool = False) -> str:
    """URL of one class file; the name is percent-quoted ("smiley face" -> "smiley%20face")."""
    return f"{base_url.rstrip('/')}/{KIND_FILES[kind][0]}/{urllib.parse.quote(file_name(kind, word, full))}"


def _range_total(content_range: str | None) -> int | None:
    """Total size from a Content-Range header ("bytes 0-9/10" or "bytes */10"); None if absent or unknown."""
    m = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", (content_range or "").strip())
    return int(m.group(1)) if m else None


def _range_start(content_range: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", (content_range or "").strip())
    return int(m.group(1)) if m else None


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": "qdraw-download/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def download_file(url: str, dest: Path, timeout: float = 60.0, progress: bool = True,
                  chunk_size: int = 1 << 20) -> str:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial file; returns what it did.

    Returns "skipped" (dest exists), "resumed" (continued a .part) or "downloaded".

    Raises:
        DownloadError: HTTP or network failure, or a truncated transfer; the .part is kept for the next run.
    """
    if dest.is_file():
        return "skipped"
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        try:
            resp = _open(url, offset, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not offset:
                raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from None
            # 416: nothing after offset. The .part is either complete (rename it) or longer than the file (restart).
            if _range_total(exc.headers.get("Content-Range")) == offset:
                publish(part, dest)
                return "resumed"
            offset = 0
            resp = _open(url, 0, timeout)
        with resp:
            if offset and (resp.status != 206 or _range_start(resp.headers.get("Content-Range")) != offset):
                offset = 0  # the server ignored the Range header and sends the whole file: start over
            length = resp.headers.get("Content-Length")
            expected = offset + int(length) if length is not None else None
            with open(part, "ab" if offset else "wb") as f, tqdm(
                    total=expected, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                    desc=dest.stem, disable=not progress) as bar:
                while chunk := resp.read(chunk_size):
                    f.write(chunk)
                    bar.update(len(chunk))
                size = f.tell()
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, IncompleteRead, disk errors
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"{type(exc).__name__}: {reason} ({url}); rerun to resume") from None
    if expected is not None and size != expected:
        raise DownloadError(f"got {size} of {expected} bytes from {url}; rerun to resume")
    publish(part, dest)
    return "resumed" if offset else "downloaded"


def resolve_classes(spec: str | None) -> list[str]:
    """Class names from a comma list or a file with one name per line (default: all 345), duplicates dropped."""
    if not spec:
        return list(GOOGLE_CLASSES)
    names = Path(spec).read_text().splitlines() if Path(spec).is_file() else spec.split(",")
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise SystemExit(f"error: --classes {spec!r} names no class")
    bad = [n for n in names if "/" in n or n in (".", "..")]
    if bad:
        raise SystemExit(f"error: invalid class name(s): {', '.join(bad)}")
    return names


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Data")
    g.add_argument("--kind", choices=KINDS, default="simplified",
                   help="simplified (ndjson, x/y 0-255), raw (ndjson, canvas px + ms timing), binary (Google's .bin of "
                   "the simplified drawings) or sketchrnn (stroke-3 .npz, 75k drawings a class) (default simplified)")
    g.add_argument("--full", action="store_true",
                   help="sketchrnn only: the <word>.full.npz files with every drawing (default: <word>.npz)")
    g.add_argument("--classes", default=None,
                   help="comma list or a file with one class name per line (default: all 345 Google classes)")
    g.add_argument("--base-url", default=None,
                   help=f"bucket root above the kind's folder (default {DEFAULT_BASE_URL}, for sketchrnn "
                   f"{SKETCHRNN_BASE_URL})")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds to wait on a silent connection (default 60)")
    g = p.add_argument_group("Output")
    g.add_argument("--output", default=None, help="folder for the class files (default data/quickdraw/<kind>)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show tqdm progress bars (default on)")
    return p


def main(args: argparse.Namespace) -> None:
    classes = resolve_classes(args.classes)
    if not args.timeout > 0:
        raise SystemExit(f"error: --timeout must be > 0 seconds, got {args.timeout}")
    if args.full and args.kind != "sketchrnn":
        raise SystemExit(f"error: --full is for --kind sketchrnn (.full.npz), not {args.kind}")
    base_url = args.base_url or (SKETCHRNN_BASE_URL if args.kind == "sketchrnn" else DEFAULT_BASE_URL)
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https", "file"):
        raise SystemExit(f"error: --base-url {base_url!r} must start with http://, https:// or file://")
    out = Path(args.output) if args.output else Path("data/quickdraw") / args.kind
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --output {out} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    counts = {"downloaded": 0, "resumed": 0, "skipped": 0}
    failed = []
    for word in tqdm(classes, desc=f"{args.kind} files", unit="file", disable=not args.progress):
        try:
            counts[download_file(class_url(base_url, args.kind, word, args.full),
                                 out / file_name(args.kind, word, args.full), timeout=args.timeout,
                                 progress=args.progress)] += 1
        except DownloadError as exc:
            hint = "" if word in GOOGLE_CLASSES else " (not one of Google's 345 class names)"
            tqdm.write(f"error: {word}: {exc}{hint}", file=sys.stderr)
            failed.append(word)
    print(f"{out}: {counts['downloaded']} downloaded, {counts['resumed']} resumed, "
          f"{counts['skipped']} already complete, {len(failed)} failed")
    if failed:
        raise SystemExit(f"error: {len(failed)} of {len(classes)} classes failed ({', '.join(failed)}); "
                         "completed files are kept, rerun the same command to retry")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
