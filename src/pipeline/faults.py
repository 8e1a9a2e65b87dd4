"""The fault-injection seam: every writer and every publish or promote step announces itself here.

With `PIPELINE_FAULT_AT=<step>` in the environment the process kills itself with SIGKILL on reaching that step
(`<step>#<n>`: the n-th time), so the tests can stop `run`, `run --resume` and `nightly` at each named step, as a
power cut or an OOM kill would, and check what a later run finds. Unset, a step costs one dictionary lookup.
Step names: `write:<file name>` (mid-write, the temporary file holding part of the bytes), `publish:<stage>` and
`nightly:<stage>` (see `STEPS`).
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT_VARIABLE = "PIPELINE_FAULT_AT"

# Every step besides the writers' `write:<file name>`, in the order a run or a night reaches them.
STEPS = (
    "publish:tree-synced",  # the run's files are complete in its .partial folder
    "publish:renamed",  # the folder has its final name; `latest` not moved yet
    "nightly:published",  # the night's folder is final; champion link not moved yet
    "nightly:link-swapped",  # the champion link leads to tonight; state.json not written yet
    "nightly:state-written",  # state.json says tonight; history.csv not appended yet
    "nightly:retention",  # about to delete old nights
)

_reached: dict[str, int] = {}


def reached(step: str) -> None:
    """Kill this process here if the environment asks for a fault at `step`."""
    wanted = os.environ.get(ENVIRONMENT_VARIABLE)
    if not wanted:
        return
    name, _, count = wanted.partition("#")
    if name != step:
        return
    _reached[step] = _reached.get(step, 0) + 1
    if _reached[step] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
