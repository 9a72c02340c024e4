"""The whole flow against a real Prefect API: wiring, artifact formats, the CLI's output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from conftest import ADVERTISING, ROOT
from flows.train import STAGES, linear_regression, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def all_files(summary: dict) -> list[Path]:
    return [Path(p) for files in summary["artifacts"].values() for p in files.values()]


def test_flow_writes_every_artifact_in_its_format(artifacts: Path):
    summary = linear_regression(artifacts_dir=str(artifacts))
    assert list(summary["artifacts"]) == list(STAGES)
    for path in all_files(summary):
        assert path.is_absolute() and path.is_relative_to(artifacts), path
        if path.suffix == ".parquet":
            assert pq.read_table(path).num_rows > 0
        elif path.suffix == ".pt":
            assert isinstance(torch.load(path, weights_only=True), dict)
        elif path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_SIGNATURE
        elif path.suffix == ".json":
            json.loads(path.read_text())
        else:
            pytest.fail(f"unexpected artifact {path}")
    assert not list(artifacts.rglob("*.tmp")), "a temporary file was left behind"
    assert summary["metrics"]["test"]["mse"] == pytest.approx(4.4021, abs=0.01)


def test_cli_json_is_the_last_stdout_line(artifacts: Path, capsys):
    code = main(["--artifacts-dir", str(artifacts), "--json", "--method", "builtins"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    for key in ("metrics", "baseline"):
        for part in ("train", "test"):
            assert set(summary[key][part]) == {"mse", "rmse", "mae", "r2"}
    assert set(summary["weights"]) == {"TV", "radio", "newspaper"}
    assert abs(summary["optimality_gap"]) < 1e-6
    assert summary["cached"] == dict.fromkeys(STAGES, False)
    assert summary["metrics"]["test"]["mse"] == pytest.approx(4.402119, abs=1e-3)
    assert any("test" in line and "gradient descent" in line for line in out)


def test_cli_subprocess_bad_input_is_one_line_without_traceback(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "flows.train", "--data", str(tmp_path / "nope.csv"), "--artifacts-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    # Prefect's background workers may still log after it at exit, so look for the line rather than the last one
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {tmp_path / 'nope.csv'}: file not found; pass --data with the path of a CSV file"]


@pytest.mark.no_server
def test_exit_with_keeps_the_code_and_still_flushes_joins_and_runs_atexit():
    """`flows.cli.exit_with` skips only the last collections: Prefect's atexit flush and a thread still writing
    must finish as with sys.exit, and buffered stdout must reach a pipe."""
    script = (
        "import atexit, threading, time, gc\n"
        "from flows.cli import exit_with\n"
        "atexit.register(lambda: print('atexit ran', gc.get_freeze_count() > 0))\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), print('thread done'))).start()\n"
        "print('buffered', end='')\n"
        "exit_with(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "bufferedthread done\natexit ran True\n"


def test_help_lists_every_option():
    result = subprocess.run(
        [sys.executable, "-m", "flows.train", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0
    for option in (
        "--data",
        "--target",
        "--features",
        "--index-column",
        "--test-size",
        "--seed",
        "--epochs",
        "--lr",
        "--method",
        "--preset",
        "--device",
        "--artifacts-dir",
        "--json",
    ):
        assert option in result.stdout
    assert ADVERTISING.exists()


def test_seed_preset_runs_1000_epochs_and_stays_above_the_optimum(artifacts: Path, capsys):
    assert main(["--preset", "seed", "--artifacts-dir", str(artifacts), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs_run"] == 1000 and summary["lr"] == 1e-5
    assert summary["metrics"]["test"]["mse"] > summary["baseline"]["test"]["mse"] + 0.5
    assert summary["optimality_gap"] > 0.1


def test_any_numeric_csv_with_named_target_and_features(tmp_path: Path, artifacts: Path):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(300, 3, generator=gen, dtype=torch.float64) * torch.tensor([10.0, 1000.0, 0.1])
    y = x @ torch.tensor([1.5, -0.002, 30.0], dtype=torch.float64) + 7 + 0.01 * torch.randn(300, generator=gen)
    lines = ["height,weight,noise_col,price"] + [
        f"{a:.6f},{b:.6f},{c:.6f},{t:.6f}" for (a, b, c), t in zip(x.tolist(), y.tolist(), strict=True)
    ]
    (tmp_path / "houses.csv").write_text("\n".join(lines) + "\n")
    summary = linear_regression(
        data=str(tmp_path / "houses.csv"),
        target="price",
        features=["height", "weight", "noise_col"],
        index_column=None,
        artifacts_dir=str(artifacts),
    )
    assert list(summary["weights"]) == ["height", "weight", "noise_col"]
    for name, value in summary["weights"].items():
        assert value == pytest.approx(summary["ols_weights"][name], rel=1e-3)
    assert summary["bias"] == pytest.approx(summary["ols_bias"], rel=1e-3)
    assert summary["metrics"]["test"]["r2"] > 0.99
