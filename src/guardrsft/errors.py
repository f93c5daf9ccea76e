"""Turn user mistakes into one clear line and exit code 2, not a traceback."""
from __future__ import annotations

import sys
from typing import Callable


def user_errors() -> tuple[type[BaseException], ...]:
    from .config import ParamsError
    from .data import DataError
    from .models import ModelError

    errs: list[type[BaseException]] = [ParamsError, DataError, ModelError, FileNotFoundError]
    from .teacher import TeacherError
    from .train import TrainError

    return tuple(errs + [TeacherError, TrainError])


def run_stage(fn: Callable[[], object]) -> None:
    try:
        fn()
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
