"""Import user code named in specs (``pkg.module`` or ``path/to/file.py``), without torch.

One place for the rules the model, probe and describer specs share: a file is imported under
a name derived from its resolved path, so a file named by several specs is imported once, and
every failure is a :class:`~nemaudit.errors.NemauditError` that quotes the spec. The
``python:<module or path.py>:<callable>(...)`` form of probe and describer specs is read here.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from nemaudit.errors import NemauditError, SpecError


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


def _literal_kwargs(args: str, spec: str, what: str) -> dict[str, Any]:
    if not args.strip():
        return {}
    try:
        call = ast.parse(f"f({args})", mode="eval").body
        assert isinstance(call, ast.Call) and not call.args
        if any(kw.arg is None for kw in call.keywords):
            raise ValueError
        kwargs = {str(kw.arg): ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError, AssertionError):
        raise SpecError(f"{what} spec {spec!r}: arguments must be literal keywords, e.g. "
                        "python:mymodule:make_probe(n=100)") from None
    return kwargs


def load_python_object(spec: str, what: str) -> Any:
    """``python:<module or path.py>:<callable>[(key=literal, ...)]`` → what the callable
    returns (a probe, a describer …; ``what`` names it in messages). Arguments are literals
    only, never code. A spec that cannot be read or imported is a SpecError quoting it; what
    the callable itself raises propagates."""
    body = spec.strip().partition(":")[2].strip()
    if ".py:" in body:  # a file path may itself contain ':' (Windows drive letters)
        cut = body.index(".py:") + 3
        target, call = body[:cut], body[cut + 1:]
    else:
        head = body.split("(", 1)[0]
        target, _, fname = head.rpartition(":")
        call = fname + body[len(head):]
    m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*(?:\((.*)\))?\s*", call, re.S)
    if not target or not m:
        raise SpecError(f"{what} spec {spec!r}: expected python:<module or path.py>:<callable>"
                        "[(key=value, ...)]")
    obj: Any = import_target(target, spec, what, SpecError)
    for part in m.group(1).split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{what} spec {spec!r}: {target} has no attribute {m.group(1)!r}")
        obj = getattr(obj, part)
    return obj(**_literal_kwargs(m.group(2) or "", spec, what))
