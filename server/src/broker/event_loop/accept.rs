//! Accepting connections: counted against the client port's caps (a ticket of its
//! census travels with each one), handed round the loops, registered with the loop that
//! serves them.

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
            let ticket = match self.broker.census.admit(peer.ip()) {
                Ok(ticket) => ticket,
                Err(refused @ keel_net::Refused::Full(_)) => {
                    log::warn!("refusing connection from {peer}: max_connections: {refused}");
                    let mut frame = Vec::new();
                    Response::error(ErrorCode::TooManyConnections, "max_connections reached")
                        .encode(0, &mut frame);
                    let _ = io::Write::write(&mut socket, &frame);
                    continue;
                }
                Err(refused) => {
                    log::warn!(
                        "refusing connection from {peer}: max_connections_per_ip: {refused}"
                    );
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let target = self.next_handoff % self.handoffs.len().max(1);
            self.next_handoff = self.next_handoff.wrapping_add(1);
            match self.handoffs.get(target) {
                Some(handoff) if target != self.index => {
                    // A loop that is gone drops the connection, and its ticket.
                    if handoff.sender.send((socket, peer, ticket)).is_ok() {
                        let _ = handoff.waker.wake();
                    }
                }
                _ => self.register(socket, peer, ticket),
            }
        }
    }

    pub(super) fn register_incoming(&mut self) {
        while let Ok((socket, peer, ticket)) = self.incoming.try_recv() {
            self.register(socket, peer, ticket);
        }
    }

    pub(super) fn register(
        &mut self,
        mut socket: TcpStream,
        peer: SocketAddr,
        ticket: keel_net::Ticket,
    ) {
        if self.drain_deadline.is_some() {
            return;
        }
        let tls = match &self.broker.security.tls {
            Some(config) => match keel_security::rustls::ServerConnection::new(config.clone()) {
                Ok(tls) => Some(Box::new(tls)),
                Err(error) => {
                    log::warn!("cannot start TLS for {peer}: {error}");
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
            return;
        }
        let principal = self.broker.security.authority.initial_principal();
        let mut connection = Connection::new(id, socket, peer, tls, principal, ticket);
        connection.principal_version = self.broker.security.authority.generation();
        entry.insert(connection);
        counters.connections.fetch_add(1, Ordering::Relaxed);
        log::debug!("connection {id} from {peer} on loop {}", self.index);
    }
}
