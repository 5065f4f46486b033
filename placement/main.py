"""The placement process: run one replica until SIGTERM or SIGINT, then stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from duro.placement.config import PlacementConfig, build_parser
from duro.placement.service import PlacementService

__all__ = ["main", "run_placement"]

log = logging.getLogger("duro.placement")


async def run_placement(
    config: PlacementConfig,
    *,
    stop: asyncio.Event | None = None,
    started: asyncio.Event | None = None,
) -> None:
    """Run a replica until SIGTERM/SIGINT (or until *stop* is set); *started* is set when serving."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    try:
        async with PlacementService(config) as service:
            # One machine-readable line, for supervisors (duro dev) and tests.
            print(f"duro-placement ready id={service.replica_id} address={service.address}"
                  + (f" metrics={service.metrics_port}" if service.metrics_port else ""),
                  flush=True)
            if started is not None:
                started.set()
            await stop.wait()
            log.info("placement %s stopping", service.replica_id)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    opts = build_parser().parse_args(args)
    logging.basicConfig(
        level=getattr(logging, str(opts.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from duro.tls import TlsSettingsError

    try:  # bad settings, certificates that do not fit: one clear line, no traceback
        config = PlacementConfig.load(args)
    except ValueError as exc:
        print(f"duro placement: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_placement(config))
    except TlsSettingsError as exc:
        print(f"duro placement: {exc}", file=sys.stderr)
        return 2
    return 0
