"""Free riders against the fair queue, counted in people: shares, waits and Jain's index under
the new rules (network groups), today's rules (one group per person) and FIFO, in one run.

    python benchmarks/freeriders.py [--seconds 900] [--postgres URL] [--seed 1]

A synthetic community in simulated time (no engine; a 512x512, 20-step job is one compute
unit and takes one second on a worker, so one job-time is one second). Each human is a
person: all accounts of one human count as one. The community:

- a flooder: one account sending five attempts a second;
- a person with 8 accounts, and a person with 50, each on distinct addresses inside one /24;
- a keyless visitor who takes a new address inside one /24 for every attempt;
- 30 light guests, 30 light keyless visitors and 10 light registered users (who also burst
  five jobs at once, each at their own times), every one on a network of their own;
- a contributor who submits often and runs the second worker, earning merit.

The "new" and "today" columns drive the real code: Admission.check (limits, caps), JobStore
(virtual-counter claim) and the Ledger (the contributor's worker earns, completions spend) on
a real SQLite file (and PostgreSQL with --postgres, a maintenance database URL), with
`network_groups` on and off. "FIFO" replays the same arrivals through one plain first-come
queue with no admission. Clients that are refused wait the Retry-After they were given before
trying again. Keyless callers submit as the keyless person of their address, as server/deps.py
resolves them; guests are made as the accounts store makes them where it can.

Targets, checked under the new rules (exit status 1 when one is missed): the 50-account
person gets at most 1.2x the flooder's share; light guests' and light registered users' p95
waits are within 3 job-times; every job of the contributor is served; Jain's index among
backlogged people (service / weight over 60 s windows) is at least 0.95.
"""

from __future__ import annotations

import sys
from pathlib import Path

# No file in this folder may shadow a standard-library module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import heapq  # noqa: E402
import importlib.util  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from collections import defaultdict, deque  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from kakumei.config import Settings  # noqa: E402
from kakumei.fairness.cost import request_cost  # noqa: E402
from kakumei.fairness.shares import jain_index  # noqa: E402
from kakumei.schemas import GenerationRequest  # noqa: E402
from kakumei.server.admission import Admission, merit_policy  # noqa: E402
from kakumei.store.db import Database  # noqa: E402
from kakumei.store.images import ImageStore  # noqa: E402
from kakumei.store.jobs import JobStore, NewJob  # noqa: E402
from kakumei.store.ledger import EARN_WORK, Ledger  # noqa: E402
from kakumei.store.migrate import migrate  # noqa: E402
from kakumei.store.moderation import Moderation  # noqa: E402
from kakumei.store.quotas import QueueFull  # noqa: E402
from kakumei.store.users import UserStore  # noqa: E402

JOB = GenerationRequest(prompt="a red fox", width=512, height=512, steps=20)
COST = request_cost(JOB, "m")  # 1 unit = 1 job-time
STEP = 0.25  # simulated seconds per tick
WINDOW = 60.0  # Jain's index window

# What this checkout's code can do: network groups in the queue (NewJob.group, with the
# admission naming the group) and keyless callers as one person per address.
HAS_GROUPS = "group" in {f.name for f in dataclasses.fields(NewJob)} and hasattr(Admission, "group_key")
HAS_KEYLESS_PEOPLE = hasattr(UserStore, "keyless_person")
HAS_GUESTS = importlib.util.find_spec("kakumei.store.accounts") is not None
RULES = ("new", "today", "FIFO")

CLASSES = ("flooder", "8 accounts", "50 accounts", "rotating keyless", "light guest", "light keyless",
           "light user", "contributor")
LIGHT = ("light guest", "light keyless", "light user")


@dataclass
class Client:
    """One account (or keyless caller) of one person."""

    name: str
    person: str
    cls: str
    kind: str  # "user", "guest" or "keyless"
    interval: float  # mean seconds between attempts
    addr: str = ""
    rotate_in: str = ""  # a /24 prefix such as "100.64.9": a new address in it every attempt
    burst_at: tuple[float, ...] = ()
    attempts: int = 0

    def address(self) -> str:
        if not self.rotate_in:
            return self.addr
        self.attempts += 1
        return f"{self.rotate_in}.{(self.attempts - 1) % 254 + 1}"


