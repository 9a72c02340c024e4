"""The model registry: a model's aliases, and rollback. docs/lifecycle.md "Aliases and rollback".

    python -m flows.registry list | show ALIAS | set ALIAS MODEL | rollback [--reason TEXT]
        [--model-name NAME] [--artifacts-dir DIR|URL] [--json]

``champion`` and ``previous`` (the champion before its last change) follow the champion's generations; any other
alias (``staging``, ``served``) is set by ``set`` to a model file of the store or to ``@another-alias``.
``rollback`` makes ``previous`` the champion again. Every change is a new immutable pointer generation with its
reason (lifecycle/registry.py), shown by ``python -m flows.history``, and an event when a Prefect server is
configured (``PREFECT_API_URL``). Needs no server otherwise.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from typing import Any, NoReturn

import lifecycle
import storage
from flows.cli import exit_with, one_line, print_error
from storage.errors import InputError, IntegrityError
from tasks import events


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and exit 2, like the flows' own errors (argparse would print its usage first)."""
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m flows.registry", description="A model's aliases (champion, previous, …).")
    parser.add_argument("command", choices=["list", "show", "set", "rollback"])
    parser.add_argument("args", nargs="*", metavar="ALIAS [MODEL]", help="show ALIAS; set ALIAS MODEL|@ALIAS")
    parser.add_argument("--artifacts-dir", metavar="DIR|URL", help="the store (default: as the flow chooses it)")
    parser.add_argument("--model-name", metavar="NAME", help="which model (its name, or an unnamed model's id)")
    parser.add_argument("--reason", metavar="TEXT", default="", help="why (set, rollback): recorded with the change")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return parser


def _who() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def run(command: str, args: list[str], root: str, name: str | None, reason: str) -> dict[str, Any]:
    """What the command did or found, as ``--json`` prints it."""
    arity = {"list": 0, "show": 1, "set": 2, "rollback": 0}[command]
    if len(args) != arity:
        raise InputError(f"{command}: takes {arity} argument(s), got {len(args)}; see --help")
    model = lifecycle.registry.choose(root, name)
    head = {"model_label": model.label, "model_id": model.id}
    if command == "list":
        return {**head, "aliases": lifecycle.registry.entries(root, model)}
    if command == "show":
        alias = args[0].removeprefix("@")
        lifecycle.registry.resolve(root, model, alias)  # names a model, whose file is there and verified
        return {**head, "alias": alias, **lifecycle.registry.entries(root, model)[alias]}
    why = f"by {_who()}" + (f": {reason}" if reason else "")
    if command == "set":
        alias, target = args
        entry = lifecycle.registry.set_alias(root, model, alias, target, why)
    else:
        alias, entry = "champion", lifecycle.registry.rollback(root, model, why)
    if entry["changed"] and os.environ.get("PREFECT_API_URL"):  # events exist only where a server is configured
        events.emit([events.registry_event(entry, alias=alias, model_label=model.label, store=root)])
    return {**head, "alias": alias, **entry}


def describe(command: str, result: dict[str, Any]) -> list[str]:
    """The result for people, line by line."""
    if command == "list":
        lines = [f"model {result['model_label']} [id {result['model_id']}]"]
        for alias, entry in result["aliases"].items():
            shown = "—" if entry is None else f"{entry['model']} (run {entry['run']}, generation {entry['generation']})"
            lines.append(f"  {alias:<12}{shown}")
        return lines
    where = f"{result['model']} (run {result['run']}, generation {result['generation']})"
    if command == "show":
        return [f"{result['alias']}: {where}, sha256 {result['sha256'][:16]}, test MSE {result['test_mse']:.6g}"]
    if not result["changed"]:
        already = "already rolled back" if command == "rollback" else f"{result['alias']} already names it"
        return [f"{already}: {result['alias']} is {where}; nothing written"]
    return [f"{result['alias']} is now {where}: {result['reason']}"]


def main(argv: list[str] | None = None) -> int:
    try:
        p = build_parser().parse_args(argv)
        result = run(p.command, p.args, storage.store_root(p.artifacts_dir), p.model_name, p.reason)
    except (InputError, IntegrityError, ValueError) as exc:  # a Conflict is a ValueError: nothing was written
        print_error(exc)
        return 2
    print(json.dumps(result) if p.json else "\n".join(one_line(line) for line in describe(p.command, result)))
    return 0


if __name__ == "__main__":
    exit_with(main())
