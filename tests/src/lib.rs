//! Shared pieces of keel's integration and fault tests: the ledger that checks "nothing
//! acknowledged is lost", and deterministic payloads that can be checked byte for byte.

pub mod ledger;

pub use ledger::{Ledger, Outcome, Report};

/// A payload of `size` bytes (at least the id's length) that starts with `id` and is
/// filled with bytes derived from it, so a consumer can check it byte for byte.
pub fn payload_for(id: &str, size: usize) -> Vec<u8> {
    let mut payload = id.as_bytes().to_vec();
    payload.push(b'|');
    let mut state = crc32c::crc32c(id.as_bytes()) as u64 | 1;
    while payload.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        payload.push(b'a' + (state % 26) as u8);
    }
    payload
}

/// The id a payload made by `payload_for` carries, if it is intact.
pub fn id_of(payload: &[u8]) -> Option<String> {
    let end = payload.iter().position(|byte| *byte == b'|')?;
    let id = std::str::from_utf8(&payload[..end]).ok()?.to_string();
    (payload_for(&id, payload.len()) == payload).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_identify_themselves_and_detect_damage() {
        let payload = payload_for("p3-s17", 1024);
        assert_eq!(payload.len(), 1024);
        assert_eq!(id_of(&payload).as_deref(), Some("p3-s17"));
        let mut damaged = payload.clone();
        damaged[900] ^= 1;
        assert_eq!(id_of(&damaged), None);
    }
}
