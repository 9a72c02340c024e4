"""Every number the pipeline prints is right, flagged, or refused: checked against numpy's float64 lstsq.

Degenerate inputs are each checked at the function that handles them, and the ones that must behave the same
for a partitioned input also through the flow, against the single-file run.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch

import stagecore as core
from conftest import ADVERTISING
from flows.params import Params
from flows.train import format_summary, linear_regression, main
from linreg import Names, Reference, Stats, evaluate, fit, fit_stats, least_squares, qr_factor
from linreg.reference import FLOAT32_UNIT_ROUNDOFF, NORMAL_EQUATIONS_RTOL, normal_equations_residual
from linreg.tensors import to_tensors
from stagecore.declare import Stage
from storage.errors import InputError
from tasks import evaluate as evaluate_module
from tasks.drop_index import drop_index
from tasks.evaluate import coefficients_table, metrics_table
from tasks.report import coefficient_rows, metrics_rows, render_report
from tasks.split import split_table

HUGE = 1e30  # fits float32 (max 3.4e38); its square, 1e60, fits the float64 statistics
WEIGHTS_RTOL = 1e-9  # the reference against numpy, both float64 on the same float32 rows
MSE_RTOL = 1e-12  # MSEs of the same float64 predictions, summed in another order
GAP_FLOOR = -1e-6  # gradient descent cannot beat least squares by more than rounding


def numpy_lstsq(x: torch.Tensor, y: torch.Tensor, rcond: float | None = None) -> tuple[np.ndarray, float]:
    """Weights and intercept by np.linalg.lstsq on the float64 rows, columns equilibrated first.

    Unscaled, numpy's own cut-off (rcond = eps·max(m, n), relative to the largest singular value) drops every
    column but a 1e30 one, like the old reference did (see test_unscaled_numpy_fails_the_same_way). ``rcond``:
    numpy's default, or the reference's float32 cut for rank-deficient problems (FLOAT32_RCOND).
    """
    a = np.c_[x.double().numpy(), np.ones(len(x))]
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    theta = np.linalg.lstsq(a / norms, y.double().numpy().ravel(), rcond=rcond)[0] / norms
    return theta[:-1], float(theta[-1])


def train_mse(x: torch.Tensor, y: torch.Tensor, weights: np.ndarray, bias: float) -> float:
    residual = x.double().numpy() @ weights + bias - y.double().numpy().ravel()
    return float(residual @ residual / len(residual))


def trained(weights, bias: float, features: list[str]) -> dict:
    """A model.pt's contents, for `evaluate`."""
    return {
        "weights": torch.as_tensor(np.asarray(weights, dtype=np.float64)),
        "bias": float(bias),
        "features": features,
        "epochs_run": 1,
        "lr": 0.1,
        "max_stable_lr": 1.0,
        "converged": True,
        "engine": "rows",
        "train_seconds": 0.1,
        "config": {"method": "scratch"},
    }


def fitted(x: torch.Tensor, y: torch.Tensor, **overrides) -> dict:
    cfg = dataclasses.replace(Params(device="cpu").training(), **overrides)
    result = fit(x, y, cfg)
    out = trained(result.weights, result.bias, [f"f{i}" for i in range(x.shape[1])])
    return {**out, "epochs_run": len(result.history), "lr": result.lr, "converged": result.converged}


def evaluate_on(x: torch.Tensor, y: torch.Tensor, model: dict, reference: Reference | None = None) -> dict:
    reference = reference or least_squares([qr_factor(x, y)])
    return evaluate([{"x_train": x, "y_train": y, "x_test": x, "y_test": y}], model, reference)


def summary_of(result: dict) -> dict:
    """What `format_summary` gets: the evaluation plus the flow's bookkeeping."""
    return {
        **result,
        "artifacts": {"ingest": {"table": "/a/ingest/k/raw.parquet"}},
        "cached": {"ingest": False},
        "run_record": "/a/runs/r.json",
    }


# --- 1. a feature value of 1e30 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def huge_tv() -> dict:
    """Advertising's default split with the first training row's TV set to 1e30."""
    table = drop_index(pacsv.read_csv(ADVERTISING), "Unnamed: 0")
    train, test = split_table(table, 0.2, 0)
    tv = train.column("TV").to_numpy().copy()
    tv[0] = HUGE
    train = train.set_column(train.column_names.index("TV"), "TV", pa.array(tv))
    return to_tensors(train, test, "sales", None)


