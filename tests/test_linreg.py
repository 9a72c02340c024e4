"""The library on its own (linreg/): no Prefect, no store, no files. Every number against a closed form.

The references are float64 least squares (`torch.linalg.lstsq`, scikit-learn) and numpy's own sums; each
tolerance says what it allows for.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

import linreg
from conftest import ADVERTISING, ROOT
from linreg import (
    DivergenceError,
    InputError,
    LossOverflowError,
    Names,
    Reference,
    Stats,
    Sums,
    TrainConfig,
    evaluate,
    fit,
    fit_stats,
    least_squares,
    qr_factor,
    regression_metrics,
)
from linreg.evaluation import optimality_gap
from linreg.loops import train_builtins, train_scratch, train_stats
from linreg.monitor import FLAT_EPOCHS, RISING_EPOCHS, Monitor
from linreg.stats import Scaler

pytestmark = pytest.mark.no_server

# the flow's default recipe (flows/params.py, preset "default"), on the CPU
DEFAULT = TrainConfig("scratch", 1000, "auto", 1e-7, "standardize", "zeros", 0, "cpu", "auto")
TRUE_W, TRUE_B = [2.0, -1.0, 0.5], 3.0


def synthetic(rows: int = 500, scales=(1.0, 1.0, 1.0), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 rows of a noisy linear target, each feature at its own scale."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 3, generator=gen) * torch.tensor(scales) + 1.0
    w = torch.tensor(TRUE_W) / torch.tensor(scales)
    y = x @ w.reshape(-1, 1) + TRUE_B + 0.1 * torch.randn(rows, 1, generator=gen)
    return x, y


def lstsq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Weights then intercept, by float64 least squares."""
    a = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    return torch.linalg.lstsq(a, y.double()).solution.ravel()


def theta(w: torch.Tensor, b) -> torch.Tensor:
    return torch.cat([w.double().reshape(-1), torch.as_tensor(b, dtype=torch.float64).reshape(-1)])


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
        "config": {},
    }


# --- the package ------------------------------------------------------------------------------------


