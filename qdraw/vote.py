"""Rank-weighted voting over submissions or prediction files (blend2.py --method vote).

First place blended their models' submissions by rank: each input gives the class it ranks r-th (r = 0 for its
first guess) a vote of weight f(r), times the input's own weight, and classes are ordered by their summed votes.
They found f(r) = 1 / (r + 1) better than 5 - r. A Kaggle submission (``key_id,word``, top-3 words) can vote like a
prediction file, so blends of submissions whose probabilities were never kept are possible.

The rank formula is a flag: an arithmetic expression in ``r`` parsed with :mod:`ast` and evaluated from a whitelist
(numbers, ``r``, + - * / **, unary minus, and the functions in ``FUNCTIONS``); nothing else is accepted, and no code
is ever passed to eval. Constants are float64, so ``10**10**10`` gives inf (refused) instead of hanging.
"""
from __future__ import annotations

import ast
import csv
import gzip
import operator
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .metrics import top_k

FUNCTIONS = {"log": np.log, "log2": np.log2, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
DEFAULT_FORMULA = "1/(r+1)"
# Added to the votes, times the inputs' mean probability: breaks ties between equal vote sums (two models that swap
# their first two guesses) in favour of the more probable class, far below any difference of votes.
TIE_BREAK = 1e-9


def parse_rank_weight(text: str) -> Callable[[np.ndarray], np.ndarray]:
    """The function r -> weight that text spells, e.g. "1/(r+1)" or "5-r"; ValueError for anything else.

    Raises:
        ValueError: syntax errors, names other than r and FUNCTIONS, other operators, calls, attributes,
            subscripts or non-numeric constants, texts over 200 characters.
    """
    if len(text) > 200:
        raise ValueError("rank weight formula longer than 200 characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"rank weight formula {text!r}: {e.msg}") from None

    def build(node: ast.AST) -> Callable[[np.ndarray], np.ndarray]:
        if isinstance(node, ast.Expression):
            return build(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value,
                                                                                                        bool):
            value = np.float64(node.value)
            return lambda r: np.full(r.shape, value)
        if isinstance(node, ast.Name) and node.id == "r":
            return lambda r: r
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            op, left, right = _BINARY[type(node.op)], build(node.left), build(node.right)
            return lambda r: op(left(r), right(r))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            op, operand = _UNARY[type(node.op)], build(node.operand)
            return lambda r: op(operand(r))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
                and len(node.args) == 1 and not node.keywords):
            fn, arg = FUNCTIONS[node.func.id], build(node.args[0])
            return lambda r: fn(arg(r))
        raise ValueError(f"rank weight formula {text!r}: {ast.dump(node)[:40]}... is not allowed; use numbers, r, "
                         f"+ - * / **, and {', '.join(FUNCTIONS)}")

    return build(tree)


def rank_weights(formula: str, depth: int) -> np.ndarray:
    """The vote of ranks 0..depth-1 under formula, float64 (depth,); negative weights count 0.

    Raises:
        ValueError: a bad formula (parse_rank_weight), or weights that are not finite or give rank 0 no vote.
    """
    if depth < 1:
        raise ValueError(f"vote depth must be >= 1, got {depth}")
    with np.errstate(all="ignore"):
        w = parse_rank_weight(formula)(np.arange(depth, dtype=np.float64))
    if not np.isfinite(w).all():
        raise ValueError(f"rank weight formula {formula!r} is not finite on ranks 0..{depth - 1}: {w.tolist()}")
    w = np.maximum(w, 0.0)
    if w[0] <= 0:
        raise ValueError(f"rank weight formula {formula!r} gives the first guess no vote")
    return w


def ranks_from_probs(probs: np.ndarray, depth: int) -> np.ndarray:
    """Rank of each class in its row (0 = best, ties to the lower class index), inf past depth: float64 (N, C)."""
    ranks = np.full(probs.shape, np.inf)
    np.put_along_axis(ranks, top_k(probs, depth), np.arange(min(depth, probs.shape[1]), dtype=np.float64)[None],
                      axis=1)
    return ranks


def vote(ranks: list[np.ndarray], weights: list[float] | np.ndarray | None, rank_weight: np.ndarray,
         probs: list[np.ndarray] | None = None) -> np.ndarray:
    """Rank-weighted vote of aligned rank matrices (N, C) (inf = no vote) -> float64 (N, C), rows summing to 1.

    Row n, class c gets sum_i w_i * rank_weight[ranks_i[n, c]] (w normalised to sum 1; ranks past the table's end
    vote 0), plus TIE_BREAK times the mean of the given probability matrices; rows are then normalised, so the
    output reads like a prediction file and its order is the vote's.
    """
    w = np.full(len(ranks), 1.0) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != len(ranks) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"need {len(ranks)} non-negative weights with a positive sum, got {w.tolist()}")
    w = w / w.sum()
    table = np.r_[rank_weight, 0.0]
    score = np.zeros(ranks[0].shape)
    for wi, r in zip(w, ranks):
        idx = np.where(np.isfinite(r), np.minimum(r, len(rank_weight)), len(rank_weight)).astype(np.int64)
        score += wi * table[idx]
    if probs:
        mean = sum(p / np.maximum(p.sum(1, keepdims=True), 1e-300) for p in probs) / len(probs)
        score += TIE_BREAK * mean
    total = score.sum(1, keepdims=True)
    return np.where(total > 0, score / np.where(total > 0, total, 1), 1.0 / score.shape[1])


def is_submission(path: str | Path) -> bool:
    """Whether a CSV's header is Kaggle's submission header `key_id,word` (else it is read as a prediction file)."""
    path = Path(path)
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, EOFError):
        return False
    return [h.strip() for h in header] == ["key_id", "word"]


def read_submission(path: str | Path) -> tuple[np.ndarray, list[list[str]]]:
    """key_ids int64 (N,) and each row's ranked words of a Kaggle submission; ValueError naming the file."""
    path = Path(path)
    keys, words = [], []
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            next(reader)
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != 2:
                    raise ValueError(f"line {line}: expected key_id,word")
                keys.append(int(row[0]))
                words.append(row[1].split())
    except (OSError, UnicodeDecodeError, EOFError, StopIteration) as e:
        raise ValueError(f"{path}: cannot read submission: {e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: not a valid submission: {e}") from None
    if not keys:
        raise ValueError(f"{path}: no submission rows")
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: duplicate key_ids")
    return np.asarray(keys, np.int64), words


def submission_ranks(words: list[list[str]], lookup: dict[str, int], num_classes: int,
                     source: str = "submission") -> np.ndarray:
    """Rank matrix float64 (N, C) of submission rows (a word's position; inf for classes not listed)."""
    ranks = np.full((len(words), num_classes), np.inf)
    for n, row in enumerate(words):
        for r, word in enumerate(row):
            if word not in lookup:
                raise ValueError(f"{source}: unknown class {word!r}")
            c = lookup[word]
            ranks[n, c] = min(ranks[n, c], r)
    return ranks
