"""The root of every exception hafailover raises on purpose, and whose fault it is.

Modelled on h11's `LocalProtocolError` / `RemoteProtocolError`: the class says who must act.

* `LocalError`: this host is wrong: the operator's configuration, key file, state directory,
  environment, or a command given on this machine. The message says what to fix; the daemon
  refuses to start or the command exits non-zero.
* `RemoteError`: something outside sent us something bad: a peer's datagram or a control-socket
  client's request. It is counted, answered or logged, and never stops the daemon.

Errors that are neither (a kernel or library call failing at run time) derive from
`HafailoverError` directly.
"""

from __future__ import annotations


class HafailoverError(Exception):
    """Every exception hafailover raises on purpose derives from this."""


class LocalError(HafailoverError):
    """This host's fault: configuration, key file, state, environment or a local command."""


class RemoteError(HafailoverError):
    """A remote party's fault: a peer's datagram or a control client's request."""
