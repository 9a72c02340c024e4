"""Object-store writes under the global concurrency limit (storage/throttle.py): two overlapping PUTs to moto's S3
server take turns when a real Prefect server has the limit at 1, overlap when it has none, and a write never
waits on a server that is absent or refuses.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

import storage
from moto_s3 import s3_server, use_env
from storage import remote, throttle

pytest.importorskip("s3fs")
BUCKET = "linreg-limit"
HOLD = 0.4  # each write holds its slot this much longer than the PUT itself, so that two free writes surely overlap


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[dict[str, str]]:
    with s3_server(tmp_path_factory.mktemp("moto"), BUCKET) as env, use_env(env):
        yield env


@pytest.fixture
def limit(monkeypatch) -> Iterator[callable]:
    """Set the server's limit (None: delete it); the process's remembered answer is forgotten each time."""

    def set_limit(slots: int | None) -> None:
        monkeypatch.setattr(throttle, "_checked", {})
        with get_client(sync_client=True) as client:
            if slots is None:
                with contextlib.suppress(ObjectNotFound):
                    client.delete_global_concurrency_limit_by_name(throttle.WRITE_LIMIT)
            else:
                client.upsert_global_concurrency_limit_by_name(throttle.WRITE_LIMIT, slots)

    yield set_limit
    set_limit(None)


def two_puts(monkeypatch, prefix: str) -> list[tuple[float, float]]:
    """Two threads `put` one file each at once; each PUT's (start, end), in order of start."""
    store = storage.open_store(f"s3://{BUCKET}/{prefix}")
    real, spans, start = remote.upload, [], threading.Barrier(2)

    def held(local, url):
        began = time.monotonic()
        real(local, url)
        time.sleep(HOLD)
        spans.append((began, time.monotonic()))

    monkeypatch.setattr(remote, "upload", held)
    for name in ("a.bin", "b.bin"):
        (store.work / name).write_bytes(name.encode() * 1000)

    def put(name: str) -> None:
        start.wait()
        store.put(name)

    threads = [threading.Thread(target=put, args=(name,)) for name in ("a.bin", "b.bin")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert store.size("a.bin") == store.size("b.bin") == 5000  # both written, whole
    return sorted(spans)


def test_with_a_limit_of_one_two_writes_take_turns(s3, limit, monkeypatch):
    limit(1)
    first, second = two_puts(monkeypatch, "one")
    assert second[0] >= first[1], (first, second)


def test_without_the_limit_the_same_writes_overlap(s3, limit, monkeypatch):
    limit(None)
    first, second = two_puts(monkeypatch, "none")
    assert second[0] < first[1], (first, second)


@pytest.mark.no_server
@pytest.mark.parametrize("url", [None, "http://127.0.0.1:9/api"], ids=["no server", "refused"])
def test_no_server_no_slot_and_no_wait(url, monkeypatch):
    monkeypatch.setattr(throttle, "_checked", {})
    settings = {PREFECT_API_URL: url} if url else {}
    with temporary_settings(settings, restore_defaults=set() if url else {PREFECT_API_URL}):
        for attempt in range(3):  # a refusing server is asked once, then remembered
            began = time.monotonic()
            with throttle.write_slot():
                pass
            assert time.monotonic() - began < (5 if attempt == 0 else 0.05)
