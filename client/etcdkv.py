"""Three small etcd reads/writes the callers share (etcd3aio speaks raw Range/Put requests)."""

from __future__ import annotations

from etcd3aio import Etcd3Client, prefix_range_end

__all__ = ["get_value", "get_prefix", "put_value"]


async def get_value(client: Etcd3Client, key: str, *, timeout: float | None = 5.0) -> bytes | None:
    resp = await client.kv.get(key.encode(), timeout=timeout)
    return resp.kvs[0].value if resp.kvs else None


async def get_prefix(
    client: Etcd3Client, prefix: str, *, timeout: float | None = 10.0
) -> list[tuple[str, bytes]]:
    p = prefix.encode()
    resp = await client.kv.get(p, prefix_range_end(p), timeout=timeout)
    return [(kv.key.decode(), kv.value) for kv in resp.kvs]


async def put_value(client: Etcd3Client, key: str, value: bytes | str, *,
                    timeout: float | None = 5.0) -> None:
    await client.kv.put(key.encode(), value.encode() if isinstance(value, str) else value,
                        timeout=timeout)
