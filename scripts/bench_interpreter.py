"""Speed of the MIL reference interpreter on an ImageNet-size CNN, one core.

Builds MobileNetV2 (width 1.0, torchvision's layout via transformers' MobileNetV2 without TF padding,
random weights; about 400 M multiply-accumulates at 256x256), converts it to Core ML fp32 and fp16
with mobex's converter, and times `MilReferenceRunner.run` on one sample with one thread after a
warm-up, next to torch eager on the same thread. Prints a table (ms per sample, median and min).

Usage: python scripts/bench_interpreter.py [--size 256] [--runs 5] [--json]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="input height and width (default 256)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per row (default 5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import numpy as np
    import torch
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
    from zoo import randomise

    from mobex.converters.coreml import CoreMLMetadata, convert_coreml
    from mobex.runtime.latency import cpu_name
    from mobex.runtime.mil import MilReferenceRunner

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = MobileNetV2Config(image_size=args.size, depth_multiplier=1.0, num_labels=1000, tf_padding=False)
    net = MobileNetV2ForImageClassification(cfg)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixel_values):  # noqa: ANN001, ANN201
            return self.net(pixel_values=pixel_values).logits

    model = Logits().eval()
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    randomise(model, {"pixel_values": x})
    macs = count_macs(model, (x,))
    with torch.no_grad():
        want = model(x).numpy()
    rows = []
    with torch.no_grad():
        t = time_call(lambda: model(x), args.runs)
    rows.append({"backend": "torch eager (reference)", "precision": "fp32", "times_ms": t, "max_abs_error": None})
    with tempfile.TemporaryDirectory(prefix="mobex-bench-") as tmp:
        for precision in ("fp32", "fp16"):
            variant = convert_coreml(
                model,
                {"pixel_values": x},
                Path(tmp) / f"mnv2-{precision}.mlpackage",
                precision=precision,
                output_names=["logits"],
                metadata=CoreMLMetadata(name="mobilenet-v2", version="0.0.0"),
            )
            runner = MilReferenceRunner(variant.path)
            feed = {"pixel_values": x.numpy()}
            t = time_call(lambda r=runner, f=feed: r.run(f), args.runs)
            err = float(np.max(np.abs(runner.run(feed)[0].astype(np.float64) - want)))
            rows.append({"backend": "MIL reference interpreter", "precision": precision, "times_ms": t,
                         "max_abs_error": err})  # fmt: skip
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
    print("| backend | precision | median ms/sample | min ms | max abs err vs torch |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        err = "—" if r["max_abs_error"] is None else f"{r['max_abs_error']:.2e}"
        print(f"| {r['backend']} | {r['precision']} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {err} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
