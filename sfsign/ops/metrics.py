"""Prometheus metrics (prometheus-client). One registry per daemon, so tests and the CLI never share state.

The names follow the seed's monitoring targets: success rate and latency per document, an alert when one
job has failed three times, and dead jobs. The ops endpoint that serves them is `sfsign/ops/health.py`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_received = Counter(
            "sfsign_events_received", "Streaming events received", ["channel"], registry=r
        )
        self.jobs_created = Counter("sfsign_jobs_created", "Jobs queued", ["rule", "source"], registry=r)
        self.step_seconds = Histogram(
            "sfsign_step_duration_seconds", "Duration of one job step", ["step"], buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "sfsign_end_to_end_latency_seconds", "From the Salesforce change to Signed on the record",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.retries = Counter("sfsign_retries", "Job steps that failed and were rescheduled", ["error_code"],
                               registry=r)
        self.failing_jobs = Counter(
            "sfsign_job_failure_alerts",
            "Failed attempts of jobs that had already failed at least twice (alert on any increase)",
            ["error_code"], registry=r,
        )
        self.dead_jobs = Counter("sfsign_dead_jobs", "Jobs that exhausted their attempts", registry=r)
        self.errored_jobs = Counter("sfsign_error_jobs", "Jobs that failed permanently", ["error_code"],
                                    registry=r)
        self.stream_connected = Gauge("sfsign_stream_connected", "1 while subscribed to every channel",
                                      registry=r)
        self.stream_disconnects = Counter("sfsign_stream_disconnects", "Times the subscription was lost",
                                          registry=r)
        self.documents_signed = Counter("sfsign_documents_signed", "Documents signed and written back",
                                        ["rule"], registry=r)
