"""GET /metrics: the queue, the jobs and the fairness of the machine, for Prometheus.

Read from the database at each scrape (store/metrics.py), so every server that shares a
PostgreSQL database reports the same whole picture, and nothing is lost on a restart. The
registry is built per scrape: no process-wide metric state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from kakumei.fairness.shares import fractions
from kakumei.server.deps import services
from kakumei.server.services import Services, local_worker_id
from kakumei.store import metrics as stats

router = APIRouter(tags=["metrics"])

WAIT_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
RUN_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# The window over which each user class's share of compute is reported.
SHARE_WINDOW_SECONDS = 3600.0
USER_CLASSES = ("anonymous", "registered")
STATES = ("queued", "leased", "running", "succeeded", "failed", "cancelled")


def _histogram(name: str, doc: str, data: dict[str, stats.ClassStats], which: str, bounds: tuple[float, ...]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["user_class"])
    for user_class in USER_CLASSES:
        hist = getattr(data[user_class], which) if user_class in data else stats.Histogram()
        buckets = [(str(b), float(hist.buckets.get(b, 0))) for b in bounds] + [("+Inf", float(hist.count))]
        family.add_metric([user_class], buckets, hist.total)
    return family


class QueueCollector(Collector):
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        db = self.svc.db
        queued = GaugeMetricFamily("kakumei_queue_jobs", "Jobs waiting in the queue, per model", labels=["model"])
        for model, n in sorted(stats.queued_by_model(db).items()):
            queued.add_metric([model], n)
        yield queued

        by_state = stats.jobs_by_state(db)
        jobs = GaugeMetricFamily("kakumei_jobs", "Jobs in the database, per state", labels=["state"])
        for state in STATES:
            jobs.add_metric([state], by_state.get(state, 0))
        yield jobs

        yield GaugeMetricFamily(
            "kakumei_users_backlogged", "Users with at least one queued job", value=stats.backlogged_users(db)
        )

        busy = stats.busy_workers(db)
        connected = set(busy)
        if self.svc.local_worker_running():
            connected.add(local_worker_id(self.svc.settings))
        yield GaugeMetricFamily("kakumei_workers_connected", "Workers known to be up (busy ones and this server's own)", value=len(connected))
        yield GaugeMetricFamily("kakumei_workers_busy", "Workers holding a job lease", value=len(busy))

        done = stats.succeeded_by_class(db, WAIT_BUCKETS, RUN_BUCKETS)
        yield _histogram("kakumei_job_wait_seconds", "Seconds from submit to start, of succeeded jobs", done, "wait", WAIT_BUCKETS)
        yield _histogram("kakumei_job_run_seconds", "Seconds a worker ran, of succeeded jobs", done, "run", RUN_BUCKETS)
        units = CounterMetricFamily(
            "kakumei_compute_units", "Compute units served (1 = a 512x512 SD 1.5 image at 20 steps)", labels=["user_class"]
        )
        for user_class in USER_CLASSES:
            units.add_metric([user_class], done[user_class].units if user_class in done else 0.0)
        yield units

        recent = fractions(stats.recent_units_by_class(db, time.time() - SHARE_WINDOW_SECONDS))
        share = GaugeMetricFamily(
            "kakumei_compute_share", "Share of compute units served in the last hour, per user class", labels=["user_class"]
        )
        for user_class in USER_CLASSES:
            share.add_metric([user_class], recent.get(user_class, 0.0))
        yield share


def render_metrics(svc: Services) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(svc))
    return generate_latest(registry)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(svc: Services = Depends(services)) -> Response:
    """Prometheus text format: queue per model, jobs per state, wait and run time histograms,
    workers, compute units and share per user class."""
    return Response(render_metrics(svc), media_type=CONTENT_TYPE_LATEST)

