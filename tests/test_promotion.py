"""Champion and promotion: the decision, the pointer, the race of two runs; the flow's JSON block, exit code and
history rows."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
import torch

import stagecore as core
import storage
from conftest import ADVERTISING
from flows.train import main
from lifecycle import champion, decision
from lifecycle.history import read_history
from linreg import regression_metrics
from stagecore.manifest import describe_pt
from storage.atomic import write_json
from tasks import promote

FEATURES = ["a", "b"]
TRUE_W = torch.tensor([2.0, -1.0])


def save(obj: dict, path: Path) -> str:
    """A ``.pt`` file with a manifest that ``core.verify`` accepts (what a stage would have written): its stage
    and entries, which a champion pointer's model must have."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.write_bytes(buffer.getvalue())
    manifest = {"sha256": storage.sha256_file(path), "size": path.stat().st_size, "format": "pt"}
    manifest.update(stage=path.parent.parent.name, schema=describe_pt(obj))  # <root>/<stage>/<key>/<file>
    write_json(manifest, core.manifest_path(path))
    return str(path)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


@pytest.fixture
def tensors(store: Path) -> str:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 2, generator=gen)
    y = (x @ TRUE_W + 0.5 + 0.1 * torch.randn(50, generator=gen)).unsqueeze(1)
    return save({"x_test": x, "y_test": y}, store / "tensorize" / "k" / "tensors.pt")


def model(store: Path, name: str, scale: float = 1.0, features=FEATURES, target: str = "y") -> str:
    """A model ``scale`` times the true weights (1.0: the best); ``name`` makes its file (and sha256) its own."""
    obj = {"weights": TRUE_W * scale, "bias": 0.5, "features": list(features), "target": target, "name": name}
    return save(obj, store / "train" / name / "model.pt")


def run(store: Path, tensors: str, model_path: str, tolerance: float = 0.0) -> dict:
    return promote.promote(str(store), [tensors], model_path, f"run-{Path(model_path).parent.name}", tolerance)[0]


@pytest.mark.no_server
def test_mse_is_evaluates_mse_on_the_test_rows(tensors):
    t = core.read_pt(tensors)
    expected = regression_metrics(
        t["y_test"].double().numpy().ravel(), (t["x_test"].double() @ TRUE_W.double() + 0.5).numpy()
    )
    assert decision.mse([t], TRUE_W, 0.5) == pytest.approx(expected["mse"], rel=1e-12)


@pytest.mark.parametrize(
    ("challenger", "champion", "tolerance", "promoted"),
    [
        (1.0, 2.0, 0.0, True),
        (2.0, 1.0, 0.0, False),
        (1.0, 1.0, 0.0, True),
        (1.05, 1.0, 0.1, True),
        (1.2, 1.0, 0.1, False),
    ],
)
@pytest.mark.no_server
def test_decide(challenger, champion, tolerance, promoted):
    assert decision.decide(challenger, champion, tolerance)[0] is promoted
    assert decision.decide(challenger, None, tolerance) == (True, "first successful run: no champion yet")
    assert decision.decide(challenger, float("inf"), tolerance)[0] and not decision.decide(float("nan"), 1.0, 0.0)[0]


