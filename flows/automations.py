"""What the Prefect server does by itself, from automations.yaml: alerts by webhook and the object store's limit.

    python -m flows.automations apply     create or update, by name, the file's automations and concurrency limits
    python -m flows.automations list      what the server has of them
    python -m flows.automations delete    delete the file's automations (the limits and the block stay)

`apply` is idempotent: each automation is looked up by name and updated in place (a duplicate left by hand is
deleted), each limit upserted. Alerts are ``call-webhook`` actions of the Webhook block the file names, saved from
``$LINREG_ALERT_WEBHOOK_URL`` when that is set; without it and without the block, `apply` says so in one line,
creates no automation, and exits 0 (``make deploy`` calls it). The server's triggers service evaluates them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from flows.cli import exit_with, print_error
from storage.errors import InputError, api_lost
from storage.project import PROJECT_ROOT

FILE = PROJECT_ROOT / "automations.yaml"
URL_ENV = "LINREG_ALERT_WEBHOOK_URL"
WRITES_ENV = "LINREG_OBJECT_STORE_WRITES"


def load(path: Path = FILE) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    limits = dict(config.get("concurrency_limits") or {})
    if os.environ.get(WRITES_ENV):
        try:
            limits["linreg-object-store-writes"] = int(os.environ[WRITES_ENV])
        except ValueError:
            raise InputError(f"{WRITES_ENV}={os.environ[WRITES_ENV]!r} is not a whole number of slots") from None
    config["concurrency_limits"] = limits
    return config


def _webhook_block(client: Any, name: str) -> Any | None:
    """The alerts' Webhook block document id: saved from $LINREG_ALERT_WEBHOOK_URL if set, else the existing one."""
    from prefect.blocks.webhook import Webhook
    from prefect.exceptions import ObjectNotFound

    url = os.environ.get(URL_ENV, "").strip()
    if url:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise InputError(f"{URL_ENV} must be an http(s):// URL; got {url[:60]!r}")
        return Webhook(url=url, headers={"Content-Type": "application/json"}).save(name, overwrite=True)
    try:
        return client.read_block_document_by_name(name, block_type_slug="webhook").id
    except ObjectNotFound:
        return None


def automation(spec: dict[str, Any], block_id: Any) -> Any:
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    return AutomationCore(
        name=spec["name"],
        description=spec.get("description", ""),
        enabled=True,
        trigger=EventTrigger(**{k: v for k, v in spec["trigger"].items() if k != "type"}),
        actions=[CallWebhook(block_document_id=block_id, payload=spec["payload"])],
    )


def apply(config: dict[str, Any]) -> list[str]:
    """Make the server match the file; returns one line per thing done."""
    from prefect.client.orchestration import get_client

    done = []
    with get_client(sync_client=True) as client:
        for name, limit in config["concurrency_limits"].items():
            client.upsert_global_concurrency_limit_by_name(name, int(limit))
            done.append(f"concurrency limit {name}: {limit} slots")
        block_id = _webhook_block(client, config["webhook_block"])
        if block_id is None:
            done.append(
                f"no alerts: set {URL_ENV} (or create Webhook block {config['webhook_block']!r}); no automation created"
            )
            return done
        for spec in config["automations"]:
            wanted = automation(spec, block_id)
            first, *extra = client.read_automations_by_name(spec["name"]) or [None]
            if first is None:
                client.create_automation(wanted)
                done.append(f"automation {spec['name']}: created")
            else:
                client.update_automation(first.id, wanted)
                done.append(f"automation {spec['name']}: updated")
            for duplicate in extra:
                client.delete_automation(duplicate.id)
    return done


def listing(config: dict[str, Any]) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    lines = []
    with get_client(sync_client=True) as client:
        for spec in config["automations"]:
            found = client.read_automations_by_name(spec["name"])
            state = ", ".join("enabled" if a.enabled else "paused" for a in found) or "absent"
            lines.append(f"automation {spec['name']}: {state}")
        for name in config["concurrency_limits"]:
            try:
                gcl = client.read_global_concurrency_limit_by_name(name)
                lines.append(f"concurrency limit {name}: {gcl.limit} slots, {gcl.active_slots} in use")
            except ObjectNotFound:
                lines.append(f"concurrency limit {name}: absent")
    return lines


def delete(config: dict[str, Any]) -> list[str]:
    from prefect.client.orchestration import get_client

    lines = []
    with get_client(sync_client=True) as client:
        for spec in config["automations"]:
            found = client.read_automations_by_name(spec["name"])
            for each in found:
                client.delete_automation(each.id)
            lines.append(f"automation {spec['name']}: {len(found)} deleted")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.automations", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("apply", "list", "delete"))
    parser.add_argument("--file", type=Path, default=FILE, help="the automations file (default: automations.yaml)")
    args = parser.parse_args(argv)
    try:
        config = load(args.file)
        lines = {"apply": apply, "list": listing, "delete": delete}[args.command](config)
    except InputError as exc:
        print_error(exc)
        return 2
    except (OSError, yaml.YAMLError) as exc:
        print_error(f"{args.file}: {exc}")
        return 2
    except Exception as exc:
        if not api_lost(exc):
            raise
        from prefect.settings import get_current_settings

        print_error(
            f"cannot reach the Prefect server at {get_current_settings().api.url}; start it or set PREFECT_API_URL"
        )
        return 1
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    exit_with(main(sys.argv[1:]))
