"""One /metrics scrape for a group of server processes: every process's series with a `process` label.

Each server process keeps its own registry (request metrics, latent statistics window) and serves it
on a loopback port; the parent's `/metrics` scrapes them all at once (in parallel, short timeout) and
re-exposes every sample with `process="<index>"` added, beside the parent's own group metrics.

Why per-process series rather than prometheus_client's multiprocess mode: that mode cannot carry the
latent statistics (custom collectors and windowed gauges are not shared files), and a per-process
label keeps every series exact: counters and histograms add up with `sum without (process)`, and each
latent window is the correct window of the traffic that process served. The group's pooled window is
added as `process="all"` (service/group_latent.py).
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.group_latent import add_pooled

__all__ = ["GroupMetrics", "ProcessScraper", "relabel"]

log = logging.getLogger("vae.service")

# A scrape waits at most this long for a process; a slow or dying one is left out of that scrape
# (and counted) rather than stalling the whole endpoint.
SCRAPE_TIMEOUT_S = 2.0


def relabel(text: str, process: str, into: dict[str, Metric]) -> None:
    """Parse one process's exposition text and add its samples, labelled `process`, to `into`
    (families merged by name so that each has one HELP/TYPE)."""
    for family in text_string_to_metric_families(text):
        merged = into.get(family.name)
        if merged is None:
            merged = into[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
        for s in family.samples:
            merged.samples.append(Sample(s.name, {**s.labels, "process": process}, s.value, s.timestamp,
                                         s.exemplar))


def _fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as r:
        body: bytes = r.read()
        return body.decode("utf-8")


class ProcessScraper:
    """A collector: scrapes the live processes' endpoints when the parent's registry is collected."""

    def __init__(self, targets: Callable[[], list[tuple[str, int]]],
                 on_failure: Callable[[str], None]) -> None:
        self._targets = targets
        self._on_failure = on_failure
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="vae-scrape")

    def describe(self) -> Iterable[Metric]:
        return []  # names are only known at scrape time; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        targets = self._targets()
        futures = [(process, self._pool.submit(_fetch, port)) for process, port in targets]
        families: dict[str, Metric] = {}
        for process, future in futures:
            try:
                relabel(future.result(), process, families)
            except Exception as exc:  # noqa: BLE001 - a process that cannot be read is left out, counted
                log.debug("scrape of process %s failed: %s", process, exc)
                self._on_failure(process)
        if targets:
            add_pooled(families)
        return list(families.values())

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class GroupMetrics:
    """The parent's own metrics (restarts, readiness) plus the scraped processes, on one registry."""

    def __init__(self, registry: CollectorRegistry, processes: int,
                 targets: Callable[[], list[tuple[str, int]]]) -> None:
        self.registry = registry
        Gauge("vae_processes", "Server processes the group runs (--processes).",
              registry=registry).set(processes)
        self._ready = Gauge("vae_process_ready",
                            "1 when the server process is warm and serving the port, else 0.",
                            ["process"], registry=registry)
        self._restarts = Counter("vae_process_restarts",
                                 "Server processes restarted after they died, by process slot.",
                                 ["process"], registry=registry)
        self._scrape_failures = Counter("vae_process_scrape_failures",
                                        "Scrapes of a server process that failed (left out of that scrape).",
                                        ["process"], registry=registry)
        for i in range(processes):
            self._ready.labels(str(i)).set(0)
            self._restarts.labels(str(i))
        self.scraper = ProcessScraper(targets, lambda p: self._scrape_failures.labels(p).inc())
        registry.register(self.scraper)

    def ready(self, process: int, up: bool) -> None:
        self._ready.labels(str(process)).set(1 if up else 0)

    def restarted(self, process: int) -> None:
        self._restarts.labels(str(process)).inc()

    def close(self) -> None:
        self.registry.unregister(self.scraper)
        self.scraper.close()
