"""Deprecated spelling of ``python -m nemaudit.training.conceptnet`` (or ``nemaudit train``)."""

import sys
import warnings

if __name__ == "__main__":
    warnings.warn("python -m nemaudit.model.train is deprecated; use nemaudit train (python -m "
                  "nemaudit.training.conceptnet)", DeprecationWarning, stacklevel=1)
    from nemaudit.training.conceptnet import main

    sys.exit(main(sys.argv[1:]))
