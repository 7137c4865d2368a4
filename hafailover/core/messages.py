"""Protocol messages exchanged between nodes (the payloads; the wire codec adds the envelope).

Every message carries the sender's current term. Sender identity is not part of the payload:
the codec authenticates it and hands it to the core alongside the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from hafailover.core.reasons import Reason


class MessageType(IntEnum):
    """Stable wire numbers; never renumber, only append."""

    HEARTBEAT = 1
    HEARTBEAT_ACK = 2
    VOTE_REQUEST = 3
    VOTE_RESPONSE = 4
    TIMEOUT_NOW = 5
    TRANSFER_REQUEST = 6
    MAINTENANCE_REQUEST = 7
    COMMAND_REPLY = 8
    NODE_HEARTBEAT = 9
    NODE_ACK = 10


@dataclass(frozen=True)
class PeerSummary:
    """The leader's view of one node, shared with followers so any node can show the cluster."""

    name: str
    healthy: bool
    maintenance: bool
    reachable: bool


@dataclass(frozen=True)
class Heartbeat:
    """Leader -> follower. `round` identifies the send time the acknowledgement renews."""

    term: int
    round: int
    peers: tuple[PeerSummary, ...] = ()


@dataclass(frozen=True)
class HeartbeatAck:
    """Follower -> leader. `success` is false when the follower is in a higher term."""

    term: int
    round: int
    success: bool
    healthy: bool
    maintenance: bool


@dataclass(frozen=True)
class VoteRequest:
    """Candidate -> voter, for a PreVote (`pre`, term not yet raised) or a real vote.

    `term` is the term the candidate will have (pre-vote) or has (vote). `transfer_from` names
    the leader that handed over leadership and released the VIP first: voters may then ignore
    their promise to that leader for exactly the next term.
    """

    term: int
    pre: bool
    healthy: bool
    maintenance: bool
    transfer_from: str = ""


@dataclass(frozen=True)
class VoteResponse:
    """Voter -> candidate. `retry_after` (seconds) is how long the voter's promise still runs
    when it refused for that reason, so the candidate can retry exactly then."""

    term: int
    pre: bool
    granted: bool
    healthy: bool
    maintenance: bool
    retry_after: float = 0.0


@dataclass(frozen=True)
class TimeoutNow:
    """Leader -> transfer target: stand for election now, in term `term` + 1."""

    term: int


@dataclass(frozen=True)
class TransferRequest:
    """Any node -> leader: an operator asked for a switchover. Empty target: best other node.

    `request_id` is the forwarding node's own number for the operator's command; the receiver
    answers with a `CommandReply` carrying it (0: no reply wanted).
    """

    term: int
    target: str = ""
    request_id: int = 0


@dataclass(frozen=True)
class MaintenanceRequest:
    """Any node -> a node: an operator set that node's maintenance mode (answered like
    `TransferRequest`)."""

    term: int
    on: bool
    request_id: int = 0


@dataclass(frozen=True)
class CommandReply:
    """The node that carried out (or refused) a forwarded request -> the node that forwarded it.

    `request_id` is the one from the request; `reason` and `detail` are what the forwarding node
    reports to its operator (`detail`: one short phrase, e.g. the target's name).
    """

    term: int
    request_id: int
    accepted: bool
    reason: Reason
    detail: str = ""


@dataclass(frozen=True)
class NodeHeartbeat:
    """Node level (no group, no term): one per peer and heartbeat round, backing every group.

    `digests`: (bucket, digest) for every non-empty bucket, ascending; a digest is the set hash
    (`hafailover.core.liveness`) of the (group, term, ...) keys of the groups of that bucket the
    sender leads and believes the receiver has accepted it in. The receiver compares each with
    its own and answers with a `NodeAck` of the same `seq`.
    """

    seq: int
    digests: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class NodeAck:
    """Node level: the answer to `NodeHeartbeat` `seq`. Bit b of `mask`: the receiver's own
    digest of bucket b for the sender was equal, so it renewed its promise in those groups."""

    seq: int
    mask: int


ElectionMessage = (
    Heartbeat
    | HeartbeatAck
    | VoteRequest
    | VoteResponse
    | TimeoutNow
    | TransferRequest
    | MaintenanceRequest
    | CommandReply
)
"""The messages of one group's election (each carries a term)."""

NodeMessage = NodeHeartbeat | NodeAck
"""Node-level messages (node liveness); they travel as items of the group '' (no group)."""

Message = ElectionMessage | NodeMessage

MESSAGE_TYPES: dict[type[Message], MessageType] = {
    Heartbeat: MessageType.HEARTBEAT,
    HeartbeatAck: MessageType.HEARTBEAT_ACK,
    VoteRequest: MessageType.VOTE_REQUEST,
    VoteResponse: MessageType.VOTE_RESPONSE,
    TimeoutNow: MessageType.TIMEOUT_NOW,
    TransferRequest: MessageType.TRANSFER_REQUEST,
    MaintenanceRequest: MessageType.MAINTENANCE_REQUEST,
    CommandReply: MessageType.COMMAND_REPLY,
    NodeHeartbeat: MessageType.NODE_HEARTBEAT,
    NodeAck: MessageType.NODE_ACK,
}
