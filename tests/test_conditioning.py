"""Ill-conditioned data against exact least squares (issue 21): correlated series, polynomial designs, decimal
values, a large offset. The reference is computed with `fractions` on the very training rows the run used (the
float64 values tensorize stored, each within 2⁻⁵³ of the CSV's decimal), so it has no rounding at all.

Targets (docs/numbers.md): the default run's train MSE within 1e-9 (relative) of the exact optimum, measured
exactly too, and every weight within 1e-9 of the exact one (9 significant digits), up to a condition number of
1e8 after standardizing.
"""

from __future__ import annotations

import dataclasses
import io
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch

from flows.params import Params
from linreg.evaluation import evaluate
from linreg.precision import FLOAT32_MIN_VALUES, choose_dtype
from linreg.reference import least_squares, qr_factor
from linreg.stats import Scaler, Stats
from linreg.tensors import to_tensors
from linreg.training import fit

DIGITS_RTOL = 1e-9  # 9 significant digits
MSE_RTOL = 1e-9


# --- the cases: each a CSV text, as a user would hand it over ------------------------------------------------


def csv_text(columns: dict[str, np.ndarray], decimals: int | None = None) -> str:
    names = list(columns)
    rows = zip(*(columns[n] for n in names), strict=True)
    fmt = (lambda v: f"{v:.{decimals}f}") if decimals is not None else repr
    return ",".join(names) + "\n" + "".join(",".join(fmt(float(v)) for v in row) + "\n" for row in rows)


def economic() -> str:
    """Six correlated yearly series over 16 years (deflator, GNP, unemployed, armed forces, population, year),
    in the manner of Longley's data: every one a trend plus a little noise, so they move together."""
    rng = np.random.default_rng(1)
    t = np.arange(16.0)
    columns = {
        "deflator": np.round(83 + 2.0 * t + rng.normal(0, 0.5, 16), 1),
        "gnp": np.round(234289 + 12000 * t + rng.normal(0, 800, 16)),
        "unemployed": np.round(2356 + 60 * t + rng.normal(0, 400, 16)),
        "armed": np.round(1590 + 100 * t + rng.normal(0, 300, 16)),
        "population": np.round(107608 + 1700 * t + rng.normal(0, 150, 16)),
        "year": 1947 + t,
    }
    c = columns
    noise = rng.normal(0, 300, 16)
    y = 60323 + 15 * c["deflator"] - 0.03 * c["gnp"] - 2 * c["unemployed"] - c["armed"] - 0.05 * c["population"]
    columns["y"] = np.round(y + 300 * t + noise)
    return csv_text(columns, decimals=1)


def polynomial(degree: int, points: int, noisy: bool) -> str:
    """x, x², …, x^degree on x = 0 … points − 1; y a polynomial of that degree (every weight far from zero, so
    each has digits to count), exactly or with noise at two decimals."""
    x = np.arange(float(points))
    columns = {f"x{k}": x**k for k in range(1, degree + 1)}
    y = sum(c * x**k for k, c in enumerate((1, 2, -0.5, 0.01, 1e-4, -2e-6, 1e-8)[: degree + 1]))
    if noisy:
        y = np.round(y + np.random.default_rng(degree).normal(0, 1, points), 2)
    columns["y"] = y
    return csv_text(columns)


def unix_times() -> str:
    """Unix epoch seconds (about 1.7e9, spread over 5,000 s) beside an ordinary decimal feature."""
    rng = np.random.default_rng(5)
    ts = 1.7e9 + np.sort(rng.integers(0, 5000, 50)).astype(float)
    other = np.round(rng.normal(50, 10, 50), 1)
    y = np.round(2.5e-3 * (ts - 1.7e9) + 0.3 * other + rng.normal(0, 0.01, 50), 3)
    return csv_text({"t": ts, "other": other, "y": y}, decimals=None)


CASES = {  # name: (CSV, lower and upper bound of its condition number after standardizing)
    "economic series": (economic(), 1e4, 1e6),
    "polynomial, degree 5, exact": (polynomial(5, 21, noisy=False), 1e6, 1e7),
    "polynomial, degree 5, noisy": (polynomial(5, 21, noisy=True), 1e6, 1e7),
    "polynomial, degree 6, noisy": (polynomial(6, 31, noisy=True), 5e7, 1.5e8),
    "unix times": (unix_times(), 1.0, 3.0),
}


# --- exact arithmetic ----------------------------------------------------------------------------------------


