"""Free riders against the fair queue: per-class share, waits and Jain's index, next to FIFO.

    python benchmarks/freeriders.py [--seconds 900] [--postgres URL] [--seed 1]

A synthetic community in simulated time (no engine; a 512x512, 20-step job is one compute
unit and takes one second on a worker): one registered user flooding thousands of jobs, a
user with eight keys behind one address, thirty light anonymous visitors, ten light
registered users (with two bursts), and a contributor who submits often and runs a second
worker. The "fair" column drives the real code: Admission.check (limits, caps), JobStore
(virtual-counter claim) and the Ledger (the contributor's worker earns, completions spend)
on a real SQLite file (and PostgreSQL with --postgres, a maintenance database URL). "FIFO"
replays the same arrivals through one plain first-come queue with no admission. Clients
that are refused wait the Retry-After they were given before trying again.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/queue.py shadows the standard library's `queue` (which psycopg imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import heapq  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from collections import defaultdict, deque  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from kakumei.config import Settings  # noqa: E402
from kakumei.fairness.cost import request_cost  # noqa: E402
from kakumei.fairness.credits import MeritPolicy, merit_weight  # noqa: E402
from kakumei.fairness.shares import jain_index  # noqa: E402
from kakumei.schemas import GenerationRequest  # noqa: E402
from kakumei.server.admission import Admission, merit_policy  # noqa: E402
from kakumei.store.db import Database  # noqa: E402
from kakumei.store.images import ImageStore  # noqa: E402
from kakumei.store.jobs import JobStore, NewJob  # noqa: E402
from kakumei.store.ledger import EARN_WORK, Ledger  # noqa: E402
from kakumei.store.migrate import migrate  # noqa: E402
from kakumei.store.moderation import Moderation  # noqa: E402
from kakumei.store.users import UserStore  # noqa: E402

JOB = GenerationRequest(prompt="a red fox", width=512, height=512, steps=20)
COST = request_cost(JOB, "m")  # 1 unit
STEP = 0.25  # simulated seconds per tick
CLASSES = ("flooder", "sybil x8", "anonymous", "light", "contributor")


@dataclass(order=True)
class Arrival:
    at: float
    client: str = field(compare=False)


@dataclass
class Client:
    name: str
    cls: str
    addr: str
    interval: float  # mean seconds between attempts
    burst_at: tuple[float, ...] = ()
    user_id: int = 0
    user: object = None


def community(rng: random.Random) -> list[Client]:
    clients = [Client("flooder", "flooder", "198.51.100.1", 0.2)]
    clients += [Client(f"sybil{i}", "sybil x8", "203.0.113.9", 2.0) for i in range(8)]
    clients += [Client(f"anon{i}", "anonymous", f"10.1.0.{i}", 90.0) for i in range(30)]
    clients += [Client(f"light{i}", "light", f"10.2.0.{i}", 45.0, (300.0, 600.0)) for i in range(10)]
    clients += [Client("contributor", "contributor", "10.3.0.1", 4.0)]
    return clients


def arrivals(clients: list[Client], seconds: float, rng: random.Random) -> list[Arrival]:
    """Each client's attempt times (Poisson), bursts of five at the burst times."""
    out = []
    for c in clients:
        t = rng.expovariate(1.0 / c.interval)
        while t < seconds:
            out.append(Arrival(t, c.name))
            t += rng.expovariate(1.0 / c.interval)
        for b in c.burst_at:
            out += [Arrival(b + 0.01 * k, c.name) for k in range(5)]
    return sorted(out)


@dataclass
class Record:
    cls: str
    user: str
    submitted: float
    started: float | None = None


