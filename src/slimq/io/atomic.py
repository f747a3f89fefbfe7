"""The one atomic writer: every file slimq writes appears whole or not at all.

Files are staged in a hidden folder beside the destination (``.<name>.slimq-<pid>.tmp``), created
with the user's umask (``mkstemp`` would make them 0600), then renamed into place with signals
deferred, so a Ctrl-C or SIGTERM cannot land between the renames of a model and its report.
A staging folder left behind by a killed process (SIGKILL) is recognised by its name and the dead
PID in it, and removed by the next write to the same destination.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from slimq.core.errors import OutputPathError

_STAGE_RE = re.compile(r"^\.(?P<name>.+)\.slimq-(?P<pid>\d+)(?:-\d+)?\.tmp$")
_DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new regular file under the current umask (0644 under the default 022)."""
    return 0o666 & ~current_umask()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_stages(dest: Path) -> list[Path]:
    """Remove staging folders for `dest` whose owning process is gone; returns what was removed."""
    removed: list[Path] = []
    if not dest.parent.is_dir():
        return removed
    for p in dest.parent.iterdir():
        m = _STAGE_RE.match(p.name)
        if m and m.group("name") == dest.name and p.is_dir() and not _pid_alive(int(m.group("pid"))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_PUBLISHED: list[Path] = []  # every path this process published (the CLI reports them after an interrupt)


def published() -> list[Path]:
    """Paths published by `Stage.commit` in this process so far (oldest first)."""
    return list(_PUBLISHED)


class Stage:
    """A staging folder for one destination; `path(name)` gives where to write, `commit()` publishes.

    Every file written into the stage is published by `commit()` under the destination's folder with
    the same name, all renames done with signals deferred. Without commit nothing appears.
    """

    _count = 0

    def __init__(self, dest: str | os.PathLike) -> None:
        self.dest = Path(dest)
        clean_stale_stages(self.dest)
        Stage._count += 1
        self.dir = self.dest.parent / f".{self.dest.name}.slimq-{os.getpid()}-{Stage._count}.tmp"
        try:
            self.dir.mkdir()
        except OSError as e:
            raise OutputPathError(f"Cannot write into {self.dest.parent}: {e.strerror or e}. "
                                  "Choose an output folder you can write to.") from None

    def path(self, name: str | None = None) -> Path:
        return self.dir / (name or self.dest.name)

    def commit(self, order: Sequence[str] | None = None) -> list[Path]:
        """Publish the staged files (in `order` when given: the last one appears last)."""
        names = list(order) if order else sorted(p.name for p in self.dir.iterdir())
        mode = file_mode()
        done = []
        for name in names:  # refuse before anything is renamed: never publish half of the files
            if (self.dest.parent / name).is_dir():
                raise OutputPathError(f"{self.dest.parent / name} is a directory; slimq will not replace it. "
                                      "Remove it or choose another output path.")
        with deferred_signals():
            for name in names:
                src = self.dir / name
                os.chmod(src, mode)
                final = self.dest.parent / name
                os.replace(src, final)
                done.append(final)
                _PUBLISHED.append(final)
        return done

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (mode from the umask)."""
    path = Path(path)
    with Stage(path) as stage:
        stage.path().write_bytes(data)
        stage.commit()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically (mode from the umask)."""
    return write_bytes(path, text.encode("utf-8"))
