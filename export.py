"""Export a trained checkpoint to ONNX: one file that takes the uint8 image batch the loaders draw (B, C, S, S) and
returns class probabilities (normalisation and softmax inside, batch size free), with its classes, encoding, image
size and line width in the file's metadata, so an app can draw strokes exactly as training did.

    python export.py --checkpoint runs/demo/best.pth --output runs/demo/model.onnx
    python predict.py --checkpoint runs/demo/model.onnx --input data/synthetic --split val --preds val.csv
    python serve.py --checkpoint runs/demo/model.onnx

The export is run with onnxruntime against the torch model before the file is written (atomically); a difference
over 1e-4 in any probability is an error and writes nothing. PyTorch's torch.export-based exporter builds the graph
(it needs onnxscript); it takes seconds to minutes by architecture, most of it converting the graph.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import data_loader_rgb  # noqa: F401  (registers the grey and rgb encodings)
import data_loader_time  # noqa: F401  (registers the time encoding)
import models  # noqa: F401  (registers the architectures a checkpoint names)
from qdraw.checkpoint import CheckpointError
from qdraw.export import MIN_OPSET, export_onnx
from qdraw.inference import WEIGHTS


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pth or last.pth written by train.py")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--weights", choices=WEIGHTS, default="auto",
                   help="the checkpoint's EMA weights, its raw weights, or auto: EMA when the run kept one "
                   "(default auto)")
    p.add_argument("--opset", type=int, default=MIN_OPSET,
                   help=f"ONNX opset version, {MIN_OPSET} or newer (default {MIN_OPSET})")
    return p


def main(args: argparse.Namespace) -> None:
    out = Path(args.output)
    try:
        if out.suffix.lower() != ".onnx":
            raise ValueError(f"--output {out}: name the file *.onnx (predict.py and serve.py tell models by it)")
        if out.is_dir() or not out.resolve().parent.is_dir():
            raise ValueError(f"--output {out}: not a file name in an existing folder")
        info = export_onnx(args.checkpoint, out, args.weights, args.opset)
    except (CheckpointError, ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    width = f", line width {info['line_width']}" if info["line_width"] else ""
    print(f"{out}: {info['arch']} ({info['weights']} weights), {info['classes']} classes, input {info['input']}"
          f"{width}; onnxruntime within {info['max_diff']:.1e} of torch; {info['bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
