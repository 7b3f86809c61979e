//! PULL and OFFSET_FOR_TIME: checked here, read by a reader thread (the log may be on a
//! slow disk), answered (or parked as a long poll) when the read comes back.

use crate::broker::connection::ReplyTo;
use crate::broker::reader::ReadJob;
use crate::broker::shard::Shard;
use crate::error::Refusal;
use keel_protocol::{validate_topic, ErrorCode, OffsetForTimeRequest, PullRequest};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Long-poll PULLs one connection may have waiting at once (parked or being read).
const PULLS_WAITING_PER_CONNECTION_MAX: usize = 1024;

pub(crate) fn on_pull(shard: &mut Shard, to: ReplyTo, pull: PullRequest) {
    shard.broker.counters.pulls.fetch_add(1, Ordering::Relaxed);
    if let Err(detail) = validate_topic(&pull.topic) {
        return shard.reply(to, Refusal::new(ErrorCode::InvalidTopic, detail).response());
    }
    if pull.max_messages == 0 || pull.max_bytes == 0 {
        let refusal = Refusal::invalid("max_messages and max_bytes must be at least 1");
        return shard.reply(to, refusal.response());
    }
    // Beyond the cap a PULL is answered at once, as with wait_ms = 0: a client cannot
    // make the broker hold an unbounded number of waiting requests.
    let room = shard.begin_pull(to) < PULLS_WAITING_PER_CONNECTION_MAX;
    let broker = &shard.broker;
    let long_poll_until = (pull.wait_ms > 0 && room && !broker.is_shutting_down()).then(|| {
        let wait_ms = u64::from(pull.wait_ms).min(broker.config.long_poll_max_ms);
        Instant::now() + Duration::from_millis(wait_ms)
    });
    let job = ReadJob::Pull {
        pull,
        long_poll_until,
    };
    shard.submit_read(to, job);
}

/// A binary search over store times: reads of the log, on a reader thread.
pub(crate) fn on_offset_for_time(shard: &mut Shard, to: ReplyTo, query: OffsetForTimeRequest) {
    shard.submit_read(to, ReadJob::OffsetForTime(query));
}
