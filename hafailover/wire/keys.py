"""The cluster key file, and the incarnation number that tells a restart from a replay.

The key file holds one base64 line: the shared HMAC-SHA256 key, identical on every node.
`python3 -m hafailover.wire.keys` prints a new one.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
import time

from hafailover.errors import LocalError

KEY_BYTES = 32  # what generate_key makes: 256 bits, the full strength of HMAC-SHA256
MIN_KEY_BYTES = 16  # below 128 bits a key is guessable in principle; refuse it
# A key file is one base64 line of ~45 bytes; anything far bigger is not a key file (and is
# never read into memory whole).
MAX_KEY_FILE_BYTES = 4096


class KeyFileError(LocalError, ValueError):
    """The key file cannot be used; the message names the file and how to fix it."""


def generate_key() -> str:
    """A new random cluster key as base64 text (32 bytes from `secrets`)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _new_key_hint(path: str) -> str:
    # umask 077 makes the shell create the file as 0600 from the start.
    return (
        f"generate a new key with `(umask 077; python3 -m hafailover.wire.keys > {path})` "
        "and copy that file to every node"
    )


def _unreadable(path: str, error: OSError) -> KeyFileError:
    return KeyFileError(
        f"cannot read key file {path} ({error.strerror}): make it a file readable by the user "
        f"hafailover runs as, then `chmod 600 {path}`"
    )


def load_key(path: str | os.PathLike[str]) -> bytes:
    """Read and check the cluster key file; raises `KeyFileError` with the fix in the text."""
    name = os.fspath(path)
    try:
        # O_NONBLOCK: a FIFO put in the key's place must not hang the daemon at startup.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"key file {name} does not exist: {_new_key_hint(name)}") from None
    except OSError as e:
        raise _unreadable(name, e) from None
    try:
        # fstat on the open descriptor: the mode checked is that of the file actually read.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(
                f"key file {name} is not a regular file: remove it, then {_new_key_hint(name)}"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"key file {name} is accessible by group or others (mode {mode:04o}): "
                f"run `chmod 600 {name}`"
            )
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                content = f.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as e:
            raise _unreadable(name, e) from None
    finally:
        os.close(fd)
    if len(content) > MAX_KEY_FILE_BYTES:
        # Never echo the content: it may be a secret put in the wrong place.
        raise KeyFileError(
            f"key file {name} is larger than {MAX_KEY_FILE_BYTES} bytes (the limit; a key file "
            f"holds one base64 line of about {len(generate_key()) + 1} bytes): "
            f"{_new_key_hint(name)}"
        )
    try:
        key = base64.b64decode(content.strip(), validate=True)
    except binascii.Error:
        raise KeyFileError(
            f"key file {name} does not hold valid base64: {_new_key_hint(name)}"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(
            f"key file {name} holds a {len(key)}-byte key, at least {MIN_KEY_BYTES} bytes are "
            f"needed: {_new_key_hint(name)}"
        )
    return key


def new_incarnation() -> int:
    """A number that is higher after every restart: the wall clock in nanoseconds.

    Peers drop packets from a lower incarnation than they have seen as replays, so this relies
    on the wall clock not being stepped back across a restart by more than the downtime (NTP
    normally slews, not steps). If it was, peers ignore the node until its clock passes the old
    value or they restart themselves.
    """
    return time.time_ns()


if __name__ == "__main__":
    print(generate_key())