def community(rng: random.Random) -> list[Client]:
    clients = [Client("flooder", "flooder", "flooder", "user", 0.2, "198.51.100.1")]
    clients += [Client(f"eight{i}", "8 accounts", "8 accounts", "user", 2.0, f"203.0.113.{i + 1}") for i in range(8)]
    clients += [Client(f"fifty{i}", "50 accounts", "50 accounts", "user", 4.0, f"192.0.2.{i + 1}") for i in range(50)]
    clients += [Client("rotator", "rotating keyless", "rotating keyless", "keyless", 0.5, rotate_in="100.64.9")]
    clients += [Client(f"guest{i}", f"guest{i}", "light guest", "guest", 90.0, f"10.4.{i}.7") for i in range(30)]
    clients += [Client(f"anon{i}", f"anon{i}", "light keyless", "keyless", 90.0, f"10.1.{i}.7") for i in range(30)]
    # Bursts of five, each user at their own two moments: people do not coordinate.
    clients += [Client(f"light{i}", f"light{i}", "light user", "user", 45.0, f"10.2.{i}.7",
                       (150.0 + 60.0 * i + rng.uniform(0, 30), 450.0 + 40.0 * i + rng.uniform(0, 30)))
                for i in range(10)]
    clients += [Client("contributor", "contributor", "contributor", "user", 4.0, "10.3.0.1")]
    return clients


@dataclass(order=True)
class Arrival:
    at: float
    client: str = field(compare=False)


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
    person: str
    submitted: float
    started: float | None = None


class People:
    """Per-person bookkeeping the same for every rule: queued jobs (who is backlogged) and
    Jain's index of weight-normalized service among people backlogged for a whole window."""

    def __init__(self, weight: Callable[[str], float]) -> None:
        self.weight = weight
        self.queued: dict[str, int] = defaultdict(int)
        self.start = 0.0
        self.always: set[str] | None = None
        self.got: dict[str, float] = defaultdict(float)
        self.values: list[float] = []

    def queue(self, person: str) -> None:
        self.queued[person] += 1

    def served(self, person: str, units: float) -> None:
        self.queued[person] -= 1
        self.got[person] += units / self.weight(person)

    def tick(self, now: float) -> None:
        backlogged = {p for p, n in self.queued.items() if n > 0}
        self.always = backlogged if self.always is None else self.always & backlogged
        if now - self.start >= WINDOW:
            if self.always and len(self.always) > 1:
                self.values.append(jain_index([self.got[p] for p in self.always]))
            self.start, self.always, self.got = now, None, defaultdict(float)

    def jain(self) -> float:
        # nan when no window had two people backlogged throughout (a run too short to tell)
        return statistics.mean(self.values) if self.values else float("nan")


def _p(sorted_waits: list[float], q: float) -> float:
    return sorted_waits[int(q * (len(sorted_waits) - 1))] if sorted_waits else 0.0


def summarize(records: list[Record], refused: dict[str, int], seconds: float, jain: float) -> dict[str, Any]:
    """Share, waits and counts per class and per person. Besides the wait from submit to
    start, "head" waits count from when the job became its person's next one (its submit, or
    the start of the person's previous job if later): the wait other people cause, without the
    wait behind one's own earlier jobs (a burst of five waits for its own first four)."""
    head_since: dict[int, float] = {}
    by_person: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_person[r.person].append(r)
    for mine in by_person.values():
        previous_start = 0.0
        for r in sorted(mine, key=lambda r: (r.started is None, r.started or 0.0, r.submitted)):
            head_since[id(r)] = max(r.submitted, previous_start)
            if r.started is not None:
                previous_start = r.started
    served: dict[str, float] = defaultdict(float)
    waits: dict[str, list[float]] = defaultdict(list)
    heads: dict[str, list[float]] = defaultdict(list)
    accepted: dict[str, int] = defaultdict(int)
    unserved: dict[str, int] = defaultdict(int)
    late: dict[str, int] = defaultdict(int)  # unserved though submitted 3 job-times before the end
    for r in records:
        end = r.started if r.started is not None else seconds  # still waiting at the end: at least this
        for key in {r.cls, r.person}:  # a class of one person is named as the person
            accepted[key] += 1
            waits[key].append(end - r.submitted)
            heads[key].append(end - head_since[id(r)])
            if r.started is not None:
                served[key] += COST
            else:
                unserved[key] += 1
                late[key] += r.submitted < seconds - 3 * COST
    total = sum(served[c] for c in CLASSES) or 1.0
    rows = {}
    for key in {*CLASSES, *(r.person for r in records)}:
        w, h = sorted(waits[key]), sorted(heads[key])
        rows[key] = {"share": served[key] / total, "p50": _p(w, 0.5), "p95": _p(w, 0.95), "head_p95": _p(h, 0.95),
                     "accepted": accepted[key], "refused": refused.get(key, 0), "unserved": unserved[key],
                     "late": late[key]}
    return {"rows": rows, "jain": jain}