def exact_least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[list[Fraction], Fraction]:
    """θ = [w; b] solving the normal equations exactly (Gauss–Jordan on Fractions), and its MSE, exactly."""
    rows = [[Fraction(float(v)) for v in row] + [Fraction(1)] for row in x.double().tolist()]
    ys = [Fraction(float(v)) for v in y.double().ravel().tolist()]
    k = len(rows[0])
    m = [
        [sum(r[i] * r[j] for r in rows) for j in range(k)] + [sum(r[i] * t for r, t in zip(rows, ys, strict=True))]
        for i in range(k)
    ]
    for col in range(k):
        pivot = next(r for r in range(col, k) if m[r][col] != 0)
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(k):
            if r != col and m[r][col] != 0:
                f = m[r][col] / m[col][col]
                m[r] = [a - f * b for a, b in zip(m[r], m[col], strict=True)]
    theta = [m[i][k] / m[i][i] for i in range(k)]
    return theta, exact_mse(rows, ys, theta)


def exact_mse(rows: list[list[Fraction]], ys: list[Fraction], theta: list[Fraction]) -> Fraction:
    return sum(
        (sum(a * t for a, t in zip(r, theta, strict=True)) - v) ** 2 for r, v in zip(rows, ys, strict=True)
    ) / len(rows)


def model_mse(x: torch.Tensor, y: torch.Tensor, weights, bias) -> Fraction:
    """The model's train MSE on the rows, exactly: no float64 prediction rounding (1e-8 of it at 1.7e9)."""
    rows = [[Fraction(float(v)) for v in row] + [Fraction(1)] for row in x.double().tolist()]
    ys = [Fraction(float(v)) for v in y.double().ravel().tolist()]
    return exact_mse(rows, ys, [Fraction(float(w)) for w in weights] + [Fraction(float(bias))])


def tensors_of(text: str, dtype: str = "auto") -> dict:
    table = pacsv.read_csv(io.BytesIO(text.encode()))
    return to_tensors(table, table, "y", None, dtype)


def condition(tensors: dict) -> float:
    stats = Stats.of(tensors["x_train"], tensors["y_train"])
    return Scaler.fit(stats, "standardize").condition


def relative_errors(weights: list[float], theta: list[Fraction]) -> list[float]:
    return [float(abs(Fraction(w) - t) / abs(t)) for w, t in zip(weights, theta, strict=True)]


# --- the default reaches the exact optimum -------------------------------------------------------------------


