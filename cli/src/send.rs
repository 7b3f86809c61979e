//! `keel send`: messages from arguments, files or standard input, sent as they are
//! read with a bounded number in flight, each answer printed as it arrives. Ctrl-C or
//! SIGTERM stops the reading; the answers of what is in flight are waited for (up to
//! the send timeout), and whatever stays unanswered is reported as unknown.

mod input;
mod tally;

pub(crate) use tally::EXIT_UNKNOWN;

use crate::output::{json, print_json};
use crate::security::Target;
use input::{Decoding, Item, Outgoing, Source};
use keel_client::{ClientError, Message, Producer, ProducerOptions, SendBatchResult, SendResult};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tally::{Inputs, Tally};

#[derive(clap::Args)]
pub(crate) struct SendArgs {
    /// The topic to send to.
    #[arg(short, long)]
    topic: String,
    /// Tags (used for filtering by consumers).
    #[arg(long, default_value = "")]
    tags: String,
    /// Keys (business identifiers, for lookups).
    #[arg(short, long, default_value = "")]
    keys: String,
    /// A property KEY=VALUE on every message (repeatable).
    #[arg(short = 'p', long = "property", value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// Give up on a message after this long, retries included (ms). Sends that cannot
    /// reach a master (a failover, a restart) are tried again within it.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    timeout: u64,
    /// Route through these name servers (comma separated) with failover between
    /// masters, as an application does, instead of --broker.
    #[arg(long, value_name = "ADDRS", env = "KEEL_NAMESRV")]
    namesrv: Option<String>,
    /// Queue to send to; by default the broker picks round-robin.
    #[arg(long)]
    queue: Option<u32>,
    /// Put each message in this message group: the group's messages go to one queue
    /// (unless --queue says which) and an ordered consumer group handles them one at a
    /// time, in the order stored. Needs --mode sync, which sends them in order.
    #[arg(long, value_name = "GROUP")]
    message_group: Option<String>,
    /// Deliver each message this long after it is sent (250ms, 30s, 15m, 2h, 7d): the
    /// broker stores it at once and hands it to consumers from then on (at most its
    /// max_delay_ms ahead).
    #[arg(long, value_name = "DURATION", value_parser = crate::when::parse_duration)]
    delay: Option<std::time::Duration>,
    /// Deliver each message at this time: RFC 3339 (2026-12-08T09:00:00Z,
    /// 2026-12-08T10:00:00+01:00) or ms since the Unix epoch. A time past is delivered
    /// at once.
    #[arg(
        long,
        value_name = "TIME",
        value_parser = crate::when::parse_time,
        conflicts_with = "delay"
    )]
    deliver_at: Option<u64>,
    /// sync: wait for each answer before the next send. async: keep up to --window
    /// sends in flight, print answers as they come. oneway: fire and forget (no
    /// answer, no retry).
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    mode: Mode,
    /// With --mode async: the most sends in flight at once (and at most 32 MiB of them).
    #[arg(long, value_name = "N", default_value_t = 256)]
    window: usize,
    /// Send each message this many times.
    #[arg(long, default_value_t = 1)]
    repeat: u64,
    /// With --mode sync: send N messages per request (SEND_BATCH: stored all
    /// together or not at all, one fsync, one answer). A batch goes out when full, or
    /// when the input pauses.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Each MESSAGE and each input line is hexadecimal bytes ("68 69" or "6869").
    #[arg(long)]
    hex: bool,
    /// Each MESSAGE and each input line is a JSON object as `keel consume --json`
    /// prints a record: "payload" (text) or "payload_hex", and optionally "keys",
    /// "tags", "properties" (an object of strings) and "queue", which take the place
    /// of the flags for that message (other fields are ignored; the topic is -t's).
    #[arg(long, conflicts_with_all = ["hex", "file"])]
    json_input: bool,
    /// Send the whole content of FILE as one message (repeatable; "-" reads standard
    /// input to its end).
    #[arg(long, value_name = "FILE")]
    file: Vec<PathBuf>,
    /// A progress line on standard error while answers come in (answered, rate,
    /// answers other than SEND_OK). The default, as one line rewritten in place, when
    /// standard error is a terminal and standard output is not.
    #[arg(long)]
    progress: bool,
    /// How often the progress line is shown (ms).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    progress_interval: u64,
    /// The messages (without them and without --file, each line of standard input is
    /// one, sent as it arrives).
    messages: Vec<String>,
}

/// Bytes of payload in flight at most, whatever the window.
const IN_FLIGHT_BYTES_MAX: usize = 32 << 20;

/// How long the reading waits for more input before a partial batch goes out.
const BATCH_LINGER: Duration = Duration::from_millis(20);

