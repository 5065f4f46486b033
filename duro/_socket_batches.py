"""How WebSocket frames are cut into ``SocketBatch`` messages on an edge-node socket stream.

Both ends of ``duro.v1.NodeSockets.Sockets`` (``duro.edge.node_link`` and
``duro.node.socket_server``) send through a :class:`~duro._batched.BatchedStream` of frames made
here: everything queued goes in one go, many frames per message, cut by bytes. A message must
stay under gRPC's 64 MiB limit, or the stream fails and every socket on it stalls. A frame larger
than ``MAX_BATCH_BYTES`` (a message is at most 32 MiB) travels alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from duro._batched import BatchedStream, cut_by_size

__all__ = ["MAX_BATCH_BYTES", "FRAME_OVERHEAD", "frame_bytes", "split_frames", "frame_stream"]

MAX_BATCH_BYTES = 16 * 1024 * 1024  # well below the 64 MiB gRPC message limit
FRAME_OVERHEAD = 64  # ids, op, seq, code and the protobuf tags of one frame


def frame_bytes(pb: Any) -> int:
    """One ``SocketFrame``'s encoded size: exact for frames without a payload (``ByteSize``),
    an upper estimate for messages (their payload plus ``FRAME_OVERHEAD``), cheap for both."""
    if pb.data:
        return len(pb.data) + len(pb.reason) * 4 + len(pb.owner) * 4 + FRAME_OVERHEAD
    return pb.ByteSize() + 8


def split_frames(frames: Sequence[Any], limit: int = MAX_BATCH_BYTES) -> list[list[Any]]:
    """``frames`` in order, as consecutive lists of at most ``limit`` bytes each (one frame
    larger than ``limit`` makes a list of its own); none for no frames."""
    return cut_by_size(list(frames), frame_bytes, limit)


def frame_stream(
    prepare: Callable[[list[Any]], list[Any]] | None = None,
) -> BatchedStream[Any]:
    """The outbox of one end of a socket stream: frames, sized and cut as above."""
    return BatchedStream(frame_bytes, limit=MAX_BATCH_BYTES, prepare=prepare)
