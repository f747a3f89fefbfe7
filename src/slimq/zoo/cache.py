"""Writing a built zoo model into its cache: atomically, with the user's umask.

(The zoo sits beside slimq.io in the layers, so it cannot use slimq.io.atomic; models here are small and
written once, so a temporary file and a rename suffice.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx


def save_cached(proto: onnx.ModelProto, path: Path) -> Path:
    """Save `proto` to `path` through a temporary file in the same folder and a rename (mode from the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
