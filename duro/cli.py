"""The ``duro`` command line.

    duro dev [--app PATH] [--nodes-per-region N] [--replicas R] [--simulate-latency]
             [--no-reload]                 local cluster: etcd, placement, nodes, edges;
                                           restarts them when the app's code changes
    duro node [--config F] [--flag ...]    one host node
    duro placement [...]                   one placement replica
    duro edge [...]                        one edge (HTTP/WebSocket + gRPC gateway)
    duro status  --etcd H:P                nodes, regions, leader, object counts
    duro where   BINDING NAME --etcd H:P   owner node, region, epoch
    duro call    BINDING NAME METHOD [JSON_ARGS] (--etcd H:P | --node H:P)
    duro migrate BINDING NAME (--to-region R | --to-node N)   move an object, live
    duro gateway-token --name N [--file F]  make a Gateway bearer token (docs/security.md)
    duro drain   NODE_ID                   move every object off a node
    duro undrain NODE_ID                   new objects may go to the node again
    duro certs   --dir D [--node ID ...]   the cluster CA and per-process certificates (mTLS)

Every service takes its settings from an optional TOML file (``--config``), then ``DURO_<ROLE>_*``
environment variables, then flags (later wins).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from duro._config import add_dataclass_flags, flags_from_args, load_config
from duro._runner import run as _run

__all__ = ["main"]


def _service_config(cls: type, prefix: str, args: argparse.Namespace) -> Any:
    return load_config(
        cls,
        file=Path(args.config) if args.config else None,
        env=os.environ,
        env_prefix=prefix,
        overrides=flags_from_args(args),
    )


# -- services ---------------------------------------------------------------------------------

def _cmd_node(args: argparse.Namespace) -> int:
    from duro._log import configure_logging
    from duro.node.config import NodeConfig
    from duro.node.main import run_node

    config = _service_config(NodeConfig, "DURO_NODE_", args)
    configure_logging(config.log_level, config.log_json)
    _run(run_node(config))
    return 0


def _cmd_placement(args: argparse.Namespace) -> int:
    from duro.placement.main import main as placement_main

    return placement_main(args.rest)


def _cmd_edge(args: argparse.Namespace) -> int:
    try:
        from duro.edge.main import main as edge_main
    except ImportError:
        print("duro edge: the edge tier is not built yet", file=sys.stderr)
        return 2
    return edge_main(args.rest)


def _cmd_dev(args: argparse.Namespace) -> int:
    from duro.dev import main as dev_main

    return dev_main(args)


# -- operator commands ------------------------------------------------------------------------

def _parse_json_args(text: str | None) -> tuple[list[Any], dict[str, Any]]:
    if not text:
        return [], {}
    from duro import _json as strict_json

    try:
        value = strict_json.loads(text)  # as the Gateway: no NaN/Infinity (docs/security.md)
    except ValueError as exc:
        raise SystemExit(f"duro call: JSON_ARGS is not valid JSON: {exc}") from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    return [value], {}


async def _call(args: argparse.Namespace) -> Any:
    from duro.client import connect

    pos, kw = _parse_json_args(args.json_args)
    async with connect(etcd=None if args.node else args.etcd, node=args.node, app=args.app,
                       cluster=args.cluster, region=args.region,
                       timeout=args.connect_timeout) as c:
        stub = c.namespace(args.binding).get_by_name(args.name)
        return await stub.call(args.method, *pos, **kw)


def _cmd_call(args: argparse.Namespace) -> int:
    from duro.errors import DuroError
    from duro.topology.etcdkv import EtcdUnreachableError

    try:
        result = _run(_call(args))
    except EtcdUnreachableError:
        raise  # main() says what was tried and what to do
    except DuroError as exc:
        flags = [f for f in ("retryable", "overloaded") if getattr(exc, f)]
        print(f"error: {exc.code}: {exc}" + (f" ({', '.join(flags)})" if flags else ""),
              file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


async def _reached(args: argparse.Namespace, coro_fn: Callable[[], Any]) -> Any:
    """``coro_fn()`` once etcd has answered (within ``--connect-timeout``): a dead or wrong
    endpoint fails in seconds, with one line (``_unreachable``), not after the retries of every
    read the command makes."""
    from duro.topology.etcdkv import check_reachable, etcd_client

    async with etcd_client(args.etcd) as kv:
        await check_reachable(kv, args.etcd, args.connect_timeout)
    return await coro_fn()


def _cmd_status(args: argparse.Namespace) -> int:
    from duro.client.admin import status

    print(json.dumps(_run(_reached(args, lambda: status(args.etcd, args.cluster))), indent=2))
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    from duro._top import run_top
    from duro.errors import InvalidArgumentError

    if args.interval <= 0:
        raise InvalidArgumentError("--interval must be a positive number of seconds")
    try:
        return _run(run_top(args.etcd, args.cluster, interval=args.interval, once=args.once,
                            as_json=args.json))
    except KeyboardInterrupt:  # how one leaves the live view
        return 0


def _cmd_where(args: argparse.Namespace) -> int:
    from duro.client.admin import where

    info = _run(_reached(args, lambda: where(args.etcd, args.cluster, args.app, args.binding,
                                             args.name)))
    print(json.dumps(info, indent=2))
    return 0 if info.get("node") else 1


DEV_STATE = Path(".duro/dev/cluster.json")
DEFAULT_ETCD = "127.0.0.1:2379"
CONNECT_TIMEOUT = 2.0  # with the start of the process (~0.5 s, more on a busy machine): within 5 s


def _dev_state() -> dict[str, str]:
    """What a running ``duro dev`` in this directory wrote: its etcd endpoint and app."""
    path = DEV_STATE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _cmd_migrate(args: argparse.Namespace) -> int:
    from duro.client.admin import migrate

    if not args.to_region and not args.to_node:
        print("duro migrate: give --to-region R or --to-node N", file=sys.stderr)
        return 2
    res = _run(_reached(args, lambda: migrate(args.etcd, args.cluster, args.app, args.binding,
                                              args.name, to_region=args.to_region,
                                              to_node=args.to_node)))
    print(json.dumps(res, indent=2))
    return 0 if res.get("outcome") == "released" else 1


def _cmd_drain(args: argparse.Namespace) -> int:
    from duro.client.admin import drain

    def progress(done: dict, oid: str, target: str, res: dict) -> None:
        n = done["moved"] + done["failed"]
        print(f"[{n}/{done['total']}] {oid[:16]}… -> {target}: {res['outcome']} "
              f"({res.get('held_ms', '-')} ms held) {res.get('detail', '')}", flush=True)

    res = _run(_reached(args, lambda: drain(args.etcd, args.cluster, args.node_id,
                                            concurrency=args.concurrency, progress=progress)))
    print(json.dumps(res, indent=2))
    return 0 if res["failed"] == 0 else 1


def _cmd_undrain(args: argparse.Namespace) -> int:
    from duro.client.admin import undrain

    print(json.dumps(_run(undrain(args.etcd, args.cluster, args.node_id)), indent=2))
    return 0


def _cmd_certs(args: argparse.Namespace) -> int:
    from duro._certs import ensure_ca, issue

    directory = Path(args.dir)
    ca_dir = Path(args.ca_dir) if args.ca_dir else directory
    if ensure_ca(ca_dir, days=max(args.days, 3650)):
        print(f"created the cluster CA: {ca_dir / 'ca.pem'} (keep ca-key.pem off the hosts)")
    wanted = [("node", n) for n in args.node] + [("edge", e) for e in args.edge] + [
        ("client", c) for c in args.client]
    wanted += [(r, "") for r in ("placement", "admin") if getattr(args, r)]
    if args.etcd_host:
        wanted.append(("etcd", ""))
    for role, ident in wanted:
        hosts = tuple(args.etcd_host) if role == "etcd" else tuple(args.host)
        c = issue(directory, role, ident, hosts=hosts, days=args.days, overwrite=args.force,
                  ca_dir=ca_dir)
        print(f"{role}{'/' + ident if ident else ''}: {c.cert} {c.key}")
    if args.group_readable:  # containers that run as another user of the same group
        for key in directory.glob("*-key.pem"):
            if key.name != "ca-key.pem":
                key.chmod(0o640)
    return 0


def _cmd_gateway_token(args: argparse.Namespace) -> int:
    from duro.edge.tokens import new_token, token_entry

    def names(text: str | None) -> list[str] | None:
        return None if text is None else [n.strip() for n in text.split(",") if n.strip()]

    token = new_token()
    entry = token_entry(args.name, token, bindings=names(args.bindings),
                        methods=names(args.methods))
    if args.file:
        path = Path(args.file)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(("\n" if path.stat().st_size else "") + entry)
        print(f"appended token {args.name!r} to {path} (its SHA-256 only); the token, shown "
              f"once, is on stdout", file=sys.stderr)
    else:
        print(entry, file=sys.stderr, end="")
    print(token)
    return 0


def _resolve_etcd(args: argparse.Namespace) -> str:
    """Fill in ``args.etcd`` (flag, else ``DURO_ETCD``, else this directory's ``duro dev``, else
    the default) and return where it came from, for the message when it cannot be reached."""
    if args.etcd:
        return "--etcd"
    if os.environ.get("DURO_ETCD"):
        args.etcd = os.environ["DURO_ETCD"]
        return "DURO_ETCD"
    dev = _dev_state().get("etcd")
    if dev:
        args.etcd = dev
        return str(DEV_STATE)
    args.etcd = DEFAULT_ETCD
    return "default"


def _unreachable(command: str, args: argparse.Namespace, origin: str, why: str) -> str:
    """One line: what was tried, what failed, what to do."""
    if origin == "default":
        todo = (f"no duro dev runs in {Path.cwd()} (no {DEV_STATE}): run `duro dev` here, or "
                f"run this command where duro dev runs, or pass --etcd HOST:PORT (or set "
                f"DURO_ETCD)")
    elif origin == str(DEV_STATE):
        todo = (f"{DEV_STATE} names it, but that duro dev is not running: start it again "
                f"(or remove the file)")
    else:
        todo = f"check the endpoint given by {origin}, and that etcd runs there"
    if not args.tls_ca and not os.environ.get("DURO_TLS_CA"):
        todo += "; a cluster with mTLS also needs --tls-ca/--tls-cert/--tls-key"
    return f"duro {command}: {why}; {todo}"


def _use_tls(args: argparse.Namespace) -> None:
    """Operator commands present the certificate they are given (an admin's, usually)."""
    from duro import tls

    tls.configure(tls.from_settings(args.tls_ca, args.tls_cert, args.tls_key))


def _add_cluster_flags(p: argparse.ArgumentParser, *, node: bool = False) -> None:
    dev = _dev_state()
    for name, what in (("ca", "cluster CA"), ("cert", "certificate (an admin's: duro certs "
                                                        "--admin)"), ("key", "private key")):
        p.add_argument(f"--tls-{name}", default=os.environ.get(f"DURO_TLS_{name.upper()}",
                                                               dev.get(f"tls_{name}")),
                       help=f"mTLS: the {what}, PEM (env DURO_TLS_{name.upper()}; default: "
                            "the running duro dev's)")
    p.add_argument("--etcd", default=None,
                   help="etcd endpoint host:port (env DURO_ETCD; default: the running duro dev, "
                        f"else {DEFAULT_ETCD})")
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT, metavar="S",
                   help=f"give up when etcd does not answer within S seconds "
                        f"(default {CONNECT_TIMEOUT:g})")
    p.add_argument("--cluster", default=os.environ.get("DURO_CLUSTER", dev.get("cluster", "duro")))
    p.add_argument("--app", default=os.environ.get("DURO_APP"),
                   help="the app, for binding → class names (default: what the nodes published)")
    p.add_argument("--region", default=os.environ.get("DURO_REGION", ""))
    if node:
        p.add_argument("--node", default=None,
                       help="call one node directly at host:port instead of routing via etcd")


