#!/opt/duro/bin/python -IS
"""Container entry point: resolve etcd host names to addresses, then exec the real command.

    duro-entrypoint duro node --etcd etcd:2379 ...      (ENTRYPOINT of deploy/Dockerfile)

etcd3aio, duro's etcd client, dials its endpoints with gRPC's ``ipv4:`` scheme, which takes IP
addresses only: ``etcd:2379`` (a Compose service or a Kubernetes Service name) fails with "the
target uri is not valid". Until duro resolves names itself, this wrapper rewrites every etcd
endpoint it finds (``--etcd`` flags; ``DURO_ETCD``, ``DURO_NODE_ETCD``, ``DURO_EDGE_ETCD``) from
``name:port`` to ``address:port``, retrying for up to ``DURO_RESOLVE_TIMEOUT`` seconds (default
30) while the name is not yet in DNS, and then ``exec``s the command (it stays PID 1's program).
The addresses are resolved once per container start: a Compose service or Kubernetes Service
keeps its address for that long; if etcd moves, restart the containers.
"""

import ipaddress
import os
import socket
import sys
import time

ENV_VARS = ("DURO_ETCD", "DURO_NODE_ETCD", "DURO_EDGE_ETCD")


def resolve_one(endpoint, deadline):
    endpoint = endpoint.strip()
    if not endpoint or "://" in endpoint:
        return endpoint
    host, sep, port = endpoint.rpartition(":")
    if not sep:
        host, port = endpoint, "2379"
    try:
        ipaddress.ip_address(host.strip("[]"))
        return endpoint
    except ValueError:
        pass
    while True:
        try:
            infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
            return "%s:%s" % (infos[0][4][0], port)
        except (socket.gaierror, OSError) as exc:
            if time.monotonic() > deadline:
                print("duro-entrypoint: cannot resolve etcd host %r: %s" % (host, exc),
                      file=sys.stderr)
                return endpoint
            time.sleep(0.25)


def resolve(value, deadline):
    return ",".join(resolve_one(e, deadline) for e in value.split(","))


def main():
    argv = sys.argv[1:]
    if not argv:
        print("usage: duro-entrypoint COMMAND [ARGS...]", file=sys.stderr)
        return 2
    deadline = time.monotonic() + float(os.environ.get("DURO_RESOLVE_TIMEOUT", "30"))
    for var in ENV_VARS:
        if os.environ.get(var):
            os.environ[var] = resolve(os.environ[var], deadline)
    out = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--etcd" and i + 1 < len(argv):
            out += [a, resolve(argv[i + 1], deadline)]
            i += 2
            continue
        if a.startswith("--etcd="):
            a = "--etcd=" + resolve(a.split("=", 1)[1], deadline)
        out.append(a)
        i += 1
    os.execvp(out[0], out)


if __name__ == "__main__":
    sys.exit(main())
