"""Small projects for every task kind, as a user would hand them to `mobex build`: model.py, trained weights,
validation data and a recipe in a folder.

Each model is trained here for a few seconds, on scikit-learn's digits (real 8x8 handwriting) or on synthetic
pictures whose truth is known by construction (squares to detect, shapes to segment), so that the task
metrics measure a model that does its job. Nothing is downloaded. `make(kind, folder)` writes a project.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

LATENCY = "\n[latency]\nthreads = [1]\nwarmup = 3\nruns = 20\n"


def recipe_text(
    name: str,
    inputs: list[tuple[str, list[int], str]],
    *,
    model: str = "",
    outputs: tuple[str, ...] = (),
    tables: str = "",
    android: str | None = '["fp32"]',
    ios: str | None = None,
    weights: bool = True,
    latency: bool = True,
) -> str:
    """A recipe: `[model]` (source model:build, plus `model` lines), the inputs (name, shape, dtype), named
    outputs, extra `tables` ([detection], [[state]], ...), val.npz, the platforms' variants, int8 without the
    fallback search, and short latency runs."""
    lines = ["[model]", f'name = "{name}"', 'version = "1.0.0"', 'source = "model:build"']
    lines += ['weights = "weights.safetensors"'] if weights else []
    lines += [model] if model else []
    for input_name, shape, dtype in inputs:
        lines += ["", "[[inputs]]", f'name = "{input_name}"', f"shape = {shape}", f'dtype = "{dtype}"']
    for output in outputs:
        lines += ["", "[[outputs]]", f'name = "{output}"']
    lines += ["", tables.strip(), "", "[data]", 'validation = "val.npz"']
    for platform, variants in (("android", android), ("ios", ios)):
        if variants is not None:
            lines += ["", f"[{platform}]", f"variants = {variants}"]
    lines += ["", "[quantization]", "int8_fallback = false"]
    return "\n".join(lines) + "\n" + (LATENCY if latency else "")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def _load(folder: Path, source: str):  # noqa: ANN202 - the project's own module
    (folder / "model.py").write_text(textwrap.dedent(source))
    name = f"task_model_{folder.name}_{abs(hash(folder))}"
    spec = importlib.util.spec_from_file_location(name, folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _train(model: torch.nn.Module, steps: int, batch, lr: float = 3e-3) -> None:  # noqa: ANN001 - batch() -> loss
    torch.manual_seed(0)
    torch.set_num_threads(1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        loss = batch(model, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _written(folder: Path, recipe: str) -> Path:
    (folder / "recipe.toml").write_text(recipe)
    return folder / "recipe.toml"


def _save(model: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))


# --------------------------------------------------------------------------- multi-head classifier

MULTI_HEAD = """
import torch
from torch import nn


class MultiHead(nn.Module):
    '''Digits: the class scores, the ink's bounding box (x1, y1, x2, y2 in pixels) and P(even digit).'''

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(),
        )
        self.digit = nn.Linear(64, 10)
        self.box = nn.Linear(64, 4)
        self.even = nn.Linear(64, 1)

    def forward(self, image):
        h = self.trunk(image)
        return self.digit(h), self.box(h), torch.sigmoid(self.even(h))


def build():
    return MultiHead()
"""


def _ink_boxes(images: np.ndarray) -> np.ndarray:
    ink = images > 0.3
    rows, cols = ink.any(axis=2), ink.any(axis=1)
    first = lambda m: m.argmax(axis=1)  # noqa: E731
    last = lambda m: m.shape[1] - 1 - m[:, ::-1].argmax(axis=1)  # noqa: E731
    return np.stack([first(cols), first(rows), last(cols) + 1, last(rows) + 1], axis=1).astype(np.float32)


def multi_head(folder: Path, android: str = '["fp32", "int8"]', ios: str = '["fp32"]') -> Path:
    images, labels = _digits()
    module = _load(folder, MULTI_HEAD)
    model = module.build()
    x = torch.from_numpy(images[:1400, None])
    y, box, even = torch.from_numpy(labels[:1400]), torch.from_numpy(_ink_boxes(images[:1400])), None
    even = torch.from_numpy((labels[:1400] % 2 == 0).astype(np.float32))[:, None]

    def batch(m: torch.nn.Module, step: int) -> torch.Tensor:
        idx = torch.from_numpy(np.random.default_rng(step).integers(0, 1400, 64))
        d, b, e = m(x[idx])
        loss = torch.nn.functional.cross_entropy(d, y[idx]) + 0.05 * torch.nn.functional.l1_loss(b, box[idx])
        return loss + torch.nn.functional.binary_cross_entropy(e, even[idx])

    _train(model, 400, batch)
    _save(model, folder)
    np.savez(folder / "val.npz", image=images[1400:1720, None], labels=labels[1400:1720])
    (folder / "labels.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    return _written(
        folder,
        recipe_text(
            "multi-head",
            [("image", [1, 1, 8, 8], "float32")],
            model='task = "classification"\nclass_output = "digit"\nlabels = "labels.txt"',
            outputs=("digit", "box", "even"),
            android=android,
            ios=ios,
        ),
    )


# --------------------------------------------------------------------------- detection

DETECTOR = """
import torch
from torch import nn