def build_parser() -> argparse.ArgumentParser:
    from duro.node.config import NodeConfig

    parser = argparse.ArgumentParser(prog="duro", description="Durable Objects for Python")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dev", help="run a local multi-region cluster on this machine")
    p.add_argument("--app", default="examples", help="app directory, duro.toml or module")
    p.add_argument("--data-dir", default=".duro/dev", help="where the cluster keeps its data")
    p.add_argument("--regions", default="us-east,eu-west,ap-south")
    p.add_argument("--http-port", type=int, default=8787, help="first edge's HTTP port")
    p.add_argument("--base-port", type=int, default=7100, help="etcd's client port")
    p.add_argument("--no-edge", action="store_true", help="do not start edges")
    p.add_argument("--nodes-per-region", type=int, default=1,
                   help="host nodes in each region (default 1; 3 keeps every copy in-region)")
    p.add_argument("--replicas", type=int, default=3,
                   help="copies of each replica group (default 3; 1 = no replication)")
    p.add_argument("--min-in-sync", type=int, default=2,
                   help="writes are refused below this many in-sync copies (default 2)")
    p.add_argument("--simulate-latency", action="store_true",
                   help="inject inter-region latency (us-east↔eu-west 40 ms, to ap-south 90 ms)")
    p.add_argument("--no-reload", action="store_true",
                   help="do not restart the cluster when the app's code changes")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS anywhere (debugging): by default every connection is mutual TLS "
                        "with certificates made in the data directory")
    p.add_argument("--separate-edges", action="store_true",
                   help="run each region's edge as a process of its own (by default it runs "
                        "inside the region's first node: one process hop less; a separate edge "
                        "keeps its clients' WebSockets open while that node restarts)")
    p.set_defaults(fn=_cmd_dev)

    p = sub.add_parser("certs", help="create the cluster CA and certificates for mTLS")
    p.add_argument("--dir", required=True, help="where the certificates are written")
    p.add_argument("--ca-dir", default=None,
                   help="where the CA (ca.pem, ca-key.pem) is kept (default: --dir); apart, the "
                        "CA's key stays out of what the processes mount")
    p.add_argument("--node", action="append", default=[], metavar="ID", help="a node's (repeat)")
    p.add_argument("--edge", action="append", default=[], metavar="ID", help="an edge's (repeat)")
    p.add_argument("--client", action="append", default=[], metavar="NAME",
                   help="an application client's (duro://client/NAME; repeat)")
    p.add_argument("--placement", action="store_true", help="the placement replicas' (shared)")
    p.add_argument("--admin", action="store_true", help="an operator's (duro drain, migrate)")
    p.add_argument("--etcd-host", action="append", default=[], metavar="HOST",
                   help="etcd's server certificate, for these host names or addresses (repeat)")
    p.add_argument("--host", action="append", default=[], metavar="HOST",
                   help="extra DNS names or addresses in the other certificates (repeat)")
    p.add_argument("--days", type=int, default=825, help="validity of the certificates")
    p.add_argument("--force", action="store_true", help="re-issue certificates that exist")
    p.add_argument("--group-readable", action="store_true",
                   help="keys readable by the group (0640), e.g. for containers")
    p.set_defaults(fn=_cmd_certs)

    p = sub.add_parser("gateway-token",
                       help="make a Gateway bearer token (prints it; stores only its SHA-256)")
    p.add_argument("--name", required=True, help="who holds it (shown in logs and errors)")
    p.add_argument("--file", default=None,
                   help="append its [[token]] entry to this tokens file (created 0600); "
                        "without: the entry is printed on stderr")
    p.add_argument("--bindings", default=None, metavar="A,B",
                   help="only these bindings (default: every binding the app exposes)")
    p.add_argument("--methods", default=None, metavar="m,B.m",
                   help="only these methods, as name or BINDING.name; fetch = the Fetch RPC")
    p.set_defaults(fn=_cmd_gateway_token)

    p = sub.add_parser("node", help="run a host node")
    p.add_argument("--config", help="TOML file with node settings")
    add_dataclass_flags(p, NodeConfig, env_prefix="DURO_NODE_")
    p.set_defaults(fn=_cmd_node)

    for name, fn in (("placement", _cmd_placement), ("edge", _cmd_edge)):
        p = sub.add_parser(name, help=f"run a {name} service", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(fn=fn)

    p = sub.add_parser("call", help="call a method of an object")
    p.add_argument("binding")
    p.add_argument("name")
    p.add_argument("method")
    p.add_argument("json_args", nargs="?", help="JSON list (positional), object (keyword) or value")
    _add_cluster_flags(p, node=True)
    p.set_defaults(fn=_cmd_call)

    p = sub.add_parser("status", help="nodes, regions, leader, object counts")
    _add_cluster_flags(p)
    p.set_defaults(fn=_cmd_status)

    p = sub.add_parser("migrate", help="move an object to another region or node, live")
    p.add_argument("binding")
    p.add_argument("name")
    p.add_argument("--to-region", default=None)
    p.add_argument("--to-node", default=None)
    _add_cluster_flags(p)
    p.set_defaults(fn=_cmd_migrate)

    p = sub.add_parser("drain", help="move every object off a node (then it can be stopped)")
    p.add_argument("node_id")
    p.add_argument("--concurrency", type=int, default=8)
    _add_cluster_flags(p)
    p.set_defaults(fn=_cmd_drain)

    p = sub.add_parser("undrain", help="let placement put new objects on a drained node again")
    p.add_argument("node_id")
    _add_cluster_flags(p)
    p.set_defaults(fn=_cmd_undrain)

    p = sub.add_parser("top", help="the cluster live in the terminal: nodes, health, load, "
                       "objects, memory, leader, replica groups, calls per binding")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true",
                   help="print one frame (two samples --interval apart, for rates) and exit")
    p.add_argument("--json", action="store_true", help="print the picture as JSON and exit")
    _add_cluster_flags(p)
    p.set_defaults(fn=_cmd_top)

    p = sub.add_parser("where", help="which node owns an object")
    p.add_argument("binding")
    p.add_argument("name")
    _add_cluster_flags(p)
    p.set_defaults(fn=_cmd_where)
    return parser


