//! The remote-write exporter's hand-written `TimeSeries` encoding against prost's decoding of
//! the prompb messages, on any labels, value and time: the bytes decode to exactly the series
//! written, and their length is the one the exporter computed to split requests. The input is
//! 8 bytes of value, 8 of time, then `name\0value\0` pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxeye_exporter_prometheusremotewrite::bench::{encode_series, prompb, series_len};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let (Some(value), Some(time)) = (data.get(0..8), data.get(8..16)) else {
        return;
    };
    let value = f64::from_le_bytes(value.try_into().expect("8 bytes"));
    let time = i64::from_le_bytes(time.try_into().expect("8 bytes"));
    let text = String::from_utf8_lossy(&data[16..]);
    let parts: Vec<&str> = text.split('\0').collect();
    let labels: Vec<(&str, &str)> = parts.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let mut buf = Vec::new();
    encode_series(&mut buf, &labels, value, time);
    assert_eq!(buf.len(), series_len(&labels, time));
    let back = prompb::WriteRequest::decode(buf.as_slice()).expect("decodes");
    assert_eq!(back.timeseries.len(), 1);
    let ts = &back.timeseries[0];
    let got: Vec<(&str, &str)> = ts
        .labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect();
    assert_eq!(got, labels);
    assert_eq!(ts.samples.len(), 1);
    assert_eq!(ts.samples[0].value.to_bits(), value.to_bits());
    assert_eq!(ts.samples[0].timestamp, time);
});