@pytest.mark.no_server
def test_reference_with_a_1e30_feature_equals_numpy(huge_tv):
    x, y = huge_tv["x_train"], huge_tv["y_train"]
    assert float(x[0, 0]) == pytest.approx(HUGE, rel=1e-7)  # float32
    reference = least_squares([qr_factor(x, y)])
    assert reference.problem is None and reference.rank == 4
    weights, bias = numpy_lstsq(x, y)
    np.testing.assert_allclose(reference.weights, weights, rtol=WEIGHTS_RTOL)
    assert reference.bias == pytest.approx(bias, rel=WEIGHTS_RTOL)
    # Independently: the 1e30 row is fitted through TV alone (its weight ~1e-29 moves the other rows by
    # ~1e-27), so radio, newspaper and the intercept are least squares on the other 159 rows without TV.
    others = np.c_[x[1:, 1:].double().numpy(), np.ones(len(x) - 1)]
    rest = np.linalg.lstsq(others, y[1:].double().numpy().ravel(), rcond=None)[0]
    np.testing.assert_allclose([*reference.weights[1:], reference.bias], rest, rtol=WEIGHTS_RTOL)
    assert train_mse(x, y, reference.weights, reference.bias) == pytest.approx(16.1737, abs=1e-4)  # not 227.2


@pytest.mark.no_server
def test_the_old_unscaled_reference_fails_the_check(huge_tv):
    """The cause: gelsd on the unscaled R cut every singular value below eps·1e30, i.e. every other column."""
    r = torch.linalg.qr(qr_factor(huge_tv["x_train"], huge_tv["y_train"]), mode="r").R
    unscaled = torch.linalg.lstsq(r[:4, :4], r[:4, 4:], driver="gelsd")
    assert int(unscaled.rank) == 1
    assert normal_equations_residual(r[:, :4], r[:, 4], unscaled.solution.ravel()) > 0.1 > NORMAL_EQUATIONS_RTOL


@pytest.mark.no_server
def test_unscaled_numpy_fails_the_same_way(huge_tv):
    x, y = huge_tv["x_train"], huge_tv["y_train"]
    a = np.c_[x.double().numpy(), np.ones(len(x))]
    theta, _, rank, _ = np.linalg.lstsq(a, y.double().numpy().ravel(), rcond=None)
    assert rank == 1 and train_mse(x, y, theta[:-1], theta[-1]) == pytest.approx(227.208, abs=1e-3)


@pytest.mark.parametrize("engine", ["rows", "stats"])
@pytest.mark.no_server
def test_gradient_descent_with_a_1e30_feature_reaches_the_reference(huge_tv, engine):
    x, y = huge_tv["x_train"], huge_tv["y_train"]
    result = evaluate_on(x, y, fitted(x, y, engine=engine))
    assert result["reference_ok"] and result["reference_problem"] is None
    weights, bias = numpy_lstsq(x, y)
    assert result["baseline"]["train"]["mse"] == pytest.approx(train_mse(x, y, weights, bias), rel=MSE_RTOL)
    assert GAP_FLOOR <= result["optimality_gap"] < 1e-6
    # standardized, TV is an indicator of the 1e30 row: the weights are those of least squares, TV's included
    for name, weight in zip(result["weights"], weights, strict=True):
        assert result["weights"][name] == pytest.approx(weight, rel=1e-4), name


# --- the reference's checks: an untrusted reference says so, and nothing is measured against it ---------


@pytest.mark.no_server
def test_a_reference_that_fails_its_check_is_reported_untrusted(huge_tv, caplog, monkeypatch, tmp_path):
    x, y = huge_tv["x_train"], huge_tv["y_train"]
    model = fitted(x, y)
    bad = Reference(np.zeros(3), 0.0, rank=1, residual=0.9, problem="the normal-equation check failed")
    result = evaluate_on(x, y, model, bad)
    assert result["reference_ok"] is False and result["reference_problem"] == "the normal-equation check failed"
    assert result["optimality_gap"] is None and result["optimality_gap_abs"] is None
    printed = format_summary(summary_of(result))
    assert "optimality gap (train MSE vs OLS): n/a (the least-squares reference cannot be trusted)" in printed
    assert "WARNING: the least-squares reference cannot be trusted: the normal-equation check failed" in printed
    rows = metrics_rows(metrics_table(result), result["reference_ok"])
    assert {r["model"] for r in rows} == {"gradient descent", "least squares (closed form) — cannot be trusted"}
    coefficients = coefficient_rows(coefficients_table(result))
    files = {"evaluate": {"summary": "/a/evaluation.json"}}
    report = render_report(
        {"epochs": 1}, result, rows, coefficients, {"predicted_vs_actual": b"", "loss_curve": b""}, files
    )
    assert core.escape_md("cannot be trusted: the normal-equation check failed") in report
    # and the stage logs a WARNING
    monkeypatch.setattr(evaluate_module, "get_run_logger", lambda: logging.getLogger("test-evaluate"))
    outputs = Stage("evaluate", "tasks.evaluate").outputs(tmp_path, {})
    with caplog.at_level(logging.WARNING, logger="test-evaluate"):
        evaluate_module._write(dict(result), outputs, read="test rows")
    assert any(r.levelno == logging.WARNING and "cannot be trusted" in r.getMessage() for r in caplog.records)