def main(argv: list[str] | None = None) -> int:
    from duro.errors import InvalidArgumentError
    from duro.tls import TlsSettingsError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `duro edge --flag ...`: the service parses its own flags
        if not hasattr(args, "rest"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.rest = [*extra, *args.rest]
    fn: Callable[[argparse.Namespace], int] = args.fn
    operator = hasattr(args, "tls_ca") and not hasattr(args, "rest")
    origin = _resolve_etcd(args) if operator else ""
    try:
        if operator:
            _use_tls(args)
        return fn(args)
    except (InvalidArgumentError, TlsSettingsError) as exc:  # config errors: one clear line
        print(f"duro {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - an operator command's failure: one line, no traceback
        if not operator:
            raise
        return _operator_failed(args, origin, exc)


def _operator_failed(args: argparse.Namespace, origin: str, exc: Exception) -> int:
    """An operator command failed on the cluster's side: say so in one line (what was tried,
    what to do), never with a traceback."""
    import grpc
    from etcd3aio import EtcdError

    from duro.errors import DuroError
    from duro.topology.etcdkv import EtcdUnreachableError, describe_etcd_error

    if isinstance(exc, EtcdUnreachableError):
        print(_unreachable(args.command, args, origin, str(exc)), file=sys.stderr)
        return 1
    if isinstance(exc, EtcdError):  # etcd lost after it answered
        why = f"etcd at {args.etcd} failed midway ({describe_etcd_error(exc)})"
        print(_unreachable(args.command, args, origin, why), file=sys.stderr)
        return 1
    if isinstance(exc, grpc.aio.AioRpcError):  # a node's or the placement's answer
        print(f"duro {args.command}: a call in the cluster failed: {exc.code().name}: "
              f"{exc.details()}", file=sys.stderr)
        return 1
    if isinstance(exc, DuroError):
        print(f"duro {args.command}: {exc.code}: {exc}", file=sys.stderr)
        return 1
    raise exc


if __name__ == "__main__":
    raise SystemExit(main())