def run_fifo(clients: list[Client], plan: list[Arrival], seconds: float) -> dict[str, Any]:
    by_name = {c.name: c for c in clients}
    queue: deque[Record] = deque()
    records: list[Record] = []
    busy = [0.0, 0.0]
    # The weights the rules mean people to have: FIFO has none, its index uses the same.
    people = People(lambda person: 1.0)
    i, now = 0, 0.0
    while now < seconds:
        while i < len(plan) and plan[i].at <= now:
            c = by_name[plan[i].client]
            rec = Record(c.cls, c.person, plan[i].at)
            queue.append(rec)
            records.append(rec)
            people.queue(c.person)
            i += 1
        for w in range(2):
            if busy[w] <= now and queue:
                rec = queue.popleft()
                rec.started = now
                busy[w] = now + COST
                people.served(rec.person, COST)
        people.tick(now)
        now += STEP
    return summarize(records, {}, seconds, people.jain())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _guests(db: Database, clock: Clock) -> Callable[[str, str], int] | None:
    """Make a guest as the accounts store does (kind 'guest'), where this checkout has it."""
    if not HAS_GUESTS:
        return None
    from kakumei.fairness.groups import network_of
    from kakumei.store.accounts import AccountStore

    accounts = AccountStore(db, clock=clock)

    def make(name: str, addr: str) -> int:
        user, _ = accounts.add_guest(network_of(addr) or addr, per_hour=1_000_000)
        return user.id

    return make


class FairRun:
    """One run of the real admission, queue and ledger under one setting of network_groups."""

    def __init__(self, url: str, folder: Path, network_groups: bool) -> None:
        self.clock = Clock()
        self.db = Database(url)
        migrate(self.db)
        self.settings = Settings(home=folder / "home", network_groups=network_groups)
        self.ledger = Ledger(self.db, merit_policy(self.settings), clock=self.clock)
        self.jobs = JobStore(self.db, ImageStore(self.db, folder / "images"), lease_seconds=1e9, clock=self.clock,
                             ledger=self.ledger)
        self.users = UserStore(self.db)
        self.admission = Admission(self.settings, self.db, self.jobs, Moderation(self.db, clock=self.clock),
                                   clock=self.clock)
        self.shared_anonymous = self.users.anonymous()
        self.person_of_user: dict[int, str] = {}
        self.guest = _guests(self.db, self.clock)

    def sign_up(self, c: Client) -> int | None:
        if c.kind == "keyless":
            return None
        if c.kind == "guest" and self.guest is not None:
            return self.guest(c.name, c.addr)
        return self.users.add(c.name)[0].id

    def caller(self, c: Client, user_id: int | None, addr: str) -> Any:
        """The user a request runs as: the account, or for a keyless caller the keyless person
        of its address (the shared anonymous user where this checkout has no such persons)."""
        if user_id is not None:
            return self.users.get(user_id)
        if HAS_KEYLESS_PEOPLE:
            return self.users.keyless_person(addr, self.settings.anonymous_weight)
        return self.shared_anonymous

    def submit(self, user: Any, addr: str) -> tuple[str | None, Any]:
        """As server/submission.py: admission, then the queue caps again in the transaction
        that queues the job. Returns (job id, None) or (None, refusal)."""
        refusal = self.admission.check(user, addr, JOB)
        if refusal is not None:
            return None, refusal
        extra = {"group": self.admission.group_key(user, addr)} if HAS_GROUPS else {}
        new = NewJob(user.id, JOB, "m", COST, client_addr=addr, **extra)
        try:
            job, _ = self.jobs.submit(new, self.admission.queue_limits(user, addr))
        except QueueFull as full:
            return None, self.admission.when_full(user, addr, full)
        return job.id, None

    def weight(self, user_id: int) -> float:
        return self.users.get(user_id).weight


