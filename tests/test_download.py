"""download_data.py against a local HTTP server: byte-identical files, Range resume, skip, and per-class errors."""
import re
import shutil
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import download_data
from download_data import GOOGLE_CLASSES, class_url, get_args_parser, main, resolve_classes
from qdraw.synthetic import write_ndjson

SHARED = Path(__file__).resolve().parents[1].parent / "shared/data/quickdraw"


class _BucketHandler(BaseHTTPRequestHandler):
    """Serves server.root like the bucket, with single open-ended Range requests ("bytes=N-") when server.ranges.

    Every request is logged as (path, Range header); a path in server.cut gets its declared Content-Length but only
    half the body, then the connection closes (a dropped download), once.
    """

    def do_GET(self):
        srv = self.server
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        header = self.headers.get("Range")
        srv.log.append((path, header))
        file = srv.root / path.lstrip("/")
        if not file.is_file():
            self.send_error(404)
            return
        data, start = file.read_bytes(), 0
        if header and srv.ranges:
            start = int(re.fullmatch(r"bytes=(\d+)-", header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path in srv.cut:
            srv.cut.discard(path)
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def bucket(tmp_path):
    """A local bucket with two simplified class files (real ones when the shared data is there) and its server."""
    root = tmp_path / "bucket"
    (root / "simplified").mkdir(parents=True)
    src = SHARED / "simplified"
    names = ["cat", "The Eiffel Tower"]
    if all((src / f"{n}.ndjson").is_file() for n in names):
        for n in names:
            shutil.copyfile(src / f"{n}.ndjson", root / "simplified" / f"{n}.ndjson")
    else:
        names = ["circle", "smiley face"]
        write_ndjson(root / "simplified", 300, seed=0, classes=names)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BucketHandler)
    server.root, server.log, server.ranges, server.cut = root, [], True, set()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    server.names = names
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _run(server, out: Path, classes: list[str], *extra: str) -> None:
    args = get_args_parser().parse_args(["--classes", ",".join(classes), "--output", str(out), "--base-url",
                                         server.base_url, "--no-progress", "--timeout", "10", *extra])
    main(args)


def _source(server, name: str) -> bytes:
    return (server.root / "simplified" / f"{name}.ndjson").read_bytes()


def test_full_download_is_byte_identical_then_skipped(bucket, tmp_path, capsys):
    out = tmp_path / "out"
    _run(bucket, out, bucket.names)
    for name in bucket.names:
        assert (out / f"{name}.ndjson").read_bytes() == _source(bucket, name)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.ndjson" for n in bucket.names)  # no .part left
    assert [h for _, h in bucket.log] == [None, None]
    assert " " in bucket.names[1] and bucket.log[1][0] == f"/simplified/{bucket.names[1]}.ndjson"
    assert "2 downloaded, 0 resumed, 0 already complete, 0 failed" in capsys.readouterr().out
    bucket.log.clear()
    _run(bucket, out, bucket.names)
    assert bucket.log == []  # complete files are not requested again
    assert "0 downloaded, 0 resumed, 2 already complete, 0 failed" in capsys.readouterr().out


def test_resume_partial_file_with_range(bucket, tmp_path):
    out, name = tmp_path / "out", bucket.names[0]
    data = _source(bucket, name)
    out.mkdir()
    (out / f"{name}.ndjson.part").write_bytes(data[:1000])
    _run(bucket, out, [name], "--progress")  # also runs the tqdm bars, started at the resume offset
    assert bucket.log == [(f"/simplified/{name}.ndjson", "bytes=1000-")]
    assert (out / f"{name}.ndjson").read_bytes() == data
    assert not (out / f"{name}.ndjson.part").exists()


def test_dropped_connection_keeps_part_and_next_run_resumes(bucket, tmp_path, capsys):
    out, name = tmp_path / "out", bucket.names[1]
    data = _source(bucket, name)
    bucket.cut.add(f"/simplified/{name}.ndjson")
    with pytest.raises(SystemExit) as exc:
        _run(bucket, out, [name])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert f"error: {name}: " in err and "rerun to resume" in err
    part = out / f"{name}.ndjson.part"
    assert 0 < part.stat().st_size < len(data) and data.startswith(part.read_bytes())
    assert not (out / f"{name}.ndjson").exists()
    size = part.stat().st_size
    _run(bucket, out, [name])
    assert bucket.log[-1][1] == f"bytes={size}-"
    assert (out / f"{name}.ndjson").read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(bucket, tmp_path):
    out, name = tmp_path / "out", bucket.names[0]
    data = _source(bucket, name)
    out.mkdir()
    (out / f"{name}.ndjson.part").write_bytes(b"garbage that must not stay in front")
    bucket.ranges = False  # answers 200 with the whole file
    _run(bucket, out, [name])
    assert bucket.log[0][1] is not None
    assert (out / f"{name}.ndjson").read_bytes() == data


def test_complete_part_is_renamed_on_416(bucket, tmp_path):
    out, name = tmp_path / "out", bucket.names[0]
    data = _source(bucket, name)
    out.mkdir()
    (out / f"{name}.ndjson.part").write_bytes(data)
    _run(bucket, out, [name])
    assert bucket.log == [(f"/simplified/{name}.ndjson", f"bytes={len(data)}-")]
    assert (out / f"{name}.ndjson").read_bytes() == data


def test_missing_class_fails_clearly_while_others_complete(bucket, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        _run(bucket, out, [bucket.names[0], "no such class", bucket.names[1]])
    assert exc.value.code != 0 and "1 of 3 classes failed (no such class)" in str(exc.value.code)
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1
    assert err_lines[0].startswith("error: no such class: HTTP 404 ")
    assert "no%20such%20class.ndjson" in err_lines[0] and "not one of Google's 345 class names" in err_lines[0]
    for name in bucket.names:
        assert (out / f"{name}.ndjson").read_bytes() == _source(bucket, name)
    assert not any(p.name.startswith("no such class") for p in out.iterdir())


def test_unreachable_server_is_a_per_class_error(tmp_path, capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BucketHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens on this port any more
    args = get_args_parser().parse_args(["--classes", "cat,dog", "--output", str(tmp_path), "--no-progress",
                                         "--base-url", f"http://127.0.0.1:{port}"])
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert "2 of 2 classes failed" in str(exc.value.code)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[:2] for line in lines] == [["error", " cat"], ["error", " dog"]]


def test_class_names_and_urls(tmp_path):
    assert len(GOOGLE_CLASSES) == 345 == len(set(GOOGLE_CLASSES))
    assert {"cat", "The Eiffel Tower", "smiley face", "zigzag"} <= set(GOOGLE_CLASSES)
    if (SHARED / "simplified").is_dir():
        assert sorted(GOOGLE_CLASSES) == sorted(p.stem for p in (SHARED / "simplified").glob("*.ndjson"))
    assert (class_url("https://storage.googleapis.com/quickdraw_dataset/full/", "raw", "The Eiffel Tower")
            == "https://storage.googleapis.com/quickdraw_dataset/full/raw/The%20Eiffel%20Tower.ndjson")
    assert download_data.DEFAULT_BASE_URL == "https://storage.googleapis.com/quickdraw_dataset/full"
    assert resolve_classes(None) == GOOGLE_CLASSES
    assert resolve_classes(" cat, smiley face ,cat,") == ["cat", "smiley face"]
    listing = tmp_path / "classes.txt"
    listing.write_text("The Eiffel Tower\n\ndog\n")
    assert resolve_classes(str(listing)) == ["The Eiffel Tower", "dog"]
    with pytest.raises(SystemExit, match="error: "):
        resolve_classes(" , ")
    with pytest.raises(SystemExit, match="error: invalid class name"):
        resolve_classes("cat,../etc/passwd")


@pytest.mark.parametrize("kind,full,folder,name", [("binary", False, "binary", "cat.bin"),
                                                   ("sketchrnn", False, "sketchrnn", "The Eiffel Tower.npz"),
                                                   ("sketchrnn", True, "sketchrnn", "cat.full.npz")])
def test_binary_and_sketchrnn_kinds_download_and_resume(bucket, tmp_path, kind, full, folder, name):
    """The other kinds: Google's bucket paths (binary/<word>.bin, sketchrnn/<word>[.full].npz), resumed by Range."""
    data = bytes(range(256)) * 40  # the bytes are served as they are; only the paths and the resume matter here
    (bucket.root / folder).mkdir(exist_ok=True)
    (bucket.root / folder / name).write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{name}.part").write_bytes(data[:1000])
    word = name.split(".")[0]
    _run(bucket, out, [word], "--kind", kind, *(["--full"] if full else []))
    assert bucket.log == [(f"/{folder}/{name}", "bytes=1000-")]
    assert (out / name).read_bytes() == data and not (out / f"{name}.part").exists()


def test_kind_urls_and_flags(tmp_path):
    assert (class_url(download_data.DEFAULT_BASE_URL, "binary", "smiley face")
            == "https://storage.googleapis.com/quickdraw_dataset/full/binary/smiley%20face.bin")
    assert (class_url(download_data.SKETCHRNN_BASE_URL, "sketchrnn", "cat", full=True)
            == "https://storage.googleapis.com/quickdraw_dataset/sketchrnn/cat.full.npz")
    with pytest.raises(SystemExit, match="error: --full is for --kind sketchrnn"):
        main(get_args_parser().parse_args(["--classes", "cat", "--full", "--output", str(tmp_path)]))
