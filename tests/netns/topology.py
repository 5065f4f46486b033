"""Regions as Linux network namespaces joined by veth pairs with ``tc netem`` delays.

Topology (``TAG`` = ``duro<pytest pid>``, so concurrent runs never share a name)::

                         TAG-hub  (lo 10.77.0.1: etcd :2379, placement :7000)
                 10.77.101.1 /    10.77.102.1 |     \\ 10.77.103.1        control plane:
                            /                 |      \\                     no delay
             10.77.101.2   /      10.77.102.2 |       \\ 10.77.103.2
         TAG-use ---------------------- TAG-euw ---------------------- TAG-aps
      lo 10.77.1.1  10.77.212.0/24    lo 10.77.2.1   10.77.223.0/24   lo 10.77.3.1
      (us-east)      netem 40 ms       (eu-west)      netem 90 ms      (ap-south)
           \\______________________________________________________________/
                             10.77.213.0/24, netem 90 ms

* One namespace per region plus a hub namespace; no address is ever added to the root namespace
  and no route leaves the namespaces (every address is in 10.77.0.0/16, on veths created here).
* Each region has a stable "home" address ``10.77.R.1/32`` on its loopback; its node (and any
  client run there) binds/advertises it. Static ``/32`` routes send traffic for another region's
  home address over the direct veth pair joining the two regions, with ``src`` set to the own home
  address, so both directions of a conversation use the same link.
* Every region pair has its own veth pair with ``tc qdisc add dev X root netem delay D`` on BOTH
  ends, D = the one-way delay of :data:`duro.client.latency.DEFAULT_MS` (us-east<->eu-west 40 ms,
  to ap-south 90 ms): a round trip between regions costs 2 D, exactly the in-process simulation's
  matrix, with no classifier or prio qdisc needed (only ``sch_netem``).
* The hub (etcd + placement) is joined to each region by an undelayed veth pair, as the
  simulation does not delay etcd either.

:meth:`Topology.create` raises :class:`Unavailable` with the failing command when namespaces or
veths cannot be made; a missing ``netem`` leaves the topology usable but undelayed and records
the failure in :attr:`Topology.delay_error` (tests that need delays skip with it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

from duro.client.latency import DEFAULT_MS

__all__ = ["REGIONS", "Topology", "Unavailable", "cleanup_stale", "namespace_pids"]

# region -> (namespace suffix, index R: home address 10.77.R.1)
REGIONS = {"us-east": ("use", 1), "eu-west": ("euw", 2), "ap-south": ("aps", 3)}
HUB_ADDR = "10.77.0.1"
_PREFIX = "duro"
_NAME_RE = re.compile(rf"^{_PREFIX}(\d+)-(hub|use|euw|aps)$")


class Unavailable(RuntimeError):
    """Namespaces/veths cannot be created here; the message names the command that failed."""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc


def _describe(exc: subprocess.CalledProcessError) -> str:
    err = (exc.stderr or exc.stdout or "").strip().splitlines()
    return f"`{' '.join(exc.cmd)}` failed (exit {exc.returncode}): {err[-1] if err else ''}"


def namespace_pids(ns: str) -> list[int]:
    """Pids of the processes living in namespace *ns* (``ip netns pids``)."""
    proc = _run("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_namespace(ns: str) -> None:
    for _ in range(50):
        pids = namespace_pids(ns)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    _run("ip", "netns", "del", ns, check=False)  # its veths go with it


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete this suite's namespaces left by a test run whose process is gone."""
    if shutil.which("ip") is None:
        return []
    out = _run("ip", "netns", "list", check=False).stdout
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME_RE.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _kill_namespace(name)
            removed.append(name)
    return removed


def one_way_ms(a: str, b: str) -> float:
    return DEFAULT_MS.get(f"{a}|{b}", DEFAULT_MS.get(f"{b}|{a}", 0.0))