def summarize(records: list[Record], refused: dict[str, int], seconds: float, backlog_jain: float) -> dict:
    served = defaultdict(float)
    waits = defaultdict(list)
    submitted = defaultdict(int)
    for r in records:
        submitted[r.cls] += 1
        if r.started is not None:
            served[r.cls] += COST
            waits[r.cls].append(r.started - r.submitted)
        else:
            waits[r.cls].append(seconds - r.submitted)  # still waiting at the end: at least this
    total = sum(served.values()) or 1.0
    rows = {}
    for cls in CLASSES:
        w = sorted(waits[cls])
        rows[cls] = {
            "share": served[cls] / total,
            "p50": statistics.median(w) if w else 0.0,
            "p95": w[int(0.95 * (len(w) - 1))] if w else 0.0,
            "accepted": submitted[cls],
            "refused": refused.get(cls, 0),
        }
    return {"rows": rows, "jain": backlog_jain}


class Jain:
    """Jain's index of weight-normalized service among users backlogged for a whole window."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.start = 0.0
        self.always: set[str] | None = None
        self.got: dict[str, float] = defaultdict(float)
        self.values: list[float] = []

    def tick(self, now: float, backlogged: set[str]) -> None:
        self.always = set(backlogged) if self.always is None else self.always & backlogged
        if now - self.start >= self.window:
            if self.always and len(self.always) > 1:
                self.values.append(jain_index([self.got[u] for u in self.always]))
            self.start, self.always, self.got = now, None, defaultdict(float)

    def served(self, user: str, units: float, weight: float) -> None:
        self.got[user] += units / weight

    def mean(self) -> float:
        return statistics.mean(self.values) if self.values else 1.0


def run_fifo(clients: list[Client], plan: list[Arrival], seconds: float, weights: dict[str, float]) -> dict:
    by_name = {c.name: c for c in clients}
    queue: deque[Record] = deque()
    records: list[Record] = []
    busy = [0.0, 0.0]
    jain = Jain(60.0)
    i, now = 0, 0.0
    while now < seconds:
        while i < len(plan) and plan[i].at <= now:
            c = by_name[plan[i].client]
            user = "anonymous" if c.cls == "anonymous" else c.name
            rec = Record(c.cls, user, plan[i].at)
            queue.append(rec)
            records.append(rec)
            i += 1
        for w in range(2):
            if busy[w] <= now and queue:
                rec = queue.popleft()
                rec.started = now
                busy[w] = now + COST
                jain.served(rec.user, COST, weights[rec.user])
        jain.tick(now, {r.user for r in queue})
        now += STEP
    return summarize(records, {}, seconds, jain.mean())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_fair(clients: list[Client], plan: list[Arrival], seconds: float, url: str, folder: Path) -> dict:
    clock = Clock()
    db = Database(url)
    migrate(db)
    settings = Settings(home=folder / "home")
    ledger = Ledger(db, merit_policy(settings), clock=clock)
    jobs = JobStore(db, ImageStore(db, folder / "images"), lease_seconds=1e9, clock=clock, ledger=ledger)
    users = UserStore(db)
    admission = Admission(settings, db, jobs, Moderation(db, clock=clock), clock=clock)
    anonymous = users.anonymous()
    for c in clients:
        c.user_id = anonymous.id if c.cls == "anonymous" else users.add(c.name)[0].id
    by_name = {c.name: c for c in clients}
    cls_of_user = {c.user_id: ("anonymous" if c.cls == "anonymous" else c.name) for c in clients}
    contributor = by_name["contributor"].user_id
    records: dict[str, Record] = {}
    refused: dict[str, int] = defaultdict(int)
    retry_at: dict[str, float] = {}
    running: list[tuple[float, int, str, str]] = []  # (ends, worker, job id, lease id)
    jain = Jain(60.0)
    heap = list(plan)
    heapq.heapify(heap)
    while clock.now < seconds:
        now = clock.now
        # 1. completions: the contributor's worker (1) earns for its owner
        while running and running[0][0] <= now:
            _, worker, job_id, lease_id = heapq.heappop(running)
            jobs.complete(job_id, lease_id, [])
            if worker == 1:
                ledger.add(contributor, COST, EARN_WORK, job_id=job_id, worker_id="contributor-gpu")
        # 2. arrivals through admission; refused clients come back after Retry-After
        while heap and heap[0].at <= now:
            a = heapq.heappop(heap)
            c = by_name[a.client]
            if retry_at.get(c.name, 0.0) > now:
                continue  # a well-behaved client waits out its Retry-After
            user = users.get(c.user_id)
            refusal = admission.check(user, c.addr, JOB)
            if refusal is not None:
                refused[c.cls] += 1
                retry_at[c.name] = now + (refusal.retry_after or 30.0)
                continue
            job, _ = jobs.submit(NewJob(c.user_id, JOB, "m", COST, client_addr=c.addr))
            records[job.id] = Record(c.cls, cls_of_user[c.user_id], a.at)
        # 3. idle workers claim the fair next job
        busy = {w for _, w, _, _ in running}
        for worker in (0, 1):
            if worker in busy:
                continue
            lease = jobs.claim(f"w{worker}")
            if lease is None:
                break
            rec = records[lease.job.id]
            rec.started = now
            weight = users.get(lease.job.user_id).weight
            jain.served(rec.user, COST, weight)
            heapq.heappush(running, (now + COST, worker, lease.job.id, lease.lease_id))
        with db.transaction(write=False) as tx:
            waiting = tx.all("SELECT id FROM users WHERE queued_jobs > 0")
        jain.tick(now, {cls_of_user.get(int(r["id"]), str(r["id"])) for r in waiting})
        clock.now += STEP
    weight = users.get(contributor).weight
    db.close()
    out = summarize(list(records.values()), refused, seconds, jain.mean())
    out["contributor_weight"] = weight
    return out


def table(title: str, fair: dict, fifo: dict) -> str:
    lines = [f"{title}",
             f"{'class':<12} | {'share fair':>10} {'FIFO':>6} | {'p50 wait fair':>13} {'FIFO':>7} | "
             f"{'p95 wait fair':>13} {'FIFO':>7} | {'accepted':>8} {'refused':>7}"]
    for cls in CLASSES:
        a, b = fair["rows"][cls], fifo["rows"][cls]
        lines.append(
            f"{cls:<12} | {a['share']:>10.1%} {b['share']:>6.1%} | {a['p50']:>12.1f}s {b['p50']:>6.1f}s | "
            f"{a['p95']:>12.1f}s {b['p95']:>6.1f}s | {a['accepted']:>8} {a['refused']:>7}"
        )
    lines.append(f"Jain's index among backlogged users (per 60 s window, service/weight): "
                 f"fair {fair['jain']:.3f}, FIFO {fifo['jain']:.3f}; contributor's weight at the end "
                 f"{fair['contributor_weight']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=900.0, help="simulated seconds (default 900)")
    parser.add_argument("--postgres", metavar="URL", help="also run on PostgreSQL (a maintenance database URL)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    clients = community(rng)
    plan = arrivals(clients, args.seconds, rng)
    policy = MeritPolicy()
    weights = {c.name: merit_weight(policy, is_anonymous=False, balance=0) for c in clients}
    weights["anonymous"] = policy.anonymous_weight
    fifo = run_fifo(clients, plan, args.seconds, weights)
    print(f"{len(plan)} submit attempts over {args.seconds:.0f} simulated seconds, 2 workers "
          f"(one of them the contributor's), 1 unit = 1 s\n")
    with tempfile.TemporaryDirectory() as tmp:
        fair = run_fair(clients, plan, args.seconds, f"sqlite:///{Path(tmp) / 'bench.db'}", Path(tmp))
    print(table("SQLite", fair, fifo))
    if args.postgres:
        import psycopg

        name = f"kakumei_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
            url = f"postgresql://{admin.info.user}@{admin.info.host}:{admin.info.port}/{name}"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                fair = run_fair(community(random.Random(args.seed)), plan, args.seconds, url, Path(tmp))
            print()
            print(table("PostgreSQL", fair, fifo))
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