def run_fair(clients: list[Client], plan: list[Arrival], seconds: float, url: str, folder: Path,
             network_groups: bool) -> dict[str, Any]:
    sim = FairRun(url, folder, network_groups)
    clock = sim.clock
    user_ids = {c.name: sim.sign_up(c) for c in clients}
    by_name = {c.name: c for c in clients}
    contributor = user_ids["contributor"]
    assert contributor is not None
    weights: dict[str, float] = defaultdict(lambda: 1.0)
    # A person's weight for the index: what the rules mean one person (or one network group)
    # to weigh, 1; the contributor's grows with its merit.
    people = People(lambda person: weights[person])
    records: dict[str, Record] = {}
    refused: dict[str, int] = defaultdict(int)
    retry_at: dict[str, float] = {}
    running: list[tuple[float, int, str, str]] = []  # (ends, worker, job id, lease id)
    heap = list(plan)
    heapq.heapify(heap)
    while clock.now < seconds:
        now = clock.now
        # 1. completions: the contributor's worker (1) earns for its owner
        while running and running[0][0] <= now:
            _, worker, job_id, lease_id = heapq.heappop(running)
            sim.jobs.complete(job_id, lease_id, [])
            if worker == 1:
                sim.ledger.add(contributor, COST, EARN_WORK, job_id=job_id, worker_id="contributor-gpu")
        # 2. arrivals through admission; refused clients come back after Retry-After
        while heap and heap[0].at <= now:
            a = heapq.heappop(heap)
            c = by_name[a.client]
            if retry_at.get(c.name, 0.0) > now:
                continue  # a well-behaved client waits out its Retry-After
            addr = c.address()
            job_id, refusal = sim.submit(sim.caller(c, user_ids[c.name], addr), addr)
            if refusal is not None:
                for key in {c.cls, c.person}:
                    refused[key] += 1
                retry_at[c.name] = now + (refusal.retry_after or 30.0)
                continue
            records[job_id] = Record(c.cls, c.person, a.at)
            people.queue(c.person)
        # 3. idle workers claim the fair next job
        busy = {w for _, w, _, _ in running}
        for worker in (0, 1):
            if worker in busy:
                continue
            lease = sim.jobs.claim(f"w{worker}")
            if lease is None:
                break
            rec = records[lease.job.id]
            rec.started = now
            if rec.person == "contributor":
                weights["contributor"] = sim.weight(contributor)
            people.served(rec.person, COST)
            heapq.heappush(running, (now + COST, worker, lease.job.id, lease.lease_id))
        people.tick(now)
        clock.now += STEP
    weight = sim.weight(contributor)
    sim.db.close()
    out = summarize(list(records.values()), refused, seconds, people.jain())
    out["contributor_weight"] = weight
    return out


def run_all(clients_for: Callable[[], list[Client]], plan: list[Arrival], seconds: float, url_for: Callable[[str], str],
            fifo: dict[str, Any]) -> dict[str, dict[str, Any]]:
    results = {}
    for rule, groups in (("new", True), ("today", False)):
        with tempfile.TemporaryDirectory() as tmp:
            results[rule] = run_fair(clients_for(), plan, seconds, url_for(tmp), Path(tmp), groups)
    results["FIFO"] = fifo
    return results


def _row(label: str, rows: list[dict[str, Any]]) -> str:
    share = " ".join(f"{r['share']:>6.1%}" for r in rows)
    p50 = " ".join(f"{r['p50']:>6.1f}" for r in rows)
    p95 = " ".join(f"{r['p95']:>6.1f}" for r in rows)
    head = " ".join(f"{r['head_p95']:>6.1f}" for r in rows)
    taken = " ".join(f"{r['accepted']:>5}/{r['refused']:<5}" for r in rows[:2])
    return f"{label:<32}| {share} | {p50} | {p95} | {head} | {taken}"


def table(title: str, results: dict[str, dict[str, Any]], clients: list[Client]) -> str:
    cols = " ".join(f"{r:>6}" for r in RULES)
    lines = [title,
             f"{'':<32}| {'share of all work':^20} | {'p50 wait (s)':^20} | {'p95 wait (s)':^20} | "
             f"{'p95 behind others (s)':^20} | {'accepted/refused':^23}",
             f"{'':<32}| {cols} | {cols} | {cols} | {cols} | {'new':>11} {'today':>11}"]
    lines.append("per class (today: network_groups off, every person a group of their own)")
    for cls in CLASSES:
        lines.append(_row(cls, [results[r]["rows"][cls] for r in RULES]))
    members: dict[str, list[str]] = defaultdict(list)
    for c in clients:
        if c.person not in members[c.cls]:
            members[c.cls].append(c.person)
    alone = [cls for cls in CLASSES if len(members[cls]) == 1]
    lines.append(f"per person ({', '.join(alone)}: one person each, as above; of the others, the one with the "
                 "largest p95 under the new rules)")
    empty = {"share": 0.0, "p50": 0.0, "p95": 0.0, "head_p95": 0.0, "accepted": 0, "refused": 0}
    for cls in CLASSES:
        persons = members[cls]
        if len(persons) > 1:
            worst = max(persons, key=lambda p: results["new"]["rows"].get(p, empty)["p95"])
            lines.append(_row(f"{worst} ({cls}, 1 of {len(persons)})",
                              [results[r]["rows"].get(worst, empty) for r in RULES]))
    jain = ", ".join(f"{r} {results[r]['jain']:.3f}" for r in RULES)
    lines.append(f"Jain's index among backlogged people (per {WINDOW:.0f} s window, service / weight): {jain}")
    lines.append(f"contributor's weight at the end: new {results['new']['contributor_weight']:.2f}, "
                 f"today {results['today']['contributor_weight']:.2f}")
    return "\n".join(lines)


