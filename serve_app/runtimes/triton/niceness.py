"""Keep a runtime's threads at the replica's CPU priority (nice value).

Ray starts worker processes at nice 15 (`RAY_worker_niceness`) so that raylet and the GCS stay
responsive. Triton gives its model-instance and scheduler threads an absolute nice with
setpriority (0 unless a model's `optimization.priority` says otherwise), which a root process
may do. Those threads then outrank the replica's own event loop, which feeds them requests: with
two replicas on two busy cores, Triton's compute starved the request path (tiny batches though
many requests were in flight, and about half the throughput). Raising a thread's nice
needs no privilege, so this works for any user.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

TASKS = "/proc/self/task"  # Linux: one entry per thread of this process


def match_process_niceness() -> int:
    """Lower every thread that runs at a higher priority than the process's main thread to the
    main thread's nice; return how many were changed. Threads at a lower priority stay as they are."""
    target = os.getpriority(os.PRIO_PROCESS, os.getpid())
    try:
        tasks = os.listdir(TASKS)
    except OSError:  # not Linux: no per-thread nice to fix
        return 0
    changed = 0
    for name in tasks:
        tid = int(name)
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < target:
                os.setpriority(os.PRIO_PROCESS, tid, target)
                changed += 1
        except OSError:  # the thread has ended meanwhile
            continue
    if changed:
        logger.debug("%d runtime threads back at the replica's nice %d", changed, target)
    return changed