/// One answer, to the request numbered as the `u64` says.
enum Answer {
    One(u64, Result<SendResult, ClientError>),
    Batch(u64, Result<SendBatchResult, ClientError>),
}

/// A request in flight: the inputs of its messages (one, or a batch's), its bytes.
struct InFlight {
    inputs: Vec<u64>,
    bytes: usize,
}

impl InFlight {
    fn span(&self) -> Inputs {
        Inputs {
            first: self.inputs.first().copied().unwrap_or(0),
            last: self.inputs.last().copied().unwrap_or(0),
        }
    }
}

/// What every message of one `keel send` looks like, and its producer.
struct Sender<'a> {
    args: &'a SendArgs,
    properties: Vec<(String, String)>,
    producer: Producer,
    tally: Tally,
    answers: mpsc::Sender<Answer>,
    /// Requests in flight, by the number this run gave them.
    in_flight: BTreeMap<u64, InFlight>,
    next_request: u64,
    in_flight_bytes: usize,
    /// The batch being filled (--batch).
    batch: Vec<(u64, Message)>,
    /// Read but never sent, because the run was interrupted first.
    unsent: u64,
}

pub(crate) fn run(broker: &Target, args: &SendArgs) -> Result<ExitCode, ClientError> {
    check(args)?;
    if args.delay.is_some() || args.deliver_at.is_some() {
        eprintln!(
            "keel send: each message waits in the broker's timer until its time; the queue \
             and offset printed are its place there (topic %SCHEDULE%), and `keel message \
             show ID` follows it to {}",
            args.topic
        );
    }
    let mode = args.mode;
    let source = match (args.file.is_empty(), args.messages.is_empty()) {
        (false, false) => {
            return Err(ClientError::InvalidArgument(
                "give MESSAGE arguments or --file, not both".into(),
            ))
        }
        (false, true) => Source::Files(args.file.clone()),
        (true, false) => Source::Arguments(args.messages.clone()),
        (true, true) => Source::Stdin,
    };
    let total = match &source {
        Source::Files(files) => Some(files.len() as u64),
        Source::Arguments(messages) => Some(messages.len() as u64),
        Source::Stdin => None,
    }
    .map(|count| count.saturating_mul(args.repeat));
    let properties = parse_properties(&args.properties)?;
    let options = ProducerOptions {
        connection: broker.options.clone(),
        send_timeout: Duration::from_millis(args.timeout.max(1)),
        ..ProducerOptions::default()
    };
    let producer = producer(&args.namesrv, &broker.address, options)?;
    crate::signals::install();
    let decoding = Decoding {
        hex: args.hex,
        json: args.json_input,
        max_bytes: broker.options.max_request_bytes,
    };
    // A few items read ahead (each at most a frame): the in-flight cap bounds the rest.
    let (items, reading) = mpsc::sync_channel(16);
    input::spawn(source, decoding, args.repeat, items)?;
    let (answers, answered) = mpsc::channel();
    let progress = args
        .progress
        .then(|| Duration::from_millis(args.progress_interval.max(1)))
        .filter(|_| mode != Mode::Oneway);
    let mut sender = Sender {
        args,
        properties,
        producer,
        tally: Tally::new(total, progress),
        answers,
        in_flight: BTreeMap::new(),
        next_request: 0,
        in_flight_bytes: 0,
        batch: Vec::new(),
        unsent: 0,
    };
    let interrupted = sender.pump(&reading, &answered);
    if let Some(signal) = interrupted {
        sender.wind_down(signal, &reading, &answered);
    }
    Ok(sender.report(interrupted))
}

