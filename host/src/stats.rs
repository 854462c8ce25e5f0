//! Live statistics of a backend, updated without locks on the request path:
//! in-flight count, recent latencies and times to first token, a sliding
//! window of outcomes, and the circuit breaker.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::CircuitConfig;
use crate::contract::{BackendStats, CircuitState};

/// Samples kept per ring.
const RING: usize = 128;
/// Samples older than this do not count.
const WINDOW_MS: u64 = 60_000;
/// How often the percentiles are recomputed at most.
const RECOMPUTE_MS: u64 = 100;

/// Milliseconds since the process started (never 0).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Recent values with their time, overwritten round-robin.
struct SampleRing {
    /// `(time_ms << 32) | f32 bits`; 0 is empty.
    slots: Box<[AtomicU64]>,
    next: AtomicUsize,
}

impl SampleRing {
    fn new() -> Self {
        Self { slots: (0..RING).map(|_| AtomicU64::new(0)).collect(), next: AtomicUsize::new(0) }
    }

    fn push(&self, value: f32) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % RING;
        let stamp = (now_ms() & 0xFFFF_FFFF) << 32;
        self.slots[i].store(stamp | u64::from(value.to_bits()), Ordering::Relaxed);
    }

    /// Values younger than the window.
    fn recent(&self, now: u64) -> Vec<f32> {
        let now = now & 0xFFFF_FFFF;
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&v| v != 0 && now.wrapping_sub(v >> 32) & 0xFFFF_FFFF <= WINDOW_MS)
            .map(|v| f32::from_bits(v as u32))
            .collect()
    }
}

/// Computed view of the rings, refreshed at most every `RECOMPUTE_MS`.
#[derive(Debug, Clone, Copy, Default)]
struct Computed {
    p50: f32,
    p95: f32,
    ttft: f32,
    error_rate: f32,
    samples: u32,
}

/// Live statistics of one backend. Shared by the request path and kept
/// across configuration reloads (by backend name).
pub struct LiveStats {
    in_flight: AtomicU32,
    latencies: SampleRing,
    ttfts: SampleRing,
    /// 1.0 for a failed attempt, 0.0 for a good one.
    outcomes: SampleRing,
    computed: ArcSwap<Computed>,
    computed_at: AtomicU64,
    circuit: Circuit,
}

impl LiveStats {
    /// Fresh stats with the given circuit settings.
    pub fn new(circuit: &CircuitConfig) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            latencies: SampleRing::new(),
            ttfts: SampleRing::new(),
            outcomes: SampleRing::new(),
            computed: ArcSwap::from_pointee(Computed::default()),
            computed_at: AtomicU64::new(0),
            circuit: Circuit::new(circuit),
        }
    }

    /// Applies new circuit settings (after a configuration reload).
    pub fn set_circuit_config(&self, config: &CircuitConfig) {
        self.circuit.threshold.store(config.failure_threshold.max(1), Ordering::Relaxed);
        self.circuit.open_ms.store(config.open_ms, Ordering::Relaxed);
    }

    /// Counts an attempt in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { stats: self.clone() }
    }

    /// Whether the circuit lets a request through now. In half-open state,
    /// one probe at a time is let through.
    pub fn admit(&self) -> bool {
        self.circuit.admit(now_ms())
    }

    /// A complete answer in `latency`.
    pub fn record_success(&self, latency: Duration) {
        self.latencies.push(latency.as_secs_f32() * 1000.0);
        self.outcomes.push(0.0);
        self.circuit.on_success();
    }

    /// The first token of a stream after `ttft`.
    pub fn record_first_token(&self, ttft: Duration) {
        self.ttfts.push(ttft.as_secs_f32() * 1000.0);
    }

    /// A failed attempt (connection, timeout, 429, 5xx, broken stream).
    pub fn record_failure(&self) {
        self.outcomes.push(1.0);
        self.circuit.on_failure(now_ms());
    }

    /// Gives back a half-open probe permit that ended with no verdict (the
    /// client went away), so the next request can probe.
    pub fn release_probe(&self) {
        self.circuit.probe_in_flight.store(false, Ordering::Release);
    }

    /// The circuit's state as a policy sees it.
    pub fn circuit_state(&self) -> CircuitState {
        self.circuit.state(now_ms())
    }

    /// The stats handed to a policy: percentiles and rates at most
    /// `RECOMPUTE_MS` old, in-flight count and circuit live.
    pub fn view(&self) -> BackendStats {
        let now = now_ms();
        let at = self.computed_at.load(Ordering::Relaxed);
        let stale = at == 0 || now.saturating_sub(at) >= RECOMPUTE_MS;
        if stale && self.computed_at.compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.computed.store(Arc::new(self.compute(now)));
        }
        self.with(now, **self.computed.load())
    }

    /// The stats computed now, for the admin API (not the request path).
    pub fn view_now(&self) -> BackendStats {
        let now = now_ms();
        self.with(now, self.compute(now))
    }

    fn with(&self, now: u64, c: Computed) -> BackendStats {
        BackendStats {
            circuit: self.circuit.state(now),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            latency_p50_ms: c.p50,
            latency_p95_ms: c.p95,
            ttft_ms: c.ttft,
            error_rate: c.error_rate,
            samples: c.samples,
        }
    }

    fn compute(&self, now: u64) -> Computed {
        let mut lat = self.latencies.recent(now);
        lat.sort_by(f32::total_cmp);
        let pct = |p: f32| if lat.is_empty() { 0.0 } else { lat[((lat.len() - 1) as f32 * p).round() as usize] };
        let ttfts = self.ttfts.recent(now);
        let outcomes = self.outcomes.recent(now);
        let mean = |v: &[f32]| if v.is_empty() { 0.0 } else { v.iter().sum::<f32>() / v.len() as f32 };
        Computed { p50: pct(0.5), p95: pct(0.95), ttft: mean(&ttfts), error_rate: mean(&outcomes), samples: outcomes.len() as u32 }
    }
}

