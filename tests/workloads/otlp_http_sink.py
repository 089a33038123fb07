"""A loopback OTLP/HTTP sink that decodes with the official Python OTLP protos
(`opentelemetry-proto`), for tests of what oxeye exports.

    otlp_http_sink.py PORT_FILE

Serves POST /v1/traces and /v1/metrics (protobuf, gzip'd or not) on 127.0.0.1, on a port of its
own choosing written to PORT_FILE. GET /summary answers JSON:
  spans        spans received
  span_ms      the sum of their durations, in ms
  traces       distinct trace ids received
  metrics      per metric name: its type, and over its series (resource and point attributes)
               the latest point of each (a cumulative flush repeats totals): the sum of values
               (sums), or of counts and sums (histograms); series; the exemplars of all its
               points and how many of them name a trace the sink received
"""

import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest, ExportMetricsServiceResponse)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

lock = threading.Lock()
spans = 0
span_ms = 0.0
traces = set()
latest = {}  # (metric, series key) -> (time, point kind, point)
exemplars = {}  # metric -> trace ids of the exemplars of every point received


def attrs(kvs):
    return tuple(sorted((kv.key, kv.value.SerializeToString()) for kv in kvs))


def record_traces(req):
    global spans, span_ms
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans += 1
                span_ms += (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6
                traces.add(s.trace_id)


def record_metrics(req):
    for rm in req.resource_metrics:
        resource = attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                points = getattr(m, kind).data_points
                for p in points:
                    exemplars.setdefault(m.name, []).extend(e.trace_id for e in p.exemplars)
                    key = (m.name, resource, attrs(p.attributes))
                    old = latest.get(key)
                    if old is None or old[0] <= p.time_unix_nano:
                        latest[key] = (p.time_unix_nano, kind, p)


def summary():
    out = {"spans": spans, "span_ms": span_ms, "traces": len(traces), "metrics": {}}
    for (name, _, _), (_, kind, p) in latest.items():
        m = out["metrics"].setdefault(name, {"type": kind, "series": 0, "value": 0,
                                             "count": 0, "sum": 0.0, "exemplars": 0,
                                             "exemplars_of_known_traces": 0})
        m["series"] += 1
        if kind == "sum":
            m["value"] += p.as_int if p.HasField("as_int") else p.as_double
        elif kind == "histogram":
            m["count"] += p.count
            m["sum"] += p.sum
    for name, ids in exemplars.items():
        if name in out["metrics"]:
            out["metrics"][name]["exemplars"] = len(ids)
            out["metrics"][name]["exemplars_of_known_traces"] = sum(t in traces for t in ids)
    return out


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        with lock:
            if self.path == "/v1/traces":
                record_traces(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse()
            elif self.path == "/v1/metrics":
                record_metrics(ExportMetricsServiceRequest.FromString(body))
                answer = ExportMetricsServiceResponse()
            else:
                self.send_response(404)
                self.end_headers()
                return
        data = answer.SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with lock:
            data = json.dumps(summary()).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
__import__("os").rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
