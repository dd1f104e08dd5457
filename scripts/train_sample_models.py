"""Retrain the sample models in sample_models/ from data that scikit-learn ships (no downloads).

    python scripts/train_sample_models.py            # all three
    python scripts/train_sample_models.py --only digits_vit

For each sample it writes weights.safetensors, labels.txt and data/{train,val,calib}.npz into the
sample's folder, then prints model, parameter count and validation accuracy. Seeds are fixed,
deterministic algorithms are on and torch runs on one thread, so a rerun on the same machine writes
byte-identical files (the .npz files are written with fixed zip timestamps for the same reason).
Each sample is seeded on its own, so ``--only`` gives the same result as a full run.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits, load_wine
from sklearn.model_selection import train_test_split
from torch import nn

ROOT = Path(__file__).resolve().parent.parent / "sample_models"
SEED = 0


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32, (N, *input_shape[1:])
    y: np.ndarray  # int64, (N,)
    labels: list[str]


@dataclass(frozen=True)
class Sample:
    """What differs between samples: data, split sizes and the optimiser settings."""

    folder: str
    input_name: str
    load: Callable[[], Dataset]
    val_size: int
    calib_size: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float = 0.0


def _digits() -> Dataset:
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return Dataset(x, d.target.astype(np.int64), [str(n) for n in d.target_names])


def _wine() -> Dataset:
    d = load_wine()
    return Dataset(d.data.astype(np.float32), d.target.astype(np.int64), [str(n) for n in d.target_names])


SAMPLES: dict[str, Sample] = {
    s.folder: s
    for s in (
        Sample("digits_cnn", "image", _digits, val_size=360, calib_size=200,
               epochs=40, batch_size=64, lr=3e-3, weight_decay=1e-4),
        Sample("digits_vit", "image", _digits, val_size=360, calib_size=200,
               epochs=120, batch_size=64, lr=2e-3, weight_decay=0.05, label_smoothing=0.1),
        Sample("tabular_mlp", "features", _wine, val_size=45, calib_size=200,
               epochs=150, batch_size=16, lr=3e-3, weight_decay=1e-4),
    )
}


def _seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def _import_model(folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_sample_{folder.name}_model", folder / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split(y: np.ndarray, val_size: int, calib_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val split; calibration is a stratified subset of train (all of it if small)."""
    idx = np.arange(len(y))
    train, val = train_test_split(idx, test_size=val_size, stratify=y, random_state=SEED)
    if len(train) > calib_size:
        calib, _ = train_test_split(train, train_size=calib_size, stratify=y[train], random_state=SEED)
    else:
        calib = train
    return np.sort(train), np.sort(val), np.sort(calib)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so reruns are byte-identical."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


@torch.no_grad()
def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def _train(model: nn.Module, s: Sample, x: np.ndarray, y: np.ndarray, gen: torch.Generator) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps_per_epoch = math.ceil(len(x) / s.batch_size)
    total = s.epochs * steps_per_epoch
    warmup = steps_per_epoch * 2

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
    model.train()
    for _ in range(s.epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), s.batch_size):
            batch = order[i : i + s.batch_size]
            if len(batch) < 2:  # BatchNorm cannot train on a batch of one
                continue
            opt.zero_grad()
            loss_fn(model(xt[batch]), yt[batch]).backward()
            opt.step()
            sched.step()
    model.eval()


def train_sample(s: Sample) -> dict[str, object]:
    """Train one sample and write its weights, labels and data splits; return its summary row."""
    start = time.perf_counter()
    gen = _seed_everything(SEED)
    folder = ROOT / s.folder
    data = s.load()
    train, val, calib = _split(data.y, s.val_size, s.calib_size)

    model = _import_model(folder).build()
    if hasattr(model, "mean") and hasattr(model, "std"):  # tabular: bake standardisation in
        std = data.x[train].std(axis=0)
        model.mean.copy_(torch.from_numpy(data.x[train].mean(axis=0)))
        model.std.copy_(torch.from_numpy(np.where(std > 0, std, 1.0).astype(np.float32)))
    _train(model, s, data.x[train], data.y[train], gen)

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "weights.safetensors"))
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in data.labels))
    for split, idx in (("train", train), ("val", val), ("calib", calib)):
        _save_npz(folder / "data" / f"{split}.npz", {s.input_name: data.x[idx], "labels": data.y[idx]})

    return {
        "model": s.folder,
        "params": sum(p.numel() for p in model.parameters()),
        "train_acc": _accuracy(model, data.x[train], data.y[train]),
        "val_acc": _accuracy(model, data.x[val], data.y[val]),
        "n_val": len(val),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SAMPLES), help="train just this sample")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    names = [args.only] if args.only else list(SAMPLES)
    rows = [train_sample(SAMPLES[name]) for name in names]

    print(f"{'model':<12} {'params':>7} {'train acc':>9} {'val acc':>8} {'n val':>5} {'time':>6}")
    for r in rows:
        print(f"{r['model']:<12} {r['params']:>7} {r['train_acc']:>9.2%} {r['val_acc']:>8.2%} "
              f"{r['n_val']:>5} {r['seconds']:>5.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
