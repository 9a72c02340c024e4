"""A rollback end to end through Prefect (issue 25): two training runs on the session's server (the second's
model better, so the first becomes ``previous``), ``python -m flows.registry rollback``, then predict with
``@previous`` and ``@champion`` as CLI processes: each used the model file (sha256) the registry names; the
rollback is in ``python -m flows.history --json``'s ``registry`` list and its event reached the server. The
registry's unit tests (no server) are tests/test_registry.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import stagecore as core
from conftest import ADVERTISING, ROOT, events_of
from flows.local_server import isolated_env
from flows.train import linear_regression
from lifecycle import champion
from tasks import events


def cli(env: dict[str, str], module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args, "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def last_json(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_rollback_then_predict_with_previous_and_champion(artifacts, tmp_path, prefect_api_url):
    root = str(artifacts)
    # two standardized epochs with no tolerance: off the optimum, promoted only as the first model of its kind
    worse = linear_regression(artifacts_dir=root, epochs=2, tol=0.0, scaling="standardize", promote_off_optimum=True)
    better = linear_regression(artifacts_dir=root)
    assert worse["promotion"]["promoted"] and better["promotion"]["promoted"]
    assert better["promotion"]["challenger_test_mse"] < worse["promotion"]["challenger_test_mse"]
    sha = {
        name: core.read_manifest(s["artifacts"]["train"]["model"])["sha256"]
        for name, s in (("worse", worse), ("better", better))
    }

    env = isolated_env(tmp_path / "client", PREFECT_API_URL=prefect_api_url)
    rolled = last_json(cli(env, "flows.registry", "rollback", "--artifacts-dir", root, "--reason", "better drifts"))
    assert rolled["changed"] and rolled["alias"] == "champion" and rolled["sha256"] == sha["worse"]
    assert rolled["reason"].endswith(": better drifts") and rolled["generation"] == 3
    assert champion.champion_model_path(root) == str(Path(worse["artifacts"]["train"]["model"]).resolve())

    predict = ["--data", str(ADVERTISING), "--artifacts-dir", root, "--no-drift", "--model"]
    running = {alias: cli(env, "flows.predict", *predict, alias) for alias in ("@previous", "@champion")}
    listing = cli(env, "flows.history", "--artifacts-dir", root)  # the three processes at once
    for alias, want in (("@previous", "better"), ("@champion", "worse")):
        summary = last_json(running[alias])
        assert core.read_manifest(summary["model"])["sha256"] == sha[want], alias
        inputs = {entry["sha256"] for entry in core.read_manifest(summary["predictions"])["inputs"]}
        assert sha[want] in inputs and sha[{"better": "worse", "worse": "better"}[want]] not in inputs, alias

    history = last_json(listing)
    assert [(c["alias"], c["model"], c["generation"], c["reason"]) for c in history["registry"]] == [
        ("champion", rolled["model"], 3, rolled["reason"])
    ]
    [event] = events_of(events.RESOURCE_PREFIX + sha["worse"][:16], events.ROLLED_BACK)
    assert event.payload["generation"] == 3 and event.payload["reason"] == rolled["reason"]
    assert event.payload["model"] == rolled["model"] and event.payload["model_sha256"] == sha["worse"]
