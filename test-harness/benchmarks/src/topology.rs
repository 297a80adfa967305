//! Where decisions are made and what the pods are like: G gateway replicas × W Envoy workers, each worker
//! its own decision point; clients on keep-alive connections pinned to one worker; pods of equal or
//! unequal speed.
//!
//! What a decision point sees (the simulator's side is in `sim`): its own routing at once; between the
//! workers of one gateway, in-flight counts [`Topology::inflight_delay_us`] late and routed prefixes
//! [`Topology::prefix_delay_us`] late (the filter's shared in-flight tables and prefix sync); between
//! gateway replicas nothing but the metrics each gateway's collector scrapes on its own phase.

use scheduler_core::rng::Rng;

/// Gateway replicas × workers, and the client connections in front of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub gateways: usize,
    /// Envoy workers per gateway replica.
    pub workers: usize,
    /// Keep-alive client connections, each pinned to one (gateway, worker) for the whole run.
    pub connections: usize,
    /// How late a worker sees another worker's in-flight changes (the filter writes its table at most
    /// once per millisecond and reads the others' at most once per millisecond).
    pub inflight_delay_us: u64,
    /// How late a worker learns another worker's routed prefix (the filter batches them for 10 ms).
    pub prefix_delay_us: u64,
    /// Seeds the connections' pinning, which connection each request uses, and the gateways' scrape
    /// phases.
    pub seed: u64,
}

/// Keep-alive connections of a benchmark client pool (and of a frontend in front of the gateways).
pub const DEFAULT_CONNECTIONS: usize = 64;

impl Default for Topology {
    fn default() -> Topology {
        Topology {
            gateways: 1,
            workers: 1,
            connections: DEFAULT_CONNECTIONS,
            inflight_delay_us: 1_000,
            prefix_delay_us: 10_000,
            seed: 0x746f_706f,
        }
    }
}

impl Topology {
    pub fn new(gateways: usize, workers: usize) -> Topology {
        Topology { gateways: gateways.max(1), workers: workers.max(1), ..Topology::default() }
    }

    /// Independent decision points, G·W.
    pub fn decision_points(&self) -> usize {
        self.gateways.max(1) * self.workers.max(1)
    }

    /// `GxW`.
    pub fn label(&self) -> String {
        format!("{}x{}", self.gateways, self.workers)
    }

    /// Parses `GxW` (e.g. `4x4`).
    pub fn parse(s: &str) -> Option<(usize, usize)> {
        let (g, w) = s.split_once('x')?;
        let (g, w) = (g.trim().parse().ok()?, w.trim().parse().ok()?);
        (g > 0 && w > 0).then_some((g, w))
    }

    /// The scrape phase of each gateway's collector within `interval_us`: the first at 0, the others at
    /// random offsets (replicas start at different times).
    pub fn scrape_phases(&self, gateways: usize, interval_us: u64) -> Vec<u64> {
        let mut rng = Rng::new(self.seed ^ 0x7363_7261_7065);
        (0..gateways)
            .map(|g| if g == 0 { 0 } else { rng.below(interval_us.max(1) as usize) as u64 })
            .collect()
    }
}

/// The client side: each connection pinned to a decision point, each request on a random connection.
#[derive(Clone, Debug)]
pub struct Connections {
    decision_point: Vec<usize>,
    rng: Rng,
}

impl Connections {
    /// `decision_points` is G·W, or 1 when one decision point serves everyone (a single ext_proc EPP).
    /// An L4 load balancer spreads connections over gateway replicas and the kernel over a replica's
    /// workers, both at random: each connection lands on a uniformly random decision point.
    pub fn new(topology: &Topology, decision_points: usize) -> Connections {
        let mut pin = Rng::new(topology.seed ^ 0x636f_6e6e);
        let n = decision_points.max(1);
        let decision_point = (0..topology.connections.max(1)).map(|_| pin.below(n)).collect();
        Connections { decision_point, rng: Rng::new(topology.seed ^ 0x7265_7175) }
    }

    /// The connection the next request uses (uniformly random: a client pool, or a frontend serving
    /// sessions without stickiness) and the decision point it is pinned to.
    pub fn next_request(&mut self) -> (usize, usize) {
        let c = self.rng.below(self.decision_point.len());
        (c, self.decision_point.get(c).copied().unwrap_or(0))
    }

    /// The decision point connection `c` is pinned to.
    pub fn decision_point(&self, c: usize) -> Option<usize> {
        self.decision_point.get(c).copied()
    }
}

