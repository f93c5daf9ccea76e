"""Turn user mistakes into one clear line and exit code 2, not a traceback."""
from __future__ import annotations

import sys
from typing import Callable


def user_errors() -> tuple[type[BaseException], ...]:
    from .config import ParamsError
    from .data import DataError
    from .models import ModelError

    errs: list[type[BaseException]] = [ParamsError, DataError, ModelError, FileNotFoundError]
    # these can only have been raised if their module was imported: look them up instead of
    # importing train/teacher into every stage (guardrsft.graph would make every stage depend on them)
    for mod, name in (("teacher", "TeacherError"), ("train", "TrainError")):
        if f"{__package__}.{mod}" in sys.modules:
            errs.append(getattr(sys.modules[f"{__package__}.{mod}"], name))
    return tuple(errs)


def run_stage(fn: Callable[[], object]) -> None:
    try:
        fn()
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
