"""What the SDK check scripts share: failing a check, reading the environment, and running a
plan of named checks, one line per check, stopping at the first failure."""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn


class CheckFailed(Exception):
    """A check saw something wrong."""


def fail(message: str) -> NoReturn:
    raise CheckFailed(message)


def expect(condition: bool, message: str) -> None:
    if not condition:
        fail(message)


def env(name: str, required: bool = True) -> str:
    value = os.environ.get(name, "").strip()
    if required and not value:
        print(f"FAIL setup: environment variable {name} is not set")
        sys.exit(1)
    return value


def run_plan(
    plan: list[tuple[str, Callable[[], str]]],
    status_error: type[Exception],
    api_error: type[Exception],
) -> int:
    """Runs the checks in order; the SDK's own error types make clearer failure lines."""
    for name, check in plan:
        try:
            detail = check()
        except CheckFailed as error:
            print(f"FAIL {name}: {error}")
            return 1
        except status_error as error:
            print(f"FAIL {name}: HTTP {error.status_code} from the server: {error.message}")  # type: ignore[attr-defined]
            return 1
        except api_error as error:
            print(f"FAIL {name}: {type(error).__name__}: {error}")
            return 1
        except Exception as error:  # noqa: BLE001 - a crash is a failed check, said clearly
            print(f"FAIL {name}: unexpected {type(error).__name__}: {error}")
            return 1
        print(f"ok   {name}: {detail}")
    print("all checks passed")
    return 0
