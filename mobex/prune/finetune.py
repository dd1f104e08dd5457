"""Recovery fine-tuning after pruning, and the task metric used to say what pruning cost.

Why this shape:
- The loss follows the task: cross-entropy on class labels, MSE on regression targets. Without
  labels (or for embedding/other models) the pruned model is distilled from the original one (MSE
  to its outputs), so fine-tuning never needs anything the recipe does not already have.
- AdamW with the recipe's learning rate, decayed to zero on a cosine over all steps (no warm-up:
  the model starts trained), weight decay from the recipe (default 0).
- Deterministic: a fixed seed for the shuffle and for torch's RNG (dropout), inside
  `torch.random.fork_rng` so the caller's RNG state is left alone. Runs on however many threads
  torch has; the pipeline calls it once, in the parent process.
- The epoch is not chosen on the validation split: that split also feeds the gates, and picking
  on it would flatter the numbers. The last epoch is what ships; every epoch is in the history.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from mobex.errors import DataError, UsageError

if TYPE_CHECKING:
    import torch

    from mobex.data import Dataset
    from mobex.recipe import FinetuneSection

EVAL_BATCH = 256


@dataclass
class EpochStats:
    epoch: int
    loss: float | None  # mean training loss over the epoch (None: no batch of two or more samples)
    learning_rate: float  # at the end of the epoch
    validation: float | None  # the task metric on the validation split after the epoch
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def first_output(out: object) -> torch.Tensor:
    """The tensor the task metric is about: the model's output, or its first one."""
    from mobex.runtime.torch_model import flatten_outputs

    flat = flatten_outputs(out)
    if not flat:
        raise UsageError("the model returned no tensors")
    return flat[0]


def predict(model: torch.nn.Module, data: Dataset, names: list[str]) -> np.ndarray:
    """The model's first output on every sample of `data`, in eval mode, in large batches."""
    import torch

    was_training = model.training
    model.train(False)
    chunks = []
    try:
        with torch.no_grad():
            for lo in range(0, data.num_samples, EVAL_BATCH):
                args = [torch.from_numpy(data.arrays[n][lo : lo + EVAL_BATCH]) for n in names]
                chunks.append(first_output(model(*args)).float().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(chunks, axis=0)


def task_metric(task: str, has_labels: bool) -> str:
    """Which number says how good the model is: accuracy and MAE need labels, else agreement with the original.

    An unlabelled classifier is judged by top-1 agreement with the original model: the accuracy it can lose
    is at most the share of answers that changed, so the accuracy-drop gate applies to 1 - agreement."""
    if has_labels and task == "classification":
        return "accuracy"
    if has_labels and task == "regression":
        return "mae"
    if task == "classification":
        return "top1_agreement"
    return "cosine_to_original"


def score(metric: str, outputs: np.ndarray, data: Dataset, original: np.ndarray | None) -> float:
    """`metric` of `outputs` on `data`: accuracy, MAE against labels; top-1 agreement or mean cosine with the
    original model's outputs."""
    n = outputs.shape[0]
    if metric == "accuracy":
        return float(np.mean(outputs.reshape(n, -1).argmax(axis=1) == data.labels))
    if metric == "mae":
        return float(np.mean(np.abs(outputs.reshape(n, -1) - data.labels.reshape(n, -1))))
    assert original is not None, f"{metric} needs the original outputs"
    if metric == "top1_agreement":
        return float(np.mean(outputs.reshape(n, -1).argmax(axis=1) == original.reshape(n, -1).argmax(axis=1)))
    a = outputs.reshape(n, -1).astype(np.float64)
    b = original.reshape(n, -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)))


def finetune(
    model: torch.nn.Module,
    settings: FinetuneSection,
    training: Dataset,
    *,
    task: str,
    names: list[str],
    validation: Dataset | None = None,
    teacher: torch.nn.Module | None = None,
    original_validation: np.ndarray | None = None,
    seed: int = 0,
) -> list[EpochStats]:
    """Train `model` in place on `training`; returns one EpochStats per epoch. Leaves it in eval mode.

    `teacher` (the unpruned model) is needed when the training data has no labels for the task.
    """
    import torch

    loss_fn, uses_teacher = _loss(task, training)
    if uses_teacher and teacher is None:
        raise UsageError("fine-tuning without labels distills from the original model, which was not given")
    inputs = {n: torch.from_numpy(training.arrays[n]) for n in names}
    labels = _label_tensor(task, training) if not uses_teacher else None
    metric = task_metric(task, validation is not None and validation.labels is not None)
    n = training.num_samples
    steps_per_epoch = math.ceil(n / settings.batch_size)
    total = max(settings.epochs * steps_per_epoch, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    history: list[EpochStats] = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        )
        if teacher is not None:
            teacher.train(False)
        for epoch in range(1, settings.epochs + 1):
            start = time.perf_counter()
            model.train(True)
            order = torch.from_numpy(rng.permutation(n))
            losses: list[float] = []
            for lo in range(0, n, settings.batch_size):
                idx = order[lo : lo + settings.batch_size]
                if len(idx) < 2:  # BatchNorm cannot train on one sample
                    continue
                args = [inputs[name][idx] for name in names]
                out = _forward(model, args, settings.batch_size)
                if uses_teacher:
                    with torch.no_grad():
                        target = first_output(teacher(*args)).float()
                else:
                    target = labels[idx]
                loss = loss_fn(out, target)
                if not torch.isfinite(loss):
                    raise DataError(
                        f"fine-tuning diverged: the loss became {loss.item()} in epoch {epoch}",
                        "lower [prune.finetune].learning_rate",
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            model.train(False)
            value = None
            if validation is not None:
                value = score(metric, predict(model, validation, names), validation, original_validation)
            history.append(
                EpochStats(
                    epoch=epoch,
                    loss=float(np.mean(losses)) if losses else None,
                    learning_rate=float(sched.get_last_lr()[0]),
                    validation=value,
                    seconds=round(time.perf_counter() - start, 3),
                )
            )
    model.train(False)
    return history


def _loss(task: str, training: Dataset):  # noqa: ANN202 - (callable, uses_teacher)
    import torch.nn.functional as F

    if training.labels is not None and task == "classification":
        return (lambda out, y: F.cross_entropy(out.reshape(out.shape[0], -1), y)), False
    if training.labels is not None and task == "regression":
        return (lambda out, y: F.mse_loss(out.reshape(out.shape[0], -1).float(), y)), False
    return (lambda out, y: F.mse_loss(out.float(), y)), True


def _label_tensor(task: str, training: Dataset) -> torch.Tensor:
    import torch

    labels = training.labels
    assert labels is not None
    if task == "classification":
        return torch.from_numpy(labels.astype(np.int64))
    return torch.from_numpy(labels.reshape(labels.shape[0], -1).astype(np.float32))


def _forward(model: torch.nn.Module, args: list, batch_size: int) -> torch.Tensor:
    try:
        return first_output(model(*args))
    except Exception as exc:
        raise UsageError(
            f"fine-tuning runs the model on batches of up to {batch_size} samples and it failed: "
            f"{type(exc).__name__}: {exc}",
            "if the model only accepts the recipe's input batch size, set [prune.finetune].batch_size to it",
        ) from exc