@pytest.mark.no_server
def test_a_reference_above_gradient_descent_is_caught_by_the_mse_check(huge_tv):
    """The old 1e30 answer, had it passed its own check: its train MSE (227) is above GD's (16.2)."""
    x, y = huge_tv["x_train"], huge_tv["y_train"]
    old = Reference(np.array([1.08e-29, 0.0, 0.0]), 0.0, rank=4, residual=0.0)
    result = evaluate_on(x, y, fitted(x, y), old)
    assert result["reference_ok"] is False and result["optimality_gap"] is None
    assert "above gradient descent's" in result["reference_problem"]


# --- 2. a feature named twice ---------------------------------------------------------------------


@pytest.mark.no_server
def test_a_feature_named_twice_is_refused():
    t = pa.table({"TV": [1.0, 2.0, 3.0], "radio": [1.0, 0.0, 1.0], "sales": [1.0, 2.0, 4.0]})
    with pytest.raises(InputError, match=r"^feature column 'TV' is named more than once in --features"):
        to_tensors(t, t, "sales", ["TV", "radio", "TV"])
    with pytest.raises(InputError, match=r"^feature columns 'TV', 'radio' are named more than once"):
        to_tensors(t, t, "sales", ["radio", "TV", "TV", "radio"])


def test_cli_refuses_a_feature_named_twice_in_one_line(artifacts, capsys):
    assert main(["--features", "TV", "TV", "--artifacts-dir", str(artifacts)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert err == ["error: feature column 'TV' is named more than once in --features; name each column once"]


# --- 3. degenerate problems -------------------------------------------------------------------------


@pytest.mark.no_server
def test_a_constant_test_target_has_no_r2_anywhere_it_is_shown():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(40, 2, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0]]) + 0.01 * torch.randn(40, 1, generator=gen)
    reference = least_squares([qr_factor(x, y)])
    model = trained(reference.weights, reference.bias, ["a", "b"])
    parts = {"x_train": x, "y_train": y, "x_test": x[:5], "y_test": torch.full((5, 1), 0.25)}
    result = evaluate([parts], model, reference)
    assert result["metrics"]["test"]["r2"] is None and result["baseline"]["test"]["r2"] is None
    assert result["metrics"]["train"]["r2"] > 0.99
    table = metrics_table(result)
    assert table.schema.field("r2").type == pa.float64() and table.column("r2").null_count == 2
    rows = metrics_rows(table)
    assert [r["R²"] for r in rows if r["part"] == "test"] == ["n/a", "n/a"]
    test_lines = [line for line in format_summary(summary_of(result)).splitlines() if " test " in line]
    assert len(test_lines) == 2 and all(line.split()[-1] == "n/a" for line in test_lines)


