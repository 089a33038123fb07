//! The ebpf receiver's ring-buffer record parsers — spans (three record sizes), profile
//! samples, and request events through the HTTP connection tracker (a sequence of records) —
//! on any bytes: a record or `None`, stacks within their bounds, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxeye_receiver_ebpf::fuzzing::span_record(data);
    oxeye_receiver_ebpf::fuzzing::profile_record(data);
    oxeye_receiver_ebpf::fuzzing::request_events(data);
});
