"""The authenticated UDP wire format: packet codec, replay protection, cluster key file.

Outside the sans-IO core on purpose: it reads key files, the wall clock (for incarnations) and
randomness (for new keys). The core only ever sees `Decoded.message` and the sender's name.
"""

from __future__ import annotations

from hafailover.core.groups import DEFAULT_GROUP
from hafailover.wire.codec import (
    MAX_PACKET,
    Codec,
    Decoded,
    Dropped,
    DropReason,
    Item,
    cluster_id,
)
from hafailover.wire.keys import KeyFileError, generate_key, load_key, new_incarnation
from hafailover.wire.payload import EncodeError
from hafailover.wire.replay import ReplayGuard, Verdict

__all__ = [
    "DEFAULT_GROUP",
    "MAX_PACKET",
    "Codec",
    "Decoded",
    "DropReason",
    "Dropped",
    "EncodeError",
    "Item",
    "KeyFileError",
    "ReplayGuard",
    "Verdict",
    "cluster_id",
    "generate_key",
    "load_key",
    "new_incarnation",
]
