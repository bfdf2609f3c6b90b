"""Noticing that a parent process has ended: bundled servers exit with their Blender, build workers with their build."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (without signalling it: os.kill would end it on Windows)."""
    if sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch_parent(pid: int, on_gone: Callable[[], None], interval_s: float = 1.0) -> threading.Thread:
    """Call `on_gone` once process `pid` has ended, from a daemon thread checking every `interval_s` seconds."""
    started_as_child = os.getppid() == pid

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(interval_s):
            # a child whose parent died is re-parented, so its parent id changes even if the old id was reused
            if (started_as_child and os.getppid() != pid) or not process_alive(pid):
                on_gone()
                return

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def exit_when_parent_ends(pid: int) -> None:
    """End this process at once when process `pid` ends (a pool worker's initializer: its work is then useless)."""
    watch_parent(pid, lambda: os._exit(1))
