"""The follower side of the replication stream: a TCP listener, one connection per primary node.

Each connection starts with a HELLO naming the sending node and its cluster; then BATCH frames
are read as they come (a reader task) and applied by :meth:`Follower.apply` — every frame that
queued while the previous write was being fsynced goes into the next one write — and answered
with one ACKS frame (wire.py). A malformed frame, a HELLO from another cluster, or a node that is
shutting down ends the connection; the primary reconnects and catches the copy up from its
position. With TLS (duro.tls) the connection is TLS with a client certificate of the cluster CA,
and the HELLO must name the node in that certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Callable

from google.protobuf.message import DecodeError

from duro import tls
from duro._pb import replication_pb2
from duro.node.replication.wire import ACKS, BATCH, HELLO, FrameError, encode_frame, read_frame

if TYPE_CHECKING:
    from duro.node.replication.manager import ReplicationManager

__all__ = ["ReplicationListener"]

log = logging.getLogger("duro.node.replication")


class ReplicationListener:
    def __init__(self, manager: Callable[[], ReplicationManager | None], cluster: str) -> None:
        self._manager = manager
        self.cluster = cluster
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.address = ""

    async def start(self, host: str, port: int) -> int:
        ctx = tls.server_ssl_context()
        self._server = await asyncio.start_server(
            self._accept, host, port, ssl=ctx,
            **({"ssl_handshake_timeout": 10.0} if ctx is not None else {}))
        bound = int(self._server.sockets[0].getsockname()[1])
        self.address = f"{host}:{bound}"
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        peer = "?"
        try:
            kind, body = await read_frame(reader)
            if kind != HELLO:
                raise FrameError("the stream must start with HELLO")
            hello = replication_pb2.ReplicateHello.FromString(body)
            if not hello.node_id or hello.cluster != self.cluster:
                raise FrameError(f"HELLO from {hello.node_id!r} of cluster {hello.cluster!r}")
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is not None:  # TLS: only the node named in the certificate
                who = tls.ssl_peer_identity(ssl_object)
                if who != tls.Identity("node", hello.node_id):
                    raise FrameError(f"{who} may not send batches as node {hello.node_id!r}")
            peer = hello.node_id
            await self._serve(peer, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (FrameError, DecodeError) as exc:
            log.warning("replication stream from %s: %s; closing it", peer, exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("replication stream from %s failed", peer)
        finally:
            self._conns.discard(task)
            writer.close()

    async def _serve(self, peer: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[list | BaseException] = asyncio.Queue()

        async def read() -> None:
            try:
                while True:
                    kind, body = await read_frame(reader)
                    if kind != BATCH:
                        raise FrameError(f"unexpected frame kind {kind}")
                    queue.put_nowait(list(replication_pb2.ReplicateBatch.FromString(body).batches))
            except BaseException as exc:  # the end of the stream, or a bad frame
                queue.put_nowait(exc)

        reader_task = asyncio.ensure_future(read())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                batches = item
                while not queue.empty():  # everything that queued meanwhile: one fsync
                    more = queue.get_nowait()
                    if isinstance(more, BaseException):
                        queue.put_nowait(more)
                        break
                    batches.extend(more)
                mgr = self._manager()
                if mgr is None:
                    return  # not running (yet, or any more): the primary reconnects later
                acks = await mgr.follower.apply(peer, batches)
                writer.write(encode_frame(ACKS, replication_pb2.ReplicateAcks(
                    storage_id=mgr.engine.storage_id, acks=acks)))
                await writer.drain()
        finally:
            reader_task.cancel()
            await asyncio.gather(reader_task, return_exceptions=True)
