"""Model check of the replication protocol: every interleaving of writes, lost messages, crashes,
lease losses, wiped disks and failovers, for one group of three replicas.

The decisions come from the real pure functions (``duro.node.replication.protocol``:
``follower_verdict``, ``after_apply``, ``catch_up_plan``, ``choose_primary``, ``can_remove``,
``promoted_history``); this test models everything around them — the primary's write path and
commit rule, FIFO streams that can lose everything in flight, etcd as a compare-and-swap store,
the leader's failover in separate steps (fence each member, then swap the configuration), crashes
that keep only what was fsynced, a primary whose lease runs out while it lives, a data directory
wiped — and explores every reachable state breadth-first, checking in each one:

* every acknowledged write is on the disk of every in-sync member that still holds the copy it
  was in sync with (committed ⊆ in-sync: whoever is promoted next has it);
* the in-sync copies are prefixes of one another (no divergence among them);
* only the configuration's primary, holding the configuration's lease, serves (also across
  planned handovers to another in-sync member);
* the acknowledged writes are on every in-sync copy in the order they were acknowledged, and
  on at least `min_in_sync` disks (less any that were wiped).
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import pytest

from duro.node.replication import protocol as P

NODES = ("A", "B", "C")


def replace(t, **changes):  # noqa: ANN001, ANN201 - NamedTuple's _replace: 5x dataclasses.replace
    return t._replace(**changes)
MIN_IN_SYNC = 2


class Node(NamedTuple):
    alive: bool = True
    inc: int = 1                 # lease incarnation: every (re-)registration gets a new one
    registered: bool = True      # holds a valid lease
    sid: int = 1                 # storage id (a wiped disk gets a new one)
    # fsynced (survives a crash):
    data: tuple = ()             # ((epoch, value), ...): batch seq i+1 is data[i]
    accepted: int = 0
    history: P.History = ()
    # volatile:
    log_first: int = 1           # the first seq its in-memory log holds
    serving: int = 0             # the epoch it serves as primary (0: none)
    reconciling: int = 0         # the epoch it is reconciling as the new primary
    pending: tuple = ()          # primary: ((seq, value, required members), ...) not acked yet
    acks: tuple = ()             # primary: ((member, sid, seq), ...) highest ack per member

    @property
    def pos(self) -> P.Position:
        return P.Position(self.data[-1][0], len(self.data)) if self.data else P.Position()

    def ack_of(self, member: str) -> tuple[int, int]:
        for m, sid, seq in self.acks:
            if m == member:
                return sid, seq
        return 0, 0

    def with_ack(self, member: str, sid: int, seq: int) -> Node:
        old_sid, old_seq = self.ack_of(member)
        if old_sid == sid and old_seq >= seq:
            return self
        rest = tuple(a for a in self.acks if a[0] != member)
        return replace(self, acks=tuple(sorted(rest + ((member, sid, seq),))))


class Config(NamedTuple):
    rev: int
    epoch: int
    primary: str
    lease: int
    in_sync: tuple               # ((member, sid), ...) sorted
    replicas: tuple = NODES

    def sid_of(self, member: str) -> int | None:
        return dict(self.in_sync).get(member)


class Failover(NamedTuple):
    rev: int                     # the configuration revision it started from
    answers: tuple = ()          # ((member, sid, last_epoch, seq), ...)
    fenced: frozenset = frozenset()


class World(NamedTuple):
    nodes: tuple                 # (Node, Node, Node) in NODES order
    config: Config
    chans: tuple = ()            # ((src, dst, messages), ...) non-empty FIFO streams
    failover: Failover | None = None
    acked: tuple = ()            # values acknowledged to clients, in order
    writes: int = 0
    faults: int = 0
    handovers: int = 0
    crashes: int = 0
    lease_losses: int = 0
    wipes: int = 0
    drops: int = 0

    def node(self, n: str) -> Node:
        return self.nodes[NODES.index(n)]

    def set(self, n: str, node: Node) -> World:
        i = NODES.index(n)
        return replace(self, nodes=self.nodes[:i] + (node,) + self.nodes[i + 1:])

    def chan(self, src: str, dst: str) -> tuple:
        for s, d, msgs in self.chans:
            if (s, d) == (src, dst):
                return msgs
        return ()

    def set_chan(self, src: str, dst: str, msgs: tuple) -> World:
        rest = tuple(c for c in self.chans if (c[0], c[1]) != (src, dst))
        if msgs:
            rest = tuple(sorted(rest + ((src, dst, msgs),)))
        return replace(self, chans=rest)

    def send(self, src: str, dst: str, msg: tuple) -> World:
        if not self.node(dst).alive:
            return self  # a stream to a dead process carries nothing
        return self.set_chan(src, dst, self.chan(src, dst) + (msg,))


@dataclass(frozen=True)
class Bounds:
    writes: int = 2
    faults: int = 2            # crashes, wipes, lease losses and broken streams, in all
    handovers: int = 1         # planned handovers (each moves the epoch on, so: bounded)
    crashes: int = 2
    lease_losses: int = 1
    wipes: int = 1
    drops: int = 1


def initial() -> World:
    hist = P.promoted_history((), P.Position(), 1)
    nodes = tuple(Node(accepted=1, history=hist if n == "A" else (), serving=1 if n == "A" else 0)
                  for n in NODES)
    return World(nodes, Config(rev=1, epoch=1, primary="A", lease=1,
                               in_sync=tuple((n, 1) for n in NODES)))


# -- the primary --------------------------------------------------------------------------------
def is_current_primary(w: World, n: str) -> bool:
    """The configuration names ``n`` with the lease it holds now and the storage it has now."""
    x, c = w.node(n), w.config
    return (x.alive and x.registered and c.primary == n and c.lease == x.inc
            and c.sid_of(n) == x.sid)


def batch_msg(x: Node, seq: int) -> tuple:
    epoch, value = x.data[seq - 1]
    prev = P.epoch_of(x.history, seq - 1) if seq > 1 else 0
    return ("batch", x.serving or x.reconciling, epoch, seq, value, prev or 0)


def try_commit(w: World, n: str) -> World:
    """Acknowledge the primary's pending batches, in order, that every member required at cut
    time and still in sync (with the same storage) has acknowledged."""
    x = w.node(n)
    if not x.pending or not is_current_primary(w, n) or x.serving != w.config.epoch:
        return w
    acked = w.acked
    pending = list(x.pending)
    while pending:
        seq, value, required = pending[0]
        ok = True
        for m in required:
            sid = w.config.sid_of(m)
            if sid is None:
                continue  # removed from in_sync by CAS: no longer required
            a_sid, a_seq = x.ack_of(m)
            if a_sid != sid or a_seq < seq:
                ok = False
                break
        if not ok:
            break
        pending.pop(0)
        acked = acked + (value,)
    return replace(w.set(n, replace(x, pending=tuple(pending))), acked=acked)


def successors(w: World, b: Bounds) -> Iterator[tuple[str, World]]:
    c = w.config
    # -- clients write at the serving primary --------------------------------------------------
    for n in NODES:
        x = w.node(n)
        if (w.writes < b.writes and x.serving and x.serving == c.epoch
                and is_current_primary(w, n) and len(c.in_sync) >= MIN_IN_SYNC):
            value = f"v{w.writes + 1}"
            seq = len(x.data) + 1
            required = frozenset(m for m, _ in c.in_sync if m != n)
            nx = replace(x, data=x.data + ((x.serving, value),),
                         history=P.after_apply(x.history, x.serving, seq),
                         pending=x.pending + ((seq, value, required),))
            nw = replace(w.set(n, nx), writes=w.writes + 1)
            for m in c.replicas:
                if m != n:
                    nw = nw.send(n, m, batch_msg(nx, seq))
            yield f"write {value} at {n}", nw

    # -- streams deliver, in order ----------------------------------------------------------------
    for src, dst, msgs in w.chans:
        msg, rest = msgs[0], msgs[1:]
        nw = w.set_chan(src, dst, rest)
        y = nw.node(dst)
        if msg[0] == "batch":
            _, sender_epoch, epoch, seq, value, prev = msg
            v = P.follower_verdict(y.accepted, y.pos, y.history, sender_epoch, epoch, seq, prev)
            if v is P.Verdict.APPLY:
                ny = replace(y, data=y.data + ((epoch, value),),
                             history=P.after_apply(y.history, epoch, seq),
                             accepted=max(y.accepted, sender_epoch))
                yield f"{dst} applies {seq}", nw.set(dst, ny).send(dst, src, ("ack", ny.sid, seq))
            elif v is P.Verdict.DUPLICATE:
                yield f"{dst} has {seq}", nw.send(dst, src, ("ack", y.sid, seq))
            elif v is P.Verdict.STALE:
                yield f"{dst} refuses stale {seq}", nw.send(dst, src, ("stale", y.accepted))
            else:  # GAP, DIVERGED: the primary catches it up
                yield f"{dst} refuses {seq} ({v.value})", nw
        elif msg[0] == "ack":
            _, sid, seq = msg
            yield f"{dst} gets ack {seq} from {src}", try_commit(
                nw.set(dst, y.with_ack(src, sid, seq)), dst)
        elif msg[0] == "stale":
            if msg[1] > (y.serving or y.reconciling):
                y = replace(y, serving=0, reconciling=0, pending=())
            yield f"{dst} learns it is deposed", nw.set(dst, y)

    # -- the primary catches members up, shrinks and grows in_sync, starts serving -------------
    for n in NODES:
        x = w.node(n)
        epoch = x.serving or x.reconciling
        if not epoch or not is_current_primary(w, n) or epoch != c.epoch:
            continue
        for m in c.replicas:
            y = w.node(m)
            if m == n or not y.alive or w.chan(n, m):
                continue
            a_sid, a_seq = x.ack_of(m)
            if a_sid == y.sid and a_seq >= x.pos.seq:
                continue
            # The position is asked with a fence at the primary's epoch: once answered, the
            # member takes batches from this primary only, so the answer stays true.
            y = replace(y, accepted=max(y.accepted, epoch))
            w0 = w.set(m, y)
            plan = P.catch_up_plan(x.history, x.pos, x.log_first, y.pos)
            if isinstance(plan, P.UpToDate):
                yield f"{n} finds {m} up to date", try_commit(
                    w0.set(n, x.with_ack(m, y.sid, y.pos.seq)), n)
            elif isinstance(plan, P.Tail):
                nw = w0
                for seq in range(plan.from_seq, x.pos.seq + 1):
                    nw = nw.send(n, m, batch_msg(x, seq))
                yield f"{n} sends {m} the tail from {plan.from_seq}", nw
            else:
                ny = replace(y, data=x.data, history=x.history, accepted=max(y.accepted, epoch))
                nw = w0.set(m, ny).set(n, x.with_ack(m, y.sid, x.pos.seq))
                yield f"{n} installs a snapshot on {m}", try_commit(nw, n)
        for m, sid in c.in_sync:
            a_sid, a_seq = x.ack_of(m)
            if m != n and (a_sid != sid or a_seq < x.pos.seq) and P.can_remove(
                    dict(c.in_sync), c.primary, m, MIN_IN_SYNC):
                nc = replace(c, rev=c.rev + 1, in_sync=tuple(p for p in c.in_sync if p[0] != m))
                yield f"{n} drops {m} from in_sync", try_commit(replace(w, config=nc), n)
        if x.serving:
            for m in c.replicas:
                y = w.node(m)
                a_sid, a_seq = x.ack_of(m)
                if (m != n and y.alive and c.sid_of(m) != y.sid and a_sid == y.sid
                        and a_seq == x.pos.seq):
                    # Paused: nothing is cut between this check and the swap.
                    ins = tuple(sorted([p for p in c.in_sync if p[0] != m] + [(m, y.sid)]))
                    yield f"{n} adds {m} to in_sync", replace(
                        w, config=replace(c, rev=c.rev + 1, in_sync=ins))
            # A planned handover (the leader's switchover to the preferred primary): paused,
            # once every in-sync member holds everything, the primary swaps itself out.
            if w.handovers < b.handovers and not x.pending and all(x.ack_of(m) == (sid, x.pos.seq)
                                     for m, sid in c.in_sync if m != n):
                for m, sid in c.in_sync:
                    y = w.node(m)
                    if m != n and y.alive and y.registered and y.sid == sid:
                        nc = replace(c, rev=c.rev + 1, epoch=c.epoch + 1, primary=m, lease=y.inc)
                        yield f"{n} hands over to {m}", replace(w, config=nc,
                                                                handovers=w.handovers + 1)
        elif x.reconciling and all(
                x.ack_of(m) == (sid, x.pos.seq) for m, sid in c.in_sync if m != n):
            yield f"{n} serves epoch {epoch}", w.set(n, replace(x, serving=epoch, reconciling=0))

    # -- a node takes the primary role the configuration gives it; a deposed one steps down ----
    for n in NODES:
        x = w.node(n)
        if is_current_primary(w, n) and (x.serving or x.reconciling) < c.epoch:
            nx = replace(x, accepted=max(x.accepted, c.epoch), reconciling=c.epoch, serving=0,
                         history=P.promoted_history(x.history, x.pos, c.epoch),
                         pending=(), acks=())
            yield f"{n} reconciles as primary of epoch {c.epoch}", w.set(n, nx)
        elif (x.serving or x.reconciling) and not is_current_primary(w, n):
            yield f"{n} steps down", w.set(n, replace(x, serving=0, reconciling=0, pending=()))

    # -- the placement leader fails the group over --------------------------------------------
    gone = not is_current_primary(w, c.primary)
    f = w.failover
    if f is None and gone:
        f = Failover(rev=c.rev)  # the leader notices the primary is gone and starts
    if f is not None:
        for m, _sid in c.in_sync:
            y = w.node(m)
            # The deposed primary too, if it came back (a new lease): it may be the only copy.
            if not y.alive or not y.registered or m in f.fenced or f.rev != c.rev:
                continue
            if m == c.primary and is_current_primary(w, m):
                continue
            ny = replace(y, accepted=max(y.accepted, c.epoch + 1))
            fenced = replace(f, fenced=f.fenced | {m})
            answered = replace(fenced, answers=tuple(sorted(
                f.answers + ((m, y.sid, y.inc, y.pos.last_epoch, y.pos.seq),))))
            yield f"leader fences {m}", replace(w.set(m, ny), failover=answered)
            yield f"leader fences {m}, answer lost", replace(w.set(m, ny), failover=fenced)
        answers = {m: P.Answer(sid, P.Position(le, s)) for m, sid, _inc, le, s in f.answers}
        choice = P.choose_primary(dict(c.in_sync), answers, c.replicas)
        if choice is not None and f.rev == c.rev:
            best, in_sync = choice
            # The lease of the incarnation that answered: if it has restarted since (maybe with
            # a wiped disk), the configuration does not name its new incarnation.
            lease = next(inc for m, _sid, inc, _le, _s in f.answers if m == best)
            nc = Config(rev=c.rev + 1, epoch=c.epoch + 1, primary=best, lease=lease,
                        in_sync=tuple(sorted(in_sync.items())))
            yield f"leader promotes {best}", replace(w, config=nc, failover=None)
        elif w.failover is not None and (choice is None or f.rev != c.rev) and len(f.fenced) == len(
                [m for m, _ in c.in_sync if w.node(m).alive and w.node(m).registered]):
            yield "leader gives up: nobody to promote", replace(w, failover=None)

    # -- faults -----------------------------------------------------------------------------------
    yield from recoveries(w)
    if w.faults < b.faults:
        for label, nw in faults(w, b):
            yield label, replace(nw, faults=nw.faults + 1)


def faults(w: World, b: Bounds) -> Iterator[tuple[str, World]]:
    if w.failover is not None:
        yield "the placement leader crashes mid-failover", replace(w, failover=None)
    for n in NODES:
        x = w.node(n)
        if x.alive and w.crashes < b.crashes:
            nw = w.set(n, replace(x, alive=False, registered=False, serving=0, reconciling=0,
                                  pending=(), acks=()))
            nw = replace(nw, chans=tuple(ch for ch in nw.chans if n not in ch[:2]),
                         crashes=w.crashes + 1)
            yield f"crash {n}", nw
            if w.wipes < b.wipes:
                wiped = nw.set(n, replace(nw.node(n), data=(), history=(), accepted=0,
                                          sid=x.sid + 10))
                yield f"crash {n} and wipe its disk", replace(wiped, wipes=w.wipes + 1)
        if x.alive and x.registered and w.lease_losses < b.lease_losses:
            yield f"{n} loses its lease", replace(
                w.set(n, replace(x, registered=False, serving=0, reconciling=0, pending=())),
                lease_losses=w.lease_losses + 1)
    if w.drops < b.drops:
        for src, dst, _ in w.chans:
            yield f"stream {src}->{dst} breaks", replace(w.set_chan(src, dst, ()),
                                                         drops=w.drops + 1)


def recoveries(w: World) -> Iterator[tuple[str, World]]:
    """Restarts and re-registrations (a new lease each time)."""
    for n in NODES:
        x = w.node(n)
        if not x.alive:
            yield f"restart {n}", w.set(n, replace(x, alive=True, registered=True, inc=x.inc + 1,
                                                   log_first=len(x.data) + 1))
        if x.alive and not x.registered:
            yield f"{n} registers again", w.set(n, replace(x, registered=True, inc=x.inc + 1))


def check(w: World, path: list[str]) -> None:
    def where() -> str:
        return " -> ".join(path)

    c = w.config
    copies = [w.node(m).data for m, sid in c.in_sync if w.node(m).sid == sid]
    for data in copies:
        values = [v for _, v in data]
        missing = [v for v in w.acked if v not in values]
        assert not missing, f"acked {missing} missing on an in-sync copy: {where()}"
        order = [values.index(v) for v in w.acked]
        assert order == sorted(order), f"acked writes out of order on a copy: {where()}"
    for a, b in itertools.combinations(copies, 2):
        short, long_ = sorted((a, b), key=len)
        assert long_[:len(short)] == short, f"in-sync copies diverge: {where()}"
    for v in w.acked:
        disks = sum(1 for n in w.nodes if any(x == v for _, x in n.data))
        assert disks >= MIN_IN_SYNC - w.wipes, f"acked {v} on {disks} copies: {where()}"
    serving = [n for n in NODES if w.node(n).serving == c.epoch]
    assert len(serving) <= 1, f"two primaries serve epoch {c.epoch}: {where()}"
    for n in serving:
        assert is_current_primary(w, n), f"{n} serves without holding the lease: {where()}"


def explore(bounds: Bounds, limit: int = 5_000_000,
            start: World | None = None) -> dict[World, tuple[World | None, str]]:
    """Breadth-first over every reachable state; stops at the first violation, with its path."""
    start = start or initial()
    parent: dict[World, tuple[World | None, str]] = {start: (None, "")}
    queue = deque([start])
    while queue:
        w = queue.popleft()
        try:
            check(w, [])
        except AssertionError as exc:
            raise AssertionError(f"{exc}{' -> '.join(path_of(parent, w))}") from None
        for label, nxt in successors(w, bounds):
            if nxt not in parent:
                parent[nxt] = (w, label)
                queue.append(nxt)
                if len(parent) > limit:
                    raise RuntimeError(f"more than {limit} states")
    return parent


def path_of(parent: dict, w: World) -> list[str]:
    out = []
    while True:
        prev, label = parent[w]
        if prev is None:
            return out[::-1]
        out.append(label)
        w = prev


def random_walks(bounds: Bounds, walks: int, steps: int, seed: int = 0) -> int:
    """Random runs, deeper than the exhaustive bounds reach; returns the states visited."""
    # (each walk restarts from the initial state; a violation's path is in the message)
    rng = random.Random(seed)
    visited = 0
    for _ in range(walks):
        w, path = initial(), []
        for _ in range(steps):
            nexts = list(successors(w, bounds))
            if not nexts:
                break
            label, w = rng.choice(nexts)
            path.append(label)
            check(w, path)
            visited += 1
    return visited


def served_after_failover(seen) -> bool:  # noqa: ANN001
    return any(w.config.epoch >= 2 and w.acked and any(n.serving == w.config.epoch for n in w.nodes)
               for w in seen)


@pytest.mark.timeout(300)
def test_one_write_any_single_fault_every_interleaving() -> None:
    seen = explore(Bounds(writes=1, faults=1, handovers=0))
    print(f"{len(seen)} states explored")
    assert len(seen) > 50_000  # the model really branches
    assert served_after_failover(seen)
    # A wiped member is caught up again and rejoins in_sync under its new storage id.
    assert any(dict(w.config.in_sync).get(n) == 11 for w in seen for n in NODES)


@pytest.mark.timeout(300)
def test_one_write_any_single_fault_can_always_serve_again() -> None:
    """Liveness: from every reachable state, some run reaches a primary serving with enough
    in-sync copies to take writes (no configuration the protocol cannot leave)."""
    bounds = Bounds(writes=1, faults=1, handovers=0)
    parent = explore(bounds)
    preds: dict[World, list[World]] = {w: [] for w in parent}
    for w in parent:
        for _, nxt in successors(w, bounds):
            preds[nxt].append(w)
    good = [w for w in parent if len(w.config.in_sync) >= MIN_IN_SYNC and any(
        n.serving == w.config.epoch for n in w.nodes)]
    ok = set(good)
    stack = list(good)
    while stack:
        for p in preds[stack.pop()]:
            if p not in ok:
                ok.add(p)
                stack.append(p)
    stuck = [w for w in parent if w not in ok]
    assert not stuck, f"{len(stuck)} states never serve again, e.g. {path_of(parent, stuck[0])}"


@pytest.mark.timeout(300)
def test_handovers_with_writes_and_a_crash_every_interleaving() -> None:
    for bounds in (Bounds(writes=2, faults=0, handovers=1),
                   Bounds(writes=1, faults=1, handovers=1, crashes=1, lease_losses=0, wipes=0,
                          drops=0)):
        seen = explore(bounds)
        print(f"{bounds}: {len(seen)} states explored")
        assert any(w.handovers and w.acked and any(n.serving == w.config.epoch for n in w.nodes)
                   for w in seen)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_writes_any_single_fault_every_interleaving() -> None:
    seen = explore(Bounds(writes=2, faults=1, handovers=0))
    print(f"{len(seen)} states explored")
    assert len(seen) > 500_000
    assert served_after_failover(seen)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_write_any_single_fault_with_a_handover_every_interleaving() -> None:
    seen = explore(Bounds(writes=1, faults=1, handovers=1))
    print(f"{len(seen)} states explored")
    assert len(seen) > 1_000_000


@pytest.mark.timeout(300)
def test_deep_random_runs_with_many_faults() -> None:
    visited = random_walks(Bounds(writes=6, faults=4, handovers=2, crashes=3, lease_losses=2,
                                  wipes=1, drops=3),
                           walks=1500, steps=120, seed=1)
    print(f"{visited} states visited")
    assert visited > 50_000  # runs end when everything has settled


# -- the checker finds the bugs the protocol's rules prevent ------------------------------------
def _finds(monkeypatch, name, fake, match: str, bounds: Bounds, start: World | None = None):  # noqa: ANN001
    bounds = Bounds(**{**bounds.__dict__, "handovers": 0})
    monkeypatch.setattr(P, name, fake)
    with pytest.raises(AssertionError, match=match):
        explore(bounds, start=start)


def diverged_candidate() -> World:
    """A crashed after sending v1 to C only; C's answer to the fence was lost, so B (empty) was
    promoted with in_sync = {B}, and C still holds v1 of epoch 1, which B never had."""
    a = Node(alive=False, registered=False, data=((1, "v1"),), accepted=1, history=((1, 1),))
    b = Node(accepted=2, history=((2, 1),), reconciling=2)
    c = Node(data=((1, "v1"),), accepted=2, history=((1, 1),))
    cfg = Config(rev=3, epoch=2, primary="B", lease=1, in_sync=(("B", 1),))
    return World((a, b, c), cfg, writes=1, faults=1)


def test_appending_after_a_batch_of_another_epoch_diverges(monkeypatch) -> None:  # noqa: ANN001
    real = P.follower_verdict

    def no_log_matching(accepted, pos, history, sender, epoch, seq, prev):  # noqa: ANN001, ANN202
        return real(accepted, pos, history, sender, epoch, seq, P.epoch_of(history, pos.seq) or 0)

    explore(Bounds(writes=3, faults=1, handovers=0), start=diverged_candidate())  # real: fine
    _finds(monkeypatch, "follower_verdict", no_log_matching, "diverge",
           Bounds(writes=3, faults=1), diverged_candidate())


def test_taking_a_replica_of_the_same_length_for_a_copy_diverges(monkeypatch) -> None:  # noqa: ANN001
    """A wrote v1 and crashed; only C got it, and C's answer to the fence was lost, so B (empty)
    was promoted. A came back, was caught up (empty) and rejoined; B wrote v2 as its first
    batch, on its way to A. C holds v1 at the same seq: equal lengths, different contents."""
    a = Node(inc=2, accepted=2, history=((2, 1),))
    b = Node(data=((2, "v2"),), accepted=2, history=((2, 1),), serving=2,
             pending=((1, "v2", frozenset("A")),), acks=(("A", 1, 0),))
    c = Node(data=((1, "v1"),), accepted=2, history=((1, 1),))
    cfg = Config(rev=4, epoch=2, primary="B", lease=1, in_sync=(("A", 1), ("B", 1)))
    start = World((a, b, c), cfg, chans=(("B", "A", (("batch", 2, 2, 1, "v2", 0),)),),
                  writes=2, faults=1)
    real = P.catch_up_plan

    def by_length(history, pos, log_first, peer):  # noqa: ANN001, ANN202
        if peer.seq == pos.seq:
            return P.UpToDate()
        return real(history, pos, log_first, peer)

    explore(Bounds(writes=3, faults=1, handovers=0), start=start)  # fine with the real plan
    _finds(monkeypatch, "catch_up_plan", by_length, "diverge", Bounds(writes=3, faults=1), start)


def test_trusting_a_wiped_copy_loses_acknowledged_writes(monkeypatch) -> None:  # noqa: ANN001
    def any_storage(in_sync, answers, preference):  # noqa: ANN001, ANN202
        if not answers:
            return None
        best = max(answers, key=lambda n: (answers[n].pos, n))
        return best, {n: a.storage_id for n, a in answers.items()}

    _finds(monkeypatch, "choose_primary", any_storage, "missing|copies",
           Bounds(writes=1, faults=2, crashes=2, lease_losses=0, wipes=1, drops=0))


def test_a_deposed_primary_that_is_not_refused_diverges_the_copies(monkeypatch) -> None:  # noqa: ANN001
    real = P.follower_verdict

    def no_fencing(accepted, pos, history, sender, epoch, seq, prev):  # noqa: ANN001, ANN202
        return real(0, pos, history, sender, epoch, seq, prev)

    _finds(monkeypatch, "follower_verdict", no_fencing, "missing|diverge|copies",
           Bounds(writes=2, faults=1, crashes=0, lease_losses=1, wipes=0, drops=0))


def test_dropping_a_member_below_the_floor_acknowledges_single_copies(monkeypatch) -> None:  # noqa: ANN001
    _finds(monkeypatch, "can_remove",
           lambda in_sync, primary, member, floor: member != primary and member in in_sync,
           "copies", Bounds(writes=1, faults=0))
