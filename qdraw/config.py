"""Configuration: YAML files under argparse, timm-style, so every setting is both a YAML key and a flag.

A first parser reads only ``-c/--config``; the YAML's keys become the full parser's defaults (``set_defaults``); the
full parser then reads the command line. Precedence is therefore CLI > YAML > code default, and a YAML key is exactly
an argparse ``dest`` (``batch_size`` for ``--batch-size``). Unknown keys and values outside a flag's choices are
errors, not silently ignored settings. train.py's parser is a :class:`ConfigArgumentParser`, so it is run like every
other script's: ``main(get_args_parser().parse_args())``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .atomic import write_text

def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """The -c/--config flag, on the full parser too so that --help lists it."""
    parser.add_argument("-c", "--config", default=None, metavar="YAML",
                        help="YAML file of defaults; its keys are this parser's dests, flags override them "
                             "(default: none)")


class ConfigArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that first reads the YAML named by -c/--config into its defaults (module docstring)."""

    def parse_known_args(self, args=None, namespace=None):
        first = argparse.ArgumentParser(add_help=False)
        first.add_argument("-c", "--config", default=None)
        known, _ = first.parse_known_args(args)
        if known.config:
            self.set_defaults(**_read_config(self, known.config))
        return super().parse_known_args(args, namespace)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse argv with the YAML named by --config as defaults; parser.error() on a bad file, key or value."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("-c", "--config", default=None)
    known, _ = first.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_read_config(parser, known.config))
    return parser.parse_args(argv)


def _read_config(parser: argparse.ArgumentParser, path: str) -> dict:
    """YAML mapping of dest -> value, checked against the parser's actions."""
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except OSError as exc:
        parser.error(f"cannot read config {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        parser.error(f"config {path} is not valid YAML: {exc}")
    if not isinstance(cfg, dict):
        parser.error(f"config {path} must be a mapping of setting: value")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    unknown = sorted(set(cfg) - set(actions))
    if unknown:
        parser.error(f"config {path}: unknown key(s) {', '.join(unknown)} (keys are flag names with '_' for '-')")
    return {k: _check_value(parser, actions[k], v, path) for k, v in cfg.items()}


def _check_value(parser: argparse.ArgumentParser, action: argparse.Action, value, path: str):
    """Apply the flag's type to a YAML string (PyYAML reads 1e-3 as a string) and enforce its choices."""
    if isinstance(action, argparse.BooleanOptionalAction) and not isinstance(value, bool | None):
        parser.error(f"config {path}: {action.dest} must be true, false or null, got {value!r}")
    if isinstance(value, str) and action.type is not None:
        try:
            value = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            parser.error(f"config {path}: {action.dest}: invalid value {value!r}")
    elif action.type is int and isinstance(value, float):
        parser.error(f"config {path}: {action.dest} must be an integer, got {value!r}")
    elif action.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if action.choices is not None and value is not None and value not in action.choices:
        parser.error(f"config {path}: {action.dest}={value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def config_dict(args: argparse.Namespace) -> dict:
    """The resolved settings as a plain dict of YAML-safe values (paths become strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_config(args: argparse.Namespace, path: str | Path) -> None:
    """Write the resolved settings as YAML; the file re-runs the same job with --config."""
    cfg = {k: v for k, v in config_dict(args).items() if k != "config"}
    write_text(path, yaml.safe_dump(cfg, sort_keys=False))

