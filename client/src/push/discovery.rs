//! A push consumer of a topic on every master the name servers route it to: one
//! `PushConsumer` per broker group, started when a group's master appears and restarted
//! on the new master when a group fails over (the group's offsets were replicated to it,
//! so delivery goes on where it was committed: at least once, never a skip).

use super::model::{Delivery, IntoConsumeResult, PushConsumerOptions};
use super::PushConsumer;
use crate::{fetch_routes, ClientError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Options of a `DiscoveringPushConsumer`: each group's consumer's, and how often routes
/// are asked for.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    pub consumer: PushConsumerOptions,
    /// Routes are fetched this often, and every `LOST_REFRESH` while a group's
    /// consumer has lost its broker (a failover: the new master is consumed as soon as
    /// the name servers know it).
    pub route_refresh: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> DiscoveryOptions {
        DiscoveryOptions {
            consumer: PushConsumerOptions::default(),
            route_refresh: Duration::from_secs(2),
        }
    }
}

type Handler<R> = Arc<dyn Fn(&Delivery) -> R + Send + Sync>;

/// How often routes are fetched while a group's consumer cannot reach its broker: at
/// first every 100 ms (a failover is over within a second of the election), after 10 s
/// every second (a broker that stays down does not make every consumer ask ten times a
/// second).
const LOST_REFRESH: Duration = Duration::from_millis(100);
const LOST_REFRESH_LATER: Duration = Duration::from_secs(1);
const LOST_FAST_FOR: Duration = Duration::from_secs(10);

/// One consumer per broker group, keyed by broker name, with the master it reads.
struct Running {
    address: String,
    consumer: PushConsumer,
}

pub struct DiscoveringPushConsumer {
    stop: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<()>>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    running: HashMap<String, Running>,
    /// Deliveries handled by consumers that were replaced.
    handled_before: u64,
    errors: Vec<ClientError>,
}

impl DiscoveringPushConsumer {
    /// Consumes `topic` as `group` on every master that has it, as the name servers say,
    /// following failovers, until `shutdown`.
    pub fn start<F, R>(
        name_servers: &[&str],
        group: &str,
        topic: &str,
        options: DiscoveryOptions,
        handler: F,
    ) -> Result<DiscoveringPushConsumer, ClientError>
    where
        F: Fn(&Delivery) -> R + Send + Sync + 'static,
        R: IntoConsumeResult + 'static,
    {
        if name_servers.is_empty() {
            return Err(ClientError::InvalidArgument("no name server given".into()));
        }
        keel_protocol::validate_topic(group)
            .map_err(|detail| ClientError::InvalidArgument(format!("invalid group: {detail}")))?;
        keel_protocol::validate_topic(topic)
            .map_err(|detail| ClientError::InvalidArgument(format!("invalid topic: {detail}")))?;
        let mut options = options;
        // One member id for every group's consumer: this process is one member.
        if options.consumer.member_id.is_none() {
            options.consumer.member_id = Some(super::model::default_member_id());
        }
        let name_servers: Vec<String> = name_servers.iter().map(|s| s.to_string()).collect();
        let handler: Handler<R> = Arc::new(handler);
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State::default()));
        let (group, topic) = (group.to_string(), topic.to_string());
        let supervisor = {
            let (stop, state) = (stop.clone(), state.clone());
            std::thread::Builder::new()
                .name("keel-discovery".into())
                .spawn(move || {
                    supervise(
                        &name_servers,
                        &group,
                        &topic,
                        &options,
                        &handler,
                        &stop,
                        &state,
                    )
                })
                .map_err(|e| ClientError::InvalidArgument(format!("cannot start: {e}")))?
        };
        Ok(DiscoveringPushConsumer {
            stop,
            supervisor: Some(supervisor),
            state,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The masters consumed now, by broker group.
    pub fn masters(&self) -> Vec<(String, String)> {
        let mut masters: Vec<_> = self
            .lock()
            .running
            .iter()
            .map(|(name, running)| (name.clone(), running.address.clone()))
            .collect();
        masters.sort();
        masters
    }

    /// Deliveries handled successfully so far, on every master.
    pub fn handled(&self) -> u64 {
        let state = self.lock();
        state.handled_before
            + state
                .running
                .values()
                .map(|r| r.consumer.stats().handled.load(Ordering::Relaxed))
                .sum::<u64>()
    }

    /// What the consumers could not handle by themselves, and failed route lookups.
    pub fn errors(&self) -> Vec<ClientError> {
        let state = self.lock();
        let mut errors = state.errors.clone();
        for running in state.running.values() {
            errors.extend(running.consumer.errors());
        }
        errors
    }

    /// Stops every group's consumer (each commits and leaves its group).
    pub fn shutdown(mut self) -> Result<(), ClientError> {
        self.stop.store(true, Ordering::Release);
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
        let running: Vec<Running> = self.lock().running.drain().map(|(_, r)| r).collect();
        let mut outcome = Ok(());
        for running in running {
            if let Err(error) = running.consumer.shutdown() {
                outcome = Err(error);
            }
        }
        outcome
    }
}

impl Drop for DiscoveringPushConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
    }
}

