"""The flow a Prefect user would write first for the same job: one ``@task`` per stage, files between them, no
cache, the tutorial's libraries (pandas, scikit-learn, torch, matplotlib) imported at the top. The baseline of
`bench/naive_bench.py`: what linreg-flow's stage core, cache and checks cost or save against it.

    python -m bench.naive_flow CSV OUT_FOLDER     # against PREFECT_API_URL, like the runs it is compared with
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from sklearn.model_selection import train_test_split

FEATURES, TARGET = ["TV", "radio", "newspaper"], "sales"


@task(cache_policy=NO_CACHE)
def ingest(csv: str, out: Path) -> str:
    path = out / "raw.parquet"
    pd.read_csv(csv).to_parquet(path)
    return str(path)


@task(cache_policy=NO_CACHE)
def drop_index(raw: str, out: Path) -> str:
    path = out / "clean.parquet"
    pd.read_parquet(raw).drop(columns=["Unnamed: 0"]).to_parquet(path)
    return str(path)


@task(cache_policy=NO_CACHE)
def split(clean: str, out: Path) -> tuple[str, str]:
    train, test = train_test_split(pd.read_parquet(clean), test_size=0.2, random_state=0)
    train.to_parquet(out / "train.parquet")
    test.to_parquet(out / "test.parquet")
    return str(out / "train.parquet"), str(out / "test.parquet")


@task(cache_policy=NO_CACHE)
def tensorize(train: str, test: str, out: Path) -> str:
    tensors = {}
    for part, file in (("train", train), ("test", test)):
        frame = pd.read_parquet(file)
        tensors[f"x_{part}"] = torch.tensor(frame[FEATURES].to_numpy(), dtype=torch.float32)
        tensors[f"y_{part}"] = torch.tensor(frame[[TARGET]].to_numpy(), dtype=torch.float32)
    torch.save(tensors, out / "tensors.pt")
    return str(out / "tensors.pt")


@task(cache_policy=NO_CACHE)
def train_model(tensors_path: str, out: Path) -> str:
    """The tutorial's loop: raw features, lr 1e-5, 1000 epochs."""
    t = torch.load(tensors_path, weights_only=True)
    x, y = t["x_train"], t["y_train"]
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, x.shape[1], generator=gen, requires_grad=True)
    b = torch.randn(1, generator=gen, requires_grad=True)
    for _ in range(1000):
        loss = ((x @ w.t() + b - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w -= w.grad * 1e-5
            b -= b.grad * 1e-5
            w.grad.zero_()
            b.grad.zero_()
    torch.save({"w": w.detach(), "b": b.detach()}, out / "model.pt")
    return str(out / "model.pt")


@task(cache_policy=NO_CACHE)
def evaluate(tensors_path: str, model_path: str, out: Path) -> str:
    t, m = torch.load(tensors_path, weights_only=True), torch.load(model_path, weights_only=True)
    predicted = t["x_test"] @ m["w"].t() + m["b"]
    (out / "evaluation.json").write_text(json.dumps({"test_mse": float(((predicted - t["y_test"]) ** 2).mean())}))
    torch.save({"actual": t["y_test"], "predicted": predicted}, out / "predictions.pt")
    return str(out / "predictions.pt")


@task(cache_policy=NO_CACHE)
def plot(predictions: str, out: Path) -> str:
    p = torch.load(predictions, weights_only=True)
    figure, axes = plt.subplots()
    axes.scatter(p["actual"].numpy(), p["predicted"].numpy())
    figure.savefig(out / "predicted_vs_actual.png")
    plt.close(figure)
    return str(out / "predicted_vs_actual.png")


@flow(name="naive-linear-regression")
def naive(csv: str, out: str) -> str:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    clean = drop_index(ingest(csv, folder), folder)
    train, test = split(clean, folder)
    tensors = tensorize(train, test, folder)
    model = train_model(tensors, folder)
    return plot(evaluate(tensors, model, folder), folder)


if __name__ == "__main__":
    naive(sys.argv[1], sys.argv[2])
