"""Workers anywhere: the git deployments (prefect-git.yaml), deployed from one clone and run by a worker that has
neither it nor the project, with the artifacts on an S3 server.

A bare repository under tmp stands in for the team's remote; it holds this checkout's committed code (HEAD:
uncommitted changes are not in it). ``prefect deploy --name git-on-demand`` runs in a clone of it, which is then
moved away. A process worker starts in an empty folder with the project hidden from its Python (below), runs one
triggered run and exits (``--run-once``). The session's real Prefect server (conftest) and moto's S3 server
(tests/moto_s3.py) are on loopback. The run promotes its model, and prefect-git.yaml's git-predict-on-promotion
answers the event (it carries the run's pool): a second ``--run-once`` worker runs that prediction from a clone too.
The other git deployments share the steps (checked in prefect-git.yaml).

The shared virtualenv has this project installed in editable mode (a meta-path finder pointing at some checkout),
which would quietly serve ``flows``, ``tasks`` and ``stagecore`` to a run whose clone did not work. The deploy
and worker processes get a ``sitecustomize`` that removes that finder, as on a machine that has the project's
dependencies but not the project: the code can only come from the clone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, LogFilter
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound

import stagecore as core
import storage
from conftest import ROOT, events_of, retire_promotion_trigger, worker_env
from flows.local_server import PREFECT, isolated_env, start_process, stop_process
from lifecycle import champion
from lifecycle.history import read_history
from moto_s3 import s3_server

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("boto3")

BUCKET = "linreg-team"
PREFIX = f"s3://{BUCKET}/shared"
BRANCH = "team-main"
EPOCHS = 15
TWIN = "git-predict-on-promotion"  # predicts with what a run on pool git-process promotes
TAIL = 4000
HIDE_PROJECT = """\
import sys

sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable___linreg_flow")]
"""

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a git checkout"
)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-TAIL:] if path.exists() else f"({path} missing)"


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def team(prefect_api_url: str, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("git-worker")
    remote = base / "remote.git"
    _git("init", "--quiet", "--bare", str(remote))
    _git("push", "--quiet", str(remote), f"HEAD:refs/heads/{BRANCH}", cwd=ROOT)
    url = remote.as_uri()
    deployer = base / "deployer"
    _git("clone", "--quiet", "--branch", BRANCH, url, str(deployer))
    hide = base / "no-project"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_PROJECT)
    probe = subprocess.run(
        [sys.executable, "-c", "import stagecore"],
        cwd=hide,
        env={**os.environ, "PYTHONPATH": str(hide)},
        capture_output=True,
        timeout=60,
    )
    assert probe.returncode != 0, "the project is importable without its editable finder: a run could use it"

    with get_client(sync_client=True) as client:  # the pool `make deploy-git` creates
        try:
            client.read_work_pool("git-process")
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name="git-process", type="process"))
    started = time.monotonic()
    deploy = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "-n", "git-on-demand", "-n", TWIN, "--prefect-file", "prefect-git.yaml"],
        cwd=deployer,
        env=isolated_env(
            base / "deploy-home",
            PREFECT_API_URL=prefect_api_url,
            PYTHONPATH=str(hide),
            LINREG_GIT_URL=url,
            LINREG_GIT_BRANCH=BRANCH,
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    deploy_seconds = time.monotonic() - started
    assert deploy.returncode == 0, deploy.stdout[-TAIL:] + deploy.stderr[-TAIL:]
    deployed_tree = _snapshot(deployer)
    moved = deployer.rename(base / "deployer-moved")  # the runs must not need the folder that deployed

    with s3_server(base / "moto", BUCKET) as aws:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("linear-regression/git-on-demand")
            flow_run = client.create_flow_run_from_deployment(deployment.id, parameters={"epochs": EPOCHS})
        workdir, worker_tmp = base / "worker", base / "worker-tmp"
        workdir.mkdir()
        worker_tmp.mkdir()
        worker_log = base / "worker.log"
        env = worker_env(
            base / "worker-home",
            prefect_api_url,
            PYTHONPATH=str(hide),
            TMPDIR=str(worker_tmp),  # the run's temporary folder, where it clones, is made in here
            LINREG_ARTIFACTS_DIR=PREFIX,
            **aws,
        )
        started = time.monotonic()
        _run_once(env, worker_log, workdir)
        seconds = time.monotonic() - started
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run.id)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the run's last log lines arrive a moment after its final state
                logs = client.read_logs(LogFilter(flow_run_id={"any_": [flow_run.id]}), limit=200)
                if any(log.task_run_id is None and "Finished in state" in log.message for log in logs):
                    break
                time.sleep(0.5)
        print(
            f"\nlinear-regression/git-on-demand: deployed in {deploy_seconds:.1f}s; "
            f"{flow_run.state_name} {seconds:.1f}s after the worker started"
        )
        assert flow_run.state and flow_run.state.is_completed(), (
            f"run ended {flow_run.state_name}; worker log:\n{_tail(worker_log)}"
        )
        objects = s3fs.S3FileSystem(
            endpoint_url=aws["AWS_ENDPOINT_URL"], key=aws["AWS_ACCESS_KEY_ID"], secret=aws["AWS_SECRET_ACCESS_KEY"]
        )
        stored = {f"s3://{path}": objects.cat_file(path) for path in objects.find(f"{BUCKET}/shared")}
        try:
            predicted, predicted_logs = _the_prediction_it_started(base, env, workdir)
            predictions = {
                f"s3://{path}": objects.cat_file(path)
                for path in objects.find(f"{BUCKET}/shared/predict")
                if path.endswith(".manifest.json")
            }
        finally:
            retire_promotion_trigger(TWIN)
        yield {
            "predicted": predicted,
            "predicted_logs": predicted_logs,
            "predictions": predictions,
            "deployment": deployment,
            "flow_run": flow_run,
            "logs": [log.message for log in logs],
            "url": url,
            "aws": aws,
            "stored": stored,
            "deployer": deployer,
            "moved": moved,
            "deployed_tree": deployed_tree,
            "worker_tmp": worker_tmp,
        }


def _run_once(env: dict[str, str], log: Path, workdir: Path) -> None:
    """A process worker of pool git-process with ``--run-once``: picks up one run, waits for it to end, exits."""
    command = [PREFECT, "worker", "start", "--pool", "git-process", "--type", "process", "--run-once", "--limit", "1"]
    worker = start_process(command, env, log, cwd=workdir)
    try:
        worker.wait(timeout=240)
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop_process(worker)


def _the_prediction_it_started(base: Path, env: dict[str, str], workdir: Path) -> tuple[FlowRun | None, list[str]]:
    """The git-predict-on-promotion run that the training run's promotion made the server create (nobody asked
    for it), run by a second ``--run-once`` worker of pool git-process; (None, []) when none was created."""
    with get_client(sync_client=True) as client:
        twin = client.read_deployment_by_name(f"linear-regression-predict/{TWIN}")
        by_twin = DeploymentFilter(id={"any_": [twin.id]})
        deadline = time.monotonic() + 60
        while not (runs := client.read_flow_runs(deployment_filter=by_twin)) and time.monotonic() < deadline:
            time.sleep(0.5)
    if not runs:
        return None, []
    worker_log = base / "worker-twin.log"
    _run_once(env, worker_log, workdir)
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(deployment_filter=by_twin)
        logs = client.read_logs(LogFilter(flow_run_id={"any_": [run.id]}), limit=200)
    assert run.state and run.state.is_final(), f"{TWIN}: {run.state_name}; worker log:\n{_tail(worker_log)}"
    return run, [log.message for log in logs]


def test_git_deployment_stores_the_repository_and_branch_not_the_deploying_folder(team):
    deployment = team["deployment"]
    assert deployment.work_pool_name == "git-process"
    assert deployment.entrypoint == "flows/train.py:linear_regression"
    [check, clone] = deployment.pull_steps
    assert check["prefect.deployments.steps.run_shell_script"]["id"] == "artifacts-dir"
    assert clone == {
        "prefect.deployments.steps.git_clone": {"id": "clone", "repository": team["url"], "branch": BRANCH}
    }
    assert str(team["deployer"]) not in json.dumps(deployment.pull_steps)


@pytest.mark.no_server
def test_prefect_yaml_git_deployments_mirror_the_local_ones_with_the_git_steps():
    """The git ones are a file of their own (prefect-git.yaml), so `prefect deploy --all` deploys the local ones."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    git_config = yaml.safe_load((ROOT / "prefect-git.yaml").read_text())
    local_by_name = {d["name"]: d for d in config["deployments"]}
    git_by_name = {d["name"]: d for d in git_config["deployments"]}
    assert set(local_by_name) == {"daily", "on-demand", "predict", "sweep", "predict-on-promotion"}
    assert set(git_by_name) == {f"git-{name}" for name in local_by_name}
    for name, local in local_by_name.items():
        git = git_by_name[f"git-{name}"]
        assert "pull" not in local and "build" not in local  # the top-level set_working_directory steps
        assert local["work_pool"] == {"name": "local-process"} and git["work_pool"] == {"name": "git-process"}
        assert (git["entrypoint"], git["schedules"]) == (local["entrypoint"], local["schedules"])
        assert git.get("concurrency_limit") == local.get("concurrency_limit")
        assert git.get("parameters") == local.get("parameters")
        definitions = git_config["definitions"]
        assert (git["build"], git["pull"]) == (definitions["git-build"], definitions["git-pull"])
        # the same trigger but for the pool it answers (tests/test_events.py: which promotions each answers)
        for mine, theirs in zip(local.get("triggers", []), git.get("triggers", []), strict=True):
            drop = {"name", "description", "match"}
            assert {k: v for k, v in mine.items() if k not in drop} == {
                k: v for k, v in theirs.items() if k not in drop
            }
            assert mine["match"]["prefect.resource.id"] == theirs["match"]["prefect.resource.id"]
    [pull] = config["pull"]
    assert list(pull) == ["prefect.deployments.steps.set_working_directory"]
    assert "pull" not in git_config and "build" not in git_config  # nothing local leaks into the git runs