@pytest.mark.no_server
def test_first_better_worse_equal_within_tolerance(store, tensors):
    first = run(store, tensors, model(store, "first", scale=0.8))
    assert first["promoted"] and first["champion_test_mse"] is None
    pointer = champion.read_champion(store)
    assert pointer["model"] == str((store / "train" / "first" / "model.pt").resolve())
    assert json.loads(Path(champion.pointer_path(store)).read_text())["model"] == "train/first/model.pt"
    core.verify(Path(champion.pointer_path(store)))  # the pointer has its manifest

    better = run(store, tensors, model(store, "better", scale=0.9))
    assert better["promoted"] and better["challenger_test_mse"] < better["champion_test_mse"]
    worse = run(store, tensors, model(store, "worse", scale=0.5))
    assert not worse["promoted"] and "not promoted" in worse["reason"]
    assert champion.champion_model_path(store) == worse["champion"] == str((store / "train/better/model.pt").resolve())
    equal = run(store, tensors, model(store, "equal", scale=0.9))  # same weights, another file
    assert equal["promoted"] and equal["challenger_test_mse"] == equal["champion_test_mse"]
    slightly_worse = model(store, "slightly", scale=0.88)
    assert not run(store, tensors, slightly_worse)["promoted"]
    tolerated = run(store, tensors, slightly_worse, tolerance=0.5)
    assert tolerated["promoted"] and "tolerance 0.5" in tolerated["reason"]
    assert champion.champion_model_path(store).endswith("train/slightly/model.pt")
    again = run(store, tensors, slightly_worse)  # the champion against itself: unchanged
    assert again["promoted"] and "already the champion" in again["reason"]


@pytest.mark.no_server
def test_another_target_is_another_model_and_leaves_the_first_models_champion(store, tensors):
    best = run(store, tensors, model(store, "best", scale=1.0))
    other = run(store, tensors, model(store, "other", scale=0.1, target="z"))
    assert other["promoted"] and other["champion_test_mse"] is None
    assert other["reason"] == "first model of its kind: promoted" and other["model"] == "z ← a, b"
    assert champion.champion_model_path(store, champion.Model.of("y", FEATURES)) == best["champion"]


@pytest.mark.no_server
def test_a_pointer_outside_the_root_or_altered_model_is_refused(store, tensors):
    run(store, tensors, model(store, "m"))
    path = Path(champion.pointer_path(store))
    pointer = json.loads(path.read_text())
    path.write_text(json.dumps({**pointer, "model": "../elsewhere/model.pt"}))
    with pytest.raises(ValueError, match="outside the artifacts folder"):
        champion.read_champion(store)
    path.write_text(json.dumps({**pointer, "model_sha256": "0" * 64}))
    with pytest.raises(core.IntegrityError):
        champion.read_champion(store)
    replaced = run(store, tensors, model(store, "next", scale=0.1))  # an unusable champion is replaced
    assert replaced["promoted"] and "cannot be used" in replaced["reason"]


