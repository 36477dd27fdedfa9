//! The health check engine: one tokio task per target, probing at an
//! interval, turning results into UP/DOWN with [`RiseFall`] and reporting
//! each change as a [`HealthEvent`].

use std::collections::HashMap;
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use super::rise_fall::{Health, RiseFall};
use fulcrum_config::{CheckKind, HealthCheckConfig};

/// How to check one target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Probe {
    /// Where to connect: the backend's address and the check port.
    pub addr: SocketAddr,
    pub check: CheckKind,
    /// Time between the starts of two checks. When a check outlasts it,
    /// the next one starts right after (no burst to catch up). Values
    /// below 1 ms are raised to 1 ms.
    pub interval: Duration,
    /// Bound on one whole check.
    pub timeout: Duration,
    /// Consecutive passes that bring a DOWN target UP (0 counts as 1).
    pub rise: u32,
    /// Consecutive failures that take an UP target DOWN (0 counts as 1).
    pub fall: u32,
}

impl Display for Probe {
    /// `198.18.0.11:80 http GET /health`, `198.18.0.11:80 tcp`: how logs name a target.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.check {
            CheckKind::Tcp => write!(f, "{} tcp", self.addr),
            CheckKind::Http { method, path, .. } => write!(f, "{} http {method} {path}", self.addr),
        }
    }
}

impl Probe {
    /// The probe for a backend at `address` under a pool's health check.
    pub fn from_config(address: IpAddr, hc: &HealthCheckConfig) -> Self {
        Probe {
            addr: SocketAddr::new(address, hc.port),
            check: hc.check.clone(),
            interval: hc.interval,
            timeout: hc.timeout,
            rise: hc.rise,
            fall: hc.fall,
        }
    }
}

/// A change of a target's health, including the first determination after
/// the target was added (or restarted because its [`Probe`] changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent<K> {
    pub key: K,
    pub health: Health,
    /// Why, for operators: for DOWN the last check's failure
    /// (e.g. `HTTP 503, expected 200`); for UP `first check passed` or,
    /// after `rise` passes in a row, e.g. `2 passed checks`.
    pub detail: String,
}

/// Runs the health checks of a set of targets identified by keys `K` (the
/// daemon uses pool and backend address; `Display` names the backend in
/// logs).
///
/// Each target is checked at once, then every `interval`. Every change of
/// health is sent as a [`HealthEvent`] and logged as exactly one line
/// (`info` for UP, `warn` for DOWN); single checks are logged at `debug`
/// only. Dropping the engine stops all checks.
///
/// Must be used inside a tokio runtime: targets run as spawned tasks.
pub struct HealthEngine<K> {
    events: UnboundedSender<HealthEvent<K>>,
    tasks: HashMap<K, Task>,
}

impl<K> HealthEngine<K>
where
    K: Clone + Eq + Hash + Debug + Display + Send + Sync + 'static,
{
    /// An engine with no targets that will send events to `events`.
    pub fn new(events: UnboundedSender<HealthEvent<K>>) -> Self {
        HealthEngine {
            events,
            tasks: HashMap::new(),
        }
    }

    /// Replaces the set of targets. A new key starts being checked; a
    /// removed key stops, and no event for it is sent once this returns; a
    /// key whose [`Probe`] changed restarts from the unknown state (its
    /// first result is reported again); an unchanged key keeps running with
    /// its state. For a key given twice, the last probe wins.
    pub fn set_targets(&mut self, targets: Vec<(K, Probe)>) {
        let mut next: HashMap<K, Task> = HashMap::with_capacity(targets.len());
        for (key, probe) in targets {
            let task = match self.tasks.remove(&key).or_else(|| next.remove(&key)) {
                Some(task) if task.probe == probe => task,
                // Dropping the old task (if any) stops it.
                _ => Task::spawn(key.clone(), probe, self.events.clone()),
            };
            next.insert(key, task);
        }
        self.tasks = next;
    }

    /// The keys being checked, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.tasks.keys()
    }
}