def test_the_run_used_a_clone_in_the_workers_temporary_folder_and_left_it_clean(team):
    messages = "\n".join(team["logs"])
    assert "Executing deployment step: git_clone" in messages
    # the default --data is relative: the run read the CSV from its clone, under the worker's TMPDIR
    assert f"read {team['worker_tmp']}/" in messages and "/data/Advertising.csv" in messages
    assert not any(team["worker_tmp"].iterdir()), "the run's temporary folder (and its clone) is removed"


def test_artifacts_manifests_run_record_champion_and_history_are_on_the_s3_server(team, monkeypatch):
    stored, run_id = team["stored"], str(team["flow_run"].id)
    [record_url] = [path for path in stored if path.startswith(f"{PREFIX}/{storage.RUNS_DIR}/")]
    record = json.loads(stored[record_url])
    assert record["run_id"] == run_id
    model = record["stages"]["train"]["artifacts"]["model"]["path"]  # relative to the store
    assert model.startswith("train/") and model.endswith("/model.pt")
    for stage in record["stages"].values():
        for artifact in stage["artifacts"].values():
            url = f"{PREFIX}/{artifact['path']}"
            assert url in stored and f"{url}.manifest.json" in stored
    secret = team["aws"]["AWS_SECRET_ACCESS_KEY"].encode()
    assert not [path for path, body in stored.items() if secret in body]
    for name, value in team["aws"].items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        assert core.verify(f"{PREFIX}/{model}")["stage"] == "train"  # the object matches its manifest, on the store
        current = champion.read_champion(PREFIX)
        [row] = read_history(PREFIX).to_pylist()
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert current is not None and current["flow_run_id"] == run_id  # the first run on the store: promoted
    assert (row["flow_run_id"], row["promoted"], row["model"]) == (run_id, True, model)


def test_the_promotion_started_one_prediction_on_the_git_twin_with_that_model(team):
    """The training run ran on pool git-process, so its promotion event carries that pool and only prefect-git.yaml's
    twin answers it: a prediction run on a git worker, from a clone, with the promoted model, on the same store."""
    [record_url] = [path for path in team["stored"] if path.startswith(f"{PREFIX}/{storage.RUNS_DIR}/")]
    model = json.loads(team["stored"][record_url])["stages"]["train"]["artifacts"]["model"]["path"]
    sha = json.loads(team["stored"][f"{PREFIX}/{model}.manifest.json"])["sha256"]
    [promoted] = events_of("linreg.model." + sha[:16], "linreg.model.promoted")
    assert promoted.resource["linreg.work-pool"] == "git-process" and promoted.resource["linreg.store"] == PREFIX

    run = team["predicted"]
    assert run is not None, f"no {TWIN} run was created for the promotion"
    assert run.state.type == StateType.COMPLETED, f"{run.state_name}:\n" + "\n".join(team["predicted_logs"][-20:])
    assert run.parameters == {"model": f"{PREFIX}/{model}", "artifacts_dir": PREFIX}
    assert "Executing deployment step: git_clone" in "\n".join(team["predicted_logs"])
    [written] = events_of("linreg.model." + sha[:16], "linreg.predictions.written")
    assert written.payload["model_sha256"] == sha and written.payload["flow_run_id"] == str(run.id)
    assert written.resource["linreg.work-pool"] == "git-process" and written.payload["rows"] == 200
    [predictions] = written.payload["predictions"]
    manifest = json.loads(team["predictions"][f"{PREFIX}/{predictions}.manifest.json"])
    assert sha in {entry["sha256"] for entry in manifest["inputs"]}  # made by that model, kept on the store


def test_nothing_was_written_into_the_deploying_folder(team):
    assert not team["deployer"].exists(), "nothing recreated the folder that deployed"
    assert _snapshot(team["moved"]) == team["deployed_tree"]
