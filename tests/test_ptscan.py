"""`stagecore.ptscan` reads what torch.save wrote exactly as torch.load does, and vouches for nothing else.

The scan lets a cached run check its ``.pt`` files without importing torch; it must agree with torch on every
file the stages write, refuse (hand to torch) every file it cannot prove, and never run code from one.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from stagecore import ptscan
from stagecore.manifest import _scan_pt, describe_pt
from storage.errors import IntegrityError

pytestmark = pytest.mark.no_server

TENSORS = {
    "float64": torch.arange(6, dtype=torch.float64).reshape(2, 3),
    "float32": torch.ones(4, dtype=torch.float32),
    "int64": torch.tensor([1, 2, 3]),
    "int32": torch.zeros(2, 2, dtype=torch.int32),
    "bool": torch.tensor([True, False]),
    "scalar": torch.tensor(3.5, dtype=torch.float64),
    "empty": torch.zeros(0, 5),
    "view": torch.arange(10.0, dtype=torch.float64)[3:7],  # saved with its whole storage and an offset
    "transposed": torch.arange(12.0).reshape(3, 4).t(),
    "half": torch.ones(3, dtype=torch.float16),
    "bfloat16": torch.ones(3, dtype=torch.bfloat16),
}
VALUES = {"bias": 2.5, "features": ["TV", "radio"], "target": "sales", "epochs": 12, "ok": True, "config": {"a": None}}


def save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_the_scan_describes_every_dtype_and_layout_as_torch_load_does(tmp_path):
    path = save(tmp_path / "all.pt", {**TENSORS, **VALUES})
    scanned = ptscan.scan(path)
    assert describe_pt(scanned) == describe_pt(torch.load(path, weights_only=True))
    assert scanned["view"] == ptscan.TensorInfo((4,), "float64")
    assert {k: scanned[k] for k in VALUES} == VALUES


def test_the_files_the_stages_write_are_read_without_torch(tmp_path):
    """A fresh interpreter scans a model and a tensors file as the stages save them and never imports torch."""
    model = save(tmp_path / "model.pt", {"weights": torch.zeros(3, dtype=torch.float64), "bias": 0.0, **VALUES})
    tensors = save(tmp_path / "tensors.pt", {"x_train": torch.zeros(150, 3), "y_train": torch.zeros(150)})
    code = (
        "import sys\nfrom stagecore.manifest import _scan_pt, describe_pt\n"
        f"print([describe_pt(_scan_pt(p)) for p in {[str(model), str(tensors)]!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([describe_pt(torch.load(p, weights_only=True)) for p in (model, tensors)])


def rewrite_pickle(path: Path, data: bytes) -> Path:
    """``path`` with its data.pkl replaced by ``data`` (the other entries kept), as someone with write access could."""
    with zipfile.ZipFile(path) as old:
        entries = {n: old.read(n) for n in old.namelist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    entries[name] = data
    with zipfile.ZipFile(path, "w") as new:
        for n, content in entries.items():
            new.writestr(n, content)
    return path


class Payload:
    def __init__(self, flag: str):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_a_pickle_that_runs_code_is_unproven_never_run_and_torch_refuses_it(tmp_path):
    flag = tmp_path / "pwned"
    path = rewrite_pickle(save(tmp_path / "m.pt", {"w": torch.zeros(2)}), pickle.dumps({"w": Payload(str(flag))}, 2))
    with pytest.raises(ptscan.Unproven, match=r"(posix|os)\.system"):
        ptscan.scan(path)
    with pytest.raises(IntegrityError, match="weights_only"):
        _scan_pt(path)  # handed to torch, which refuses it
    assert not flag.exists()


@pytest.mark.parametrize(
    "damage",
    ["truncated storage", "missing storage", "not a dict", "two pickles", "not a zip", "past the storage"],
)
def test_what_the_scan_cannot_prove_is_left_to_torch(tmp_path, damage):
    path = save(tmp_path / "m.pt", {"w": torch.arange(4.0, dtype=torch.float64)})
    with zipfile.ZipFile(path) as old:
        entries = {n: old.read(n) for n in old.namelist()}
    prefix = next(n for n in entries if n.endswith("/data.pkl")).removesuffix("data.pkl")
    if damage == "truncated storage":
        entries[prefix + "data/0"] = entries[prefix + "data/0"][:16]
    elif damage == "missing storage":
        del entries[prefix + "data/0"]
    elif damage == "not a dict":
        entries[prefix + "data.pkl"] = pickle.dumps([1, 2], 2)
    elif damage == "two pickles":
        entries["other/data.pkl"] = entries[prefix + "data.pkl"]
    elif damage == "past the storage":  # a view of 4 elements from offset 2 of a 4-element storage
        entries[prefix + "data.pkl"] = entries[prefix + "data.pkl"].replace(b"K\x00K\x04\x85", b"K\x02K\x04\x85")
        assert entries[prefix + "data.pkl"] != old_pickle(path)
    if damage == "not a zip":
        path.write_bytes(b"PK\x03\x04 not really")
    else:
        with zipfile.ZipFile(path, "w") as new:
            for n, content in entries.items():
                new.writestr(n, content)
    with pytest.raises(ptscan.Unproven):
        ptscan.scan(path)


def old_pickle(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
