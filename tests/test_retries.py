"""A stage is one decorator that makes its Prefect task, and its options hold: the stage cache keeps them, and a
stage retries what may pass (a store or network that did not answer), never a user's mistake or a damaged file."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow

import stagecore as core
import storage
from stagecore.cache import StageRunner, bind
from tasks.drop_index import drop_index_column
from tasks.ingest import ingest_csv

ROOT = Path(__file__).resolve().parent.parent
ADVERTISING = ROOT / "data" / "Advertising.csv"


@pytest.mark.no_server
def test_the_cached_task_keeps_the_stages_options(tmp_path):
    stage = drop_index_column.with_options(timeout_seconds=7, tags={"nightly"}, retries=5, retry_delay_seconds=3)
    cached = bind(stage, tmp_path)
    assert (cached.timeout_seconds, cached.tags, cached.retries) == (7, {"nightly"}, 5)
    assert cached.retry_delay_seconds == 3 and cached.retry_condition_fn is storage.RETRIES["retry_condition_fn"]
    assert drop_index_column.retries == storage.RETRIES["retries"] == 2  # the default of every stage


@pytest.mark.no_server
@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (storage.Transient("s3: cannot be reached"), True),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("timed out"), True),
        (core.InputError("column x is not numeric"), False),
        (core.IntegrityError("raw.parquet: sha256 does not match"), False),
        (ValueError("a bug"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_only_what_may_pass_is_retried(exc, retried):
    class Failed:
        data = exc

    assert storage.RETRIES["retry_condition_fn"](None, None, Failed()) is retried


@pytest.mark.no_server
def test_a_download_that_failed_for_good_is_not_transient(tmp_path):
    with pytest.raises(core.InputError) as refused:
        storage.download("http://127.0.0.1:9/data.csv", tmp_path / "x.csv")  # nothing listens: may pass
    assert isinstance(refused.value, storage.Transient)
    with pytest.raises(core.InputError) as missing:
        storage.download((tmp_path / "nothing.csv").as_uri(), tmp_path / "y.csv")  # no such file: will not pass
    assert not isinstance(missing.value, storage.Transient)


def _run_with_failures(root: str, monkeypatch, failures: list[BaseException]) -> tuple[int, object]:
    """Ingest, then drop_index with its first reads failing as ``failures`` say; (reads, final state)."""
    real, reads = core.open_parquet, []

    def flaky(path):
        reads.append(path)
        if len(reads) <= len(failures):
            raise failures[len(reads) - 1]
        return real(path)

    @flow
    def two_stages():
        runner = StageRunner(root)
        raw = runner(ingest_csv, str(ADVERTISING), root)
        monkeypatch.setattr(core, "open_parquet", flaky)
        fast = drop_index_column.with_options(retry_delay_seconds=0)
        return runner(fast, raw["table"], None, root)

    state = two_stages(return_state=True)
    return len(reads), state


def test_a_stage_retries_a_transient_failure_and_completes(tmp_path, monkeypatch):
    root = storage.prepare_root(tmp_path / "store")
    reads, state = _run_with_failures(root, monkeypatch, [storage.Transient("store did not answer")] * 2)
    assert state.is_completed() and reads == 3  # two failures, then the third try
    assert core.verify(state.result()["table"])["stage"] == "drop_index"


def test_a_users_mistake_is_not_retried(tmp_path, monkeypatch):
    root = storage.prepare_root(tmp_path / "store")
    reads, state = _run_with_failures(root, monkeypatch, [core.InputError("a column is not numeric")])
    assert state.is_failed() and reads == 1
    with pytest.raises(core.InputError, match="not numeric"):
        state.result()
