"""Deprecated spelling of ``python -m nemaudit.training.milan`` (or ``nemaudit train-milan``)."""

import sys
import warnings

if __name__ == "__main__":
    warnings.warn("python -m nemaudit.explain.milan.train is deprecated; use nemaudit train-milan (python -m "
                  "nemaudit.training.milan)", DeprecationWarning, stacklevel=1)
    from nemaudit.training.milan import main

    sys.exit(main(sys.argv[1:]))