/// `--batch` and `--window` in range.
fn check(args: &SendArgs) -> Result<(), ClientError> {
    let (mode, batch) = (args.mode, args.batch);
    if batch == 0 || batch > usize::from(u16::MAX) || (batch > 1 && mode != Mode::Sync) {
        return Err(ClientError::InvalidArgument(
            "--batch takes 1 to 65535, and more than 1 only with --mode sync".into(),
        ));
    }
    if args.window == 0 {
        return Err(ClientError::InvalidArgument(
            "--window takes 1 or more".into(),
        ));
    }
    if let Some(group) = &args.message_group {
        if let Some(detail) = keel_protocol::names::invalid_message_group(group) {
            return Err(ClientError::InvalidArgument(format!(
                "--message-group: {detail}"
            )));
        }
        if mode != Mode::Sync {
            return Err(ClientError::InvalidArgument(
                "--message-group needs --mode sync: an asynchronous send retried after a \
                 later one was stored would break the group's order"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// A producer of the broker at `address`, or of every master `namesrv` knows.
fn producer(
    namesrv: &Option<String>,
    address: &str,
    options: ProducerOptions,
) -> Result<Producer, ClientError> {
    Ok(match namesrv {
        Some(list) => {
            let name_servers: Vec<String> = list
                .split(',')
                .map(|address| {
                    crate::shared::with_default_port(address.trim(), crate::shared::NAMESRV_PORT)
                })
                .collect();
            let name_servers: Vec<&str> = name_servers.iter().map(String::as_str).collect();
            Producer::with_name_servers(&name_servers, options)?
        }
        None => Producer::connect(address, options)?,
    })
}

fn parse_properties(items: &[String]) -> Result<Vec<(String, String)>, ClientError> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .ok_or_else(|| {
                    ClientError::InvalidArgument(format!("--property {item:?} is not KEY=VALUE"))
                })
        })
        .collect()
}

impl Sender<'_> {
    /// Reads, sends and prints answers until the input ends and every send is
    /// answered, or a signal stops it (returned).
    fn pump(
        &mut self,
        reading: &mpsc::Receiver<Item>,
        answered: &mpsc::Receiver<Answer>,
    ) -> Option<i32> {
        let mut input_open = true;
        loop {
            if let Some(signal) = crate::signals::received() {
                return Some(signal);
            }
            while let Ok(answer) = answered.try_recv() {
                self.on_answer(answer);
            }
            if !input_open && self.in_flight.is_empty() && self.batch.is_empty() {
                return None;
            }
            if !input_open || !self.has_room() {
                if let Ok(answer) = answered.recv_timeout(Duration::from_millis(50)) {
                    self.on_answer(answer);
                }
                continue;
            }
            match reading.recv_timeout(BATCH_LINGER) {
                Ok(item) => self.take(item),
                // The input pauses: a partial batch goes out rather than wait for it.
                Err(mpsc::RecvTimeoutError::Timeout) => self.flush_batch(),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    input_open = false;
                    self.flush_batch();
                }
            }
        }
    }

    /// Whether another request may go out: sync sends one at a time, async up to the
    /// window (and the byte bound).
    fn has_room(&self) -> bool {
        let window = match self.args.mode {
            Mode::Async => self.args.window,
            Mode::Sync | Mode::Oneway => 1,
        };
        self.in_flight.len() < window && self.in_flight_bytes < IN_FLIGHT_BYTES_MAX
    }

    fn take(&mut self, item: Item) {
        let outgoing = match item.outgoing {
            Ok(outgoing) => outgoing,
            Err(error) => return self.tally.not_sent(item.input, &error),
        };
        let message = self.message(outgoing);
        if self.args.batch > 1 {
            self.batch.push((item.input, message));
            if self.batch.len() >= self.args.batch {
                self.flush_batch();
            }
            return;
        }
        match self.args.mode {
            Mode::Oneway => match self.producer.send_oneway(message) {
                Ok(()) => self.tally.sent += 1,
                Err(error) => self.tally.not_sent(item.input, &error),
            },
            Mode::Sync | Mode::Async => self.send_one(item.input, message),
        }
    }

    fn message(&self, out: Outgoing) -> Message {
        let args = self.args;
        let mut message = Message::new(args.topic.as_str(), out.payload)
            .with_tags(out.tags.as_deref().unwrap_or(&args.tags))
            .with_keys(out.keys.as_deref().unwrap_or(&args.keys));
        for (key, value) in out.properties.as_ref().unwrap_or(&self.properties) {
            message = message.with_property(key.clone(), value.clone());
        }
        if let Some(queue) = out.queue.or(args.queue) {
            message = message.with_queue(queue);
        }
        if let Some(group) = &args.message_group {
            message = message.with_message_group(group.clone());
        }
        match (args.delay, args.deliver_at) {
            (Some(delay), _) => message.with_delay(delay),
            (None, Some(at)) => message.with_deliver_at(at),
            (None, None) => message,
        }
    }

    /// Notes a request as in flight; its number.
    fn start(&mut self, inputs: Vec<u64>, bytes: usize) -> u64 {
        self.next_request += 1;
        self.in_flight_bytes += bytes;
        self.in_flight
            .insert(self.next_request, InFlight { inputs, bytes });
        self.next_request
    }

    fn send_one(&mut self, input: u64, message: Message) {
        let request = self.start(vec![input], message.payload.len());
        let answers = self.answers.clone();
        self.producer.send_async(message, move |outcome| {
            let _ = answers.send(Answer::One(request, outcome));
        });
    }

    fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let inputs: Vec<u64> = batch.iter().map(|(input, _)| *input).collect();
        let messages: Vec<Message> = batch.into_iter().map(|(_, message)| message).collect();
        let bytes = messages.iter().map(|m| m.payload.len()).sum();
        let request = self.start(inputs, bytes);
        let answers = self.answers.clone();
        self.producer.send_batch_async(messages, move |outcome| {
            let _ = answers.send(Answer::Batch(request, outcome));
        });
    }

    fn on_answer(&mut self, answer: Answer) {
        let request = match &answer {
            Answer::One(request, _) | Answer::Batch(request, _) => *request,
        };
        // An answer to nothing in flight (counted unknown when the wait ended) is
        // dropped: the summary was settled without it.
        let Some(sent) = self.in_flight.remove(&request) else {
            return;
        };
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(sent.bytes);
        let (span, count) = (sent.span(), sent.inputs.len() as u64);
        match answer {
            Answer::One(_, Ok(result)) => {
                self.tally.end_progress();
                print_result(&result, span.first);
                self.tally.answer(span, count, Ok(result.status));
            }
            Answer::Batch(_, Ok(result)) => {
                self.tally.end_progress();
                print_batch(&result, &sent.inputs);
                self.tally.answer(span, count, Ok(result.status));
            }
            Answer::One(_, Err(error)) | Answer::Batch(_, Err(error)) => {
                self.tally.answer(span, count, Err(&error))
            }
        }
    }

    /// After a signal: no more input; the answers of what is in flight are waited
    /// for (up to the send timeout; a second signal stops the wait), then whatever is
    /// still unanswered is counted unknown.
    fn wind_down(
        &mut self,
        signal: i32,
        reading: &mpsc::Receiver<Item>,
        answered: &mpsc::Receiver<Answer>,
    ) {
        // Read but never sent: the batch being filled, and what the reader had ready.
        let mut unsent: Vec<u64> = self.batch.drain(..).map(|(input, _)| input).collect();
        unsent.extend(reading.try_iter().map(|item| item.input));
        if let (Some(first), Some(last)) = (unsent.iter().min(), unsent.iter().max()) {
            eprintln!(
                "keel send: {} input(s) read but not sent (inputs {first}-{last}): nothing \
                 of them is stored",
                unsent.len()
            );
        }
        self.unsent += unsent.len() as u64;
        let waiting: usize = self.in_flight.values().map(|sent| sent.inputs.len()).sum();
        self.tally.end_progress();
        eprintln!(
            "keel send: interrupted by {}: reading no more input; waiting up to {} ms for \
             {waiting} answer(s) (again to stop waiting)",
            crate::signals::name(signal),
            self.args.timeout
        );
        // The producer answers every send within its budget; the margin covers the
        // client's deadline tick.
        let deadline = Instant::now() + Duration::from_millis(self.args.timeout + 500);
        while !self.in_flight.is_empty() && Instant::now() < deadline && crate::signals::count() < 2
        {
            if let Ok(answer) = answered.recv_timeout(Duration::from_millis(50)) {
                self.on_answer(answer);
            }
        }
        let left = std::mem::take(&mut self.in_flight);
        for sent in left.into_values() {
            let why = "no answer before keel send stopped waiting: it may be stored";
            self.tally
                .unanswered(sent.span(), sent.inputs.len() as u64, why);
        }
    }

    fn report(&mut self, interrupted: Option<i32>) -> ExitCode {
        self.tally.end_progress();
        if self.args.mode == Mode::Oneway {
            eprintln!(
                "keel send: {} oneway message(s) handed to the broker (oneway: no answers are \
                 read, so none is known stored), failed {}",
                self.tally.sent, self.tally.failed
            );
        } else {
            let mut summary = self.tally.summary();
            if self.unsent > 0 {
                summary.push_str(&format!(", not sent {}", self.unsent));
            }
            if let Some(signal) = interrupted {
                summary.push_str(&format!(
                    " (interrupted by {})",
                    crate::signals::name(signal)
                ));
            }
            eprintln!("keel send: {summary}");
        }
        self.tally.exit_code(interrupted)
    }
}

fn print_result(result: &SendResult, input: u64) {
    if json() {
        print_json(&serde_json::json!({
            "status": result.status.name(), "msg_id": result.message_id(),
            "queue": result.queue_id, "offset": result.queue_offset, "input": input,
        }));
        return;
    }
    println!(
        "{} id={} queue={} offset={} input={input}",
        result.status,
        result.message_id(),
        result.queue_id,
        result.queue_offset
    );
}

fn print_batch(result: &SendBatchResult, inputs: &[u64]) {
    for (index, (queue_id, queue_offset, log_offset)) in result.messages.iter().enumerate() {
        let id = keel_client::message_id(*log_offset);
        let input = inputs.get(index).copied().unwrap_or(0);
        if json() {
            print_json(&serde_json::json!({
                "status": result.status.name(), "msg_id": id,
                "queue": queue_id, "offset": queue_offset, "input": input,
            }));
        } else {
            println!(
                "{} id={id} queue={queue_id} offset={queue_offset} input={input}",
                result.status
            );
        }
    }
}

/// How `keel send` waits for its answers.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    Sync,
    Async,
    Oneway,
}
