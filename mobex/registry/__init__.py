"""A self-hosted registry of signed bundles: static layout, channels, publish/promote/rollback, serve, pull.

Any static file host or object store can serve the registry; nothing on the server is trusted.
Apps trust two signatures: the bundle's own model-signing signature (release key, checked by
`mobex.bundle.verify`) and a DSSE-signed channel pointer (channel key) that says which version a
channel ships, with a monotonic sequence and an expiry (TUF-style rollback and freeze protection
without a TUF client on the phone). `trust/root.json` lists which keys hold which role and rotates
them. See docs/registry.md.

Modules: `layout` (paths), `dsse` (envelopes), `pointer` (channel pointer schema), `trust`
(root.json, key roles, rotation), `fsutil` (no-follow reads, atomic writes, locks), `index`
(catalog), `publish` (publish/promote/rollback/refresh), `server` (read-only HTTP), `fetch`
(HTTP or directory sources), `pull` (the client algorithm), `encryption` (optional AES-256-GCM).
"""
