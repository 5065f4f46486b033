"""The replication stream's framing: one TCP connection per node pair, length-prefixed frames.

Batches are the hottest traffic between nodes (every acknowledged write crosses it twice), and a
gRPC stream message costs about ten times what a frame on a plain connection does here (measured:
a gRPC round trip of the batch and its acknowledgement took ~1 ms more than a TCP one, the whole
difference between 2.5 ms and 1.6 ms for a replicated write; bench/RESULTS.md). So the
``Replicate`` stream is a plain TCP connection; the rare calls (fences, snapshots, handovers)
stay gRPC. Frames carry the protobuf messages of ``proto/duro/v1/replication.proto``::

    length (4 bytes, big-endian, of what follows) | kind (1 byte) | protobuf message

    HELLO  client -> server, first: ReplicateHello (the sender's node id and cluster)
    BATCH  client -> server: ReplicateBatch
    ACKS   server -> client: ReplicateAcks (one per BATCH frame or run of frames applied)

One writer per direction owns the framing (``FrameWriter``); readers use :func:`read_frame`, which
refuses frames over ``MAX_FRAME`` and unknown kinds (the connection is closed: bad input never
reaches the follower).
"""

from __future__ import annotations

import asyncio
import struct

from google.protobuf.message import Message

from duro._transport import MAX_MESSAGE_BYTES

__all__ = ["HELLO", "BATCH", "ACKS", "MAX_FRAME", "FrameError", "encode_frame", "read_frame"]

HELLO, BATCH, ACKS = 1, 2, 3
KINDS = frozenset((HELLO, BATCH, ACKS))
MAX_FRAME = MAX_MESSAGE_BYTES  # the largest message, as on gRPC channels
_HEADER = struct.Struct(">IB")


class FrameError(ValueError):
    """A malformed frame: the connection is closed."""


def encode_frame(kind: int, message: Message) -> bytes:
    body = message.SerializeToString()
    return _HEADER.pack(len(body) + 1, kind) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame's (kind, payload); IncompleteReadError at the end of the stream."""
    header = await reader.readexactly(_HEADER.size)
    length, kind = _HEADER.unpack(header)
    if kind not in KINDS:
        raise FrameError(f"unknown frame kind {kind}")
    if not 1 <= length <= MAX_FRAME:
        raise FrameError(f"frame of {length} bytes (limit {MAX_FRAME})")
    return kind, await reader.readexactly(length - 1)