GRID, STRIDE = 8, 4


class GridDetector(nn.Module):
    '''Bright squares in a 32x32 picture: per cell of an 8x8 grid, an objectness logit and a box (cx, cy, w, h).'''

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )
        self.score = nn.Conv2d(32, 1, 1)
        self.box = nn.Conv2d(32, 4, 1)
        ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        self.register_buffer("cells", torch.stack([xs, ys], -1).reshape(1, GRID * GRID, 2).float())

    def forward(self, image):
        h = self.body(image)
        scores = self.score(h).flatten(1)  # [N, 64] logits
        raw = self.box(h).flatten(2).transpose(1, 2)  # [N, 64, 4]
        centre = (self.cells + torch.sigmoid(raw[..., :2])) * STRIDE
        size = torch.exp(raw[..., 2:]) * 6.0
        return scores, torch.cat([centre, size], -1)


def build():
    return GridDetector()
"""


def _squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pictures with 1-3 bright squares (5-9 px) on noise, and labels [n, 3, 5]: class 0, cx, cy, w, h."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.1, 0.05, (n, 1, 32, 32)).astype(np.float32)
    labels = np.full((n, 3, 5), -1.0, np.float32)
    for i in range(n):
        for k in range(rng.integers(1, 4)):
            size = int(rng.integers(5, 10))
            x0, y0 = (int(v) for v in rng.integers(0, 32 - size, 2))
            images[i, 0, y0 : y0 + size, x0 : x0 + size] = rng.uniform(0.7, 1.0)
            labels[i, k] = [0, x0 + size / 2, y0 + size / 2, size, size]
    return np.clip(images, 0, 1), labels


def detection(folder: Path, *, vision: str = "") -> Path:
    """The square detector. `vision`: lines for `[ios]` (e.g. 'nms = true'); with them the recipe also gets an image
    contract (1 channel, pixel / 255), so Core ML has an image input and the Vision detection layout."""
    module = _load(folder, DETECTOR)
    model = module.build()
    images, labels = _squares(1024, 0)
    x = torch.from_numpy(images)
    target = torch.zeros(len(images), 64)
    boxes = torch.zeros(len(images), 64, 4)
    for i, rows in enumerate(labels):
        for cls, cx, cy, w, h in rows:
            if cls >= 0:
                cell = int(cy // 4) * 8 + int(cx // 4)
                target[i, cell], boxes[i, cell] = 1.0, torch.tensor([cx, cy, w, h])

    def batch(m: torch.nn.Module, step: int) -> torch.Tensor:
        idx = torch.from_numpy(np.random.default_rng(step).integers(0, len(images), 64))
        scores, pred = m(x[idx])
        obj = torch.nn.functional.binary_cross_entropy_with_logits(scores, target[idx])
        pos = target[idx] > 0
        return obj + 0.1 * torch.nn.functional.l1_loss(pred[pos], boxes[idx][pos])

    _train(model, 300, batch)
    _save(model, folder)
    val_images, val_labels = _squares(96, 1)
    np.savez(folder / "val.npz", image=val_images, labels=val_labels)
    detection_table = """
