"""Sweeps and cross-validation (flows/sweep.py, linreg/folds.py): configurations equal single runs, the upstream
stages run once, a failing configuration is a row, the folds are scikit-learn's and their numbers least squares'."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter
from sklearn.model_selection import KFold

import stagecore as core
import storage
from conftest import events_of
from flows import history
from flows.params import Params
from flows.sweep import grid, main, read_file, validate
from flows.train import linear_regression
from lifecycle import trend
from linreg.folds import cross_validate, fold_stats, kfold_ids, stats_mse
from storage.errors import InputError
from tasks.sweep_report import SWEEP_KEY, ranked_rows

UPSTREAM = ("ingest", "drop_index", "split", "tensorize", "accumulate")


@pytest.mark.no_server
def test_the_grid_is_the_product_of_the_sets_and_a_file_gives_the_same():
    assert grid(["lr=0.1,auto", "epochs=5,6"]) == [
        {"lr": "0.1", "epochs": "5"},
        {"lr": "0.1", "epochs": "6"},
        {"lr": "auto", "epochs": "5"},
        {"lr": "auto", "epochs": "6"},
    ]
    for bad, why in (("lr", "expected KEY=V1"), ("data=a.csv", "not a knob"), ("target=x", "not a knob")):
        with pytest.raises(InputError, match=why):
            grid([bad])
    with pytest.raises(InputError, match="set twice"):
        grid(["lr=0.1", "lr=auto"])


@pytest.mark.no_server
def test_a_yaml_file_is_a_grid_or_a_list(tmp_path: Path):
    path = tmp_path / "sweep.yaml"
    path.write_text("lr: [0.1, auto]\nepochs: 5\n")
    assert read_file(str(path)) == [{"lr": 0.1, "epochs": 5}, {"lr": "auto", "epochs": 5}]
    path.write_text("- {lr: 0.1}\n- {scaling: none, init: randn}\n")
    assert read_file(str(path)) == [{"lr": 0.1}, {"scaling": "none", "init": "randn"}]
    path.write_text("- {data: x.csv}\n")
    with pytest.raises(InputError, match="data is not a knob"):
        read_file(str(path))


@pytest.mark.no_server
def test_every_configuration_is_validated_and_the_bad_value_named(capsys):
    with pytest.raises(InputError, match=r"^--set lr=-1: --lr: Input should be greater than 0"):
        validate({}, grid(["epochs=5", "lr=0.1,-1"]))
    # a rule between settings names the configuration
    with pytest.raises(InputError, match=r"^configuration method=builtins, engine=stats: --engine stats trains"):
        validate({}, grid(["method=builtins", "engine=stats"]))
    with pytest.raises(InputError, match="--lr is also swept"):
        validate({"lr": 0.1}, grid(["lr=0.2"]))
    assert [p.lr for p in validate({"epochs": 7}, grid(["lr=0.1,auto"]))] == [0.1, "auto"]
    assert main(["--set", "epochs=0"]) == 2  # before Prefect starts: one line, exit 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --set epochs=0: --epochs: Input should be greater than 0 (got '0')"
    ]


@pytest.mark.no_server
@pytest.mark.parametrize(("n", "k", "seed"), [(37, 5, 3), (10, 10, 0), (200, 3, 2**32 - 1)])
def test_the_folds_are_scikit_learns_kfold(n: int, k: int, seed: int):
    ids = kfold_ids(n, k, seed)
    expected = [test for _, test in KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n))]
    assert [sorted(np.flatnonzero(ids == f)) for f in range(k)] == [sorted(t) for t in expected]
    with pytest.raises(InputError, match="--folds 11: pass 2 to 10 folds"):
        kfold_ids(10, 11, 0)


def _rows(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1]) + 5
    y = x @ torch.tensor([[2.0], [-0.3], [7.0]], dtype=torch.float64) + 1.5 + torch.randn(n, 1, generator=g) * 0.5
    return x, y


@pytest.mark.no_server
def test_fold_statistics_give_the_held_out_rows_mse_whatever_the_partitions():
    x, y = _rows(101)
    ids = kfold_ids(101, 4, 7)
    w, b = torch.tensor([1.0, 0.2, -3.0], dtype=torch.float64), 0.7
    whole = fold_stats([(x, y)], ids, 4)
    cut = fold_stats([(x[:30], y[:30]), (x[30:31], y[30:31]), (x[31:], y[31:])], ids, 4)
    for f in range(4):
        held = torch.from_numpy(ids == f)
        direct = float(((y[held].reshape(-1) - x[held] @ w - b) ** 2).mean())
        assert stats_mse(whole[f], w, b) == pytest.approx(direct, rel=1e-12)
        assert stats_mse(cut[f], w, b) == pytest.approx(direct, rel=1e-12)


@pytest.mark.no_server
@pytest.mark.parametrize("engine", ["stats", "rows"])
def test_cross_validation_matches_least_squares_on_each_fold(engine: str):
    """The default recipe reaches the optimum: each fold's validation MSE is that of numpy's least squares fitted
    on the other folds' rows (scikit-learn's KFold), scored on the held-out ones."""
    x, y = _rows(240, seed=1)
    cfg = replace(Params.parse(engine=engine, seed=5).training(), tol=1e-12)
    parts = [(x[:100], y[:100]), (x[100:], y[100:])]
    result = cross_validate(parts, cfg, 5)
    a = np.hstack([x.numpy(), np.ones((240, 1))])
    expected = []
    for train, test in KFold(n_splits=5, shuffle=True, random_state=5).split(a):
        theta = np.linalg.lstsq(a[train], y.numpy()[train], rcond=None)[0]
        expected.append(float(((a[test] @ theta - y.numpy()[test]) ** 2).mean()))
    assert result.engine == engine
    assert result.rows == [48] * 5
    assert result.validation_mse == pytest.approx(expected, rel=1e-7)


@pytest.mark.no_server
def test_the_ranked_table_escapes_what_users_wrote():
    rows = [
        {
            "params": {"lr": 0.1},
            "test_mse": 4.0,
            "cv_mse_mean": 3.0,
            "cv_mse_std": 0.5,
            "gap": 0.0,
            "epochs_run": 9,
            "seconds": 1.0,
            "status": "ok",
            "reason": None,
        },
        {
            "params": {"lr": 50.0},
            "test_mse": None,
            "cv_mse_mean": None,
            "cv_mse_std": None,
            "gap": None,
            "epochs_run": None,
            "seconds": 0.2,
            "status": "failed",
            "reason": "diverged | <b>x</b>",
        },
    ]
    table = ranked_rows(rows, [0, 1], folds=5)
    assert [r["rank"] for r in table] == [1, 2]
    assert table[0]["validation MSE"] == "3 ± 0.5"
    assert table[1]["status"] == "failed: diverged | <b>x</b>"  # escaped by markdown_table when rendered


@pytest.mark.no_server
def test_the_loss_curves_are_one_plot_one_curve_per_configuration_named_by_number():
    histories = {0: [10.0 / (e + 1) for e in range(5000)], 3: [8.0, 4.0, 2.0], 7: [float("nan"), 0.0]}
    plot = trend.curves(histories).decode()
    assert plot.startswith("<svg") and plot.count("<polyline") == 2  # #7 has no drawable epoch
    assert re.findall(r">(#\d+)</text>", plot) == ["#0", "#3"]
    assert "log scale" in plot
    # a long history is thinned, its first and last epochs kept; log10 of the loss on the y axis
    first = re.search(r'<polyline points="([^"]+)"', plot).group(1).split()
    assert len(first) <= 401
    assert first[0].startswith("72.0,") and first[-1].startswith("616.0,")
    ys = [float(p.split(",")[1]) for p in first]
    assert ys == sorted(ys)  # the loss falls: y grows downwards in SVG


def test_a_sweep_equals_single_runs_reuses_upstream_and_survives_a_failing_configuration(artifacts: Path, capsys):
    """After single runs of two settings, a sweep over them (and one that diverges) finds the stages before
    training Cached, reports each configuration's numbers as the single run's, and the failure as a row."""
    common = {"artifacts_dir": str(artifacts), "epochs": 300}
    singles = [linear_regression(**common, lr=lr) for lr in ("auto", 0.01)]
    code = main(["--artifacts-dir", str(artifacts), "--epochs", "300", "--set", "lr=auto,0.01,50", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) >= {"configs", "best", "promotion"}
    assert out["upstream_cached"] == dict.fromkeys(UPSTREAM, True)
    ok, ok2, failed = out["configs"]
    for row, single in zip((ok, ok2), singles, strict=True):
        assert set(row) >= {"params", "test_mse", "cv_mse_mean", "cv_mse_std", "status", "reason"}
        assert row["status"] == "ok" and row["reason"] is None and row["cv_mse_mean"] is None
        assert row["test_mse"] == single["metrics"]["test"]["mse"]
        assert row["epochs_run"] == single["epochs_run"]
    assert ok["params"] == {"lr": "auto"} and ok2["params"] == {"lr": 0.01}
    assert failed["status"] == "failed" and failed["test_mse"] is None
    assert "training diverged" in failed["reason"] and "lr=50" in failed["reason"]
    assert out["best"]["index"] == 0
    assert out["best"]["model"] == singles[0]["artifacts"]["train"]["model"]  # the same cached model file
    assert out["promotion"]["reason"].startswith("this run's model is already the champion")
    with get_client(sync_client=True) as client:  # named and tagged like a training run (flows/labels.py)
        labelled = client.read_flow_run(out["flow_run_id"])
        assert labelled.name.startswith("Advertising-sweep-") and len(labelled.name.rsplit("-", 1)[1]) == 6
        assert sorted(labelled.tags) == ["promoted", "store:local", "sweep"]
        [report] = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id={"any_": [out["flow_run_id"]]}, key={"any_": [SWEEP_KEY]})
        )
    [plot] = re.findall(r"\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", report.data)
    assert base64.b64decode(plot).count(b"<polyline") == 2  # the two ok configurations, not the diverged one

    # in a fresh store the best configuration is promoted, and the sweep announces it as a training run does
    fresh = artifacts.parent / "fresh"
    assert main(["--artifacts-dir", str(fresh), "--epochs", "300", "--set", "lr=0.01,auto", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["best"]["index"] == 1 and out["promotion"]["promoted"]
    sha = core.read_manifest(out["best"]["model"])["sha256"]
    [promoted] = events_of(f"linreg.model.{sha[:16]}", "linreg.model.promoted")
    assert promoted.payload["flow_run_id"] == out["flow_run_id"]
    assert promoted.payload["model"] == storage.store_relative(fresh, out["best"]["model"])
    assert promoted.payload["test_mse"] == out["best"]["test_mse"]

    # flows.history --diff: the two single runs side by side, by a prefix of each id
    a, b = (single["flow_run_id"] for single in singles)
    assert history.main(["--artifacts-dir", str(artifacts), "--diff", a[:12], b, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["runs"] == [a, b]
    assert shown["params"]["lr"] == ["auto", 0.01] and "lr" in shown["differ"]
    assert shown["metrics"]["test_mse"] == [s["metrics"]["test"]["mse"] for s in singles]
    assert history.main(["--artifacts-dir", str(artifacts), "--diff", a, "nope"]) == 2
    assert "--diff nope: no recorded run" in capsys.readouterr().err
