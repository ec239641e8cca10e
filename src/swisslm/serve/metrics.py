# SPDX-License-Identifier: Apache-2.0
"""Prometheus metrics for the server (names follow vLLM's where one exists, prefixed swisslm_).

Each app owns its own CollectorRegistry, so several servers in one process (tests) never share
or double-register counters.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets in seconds: from sub-millisecond decode steps to minute-long requests.
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
            5.0, 10.0, 20.0, 40.0, 80.0)
_BATCH = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("swisslm_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.rejected = Counter("swisslm_queue_rejections", "requests answered 429 because the queue was full",
                                registry=r)
        self.prompt_tokens = Counter("swisslm_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter("swisslm_generation_tokens", "tokens generated", registry=r)
        self.queue_depth = Gauge("swisslm_num_requests_waiting", "sequences waiting for a batch row", registry=r)
        self.running = Gauge("swisslm_num_requests_running", "sequences in the running batch", registry=r)
        self.batch_size = Histogram("swisslm_batch_size", "running sequences per decode step", buckets=_BATCH,
                                    registry=r)
        self.ttft = Histogram("swisslm_time_to_first_token_seconds", "arrival to first generated token",
                              buckets=_LATENCY, registry=r)
        self.itl = Histogram("swisslm_inter_token_latency_seconds", "time between two tokens of a sequence",
                             buckets=_LATENCY, registry=r)
        self.request_latency = Histogram("swisslm_e2e_request_latency_seconds", "arrival to last token",
                                         buckets=_LATENCY, registry=r)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
