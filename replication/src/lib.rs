//! keel replication: master-side streaming of CommitLog bytes and slave-side applying,
//! as state machines without sockets (the server drives them).
//!
//! Not built yet: keeld refuses `role = "sync_master" | "async_master" | "slave"` until
//! it is. This crate exists so the workspace has its final shape.
