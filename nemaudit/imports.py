"""Import user code named in specs (``pkg.module`` or ``path/to/file.py``), without torch.

One place for the rules the model, probe and describer specs share: a file is imported under
a name derived from its resolved path, so a file named by several specs is imported once, and
every failure is a :class:`~nemaudit.errors.NemauditError` that quotes the spec.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from nemaudit.errors import NemauditError


def import_target(target: str, spec: str, what: str, error: type[NemauditError] = NemauditError,
                  hint: str = "") -> ModuleType:
    """``pkg.module`` or ``path/to/file.py`` → the module; ``what`` names the spec's kind
    ("model", "probe", …) in messages, ``hint`` is appended when a module is not found."""
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise error(f"{what} spec {spec!r}: file not found: {path}")
        name = "_nemaudit_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        if name in sys.modules:
            return sys.modules[name]
        loader = importlib.util.spec_from_file_location(name, path)
        if loader is None or loader.loader is None:
            raise error(f"{what} spec {spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module
        try:
            loader.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise error(f"{what} spec {spec!r}: importing {path} raised "
                        f"{type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise error(f"{what} spec {spec!r}: cannot import module {target!r} ({e}){hint}") from e
    except Exception as e:
        raise error(f"{what} spec {spec!r}: importing {target!r} raised "
                    f"{type(e).__name__}: {e}") from e
