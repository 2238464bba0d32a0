//! What a run measured, as JSON and as a table.

use serde::Serialize;

/// Latency quantiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// One measured run of one system at one load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    /// `sfu` or `raw-relay`.
    pub system: String,
    pub consultations: usize,
    pub participants_per_consultation: usize,
    /// Publishers (everyone publishes) and subscriptions (each hears every other).
    pub publishers: usize,
    pub subscriptions: usize,
    /// Consultations whose setup failed (not measured).
    pub failed_setups: usize,
    pub duration_s: f64,
    /// Media packets into and out of the forwarder, per second.
    pub pps_in: f64,
    pub pps_out: f64,
    /// UDP payload megabits per second out of (and into) the forwarder.
    pub mbps_in: f64,
    pub mbps_out: f64,
    /// One-way latency sender -> forwarder -> receiver, from the send time inside the
    /// encrypted payload (all frames; for the SFU a video frame counts at its last packet).
    pub latency_ms: Quantiles,
    /// Audio only: one packet per frame, so this is packet latency.
    pub audio_latency_ms: Option<Quantiles>,
    /// The SFU's own share (receive batch to send), from its histogram: p99 upper bound.
    pub forwarder_latency_p99_ms: Option<f64>,
    /// Fraction of frames (SFU) or packets (relay) that never arrived.
    pub loss: f64,
    /// Fraction of audio packets that never arrived (SFU).
    pub audio_loss: Option<f64>,
    /// Mean RFC 3550 interarrival jitter of audio streams, milliseconds.
    pub jitter_ms: f64,
    /// CPU of the forwarding threads (SFU workers or relay threads), in cores.
    pub forwarder_cpu_cores: f64,
    /// Forwarded packets per second per core of forwarder CPU.
    pub pps_out_per_core: f64,
    /// CPU of the whole bench process (server, clients, load), in cores.
    pub process_cpu_cores: f64,
    /// Busy fraction of each core of the machine (everything running on it).
    pub machine_cpu_per_core: Vec<f64>,
    pub rss_mb: f64,
    /// Time from a consultation's first login to media opened on every side (SFU).
    pub setup_ms: Option<Quantiles>,
    pub setup_max_ms: Option<f64>,
    /// Heap allocations on the SFU worker threads per forwarded packet (style.md A5:
    /// a rise is a regression).
    pub sfu_allocations_per_packet: Option<f64>,
    /// Frames that failed to open (forged, wrong key): must be 0.
    pub open_failures: u64,
    /// Frames refused by the replay window (late duplicates after retransmission).
    pub replayed: u64,
    /// Loss <= 1 % and p99 latency <= 50 ms.
    pub healthy: bool,
    /// A server this harness did not start (`--target`): packet rates are the frames the
    /// clients sent and received, and the forwarder's CPU is the server's to report.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
}

/// One ramp step.
#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    pub consultations: usize,
    pub pps_out: f64,
    pub loss: f64,
    pub p99_ms: f64,
    pub forwarder_cpu_cores: f64,
    pub healthy: bool,
}

/// A ramp of one system.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ramp {
    pub system: String,
    pub steps: Vec<RampStep>,
    /// The largest N that stayed healthy (loss <= 1 %, p99 <= 50 ms).
    pub largest_healthy: Option<usize>,
    /// Forwarded packets per second at that N.
    pub largest_healthy_pps_out: Option<f64>,
}

/// The headline: our figure as a fraction of the raw relay's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratio {
    /// Forwarded packets per core-second, SFU / raw relay, same offered load.
    pub pps_per_core: Option<f64>,
    /// Forwarded packets per second, SFU / raw relay, same offered load.
    pub pps_same_load: Option<f64>,
    /// Largest healthy forwarded packet rate, SFU / raw relay (ramp).
    pub ramp_max_pps: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub loadavg_start: f64,
    pub loadavg_end: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub runs: Vec<RunResult>,
    pub ramps: Vec<Ramp>,
    pub ratio: Ratio,
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default()
}

