"""Spans made by the official OpenTelemetry Python SDK, for the otlp receiver's round-trip test.

    otel_sdk_spans.py grpc|http ENDPOINT EXPECTED_FILE

Exports the spans with the SDK's own OTLP exporter (gRPC or HTTP/protobuf) to ENDPOINT, and
writes the ExportTraceServiceRequest the SDK's encoder makes of the same spans to
EXPECTED_FILE, so the test can compare what reaches the far end of oxeye with what was sent.
The spans use every field the SDK can set: all span kinds, status with a message, attributes
of each type (arrays too), events, links with attributes, a remote parent with trace state,
dropped attributes/events/links (through span limits), resource and scope schema URLs and
scope attributes.
"""

import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

protocol, endpoint, expected_file = sys.argv[1:4]
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=endpoint)

memory = InMemorySpanExporter()
provider = TracerProvider(
    resource=Resource.create(
        {"service.name": "checkout", "service.version": "2.1.0", "host.cores": 8,
         "deployment.canary": True, "zones": ["a", "b"]},
        schema_url="https://opentelemetry.io/schemas/1.26.0",
    ),
    span_limits=SpanLimits(max_span_attributes=6, max_events=2, max_links=2),
)
provider.add_span_processor(SimpleSpanProcessor(memory))
provider.add_span_processor(SimpleSpanProcessor(exporter))

api = provider.get_tracer(
    "checkout.api", "1.4.2", schema_url="https://opentelemetry.io/schemas/1.24.0",
    attributes={"library.tier": "gold", "library.shards": 3},
)
db = provider.get_tracer("checkout.db")  # a scope without version, schema or attributes

remote = SpanContext(
    trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
    span_id=0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "opaque-1"), ("oxeye", "t61rcWkgMzE")]),
)
parent_ctx = trace.set_span_in_context(NonRecordingSpan(remote))
other = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.DEFAULT),
    trace_state=TraceState([("k", "v")]),
)

for i in range(20):
    kind = [SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER,
            SpanKind.INTERNAL][i % 5]
    with api.start_as_current_span(
        f"POST /cart/{i % 3}",
        context=parent_ctx if i % 2 == 0 else None,
        kind=kind,
        attributes={
            "http.request.method": "POST", "http.response.status_code": 200 + i,
            "server.port": 8443, "sampling.ratio": 0.25, "retry": i % 2 == 1,
            "tags": ["x", "y", "z"], "ids": [1, 2, 3], "weights": [0.5, 1.5],
            "flags": [True, False], "over.the.limit": "dropped",
        },
        links=[Link(other, {"link.kind": "follows_from", "link.n": i})]
        + ([Link(other), Link(other), Link(other)] if i == 7 else []),
    ) as span:
        span.add_event("cart.loaded", {"items": i, "currency": "EUR"})
        if i % 4 == 0:
            span.add_event("cache.miss")
            span.add_event("cache.fill", {"bytes": 4096})  # beyond max_events: dropped
        with db.start_as_current_span("SELECT cart", kind=SpanKind.CLIENT) as q:
            q.set_attribute("db.system.name", "postgresql")
            if i % 3 == 0:
                q.set_status(Status(StatusCode.ERROR, f"deadlock detected ({i})"))
                q.record_exception(RuntimeError("deadlock"))
            else:
                q.set_status(Status(StatusCode.OK))

provider.shutdown()
spans = memory.get_finished_spans()
with open(expected_file, "wb") as f:
    f.write(encode_spans(spans).SerializeToString())
print(f"sent {len(spans)} spans over {protocol}")