/// Pods of unequal speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodsKind {
    /// Every replica at the calibrated speed.
    Even,
    /// A mixed fleet: replica i of N at 1 − 0.4·i/(N−1) speed, 1.0 down to 0.6.
    Uneven,
    /// One replica (the last) at 0.5× speed, the others at 1.0.
    Straggler,
    /// All at 1.0, but each replica is slowed to half speed (steps take 2×) for windows that come and
    /// go: quiet for Exp(mean 20 s), slowed for Exp(mean 5 s), independently per replica.
    Noisy,
    /// All at 1.0 and healthy, but the first replica's scrapes fail (its `/metrics` hangs) for a sixth
    /// to a third of the horizon (about the second third of the arrivals): the picker's health excludes it after `consecutiveScrapeFailures`,
    /// whereas a picker that trusts stale metrics keeps scheduling it on its last scrape and in-flight.
    MetricsLost,
}

/// Noisy neighbours: mean quiet and slowed durations, and the step-time factor while slowed.
pub const NOISY_QUIET_MEAN_S: f64 = 20.0;
pub const NOISY_SLOW_MEAN_S: f64 = 5.0;
pub const NOISY_FACTOR: f64 = 2.0;
/// The straggler's speed.
pub const STRAGGLER_SPEED: f64 = 0.5;
/// The slowest replica of an uneven fleet.
pub const UNEVEN_SLOWEST: f64 = 0.6;

impl PodsKind {
    pub const ALL: [PodsKind; 5] =
        [PodsKind::Even, PodsKind::Uneven, PodsKind::Straggler, PodsKind::Noisy, PodsKind::MetricsLost];

    pub fn name(self) -> &'static str {
        match self {
            PodsKind::Even => "even",
            PodsKind::Uneven => "uneven",
            PodsKind::Straggler => "straggler",
            PodsKind::Noisy => "noisy",
            PodsKind::MetricsLost => "metrics-lost",
        }
    }

    pub fn parse(s: &str) -> Option<PodsKind> {
        PodsKind::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The pods for `replicas` replicas; noisy windows are drawn up to `horizon_us` (after it, quiet).
    pub fn build(self, replicas: usize, horizon_us: u64, seed: u64) -> Pods {
        let mut pods = Pods { kind: self, ..Pods::default() };
        match self {
            PodsKind::Even => {}
            PodsKind::Uneven => {
                let span = replicas.saturating_sub(1).max(1) as f64;
                pods.speeds = (0..replicas).map(|i| 1.0 - (1.0 - UNEVEN_SLOWEST) * i as f64 / span).collect();
            }
            PodsKind::Straggler => {
                pods.speeds =
                    (0..replicas).map(|i| if i + 1 == replicas { STRAGGLER_SPEED } else { 1.0 }).collect();
            }
            PodsKind::MetricsLost => {
                // The horizon is twice the last arrival plus a minute: this is about its second third.
                pods.lost.push(LostMetrics { replica: 0, start_us: horizon_us / 6, end_us: horizon_us / 3 });
            }
            PodsKind::Noisy => {
                for replica in 0..replicas {
                    let mut rng = Rng::new(
                        seed ^ 0x006e_6f69_7379 ^ (replica as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    let mut t = 0.0f64;
                    loop {
                        t += exp(&mut rng, NOISY_QUIET_MEAN_S);
                        let start_us = (t * 1e6) as u64;
                        if start_us >= horizon_us {
                            break;
                        }
                        t += exp(&mut rng, NOISY_SLOW_MEAN_S);
                        let end_us = (t * 1e6) as u64;
                        pods.windows.push(SlowWindow { replica, start_us, end_us, factor: NOISY_FACTOR });
                    }
                }
                pods.windows.sort_by_key(|w| (w.start_us, w.replica));
            }
        }
        pods
    }
}

fn exp(rng: &mut Rng, mean: f64) -> f64 {
    -(1.0 - rng.next_f64()).ln() * mean
}

/// A time window in which one replica's steps take `factor` times as long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowWindow {
    pub replica: usize,
    pub start_us: u64,
    pub end_us: u64,
    pub factor: f64,
}

/// A time window in which one replica's scrapes fail (it keeps serving).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostMetrics {
    pub replica: usize,
    pub start_us: u64,
    pub end_us: u64,
}