fn f(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The human table (LiveKit's benchmark layout plus our columns).
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "machine: {} cores, {}; load average {:.1} -> {:.1}\n\n",
        r.machine.cores, r.machine.cpu_model, r.machine.loadavg_start, r.machine.loadavg_end
    ));
    if !r.runs.is_empty() {
        s.push_str("| system | consultations | pubs/subs | pps in | pps out | Mbit/s out | fwd CPU (cores) | pps/core | p50 / p95 / p99 ms | loss | jitter ms | setup p50 ms | RSS MB |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for x in &r.runs {
            s.push_str(&format!(
                "| {} | {} | {}/{} | {} | {} | {:.1} | {:.2} | {} | {:.1} / {:.1} / {:.1} | {:.3} % | {:.2} | {} | {:.0} |\n",
                x.system,
                x.consultations,
                x.publishers,
                x.subscriptions,
                f(x.pps_in),
                f(x.pps_out),
                x.mbps_out,
                x.forwarder_cpu_cores,
                if x.remote { "-".to_string() } else { f(x.pps_out_per_core) },
                x.latency_ms.p50,
                x.latency_ms.p95,
                x.latency_ms.p99,
                x.loss * 100.0,
                x.jitter_ms,
                x.setup_ms.map_or("-".into(), |q| format!("{:.0}", q.p50)),
                x.rss_mb,
            ));
        }
        if r.runs.iter().any(|x| x.remote) {
            s.push_str("\nremote server (--target): pps are frames seen by the clients; the forwarder's CPU is on the server (its /metrics).\n");
        }
        for x in &r.runs {
            s.push_str(&format!(
                "\n{}: machine CPU per core {:?}; process CPU {:.2} cores; forwarder-only p99 {}; SFU allocations per forwarded packet {}; audio loss {}; open failures {}; replay-window refusals {}; failed setups {}",
                x.system,
                x.machine_cpu_per_core
                    .iter()
                    .map(|c| format!("{:.0}%", c * 100.0))
                    .collect::<Vec<_>>(),
                x.process_cpu_cores,
                x.forwarder_latency_p99_ms
                    .map_or("-".into(), |v| format!("{v:.2} ms")),
                x.sfu_allocations_per_packet
                    .map_or("-".into(), |v| format!("{v:.2}")),
                x.audio_loss.map_or("-".into(), |v| format!("{:.3} %", v * 100.0)),
                x.open_failures,
                x.replayed,
                x.failed_setups,
            ));
        }
        s.push('\n');
    }
    for ramp in &r.ramps {
        s.push_str(&format!("\nramp ({}):\n", ramp.system));
        for st in &ramp.steps {
            s.push_str(&format!(
                "  N={:<4} pps out {:>8}  loss {:.3} %  p99 {:.1} ms  fwd CPU {:.2}  {}\n",
                st.consultations,
                f(st.pps_out),
                st.loss * 100.0,
                st.p99_ms,
                st.forwarder_cpu_cores,
                if st.healthy { "healthy" } else { "UNHEALTHY" }
            ));
        }
        s.push_str(&format!(
            "  largest healthy N: {}\n",
            ramp.largest_healthy
                .map_or("none".into(), |n| n.to_string())
        ));
    }
    let ra = &r.ratio;
    if ra.pps_per_core.is_some() || ra.ramp_max_pps.is_some() {
        s.push_str("\nheadline, SFU as a fraction of the raw relay (same machine, same run):\n");
        if let Some(v) = ra.pps_per_core {
            s.push_str(&format!(
                "  forwarded packets per core-second at the same load: {:.0} %\n",
                v * 100.0
            ));
        }
        if let Some(v) = ra.pps_same_load {
            s.push_str(&format!(
                "  forwarded packets per second at the same load: {:.0} %\n",
                v * 100.0
            ));
        }
        if let Some(v) = ra.ramp_max_pps {
            s.push_str(&format!(
                "  largest healthy packet rate (ramp): {:.0} %\n",
                v * 100.0
            ));
        }
    }
    s
}

/// Latency histogram: 10 us buckets up to 1 s.
#[derive(Debug, Clone)]
pub struct Hist(Vec<u32>);

pub const STEP_US: u64 = 10;

impl Default for Hist {
    fn default() -> Self {
        Hist(vec![0; 100_001])
    }
}

impl Hist {
    pub fn record_ns(&mut self, ns: u64) {
        let i = ((ns / 1000 / STEP_US) as usize).min(self.0.len() - 1);
        self.0[i] = self.0[i].saturating_add(1);
    }

    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a += b;
        }
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.0.iter().map(|&c| c as u64).sum();
        if total == 0 {
            return 0.0;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (i, &c) in self.0.iter().enumerate() {
            acc += c as u64;
            if acc >= want {
                return ((i as u64 + 1) * STEP_US) as f64 / 1000.0;
            }
        }
        (self.0.len() as u64 * STEP_US) as f64 / 1000.0
    }

    pub fn quantiles(&self) -> Quantiles {
        Quantiles {
            p50: self.quantile_ms(0.5),
            p95: self.quantile_ms(0.95),
            p99: self.quantile_ms(0.99),
        }
    }
}