def targets(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, met, what was measured) under one rule. Waits are head waits (see summarize):
    the wait other people cause; the plain p95 is printed beside them."""
    rows = result["rows"]
    fifty, flooder = rows["50 accounts"]["share"], rows["flooder"]["share"]
    guest, user = rows["light guest"], rows["light user"]
    c = rows["contributor"]
    return [
        ("50-account person <= 1.2x the flooder's share", fifty <= 1.2 * flooder,
         f"{fifty:.1%} vs {flooder:.1%} ({fifty / flooder if flooder else float('inf'):.2f}x)"),
        ("light guests' and light users' p95 wait behind others <= 3 job-times",
         max(guest["head_p95"], user["head_p95"]) <= 3 * COST,
         f"guests {guest['head_p95']:.1f} s, users {user['head_p95']:.1f} s "
         f"(from submit: {guest['p95']:.1f} s, {user['p95']:.1f} s)"),
        ("contributor served fully", c["refused"] == 0 and c["late"] == 0,
         f"{c['accepted'] - c['unserved']} of {c['accepted']} started, {c['refused']} refused"
         + (f", {c['unserved']} submitted in the last 3 s" if c["unserved"] and not c["late"] else "")),
        ("Jain's index among backlogged people >= 0.95", result["jain"] >= 0.95, f"{result['jain']:.3f}"),
    ]


def report_targets(results: dict[str, dict[str, Any]]) -> bool:
    """Print each target under the new and today's rules; True when the new rules meet all."""
    print("targets (new rules; today's in brackets)")
    ok = True
    for (name, met, got), (_, met_today, got_today) in zip(targets(results["new"]), targets(results["today"])):
        ok &= met
        print(f"  {'met ' if met else 'MISS'} {name}: {got}  [today: {'met' if met_today else 'missed'}, {got_today}]")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=900.0, help="simulated seconds (default 900)")
    parser.add_argument("--postgres", metavar="URL", help="also run on PostgreSQL (a maintenance database URL)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    def clients_for() -> list[Client]:
        return community(random.Random(args.seed))

    plan = arrivals(clients_for(), args.seconds, random.Random(args.seed + 1))
    fifo = run_fifo(clients_for(), plan, args.seconds)
    print(f"{len(plan)} submit attempts over {args.seconds:.0f} simulated seconds, 2 workers "
          f"(one of them the contributor's), 1 unit = 1 job-time = 1 s")
    if not HAS_GROUPS:
        print("note: this checkout's queue has no network groups, so 'new' runs today's rules too")
    if not HAS_KEYLESS_PEOPLE:
        print("note: this checkout has no keyless persons: keyless callers share one anonymous user")
    if not HAS_GUESTS:
        print("note: this checkout has no guest accounts: guests are registered users without merit")
    print()
    ok = True
    with_clients = clients_for()
    results = run_all(clients_for, plan, args.seconds, lambda tmp: f"sqlite:///{Path(tmp) / 'bench.db'}", fifo)
    print(table("SQLite", results, with_clients))
    ok &= report_targets(results)
    if args.postgres:
        import psycopg

        def url_for(tmp: str) -> str:
            name = f"kakumei_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
                created.append(name)
                return f"postgresql://{admin.info.user}@{admin.info.host}:{admin.info.port}/{name}"

        created: list[str] = []
        try:
            results = run_all(clients_for, plan, args.seconds, url_for, fifo)
            print()
            print(table("PostgreSQL", results, with_clients))
            ok &= report_targets(results)
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                for name in created:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if not HAS_GROUPS:
        print("targets not enforced: the new rules are not in this checkout")
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