/// Per-replica speeds, slow-down windows and lost scrapes.
#[derive(Clone, Debug, PartialEq)]
pub struct Pods {
    pub kind: PodsKind,
    /// Speed of replica i (missing = 1.0).
    pub speeds: Vec<f64>,
    pub windows: Vec<SlowWindow>,
    pub lost: Vec<LostMetrics>,
}

impl Default for Pods {
    fn default() -> Pods {
        Pods { kind: PodsKind::Even, speeds: Vec::new(), windows: Vec::new(), lost: Vec::new() }
    }
}

impl Pods {
    /// Whether replica `replica`'s scrape at `t_us` fails.
    pub fn scrape_lost(&self, replica: usize, t_us: u64) -> bool {
        self.lost.iter().any(|l| l.replica == replica && (l.start_us..l.end_us).contains(&t_us))
    }

    pub fn speed(&self, replica: usize) -> f64 {
        self.speeds.get(replica).copied().unwrap_or(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lost_fails_the_first_replicas_scrapes_in_one_window_only() {
        let p = PodsKind::MetricsLost.build(4, 180_000_000, 0);
        assert!(p.speeds.is_empty() && p.windows.is_empty());
        assert!(
            !p.scrape_lost(0, 29_999_999) && p.scrape_lost(0, 30_000_000) && p.scrape_lost(0, 59_999_999)
        );
        assert!(!p.scrape_lost(0, 60_000_000) && !p.scrape_lost(1, 45_000_000));
        assert!(!PodsKind::Even.build(4, 180_000_000, 0).scrape_lost(0, 45_000_000));
    }

    #[test]
    fn connections_are_pinned_and_spread_over_every_decision_point() {
        let t = Topology { connections: 64, ..Topology::new(4, 4) };
        let mut c = Connections::new(&t, t.decision_points());
        let mut seen = vec![0usize; 16];
        let mut used = [false; 64];
        for _ in 0..20_000 {
            let (conn, dp) = c.next_request();
            // A connection always reaches the decision point it was pinned to.
            assert_eq!(c.decision_point(conn), Some(dp));
            seen[dp] += 1;
            used[conn] = true;
        }
        assert!(used.iter().all(|&u| u), "requests use every connection");
        // 64 connections over 16 decision points: most get some, unevenly (as behind a real L4 LB).
        assert!(seen.iter().filter(|&&n| n > 0).count() >= 12, "{seen:?}");
        // Same seed, same pinning; one decision point takes everything.
        let mut again = Connections::new(&t, 16);
        assert!((0..64).all(|k| again.decision_point(k) == c.decision_point(k)));
        let _ = again.next_request();
        let mut one = Connections::new(&t, 1);
        assert!((0..100).all(|_| one.next_request().1 == 0));
        assert_eq!(Topology::parse("4x2"), Some((4, 2)));
        assert_eq!(Topology::parse("0x2"), None);
        assert_eq!(Topology::new(4, 4).label(), "4x4");
    }

    #[test]
    fn pods_kinds() {
        assert!(PodsKind::Even.build(4, 1, 0).speeds.is_empty());
        assert_eq!(PodsKind::Straggler.build(4, 1, 0).speeds, vec![1.0, 1.0, 1.0, 0.5]);
        let u = PodsKind::Uneven.build(5, 1, 0).speeds;
        assert_eq!(u.len(), 5);
        assert!((u[0] - 1.0).abs() < 1e-12 && (u[4] - 0.6).abs() < 1e-12 && (u[2] - 0.8).abs() < 1e-12);
        let n = PodsKind::Noisy.build(4, 600_000_000, 3);
        assert!(n.speeds.is_empty());
        for r in 0..4 {
            let w: Vec<&SlowWindow> = n.windows.iter().filter(|w| w.replica == r).collect();
            // 600 s of 20 s quiet + 5 s slowed: ~24 windows per replica.
            assert!((10..45).contains(&w.len()), "replica {r}: {}", w.len());
            assert!(w.windows(2).all(|p| p[0].end_us <= p[1].start_us), "windows do not overlap");
            let slowed: u64 = w.iter().map(|w| w.end_us - w.start_us).sum();
            let share = slowed as f64 / 600e6;
            assert!((0.08..0.35).contains(&share), "replica {r} slowed {share}");
        }
        assert_eq!(n, PodsKind::Noisy.build(4, 600_000_000, 3));
        assert_ne!(n, PodsKind::Noisy.build(4, 600_000_000, 4));
    }
}
