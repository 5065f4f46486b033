#!/opt/duro/bin/python -IS
"""Container health check for every duro role (stdlib only, started with ``python -I -S``).

The role and its ports come from the container's main process (PID 1, ``duro ROLE [flags]`` or
``python -m duro.ROLE [flags]``; ``DURO_ROLE`` if neither):
flags first, then the role's ``DURO_*`` environment variables (the check runs with the
container's environment), then the defaults of deploy/Dockerfile.

* node:      HTTP GET /metrics on its metrics port (served only once the node is registered in
             etcd and serving gRPC); with metrics off (-1), a TCP connect to its gRPC port.
* placement: TCP connect to its gRPC listen port.
* edge:      HTTP GET /health on its admin listener (``--admin-listen``/``DURO_EDGE_ADMIN_LISTEN``,
             default 127.0.0.1:8789; health is never on the public port), 200 expected; with the
             admin listener off (''), a TCP connect to its HTTP port.
Exit 0 = healthy, 1 = unhealthy (the reason on stdout, shown by ``docker inspect``).
"""

import os
import socket
import sys

TIMEOUT = 2.0


def cmdline():
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def flag(argv, name, default=""):
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def port_of(address, default):
    try:
        return int(str(address).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return default


def tcp(port):
    with socket.create_connection(("127.0.0.1", port), TIMEOUT):
        return True


def http_status(port, path):
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        s.sendall(("GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" % path).encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(256)
            if not chunk:
                break
            head += chunk
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def main():
    argv = cmdline()
    env = os.environ
    role = env.get("DURO_ROLE", "")
    for a in argv[:4]:
        if a in ("node", "placement", "edge", "duro.node", "duro.placement", "duro.edge"):
            role = a.replace("duro.", "")
            break
    try:
        if role == "node":
            metrics = int(flag(argv, "--metrics-port", env.get("DURO_NODE_METRICS_PORT", "9100")))
            if metrics >= 0:
                status = http_status(metrics, "/metrics")
                if status != 200:
                    print("node metrics answered %s" % status)
                    return 1
                return 0
            return 0 if tcp(port_of(flag(argv, "--listen", env.get("DURO_NODE_LISTEN", "")), 7100)) else 1
        if role == "placement":
            listen = flag(argv, "--listen", env.get("DURO_PLACEMENT_LISTEN", ""))
            return 0 if tcp(port_of(listen, 7000)) else 1
        if role == "edge":
            admin = flag(argv, "--admin-listen", env.get("DURO_EDGE_ADMIN_LISTEN", "127.0.0.1:8789"))
            if not admin:
                listen = flag(argv, "--http-listen", env.get("DURO_EDGE_HTTP_LISTEN", ""))
                return 0 if tcp(port_of(listen, 8787)) else 1
            status = http_status(port_of(admin, 8789), "/health")
            if status != 200:
                print("edge admin /health answered %s" % status)
                return 1
            return 0
    except (OSError, ValueError) as exc:
        print("%s: %s" % (role or "duro", exc))
        return 1
    return 0  # not a duro service (a shell, duro call): nothing to check


if __name__ == "__main__":
    sys.exit(main())
