"""The baseline: the original tutorial as a plain script — pandas read_csv, the full-batch loop on all rows.

Prints one JSON line: seconds to read, seconds to train, the loss history's first and last values.
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
import torch


def model(x, w, b):
    return x @ w.t() + b


def mse(t1, t2):
    diff = t1 - t2
    return torch.sum(diff * diff) / diff.numel()


def main(path: str, epochs: int = 1000, lr: float = 1e-5) -> dict:
    started = time.perf_counter()
    df = pd.read_csv(path)
    inputs = torch.tensor(df[["TV", "radio", "newspaper"]].values, dtype=torch.float32)
    targets = torch.tensor(df[["sales"]].values, dtype=torch.float32)
    read_s = time.perf_counter() - started
    torch.manual_seed(0)
    w = torch.randn(1, 3, requires_grad=True)
    b = torch.randn(1, requires_grad=True)
    losses = []
    for _ in range(epochs):
        preds = model(inputs, w, b)
        loss = mse(preds, targets)
        loss.backward()
        with torch.no_grad():
            w -= w.grad * lr
            b -= b.grad * lr
            w.grad.zero_()
            b.grad.zero_()
        losses.append(loss.item())
    train_s = time.perf_counter() - started - read_s
    return {"rows": len(df), "read_s": read_s, "train_s": train_s, "first_loss": losses[0], "last_loss": losses[-1]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
