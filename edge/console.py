"""The console (duro.console, docs/console.md) as one edge serves it on its admin listener: the
edge's etcd client and router for reads, its own certificate for the nodes' ``NodeInspect``
service, and, for admin actions, a console token file and an admin certificate."""

from __future__ import annotations

from typing import Any

from duro import tls
from duro.console.actions import ConsoleActions
from duro.console.snapshot import NodeSampler
from duro.console.web import ConsoleWeb
from duro.edge.config import EdgeConfig
from duro.edge.tokens import TokenStore, Unauthenticated

__all__ = ["make_console"]


def _admin_material(config: EdgeConfig) -> tuple[Any, str]:
    """(the certificate actions are made with, why actions are off)."""
    if config.console_admin_tokens_file is None:
        return None, "no console admin tokens on this edge (console_admin_tokens_file)"
    if config.tls is None:
        return None, ""  # plaintext cluster: nothing to present
    if config.console_admin_tls_cert is None:
        return None, "no admin certificate for the console (console_admin_tls_cert)"
    material = tls.TlsConfig(config.tls.ca, config.console_admin_tls_cert,
                             config.console_admin_tls_key or config.console_admin_tls_cert).load()
    if material.identity.role != "admin":
        raise ValueError(f"console_admin_tls_cert names {material.identity}, not duro://admin")
    return material, ""


def make_console(config: EdgeConfig, router: Any, bindings: dict[str, str]) -> ConsoleWeb:
    material, off = _admin_material(config)
    actions = authenticate = None
    if not off:
        store = TokenStore(config.console_admin_tokens_file)

        def authenticate(authorization: str | None) -> str:
            try:
                return store.authenticate(authorization).name
            except Unauthenticated:
                raise Unauthenticated(
                    "console actions need the header 'Authorization: Bearer <console admin "
                    "token>'" if not authorization else "unknown console admin token") from None

        actions = ConsoleActions(etcd_endpoint=config.etcd, etcd=router.etcd, router=router,
                                 cluster=config.cluster, tls=material)
    return ConsoleWeb(etcd=router.etcd, router=router, cluster=config.cluster,
                      bindings=bindings, sampler=NodeSampler(), actions=actions,
                      authenticate=authenticate, actions_off=off,
                      interval=config.console_interval)
