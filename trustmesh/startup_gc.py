"""Keep the cyclic garbage collector off what a long-running process built at start-up.

Modules, configuration, keys and app objects made before a server is ready live as long
as the process. Frozen (`gc.freeze`), a full collection never walks them again: in a
sidecar under load a full collection measured 24-35 ms with them and 1-2 ms without, a
pause every request in flight waits through. The control plane holds about 70,000 such
objects once serving; a full collection of them took 29-35 ms here.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect once, then move every surviving object to the permanent generation."""
    gc.collect()
    gc.freeze()
