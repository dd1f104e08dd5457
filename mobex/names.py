"""The name rules shared by recipes, manifests and the registry: SemVer versions and bundle/model names.

Every check uses `fullmatch` (a `$` alone would let a trailing newline through) and ASCII digits only.
"""

from __future__ import annotations

import re

# SemVer 2.0.0, the regex recommended at semver.org.
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$",
    re.ASCII,  # \d is [0-9] only: no other scripts' digits in versions; always used with fullmatch
)
# Bundle and model names in manifests and the registry (a recipe's own rule is stricter: lowercase).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
