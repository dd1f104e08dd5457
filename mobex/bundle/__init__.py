"""Bundles: keys, the manifest, the deterministic zip, model-signing signatures and verification.

A bundle is one zip per platform and version (`manifest.json`, `model/...`, `assets/...`,
`report.json`, `signature.sigstore.json`). The signature is in the OpenSSF model-signing format,
so the standard `model_signing verify key` accepts an extracted bundle, and it covers every file
except itself; the manifest adds what model-signing lacks (name, SemVer version, platform, I/O
contract, metrics, provenance). Modules: `keys`, `manifest`, `archive`, `signing`, `verify`.
"""