/// A running target. Dropping it stops the task.
struct Task {
    probe: Probe,
    handle: JoinHandle<()>,
    /// Cleared, under the lock, when the task is stopped; the task sends
    /// only while holding it set. Aborting alone could not promise "no event
    /// after removal": a task running on another worker finishes its
    /// current poll after `abort()` returns.
    live: Arc<Mutex<bool>>,
}

impl Task {
    fn spawn<K>(key: K, probe: Probe, events: UnboundedSender<HealthEvent<K>>) -> Task
    where
        K: Clone + Eq + Hash + Debug + Display + Send + Sync + 'static,
    {
        let live = Arc::new(Mutex::new(true));
        let handle = tokio::spawn(watch(key, probe.clone(), events, live.clone()));
        Task {
            probe,
            handle,
            live,
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.handle.abort();
    }
}

async fn watch<K: Clone + Display>(
    key: K,
    probe: Probe,
    events: UnboundedSender<HealthEvent<K>>,
    live: Arc<Mutex<bool>>,
) {
    let mut state = RiseFall::new(probe.rise, probe.fall);
    let mut ticks = tokio::time::interval(probe.interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = super::probe::probe(probe.addr, &probe.check, probe.timeout).await;
        match &result {
            Ok(()) => debug!("backend {key}: check passed"),
            Err(e) => debug!("backend {key}: check failed: {e}"),
        }
        let first = state.health().is_none();
        let Some(health) = state.observe(result.is_ok()) else {
            continue;
        };
        let detail = match (&result, first) {
            (Err(e), _) => e.to_string(),
            (Ok(()), true) => "first check passed".to_owned(),
            (Ok(()), false) => checks(state.rise(), "passed"),
        };
        let live = live.lock().unwrap_or_else(PoisonError::into_inner);
        if !*live {
            return;
        }
        match (health, first) {
            (Health::Up, true) => info!("backend {key} is UP at the first check"),
            (Health::Up, false) => info!(
                "backend {key} is UP after {}",
                checks(state.rise(), "passed")
            ),
            (Health::Down, true) => warn!("backend {key} is DOWN ({detail}) at the first check"),
            (Health::Down, false) => {
                warn!(
                    "backend {key} is DOWN ({detail}) after {}",
                    checks(state.fall(), "failed")
                )
            }
        }
        if events
            .send(HealthEvent {
                key: key.clone(),
                health,
                detail,
            })
            .is_err()
        {
            // Nobody listens any more: the daemon is shutting down.
            return;
        }
    }
}

/// "1 failed check", "3 failed checks".
fn checks(n: u32, outcome: &str) -> String {
    format!("{n} {outcome} check{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    use crate::test_server::TestServer;
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn http_probe(addr: SocketAddr, expect_status: u16) -> Probe {
        Probe {
            addr,
            check: CheckKind::Http {
                method: "GET".into(),
                path: "/health".into(),
                expect_status,
                host: None,
            },
            interval: 50 * MS,
            timeout: 1000 * MS,
            rise: 2,
            fall: 2,
        }
    }

    async fn next(rx: &mut UnboundedReceiver<HealthEvent<String>>) -> (String, Health, String) {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the channel is open");
        (e.key, e.health, e.detail)
    }

    /// Asserts that no event arrives for `quiet` (several intervals).
    async fn none_for(rx: &mut UnboundedReceiver<HealthEvent<String>>, quiet: Duration) {
        if let Ok(e) = tokio::time::timeout(quiet, rx.recv()).await {
            panic!("unexpected event {e:?}");
        }
    }

    #[tokio::test]
    async fn goes_down_and_up_again() {
        let server = TestServer::start(Some(200)).await;
        let (tx, mut rx) = unbounded_channel();
        let mut engine = HealthEngine::new(tx);
        engine.set_targets(vec![("web/a".to_owned(), http_probe(server.addr, 200))]);

        assert_eq!(
            next(&mut rx).await,
            ("web/a".into(), Health::Up, "first check passed".into())
        );
        server.set_status(Some(503));
        assert_eq!(
            next(&mut rx).await,
            (
                "web/a".into(),
                Health::Down,
                "HTTP 503, expected 200".into()
            )
        );
        server.set_status(Some(200));
        assert_eq!(
            next(&mut rx).await,
            ("web/a".into(), Health::Up, "2 passed checks".into())
        );
        none_for(&mut rx, 200 * MS).await;
        // rise 2 / fall 2 at 50 ms: at least 2 failed and 2 passed checks.
        assert!(server.requests().len() >= 5, "{}", server.requests().len());
    }

    #[tokio::test]
    async fn first_failure_is_reported_at_once() {
        let (tx, mut rx) = unbounded_channel();
        let mut engine = HealthEngine::new(tx);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let probe = Probe {
            check: CheckKind::Tcp,
            ..http_probe(closed, 200)
        };
        engine.set_targets(vec![("gone".to_owned(), probe)]);
        assert_eq!(
            next(&mut rx).await,
            (
                "gone".into(),
                Health::Down,
                "connect: Connection refused".into()
            )
        );
    }

    #[tokio::test]
    async fn set_targets_adds_removes_restarts_and_keeps() {
        let server = TestServer::start(Some(200)).await;
        let (tx, mut rx) = unbounded_channel();
        let mut engine = HealthEngine::new(tx);
        let keep = http_probe(server.addr, 200);
        engine.set_targets(vec![
            ("a".to_owned(), keep.clone()),
            ("b".to_owned(), keep.clone()),
        ]);
        let mut first = [next(&mut rx).await, next(&mut rx).await];
        first.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            first
                .iter()
                .map(|e| (e.0.as_str(), e.1))
                .collect::<Vec<_>>(),
            [("a", Health::Up), ("b", Health::Up)]
        );

        // "a" removed, "b" unchanged (no new first determination), "c" new.
        engine.set_targets(vec![
            ("b".to_owned(), keep.clone()),
            ("c".to_owned(), keep.clone()),
        ]);
        assert_eq!(
            next(&mut rx).await,
            ("c".into(), Health::Up, "first check passed".into())
        );
        none_for(&mut rx, 200 * MS).await;
        let mut keys: Vec<_> = engine.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["b", "c"]);

        // Only the remaining targets notice a failure.
        server.set_status(Some(503));
        let mut down = [next(&mut rx).await, next(&mut rx).await];
        down.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            down.iter().map(|e| (e.0.as_str(), e.1)).collect::<Vec<_>>(),
            [("b", Health::Down), ("c", Health::Down)]
        );
        none_for(&mut rx, 200 * MS).await;

