//! Request handlers. Each takes the shard and one request of one connection, acts on
//! the store, and answers through the shard: now, or by leaving a pending entry that a
//! later turn answers. None touches a socket or blocks on the disk.

pub(crate) mod admin;
pub(crate) mod group;
pub(crate) mod message_info;
pub(crate) mod pull;
pub(crate) mod send;
pub(crate) mod transaction;