@pytest.mark.no_server
@pytest.mark.parametrize("engine", ["rows", "stats"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_default_lands_on_the_exact_optimum(case, engine):
    text, low, high = CASES[case]
    tensors = tensors_of(text)
    assert tensors["dtype"] == "float64"
    assert low <= condition(tensors) <= high  # the case is as hard as it says
    x, y = tensors["x_train"], tensors["y_train"]
    cfg = dataclasses.replace(Params(device="cpu").training(), engine=engine)
    result = fit(x, y, cfg)
    theta, optimum = exact_least_squares(x, y)
    assert result.scaling == "whiten" and result.converged and len(result.history) < 50
    got = model_mse(x, y, result.weights.tolist(), result.bias)
    spread = Fraction(float(y.double().var(unbiased=False)))
    assert got >= optimum  # nothing beats least squares, exactly
    assert got - optimum <= MSE_RTOL * optimum + Fraction(1, 10**18) * spread  # relative; an exact fit: RMSE 1e-9
    errors = relative_errors([*result.weights.tolist(), result.bias], theta)
    assert max(errors) <= DIGITS_RTOL, errors


@pytest.mark.no_server
def test_standardizing_alone_stops_far_from_it_and_says_so():
    """Plain standardization on the economic series (condition number ~1e5) hits the epoch cap off the optimum:
    the evaluation names it, with the exact-fit variant for a polynomial that least squares fits exactly."""
    for case, expected in (
        ("economic series", "above the least-squares optimum"),
        ("polynomial, degree 5, exact", "fits the training rows exactly"),
    ):
        tensors = tensors_of(CASES[case][0])
        x, y = tensors["x_train"], tensors["y_train"]
        cfg = dataclasses.replace(Params(device="cpu").training(), scaling="standardize")
        result = fit(x, y, cfg)
        trained = {**dataclasses.asdict(result), "features": tensors["features"], "epochs_run": len(result.history)}
        trained |= {"train_seconds": 0.0, "config": {}, "dtype": "float64", "dtype_reason": "test"}
        summary = evaluate([tensors], trained, least_squares([qr_factor(x, y)], 2.0**-53))
        assert not result.converged and result.scaling == "standardize"
        assert expected in summary["off_optimum"]
        whitened = fit(x, y, Params(device="cpu").training())
        trained |= {**dataclasses.asdict(whitened), "epochs_run": len(whitened.history)}
        assert evaluate([tensors], trained, least_squares([qr_factor(x, y)], 2.0**-53))["off_optimum"] is None


# --- precision: float64 unless big data is safe in float32 ----------------------------------------------------


@pytest.mark.no_server
def test_float32_rounding_costs_the_digits_float64_keeps():
    """The decimal economic series rounded to float32 (asked for): its optimum is another one, 5–6 digits away."""
    text = CASES["economic series"][0]
    exact = tensors_of(text)
    rounded = tensors_of(text, "float32")
    assert rounded["x_train"].dtype == torch.float32 and rounded["dtype_reason"] == "--dtype float32"
    theta, _ = exact_least_squares(exact["x_train"], exact["y_train"])
    theta32, _ = exact_least_squares(rounded["x_train"], rounded["y_train"])
    assert max(relative_errors([float(t) for t in theta32], theta)) > 1e-7  # float32 data: fewer than 7 digits
    assert max(relative_errors([float(t) for t in theta], theta)) < 1e-15


@pytest.mark.no_server
def test_auto_dtype_chooses_by_size_then_by_measured_risk():
    rng = np.random.default_rng(0)
    small, reason = choose_dtype("auto", 1000)
    assert small == torch.float64 and "costs nothing measurable" in reason
    big = FLOAT32_MIN_VALUES * 2
    uniform = [rng.uniform(0, 100, 100_000) for _ in range(4)]  # well-conditioned, no offset
    kind, reason = choose_dtype("auto", big, uniform)
    assert kind == torch.float32 and "under 1e-06" in reason
    offset = [1.7e9 + rng.uniform(0, 5000, 100_000), *uniform[1:]]  # Unix times: float32 steps of 128 s
    kind, reason = choose_dtype("auto", big, offset)
    assert kind == torch.float64 and "above 1e-06" in reason
    a = rng.normal(size=100_000)
    collinear = [a, a + 1e-4 * rng.normal(size=100_000), rng.normal(size=100_000), rng.normal(size=100_000)]
    kind, reason = choose_dtype("auto", big, collinear)  # condition number ~1e8 after standardizing
    assert kind == torch.float64 and "above 1e-06" in reason
    assert choose_dtype("float32", 10)[0] == torch.float32 and choose_dtype("float64", big, uniform)[0] == torch.float64


@pytest.mark.no_server
def test_a_big_input_reads_float32_and_keeps_the_choice_with_its_reason():
    n = FLOAT32_MIN_VALUES // 3 + 1  # 3 columns with the target: just over the size where float32 is considered
    rng = np.random.default_rng(2)
    table = pa.table({"a": rng.uniform(0, 100, n), "y": rng.uniform(0, 1, n)})
    out = to_tensors(table, table.slice(0, 10), "y", None, rows=2 * n)  # the whole input's rows size the choice
    assert out["dtype"] == "float32" and out["x_train"].dtype == torch.float32 and "under 1e-06" in out["dtype_reason"]


# --- the statistics measured from a shift ----------------------------------------------------------------------


@pytest.mark.no_server
def test_an_offset_cancels_nothing_in_the_statistics():
    """Unix times: E[x²] − E[x]² from sums about the origin loses 11 digits; the shifted sums lose none."""
    tensors = tensors_of(CASES["unix times"][0])
    x, y = tensors["x_train"], tensors["y_train"]
    scaler = Scaler.fit(Stats.of(x, y), "standardize")
    for j in range(x.shape[1]):  # against exact moments (torch's own std of this column is off by 2e-11)
        column = [Fraction(float(v)) for v in x[:, j].tolist()]
        mean = sum(column) / len(column)
        variance = sum((v - mean) ** 2 for v in column) / len(column)
        assert float(scaler.mean[j]) == pytest.approx(float(mean), rel=1e-15)
        assert float(scaler.std[j]) ** 2 == pytest.approx(float(variance), rel=1e-13)
    halves = Stats.total([Stats.of(x[:20], y[:20]), Stats.of(x[20:], y[20:])])  # another shift per part
    torch.testing.assert_close(Scaler.fit(halves, "standardize").std, scaler.std, rtol=1e-12, atol=0)
