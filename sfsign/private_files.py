"""Owner-only directories and files for what sfsign keeps on disk: the outbox (customer data, record
values, document JSON) and the rendered and signed PDFs.

`mkdir(mode=0o700)` and `open()` are filtered by the process umask, which the container or the service
manager chooses (often 022, sometimes 000), so the mode is set explicitly after creation. A directory
that already exists with wider permissions (an operator's `mkdir`, a volume) is tightened when this
process owns it, and reported when it cannot be.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) and make it readable by this user only."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _tighten(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty if missing (an existing file keeps its content) with owner-only access."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write-then-rename with owner-only access: a crash never leaves a half-written file that looks
    complete, and no reader other than this user ever sees the content, even for an instant."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), FILE_MODE)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _tighten(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if current & ~mode:
            path.chmod(mode)
    except PermissionError:
        log.warning("cannot restrict permissions; make it owner-only yourself", path=str(path),
                    wanted=oct(mode), mode=oct(current))
