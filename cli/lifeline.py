"""The pipe that ties `titanic up`'s children to it: a child stops when `up` dies, however it dies.

`up` makes one pipe and keeps its write end to itself; every child inherits the read end (its
number in TITANIC_UP_LIFELINE) and reads it on a thread of its own. `up` never writes, so the read
blocks until the kernel closes the write end, which happens when `up` exits for any reason,
SIGKILL and the OOM killer included; the child then reads end-of-file and stops as on SIGTERM
(the broker's dispatcher drains, a worker finishes its request). A child that has not stopped
`STOP_GRACE_S` later is killed, as `up` itself would do. A child started after `up` died reads
end-of-file at once: there is no window between the fork and the watch.

A pipe rather than Linux's parent-death signal (prctl PR_SET_PDEATHSIG): that signal follows the
thread that forked, not the process, and needs a check of getppid() against the window after the
fork; end-of-file on a pipe has neither caveat.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
import time

#: The variable naming the inherited read end in a child of `titanic up`.
VARIABLE = "TITANIC_UP_LIFELINE"
#: Seconds a child has to stop, once told, before it is killed: by `up` when it stops its
#: children, by the child itself when `up` has died.
STOP_GRACE_S = 10.0

log = logging.getLogger("titanic.lifeline")


class Lifeline:
    """The parent's side: the pipe, `env()` for a child's environment and `fds` for Popen's
    pass_fds. Both ends are non-inheritable here, so no other program `up` might start holds the
    write end (only the child's copy of the read end is passed on, by pass_fds)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._open = True

    @property
    def fds(self) -> tuple[int]:
        """The descriptor every child inherits."""
        return (self._read,)

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with the variable that tells a child to watch its inherited read end."""
        return {**env, VARIABLE: str(self._read)}

    def close(self) -> None:
        """Close both ends: every child still running learns that its parent is gone."""
        if self._open:
            self._open = False
            os.close(self._write)
            os.close(self._read)


def follow_parent(grace: float = STOP_GRACE_S) -> None:
    """In a child of `titanic up`: stop (SIGTERM to the main thread) when `up` is gone, and exit
    by SIGKILL if still running `grace` seconds later. Does nothing in any other process."""
    fd = _inherited_read_end(os.environ.pop(VARIABLE, None))
    if fd is None:
        return
    os.set_inheritable(fd, False)  # nothing this child starts is tied to `up`
    threading.Thread(target=_watch, args=(fd, grace), name="titanic-lifeline",
                     daemon=True).start()


def _inherited_read_end(value: str | None) -> int | None:
    """The descriptor named by the variable if it is an open pipe beyond stdin, stdout and
    stderr; None for anything else (a stray value must not make a process stop by itself)."""
    if value is None or not value.isdigit() or int(value) < 3:
        return None
    try:
        mode = os.fstat(int(value)).st_mode
    except OSError:
        return None
    return int(value) if stat.S_ISFIFO(mode) else None


def _watch(fd: int, grace: float) -> None:
    while True:
        try:
            if not os.read(fd, 1):
                break  # end-of-file: the parent's end is closed
        except OSError:
            return  # the descriptor was taken away from us: nothing left to watch
    os.close(fd)
    log.warning("titanic up (the parent process) is gone: stopping")
    main = threading.main_thread().ident
    if main is not None:
        # To the main thread itself: its wait is interrupted and its SIGTERM handler runs.
        signal.pthread_kill(main, signal.SIGTERM)
    time.sleep(grace)  # a timeout, not a synchronisation: the process normally exits first
    log.error("still running %.0f s after titanic up died: exiting at once", grace)
    os.kill(os.getpid(), signal.SIGKILL)
