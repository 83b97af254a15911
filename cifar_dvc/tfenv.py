"""Import TensorFlow without its start-up noise, keeping every other message.

On a CPU-only machine TensorFlow 2.21 prints, at import and at its first device query, lines such
as ``Could not find cuda drivers on your machine`` and ``E0000 ... failed call to cuInit: INTERNAL:
CUDA error``; a newcomer reads the last one as a failure. ``TF_CPP_MIN_LOG_LEVEL`` does not stop
them: they come from absl's C++ logging before it is initialized, written straight to file
descriptor 2. So ``import_tensorflow`` points descriptor 2 at a temporary file while TensorFlow
imports and enumerates its devices, then writes back every captured line that is not known
start-up noise (``NOISE``): a real error at import still shows.

It also sets TensorFlow's CPU kernels before the import (``set_defaults``): oneDNN on
(``TF_ENABLE_ONEDNN_OPTS=1``) unless the environment already says otherwise. TensorFlow turns
oneDNN on by itself only on CPUs with AVX-512 VNNI/BF16 or AMX; elsewhere (an AVX2 AMD EPYC, for
one) it runs Eigen's kernels, and those trained this project's networks at 0.38-0.88x oneDNN's speed
(``benchmarks/onednn.py``, ``benchmarks/results/onednn.md``). Results differ only in round-off.

Reads and writes nothing but the process's stderr and environment. Called by the stages, the web
demo, the benchmarks and the tests' conftest before anything imports TensorFlow.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from types import ModuleType

# Messages TensorFlow prints on every start on a machine without a GPU; nothing to act on.
NOISE = re.compile(
    r"Could not find cuda drivers|failed call to cuInit|All log messages before absl::InitializeLog"
    r"|oneDNN custom operations are on|This TensorFlow binary is optimized|To enable the following"
    r" instructions|Unable to register cu\w+ factory|computation placer already registered"
)


# TensorFlow reads these once, when it is imported; a value already in the environment wins.
DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's own INFO and WARNING lines
    "TF_ENABLE_ONEDNN_OPTS": "1",  # oneDNN's kernels on every x86 CPU, not only the newest (above)
}


def set_defaults() -> None:
    """Put ``DEFAULTS`` into the environment where it has no value yet; effective only before
    TensorFlow is imported."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)


def onednn_enabled() -> bool | None:
    """Whether the imported TensorFlow runs oneDNN's CPU kernels (None: TensorFlow cannot say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # private: what TensorFlow's tests ask
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def import_tensorflow() -> ModuleType:
    """``import tensorflow`` (and its device discovery) with ``DEFAULTS`` set and the start-up noise
    filtered out."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    set_defaults()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe (cuInit) happens here, once
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
    return tf
