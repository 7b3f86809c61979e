//! The thread that checks logins and carries out security admin requests off the event
//! loops (Argon2id takes milliseconds; a change is fsynced before it is answered).

use crate::broker::connection::ReplyTo;
use crate::broker::workers::{guarded, internal, Workers};
use keel_protocol::{ErrorCode, Login, Response};
use keel_security::{Authority, LoginError, Principal, SecurityCommand};
use mio::Waker;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

/// Logins and admin requests waiting for the security thread; past this, new ones are
/// refused (OVERLOADED) instead of queueing without bound.
const JOBS_MAX: usize = 1024;

/// Work for the security thread.
pub(crate) enum Job {
    Login {
        to: ReplyTo,
        login: Login,
        peer: SocketAddr,
        /// Over TLS or from loopback.
        secure: bool,
    },
    Admin {
        to: ReplyTo,
        principal: String,
        peer: SocketAddr,
        command: String,
    },
}

/// A job's outcome, for the loop that owns the connection.
pub(crate) struct Done {
    pub to: ReplyTo,
    pub response: Response,
    /// A login that succeeded: the connection's principal from now on.
    pub principal: Option<Principal>,
    /// The security state's generation before the login was checked.
    pub generation: u64,
    /// The connection is closed once the answer is written (a failed login).
    pub close: bool,
}

/// Where a loop sends jobs, and gets their outcomes.
pub(crate) struct SecurityLink {
    workers: Arc<Workers>,
    authority: Arc<Authority>,
    read_only: ReadOnly,
    outbox: Sender<Done>,
    waker: Arc<Waker>,
    pub done: Receiver<Done>,
}

/// Why security changes are refused on this broker now (a slave), if they are.
type ReadOnly = Arc<dyn Fn() -> Option<String> + Send + Sync>;

impl SecurityLink {
    /// Queues a job; `Err` with the answer when the queue is full. A job that panics is
    /// answered INTERNAL and its connection closed.
    pub fn submit(&self, job: Job) -> Result<(), Response> {
        let (authority, read_only) = (self.authority.clone(), self.read_only.clone());
        let (outbox, waker) = (self.outbox.clone(), self.waker.clone());
        let (to, login) = match &job {
            Job::Login { to, .. } => (*to, true),
            Job::Admin { to, .. } => (*to, false),
        };
        let submitted = self.workers.submit(move || {
            let done = guarded(
                "a security job",
                || run_job(&authority, job, read_only.as_ref()),
                |panic| Done {
                    to,
                    response: internal("the security request", panic),
                    principal: None,
                    generation: 0,
                    // A login that could not be checked leaves the connection without a
                    // principal: closed, as after any failed login.
                    close: login,
                },
            );
            if outbox.send(done).is_ok() {
                let _ = waker.wake();
            }
        });
        submitted.map_err(|refused| self.workers.refusal(refused))
    }
}

/// Starts the security thread (one worker: changes apply in the order they came);
/// returns one link per loop (`wakers[i]` wakes loop i).
pub(crate) fn start(
    authority: Arc<Authority>,
    wakers: Vec<Arc<Waker>>,
    read_only: ReadOnly,
) -> std::io::Result<Vec<SecurityLink>> {
    let workers = Arc::new(Workers::start("security", 1, JOBS_MAX)?);
    let links = wakers
        .into_iter()
        .map(|waker| {
            let (outbox, done) = std::sync::mpsc::channel();
            SecurityLink {
                workers: workers.clone(),
                authority: authority.clone(),
                read_only: read_only.clone(),
                outbox,
                waker,
                done,
            }
        })
        .collect();
    Ok(links)
}

fn run_job(
    authority: &Authority,
    job: Job,
    read_only: &(dyn Fn() -> Option<String> + Send + Sync),
) -> Done {
    match job {
        Job::Login {
            to,
            login,
            peer,
            secure,
        } => {
            let generation = authority.generation();
            let (outcome, who) = match &login {
                Login::Password { user, password } => (
                    authority.login_password(user, password, peer.ip(), secure),
                    format!("user {user:?}"),
                ),
                Login::Token(token) => (
                    authority.login_token(keel_security::Port::Client, token, peer.ip(), secure),
                    "a token".to_string(),
                ),
            };
            match outcome {
                Ok(principal) => {
                    log::info!("{peer} logged in as {} ({who})", principal.name);
                    Done {
                        to,
                        response: Response::LoginOk(principal.name.clone()),
                        principal: Some(principal),
                        generation,
                        close: false,
                    }
                }
                Err(error) => {
                    log::warn!("login refused from {peer} ({who}): {error}");
                    let code = match error {
                        LoginError::BadCredentials => ErrorCode::AuthenticationFailed,
                        LoginError::RateLimited { .. } => ErrorCode::TooManyLoginFailures,
                        LoginError::NeedsTls => ErrorCode::TlsRequired,
                    };
                    Done {
                        to,
                        response: Response::error(code, error.to_string()),
                        principal: None,
                        generation,
                        close: true,
                    }
                }
            }
        }
        Job::Admin {
            to,
            principal,
            peer,
            command,
        } => {
            let answer = match SecurityCommand::from_json(&command) {
                Err(detail) => Err(Response::error(ErrorCode::InvalidArgument, detail)),
                Ok(command) => match read_only().filter(|_| command.changes_state()) {
                    Some(why) => Err(Response::error(ErrorCode::NotMaster, why)),
                    None => {
                        let summary = describe(&command);
                        let applied = authority.apply(command).map_err(|error| {
                            // The request's fault, or the broker's (its file, its RNG):
                            // either way nothing changed.
                            let code = match error.is_request_error() {
                                true => ErrorCode::InvalidArgument,
                                false => ErrorCode::Internal,
                            };
                            Response::error(code, error.to_string())
                        });
                        if applied.is_ok() && !summary.is_empty() {
                            log::warn!("security change by {principal} from {peer}: {summary}");
                        }
                        applied
                    }
                },
            };
            let response = match answer {
                Ok(reply) => Response::SecurityResult(keel_protocol::SecretText(reply.to_json())),
                Err(response) => response,
            };
            Done {
                to,
                response,
                principal: None,
                generation: 0,
                close: false,
            }
        }
    }
}

/// A change, for the log (never a password or token).
fn describe(command: &SecurityCommand) -> String {
    match command {
        SecurityCommand::UserAdd { name, .. } => format!("add user {name}"),
        SecurityCommand::UserPasswd { name, .. } => format!("change the password of {name}"),
        SecurityCommand::UserRemove { name } => format!("remove user {name}"),
        SecurityCommand::TokenCreate { name } => format!("create a token for {name}"),
        SecurityCommand::TokenRevoke { id } => format!("revoke token {id}"),
        SecurityCommand::AclGrant { entry } => format!("grant {entry}"),
        SecurityCommand::AclRevoke { entry } => format!("revoke {entry}"),
        SecurityCommand::UserList | SecurityCommand::TokenList | SecurityCommand::AclList => {
            String::new()
        }
    }
}
