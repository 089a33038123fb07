"""Writes the seed corpus of the fuzz targets (run once; the corpus is in the repository):
OTLP requests made with the official protos (every field kind), their JSON, the example
configs, and ring-buffer records of each size. Needs the `opentelemetry-proto` package."""
import os, struct, shutil, glob
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.common.v1 import common_pb2 as c
from opentelemetry.proto.trace.v1 import trace_pb2 as t

here = os.path.dirname(os.path.abspath(__file__))
corpus = lambda target, name: os.path.join(here, "corpus", target, name)

def kv(k, **v):
    return c.KeyValue(key=k, value=c.AnyValue(**v))

def request(n, nested=False):
    spans = []
    for i in range(n):
        s = t.Span(trace_id=bytes([i + 1] * 16), span_id=bytes([i + 2] * 8),
                   parent_span_id=bytes([i + 3] * 8) if i % 2 else b"",
                   name=f"GET /api/{i}", kind=t.Span.SPAN_KIND_SERVER,
                   start_time_unix_nano=1_700_000_000_000_000_000 + i,
                   end_time_unix_nano=1_700_000_000_001_000_000 + i,
                   trace_state="k=v", flags=0x301,
                   status=t.Status(code=t.Status.STATUS_CODE_ERROR, message="boom"))
        s.attributes.extend([kv("http.request.method", string_value="GET"), kv("n", int_value=i),
                             kv("f", double_value=1.5), kv("b", bool_value=True),
                             kv("raw", bytes_value=b"\x00\xff")])
        if nested:
            s.attributes.append(kv("list", array_value=c.ArrayValue(values=[
                c.AnyValue(kvlist_value=c.KeyValueList(values=[kv("x", string_value="y")]))])))
        s.events.append(t.Span.Event(time_unix_nano=5, name="exception", attributes=[kv("e", int_value=1)]))
        s.links.append(t.Span.Link(trace_id=bytes([9] * 16), span_id=bytes([8] * 8), attributes=[kv("l", int_value=2)]))
        spans.append(s)
    rs = t.ResourceSpans(resource={"attributes": [kv("service.name", string_value="seed")]},
                         scope_spans=[t.ScopeSpans(scope=c.InstrumentationScope(name="seed", version="1"),
                                                   spans=spans, schema_url="https://s")],
                         schema_url="https://r")
    return ts.ExportTraceServiceRequest(resource_spans=[rs])

for name, req in [("one", request(1)), ("three-nested", request(3, True)), ("empty", ts.ExportTraceServiceRequest())]:
    open(corpus("otlp_protobuf", name), "wb").write(req.SerializeToString())
    open(corpus("otlp_json", name), "w").write(json_format.MessageToJson(req))
for f in glob.glob(os.path.join(here, "..", "..", "config", "*.yaml")):
    shutil.copy(f, corpus("config", os.path.basename(f)))
# Span records: a brief one (96 bytes), a header, and one with stacks (sizes from ebpf/common);
# a profile sample. Plausible values, the rest zero.
for name, size in [("span-brief", 96), ("span-header", 104), ("span-stacks", 104 + 2 * 64 * 8), ("profile", 2120)]:
    rec = bytearray(size)
    struct.pack_into("<QQ", rec, 0, 0x0102030405060708, 42)
    open(corpus("kernel_records", name), "wb").write(bytes(rec))
# Remote-write series: value, time (little-endian), then name\0value\0 pairs.
os.makedirs(os.path.join(here, "corpus", "prompb"), exist_ok=True)
for name, value, ms, labels in [
    ("histogram-bucket", 17.0, 1_700_000_000_123,
     [("__name__", "http_server_request_duration_seconds_bucket"), ("job", "checkout"), ("le", "0.25")]),
    ("defaults", 0.0, 0, [("__name__", "up"), ("empty", "")]),
    ("negative-time", -1.5, -1, [("__name__", "x"), ("région", "été")]),
]:
    pairs = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in labels)
    open(corpus("prompb", name), "wb").write(struct.pack("<dq", value, ms) + pairs)
