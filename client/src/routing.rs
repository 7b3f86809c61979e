//! Finding masters through name servers, and avoiding brokers that failed or answered
//! slowly (latency fault avoidance).

use crate::connection::{Connection, ConnectionOptions};
use crate::{ClientError, Endpoint};
use keel_protocol::{BrokerRoute, Request, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A master that takes a topic, and how many queues the topic has there (0: the
/// topic does not exist there yet and the broker picks the queue when it creates it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRoute {
    pub broker_name: String,
    /// The address as the broker registered it (TLS verifies this name) and where it
    /// resolved.
    pub endpoint: Endpoint,
    pub queues: u32,
}

/// A topic's brokers as the producer routes to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TopicRoutes {
    /// The masters that take the topic.
    pub(crate) masters: Vec<MasterRoute>,
    /// Brokers (by name) that hold the topic but have no master now (failing over), and
    /// the topic's queue count there: message groups that go to them wait for their
    /// next master rather than move.
    pub(crate) headless: Vec<(String, u32)>,
}

/// A topic's masters as last fetched.
struct Cached {
    fetched: Instant,
    routes: Arc<TopicRoutes>,
    /// A send failed in a way that says the routes may be out of date (a master did not
    /// answer, or answered NOT_MASTER): fetch again before the next use.
    stale: bool,
}

/// How soon routes marked stale may be fetched again: while a failover is in
/// progress every failed send marks them, and the name servers are asked at most
/// this often (per topic and producer), not once per send.
const STALE_REFETCH_MIN: Duration = Duration::from_millis(100);

/// Asks name servers for routes (any one that answers) and caches them per topic.
pub(crate) struct Router {
    name_servers: Vec<String>,
    refresh: Duration,
    timeout: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    next: AtomicUsize,
    /// TLS to the name servers (like to the brokers).
    tls: Option<keel_security::ClientTls>,
}

