"""The project's error types and the wrapper that turns them into one-line messages.

Every expected failure (bad params, bad input file, failed download) raises a ``UserError`` whose
message names the file or params key and what was expected. ``stage_main`` runs a stage's main
function, prints such an error as a single ``error: ...`` line on stderr and exits with status 2,
so the user never has to read a traceback to learn what was wrong. Unexpected exceptions still
show their traceback (they are bugs).

Reads and writes nothing. Used by ``stages/*.py``: ``if __name__ == "__main__": stage_main(main)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """An expected failure caused by input, params or environment; its message is shown as is."""


class ParamsError(UserError):
    """A params.yaml key is missing, unknown or has the wrong type or value."""


class DataError(UserError):
    """An input file is missing, corrupt, unsafe or not what the stage expects."""


class FetchError(UserError):
    """A download failed or gave the wrong bytes."""


EXIT_USER_ERROR = 2


def stage_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; a ``UserError`` becomes one stderr line and exit status 2."""
    try:
        main(argv)
    except UserError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