@pytest.mark.no_server
def test_two_racing_runs_end_as_if_one_ran_after_the_other(store, tensors, monkeypatch):
    """Both read the champion (A) slowly; without the conditional create of the next generation both would beat
    A and the slower writer would win."""
    run(store, tensors, model(store, "a", scale=0.5))
    read = champion.read_champion

    def slow_read(root, generation=None, model=None):
        champion = read(root, generation, model)
        time.sleep(0.3)
        return champion

    monkeypatch.setattr(champion, "read_champion", slow_read)
    paths = {"b": model(store, "b", scale=0.8), "c": model(store, "c", scale=1.0)}  # c is the best
    results, start = {}, threading.Barrier(2)

    def challenger(name):
        start.wait()
        if name == "b":
            time.sleep(0.05)  # b writes last if both decide against a
        results[name] = run(store, tensors, paths[name])

    threads = [threading.Thread(target=challenger, args=(n,)) for n in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Either serial order is a right answer (under load c may start late); what is never right is a run judged
    # against a champion that was no longer current when its generation was written.
    assert champion.champion_model_path(store) == str(Path(paths["c"]).resolve())
    opened = storage.open_store(store)
    history = [champion.read_champion(store, g)["model"] for g in range(1, champion.latest_generation(opened) + 1)]
    names = [Path(m).parent.name for m in history]
    b, c = results["b"], results["c"]
    assert c["promoted"]
    if b["promoted"]:  # b, then c: c was compared with b
        assert names == ["a", "b", "c"] and c["champion_test_mse"] == b["challenger_test_mse"]
    else:  # c, then b: b was compared with c, not with a
        assert names == ["a", "c"] and b["champion_test_mse"] == c["challenger_test_mse"]


def test_flow_json_promotion_block_and_require_promotion(artifacts, capsys):
    assert main(["--artifacts-dir", str(artifacts), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    block = json.loads(out[-1])["promotion"]
    assert set(block) == {"promoted", "model", "reason", "champion", "champion_test_mse", "challenger_test_mse"}
    assert block["model"] == "sales ← TV, newspaper, radio" and block["reason"] == "first model of its kind: promoted"
    assert block["promoted"] and block["champion_test_mse"] is None
    assert block["champion"] == champion.champion_model_path(artifacts) and Path(block["champion"]).is_absolute()
    assert block["challenger_test_mse"] == pytest.approx(4.4021, abs=0.01)
    assert any(line.startswith("promotion: promoted") for line in out)

    # two standardized epochs (whitened, one is the optimum): off the optimum, compared on test MSE all the same
    worse = ["--artifacts-dir", str(artifacts), "--epochs", "2", "--tol", "0", "--scaling", "standardize"]
    worse += ["--promote-off-optimum", "--require-promotion", "--json"]
    assert main(worse) == 2
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("error: --require-promotion: challenger test MSE") and "not promoted" in error
    assert champion.champion_model_path(artifacts) == block["champion"]  # the champion stayed
    runs = read_history(artifacts).to_pylist()  # the failed run is recorded too
    assert [r["promoted"] for r in runs] == [True, False]
    assert [r["rows"] for r in runs] == [200, 200] and runs[0]["test_mse"] == block["challenger_test_mse"]
    assert runs[0]["data_sha256"] == storage.sha256_file(ADVERTISING) == runs[1]["data_sha256"]
    assert json.loads(runs[1]["params"])["epochs"] == 2 and runs[1]["test_mse"] > runs[0]["test_mse"]
    assert runs[0]["model"].startswith("train/") and runs[0]["time"] < runs[1]["time"]


@pytest.mark.no_server
def test_a_model_off_the_optimum_is_not_promoted_and_the_champion_stays(store, tensors):
    run(store, tensors, model(store, "a", scale=0.5))
    current = champion.champion_model_path(store)
    best = model(store, "best", scale=1.0)  # better than the champion, but its run ended off the optimum
    block, level, wrote = promote.promote(str(store), [tensors], best, "run-best", 0.0, "its train MSE 3 is 0.35 above")
    assert not block["promoted"] and level == "warning" and wrote is None
    assert "off the least-squares optimum (its train MSE 3 is 0.35 above)" in block["reason"]
    assert "--promote-off-optimum" in block["reason"] and block["champion"] == current
    assert champion.champion_model_path(store) == current
    assert run(store, tensors, best)["promoted"]  # allowed (no reason passed): it wins on its test MSE


def test_the_tutorial_preset_is_off_the_optimum_says_so_first_and_is_not_promoted(artifacts, capsys):
    assert main(["--artifacts-dir", str(artifacts), "--preset", "seed", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert out[0].startswith("WARNING: the model is off the least-squares optimum: its train MSE 3.25261 is 0.351")
    assert "--scaling auto" in out[0] and "--lr auto" in out[0] and "--promote-off-optimum" in out[0]
    assert summary["off_optimum"].startswith("its train MSE") and not summary["promotion"]["promoted"]
    assert champion.champion_model_path(artifacts) is None
    assert main(["--artifacts-dir", str(artifacts), "--preset", "seed", "--require-promotion"]) == 2
    assert main(["--artifacts-dir", str(artifacts), "--preset", "seed", "--promote-off-optimum", "--json"]) == 0
    promoted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert promoted["promotion"]["promoted"] and champion.champion_model_path(artifacts) is not None
    assert [r["promoted"] for r in read_history(artifacts).to_pylist()] == [False, False, True]
    # the default run is on the optimum: no warning, promoted over the tutorial's model
    assert main(["--artifacts-dir", str(artifacts), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert not out[0].startswith("WARNING") and json.loads(out[-1])["off_optimum"] is None
    assert json.loads(out[-1])["promotion"]["promoted"]