@dataclass
class Topology:
    """The namespaces of one test module; :meth:`create` then :meth:`destroy` (idempotent)."""

    regions: tuple[str, ...] = tuple(REGIONS)
    tag: str = field(default_factory=lambda: f"{_PREFIX}{os.getpid()}")
    namespaces: list[str] = field(default_factory=list)  # created so far (destroy deletes them)
    delay_error: str | None = None  # why netem could not be applied (links are then undelayed)
    netem_commands: list[str] = field(default_factory=list)

    hub_addr = HUB_ADDR

    @property
    def hub(self) -> str:
        return f"{self.tag}-hub"

    def ns(self, region: str) -> str:
        return f"{self.tag}-{REGIONS[region][0]}"

    def addr(self, region: str) -> str:
        return f"10.77.{REGIONS[region][1]}.1"

    def rtt_ms(self, a: str, b: str) -> float:
        return 2 * one_way_ms(a, b)

    # -- lifecycle ----------------------------------------------------------------------------
    def create(self) -> Topology:
        if os.geteuid() != 0:
            raise Unavailable(f"network namespaces need root (running as uid {os.geteuid()})")
        if shutil.which("ip") is None:
            raise Unavailable("`ip` not found (apt-get install -y iproute2)")
        if shutil.which("tc") is None:
            raise Unavailable("`tc` not found (apt-get install -y iproute2)")
        cleanup_stale()
        try:
            self._build()
        except subprocess.CalledProcessError as exc:
            self.destroy()
            raise Unavailable(_describe(exc)) from None
        except BaseException:
            self.destroy()
            raise
        return self

    def _netns(self, name: str) -> None:
        if name in _run("ip", "netns", "list", check=False).stdout.split():
            _kill_namespace(name)  # our own leftover (same pid reused)
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _link(self, ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str) -> None:
        _run("ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b,
             "netns", ns_b)
        for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
            _run("ip", "-n", ns, "link", "set", ifname, "up")

    def _delay(self, ns: str, ifname: str, ms: float) -> None:
        cmd = ("tc", "-n", ns, "qdisc", "add", "dev", ifname, "root", "netem", "delay",
               f"{ms:g}ms", "limit", "100000")
        self.netem_commands.append(" ".join(cmd))
        if self.delay_error is not None:
            return
        try:
            _run(*cmd)
        except subprocess.CalledProcessError as exc:
            self.delay_error = _describe(exc) + " (the kernel lacks sch_netem?)"

    def _build(self) -> None:
        self._netns(self.hub)
        _run("ip", "-n", self.hub, "addr", "add", f"{HUB_ADDR}/32", "dev", "lo")
        for region in self.regions:
            suffix, r = REGIONS[region]
            ns = self.ns(region)
            self._netns(ns)
            _run("ip", "-n", ns, "addr", "add", f"{self.addr(region)}/32", "dev", "lo")
            # hub <-> region, undelayed (control plane)
            hub_side, region_side = f"10.77.{100 + r}.1", f"10.77.{100 + r}.2"
            self._link(self.hub, f"{suffix}0", hub_side, ns, "hub0", region_side)
            _run("ip", "-n", ns, "route", "add", f"{HUB_ADDR}/32", "via", hub_side,
                 "src", self.addr(region))
            _run("ip", "-n", self.hub, "route", "add", f"{self.addr(region)}/32", "via",
                 region_side, "src", HUB_ADDR)
        for i, a in enumerate(self.regions):
            for b in self.regions[i + 1:]:
                (sa, ra), (sb, rb) = REGIONS[a], REGIONS[b]
                lo, hi = min(ra, rb), max(ra, rb)
                net = f"10.77.{200 + 10 * lo + hi}"
                ns_a, ns_b = self.ns(a), self.ns(b)
                self._link(ns_a, f"to-{sb}", f"{net}.{ra}", ns_b, f"to-{sa}", f"{net}.{rb}")
                _run("ip", "-n", ns_a, "route", "add", f"{self.addr(b)}/32", "via",
                     f"{net}.{rb}", "src", self.addr(a))
                _run("ip", "-n", ns_b, "route", "add", f"{self.addr(a)}/32", "via",
                     f"{net}.{ra}", "src", self.addr(b))
                ms = one_way_ms(a, b)
                if ms > 0:
                    self._delay(ns_a, f"to-{sb}", ms)
                    self._delay(ns_b, f"to-{sa}", ms)

    def destroy(self) -> None:
        """Kill whatever still runs in our namespaces and delete them (their veths go too)."""
        for ns in reversed(self.namespaces):
            _kill_namespace(ns)
        self.namespaces.clear()

    def leftovers(self) -> list[str]:
        """Namespaces of this topology that still exist (should be none after destroy)."""
        names = {line.split()[0] for line in _run("ip", "netns", "list", check=False)
                 .stdout.splitlines() if line.split()}
        return sorted(n for n in names if n.startswith(self.tag + "-"))

    def describe(self) -> str:
        lines = [f"hub      {self.hub:<16} {HUB_ADDR}"]
        for region in self.regions:
            lines.append(f"{region:<8} {self.ns(region):<16} {self.addr(region)}")
        lines.append("delays: " + ("netem, " + "; ".join(self.netem_commands)
                                   if self.delay_error is None else f"NONE ({self.delay_error})"))
        return "\n".join(lines)
