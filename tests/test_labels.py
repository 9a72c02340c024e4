"""Runs readable at a glance: names from the parameters, tags from the settings and the outcome (flows/labels.py).
The names and tags a real server stores are checked in tests/test_up.py."""

from __future__ import annotations

import pytest

from flows.labels import run_name, run_tags, sweep_name
from flows.params import Params


@pytest.mark.no_server
def test_a_name_says_the_data_and_the_recipe_and_changes_with_any_setting():
    default = run_name(Params())
    assert default.startswith("Advertising-default-") and len(default.rsplit("-", 1)[1]) == 6
    assert run_name(Params(artifacts_dir="/elsewhere", refresh=True)) == default  # same work, same name
    assert run_name(Params(epochs=5)) != default and run_name(Params(preset="seed")).startswith("Advertising-seed-")
    assert run_name(Params(data="s3://bucket/x/parts/*.csv")).startswith("parts-default-")
    assert run_name(Params(data="data/parts/")).startswith("parts-default-")


@pytest.mark.no_server
def test_a_secret_in_the_data_url_never_reaches_the_name():
    for url in ("https://h/data?key=s3cr3t", "https://user:s3cr3t@h/x.csv", "https://h/x.csv#s3cr3t"):
        assert "s3cr3t" not in run_name(Params(data=url))


@pytest.mark.no_server
def test_tags_say_preset_engine_store_and_the_promotion():
    assert run_tags(Params(), "/a/artifacts") == ["preset:default", "engine:auto", "store:local"]
    tags = run_tags(Params(preset="seed"), "s3://bucket/prefix", {"promoted": False}, "stats")
    assert tags == ["preset:seed", "engine:stats", "store:s3", "not-promoted"]


@pytest.mark.no_server
def test_a_sweep_is_named_by_its_data_and_every_configuration():
    configs = [Params(lr=0.1), Params(lr="auto")]
    name = sweep_name(configs, 0)
    assert name.startswith("Advertising-sweep-") and len(name.rsplit("-", 1)[1]) == 6
    assert sweep_name([Params(lr=0.1, artifacts_dir="/x"), Params(lr="auto")], 0) == name  # same work
    assert name not in (sweep_name(configs, 5), sweep_name(configs[:1], 0))
