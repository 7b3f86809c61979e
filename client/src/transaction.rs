//! Transactions: a producer sends a half message (stored at once, invisible), runs its
//! local transaction, then commits or rolls it back; a checker answers the broker's
//! checks of transactions whose end never arrived (the producer died, the answer was
//! lost).
//!
//! ```no_run
//! use keel_client::{LocalTransactionState, Message, TransactionProducer};
//! let producer = TransactionProducer::connect(
//!     "127.0.0.1:10911",
//!     "payments",
//!     Default::default(),
//!     |_message, _transaction_id| LocalTransactionState::Commit, // look it up
//! )?;
//! let outcome = producer.send_in_transaction(Message::new("orders", "paid"), |_id| {
//!     // the local transaction, e.g. a database commit
//!     LocalTransactionState::Commit
//! })?;
//! println!("{outcome:?}");
//! # Ok::<(), keel_client::ClientError>(())
//! ```

use crate::connection::Connection;
use crate::{ClientError, Endpoint, Message, Producer, ProducerOptions, SendStatus};
use keel_protocol::names::property;
use keel_protocol::{EndTransactionRequest, Request, Response, TxAction};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What the local transaction (or the checker) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalTransactionState {
    Commit,
    Rollback,
    /// Not known yet: the broker asks again (a check) later.
    Unknown,
}