def degenerate(rows: int, features: int, constant_y: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(rows, features, generator=gen)
    y = torch.full((rows, 1), 3.0) if constant_y else torch.rand(rows, 1, generator=gen)
    return x, y


@pytest.mark.parametrize("engine", ["rows", "stats"])
@pytest.mark.no_server
def test_a_constant_target_is_refused_before_training(engine):
    x, y = degenerate(50, 2, constant_y=True)
    cfg = dataclasses.replace(Params(device="cpu").training(), engine=engine)
    with pytest.raises(InputError, match=r"^the target is constant \(3\) over all 50 training rows: nothing to"):
        fit(x, y, cfg)


@pytest.mark.no_server
def test_fewer_rows_than_features_plus_one_is_refused_before_training():
    x, y = degenerate(2, 3)
    with pytest.raises(InputError, match=r"^2 training rows for 3 features plus an intercept: the fit is under"):
        fit(x, y, Params(device="cpu").training())
    x, y = degenerate(4, 3)  # d + 1 rows: determined, an exact fit
    assert fit(x, y, Params(device="cpu").training()).weights.isfinite().all()


@pytest.mark.no_server
def test_refusals_name_the_columns_on_summed_statistics():
    x, y = degenerate(3, 2, constant_y=True)
    stats = Stats.total([Stats.of(x[:1], y[:1]), Stats.of(x[1:], y[1:])])
    with pytest.raises(InputError, match=r"^target column 'sales' is constant \(3\) over all 3 training rows"):
        fit_stats(stats, Params(device="cpu").training(), names=Names(["a", "b"], "sales"))
    with pytest.raises(InputError, match=r"^2 training rows for 2 features \(a, b\) plus an intercept"):
        fit_stats(
            Stats.of(x[:2], torch.tensor([[1.0], [2.0]])), Params(device="cpu").training(), names=Names(["a", "b"], "y")
        )


@pytest.mark.no_server
def test_an_exact_fit_reports_no_relative_gap():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, generator=gen)
    y = torch.rand(4, 1, generator=gen)  # 4 rows, 3 features + intercept: interpolated exactly
    model = fitted(x, y, epochs=50)
    result = evaluate_on(x, y, model)
    assert result["reference_ok"] and result["baseline"]["train"]["mse"] < 1e-25
    assert result["optimality_gap"] is None
    assert result["optimality_gap_abs"] == pytest.approx(result["metrics"]["train"]["mse"], rel=1e-6)
    assert "optimality gap (train MSE vs OLS): n/a (exact fit; train MSE difference" in format_summary(
        summary_of(result)
    )


@pytest.mark.parametrize("engine", ["rows", "stats"])
@pytest.mark.no_server
def test_an_exact_linear_target_trains_without_a_false_divergence(engine):
    """The stats engine's loss cancels to noise around zero at an exact fit: that is not divergence."""
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(1000, 2, generator=gen)
    y = 3 * x[:, :1] - x[:, 1:] + 1
    model = fitted(x, y, engine=engine)
    assert model["converged"]
    result = evaluate_on(x, y, model)
    assert result["optimality_gap"] is None and abs(result["optimality_gap_abs"]) < 1e-10


def constant_feature(value: float) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(8)
    a = torch.rand(1000, 1, generator=gen)
    x = torch.cat([a, torch.full((1000, 1), value), a * 2 - 1], dim=1)
    return x, 3 * a + 1 + 0.1 * torch.randn(1000, 1, generator=gen)


@pytest.mark.no_server
def test_collinear_but_for_float32_rounding_is_collinear():
    """1.1·a stored in float32 beside a: the rounding alone makes the columns independent, and exact least
    squares on the float32 rows fits that noise with weights of about 1e6. The reference cuts directions below
    float32 precision instead: what any float32 data can say, and what gradient descent can reach."""
    gen = torch.Generator().manual_seed(9)
    a = torch.rand(200, 1, generator=gen)
    x, y = torch.cat([a, 1.1 * a], 1), 3 * a + 1 + 0.1 * torch.randn(200, 1, generator=gen)
    reference = least_squares([qr_factor(x, y)])
    assert reference.problem is None and reference.rank == 2
    weights, bias = numpy_lstsq(x, y, rcond=3 * FLOAT32_UNIT_ROUNDOFF)
    np.testing.assert_allclose([*reference.weights, reference.bias], [*weights, bias], rtol=1e-9)
    exact_weights, exact_bias = numpy_lstsq(x, y)  # numpy's default cut keeps the rounding direction
    assert np.abs(exact_weights).max() > 1e4
    exact_mse = train_mse(x, y, exact_weights, exact_bias)
    assert exact_mse < train_mse(x, y, reference.weights, reference.bias) < exact_mse * 1.01
    result = evaluate_on(x, y, fitted(x, y))
    assert result["reference_ok"] and GAP_FLOOR <= result["optimality_gap"] < 1e-8


