"""Exec a command with memory-deny-write-execute on, as systemd's MemoryDenyWriteExecute=.

``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`` (Linux 6.3+) is the kernel's own form of the
unit setting: no mapping may become writable and executable; it survives fork and exec. Used
by tests/test_packaging.py to show the agent runs under it.

    python mdwe_exec.py PROGRAM [ARGS...]
"""

import ctypes
import os
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) failed (Linux 6.3 or later needed)")
    os.execv(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
