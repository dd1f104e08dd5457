"""Throughput and latency of `mobex serve-model` at 1, 8 and 32 concurrent clients, over real HTTP on 127.0.0.1.

    python scripts/bench_serving.py [--bundle B.zip --key PUB.pem] [--requests 2000] [--workers 2]

Without --bundle it builds the digits_cnn sample (Android fp32 + dynamic-int8, as the tests do) in a
temporary folder. The server runs as a subprocess (`mobex serve-model`, uvicorn + Starlette); the
clients are threads of this process with one keep-alive connection each, sending one sample per
JSON request. On a 2-core machine the clients and the server share the cores, so these are
lower bounds. The first column of the second table is the model alone (LiteRT, one thread, no
HTTP), measured in the same run, for the ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef0123"


def build_sample(work: Path) -> tuple[Path, Path, Path]:
    sys.path.insert(0, str(ROOT))
    from tests.serving import builds

    class Factory:  # the tests' tmp_path_factory, without pytest
        def mktemp(self, name: str) -> Path:
            path = work / name
            path.mkdir()
            return path

    built = builds.digits(Factory())
    return built.bundle, built.public_key, built.folder / "data" / "val.npz"


def start_server(bundle: Path, key: Path, workers: int, work: Path) -> tuple[subprocess.Popen, str]:
    token_file = work / "token"
    token_file.write_text(TOKEN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mobex", "serve-model", str(bundle), "--key", str(key), "--port", "0",
         "--workers", str(workers), "--token-file", str(token_file)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stderr is not None
    for _ in range(200):
        m = re.search(r" at http://127\.0\.0\.1:(\d+)/", proc.stderr.readline())
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise SystemExit("serve-model did not start")


def run_level(port: str, name: str, bodies: list[bytes], clients: int, total: int) -> dict:
    per_client = total // clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0]
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        start.wait()
        for i in range(per_client):
            t = time.perf_counter()
            conn.request("POST", f"/v1/models/{name}:predict", bodies[(k * per_client + i) % len(bodies)], headers)
            resp = conn.getresponse()
            resp.read()
            latencies[k].append(time.perf_counter() - t)
            if resp.status != 200:
                errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.concatenate([np.asarray(x) for x in latencies]) * 1000
    p50, p99 = (float(v) for v in np.percentile(lat, [50, 99]))
    return {"clients": clients, "requests": int(lat.size), "per_s": lat.size / wall, "p50_ms": p50, "p99_ms": p99,
            "errors": errors[0]}  # fmt: skip


def model_alone(bundle: Path, key: Path, images: np.ndarray, runs: int) -> float:
    sys.path.insert(0, str(ROOT))
    from mobex.serving.bundle import open_bundle_zip
    from mobex.serving.model import ServedModel

    model = ServedModel(open_bundle_zip(bundle, key))
    runner = model.runner()
    feeds = [{"image": images[i % len(images)][None]} for i in range(runs)]
    t0 = time.perf_counter()
    for feed in feeds:
        runner.run(feed)
    per_s = runs / (time.perf_counter() - t0)
    model.retire()
    return per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--data", type=Path, help="validation .npz (default: the sample's)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mobex-bench-serving-") as tmp:
        work = Path(tmp)
        if args.bundle is None:
            bundle, key, data = build_sample(work)
        else:
            bundle, key, data = args.bundle, args.key, args.data
        with np.load(data) as npz:
            images = npz["image"]
        bodies = [json.dumps({"inputs": {"image": images[i : i + 1].tolist()}}).encode() for i in range(len(images))]
        proc, port = start_server(bundle, key, args.workers, work)
        try:
            run_level(port, "digits-cnn", bodies, 8, 200)  # warm-up
            rows = [run_level(port, "digits-cnn", bodies, c, args.requests) for c in (1, 8, 32)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        alone = model_alone(bundle, key, images, 5000)
    cores = os.cpu_count()
    print(f"\nmobex serve-model, {args.workers} worker threads, 1 sample per JSON request, {cores} CPU cores")
    print("| clients | requests | requests/s | p50 ms | p99 ms | errors |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = (r["clients"], r["requests"], f"{r['per_s']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                 r["errors"])  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print(f"\nthe model alone (LiteRT, 1 thread, no HTTP): {alone:.0f} inferences/s; "
          f"best server rate / model alone: {max(r['per_s'] for r in rows) / alone:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
