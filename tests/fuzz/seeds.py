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
# Request events (kernel_records too): a u16 length, then an L7Event header (120 bytes, layout
# in ebpf/common: the 56-byte L7Conn, three u64 times and counts, four u32 ids, captured, kind,
# padding, comm) and its captured bytes.
def l7(kind, data, total=None, role=1, t=1000, proto=1, sock_type=1, port=8080):
    h = bytearray(120)
    struct.pack_into("<Q", h, 0, 7)                        # connection id
    h[8:12], h[24:28] = bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])
    # ports, AF_INET, role, protocol, socket type
    struct.pack_into("<HHHBBB", h, 40, port, 40000, 2, role, proto, sock_type)
    struct.pack_into("<QQQIIII", h, 56, t, t + 10, len(data) if total is None else total, 1, 1, 3, 0)
    struct.pack_into("<HB", h, 96, len(data), kind)
    h[104:108] = b"test"
    rec = bytes(h) + data
    return struct.pack("<H", len(rec)) + rec
# A server connection's request, response and close.
seq = (l7(1, b"GET /a/1 HTTP/1.1\r\nHost: x\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")
       + l7(2, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", t=2000)
       + l7(1, b"POST /b HTTP/1.1\r\nContent-Length: 100\r\n\r\n", total=140, t=3000)
       + l7(2, b"HTTP/1.1 500 x\r\n\r\n", t=4000)
       + l7(3, b"", t=5000))
open(corpus("kernel_records", "requests"), "wb").write(seq)
redis = (l7(1, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nxx", total=130, proto=3)
         + l7(2, b"+OK\r\n", proto=3, t=2000)
         + l7(1, b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n", proto=3, t=3000)
         + l7(2, b"-ERR value is not an integer\r\n+PONG\r\n", proto=3, t=4000))
open(corpus("kernel_records", "requests-redis"), "wb").write(redis)
# DNS: a client's query and its NXDOMAIN answer over UDP, then the same over TCP with the
# length prefix written apart from the message.
query = bytes.fromhex("1234010000010000000000000377777702") + b"nx" + bytes.fromhex("04746573740000010001")
answer = bytes([0x12, 0x34, 0x81, 0x83]) + query[4:]
dns = (l7(2, query, role=2, proto=2, sock_type=2, port=53)
       + l7(1, answer, role=2, proto=2, sock_type=2, port=53, t=2000))
tcp = (l7(2, struct.pack(">H", len(query)), role=2, proto=2, port=53)
       + l7(2, query, role=2, proto=2, port=53, t=1500)
       + l7(1, struct.pack(">H", len(answer)) + answer, role=2, proto=2, port=53, t=2000))
open(corpus("kernel_records", "requests-dns"), "wb").write(dns + tcp)
