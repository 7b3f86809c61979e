//! keel client: a pipelined connection, a `Producer` (sync, async, oneway sends with
//! retries inside one send budget) and a pull `Consumer` that checks every record's
//! CRC32C and commits an offset only after the handler succeeded.
//!
//! ```no_run
//! use keel_client::{Consumer, ConsumerOptions, Message, Producer, ProducerOptions};
//! let producer = Producer::connect("127.0.0.1:10911", ProducerOptions::default())?;
//! let result = producer.send(Message::new("orders", "hello").with_tags("TagA"))?;
//! println!("{} {}", result.status, result.message_id());
//! let mut consumer = Consumer::connect("127.0.0.1:10911", "billing", "orders", ConsumerOptions::default())?;
//! consumer.poll(|record| {
//!     println!("{:?}", record.payload);
//!     Ok::<(), String>(())
//! })?;
//! # Ok::<(), keel_client::ClientError>(())
//! ```

mod admin;
mod connection;
mod consumer;
mod error;
mod producer;
mod push;
mod records;
mod routing;
mod timer;
mod transaction;

pub use admin::Admin;
pub use connection::{Connection, ConnectionOptions, Credentials};
pub use consumer::{Consumer, ConsumerOptions, PollOutcome};
pub use error::ClientError;
pub use keel_protocol::{
    message_id, BrokerRole, BrokerRoute, ErrorCode, Message, Record, SendBatchResult, SendResult,
    SendStatus,
};
pub use keel_security::ClientTls;
pub use producer::{Producer, ProducerOptions, SendHandle};
pub use push::{
    ConsumeResult, Delivery, DiscoveringPushConsumer, DiscoveryOptions, IntoConsumeResult,
    PushConsumer, PushConsumerOptions, PushStats, StartFrom,
};
pub use routing::{fetch_brokers, fetch_routes, MasterRoute};
pub use transaction::{
    LocalTransactionState, TransactionOutcome, TransactionProducer, TransactionProducerOptions,
};

use std::net::{SocketAddr, ToSocketAddrs};

/// A broker or name server as given (`host:port`) and the address it resolved to. The
/// name is what TLS verifies the server's certificate against (unless
/// `ClientTls::server_name` says otherwise): `localhost:10911` checks `localhost`, not
/// `127.0.0.1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub name: String,
    pub address: SocketAddr,
}

impl Endpoint {
    /// Resolves `host:port` (the first address the resolver gives).
    pub fn resolve(name: &str) -> Result<Endpoint, ClientError> {
        Ok(Endpoint {
            name: name.to_string(),
            address: resolve(name)?,
        })
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(address: SocketAddr) -> Endpoint {
        Endpoint {
            name: address.to_string(),
            address,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Resolves `host:port` to one address (the first the resolver gives).
pub fn resolve(address: &str) -> Result<SocketAddr, ClientError> {
    address
        .to_socket_addrs()
        .map_err(|error| {
            ClientError::InvalidArgument(format!("cannot resolve {address:?}: {error}"))
        })?
        .next()
        .ok_or_else(|| ClientError::InvalidArgument(format!("{address:?} resolves to no address")))
}
