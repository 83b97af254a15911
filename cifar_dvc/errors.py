"""The project's error types and the wrapper that turns them into one-line messages.

Every expected failure (bad params, bad input file, failed download, a full disk) raises a
``UserError`` whose message names the file or params key and what was expected. ``stage_main``
runs a stage's main function, prints such an error as a single ``error: ...`` line on stderr and
exits with status 2, so the user never has to read a traceback to learn what was wrong.
Unexpected exceptions still show their traceback (they are bugs).

``stage_main`` also handles the environment a stage runs in:

- an ``OSError`` that says the disk is full, read-only or not writable (ENOSPC, EDQUOT, EFBIG,
  EROFS, EACCES, EPERM) is an environment problem, not a bug: one ``error:`` line naming the path,
  exit status 2 (``cifar_dvc.atomic`` names the output itself and removes its temporaries);
- run as a program (``argv`` None), the stage asks Linux to send it SIGTERM when its parent
  process (``dvc``) dies (``prctl(PR_SET_PDEATHSIG)``), and SIGTERM unwinds the stack like Ctrl-C,
  so ``atomic``'s ``finally`` blocks remove the temporaries. Without this, a stage orphaned by a
  ``kill -9`` of ``dvc`` kept running and later overwrote the outputs that a new ``dvc repro``
  had restored from the run cache.

Reads and writes nothing. Used by ``stages/*.py``: ``if __name__ == "__main__": stage_main(main)``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType


class UserError(Exception):
    """An expected failure caused by input, params or environment; its message is shown as is."""


class ParamsError(UserError):
    """A params.yaml key is missing, unknown or has the wrong type or value."""


class DataError(UserError):
    """An input file is missing, corrupt, unsafe or not what the stage expects."""


class FetchError(UserError):
    """A download failed or gave the wrong bytes."""


class OutputError(UserError):
    """An output could not be written: disk full, read-only or not writable folder."""


class StageTerminated(BaseException):
    """SIGTERM arrived (e.g. the parent ``dvc`` died); a BaseException so no ``except Exception`` eats it."""


EXIT_USER_ERROR = 2
EXIT_TERMINATED = 128 + signal.SIGTERM
# errno values that mean "the disk or folder refuses the write": the environment, not the code.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stage_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None,
               exit_with_parent: bool | None = None) -> None:
    """Run ``main(argv)``; a ``UserError`` becomes one stderr line and exit status 2.

    ``exit_with_parent`` (default: when ``argv`` is None, i.e. the stage runs as its own process)
    makes the process exit cleanly when its parent dies; tests calling a stage in-process leave
    the test runner's signals alone. ``CIFAR_DVC_EXIT_WITH_PARENT=0`` turns it off, for a launcher
    that starts stages from a thread which ends before they do (Linux signals on the death of the
    parent *thread*).
    """
    if exit_with_parent is None:
        exit_with_parent = argv is None and os.environ.get("CIFAR_DVC_EXIT_WITH_PARENT", "1") != "0"
    if exit_with_parent:
        install_parent_death_signal()
    try:
        main(argv)
    except UserError as exc:
        _fail(str(exc), EXIT_USER_ERROR)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        _fail(describe_os_error(exc), EXIT_USER_ERROR)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except StageTerminated as exc:
        _fail(f"{exc}; the stage stopped and removed its temporary files", EXIT_TERMINATED)


def describe_os_error(exc: OSError) -> str:
    """``<path>: <reason>`` of an OSError, with a hint for a full or read-only disk."""
    reason, hint = os_error_reason(exc)
    where = exc.filename if exc.filename is not None else "writing an output of the stage"
    return f"{where}: {reason}{hint}"


def os_error_reason(exc: OSError) -> tuple[str, str]:
    """The reason of an OSError (``No space left on device``) and a hint (``; free ...``) or ``""``."""
    reason = exc.strerror or str(exc)
    hint = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "; free some disk space (or raise the file size limit) and run the stage again"
    elif exc.errno == errno.EROFS:
        hint = "; the file system is mounted read-only"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        hint = "; check the permissions of the file and its folder"
    return reason, hint


def install_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` when the parent process dies; ``sig`` unwinds the stack.

    Linux only (``prctl(PR_SET_PDEATHSIG)`` through ctypes); returns False elsewhere or if the call
    failed. SIGTERM's default action (die at once, no ``finally``) is replaced by raising
    ``StageTerminated``, unless the program already installed its own handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return False  # signal handlers can only be set from the main thread
    if signal.getsignal(sig) is signal.SIG_DFL:
        signal.signal(sig, _raise_terminated)
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before prctl took effect: nothing will signal us
        os.kill(os.getpid(), sig)
    return True


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise StageTerminated(f"stopped by {signal.Signals(signum).name} (the dvc process that ran the stage "
                          "ended, or someone terminated it)")


def _fail(message: str, status: int) -> None:
    message = " ".join(message.split())  # one line, whatever the message held
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)
