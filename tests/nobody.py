"""Run a piece of test code as the `nobody` user, in a forked child (shared by the tests that
check what a user outside the control group sees).

Forking rather than exec'ing a helper keeps the child independent of whether `nobody` can read
the virtualenv. The child runs no pytest machinery: it calls `work`, writes its bytes to a pipe
and leaves with `os._exit`.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable


def as_nobody(work: Callable[[], bytes]) -> bytes:
    """Call `work` in a child that dropped to `nobody`; return what it returned (b"" if it
    raised)."""
    nobody = pwd.getpwnam("nobody")
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.write(wfd, work())
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    while chunk := os.read(rfd, 65536):
        chunks.append(chunk)
    os.close(rfd)
    os.waitpid(pid, 0)
    return b"".join(chunks)
