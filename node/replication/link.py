"""``PeerLink``: this node's one replication stream to one other node.

It carries the batches of every group this node leads and the peer holds a copy of, many per
frame, on one long-lived TCP connection to the peer's replication address (framing: wire.py;
the follower side: listener.py); the peer answers each frame with one acknowledgement (or
refusal) per group, which the link hands to that group's
:class:`~duro.node.replication.primary.PrimaryGroup`. A group is **fed** on the link from the
moment its primary has brought the peer's copy up to a known position (``feed``): from then on
every batch cut for the group is sent, in order. When the connection breaks, every group stops
being fed (their primaries catch the peer up again, from its position, when it is back).

The rare calls to the same peer (``Fence``, ``Install``) are gRPC, on the link's channel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, AsyncIterator

import grpc

from duro import tls
from duro._pb import replication_pb2, replication_pb2_grpc
from duro._transport import NODE_ID_METADATA, channel_options
from duro.node.replication.log import LogEntry
from duro.node.replication.wire import ACKS, BATCH, HELLO, FrameError, encode_frame, read_frame

if TYPE_CHECKING:
    from duro.node.replication.primary import PrimaryGroup

__all__ = ["PeerLink"]

log = logging.getLogger("duro.node.replication")

MESSAGE_BYTES = 4 << 20  # split the outbox into messages of about this size
FENCE_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2.0
INSTALL_TIMEOUT = 600.0


class PeerLink:
    def __init__(self, node_id: str, cluster: str, peer: str, address: str,
                 stream_address: str) -> None:
        self.node_id = node_id  # this node
        self.cluster = cluster
        self.peer = peer
        self.address = address  # gRPC
        self.stream_address = stream_address  # the replication stream (TCP)
        self._channel = tls.channel(address, options=channel_options())
        self._stub = replication_pb2_grpc.ReplicationStub(self._channel)
        self._md = ((NODE_ID_METADATA, node_id),)
        self._feeding: dict[int, int] = {}  # gid -> the next seq to send
        self._prims: dict[int, PrimaryGroup] = {}
        self._outbox: list[replication_pb2.Batch] = []
        self._outbox_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.messages = 0
        self.batches = 0

    def __repr__(self) -> str:
        return f"PeerLink({self.peer} at {self.address}, feeding {sorted(self._feeding)})"

    # -- feeding ------------------------------------------------------------------------------
    def feeding(self, gid: int) -> bool:
        return gid in self._feeding

    def feed(self, prim: PrimaryGroup, from_seq: int) -> bool:
        """Send the group's batches from ``from_seq`` on (the log's, then every new one); False
        if the log no longer holds ``from_seq``."""
        entries = prim.replica.log.since(from_seq)
        if entries is None:
            return False
        self._prims[prim.gid] = prim
        for e in entries:
            self._push(prim, e)
        self._feeding[prim.gid] = prim.replica.pos.seq + 1
        self._ensure_stream()
        return True

    def ship(self, prim: PrimaryGroup, entry: LogEntry) -> None:
        """A batch was cut: send it if this group is fed here."""
        nxt = self._feeding.get(prim.gid)
        if nxt is None or self._prims.get(prim.gid) is not prim:
            return
        if entry.seq != nxt:  # cannot happen while fed in order; start over to be safe
            self.stop_feeding(prim.gid)
            prim.link_lost(self.peer)
            return
        self._push(prim, entry)
        self._feeding[prim.gid] = nxt + 1

    def stop_feeding(self, gid: int) -> None:
        self._feeding.pop(gid, None)
        self._prims.pop(gid, None)

    def _push(self, prim: PrimaryGroup, e: LogEntry) -> None:
        self._outbox.append(replication_pb2.Batch(
            gid=prim.gid, sender_epoch=prim.epoch, epoch=e.epoch, seq=e.seq,
            prev_epoch=e.prev_epoch, ops=e.ops))
        self._outbox_bytes += len(e.ops) + 48
        self._wake.set()

    # -- unary calls --------------------------------------------------------------------------
    async def fence(self, gid: int, epoch: int) -> replication_pb2.FenceResponse:
        return await self._stub.Fence(replication_pb2.FenceRequest(gid=gid, epoch=epoch),
                                      timeout=FENCE_TIMEOUT, metadata=self._md)

    async def install(self, chunks: AsyncIterator[replication_pb2.InstallChunk]
                      ) -> replication_pb2.InstallAck:
        return await self._stub.Install(chunks, timeout=INSTALL_TIMEOUT, metadata=self._md)

    # -- the stream ---------------------------------------------------------------------------
    def _ensure_stream(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"replicate-to-{self.peer}")

    async def _run(self) -> None:
        writer: asyncio.StreamWriter | None = None
        reader_task: asyncio.Future[None] | None = None
        try:
            host, _, port = self.stream_address.rpartition(":")
            if not host:
                raise ConnectionError(f"{self.peer} has no replication address")
            ctx = tls.client_ssl_context()
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                host.strip("[]"), int(port), ssl=ctx,
                server_hostname=tls.server_name("node") if ctx is not None else None),
                CONNECT_TIMEOUT)
            writer.write(encode_frame(HELLO, replication_pb2.ReplicateHello(
                node_id=self.node_id, cluster=self.cluster)))
            reader_task = asyncio.ensure_future(self._read(reader))
            reader_task.add_done_callback(lambda _t: self._wake.set())  # ends the loop below
            while not reader_task.done():
                if not self._outbox:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                out, self._outbox, self._outbox_bytes = self._outbox, [], 0
                for msg in _split(out):
                    writer.write(encode_frame(BATCH, msg))
                    self.messages += 1
                    self.batches += len(msg.batches)
                await writer.drain()
            reader_task.result()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("replication stream to %s broke: %r", self.peer, _short(exc))
        finally:
            if reader_task is not None:
                reader_task.cancel()
            if writer is not None:
                writer.close()
            self._lost()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            kind, body = await read_frame(reader)
            if kind != ACKS:
                raise FrameError(f"unexpected frame kind {kind} from {self.peer}")
            resp = replication_pb2.ReplicateAcks.FromString(body)
            sid = resp.storage_id
            for ack in resp.acks:
                prim = self._prims.get(ack.gid)
                if prim is None:
                    continue
                if ack.refused:
                    self.stop_feeding(ack.gid)
                    prim.on_refused(self.peer, ack)
                else:
                    prim.on_ack(self.peer, sid, ack.seq)

    def _lost(self) -> None:
        """Every group stops being fed here; its primary catches the peer up again."""
        prims = list(self._prims.values())
        self._feeding.clear()
        self._prims.clear()
        self._outbox, self._outbox_bytes = [], 0
        for prim in prims:
            prim.link_lost(self.peer)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()


def _split(batches: list[replication_pb2.Batch]) -> list[replication_pb2.ReplicateBatch]:
    out, cur, size = [], [], 0
    for b in batches:
        n = len(b.ops) + 48
        if cur and size + n > MESSAGE_BYTES:
            out.append(replication_pb2.ReplicateBatch(batches=cur))
            cur, size = [], 0
        cur.append(b)
        size += n
    if cur:
        out.append(replication_pb2.ReplicateBatch(batches=cur))
    return out


def _short(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)