/// Decrements the in-flight count when dropped.
pub struct InFlight {
    stats: Arc<LiveStats>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Opens after `threshold` consecutive failures; after `open_ms`, lets one
/// probe through (half-open); closes on its success, opens again on failure.
struct Circuit {
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    opened_at: AtomicU64,
    probe_in_flight: AtomicBool,
    threshold: AtomicU32,
    open_ms: AtomicU64,
}

impl Circuit {
    fn new(config: &CircuitConfig) -> Self {
        Self {
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            probe_in_flight: AtomicBool::new(false),
            threshold: AtomicU32::new(config.failure_threshold.max(1)),
            open_ms: AtomicU64::new(config.open_ms),
        }
    }

    fn admit(&self, now: u64) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN if now < self.opened_at.load(Ordering::Relaxed) + self.open_ms.load(Ordering::Relaxed) => false,
            // Cool-down over (or half-open): one probe at a time.
            _ => {
                let won = self.probe_in_flight.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok();
                if won {
                    self.state.store(HALF_OPEN, Ordering::Release);
                }
                won
            }
        }
    }

    fn on_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            tracing::info!("circuit closed");
        }
        self.probe_in_flight.store(false, Ordering::Release);
    }

    fn on_failure(&self, now: u64) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let state = self.state.load(Ordering::Acquire);
        if state == HALF_OPEN || (state == CLOSED && failures >= self.threshold.load(Ordering::Relaxed)) {
            self.opened_at.store(now, Ordering::Relaxed);
            self.state.store(OPEN, Ordering::Release);
            self.probe_in_flight.store(false, Ordering::Release);
        }
    }

    fn state(&self, now: u64) -> CircuitState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => CircuitState::Closed,
            OPEN if now < self.opened_at.load(Ordering::Relaxed) + self.open_ms.load(Ordering::Relaxed) => CircuitState::Open,
            _ => CircuitState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(threshold: u32, open_ms: u64) -> Arc<LiveStats> {
        Arc::new(LiveStats::new(&CircuitConfig { failure_threshold: threshold, open_ms }))
    }

    #[test]
    fn circuit_opens_probes_and_closes() {
        // 500 ms open: the checks that it is open must fit in it on a busy machine.
        let s = stats(3, 500);
        for _ in 0..2 {
            s.record_failure();
        }
        assert_eq!(s.circuit_state(), CircuitState::Closed);
        s.record_failure();
        assert_eq!(s.circuit_state(), CircuitState::Open);
        assert!(!s.admit());
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(s.circuit_state(), CircuitState::HalfOpen);
        assert!(s.admit(), "the first probe goes through");
        assert!(!s.admit(), "one probe at a time");
        s.record_failure();
        assert_eq!(s.circuit_state(), CircuitState::Open, "a failed probe opens again");
        std::thread::sleep(Duration::from_millis(600));
        assert!(s.admit());
        s.record_success(Duration::from_millis(5));
        assert_eq!(s.circuit_state(), CircuitState::Closed);
        assert!(s.admit() && s.admit());
    }

    #[test]
    fn view_reports_percentiles_error_rate_and_in_flight() {
        let s = stats(100, 1000);
        for ms in 1..=100 {
            s.record_success(Duration::from_millis(ms));
        }
        for _ in 0..25 {
            s.record_failure();
        }
        s.record_first_token(Duration::from_millis(40));
        let guard = s.start();
        let v = s.view();
        assert_eq!(v.in_flight, 1);
        drop(guard);
        assert_eq!(s.view().in_flight, 0);
        assert!((49.0..=52.0).contains(&v.latency_p50_ms), "{v:?}");
        assert!((94.0..=97.0).contains(&v.latency_p95_ms), "{v:?}");
        assert_eq!(v.samples, 125);
        assert!((v.error_rate - 0.2).abs() < 0.01, "{v:?}");
        assert!((v.ttft_ms - 40.0).abs() < 0.5);
    }
}
