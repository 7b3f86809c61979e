//! Arbitrary bytes as a stream from a socket: the decoders never panic, and whatever
//! decodes re-encodes to a frame that decodes to the same thing.

#![no_main]

use bytes::BytesMut;
use keel_protocol::{decode_frame, decode_record, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(frame)) = decode_frame(&mut buffer, 1 << 20) {
        if let Ok(request) = Request::decode(&frame) {
            let mut encoded = Vec::new();
            request.encode(frame.request_id, frame.flags, &mut encoded);
            let again = decode_frame(&mut BytesMut::from(&encoded[..]), 1 << 20).expect("re-encoded").expect("whole");
            assert_eq!(Request::decode(&again).expect("re-decodes"), request);
        }
        if let Ok(Response::PullResult(pull)) = Response::decode(&frame) {
            let _ = pull.decode_records();
        }
    }
    let _ = decode_record(data);
});
