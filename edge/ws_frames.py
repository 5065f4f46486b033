"""The server side of the WebSocket wire format (RFC 6455 §5.2) that the edge writes itself.

aiohttp writes most frames; the edge writes two kinds straight into a client's transport, without
a task: data frames on the fast path (the client keeps up, see ``duro.edge.client_writer``) and
the close frame of a client too slow to read (its writer is stuck). Both are built here. The
reading side (every client frame masked) is ``duro.edge.ws_masking``.
"""

from __future__ import annotations

__all__ = ["frame_header", "close_frame"]

_MAX_CONTROL_PAYLOAD = 125  # a control frame's payload is at most 125 bytes (RFC 6455 §5.5)


def frame_header(n: int, text: bool) -> bytes:
    """An unmasked, final, uncompressed server frame header for ``n`` payload bytes."""
    first = 0x81 if text else 0x82
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big")
    return bytes((first, 127)) + n.to_bytes(8, "big")


def close_frame(code: int, reason: str) -> bytes:
    """A whole close frame with ``code`` and ``reason`` (cut to fit a control frame)."""
    payload = (code.to_bytes(2, "big") + reason.encode())[:_MAX_CONTROL_PAYLOAD]
    return bytes((0x88, len(payload))) + payload
