"""The report's trend plot (`lifecycle.trend`): one point per run, stars on promotions, ticks a reader can read."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET

import pytest

from lifecycle import trend

pytestmark = pytest.mark.no_server
NS = "{http://www.w3.org/2000/svg}"


def drawn(mse, promoted):
    root = ET.fromstring(trend.svg(mse, promoted))
    texts = [t.text for t in root.iter(NS + "text")]
    return root, texts


def tick_labels(root, anchor):
    return [t.text for t in root.iter(NS + "text") if t.get("text-anchor") == anchor and "transform" not in t.attrib]


def test_one_point_per_run_and_one_star_per_promotion():
    mse = [5.4, 5.1, None, 4.9, 4.4]
    root, texts = drawn(mse, [True, False, False, False, True])
    circles = list(root.iter(NS + "circle"))
    assert len(circles) == 4 + 1  # the runs with an MSE, and the legend's
    assert len(list(root.iter(NS + "polygon"))) == 2 + 1
    assert "Test MSE over the last 5 runs" in texts


def test_whole_run_numbers_and_plain_number_labels():
    root, _ = drawn([5.4, 5.1, 4.9, 4.4, 4.402, 4.41], [False] * 6)
    y = tick_labels(root, "end")
    assert y and all("×" not in label and "e" not in label for label in y)
    values = [float(label.replace(",", "")) for label in y]
    assert values == sorted(values) and values[0] >= 4.4 - 0.1 and values[-1] <= 5.4 + 0.1
    steps = {round(b - a, 9) for a, b in itertools.pairwise(values)}
    assert len(steps) == 1  # evenly spaced
    x = [t for t in tick_labels(root, "middle") if t.isdigit()]
    assert x == ["1", "2", "3", "4", "5", "6"]


def test_a_wide_range_is_drawn_on_a_log_axis_with_powers_of_ten():
    root, texts = drawn([1000.0, 10.0, 0.01], [True, True, True])
    assert "test MSE (log scale)" in texts
    assert tick_labels(root, "end") == ["0.01", "0.1", "1", "10", "100", "1,000"]


@pytest.mark.parametrize("count", [1, 7, 30, 120])
def test_at_most_about_ten_run_ticks_whole_numbers_from_one(count):
    root, _ = drawn([1.0 + i for i in range(count)], [False] * count)
    x = [int(t) for t in tick_labels(root, "middle") if t.isdigit()]
    assert x[0] == 1 and x == sorted(x) and x[-1] <= count and len(x) <= 11


@pytest.mark.parametrize("mse", [[], [None], [3.0], [2.0, 2.0], [0.0, 1.0], [math.nan, 1.0]])
def test_degenerate_histories_still_draw(mse):
    root, _ = drawn(mse, [False] * len(mse))
    assert root.tag == NS + "svg"
