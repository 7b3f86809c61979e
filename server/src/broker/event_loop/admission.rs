//! The one place every request passes before it is carried out: a LOGIN goes to the
//! security thread, anything else needs a principal that holds its permissions.

use super::*;

impl EventLoop {
    /// The one place every request passes before it is carried out: a login goes to
    /// the security thread; anything else needs a logged-in principal (or `auth` off or
    /// optional) that still exists and holds every permission the request needs.
    /// Returns whether the shard may carry it out.
    pub(super) fn admit(&mut self, to: ReplyTo, oneway: bool, request: &Request) -> bool {
        // Logins off (the default): every request but the security ones goes through,
        // without touching anything the loops share.
        if self.broker.security.authority.mode() == keel_security::AuthMode::Off
            && !matches!(request, Request::Login(_) | Request::SecurityAdmin(_))
        {
            return true;
        }
        let authority = self.broker.security.authority.clone();
        let Some(connection) = self.connections.get_mut(to.key) else {
            return false;
        };
        if let Request::Login(login) = request {
            if matches!(
                connection.principal.as_ref().map(|p| &p.credential),
                Some(
                    keel_security::Credential::Password { .. }
                        | keel_security::Credential::Token { .. }
                        | keel_security::Credential::ClusterToken
                )
            ) {
                let message = "this connection has logged in already";
                self.shard
                    .reply(to, Response::error(ErrorCode::InvalidArgument, message));
                return false;
            }
            let job = Job::Login {
                to,
                login: login.clone(),
                peer: connection.peer(),
                secure: connection.stream.is_secure(),
            };
            match self.security.submit(job) {
                Ok(()) => connection.login_pending = true,
                Err(response) => self.shard.reply(to, response),
            }
            return false;
        }
        let Some(principal) = connection.principal.as_ref() else {
            if matches!(request, Request::Ping) {
                return true;
            }
            let message = format!(
                "{} before LOGIN: this broker requires a login (auth = \"required\")",
                request.kind().name()
            );
            self.refuse_unauthenticated(to, oneway, &message);
            return false;
        };
        let version = authority.generation();
        if connection.principal_version != version {
            if !authority.still_valid(principal) {
                let message = format!(
                    "the credential {} logged in with was revoked or removed",
                    principal.name
                );
                self.refuse_unauthenticated(to, oneway, &message);
                return false;
            }
            connection.principal_version = version;
        }
        if let Some(missing) = crate::broker::permissions::refusal(&authority, principal, request) {
            self.broker
                .counters
                .permission_denied
                .fetch_add(1, Ordering::Relaxed);
            let message = format!(
                "{} may not {} {}:{} ({} needs it)",
                principal.name,
                missing.action.name(),
                missing.resource.name(),
                missing.name,
                request.kind().name()
            );
            log::warn!("refused from {}: {message}", connection.peer());
            // A oneway request gets no answer, a refusal included (the client would take
            // an error for no request of its own as the connection's end).
            if oneway {
                return false;
            }
            self.shard
                .reply(to, Response::error(ErrorCode::PermissionDenied, message));
            return false;
        }
        if let Request::SecurityAdmin(command) = request {
            let job = Job::Admin {
                to,
                principal: principal.name.clone(),
                peer: connection.peer(),
                command: command.0.clone(),
            };
            if let Err(response) = self.security.submit(job) {
                self.shard.reply(to, response);
            }
            return false;
        }
        true
    }

    /// Answers of the security thread: a login's principal is set before its answer is
    /// queued, and the connection is read again.
    pub(super) fn take_security_answers(&mut self) {
        while let Ok(Done {
            to,
            response,
            principal,
            generation,
            close,
        }) = self.security.done.try_recv()
        {
            let Some(connection) = self.connections.get_mut(to.key) else {
                continue;
            };
            if connection.id != to.connection_id {
                continue;
            }
            if connection.login_pending {
                connection.login_pending = false;
                let counter = match principal {
                    Some(_) => &self.broker.counters.logins_ok,
                    None => &self.broker.counters.logins_failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.ready.push(to.key);
            }
            if let Some(principal) = principal {
                connection.principal = Some(principal);
                // The state the login was checked against: a change since (a revoked
                // token) is looked at by the connection's next request.
                connection.principal_version = generation;
            }
            if close {
                if let Response::Error(error) = &response {
                    let message = error.message.clone();
                    self.fail_connection(to.key, to.request_id, error.code, &message);
                }
                continue;
            }
            self.shard.reply(to, response);
        }
        self.deliver_outbox();
    }

    /// A request from a connection without a (still valid) login: counted, answered
    /// NOT_AUTHENTICATED and the connection closed; a oneway one is never answered, a
    /// refusal included: dropped, and the connection closed without an ERROR frame
    /// (docs/PROTOCOL.md, LOGIN).
    fn refuse_unauthenticated(&mut self, to: ReplyTo, oneway: bool, message: &str) {
        self.broker
            .counters
            .unauthenticated_requests
            .fetch_add(1, Ordering::Relaxed);
        if oneway {
            if let Some(connection) = self.connections.get(to.key) {
                log::warn!(
                    "closing connection from {}: oneway: {message}",
                    connection.peer()
                );
            }
            self.close_quietly(to.key);
            return;
        }
        self.fail_connection(to.key, to.request_id, ErrorCode::NotAuthenticated, message);
    }
}