def test_the_library_imports_no_prefect_no_stage_core_no_stage_and_no_flow():
    """Every export and every submodule, loaded in a fresh interpreter: none of them pulls the workflow in."""
    code = (
        "import json, pkgutil, importlib, sys, linreg\n"
        "[getattr(linreg, name) for name in linreg.__all__]\n"
        "[importlib.import_module(m.name) for m in pkgutil.iter_modules(linreg.__path__, 'linreg.')]\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert "linreg.loops" in loaded and "torch" in loaded
    assert [m for m in loaded if m.split(".")[0] in ("prefect", "stagecore", "tasks", "flows")] == []


def test_the_package_exports_its_names_lazily_and_only_those():
    assert set(linreg.__all__) <= set(dir(linreg))
    assert linreg.fit is fit and linreg.Stats is Stats
    with pytest.raises(AttributeError, match="no attribute 'train_scratch'"):
        _ = linreg.train_scratch  # the loops are linreg.loops', not the package's


def test_the_stage_core_reports_the_library_errors_as_its_own():
    """One class: the CLI's ``except InputError`` (exit 2, one line) catches what the library raises."""
    from storage.errors import InputError as StageInputError  # the workflow: for this check only

    assert StageInputError is InputError and issubclass(LossOverflowError, DivergenceError)
    assert issubclass(DivergenceError, StageInputError)


# --- the training loops against closed-form least squares -----------------------------------------


@pytest.mark.parametrize("loop", [train_scratch, train_builtins, train_stats])
def test_each_loop_reaches_closed_form_least_squares(loop):
    """On standardized features with the step 1/L, 300 epochs of any loop end at the least-squares solution.

    Tolerance: 1e-5 absolute on weights of order 1 for the float32 row loops (their loss and gradient round at
    ~1e-7 relative), 1e-10 for the float64 statistics loop.
    """
    x, y = synthetic()
    stats = Stats.of(x, y)
    scaler = Scaler.fit(stats, "standardize")
    scaled = scaler.transform_stats(stats)
    lr = 1.0 / scaled.hessian_max_eigenvalue()
    w0, b0 = torch.zeros(1, 3), torch.zeros(1)
    losses: list[float] = []
    data = scaled if loop is train_stats else scaler.transform(x)
    args = (data,) if loop is train_stats else (data, scaler.transform_y(y))
    w, b = loop(*args, w0, b0, lr, 300, lambda loss: losses.append(loss) or False)
    assert len(losses) == 300 and losses[-1] < losses[0]
    got = theta(w, b)
    expected = lstsq(scaler.transform(x.double()), scaler.transform_y(y.double()))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10 if loop is train_stats else 1e-5)
    # and in raw units, against the least squares of the raw rows
    w_raw, b_raw = scaler.unfold(w, b)
    torch.testing.assert_close(theta(w_raw, b_raw), lstsq(x, y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("method", "engine"), [("scratch", "rows"), ("builtins", "rows"), ("scratch", "stats")])
def test_fit_matches_scikit_learn_on_features_of_very_different_scales(method, engine):
    """Features at scales 1e-2, 1 and 1e3 (condition number ~1e10 raw): standardized, a few dozen epochs reach
    scikit-learn's OLS. Tolerance: 1e-4 relative per coefficient, the float32 rows' rounding after the fold-back."""
    x, y = synthetic(scales=(1e-2, 1.0, 1e3))
    result = fit(x, y, TrainConfig(method, 1000, "auto", 1e-7, "standardize", "zeros", 0, "cpu", engine))
    ols = LinearRegression().fit(x.double().numpy(), y.double().numpy().ravel())
    np.testing.assert_allclose(result.weights.numpy(), ols.coef_, rtol=1e-4)
    assert result.bias == pytest.approx(float(ols.intercept_), rel=1e-4)
    assert result.converged and len(result.history) < 200 and result.engine == engine


def test_fit_given_the_rows_statistics_follows_the_same_iterates():
    """The training stage passes the partitions' summed statistics instead of a second pass over the rows."""
    x, y = synthetic()
    cfg = TrainConfig("scratch", 50, "auto", 0.0, "standardize", "zeros", 0, "cpu", "rows")
    parts = Stats.total([Stats.of(x[:123], y[:123]), Stats.of(x[123:], y[123:])])
    one_pass, summed = fit(x, y, cfg), fit(x, y, cfg, stats=parts)
    assert summed.history == pytest.approx(one_pass.history, rel=1e-6)
    torch.testing.assert_close(summed.weights, one_pass.weights, rtol=1e-6, atol=0)


def test_fit_stats_equals_the_stats_engine_on_the_rows():
    x, y = synthetic()
    cfg = TrainConfig("scratch", 100, "auto", 0.0, "standardize", "zeros", 0, "cpu", "stats")
    on_rows, on_stats = fit(x, y, cfg), fit_stats(Stats.of(x, y), cfg)
    assert on_stats.history == on_rows.history and on_stats.engine == "stats"
    with pytest.raises(InputError, match="training on statistics needs --method scratch"):
        fit_stats(Stats.of(x, y), TrainConfig("builtins", 10, "auto", 0.0, "standardize", "zeros", 0, "cpu", "auto"))


def test_hessian_eigenvalue_matches_numpy():
    frame = pd.read_csv(ADVERTISING)
    x = torch.tensor(frame[["TV", "radio", "newspaper"]].to_numpy(), dtype=torch.float32)
    y = torch.tensor(frame[["sales"]].to_numpy(), dtype=torch.float32)
    a = np.c_[x.double().numpy(), np.ones(len(x))]
    expected = float(np.linalg.eigvalsh(2 / len(x) * a.T @ a).max())
    stats = Stats.of(x, y, chunk_rows=37)  # chunking changes nothing
    assert stats.hessian_max_eigenvalue() == pytest.approx(expected, rel=1e-9)


# --- the stopping rules --------------------------------------------------------------------------------


def test_progress_is_reported_every_five_percent():
    cfg = TrainConfig("scratch", 40, "auto", 0.0, "standardize", "zeros", 0, "cpu", "auto")
    seen: list[int] = []
    monitor = Monitor(cfg, lr=0.1, max_stable_lr=1.0, on_progress=lambda epoch, loss: seen.append(epoch))
    for i in range(40):
        monitor(10.0 / (i + 1))
    assert seen == list(range(2, 41, 2))


def test_a_flat_loss_converges_and_a_rising_one_diverges():
    cfg = TrainConfig("scratch", 1000, "auto", 1e-3, "standardize", "zeros", 0, "cpu", "auto")
    flat = Monitor(cfg, lr=0.1, max_stable_lr=1.0)
    stops = [flat(1.0) for _ in range(FLAT_EPOCHS + 1)]  # the first epoch has nothing to compare with
    assert stops == [False] * FLAT_EPOCHS + [True] and flat.converged
    rising = Monitor(cfg, lr=0.5, max_stable_lr=0.25)
    with pytest.raises(DivergenceError, match=rf"diverged at epoch {RISING_EPOCHS + 1} \(loss rose .*is 0\.25"):
        for epoch in range(RISING_EPOCHS + 1):
            rising(2.0**epoch)


def test_a_float32_overflow_names_the_target_column():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(50, 2, generator=gen)
    y = 1e20 * (1 + torch.rand(50, 1, generator=gen))  # Σy² ≈ 1e42: beyond float32, not float64
    cfg = TrainConfig("scratch", 10, "auto", 0.0, "standardize", "zeros", 0, "cpu", "rows")
    with pytest.raises(LossOverflowError, match=r"^training loss overflowed float32 at epoch 1: target column 'y'"):
        fit(x, y, cfg, names=Names(["a", "b"], "y"))


# --- sufficient statistics and scaling ----------------------------------------------------------


def test_statistics_summed_over_partitions_equal_one_pass():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(1000, 3, generator=gen) * 100, torch.rand(1000, 1, generator=gen)
    whole = Stats.of(x, y)
    parts = Stats.total([Stats.of(x[a:b], y[a:b]) for a, b in ((0, 1), (1, 600), (600, 600), (600, 1000))])
    torch.testing.assert_close(parts.g, whole.g, rtol=1e-12, atol=0)  # float64 sums in another order
    torch.testing.assert_close(parts.c, whole.c, rtol=1e-12, atol=0)
    assert parts.yy == pytest.approx(whole.yy, rel=1e-12) and parts.n == whole.n == 1000
    assert torch.equal(parts.x_min, whole.x_min) and torch.equal(parts.x_max, whole.x_max)  # exact
    assert (parts.y_min, parts.y_max) == (whole.y_min, whole.y_max)
    again = Stats.from_dict(whole.as_dict())
    assert torch.equal(again.g, whole.g) and (again.yy, again.n) == (whole.yy, whole.n)
    a = torch.cat([x.double(), torch.ones(1000, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(whole.shifted(torch.zeros(3, dtype=torch.float64), 0.0).g, a.T @ a, rtol=1e-12, atol=0)
    # G is AᵀA, A = [x − x₀ 1], measured from the first row (x₀, y₀)
    assert torch.equal(whole.x_shift, x[0].double()) and whole.y_shift == float(y[0, 0])
    a0 = torch.cat([x.double() - x[0].double(), torch.ones(1000, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(whole.g, a0.T @ a0, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(whole.c, a0.T @ (y.double().ravel() - float(y[0, 0])), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("scaling", ["standardize", "whiten"])
def test_scaler_round_trip_to_raw_units(scaling):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 100.0, 0.01]) + 5
    x[:, 2] += 0.001 * x[:, 1]  # correlated: whitening rotates
    y = torch.randn(20, 1, generator=gen, dtype=torch.float64)
    scaler = Scaler.fit(Stats.of(x, y), scaling)
    assert scaler.kind == scaling
    torch.testing.assert_close(scaler.mean, x.mean(0))
    torch.testing.assert_close(scaler.std, x.std(0, unbiased=False))
    w, b = torch.randn(1, 3, generator=gen, dtype=torch.float64), torch.randn(1, generator=gen, dtype=torch.float64)
    w_raw, b_raw = scaler.unfold(w, b)
    torch.testing.assert_close(x @ w_raw + b_raw, (scaler.transform(x) @ w.t() + b).ravel() + scaler.y_mean)
    if scaling == "whiten":  # the Hessian in the new variables is 2·I: every direction the same curvature
        xt = scaler.transform(x)
        torch.testing.assert_close(xt.T @ xt / len(x), torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
    # the statistics of the scaled rows, without another pass over them
    zero = torch.zeros(3, dtype=torch.float64)
    direct = Stats.of(scaler.transform(x), scaler.transform_y(y)).shifted(zero, 0.0)
    derived = scaler.transform_stats(Stats.of(x, y))
    torch.testing.assert_close(derived.g, direct.g, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(derived.c, direct.c, rtol=1e-9, atol=1e-9)
    disabled = Scaler.fit(Stats.of(x, y), "none")
    assert torch.equal(disabled.transform(x), x)


@pytest.mark.parametrize("value", [0.1, 1234567.8])
def test_scaler_centres_a_constant_column_to_exact_zero(value):
    """E[x²] − E[x]² of a constant 0.1 is rounding noise, not zero; dividing by it blew the column up."""
    gen = torch.Generator().manual_seed(8)
    a = torch.rand(1000, 1, generator=gen)
    x = torch.cat([a, torch.full((1000, 1), value), a * 2 - 1], dim=1)
    y = 3 * a + 1 + 0.1 * torch.randn(1000, 1, generator=gen)
    scaler = Scaler.fit(Stats.of(x, y), "standardize")
    assert scaler.constant.tolist() == [False, True, False] and float(scaler.std[1]) == 1.0
    assert bool((scaler.transform(x)[:, 1] == 0).all())
    scaled = scaler.transform_stats(Stats.of(x, y))
    assert bool((scaled.g[1] == 0).all()) and float(scaled.c[1]) == 0.0


# --- metrics ----------------------------------------------------------------------------------------


def test_regression_metrics_by_hand():
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 6.0]))
    assert m == pytest.approx({"mse": 1.0, "rmse": 1.0, "mae": 0.5, "r2": 1 - 4 / 5})


def test_summed_metrics_equal_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.normal(14, 5, 500)
    predicted = y + rng.normal(0, 1.5, 500)
    sums = Sums()
    for a, b in ((0, 7), (7, 7), (7, 333), (333, 500)):
        sums.add(y[a:b], predicted[a:b])
    want = {
        "mse": mean_squared_error(y, predicted),
        "rmse": np.sqrt(mean_squared_error(y, predicted)),
        "mae": mean_absolute_error(y, predicted),
        "r2": r2_score(y, predicted),
    }
    assert sums.metrics() == pytest.approx(want, rel=1e-12)
    assert regression_metrics(y, predicted) == pytest.approx(want, rel=1e-12)


def test_r2_is_none_where_the_target_does_not_vary():
    assert regression_metrics(np.full(4, 2.5), np.array([2.5, 2.5, 2.0, 3.0]))["r2"] is None
    assert regression_metrics(np.full(4, 0.1), np.full(4, 0.1))["r2"] is None  # not scikit-learn's 1.0
    assert regression_metrics(np.array([1.0, 2.0]), np.array([1.0, 2.0]))["r2"] == 1.0


# --- the least-squares reference and the gap --------------------------------------------------------


@pytest.mark.parametrize("chunk_rows", [1000, 7])
def test_least_squares_from_merged_qr_factors_equals_scikit_learn(chunk_rows):
    frame = pd.read_csv(ADVERTISING)
    x = torch.tensor(frame[["TV", "radio", "newspaper"]].to_numpy(), dtype=torch.float32)
    y = torch.tensor(frame[["sales"]].to_numpy(), dtype=torch.float32)
    factors = [qr_factor(x[a:b], y[a:b], chunk_rows) for a, b in ((0, 3), (3, 120), (120, 120), (120, 200))]
    reference = least_squares(factors)
    coef, bias = reference.weights, reference.bias
    assert reference.problem is None and reference.rank == 4
    ols = LinearRegression().fit(x.double().numpy(), y.double().numpy().ravel())
    np.testing.assert_allclose(coef, ols.coef_, rtol=1e-9)
    assert bias == pytest.approx(float(ols.intercept_), rel=1e-9)


def test_least_squares_of_collinear_features_is_finite_and_fits():
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(100, 1, generator=gen)
    x = torch.cat([a, 2 * a], dim=1)  # rank 1
    y = 3 * a + 1
    reference = least_squares([qr_factor(x, y)])
    coef, bias = reference.weights, reference.bias
    assert np.isfinite(coef).all()
    assert reference.problem is None and reference.rank == 2  # not unique: the weights are one solution of many
    fitted = x.double().numpy() @ coef + bias
    np.testing.assert_allclose(fitted, y.double().numpy().ravel(), atol=1e-5)


def test_evaluate_gives_zero_gap_for_the_exact_solution():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 2, generator=gen)
    y = x @ torch.tensor([[2.0], [-1.0]]) + 0.5 + 0.1 * torch.randn(50, 1, generator=gen)
    sol = lstsq(x, y)
    ols = least_squares([qr_factor(x, y)])
    parts = [{"x_train": x, "y_train": y, "x_test": x[:10], "y_test": y[:10]}]
    result = evaluate(parts, trained(sol[:2], sol[2], ["p", "q"]), ols)
    assert abs(result["optimality_gap"]) < 1e-9
    assert result["metrics"]["test"] == pytest.approx(result["baseline"]["test"], rel=1e-9)
    assert result["ols_weights"] == pytest.approx({"p": float(sol[0]), "q": float(sol[1])}, rel=1e-9)


def test_the_gap_of_a_perturbed_model_is_its_closed_form_excess():
    """At the least-squares θ* the residual is orthogonal to A, so MSE(θ* + δ) − MSE(θ*) = δᵀ(AᵀA/n)δ exactly.
    Tolerance: 1e-9 relative, float64 sums of the same predictions in another order."""
    x, y = synthetic(rows=400, seed=5)
    ols = least_squares([qr_factor(x, y)])
    delta = np.array([0.01, -0.02, 0.03, 0.05])  # weights then intercept
    model = trained(ols.weights + delta[:3], ols.bias + delta[3], ["a", "b", "c"])
    result = evaluate([{"x_train": x, "y_train": y, "x_test": x, "y_test": y}], model, ols)
    a = np.c_[x.double().numpy(), np.ones(len(x))]
    excess = float(delta @ (a.T @ a / len(x)) @ delta)
    assert result["reference_ok"] and result["optimality_gap_abs"] == pytest.approx(excess, rel=1e-9)
    assert result["optimality_gap"] == pytest.approx(excess / result["baseline"]["train"]["mse"], rel=1e-9)


def test_an_untrusted_or_impossible_reference_has_no_gap():
    x, y = synthetic(rows=100, seed=6)
    ols = least_squares([qr_factor(x, y)])
    rows = x.double().numpy(), y.double().numpy().ravel()

    def sums(weights, bias) -> Sums:
        return Sums.of(rows[1], rows[0] @ weights + bias)

    best = sums(ols.weights, ols.bias)
    worse = sums(ols.weights * 0.5, ols.bias)
    assert optimality_gap(best, best, ols)[2] is None
    flagged = Reference(ols.weights, ols.bias, ols.rank, ols.residual, problem="fails its check")
    assert optimality_gap(best, best, flagged) == (None, None, "fails its check")
    relative, absolute, problem = optimality_gap(best, worse, ols)  # a "reference" worse than gradient descent
    assert relative is None and absolute is None and "above gradient descent's" in problem


def test_an_exact_fit_has_an_absolute_gap_and_no_relative_one():
    gen = torch.Generator().manual_seed(5)
    x, y = torch.rand(4, 3, generator=gen), torch.rand(4, 1, generator=gen)  # 4 rows, 4 unknowns: interpolated
    ols = least_squares([qr_factor(x, y)])
    exact = Sums.of(y.double().numpy().ravel(), x.double().numpy() @ ols.weights + ols.bias)
    assert exact.sse < 1e-25
    relative, absolute, problem = optimality_gap(exact, exact, ols)
    assert problem is None and relative is None and absolute == 0.0
