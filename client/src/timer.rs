//! One timer thread for the whole process: retries that wait out a backoff are run
//! from it, never by sleeping on a connection's reader thread (which would hold up
//! every other reply on that connection: a thousand sends failing at once would queue
//! a thousand sleeps). The timer only waits; the jobs run on a few worker threads, so a
//! retry that waits out a connect to a host that does not answer holds up only its own
//! worker.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

type Job = Box<dyn FnOnce() + Send>;

struct Entry {
    due: Instant,
    /// Ties keep the order of scheduling.
    sequence: u64,
    job: Job,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        (self.due, self.sequence) == (other.due, other.sequence)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> std::cmp::Ordering {
        (self.due, self.sequence).cmp(&(other.due, other.sequence))
    }
}

#[derive(Default)]
struct Queue {
    entries: BinaryHeap<Reverse<Entry>>,
    sequence: u64,
}

struct Timer {
    queue: Mutex<Queue>,
    changed: Condvar,
}

/// Threads that run the jobs the timer hands out.
const WORKERS: usize = 4;

static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();

fn timer() -> Option<&'static Timer> {
    *TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        }));
        let (hand, jobs) = std::sync::mpsc::channel::<Job>();
        let jobs = std::sync::Arc::new(Mutex::new(jobs));
        let mut workers = 0;
        for index in 0..WORKERS {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("keel-client-retry-{index}"))
                .spawn(move || work(&jobs));
            workers += usize::from(spawned.is_ok());
        }
        // Without a worker the timer runs the jobs itself.
        let hand = (workers > 0).then_some(hand);
        let started = std::thread::Builder::new()
            .name("keel-client-timer".into())
            .spawn(move || run(timer, hand));
        match started {
            Ok(_) => Some(timer),
            Err(error) => {
                log::error!("cannot start the client's timer thread: {error}");
                None
            }
        }
    })
}

/// Runs `job` at `due` (at once when it is past) on the timer thread. Jobs run one at
/// a time: each must be short (a retry's connect is bounded by its send budget).
pub(crate) fn schedule(due: Instant, job: impl FnOnce() + Send + 'static) {
    let Some(timer) = timer() else {
        // No thread could be started: run it here, late rather than never.
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        return job();
    };
    let mut queue = timer.queue.lock().unwrap_or_else(|p| p.into_inner());
    queue.sequence += 1;
    let sequence = queue.sequence;
    queue.entries.push(Reverse(Entry {
        due,
        sequence,
        job: Box::new(job),
    }));
    timer.changed.notify_one();
}

fn work(jobs: &Mutex<std::sync::mpsc::Receiver<Job>>) {
    loop {
        let job = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        // A job that panics must not take the worker (and later retries) with it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            log::error!("a scheduled retry panicked");
        }
    }
}

fn run(timer: &'static Timer, hand: Option<std::sync::mpsc::Sender<Job>>) {
    let mut queue = timer.queue.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        match queue.entries.peek() {
            Some(Reverse(entry)) if entry.due <= now => {
                let Some(Reverse(entry)) = queue.entries.pop() else {
                    continue;
                };
                drop(queue);
                let job = match &hand {
                    Some(hand) => hand.send(entry.job).err().map(|failed| failed.0),
                    None => Some(entry.job),
                };
                if let Some(job) = job {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        log::error!("a scheduled retry panicked");
                    }
                }
                queue = timer.queue.lock().unwrap_or_else(|p| p.into_inner());
            }
            Some(Reverse(entry)) => {
                let wait = entry.due.saturating_duration_since(now);
                queue = match timer.changed.wait_timeout(queue, wait) {
                    Ok((queue, _)) => queue,
                    Err(poison) => poison.into_inner().0,
                };
            }
            None => {
                queue = timer.changed.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn jobs_run_in_due_order_and_a_panic_does_not_stop_the_timer() {
        let (sender, receiver) = mpsc::channel();
        let now = Instant::now();
        for (index, delay) in [(0u32, 60u64), (1, 20), (2, 40)] {
            let sender = sender.clone();
            schedule(now + Duration::from_millis(delay), move || {
                let _ = sender.send(index);
            });
        }
        schedule(now, || panic!("a job that fails"));
        let order: Vec<u32> = (0..3)
            .map(|_| receiver.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(order, vec![1, 2, 0]);
    }
}
