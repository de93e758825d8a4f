"""Writing files safely: the one atomic writer of the package, and output-path checks.

Reports, CLI results, committed baselines and the clean-run cache are all written here:
through a temporary file in the same folder and ``os.replace``, so a reader (or an
interrupted run) never sees half a file; readable like any file the user writes (mkstemp's
0600 is widened to the umask); and only over *regular* files — an output path that is a
device node, a FIFO or a directory is refused, never replaced (``--out /dev/full`` as root
used to become a regular file). Stdlib only.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from nemaudit.errors import SpecError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it is below it (shorter messages)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """The path a result will be written to, checked *before* any work: a file path (not a
    directory, not ending in ``/``), not an existing non-regular file, under a folder that is
    (or can be made) writable. A :class:`SpecError` says which of these fails."""
    text = os.fspath(path)
    try:
        return _check_output(text, what)
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, a loop of links
        raise SpecError(f"{what} {text[:80]!r}{'…' if len(text) > 80 else ''}: not a usable "
                        f"file path ({e.strerror if isinstance(e, OSError) else e})") from None


def _check_output(text: str, what: str) -> Path:
    p = Path(text).expanduser()
    if "\x00" in text:
        raise ValueError("a NUL byte in the path")
    if not text.strip() or text.endswith(("/", os.sep)) or p.is_dir():
        raise SpecError(f"{what} {text!r}: is a directory; expected a file path")
    if p.exists() and not p.is_file():
        raise SpecError(f"{what} {text!r}: exists and is not a regular file (a device, FIFO "
                        "or socket); nemaudit writes only regular files")
    if len(p.name.encode()) > 255:
        raise OSError(36, "file name too long")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise SpecError(f"{what} {text!r}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SpecError(f"{what} {text!r}: cannot write in {folder} (permission denied)")
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns the path."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_file():
        raise OSError(f"{path} exists and is not a regular file; not replacing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_elsewhere(data: bytes, name: str, folders: list[str | os.PathLike | None]) -> Path:
    """Keep a finished result whose own output failed: ``<folder>/unsaved/<time>-<name>``
    in the first of ``folders`` that takes it (then the temp folder). Returns where it went."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidates = [Path(f) for f in folders if f] + [Path(tempfile.gettempdir()) / "nemaudit"]
    last: OSError | None = None
    for folder in candidates:
        try:
            return atomic_write_bytes(folder / "unsaved" / f"{stamp}-{Path(name).name}", data)
        except OSError as e:
            last = e
    raise OSError(f"could not save the result anywhere ({last})")
