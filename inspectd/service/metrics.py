"""Prometheus metrics: one registry per process, served over HTTP on 127.0.0.1 by default.

Names follow the Prometheus conventions (`inspectd_` prefix, counters end in `_total`,
durations in `_seconds`, sizes in `_bytes`); `promtool check metrics` passes on what is served.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest, start_http_server

from inspectd.errors import ConfigError

log = logging.getLogger(__name__)
# screening runs in milliseconds on a GPU, tens of ms on CPU; refinement takes seconds
SCREENING_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)
REFINEMENT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)


class ServiceMetrics:
    """Everything either process reports; a process leaves the other role's series at zero."""

    def __init__(self, role: str):
        self.role = role
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.up = Gauge("inspectd_up", "1 while the process runs its loop", ["role"], registry=r)
        self.model_info = Info("inspectd_model", "The model this process uses", registry=r)
        self.frames_captured = Counter("inspectd_frames_captured_total", "Frames read from the source",
                                       ["camera"], registry=r)
        self.frames_screened = Counter("inspectd_frames_screened_total", "Frames scored by the screening model",
                                       ["camera"], registry=r)
        self.frames_flagged = Counter("inspectd_frames_flagged_total", "Frames above the screening threshold",
                                      ["camera"], registry=r)
        self.frames_refined = Counter("inspectd_frames_refined_total", "Flagged frames refined and published",
                                      ["camera"], registry=r)
        self.screening_latency = Histogram("inspectd_screening_duration_seconds", "Screening time per frame",
                                           buckets=SCREENING_BUCKETS, registry=r)
        self.refinement_latency = Histogram("inspectd_refinement_duration_seconds", "Refinement time per frame",
                                            buckets=REFINEMENT_BUCKETS, registry=r)
        self.spool_frames = Gauge("inspectd_spool_frames", "Flagged frames waiting for their result", registry=r)
        self.spool_bytes = Gauge("inspectd_spool_bytes", "Bytes of frames waiting for their result", registry=r)
        self.spool_oldest_age = Gauge("inspectd_spool_oldest_age_seconds",
                                      "Age of the oldest frame waiting for its result (0: none waiting)", registry=r)
        self.resends = Counter("inspectd_resends_total", "Frames sent again after ack_timeout_s", registry=r)
        self.acks = Counter("inspectd_acks_total", "Spooled frames whose result was seen", registry=r)
        self.drops = Counter("inspectd_drops_total", "Frames dropped, by reason", ["reason"], registry=r)
        self.bad_inputs = Counter("inspectd_bad_inputs_total", "Unusable frames or messages, by kind", ["kind"],
                                  registry=r)
        self.source_errors = Counter("inspectd_source_errors_total", "Camera losses and unreadable frames",
                                     ["reason"], registry=r)
        self.defects_published = Counter("inspectd_defects_published_total", "Defects in published results",
                                         ["camera"], registry=r)
        self.results_published = Counter("inspectd_results_published_total", "Published results, by decision",
                                         ["decision"], registry=r)
        self.reconnects = Counter("inspectd_reconnects_total", "Peer connections ended and connected again "
                                  "(peer restart, or a message part above ZMQ_MAXMSGSIZE)", registry=r)
        self.reloads = Counter("inspectd_reloads_total", "Model reloads on SIGHUP, by result", ["result"],
                               registry=r)
        self.loop_errors = Counter("inspectd_loop_errors_total", "Messages or frames a loop failed on "
                                   "(logged and skipped; the loop goes on), by loop", ["loop"], registry=r)
        self.refinement_failures = Counter("inspectd_refinement_failures_total", "Refinement attempts that "
                                           "raised (retried up to refiner.max_attempts)", registry=r)
        self.dead_letters = Counter("inspectd_dead_letters_total", "Frames given up and moved to the dead-letter "
                                    "folder, by reason", ["reason"], registry=r)
        self.refiners_alive = Gauge("inspectd_refiners_alive", "Refiners whose heartbeats arrive", registry=r)
        self.refiners_lost = Counter("inspectd_refiners_lost_total", "Refiners whose heartbeats stopped "
                                     "(their frames were resent at once)", registry=r)
        self.spool_writable = Gauge("inspectd_spool_writable", "0 while writing to the spool fails (full or "
                                    "read-only disk)", registry=r)
        self.handshake_failures = Counter("inspectd_handshake_failures_total", "ZeroMQ handshakes that failed "
                                          "(e.g. an unknown CURVE key), by socket", ["socket"], registry=r)
        # score drift of the screening scores against the bundle's normal scores (capture)
        self.score_drift = Gauge("inspectd_score_drift", "KS statistic of the last window of screening scores "
                                 "against the bundle's held-out normal scores (0: same, 1: disjoint)", ["camera"],
                                 registry=r)
        self.score_drift_threshold = Gauge("inspectd_score_drift_threshold", "drift.threshold: above it the "
                                           "capture logs (and the alert fires)", ["camera"], registry=r)
        # result subscribers: `inspectd view` and `inspectd bridge mqtt`
        self.results_received = Counter("inspectd_results_received_total", "Results a subscriber took in",
                                        ["camera"], registry=r)
        self.mqtt_published = Counter("inspectd_mqtt_published_total", "Results the MQTT broker acknowledged",
                                      ["camera"], registry=r)
        self.mqtt_queue = Gauge("inspectd_mqtt_queue_messages", "Results waiting for the MQTT broker", registry=r)
        self.mqtt_dropped = Counter("inspectd_mqtt_dropped_total", "Results dropped because the bridge's queue "
                                    "was full (broker down too long)", registry=r)
        self.mqtt_connected = Gauge("inspectd_mqtt_connected", "1 while the bridge is connected to the broker",
                                    registry=r)
        self.mqtt_connect_failures = Counter("inspectd_mqtt_connect_failures_total", "Broker connections refused "
                                             "or lost, by reason", ["reason"], registry=r)
        self.view_clients = Gauge("inspectd_view_clients", "Browsers connected to the live view", registry=r)
        self.view_disconnects = Counter("inspectd_view_disconnects_total", "Browsers that went away", registry=r)
        self.server = None

    def init_series(self, camera: str | None, drop_reasons=(), bad_input_kinds=()) -> None:
        """Create the labelled series at 0, so dashboards and rate() see them before the first event."""
        for counter in (self.frames_captured, self.frames_screened, self.frames_flagged, self.frames_refined,
                        self.defects_published):
            if camera is not None:
                counter.labels(camera)
        for reason in drop_reasons:
            self.drops.labels(reason)
        for kind in bad_input_kinds:
            self.bad_inputs.labels(kind)

    def set_model(self, model_id: str, **extra: str) -> None:
        self.model_info.info({"model_id": model_id, "role": self.role, **{k: str(v) for k, v in extra.items()}})

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server in a thread; returns the port (useful with port 0)."""
        try:
            self.server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:  # e.g. another process already serves its metrics on that port
            raise ConfigError(f"metrics: cannot listen on {host}:{port} ({exc.strerror or exc}; set metrics.port)") \
                from None
        port = self.server.server_port
        log.info("metrics on http://%s:%d/metrics", host, port)
        return port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def text(self) -> bytes:
        return generate_latest(self.registry)
