"""Record (or check) the golden bundles: the SHA-256 of every entry of the sample bundles, signature aside.

The same recipe, data and toolchain must give the same bundle bytes (README "Bundles": deterministic zips,
SOURCE_DATE_EPOCH). tests/test_golden_bundles.py builds the samples as this script does and compares with
tests/golden/bundles.json, so a change that alters what ships (a converter, a quantizer, the manifest, the
report inside the bundle) is seen. When such a change is intended, run this script and commit the new file:

    python scripts/update_golden_bundles.py            # rebuilds every sample in GOLDEN, rewrites the file
    python scripts/update_golden_bundles.py --check    # compares only, exit 1 on a difference

Each sample is built from a copy in a temporary folder outside git (so provenance has no commit), with
SOURCE_DATE_EPOCH fixed and a throwaway signing key (signatures are randomized and left out). The copy
leaves out the variants that compute in int8 (dynamic-int8, int8): whether one of those ships depends on
its latency against float measured in the build (mobex.pipeline.choose_shipped), and on a shared machine
near-ties go either way, which would change the shipped bundle and the reports between two runs. Their
conversions are held to fixed bytes elsewhere (tests/quantize/tflite).

Model files and assets are compared byte for byte. In manifest.json and report.json, the numbers the build
*measured* on this host (every float: parity, gate values, reference metrics, latency) are left out of the
hash, and so is the digest of report.json in manifest.json's file list. Measured numbers depend on the
host: the file recorded on one VM failed on another (AMD EPYC, AVX-512 without FP16) in exactly these two
entries of the Android bundle, with the .tflite byte-identical; the likely cause is LiteRT's kernels
giving other last bits on another CPU (not confirmed). Everything the build *decided* (which variant
ships, the I/O contract, gates passed or not, names, provenance) is still in the hash.
tests/test_reproducible.py compares whole bundles byte for byte between two builds on one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_FILE = ROOT / "tests" / "golden" / "bundles.json"
GOLDEN = ("tabular_mlp", "digits_cnn")  # sample folders under sample_models/
EPOCH = 1_700_000_000
SIGNATURE = "signature.sigstore.json"


def _without_int8_compute(recipe_path: Path) -> None:
    """Rewrite each `variants = [...]` line of the recipe without the variants whose compute is int8."""
    import re

    from mobex.plugins import parse_request
    from mobex.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    lines = recipe_path.read_text().splitlines(keepends=True)
    section = None
    for i, line in enumerate(lines):
        header = re.fullmatch(r"\[(\w+)\]\s*", line)
        if header:
            section = header.group(1)
        elif section in ("android", "ios") and line.startswith("variants"):
            names = getattr(recipe, section).variants
            kept = [n for n in names if parse_request(section, n).spec.compute != "int8"]
            lines[i] = "variants = [" + ", ".join(f'"{n}"' for n in kept) + "]\n"
    recipe_path.write_text("".join(lines))


REPORT_DIGEST_FILES = ("report.json",)  # its digest and size in manifest.json's file list follow its numbers


def _decided(value: object) -> object:
    """A manifest or report with its floats blanked (what the build measured on this host: parity, gate
    values, latency; see the module doc) and the digest of report.json; strings, ints, booleans stay."""
    if isinstance(value, float):
        return "<float>"
    if isinstance(value, dict):
        if value.get("path") in REPORT_DIGEST_FILES:
            return {k: v for k, v in value.items() if k not in ("sha256", "size")}
        return {k: _decided(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decided(v) for v in value]
    return value


def entry_sha256(name: str, data: bytes) -> str:
    """SHA-256 of a bundle entry: its bytes, or for manifest.json / report.json the decided part of it."""
    if name in ("manifest.json", "report.json"):
        data = json.dumps(_decided(json.loads(data)), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def bundle_hashes(sample: str, work: Path) -> dict[str, dict[str, str]]:
    """Build `sample` in `work` and return {bundle file: {entry: sha256}} (signature left out)."""
    sys.path.insert(0, str(ROOT))
    from mobex.bundle.keys import generate_keypair
    from mobex.pipeline import BuildOptions, build
    from mobex.recipe import load_recipe

    folder = work / sample
    shutil.copytree(ROOT / "sample_models" / sample, folder)
    _without_int8_compute(folder / "recipe.toml")
    key, _ = generate_keypair(work / f"{sample}-key.pem")
    result = build(load_recipe(folder / "recipe.toml"), BuildOptions(out_dir=work / f"{sample}-out", key=key,
                                                                     source_date_epoch=EPOCH))  # fmt: skip
    out: dict[str, dict[str, str]] = {}
    for path in result.bundles:
        with zipfile.ZipFile(path) as zf:
            out[path.name] = {
                i.filename: entry_sha256(i.filename, zf.read(i)) for i in zf.infolist() if i.filename != SIGNATURE
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the recorded file instead of rewriting it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mobex-golden-") as tmp:
        actual = {sample: bundle_hashes(sample, Path(tmp)) for sample in GOLDEN}
    if args.check:
        recorded = json.loads(GOLDEN_FILE.read_text())
        same = recorded == actual
        print("golden bundles: " + ("unchanged" if same else "DIFFERENT"))
        return 0 if same else 1
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