[detection]
scores = "scores"
boxes = "boxes"
box_format = "cxcywh"
score_activation = "sigmoid"
score_threshold = 0.5
iou_threshold = 0.4
"""
    if vision:
        detection_table += '\n[preprocessing]\nkind = "image"\ncolor = "L"\nscale = 255.0\n'
    text = recipe_text(
        "squares",
        [("image", [1, 1, 32, 32], "float32")],
        model='task = "detection"',
        outputs=("scores", "boxes"),
        tables=detection_table,
        android='["fp32", "int8"]' if not vision else '["fp32"]',
        ios='["fp16"]' if not vision else '["fp16", "int8-weights"]',
    )
    if vision:
        ios_line = 'variants = ["fp16", "int8-weights"]\n'
        text = text.replace(ios_line, ios_line + vision + "\n")
    return _written(folder, text)


# --------------------------------------------------------------------------- segmentation

SEGMENTER = """
import torch
from torch import nn


class Segmenter(nn.Module):
    '''Per pixel of a 16x16 picture: background, square or disk.'''

    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1))
        self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(16, 16, 2, stride=2), nn.ReLU())
        self.head = nn.Conv2d(16 + 1, 3, 3, padding=1)

    def forward(self, image):
        return self.head(torch.cat([self.up(self.down(image)), image], 1))


def build():
    return Segmenter()
"""


def _shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pictures with a square (class 1) and a disk (class 2), and the masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16]
    images = rng.normal(0.0, 0.1, (n, 1, 16, 16)).astype(np.float32)
    masks = np.zeros((n, 16, 16), np.int64)
    for i in range(n):
        s, (x0, y0) = int(rng.integers(3, 7)), rng.integers(0, 10, 2)
        masks[i, y0 : y0 + s, x0 : x0 + s] = 1
        r, (cx, cy) = rng.uniform(2, 4), rng.uniform(4, 12, 2)
        masks[i][(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 2
        images[i, 0] += np.where(masks[i] == 1, 1.0, 0.0) + np.where(masks[i] == 2, 0.6, 0.0)
    return images, masks


def segmentation(folder: Path) -> Path:
    module = _load(folder, SEGMENTER)
    model = module.build()
    images, masks = _shapes(1024, 0)
    x, y = torch.from_numpy(images), torch.from_numpy(masks)

    def batch(m: torch.nn.Module, step: int) -> torch.Tensor:
        idx = torch.from_numpy(np.random.default_rng(step).integers(0, len(images), 32))
        return torch.nn.functional.cross_entropy(m(x[idx]), y[idx])

    _train(model, 300, batch, lr=5e-3)
    _save(model, folder)
    val_images, val_masks = _shapes(64, 1)
    np.savez(folder / "val.npz", image=val_images, labels=val_masks)
    return _written(
        folder,
        recipe_text(
            "shapes",
            [("image", [1, 1, 16, 16], "float32")],
            model='task = "segmentation"',
            outputs=("classes",),
            tables='[segmentation]\noutput = "classes"',
            android='["fp32", "int8"]',
            ios='["fp16"]',
        ),
    )


# --------------------------------------------------------------------------- embedding, int64 ids, bool mask

TOKENS = """
import torch
from torch import nn


class PixelTokens(nn.Module):
    '''Digits as 64 tokens (ink levels 0..16, int64) with a bool mask of the inked ones: a unit-length embedding.'''

    def __init__(self):
        super().__init__()
        self.level = nn.Embedding(17, 24)
        self.position = nn.Embedding(64, 24)
        self.proj = nn.Sequential(nn.Linear(24, 64), nn.Tanh(), nn.Linear(64, 32))

    def forward(self, ids, mask):
        keep = mask.unsqueeze(-1).float()
        tokens = (self.level(ids) + self.position.weight) * keep
        pooled = tokens.sum(1) / keep.sum(1).clamp(min=1.0)
        e = self.proj(pooled)
        return e / e.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def build():
    return PixelTokens()