fn supervise<R: IntoConsumeResult + 'static>(
    name_servers: &[String],
    group: &str,
    topic: &str,
    options: &DiscoveryOptions,
    handler: &Handler<R>,
    stop: &AtomicBool,
    state: &Mutex<State>,
) {
    let next = AtomicUsize::new(0);
    let lock = || state.lock().unwrap_or_else(|poison| poison.into_inner());
    let mut failing = false;
    let mut lost_since: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        let started = Instant::now();
        let tls = options.consumer.connection.tls.as_ref();
        match fetch_routes(name_servers, &next, topic, Duration::from_secs(3), tls) {
            Ok(routes) => {
                failing = false;
                // The master of each group that has the topic, and the group's slaves as
                // fallbacks (a consumer reads a slave while its master is down).
                let mut masters: HashMap<String, (String, Vec<String>)> = HashMap::new();
                for route in routes
                    .iter()
                    .filter(|r| r.role.is_master() && r.topic_queues > 0)
                {
                    masters
                        .entry(route.broker_name.clone())
                        .or_insert_with(|| (route.address.clone(), Vec::new()));
                }
                for route in routes.iter().filter(|r| !r.role.is_master()) {
                    if let Some((_, slaves)) = masters.get_mut(&route.broker_name) {
                        slaves.push(route.address.clone());
                    }
                }
                for (name, (address, slaves)) in masters {
                    let current = lock().running.get(&name).map(|r| r.address.clone());
                    if current.as_deref() == Some(address.as_str()) {
                        continue;
                    }
                    let replaced = lock().running.remove(&name);
                    if let Some(old) = replaced {
                        log::info!(
                            "{name}: its master moved from {} to {address}; consuming there",
                            old.address
                        );
                        let handled = old.consumer.stats().handled.load(Ordering::Relaxed);
                        lock().handled_before += handled;
                        // Its broker is gone or deposed: what it had not committed is
                        // delivered again by the new master (at least once).
                        drop(old.consumer);
                    }
                    let mut consumer_options = options.consumer.clone();
                    consumer_options.fallback_brokers = slaves;
                    let handler = handler.clone();
                    match PushConsumer::start(
                        &address,
                        group,
                        topic,
                        consumer_options,
                        move |delivery: &Delivery| handler(delivery),
                    ) {
                        Ok(consumer) => {
                            lock().running.insert(name, Running { address, consumer });
                        }
                        Err(error) => {
                            log::warn!("{name}: cannot consume from {address}: {error}");
                        }
                    }
                }
            }
            Err(error) => {
                if !failing {
                    log::warn!("cannot fetch the routes of {topic}: {error}");
                    lock().errors.push(error);
                }
                failing = true;
            }
        }
        let until = started + options.route_refresh;
        while !stop.load(Ordering::Acquire) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            let lost = lock()
                .running
                .values()
                .any(|r| r.consumer.stats().broker_lost.load(Ordering::Relaxed));
            if !lost {
                lost_since = None;
                continue;
            }
            let since = *lost_since.get_or_insert_with(Instant::now);
            let wait = match since.elapsed() < LOST_FAST_FOR {
                true => LOST_REFRESH,
                false => LOST_REFRESH_LATER,
            };
            if started.elapsed() >= wait {
                break;
            }
        }
    }
}
