"""Speed of the MIL reference interpreter on an ImageNet-size CNN and on recurrent layers, one core.

Builds MobileNetV2 (width 1.0, torchvision's layout via transformers' MobileNetV2 without TF padding,
random weights; about 400 M multiply-accumulates at 256x256), converts it to Core ML fp32 and fp16
with mobex's converter, and times `MilReferenceRunner.run` on one sample with one thread after a
warm-up, next to torch eager on the same thread. With --recurrent (the default), a 2-layer
bidirectional nn.LSTM and nn.GRU (input 64, hidden 128, 32 steps; the LSTM becomes MIL `lstm` ops,
the GRU a `while_loop`) are timed the same way in fp32. Prints a table (ms per sample, median and min).

Usage: python scripts/bench_interpreter.py [--size 256] [--runs 5] [--no-recurrent] [--json]

This is a benchmark, not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]


def count_macs(model, args) -> int:  # noqa: ANN001
    """Multiply-accumulates of one forward pass (torch's FLOP counter; MACs = FLOPs / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args)
    return counter.get_total_flops() // 2


def time_call(call, runs: int) -> list[float]:  # noqa: ANN001
    call()  # warm-up (allocations, torch kernels' first-call set-up)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def mobilenet_v2(size: int):  # noqa: ANN201
    import torch
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
    from zoo import randomise

    torch.manual_seed(0)
    cfg = MobileNetV2Config(image_size=size, depth_multiplier=1.0, num_labels=1000, tf_padding=False)
    net = MobileNetV2ForImageClassification(cfg)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixel_values):  # noqa: ANN001, ANN201
            return self.net(pixel_values=pixel_values).logits

    model = Logits().eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    randomise(model, {"pixel_values": x})
    return model, x


def recurrent(kind: str):  # noqa: ANN201
    import torch

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.rnn = getattr(torch.nn, kind)(64, 128, num_layers=2, bidirectional=True, batch_first=True)

        def forward(self, pixel_values):  # noqa: ANN001, ANN201
            return self.rnn(pixel_values)[0]

    return Layer().eval(), torch.randn(1, 32, 64, generator=torch.Generator().manual_seed(0))


def bench_model(name: str, model, x, precisions: tuple[str, ...], runs: int, tmp: Path) -> list[dict]:  # noqa: ANN001
    """torch eager, then the interpreter on each precision's converted package."""
    import numpy as np
    import torch

    from mobex.converters.coreml import CoreMLMetadata, convert_coreml
    from mobex.runtime.mil import MilReferenceRunner

    with torch.no_grad():
        want = model(x).numpy()
        rows = [{"model": name, "backend": "torch eager (reference)", "precision": "fp32",
                 "times_ms": time_call(lambda: model(x), runs), "max_abs_error": None}]  # fmt: skip
    for precision in precisions:
        variant = convert_coreml(
            model,
            {"pixel_values": x},
            tmp / f"{name}-{precision}.mlpackage",
            precision=precision,
            output_names=["logits"],
            metadata=CoreMLMetadata(name=name, version="0.0.0"),
        )
        runner = MilReferenceRunner(variant.path)
        feed = {"pixel_values": x.numpy()}
        t = time_call(lambda r=runner, f=feed: r.run(f), runs)
        err = float(np.max(np.abs(runner.run(feed)[0].astype(np.float64) - want)))
        rows.append({"model": name, "backend": "MIL reference interpreter", "precision": precision, "times_ms": t,
                     "max_abs_error": err})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="input height and width (default 256)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per row (default 5)")
    parser.add_argument("--no-recurrent", dest="recurrent", action="store_false", help="skip the LSTM/GRU rows")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import torch

    from mobex.runtime.latency import cpu_name

    torch.set_num_threads(1)
    model, x = mobilenet_v2(args.size)
    macs = count_macs(model, (x,))
    cnn = f"MobileNetV2 {args.size}x{args.size}"
    with tempfile.TemporaryDirectory(prefix="mobex-bench-") as tmp:
        rows = bench_model(cnn, model, x, ("fp32", "fp16"), args.runs, Path(tmp))
        if args.recurrent:
            for kind in ("LSTM", "GRU"):
                rnn, seq = recurrent(kind)
                rows += bench_model(f"2-layer bi-{kind} (32 steps)", rnn, seq, ("fp32",), args.runs, Path(tmp))
    for r in rows:
        r["median_ms"] = statistics.median(r["times_ms"])
        r["min_ms"] = min(r["times_ms"])
    info = {
        "model": f"MobileNetV2 1.0, {args.size}x{args.size}, 1000 classes, random weights",
        "macs": macs,
        "threads": 1,
        "torch_version": torch.__version__,
        "cpu": cpu_name() or "unknown CPU",
        "rows": rows,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model']}: {macs / 1e6:.0f} M MACs, 1 thread, {info['cpu']}")
    print("| model | backend | precision | median ms/sample | min ms | max abs err vs torch |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        err = "—" if r["max_abs_error"] is None else f"{r['max_abs_error']:.2e}"
        print(
            f"| {r['model']} | {r['backend']} | {r['precision']} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {err} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
