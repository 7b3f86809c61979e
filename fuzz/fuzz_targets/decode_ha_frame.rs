//! Arbitrary bytes on the HA port: the HA frame decoder never panics nor allocates by a
//! claimed count, and whatever decodes re-encodes to the same frame.

#![no_main]

use keel_protocol::HaFrame;
use keel_replication::wire::read_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The body decoder directly (random bytes rarely pass the frame CRC).
    if let Ok(frame) = HaFrame::decode(data) {
        let mut encoded = Vec::new();
        frame.encode(&mut encoded);
        assert_eq!(read_frame(&mut &encoded[..]).expect("re-decodes"), frame);
    }
    let mut stream = data;
    while let Ok(frame) = read_frame(&mut stream) {
        let mut encoded = Vec::new();
        frame.encode(&mut encoded);
        let again: HaFrame = read_frame(&mut &encoded[..]).expect("re-decodes");
        assert_eq!(again, frame);
    }
});
