"""Where a result came from: the code's commit and a hash of the resolved configuration."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from typing import Any

__all__ = ["code_commit", "config_hash"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_commit() -> str:
    """``git describe --always --dirty`` of the checkout this package runs from (``unknown`` outside git)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=_ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def config_hash(config: Any) -> str:
    """First 12 hex digits of the SHA-256 of ``config`` as canonical JSON (sorted keys)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