        // A changed probe restarts from the unknown state: "b" now expects
        // 503, so its first check passes and is reported; "c" stays DOWN.
        engine.set_targets(vec![
            ("b".to_owned(), http_probe(server.addr, 503)),
            ("c".to_owned(), keep),
        ]);
        assert_eq!(
            next(&mut rx).await,
            ("b".into(), Health::Up, "first check passed".into())
        );
        none_for(&mut rx, 200 * MS).await;
    }

    #[tokio::test]
    async fn dropping_the_engine_stops_every_check() {
        let server = TestServer::start(Some(200)).await;
        let (tx, mut rx) = unbounded_channel();
        let mut engine = HealthEngine::new(tx);
        engine.set_targets(vec![("a".to_owned(), http_probe(server.addr, 200))]);
        next(&mut rx).await;
        drop(engine);
        // Every sender (the engine's and the tasks') is gone once the tasks
        // are aborted, so the channel closes.
        let closed = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(matches!(closed, Ok(None)), "{closed:?}");
        let served = server.requests().len();
        tokio::time::sleep(200 * MS).await;
        assert_eq!(server.requests().len(), served);
    }

    #[test]
    fn probe_from_config() {
        let hc = HealthCheckConfig {
            check: CheckKind::Tcp,
            port: 8080,
            interval: 2000 * MS,
            timeout: 1000 * MS,
            rise: 2,
            fall: 3,
        };
        let p = Probe::from_config("198.18.0.11".parse().unwrap(), &hc);
        assert_eq!(p.addr, "198.18.0.11:8080".parse().unwrap());
        assert_eq!(
            (p.interval, p.timeout, p.rise, p.fall),
            (hc.interval, hc.timeout, 2, 3)
        );
    }
}
