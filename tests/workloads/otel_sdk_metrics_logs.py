"""Metrics and logs made by the official OpenTelemetry Python SDK, for the otlp receiver's
round-trip test.

    otel_sdk_metrics_logs.py grpc|http ENDPOINT EXPECTED_PREFIX

Records a counter, an up-down counter, a histogram, an exponential histogram (through a view), a
gauge and an observable gauge, with exemplars from a sampled span, collects them once with an
in-memory reader, and emits log records of every body type and severity, with trace context and
event names. Exports both with the SDK's own OTLP exporters (gRPC or HTTP/protobuf; for HTTP,
ENDPOINT is the base URL) and writes the requests the SDK's encoders make of the same data to
EXPECTED_PREFIX.metrics.pb and EXPECTED_PREFIX.logs.pb, so the test can compare what reaches the
far end of oxeye with what was sent.
"""

import sys

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

protocol, endpoint, prefix = sys.argv[1:4]
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    metric_exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True)
    log_exporter = OTLPLogExporter(endpoint=endpoint, insecure=True)
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    metric_exporter = OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics")
    log_exporter = OTLPLogExporter(endpoint=f"{endpoint}/v1/logs")

resource = Resource.create(
    {"service.name": "checkout", "service.version": "2.1.0", "host.cores": 8,
     "deployment.canary": True, "zones": ["a", "b"]},
    schema_url="https://opentelemetry.io/schemas/1.26.0",
)

# --- metrics -------------------------------------------------------------------------------
reader = InMemoryMetricReader(
    preferred_temporality={
        # Delta for the up-down counter's neighbour, cumulative for the rest: both temporalities.
        __import__("opentelemetry.sdk.metrics", fromlist=["Histogram"]).Histogram:
            AggregationTemporality.DELTA,
    }
)
provider = MeterProvider(
    resource=resource,
    metric_readers=[reader],
    views=[
        View(instrument_name="rpc.server.payload.size",
             aggregation=ExponentialBucketHistogramAggregation(max_size=20)),
        View(instrument_name="*"),
    ],
)
tracer = TracerProvider(resource=resource).get_tracer("checkout.api")
meter = provider.get_meter(
    "checkout.api", "1.4.2", schema_url="https://opentelemetry.io/schemas/1.24.0",
    attributes={"library.tier": "gold"},
)
requests = meter.create_counter("http.server.requests", unit="{request}",
                                description="Requests served.")
active = meter.create_up_down_counter("http.server.active_requests", unit="{request}")
duration = meter.create_histogram("http.server.request.duration", unit="s",
                                  description="Duration of HTTP server requests.",
                                  explicit_bucket_boundaries_advisory=[0.005, 0.05, 0.5, 5.0])
payload = meter.create_histogram("rpc.server.payload.size", unit="By")
temperature = meter.create_gauge("hw.temperature", unit="Cel")


def queue_depth(options: CallbackOptions):
    yield Observation(17, {"queue": "orders"})
    yield Observation(3, {"queue": "refunds"})


meter.create_observable_gauge("queue.depth", [queue_depth], unit="{message}")

with tracer.start_as_current_span("POST /cart"):  # sampled: exemplars carry its ids
    for i in range(40):
        attrs = {"http.request.method": ["GET", "POST"][i % 2],
                 "http.response.status_code": 200 + (i % 3) * 100}
        requests.add(1 + i % 4, attrs)
        active.add(1 if i % 3 else -1, {"server.port": 8443})
        duration.record(0.001 * (i * i + 1), attrs)
        payload.record(1 + 37 * i, {"rpc.method": "Get"})
        temperature.set(40.5 + i / 8, {"hw.id": f"cpu{i % 2}"})
    requests.add(2, {"tags": ("x", "y"), "ratio": 0.25, "retry": True})

data = reader.get_metrics_data()
with open(f"{prefix}.metrics.pb", "wb") as f:
    f.write(encode_metrics(data).SerializeToString())
assert metric_exporter.export(data).name == "SUCCESS", "metrics export failed"
points = sum(len(m.data.data_points) for rm in data.resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics)

# --- logs ----------------------------------------------------------------------------------
memory = InMemoryLogRecordExporter()
logs = LoggerProvider(resource=resource)
logs.add_log_record_processor(SimpleLogRecordProcessor(memory))
logger = logs.get_logger("checkout.log", "0.3.1",
                         schema_url="https://opentelemetry.io/schemas/1.24.0",
                         attributes={"logger.kind": "structured"})
plain = logs.get_logger("checkout.plain")  # a scope without version, schema or attributes
bodies = ["cart loaded", {"order": {"id": 42, "lines": [1, 2]}, "paid": True},
          ["a", 1, 2.5, False], b"\x00\x01\xfe\xff", 12345, 0.5, None]
with tracer.start_as_current_span("GET /orders"):
    for i in range(28):
        (logger if i % 4 else plain).emit(
            timestamp=1_700_000_000_000_000_000 + i * 1_000_000,
            observed_timestamp=1_700_000_000_000_500_000 + i * 1_000_000,
            severity_number=list(SeverityNumber)[i % len(SeverityNumber)],
            severity_text=["INFO", "warning", "", "ERROR"][i % 4] or None,
            body=bodies[i % len(bodies)],
            attributes={"code.function": "load", "attempt": i, "ok": i % 2 == 0,
                        "ids": [1, 2, 3]},
            event_name="checkout.cart.loaded" if i % 5 == 0 else None,
        )
logs.force_flush()
records = memory.get_finished_logs()
with open(f"{prefix}.logs.pb", "wb") as f:
    f.write(encode_logs(records).SerializeToString())
assert log_exporter.export(records).name == "SUCCESS", "logs export failed"
print(f"sent {points} data points and {len(records)} log records over {protocol}")
