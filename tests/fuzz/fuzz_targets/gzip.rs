//! The receiver's gzip inflater (libdeflate for one member of the size it states, flate2's
//! multi-member decoder otherwise) against flate2 alone on any bytes: never a panic, the same
//! bytes when both read a body, and a refusal only where flate2 refuses too or the limit is
//! passed. The first byte picks the limit; the second, whether to gzip the rest first (so most
//! inputs are valid gzip and the paths past the header are reached).
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [limit, mode, rest @ ..] = data else {
        return;
    };
    let limit = 1usize << (*limit % 24);
    let body = match mode % 4 {
        // One member, two members, or the bytes as they are.
        0 | 1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(rest).expect("gzip");
            let one = e.finish().expect("gzip");
            if mode % 4 == 1 {
                [one.clone(), one].concat()
            } else {
                one
            }
        }
        _ => rest.to_vec(),
    };
    let ours = oxeye_receiver_otlp::fuzzing::gunzip(&body, limit);
    let mut reference = Vec::new();
    let theirs = flate2::read::MultiGzDecoder::new(&body[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut reference);
    match (ours, theirs) {
        (Some(a), Ok(_)) => assert_eq!(a, reference, "different bytes"),
        (Some(a), Err(e)) => panic!("we read {} bytes where flate2 says {e}", a.len()),
        // Refused: fine where flate2 refuses or the limit is passed.
        (None, Ok(_)) => assert!(reference.len() > limit, "refused a body flate2 reads whole"),
        (None, Err(_)) => {}
    }
});