/// How `send_in_transaction` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionOutcome {
    /// Committed: the message is in its topic, once (durably).
    Committed { transaction_id: u64 },
    /// Rolled back: it never reaches a consumer.
    RolledBack { transaction_id: u64 },
    /// Open: the local transaction said `Unknown`, or its end was not confirmed
    /// (`error`: not delivered in `end_attempts`, not known to be durable, or refused).
    /// The broker's checks resolve it through the checker; a refused end may mean the
    /// broker ended it already (`Admin::list_transactions` no longer shows it,
    /// `keel message show` tells how it ended).
    Open {
        transaction_id: u64,
        error: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct TransactionProducerOptions {
    /// For the half messages' sends (retries, idempotence, timeouts).
    pub producer: ProducerOptions,
    /// How often the checker asks the broker for due checks.
    pub check_poll: Duration,
    /// Attempts of an END_TRANSACTION before the transaction is left to the checks.
    pub end_attempts: u32,
    pub request_timeout: Duration,
}

impl Default for TransactionProducerOptions {
    fn default() -> TransactionProducerOptions {
        TransactionProducerOptions {
            producer: ProducerOptions::default(),
            check_poll: Duration::from_secs(1),
            end_attempts: 3,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A producer of one producer group that sends in transactions against one broker
/// (the half message and its end go to the same broker), with a checker thread.
pub struct TransactionProducer {
    producer: Producer,
    group: String,
    endpoint: Endpoint,
    options: TransactionProducerOptions,
    stop: Arc<AtomicBool>,
    checker: Option<JoinHandle<()>>,
    /// Checks answered by the checker (commit or rollback sent).
    checks_answered: Arc<AtomicU64>,
}

type Checker = dyn Fn(&Message, u64) -> LocalTransactionState + Send + Sync;

impl TransactionProducer {
    /// Connects to `address` as a producer of `producer_group`; `checker` answers the
    /// broker's checks: given the message as sent and its transaction id, the state of
    /// the local transaction.
    pub fn connect(
        address: &str,
        producer_group: &str,
        options: TransactionProducerOptions,
        checker: impl Fn(&Message, u64) -> LocalTransactionState + Send + Sync + 'static,
    ) -> Result<TransactionProducer, ClientError> {
        if producer_group.is_empty() {
            return Err(ClientError::InvalidArgument(
                "a producer group is needed".into(),
            ));
        }
        let endpoint = Endpoint::resolve(address)?;
        let producer = Producer::connect(address, options.producer.clone())?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let checker: Arc<Checker> = Arc::new(checker);
        let thread = {
            let (endpoint, group, stop, answered) = (
                endpoint.clone(),
                producer_group.to_string(),
                stop.clone(),
                answered.clone(),
            );
            let (connection_options, poll, timeout) = (
                options.producer.connection.clone(),
                options.check_poll,
                options.request_timeout,
            );
            std::thread::Builder::new()
                .name("keel-tx-checker".into())
                .spawn(move || {
                    let mut connection: Option<Connection> = None;
                    while !stop.load(Ordering::Acquire) {
                        let live = match connection.take() {
                            Some(live) if !live.is_closed() => Some(live),
                            _ => Connection::connect(endpoint.clone(), &connection_options).ok(),
                        };
                        if let Some(live) = live {
                            let more = check_once(&live, &group, checker.as_ref(), timeout);
                            match more {
                                Ok(count) => {
                                    answered.fetch_add(count, Ordering::Relaxed);
                                }
                                Err(error) => {
                                    log::warn!("transaction checks of {group}: {error}")
                                }
                            }
                            connection = Some(live);
                        }
                        let mut waited = Duration::ZERO;
                        while waited < poll && !stop.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(20));
                            waited += Duration::from_millis(20);
                        }
                    }
                })
                .map_err(|e| ClientError::InvalidArgument(format!("cannot start a thread: {e}")))?
        };
        Ok(TransactionProducer {
            producer,
            group: producer_group.to_string(),
            endpoint,
            options,
            stop,
            checker: Some(thread),
            checks_answered: answered,
        })
    }

    /// How many of the broker's checks the checker answered with a commit or rollback.
    pub fn checks_answered(&self) -> u64 {
        self.checks_answered.load(Ordering::Relaxed)
    }

    /// Sends `message` as a half message, runs `local` with its transaction id, and
    /// ends the transaction as `local` says. An error means the half message was not
    /// stored (or its outcome is unknown): `local` did not run.
    pub fn send_in_transaction(
        &self,
        mut message: Message,
        local: impl FnOnce(u64) -> LocalTransactionState,
    ) -> Result<TransactionOutcome, ClientError> {
        message
            .properties
            .retain(|(key, _)| key != property::TRANSACTION);
        message
            .properties
            .push((property::TRANSACTION.to_string(), self.group.clone()));
        message.seal();
        let topic = message.topic.clone();
        let sent = self.producer.send(message)?;
        if sent.status != SendStatus::SendOk {
            return Err(ClientError::InvalidArgument(format!(
                "the half message was answered {} (not SEND_OK): the local transaction did \
                 not run",
                sent.status
            )));
        }
        let transaction_id = sent.log_offset;
        let action = match local(transaction_id) {
            LocalTransactionState::Commit => TxAction::Commit,
            LocalTransactionState::Rollback => TxAction::Rollback,
            LocalTransactionState::Unknown => {
                return Ok(TransactionOutcome::Open {
                    transaction_id,
                    error: None,
                })
            }
        };
        let request = EndTransactionRequest {
            producer_group: self.group.clone(),
            topic,
            transaction_id,
            action,
        };
        let mut last = String::new();
        for _ in 0..self.options.end_attempts.max(1) {
            match self.end(&request) {
                Ok(_) => {
                    return Ok(match action {
                        TxAction::Commit => TransactionOutcome::Committed { transaction_id },
                        TxAction::Rollback => TransactionOutcome::RolledBack { transaction_id },
                    })
                }
                Err(error) if error.is_retryable() || error.is_outcome_unknown() => {
                    last = error.to_string();
                    std::thread::sleep(Duration::from_millis(200));
                }
                // Refused (the broker ended it before, the other way: its checks ran
                // out): the transaction is not open, but not as `local` said either.
                Err(error) => {
                    return Ok(TransactionOutcome::Open {
                        transaction_id,
                        error: Some(error.to_string()),
                    })
                }
            }
        }
        Ok(TransactionOutcome::Open {
            transaction_id,
            error: Some(last),
        })
    }

    fn end(
        &self,
        request: &EndTransactionRequest,
    ) -> Result<keel_protocol::TransactionEnded, ClientError> {
        let connection =
            Connection::connect(self.endpoint.clone(), &self.options.producer.connection)?;
        end_on(&connection, request, self.options.request_timeout)
    }

    /// Stops the checker; open transactions stay for another producer of the group.
    pub fn shutdown(mut self) {
        self.stop_checker();
    }

    fn stop_checker(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.checker.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TransactionProducer {
    fn drop(&mut self) {
        self.stop_checker();
    }
}

fn end_on(
    connection: &Connection,
    request: &EndTransactionRequest,
    timeout: Duration,
) -> Result<keel_protocol::TransactionEnded, ClientError> {
    match connection.call(&Request::EndTransaction(request.clone()), timeout)? {
        Response::TransactionEnded(ended) => Ok(ended),
        Response::Error(error) => Err(end_error(ClientError::Broker(error))),
        other => Err(ClientError::Protocol(format!(
            "{} in reply to END_TRANSACTION",
            other.kind().name()
        ))),
    }
}

/// An END_TRANSACTION's error as what it means: STORAGE_FAILED is an end that may or
/// may not have happened (not durable in time), not a refusal.
pub(crate) fn end_error(error: ClientError) -> ClientError {
    match error {
        ClientError::Broker(refusal) if refusal.code == keel_protocol::ErrorCode::StorageFailed => {
            ClientError::OutcomeUnknown(format!(
                "the end may or may not have happened ({}); ask again: an end that \
                 happened is answered `already`",
                refusal.message
            ))
        }
        other => other,
    }
}

/// Asks once for due checks and answers them; how many were ended.
fn check_once(
    connection: &Connection,
    group: &str,
    checker: &Checker,
    timeout: Duration,
) -> Result<u64, ClientError> {
    let request = Request::CheckTransactions {
        producer_group: group.to_string(),
        max: 16,
    };
    let checks = match connection.call(&request, timeout)? {
        Response::TransactionChecks(checks) => checks,
        Response::Error(error) => return Err(ClientError::Broker(error)),
        other => {
            return Err(ClientError::Protocol(format!(
                "{} in reply to CHECK_TRANSACTIONS",
                other.kind().name()
            )))
        }
    };
    let mut ended = 0;
    for check in checks {
        let action = match checker(&check.message, check.transaction_id) {
            LocalTransactionState::Commit => TxAction::Commit,
            LocalTransactionState::Rollback => TxAction::Rollback,
            LocalTransactionState::Unknown => continue,
        };
        let request = EndTransactionRequest {
            producer_group: group.to_string(),
            topic: check.message.topic.clone(),
            transaction_id: check.transaction_id,
            action,
        };
        end_on(connection, &request, timeout)?;
        ended += 1;
    }
    Ok(ended)
}
