"""The build cache: unchanged work of a build (reference run, each variant's export, each validation) is
reused from a content-addressed store instead of being redone.

- keys.py: what a key is made of (canonical JSON; hashes of mobex's source, the model's code and weights, data)
- store.py: the on-disk store (verified entries, file locks, atomic publishing, least-recently-used pruning)
- records.py: the JSON forms of the stored stage values
- build.py: `BuildCache`, the pipeline's hooks (what each key covers is documented there)
"""
