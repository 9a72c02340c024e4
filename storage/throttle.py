"""Object-store writes share one Prefect global concurrency limit, so that many runs (or a Dask cluster's workers)
do not flood one bucket: each artifact upload (`ObjectStore.put`) holds one slot of ``linreg-object-store-writes``
while it writes. Small writes (records, claims, leases) take none: a slot costs a server round trip each way,
100-200 ms on the 2-core test machine (2026-12-07), more than such a write itself.

The limit is the deployer's choice (``python -m flows.automations apply`` creates it; ``prefect gcl update`` or the
UI's Concurrency page changes it). Where it does not exist, or no Prefect server is configured, a write takes no
slot and pays nothing: whether it exists is asked once a minute per process, not per write (Prefect's own
``strict=False`` asks the server on every call and logs a warning each time). A local folder never comes here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

WRITE_LIMIT = "linreg-object-store-writes"
_RECHECK_SECONDS = 60.0
_checked: dict[str, tuple[float, bool]] = {}  # API URL → (when asked, whether the limit exists)
_LOCK = threading.Lock()


def _api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def _limit_exists(url: str) -> bool:
    """Whether the server at ``url`` has the limit; a server that does not answer counts as having none."""
    with _LOCK:
        when, exists = _checked.get(url, (float("-inf"), False))
        if time.monotonic() - when < _RECHECK_SECONDS:
            return exists
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            exists = client.read_global_concurrency_limit_by_name(WRITE_LIMIT).active
    except Exception:  # ObjectNotFound, or no server there: write unthrottled, as without a limit
        exists = False
    with _LOCK:
        _checked[url] = (time.monotonic(), exists)
    return exists


@contextlib.contextmanager
def write_slot() -> Iterator[None]:
    """Hold one slot of `WRITE_LIMIT` around one object-store write, where the limit exists."""
    url = _api_url()
    if not url or not _limit_exists(url):
        yield
        return
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    with contextlib.ExitStack() as stack:
        # the server went away since it was asked: the write matters more than the slot
        with contextlib.suppress(ConcurrencySlotAcquisitionError):
            stack.enter_context(concurrency(WRITE_LIMIT, occupy=1, strict=False))
        yield