@pytest.mark.parametrize("engine", ["rows", "stats"])
@pytest.mark.parametrize(
    "case", ["constant 0.1", "constant 1234567.8", "collinear", "constant, randn init", "constant, raw"]
)
@pytest.mark.no_server
def test_not_unique_least_squares_gives_finite_weights_and_an_honest_gap(case, engine):
    """A constant or collinear feature: least squares is not unique, but its MSE is, and GD reaches it."""
    x, y = constant_feature(float(case.split()[1]) if case.startswith("constant ") else 0.1)
    overrides = {"init": "randn"} if "randn" in case else {"scaling": "none"} if "raw" in case else {}
    model = fitted(x, y, engine=engine, **overrides)
    assert model["weights"].isfinite().all() and np.isfinite(model["bias"])
    result = evaluate_on(x, y, model)
    assert (
        result["reference_ok"] and result["reference_rank"] == 2
    )  # of 4: a, 2·a − 1, a constant and the intercept span {a, 1}
    weights, bias = numpy_lstsq(x, y, rcond=4 * FLOAT32_UNIT_ROUNDOFF)
    np.testing.assert_allclose([*result["ols_weights"].values(), result["ols_bias"]], [*weights, bias], rtol=1e-9)
    assert result["baseline"]["train"]["mse"] == pytest.approx(train_mse(x, y, weights, bias), rel=MSE_RTOL)
    assert GAP_FLOOR <= result["optimality_gap"] < (1e-5 if "raw" in case else 1e-8)
    assert "note: the features are collinear (rank 2 of 4 columns" in format_summary(summary_of(result))


# --- 4. the same on a partitioned input -----------------------------------------------------------


def write_whole_and_parts(frame: pd.DataFrame, folder) -> tuple[str, str]:
    frame.to_csv(folder / "whole.csv", index=False)
    parts = folder / "parts"
    parts.mkdir()
    frame.iloc[:120].to_csv(parts / "part-0.csv", index=False)
    frame.iloc[120:].to_csv(parts / "part-1.csv", index=False)
    return str(folder / "whole.csv"), str(parts)


def first_training_row(n: int) -> int:
    train, _ = split_table(pa.table({"i": np.arange(n)}), 0.2, 0)
    return int(train.column("i")[0].as_py())


def test_a_1e30_feature_on_two_partitions_equals_the_single_file(tmp_path, artifacts):
    frame = pd.read_csv(ADVERTISING)
    frame.loc[first_training_row(len(frame)), "TV"] = HUGE
    whole, parts = write_whole_and_parts(frame, tmp_path)
    single = linear_regression(data=whole, engine="stats", artifacts_dir=str(artifacts))
    split = linear_regression(data=parts, engine="stats", artifacts_dir=str(artifacts))
    tensors = core.read_pt(single["artifacts"]["tensorize"]["tensors"])
    x, y = tensors["x_train"], tensors["y_train"]
    assert float(x[:, 0].max()) == pytest.approx(HUGE, rel=1e-7)
    weights, bias = numpy_lstsq(x, y)
    for run in (single, split):
        assert run["reference_ok"] and run["reference_problem"] is None
        np.testing.assert_allclose(list(run["ols_weights"].values()), weights, rtol=WEIGHTS_RTOL)
        assert run["ols_bias"] == pytest.approx(bias, rel=WEIGHTS_RTOL)
        assert run["baseline"]["train"]["mse"] == pytest.approx(train_mse(x, y, weights, bias), rel=MSE_RTOL)
        assert GAP_FLOOR <= run["optimality_gap"] < 1e-6
    for key in ("metrics", "baseline"):
        for part in ("train", "test"):
            assert split[key][part] == pytest.approx(single[key][part], rel=1e-9), (key, part)
    for name, weight in single["weights"].items():
        assert split["weights"][name] == pytest.approx(weight, rel=1e-10), name


def test_a_constant_target_on_two_partitions_is_refused_like_the_single_file(tmp_path, artifacts):
    frame = pd.read_csv(ADVERTISING).assign(sales=5.0)
    whole, parts = write_whole_and_parts(frame, tmp_path)
    errors = []
    for data in (whole, parts):
        with pytest.raises(InputError) as caught:
            linear_regression(data=data, artifacts_dir=str(artifacts))
        errors.append(str(caught.value))
    assert (
        errors[0]
        == errors[1]
        == (
            "target column 'sales' is constant (5) over all 160 training rows: nothing to regress; "
            "pass a --target that varies"
        )
    )


def test_a_target_constant_within_one_partition_only_still_trains(tmp_path, artifacts):
    frame = pd.read_csv(ADVERTISING)
    frame.loc[:119, "sales"] = 5.0  # the first partition's rows
    _, parts = write_whole_and_parts(frame, tmp_path)
    run = linear_regression(data=parts, artifacts_dir=str(artifacts))
    assert run["reference_ok"] and run["metrics"]["train"]["r2"] is not None
