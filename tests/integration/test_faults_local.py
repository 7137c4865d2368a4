"""Local faults (issue 12): what a file or a local client feeds the daemon must not stall its
loop or crash a command.

* the key file is bounded in size, and the error names the limit without echoing the content;
* a SIGHUP reload of an oversized or slow-to-parse configuration on a leader runs off the event
  loop: no stall over max_loop_lag, never two VIP holders, the reload refused with a clear line;
* the CLI answers a socket it may not use with exit 3 and the permission message, however the
  socket was named.

The netns tests build the lab (10.213.0.0/16, nothing joined to the host) and remove it.
"""

from __future__ import annotations

import base64
import os
import time
import tracemalloc
from pathlib import Path

import pytest

from hafailover.wire.keys import MAX_KEY_FILE_BYTES, KeyFileError, generate_key, load_key

# ------------------------------------------------------------------------------- key file


def _key_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "cluster.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return path


def test_key_file_at_the_limit_is_read(tmp_path: Path) -> None:
    key = generate_key().encode()
    padded = key + b"\n" + b" " * (MAX_KEY_FILE_BYTES - len(key) - 1)
    assert len(padded) == MAX_KEY_FILE_BYTES
    assert load_key(_key_file(tmp_path, padded)) == base64.b64decode(key)


@pytest.mark.parametrize("size", [MAX_KEY_FILE_BYTES + 1, 8 * 1024 * 1024])
def test_oversized_key_file_is_refused_naming_the_limit(tmp_path: Path, size: int) -> None:
    # Valid base64 throughout: before the limit, an 8 MiB file was accepted as a 6 MiB key.
    secret = base64.b64encode(b"\x5a" * (size * 3 // 4 + 3))[:size]
    path = _key_file(tmp_path, secret)
    tracemalloc.start()
    try:
        start = time.monotonic()
        with pytest.raises(KeyFileError) as info:
            load_key(path)
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert f"larger than {MAX_KEY_FILE_BYTES} bytes (the limit" in message
    assert "WlpaWlpa" not in message  # nothing of the content is echoed
    assert len(message) < 400
    assert elapsed < 0.5 and peak < 64 * 1024, (elapsed, peak)
