"""Training reaches the closed-form least-squares optimum; the tutorial preset does not; divergence is caught."""

from __future__ import annotations

import dataclasses

import pyarrow.csv as pacsv
import pytest
import torch

from conftest import ADVERTISING
from flows.params import Params
from linreg import DivergenceError, Stats, fit
from linreg.loops import train_scratch
from linreg.model import initial_params, mse
from linreg.stats import Scaler
from linreg.tensors import to_tensors
from storage.errors import InputError
from tasks.drop_index import drop_index
from tasks.split import split_table

pytestmark = pytest.mark.no_server

RTOL = 1e-3  # stated tolerance: every weight and the bias within 0.1% of float64 least squares


@pytest.fixture(scope="module")
def advertising() -> dict:
    table = drop_index(pacsv.read_csv(ADVERTISING), "Unnamed: 0")
    return to_tensors(*split_table(table, 0.2, 0), "sales", None)


def lstsq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Weights then intercept, by float64 least squares."""
    a = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    return torch.linalg.lstsq(a, y.double()).solution.ravel()


def config(**overrides):
    return dataclasses.replace(Params(device="cpu").training(), **overrides)


@pytest.mark.parametrize("method", ["scratch", "builtins"])
def test_default_reaches_least_squares_optimum(advertising, method):
    result = fit(advertising["x_train"], advertising["y_train"], config(method=method))
    got = torch.cat([result.weights.double(), torch.tensor([result.bias], dtype=torch.float64)])
    expected = lstsq(advertising["x_train"], advertising["y_train"])
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=0)
    # the shared reference figures for this split
    assert expected.tolist() == pytest.approx([0.0445840, 0.1964970, -0.0027815, 2.994893], rel=1e-4)
    assert result.converged and len(result.history) < 100


def test_scratch_and_builtins_follow_the_same_trajectory(advertising):
    cfg = config(tol=0.0, epochs=50)
    scratch = fit(advertising["x_train"], advertising["y_train"], cfg)
    builtins = fit(advertising["x_train"], advertising["y_train"], dataclasses.replace(cfg, method="builtins"))
    assert len(scratch.history) == len(builtins.history) == 50
    torch.testing.assert_close(torch.tensor(scratch.history), torch.tensor(builtins.history), rtol=1e-5, atol=0)


def test_seed_preset_is_the_tutorial_and_stops_short_of_the_optimum(advertising):
    cfg = Params(preset="seed", device="cpu").training()
    assert (cfg.lr, cfg.epochs, cfg.scaling, cfg.init, cfg.tol) == (1e-5, 1000, "none", "randn", 0.0)
    result = fit(advertising["x_train"], advertising["y_train"], cfg)
    assert len(result.history) == 1000 and not result.converged
    optimum = lstsq(advertising["x_train"], advertising["y_train"])
    assert result.max_stable_lr == pytest.approx(3.22e-5, rel=1e-2)  # condition number ≈ 2.2e5 on raw features
    assert result.history[-1] > 3.0  # optimum train MSE is 2.4068
    assert abs(result.bias - float(optimum[-1])) > 1.0  # the intercept barely moves at lr 1e-5


def test_explicit_parameters_override_the_preset():
    cfg = Params(preset="seed", epochs=10, lr="auto").training()
    assert (cfg.epochs, cfg.lr, cfg.scaling) == (10, "auto", "none")


@pytest.mark.parametrize(
    ("lr", "what"), [(10.0, "loss became"), (1e-3, "loss rose for 5 epochs"), (3.5e-5, "loss rose for 5 epochs")]
)
def test_divergence_names_the_epoch_and_the_largest_stable_lr(advertising, lr, what):
    cfg = config(lr=lr, scaling="none", tol=0.0)
    with pytest.raises(DivergenceError, match=rf"diverged at epoch \d+ \({what}.*largest stable lr .* is 3\.22\d*e-05"):
        fit(advertising["x_train"].float(), advertising["y_train"].float(), cfg)  # a float32 loss: inf at lr 10


def test_cuda_request_without_cuda_is_a_clear_error(advertising):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(InputError, match="--device cuda was asked for but CUDA is not available"):
        fit(advertising["x_train"], advertising["y_train"], config(device="cuda"))


# --- the sufficient-statistics engine gives the same iterates as the row-wise loop --------------------


def float64_reference(x, y, cfg) -> tuple[list[float], torch.Tensor]:
    """The textbook loop itself, in float64, on the same change of variables and step size."""
    stats = Stats.of(x, y)
    scaler = Scaler.fit(stats, cfg.scaling)
    scaled = scaler.transform_stats(stats)
    lr = 1 / scaled.hessian_max_eigenvalue() if cfg.lr == "auto" else cfg.lr
    history: list[float] = []
    w0, b0 = initial_params(x.shape[1], cfg.init, cfg.seed, torch.device("cpu"))
    w, b = train_scratch(
        scaler.transform(x.double()),
        scaler.transform_y(y.double()),
        w0.double(),
        b0.double(),
        lr,
        cfg.epochs,
        lambda loss: history.append(loss) or False,
    )
    w_raw, b_raw = scaler.unfold(w, b)
    return history, torch.cat([w_raw, torch.tensor([b_raw], dtype=torch.float64)])


@pytest.mark.parametrize("preset", ["default", "seed"])
def test_stats_engine_matches_the_row_loop(advertising, preset):
    cfg = dataclasses.replace(Params(preset=preset, device="cpu").training(), tol=0.0, epochs=300)
    x, y = advertising["x_train"], advertising["y_train"]
    expected_history, expected_theta = float64_reference(x, y, cfg)
    rows = fit(x, y, dataclasses.replace(cfg, engine="rows"))
    stats = fit(x, y, dataclasses.replace(cfg, engine="stats"))
    assert (rows.engine, stats.engine) == ("rows", "stats")
    # per-epoch loss within 1e-4 relative of the float64 row loop (the stats engine is float64 itself)
    torch.testing.assert_close(torch.tensor(stats.history), torch.tensor(expected_history), rtol=1e-9, atol=0)
    torch.testing.assert_close(torch.tensor(rows.history), torch.tensor(expected_history), rtol=1e-4, atol=0)
    theta_stats = torch.cat([stats.weights.double(), torch.tensor([stats.bias], dtype=torch.float64)])
    theta_rows = torch.cat([rows.weights.double(), torch.tensor([rows.bias], dtype=torch.float64)])
    torch.testing.assert_close(theta_stats, expected_theta, rtol=1e-5, atol=0)
    torch.testing.assert_close(theta_rows, theta_stats, rtol=1e-5, atol=0)


def test_auto_engine_picks_stats_for_many_rows():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(150_000, 2, generator=gen)
    y = x @ torch.tensor([[3.0], [-2.0]]) + 1
    result = fit(x, y, Params(device="cpu").training())
    assert result.engine == "stats"
    torch.testing.assert_close(result.weights.float(), torch.tensor([3.0, -2.0]), rtol=1e-4, atol=1e-5)
    assert result.bias == pytest.approx(1.0, rel=1e-4)
    assert float(mse(x @ result.weights.float().reshape(-1, 1) + result.bias, y)) < 1e-8
    assert fit(x[:1000], y[:1000], Params(device="cpu").training()).engine == "rows"


def test_stats_engine_refuses_the_builtins_method(advertising):
    with pytest.raises(InputError, match="--engine stats trains the scratch model only"):
        fit(advertising["x_train"], advertising["y_train"], config(engine="stats", method="builtins"))
