//! Accepting connections: handed round the loops, counted against the connection caps,
//! registered with the loop that serves them.

use super::*;

impl EventLoop {
    pub(super) fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (mut socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // EMFILE and friends: keep serving the connections we have.
                    log::warn!("accept failed: {error}");
                    return;
                }
            };
            let counters = &self.broker.counters;
            if counters.connections.load(Ordering::Relaxed) >= self.broker.config.max_connections {
                log::warn!("refusing connection from {peer}: max_connections reached");
                let mut frame = Vec::new();
                Response::error(ErrorCode::TooManyConnections, "max_connections reached")
                    .encode(0, &mut frame);
                let _ = io::Write::write(&mut socket, &frame);
                continue;
            }
            if !self.admit_address(peer) {
                log::warn!(
                    "refusing connection from {peer}: max_connections_per_ip ({}) reached",
                    self.broker.config.security.max_connections_per_ip
                );
                continue;
            }
            let _ = socket.set_nodelay(true);
            let target = self.next_handoff % self.handoffs.len().max(1);
            self.next_handoff = self.next_handoff.wrapping_add(1);
            match self.handoffs.get(target) {
                Some(handoff) if target != self.index => {
                    if handoff.sender.send((socket, peer)).is_ok() {
                        let _ = handoff.waker.wake();
                    } else {
                        self.release_address(peer);
                    }
                }
                _ => self.register(socket, peer),
            }
        }
    }

    /// Counts a new connection from `peer` against `max_connections_per_ip`.
    pub(super) fn admit_address(&self, peer: SocketAddr) -> bool {
        let limit = self.broker.config.security.max_connections_per_ip;
        let mut counts = self
            .broker
            .connections_per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(peer.ip()).or_insert(0);
        if limit != 0 && *count >= limit {
            return false;
        }
        *count += 1;
        true
    }

    pub(super) fn release_address(&self, peer: SocketAddr) {
        let mut counts = self
            .broker
            .connections_per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&peer.ip()) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&peer.ip());
            }
        }
    }

    pub(super) fn register_incoming(&mut self) {
        while let Ok((socket, peer)) = self.incoming.try_recv() {
            self.register(socket, peer);
        }
    }

    pub(super) fn register(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        if self.drain_deadline.is_some() {
            self.release_address(peer);
            return;
        }
        let tls = match &self.broker.security.tls {
            Some(config) => match keel_security::rustls::ServerConnection::new(config.clone()) {
                Ok(tls) => Some(Box::new(tls)),
                Err(error) => {
                    log::warn!("cannot start TLS for {peer}: {error}");
                    self.release_address(peer);
                    return;
                }
            },
            None => None,
        };
        let counters = &self.broker.counters;
        let id = counters.connections_total.fetch_add(1, Ordering::Relaxed);
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(error) = self
            .poll
            .registry()
            .register(&mut socket, Token(key), interest)
        {
            log::warn!("cannot register connection from {peer}: {error}");
            self.release_address(peer);
            return;
        }
        let principal = self.broker.security.authority.initial_principal();
        let mut connection = Connection::new(id, socket, peer, tls, principal);
        connection.principal_version = self.broker.security.authority.generation();
        entry.insert(connection);
        counters.connections.fetch_add(1, Ordering::Relaxed);
        log::debug!("connection {id} from {peer} on loop {}", self.index);
    }
}