"""


def tokens(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.rint(images.reshape(len(images), 64) * 16).astype(np.int64)
    return ids, ids > 0


def embedding(folder: Path) -> Path:
    images, labels = _digits()
    module = _load(folder, TOKENS)
    model = module.build()
    head = torch.nn.Linear(32, 10)
    ids, mask = (torch.from_numpy(a) for a in tokens(images[:1400]))
    y = torch.from_numpy(labels[:1400])
    both = torch.nn.ModuleDict({"model": model, "head": head})

    def batch(m: torch.nn.Module, step: int) -> torch.Tensor:
        idx = torch.from_numpy(np.random.default_rng(step).integers(0, 1400, 64))
        return torch.nn.functional.cross_entropy(m["head"](m["model"](ids[idx], mask[idx]) * 5), y[idx])

    _train(both, 400, batch)
    _save(model, folder)
    val_ids, val_mask = tokens(images[1400:1560])
    np.savez(folder / "val.npz", ids=val_ids, mask=val_mask)
    return _written(
        folder,
        recipe_text(
            "pixel-tokens",
            [("ids", [1, 64], "int64"), ("mask", [1, 64], "bool")],
            model='task = "embedding"',
            outputs=("embedding",),
            tables="[embedding]\nk = 5",
            android='["fp32", "dynamic-int8"]',
            ios='["fp32"]',
        ),
    )


# --------------------------------------------------------------------------- streaming

STREAMING = """
import torch
from torch import nn


class RowReader(nn.Module):
    '''Reads a digit one 8-pixel row per step, keeping a 32-value state (a GRU cell written out): class scores
    after every row, and the next state.'''

    def __init__(self):
        super().__init__()
        self.gates = nn.Linear(8 + 32, 64)
        self.candidate_x = nn.Linear(8, 32)
        self.candidate_h = nn.Linear(32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, row, h):
        z, r = torch.sigmoid(self.gates(torch.cat([row, h], -1))).chunk(2, -1)
        n = torch.tanh(self.candidate_x(row) + r * self.candidate_h(h))
        h_next = (1 - z) * n + z * h
        return self.head(h_next), h_next


def build():
    return RowReader()
"""


def streaming(folder: Path, android: str = '["fp32", "int8"]', ios: str = '["fp32"]') -> Path:
    images, labels = _digits()
    module = _load(folder, STREAMING)
    model = module.build()
    rows, y = torch.from_numpy(images[:1400]), torch.from_numpy(labels[:1400])

    def batch(m: torch.nn.Module, step: int) -> torch.Tensor:
        idx = torch.from_numpy(np.random.default_rng(step).integers(0, 1400, 64))
        h, loss = torch.zeros(64, 32), 0.0
        for t in range(8):  # every step's scores count, the later ones more
            logits, h = m(rows[idx, t], h)
            loss = loss + (t + 1) / 8 * torch.nn.functional.cross_entropy(logits, y[idx])
        return loss

    _train(model, 300, batch, lr=1e-2)
    _save(model, folder)
    val = images[1400:1496]  # 96 sequences of 8 rows; no "h" array: every sequence starts at zeros
    np.savez(folder / "val.npz", row=val, labels=np.repeat(labels[1400:1496, None], 8, axis=1))
    (folder / "labels.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    return _written(
        folder,
        recipe_text(
            "row-reader",
            [("row", [1, 8], "float32"), ("h", [1, 32], "float32")],
            model='task = "classification"\nclass_output = "logits"\nlabels = "labels.txt"',
            outputs=("logits", "h_out"),
            tables='[[state]]\ninput = "h"\noutput = "h_out"',
            android=android,
            ios=ios,
        ),
    )


# --------------------------------------------------------------------------- an int8 model slower than fp32

HARDSWISH = """
import torch
from torch import nn


def build():
    '''Hard-swish after every convolution: XNNPACK has no int8 HARD_SWISH, so int8 runs it on reference kernels.'''
    torch.manual_seed(0)
    layers, channels = [], 1
    for width in (32, 32, 32, 32, 32, 32):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.Hardswish()]
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 64, 10)).eval()
"""


def hardswish(folder: Path, android: str = '["fp32", "int8"]') -> Path:
    images, _ = _digits()
    _load(folder, HARDSWISH)
    np.savez(folder / "val.npz", image=images[:96, None])
    text = recipe_text("hardswish", [("image", [1, 1, 8, 8], "float32")], android=android, weights=False)
    return _written(folder, text.replace("runs = 20", "runs = 50"))


PROJECTS = {
    "multi_head": multi_head,
    "detection": detection,
    "segmentation": segmentation,
    "embedding": embedding,
    "streaming": streaming,
    "hardswish": hardswish,
}
