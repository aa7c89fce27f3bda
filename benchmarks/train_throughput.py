"""Training throughput (images/s) of ALNett variants on this machine.

Two numbers per variant:
* ``compute``  forward + backward + AdamW step on pre-made tensors (the model alone);
* ``pipeline`` the same through CellDataset + DataLoader with augmentation from synthetic cells
  (what `alnett-edge train` sees), with the given number of loader workers.

Usage: .venv/bin/python benchmarks/train_throughput.py [--variants alnett,alnett-s] [--batch 32] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from alnett_edge.data.augment import AugmentConfig
from alnett_edge.train.dataset import CellDataset
from alnett_edge.data.sources import load_samples
from alnett_edge.data.synth import SynthSpec, generate_cnmc_dataset
from alnett_edge.model import create_model, get_variant, new_card, profile_model


def _step(model, opt, loss_fn, x, y):
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()


def measure(variant: str, batch: int, steps: int, workers: int, data_root: str) -> dict:
    torch.manual_seed(0)
    model = create_model(variant).train()
    size = get_variant(variant).input_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch,))
    for _ in range(2):  # warm-up
        _step(model, opt, loss_fn, x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(model, opt, loss_fn, x, y)
    compute = steps * batch / (time.perf_counter() - t0)

    card = new_card(model, variant)
    ds, _ = CellDataset.from_samples(load_samples(data_root), card.input, AugmentConfig())
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    it = iter(loader)
    xb, yb = next(it)
    _step(model, opt, loss_fn, xb, yb)
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        _step(model, opt, loss_fn, xb, yb)
        n += len(yb)
    pipeline = n / (time.perf_counter() - t0)
    prof = profile_model(model, size)
    return {"variant": variant, "input": size, "batch": batch, "macs_M": round(prof.macs / 1e6, 1),
            "params": prof.params, "compute_img_s": round(compute, 1), "pipeline_img_s": round(pipeline, 1),
            "workers": workers}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="alnett,alnett-s")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        generate_cnmc_dataset(tmp, SynthSpec(n_cells=args.batch * 4, size=450, fmt="bmp"))
        for v in args.variants.split(","):
            rows.append(measure(v, args.batch, args.steps, args.workers, tmp))
            print(json.dumps(rows[-1]), flush=True)
    env = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform.machine()}
    print(json.dumps(env))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
