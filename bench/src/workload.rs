//! OpenMessaging Benchmark workload files (`--workload FILE`): the same flat YAML files
//! OMB runs (`workloads/*.yaml`), so a keel run and a published OMB run share their
//! shape: topics, partitions (queues) per topic, message size, producers per topic, the
//! producer rate, subscriptions (consumer groups) per topic and consumers per
//! subscription, and the duration.
//!
//! The files are `key: value` lines (a `#` starts a comment); nothing nests, so a
//! small reader does, and every line it does not understand is an error naming it.

use std::path::Path;

/// The part of an OMB workload keel-bench runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Workload {
    pub name: String,
    pub topics: usize,
    pub partitions_per_topic: u32,
    pub message_size: usize,
    pub producers_per_topic: usize,
    /// Messages per second over every producer; 0: as fast as they go.
    pub producer_rate: f64,
    pub subscriptions_per_topic: usize,
    pub consumer_per_subscription: usize,
    pub test_duration_minutes: f64,
}

/// OMB keys this tool reads but does not act on: the run goes on without them.
const IGNORED: [(&str, &str); 13] = [
    ("keyDistributor", "messages carry no key"),
    (
        "payloadFile",
        "the payload is generated, of messageSize bytes",
    ),
    ("useRandomizedPayloads", "the payload is generated"),
    ("randomBytesRatio", "the payload is generated"),
    ("randomizedPayloadPoolSize", "the payload is generated"),
    ("producerStartRate", "the rate is fixed at producerRate"),
    ("acceptableBacklog", "the rate is fixed at producerRate"),
    ("producerIncrementRate", "the rate is fixed at producerRate"),
    (
        "producerIncrementSeconds",
        "the rate is fixed at producerRate",
    ),
    (
        "messageRateReceivedForSubscription",
        "every subscription gets every message",
    ),
    ("producerPauseBeforeDrain", "there is no backlog phase"),
    ("producerPauseDuringDrain", "there is no backlog phase"),
    ("warmupDurationMinutes", "there is no warm-up phase"),
];

impl Workload {
    /// Reads `path`; returns the workload and a warning for each key it ignores.
    pub(crate) fn load(path: &Path) -> Result<(Workload, Vec<String>), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("workload {}: {e}", path.display()))?;
        Workload::parse(&text).map_err(|e| format!("workload {}: {e}", path.display()))
    }

    pub(crate) fn parse(text: &str) -> Result<(Workload, Vec<String>), String> {
        let mut workload = Workload {
            name: String::new(),
            topics: 1,
            partitions_per_topic: 1,
            message_size: 1024,
            producers_per_topic: 1,
            producer_rate: 0.0,
            subscriptions_per_topic: 1,
            consumer_per_subscription: 0,
            test_duration_minutes: 1.0,
        };
        let mut warnings = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = strip_comment(line).trim();
            if line.is_empty() || line == "---" {
                continue;
            }
            let at = || format!("line {}", number + 1);
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!("{}: {line:?} is not `key: value`", at()));
            };
            let (key, value) = (key.trim(), unquote(value.trim()));
            let bad = |what: &str| format!("{}: {key} must be {what}, not {value:?}", at());
            let count = |min: usize| -> Result<usize, String> {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n >= min && *n <= 100_000)
                    .ok_or_else(|| bad(&format!("a whole number from {min} to 100000")))
            };
            match key {
                "name" => workload.name = value.to_string(),
                "topics" => workload.topics = count(1)?,
                "partitionsPerTopic" => {
                    let queues = count(1)?;
                    workload.partitions_per_topic = u32::try_from(queues)
                        .ok()
                        .filter(|q| *q <= keel_protocol::QUEUES_MAX)
                        .ok_or_else(|| bad("at most 1024 (keel's queues per topic)"))?;
                }
                "messageSize" => workload.message_size = count(1)?,
                "producersPerTopic" => workload.producers_per_topic = count(1)?,
                "producerRate" => {
                    workload.producer_rate = value
                        .parse::<f64>()
                        .ok()
                        .filter(|rate| rate.is_finite() && *rate >= 0.0)
                        .ok_or_else(|| bad("a rate of 0 or more messages a second"))?;
                }
                "subscriptionsPerTopic" => workload.subscriptions_per_topic = count(0)?,
                "consumerPerSubscription" => workload.consumer_per_subscription = count(0)?,
                "testDurationMinutes" => {
                    workload.test_duration_minutes = value
                        .parse::<f64>()
                        .ok()
                        .filter(|minutes| minutes.is_finite() && *minutes > 0.0)
                        .ok_or_else(|| bad("a number of minutes above 0"))?;
                }
                "consumerBacklogSizeGB" => {
                    if value.parse::<f64>() != Ok(0.0) {
                        return Err(format!(
                            "{}: consumerBacklogSizeGB {value} is not supported (no backlog \
                             phase); use 0",
                            at()
                        ));
                    }
                }
                other => match IGNORED.iter().find(|(name, _)| *name == other) {
                    Some((name, why)) => warnings.push(format!("{name} ignored: {why}")),
                    None => return Err(format!("{}: unknown key {other:?}", at())),
                },
            }
        }
        if workload.subscriptions_per_topic == 0 {
            workload.consumer_per_subscription = 0;
        }
        Ok((workload, warnings))
    }

    pub(crate) fn producers(&self) -> usize {
        self.topics * self.producers_per_topic
    }
}

/// The line without a `#` comment (outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (index, c) in line.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(open)) if c == open => quote = None,
            ('#', None) => return &line[..index],
            _ => {}
        }
    }
    line
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|rest| rest.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_omb_workload_file_reads_as_omb_means_it() {
        let text = "# one of OMB's own\nname: 1 topic / 16 partitions / 1kb\n\ntopics: 1\n\
                    partitionsPerTopic: 16\nmessageSize: 1024\n\
                    payloadFile: \"payload/payload-1Kb.data\"\nsubscriptionsPerTopic: 1\n\
                    consumerPerSubscription: 1\nproducersPerTopic: 1\nproducerRate: 50000\n\
                    consumerBacklogSizeGB: 0\ntestDurationMinutes: 15 # minutes\n";
        let (workload, warnings) = Workload::parse(text).unwrap();
        assert_eq!(
            workload,
            Workload {
                name: "1 topic / 16 partitions / 1kb".into(),
                topics: 1,
                partitions_per_topic: 16,
                message_size: 1024,
                producers_per_topic: 1,
                producer_rate: 50000.0,
                subscriptions_per_topic: 1,
                consumer_per_subscription: 1,
                test_duration_minutes: 15.0,
            }
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("payloadFile ignored"));
    }

    #[test]
    fn bad_lines_are_named() {
        let error = |text: &str| Workload::parse(text).unwrap_err();
        assert!(error("topics: 0").contains("line 1: topics must be"));
        assert!(error("name: x\npartitionsPerTopic: 5000").contains("line 2"));
        assert!(error("producerRate: -1").contains("producerRate"));
        assert!(error("topicz: 1").contains("unknown key \"topicz\""));
        assert!(error("just words").contains("not `key: value`"));
        assert!(error("consumerBacklogSizeGB: 100").contains("not supported"));
    }
}