impl Router {
    pub(crate) fn new(
        name_servers: Vec<String>,
        refresh: Duration,
        tls: Option<keel_security::ClientTls>,
    ) -> Router {
        Router {
            tls,
            name_servers,
            refresh,
            timeout: Duration::from_secs(3),
            cache: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Every broker the name servers know, with `topic`'s queue count on each.
    pub(crate) fn fetch(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Vec<BrokerRoute>, ClientError> {
        fetch_routes(
            &self.name_servers,
            &self.next,
            topic,
            timeout.min(self.timeout),
            self.tls.as_ref(),
        )
    }

    /// Marks `topic`'s routes out of date: the next `masters` asks the name servers
    /// (at most every `STALE_REFETCH_MIN`).
    pub(crate) fn invalidate(&self, topic: &str) {
        if let Some(cached) = self.lock().get_mut(topic) {
            cached.stale = true;
        }
    }

    /// The masters to send `topic` to: those that have it, or every master when none
    /// has it yet. Cached for `refresh`, or until a failure marks them stale; a failed
    /// fetch keeps the old routes. `timeout` bounds the asking.
    pub(crate) fn masters(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Arc<TopicRoutes>, ClientError> {
        let cached = self
            .lock()
            .get(topic)
            .map(|c| (c.fetched, c.stale, c.routes.clone()));
        if let Some((fetched, stale, routes)) = &cached {
            let age = fetched.elapsed();
            let fresh = !stale && age < self.refresh;
            let none = routes.masters.is_empty();
            if !none && (fresh || (*stale && age < STALE_REFETCH_MIN)) {
                return Ok(routes.clone());
            }
            // Asked a moment ago and found no master: not again yet (every send of a
            // failover gap would otherwise ask the name servers).
            if none && age < STALE_REFETCH_MIN {
                return Err(ClientError::NoRoute(format!(
                    "no master of topic {topic:?} was known {} ms ago",
                    age.as_millis()
                )));
            }
        }
        // Marked as fetched now, so that concurrent senders use these routes meanwhile
        // instead of all asking at once.
        if let Some(entry) = self.lock().get_mut(topic) {
            entry.fetched = Instant::now();
        }
        let routes = match self.fetch(topic, timeout) {
            Ok(routes) => routes,
            Err(error) => {
                return match cached {
                    Some((_, _, routes)) if !routes.masters.is_empty() => {
                        log::warn!(
                            "cannot refresh routes of {topic:?} ({error}); using the last ones"
                        );
                        Ok(routes)
                    }
                    _ => {
                        self.remember_none(topic);
                        Err(error)
                    }
                }
            }
        };
        let resolved = match masters_of(topic, &routes) {
            Ok(resolved) => Arc::new(resolved),
            Err(error) => {
                self.remember_none(topic);
                return Err(error);
            }
        };
        self.lock().insert(
            topic.to_string(),
            Cached {
                fetched: Instant::now(),
                routes: resolved.clone(),
                stale: false,
            },
        );
        Ok(resolved)
    }
}

impl Router {
    /// Notes that no master of `topic` could be found just now.
    fn remember_none(&self, topic: &str) {
        self.lock().insert(
            topic.to_string(),
            Cached {
                fetched: Instant::now(),
                routes: Arc::default(),
                stale: true,
            },
        );
    }
}

/// The masters of `routes` that have `topic` (every master when none has it yet),
/// resolved, and the brokers with the topic that have no master now.
fn masters_of(topic: &str, routes: &[BrokerRoute]) -> Result<TopicRoutes, ClientError> {
    let masters: Vec<&BrokerRoute> = routes.iter().filter(|r| r.role.is_master()).collect();
    let mut headless: Vec<(String, u32)> = Vec::new();
    for route in routes.iter().filter(|route| route.topic_queues > 0) {
        let has_master = masters
            .iter()
            .any(|master| master.broker_name == route.broker_name);
        if !has_master && !headless.iter().any(|(name, _)| *name == route.broker_name) {
            headless.push((route.broker_name.clone(), route.topic_queues));
        }
    }
    let with_topic: Vec<&BrokerRoute> = masters
        .iter()
        .copied()
        .filter(|route| route.topic_queues > 0)
        .collect();
    let chosen = if with_topic.is_empty() {
        masters
    } else {
        with_topic
    };
    let mut resolved = Vec::with_capacity(chosen.len());
    for route in chosen {
        match Endpoint::resolve(&route.address) {
            Ok(endpoint) => resolved.push(MasterRoute {
                broker_name: route.broker_name.clone(),
                endpoint,
                queues: route.topic_queues,
            }),
            Err(error) => log::warn!("skipping broker {}: {error}", route.broker_name),
        }
    }
    if resolved.is_empty() {
        return Err(ClientError::NoRoute(format!(
            "the name servers know no master for topic {topic:?}"
        )));
    }
    Ok(TopicRoutes {
        masters: resolved,
        headless,
    })
}

/// GET_ROUTES from the first name server that answers, starting after the last one used
/// (with TLS when `tls` is given; name servers need no login to answer it).
pub fn fetch_routes(
    name_servers: &[String],
    next: &AtomicUsize,
    topic: &str,
    timeout: Duration,
    tls: Option<&keel_security::ClientTls>,
) -> Result<Vec<BrokerRoute>, ClientError> {
    let request = Request::GetRoutes(topic.to_string());
    ask_name_servers(
        name_servers,
        next,
        &request,
        timeout,
        tls,
        |response| match response {
            Response::Routes(routes) => Ok(routes),
            other => Err(other),
        },
    )
}

/// Every broker a name server knows, with when it last heard from each (GET_BROKERS):
/// the name server's broker timeout (ms) and the brokers. Tries each name server in
/// turn, like `fetch_routes`.
pub fn fetch_brokers(
    name_servers: &[String],
    timeout: Duration,
    tls: Option<&keel_security::ClientTls>,
) -> Result<(u64, Vec<keel_protocol::BrokerLiveness>), ClientError> {
    let next = AtomicUsize::new(0);
    ask_name_servers(
        name_servers,
        &next,
        &Request::GetBrokers,
        timeout,
        tls,
        |response| match response {
            Response::Brokers {
                broker_timeout_ms,
                brokers,
            } => Ok((broker_timeout_ms, brokers)),
            other => Err(other),
        },
    )
}

/// Sends `request` to the name servers from `next` on until one answers as `pick`
/// takes it (an error answer or an unexpected kind tries the next one).
fn ask_name_servers<T>(
    name_servers: &[String],
    next: &AtomicUsize,
    request: &Request,
    timeout: Duration,
    tls: Option<&keel_security::ClientTls>,
    pick: impl Fn(Response) -> Result<T, Response>,
) -> Result<T, ClientError> {
    if name_servers.is_empty() {
        return Err(ClientError::InvalidArgument("no name server given".into()));
    }
    let start = next.load(Ordering::Relaxed);
    let mut last = ClientError::Timeout;
    for index in 0..name_servers.len() {
        let which = (start + index) % name_servers.len();
        let name_server = &name_servers[which];
        let outcome = Endpoint::resolve(name_server).and_then(|endpoint| {
            let options = ConnectionOptions {
                connect_timeout: timeout,
                tls: tls.cloned(),
                ..ConnectionOptions::default()
            };
            Connection::connect(endpoint, &options)?.call(request, timeout)
        });
        match outcome.map(&pick) {
            Ok(Ok(answer)) => {
                next.store(which, Ordering::Relaxed);
                return Ok(answer);
            }
            Ok(Err(Response::Error(error))) => last = ClientError::Broker(error),
            Ok(Err(other)) => {
                last = ClientError::Protocol(format!(
                    "{} in reply to {}",
                    other.kind().name(),
                    request.kind().name()
                ))
            }
            Err(error) => last = error,
        }
        log::debug!("name server {name_server} did not answer: {last}");
    }
    Err(last)
}

/// How long a broker is avoided after a send that took this long (RocketMQ's table).
const LATENCY_AVOIDANCE: [(Duration, Duration); 5] = [
    (Duration::from_millis(15_000), Duration::from_secs(600)),
    (Duration::from_millis(3_000), Duration::from_secs(180)),
    (Duration::from_millis(2_000), Duration::from_secs(120)),
    (Duration::from_millis(1_000), Duration::from_secs(60)),
    (Duration::from_millis(550), Duration::from_secs(30)),
];

/// Brokers to avoid, and until when.
pub(crate) struct FaultTracker {
    avoid_until: Mutex<HashMap<SocketAddr, Instant>>,
    isolation: Duration,
}

impl FaultTracker {
    pub(crate) fn new(isolation: Duration) -> FaultTracker {
        FaultTracker {
            avoid_until: Mutex::new(HashMap::new()),
            isolation,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Instant>> {
        self.avoid_until
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// After a send: a failure isolates the broker for `isolation`; a slow answer for
    /// a time that grows with its latency; a quick success clears it.
    pub(crate) fn record(&self, address: SocketAddr, latency: Duration, failed: bool) {
        let avoid = if failed {
            self.isolation
        } else {
            LATENCY_AVOIDANCE
                .iter()
                .find(|(at_least, _)| latency >= *at_least)
                .map_or(Duration::ZERO, |(_, avoid)| *avoid)
        };
        let mut avoid_until = self.lock();
        if avoid.is_zero() {
            avoid_until.remove(&address);
        } else {
            if avoid_until
                .get(&address)
                .is_none_or(|until| *until < Instant::now())
            {
                log::warn!(
                    "avoiding broker {address} for {} s ({})",
                    avoid.as_secs(),
                    if failed {
                        "send failed".to_string()
                    } else {
                        format!("answered in {} ms", latency.as_millis())
                    }
                );
            }
            avoid_until.insert(address, Instant::now() + avoid);
        }
    }

    pub(crate) fn available(&self, address: SocketAddr) -> bool {
        self.lock()
            .get(&address)
            .is_none_or(|until| Instant::now() >= *until)
    }
}

/// Picks the queue of the next send: round robin over every (master, queue) pair,
/// skipping the master that just failed and masters being avoided while another
/// choice exists. Returns the master (its index in `masters`) and the queue (`None`:
/// the broker picks).
pub(crate) fn pick(
    masters: &[MasterRoute],
    cursor: &AtomicUsize,
    last_failed: Option<SocketAddr>,
    available: impl Fn(SocketAddr) -> bool,
) -> Option<(usize, Option<u32>)> {
    let slots = slots(masters, 0..masters.len());
    if slots.is_empty() {
        return None;
    }
    let start = cursor.fetch_add(1, Ordering::Relaxed);
    let order = (0..slots.len()).map(|offset| slots[(start + offset) % slots.len()]);
    let address_of = |(index, _): (usize, Option<u32>)| masters[index].endpoint.address;
    let not_failed = |slot: &(usize, Option<u32>)| Some(address_of(*slot)) != last_failed;
    let chosen = order
        .clone()
        .find(|slot| not_failed(slot) && available(address_of(*slot)))
        .or_else(|| order.clone().find(not_failed))
        .or_else(|| order.clone().next())?;
    Some(chosen)
}

/// Every (master index, queue) of the masters `order` lists, in that order (`None`: a
/// master that did not say its queue count; the broker picks).
fn slots(
    masters: &[MasterRoute],
    order: impl IntoIterator<Item = usize>,
) -> Vec<(usize, Option<u32>)> {
    order
        .into_iter()
        .flat_map(|index| {
            let queues: Vec<Option<u32>> = match masters[index].queues {
                0 => vec![None],
                count => (0..count).map(Some).collect(),
            };
            queues.into_iter().map(move |queue| (index, queue))
        })
        .collect()
}

/// The one (master, queue) a message group goes to: the broker (by name) of highest
/// `message_group_broker_weight` among those with the topic, then its queue
/// `message_group_queue`. Order comes before availability: a broker failing over (no
/// master now) keeps its groups, which wait (NO_ROUTE, retried) for its next master
/// rather than move, where their next messages would overtake the ones waiting; a
/// broker that leaves the routes for good moves only its own groups.
pub(crate) fn pick_for_group(
    routes: &TopicRoutes,
    group: &str,
) -> Result<(usize, Option<u32>), ClientError> {
    use keel_protocol::names::{message_group_broker_weight, message_group_queue};
    let candidates = routes
        .masters
        .iter()
        .map(|master| master.broker_name.as_str())
        .chain(routes.headless.iter().map(|(name, _)| name.as_str()));
    // The highest weight; on a tie, the smaller name.
    let chosen = candidates
        .max_by_key(|name| {
            (
                message_group_broker_weight(group, name),
                std::cmp::Reverse(*name),
            )
        })
        .ok_or_else(|| ClientError::NoRoute("no broker has the topic".into()))?;
    let Some(index) = routes
        .masters
        .iter()
        .position(|master| master.broker_name == chosen)
    else {
        return Err(ClientError::NoRoute(format!(
            "broker {chosen}, which message group {group:?} goes to, has no master now \
             (failing over); the group waits for it rather than move"
        )));
    };
    let queue = match routes.masters[index].queues {
        0 => None,
        count => Some(message_group_queue(group, count)),
    };
    Ok((index, queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(masters: Vec<MasterRoute>) -> TopicRoutes {
        TopicRoutes {
            masters,
            headless: Vec::new(),
        }
    }

    fn group_pick(routes: &TopicRoutes, group: &str) -> Option<(String, Option<u32>)> {
        let (index, queue) = pick_for_group(routes, group).ok()?;
        Some((routes.masters[index].broker_name.clone(), queue))
    }

    #[test]
    fn a_message_group_always_goes_to_the_same_master_and_queue() {
        let routes = routes(masters());
        // The same answer every time, whatever order the routes come in.
        let first = group_pick(&routes, "order-42").unwrap();
        for _ in 0..4 {
            assert_eq!(group_pick(&routes, "order-42"), Some(first.clone()));
        }
        let mut reversed = routes.clone();
        reversed.masters.reverse();
        assert_eq!(group_pick(&reversed, "order-42"), Some(first.clone()));
        let weight = keel_protocol::names::message_group_broker_weight;
        let expected = if weight("order-42", "a") >= weight("order-42", "b") {
            "a"
        } else {
            "b"
        };
        assert_eq!(first.0, expected);
        assert_eq!(
            first.1,
            Some(keel_protocol::names::message_group_queue("order-42", 2))
        );
    }

    #[test]
    fn a_broker_leaving_moves_only_its_own_groups_and_one_failing_over_keeps_them() {
        let mut three = masters();
        three.push(MasterRoute {
            broker_name: "c".into(),
            endpoint: Endpoint::resolve("127.0.0.1:3").unwrap(),
            queues: 2,
        });
        let all = routes(three.clone());
        let groups: Vec<String> = (0..3000).map(|n| format!("order-{n}")).collect();
        let before: Vec<_> = groups.iter().map(|g| group_pick(&all, g)).collect();
        let on_b = before
            .iter()
            .flatten()
            .filter(|(name, _)| name == "b")
            .count();
        assert!((700..1300).contains(&on_b), "{on_b} of 3000 groups on b");
        // b leaves the routes for good: only b's groups move.
        let without_b = routes(
            three
                .iter()
                .filter(|m| m.broker_name != "b")
                .cloned()
                .collect(),
        );
        for (group, was) in groups.iter().zip(&before) {
            let now = group_pick(&without_b, group);
            if was.as_ref().is_some_and(|(name, _)| name != "b") {
                assert_eq!(&now, was, "{group} moved though its broker stayed");
            }
        }
        // b is failing over (its slave is there, no master): its groups wait, the
        // others go where they went.
        let failing_over = TopicRoutes {
            headless: vec![("b".into(), 2)],
            ..without_b
        };
        for (group, was) in groups.iter().zip(&before) {
            let now = pick_for_group(&failing_over, group);
            match was {
                Some((name, _)) if name == "b" => {
                    let error = now.unwrap_err().to_string();
                    assert!(error.contains("has no master now"), "{error}");
                }
                _ => assert_eq!(group_pick(&failing_over, group), *was),
            }
        }
    }

    fn masters() -> Vec<MasterRoute> {
        vec![
            MasterRoute {
                broker_name: "a".into(),
                endpoint: Endpoint::resolve("127.0.0.1:1").unwrap(),
                queues: 2,
            },
            MasterRoute {
                broker_name: "b".into(),
                endpoint: Endpoint::resolve("127.0.0.1:2").unwrap(),
                queues: 2,
            },
        ]
    }

    #[test]
    fn picks_spread_over_every_queue_and_skip_a_failed_or_avoided_master() {
        let masters = masters();
        let address = |index: usize| masters[index].endpoint.address;
        let cursor = AtomicUsize::new(0);
        let picks: Vec<_> = (0..4)
            .map(|_| pick(&masters, &cursor, None, |_| true).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|(index, _)| *index == 0).count(), 2);
        let failed = address(0);
        for _ in 0..8 {
            let (index, _) = pick(&masters, &cursor, Some(failed), |_| true).unwrap();
            assert_ne!(
                address(index),
                failed,
                "a retry never goes back to the failed master"
            );
            let (index, _) = pick(&masters, &cursor, None, |a| a != failed).unwrap();
            assert_ne!(address(index), failed, "an avoided master is skipped");
        }
        // The only master is used even right after it failed.
        let only = &masters[..1];
        assert_eq!(pick(only, &cursor, Some(failed), |_| false).unwrap().0, 0);
    }

    #[test]
    fn failures_and_slow_answers_are_avoided_for_a_while() {
        let tracker = FaultTracker::new(Duration::from_secs(30));
        let address: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(tracker.available(address));
        tracker.record(address, Duration::from_millis(5), true);
        assert!(!tracker.available(address));
        tracker.record(address, Duration::from_millis(5), false);
        assert!(tracker.available(address));
        tracker.record(address, Duration::from_millis(700), false);
        assert!(!tracker.available(address));
    }
}
