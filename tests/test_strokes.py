"""Drawing JSON parsing and validation (the orjson path that has the final word on every row)."""
import numpy as np
import pytest

from qdraw.strokes import DrawingError, format_drawing, parse_drawing


def test_parse_simplified_and_raw():
    s = parse_drawing("[[[1, 2], [3, 4]], [[5], [6]]]")
    assert [a.tolist() for a in s] == [[[1, 3], [2, 4]], [[5, 6]]]
    r = parse_drawing(b"[[[1.5, 2], [3, 4], [0, 17]]]")
    assert r[0].shape == (2, 3) and r[0][1].tolist() == [2, 4, 17]


@pytest.mark.parametrize("text,reason", [
    ("[", "bad JSON"),
    ("[]", "no strokes"),
    ('{"a": 1}', "no strokes"),
    ("[[[], []]]", "empty stroke"),
    ("[[[1], [2, 3]]]", "x/y/t lengths differ"),
    ("[[[1, 2], [3, 4], [5]]]", "x/y/t lengths differ"),
    ('[[[1, "a"], [2, 3]]]', "non-numeric coordinate"),
    ("[[[1, NaN], [2, 3]]]", "bad JSON"),
    ("[[[1, 2], [3, 4]], [[1], [2], [3]]]", "strokes mix 2 and 3 coordinate lists"),
    ("[[[1]]]", "stroke is not a list of 2 or 3 coordinate lists"),
    ("[[[1e400], [2]]]", "bad JSON"),  # orjson refuses infinities
])
def test_bad_drawings_give_a_reason(text, reason):
    with pytest.raises(DrawingError, match=reason):
        parse_drawing(text)


def test_never_eval():
    with pytest.raises(DrawingError):
        parse_drawing("__import__('os').system('true')")


def test_format_round_trip():
    text = "[[[1,2],[3,4]],[[5.5],[6]]]"
    assert format_drawing(parse_drawing(text)) == text
    assert np.array_equal(parse_drawing(format_drawing(parse_drawing(text)))[1], [[5.5, 6]])
