//! `confide-bench`: N concurrent end-to-end encrypted consultations through a real
//! `confide` server, measured, and the same load through a raw UDP relay with the same
//! per-packet AEAD work as the limit we hold the SFU to.
//!
//! Each consultation is a doctor and a patient (plus optional invited guests) run by
//! the native client exactly as browsers would: REST login with TOTP, `/ws` signaling,
//! waiting room and admission, the consultation's MLS group (device registration,
//! KeyPackages, key directory and log checks, the doctor's Add, the Welcome), WebRTC
//! (str0m) through the SFU, SFrame-sealed synthetic frames (keys from the group's epoch
//! secret) carrying their send time inside the ciphertext.
//! Participants share a few client threads (`--client-threads`), each driving many
//! sessions on one event loop.
//!
//! See docs/benchmarks.md ("Load harness") for what each figure means.

mod alloc;
mod mls_time;
mod relay;
mod report;
mod sfu_run;
mod sys;

use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use confide_client::Traffic;

use crate::report::{Machine, Ramp, RampStep, Ratio, Report, RunResult};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// A duration like `20s`, `500ms`, `2m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// A bitrate like `1.5M`, `800k`, `1500000`.
fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('M' | 'm') => (&s[..s.len() - 1], 1e6),
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        _ => (s, 1.0),
    };
    num.parse::<f64>()
        .map(|v| (v * mul) as u64)
        .map_err(|_| format!("bad rate {s:?}"))
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "confide-bench",
    about = "Load harness: concurrent E2EE consultations through the SFU, and the raw-relay limit"
)]
pub struct Options {
    /// Concurrent consultations.
    #[arg(long, default_value_t = 10)]
    pub consultations: usize,
    /// Measurement window per run.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Settling time after setup, before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Invited guests per consultation, besides doctor and patient.
    #[arg(long, default_value_t = 0)]
    pub extra_participants: usize,
    /// Video bitrate per publisher (keyframes included).
    #[arg(long, default_value = "1.5M", value_parser = parse_rate)]
    pub video_bitrate: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Time between video keyframes.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub keyframe_interval: Duration,
    /// Audio packets per second.
    #[arg(long, default_value_t = 50)]
    pub audio_pps: u32,
    /// No video (audio only).
    #[arg(long)]
    pub no_video: bool,
    /// SFU worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Turn the SFU's per-leg bandwidth estimation and pacing off (`confide serve
    /// --media-bwe off`).
    #[arg(long)]
    pub no_bwe: bool,
    /// Client event-loop threads driving all participants.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Consultations set up at once.
    #[arg(long, default_value_t = 8)]
    pub setup_concurrency: usize,
    /// Raise N until loss > 1 % or p99 > 50 ms; report the largest healthy N.
    #[arg(long)]
    pub ramp: bool,
    /// First N of the ramp.
    #[arg(long, default_value_t = 10)]
    pub ramp_start: usize,
    /// Step of the ramp.
    #[arg(long, default_value_t = 10)]
    pub ramp_step: usize,
    /// Largest N the ramp tries.
    #[arg(long, default_value_t = 200)]
    pub ramp_max: usize,
    /// Measurement window of each ramp step.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub ramp_duration: Duration,
    /// Also run the same load through a baseline: `raw-relay`.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Run only the baseline (no SFU).
    #[arg(long)]
    pub baseline_only: bool,
    /// Target a running server (`https://host:port`) instead of starting one. Needs
    /// `--people`; the forwarder's own CPU figures are then the server's to read (its
    /// `/metrics`), this harness reports what the clients see.
    #[arg(long, requires = "people")]
    pub target: Option<String>,
    /// With `--target`: the accounts to use, as printed by
    /// `confide admin bench-accounts --pairs N` on the server.
    #[arg(long)]
    pub people: Option<std::path::PathBuf>,
    /// With `--target`: trust this certificate (PEM; a self-signed server's `cert.pem`)
    /// instead of the public roots.
    #[arg(long)]
    pub target_cert: Option<std::path::PathBuf>,
    /// Print one JSON document on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Only time the MLS operations of a consultation's setup natively (group create,
    /// add 1 and 7, processing a commit and a Welcome) and print them; no server.
    #[arg(long)]
    pub mls_timings: bool,
    /// Runs per operation of `--mls-timings`.
    #[arg(long, default_value_t = 50)]
    pub mls_iterations: usize,
}

impl Options {
    pub fn traffic(&self) -> Traffic {
        Traffic {
            video: !self.no_video,
            audio: true,
            video_bps: self.video_bitrate,
            fps: self.fps,
            keyframe_interval: self.keyframe_interval,
            audio_pps: self.audio_pps,
            ..Traffic::default()
        }
    }

    fn workers(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        }
    }
}

/// Progress on stderr: a bar while measuring, notes otherwise.
pub struct Progress {
    last: Mutex<Instant>,
}

impl Progress {
    fn new() -> Self {
        Progress {
            last: Mutex::new(Instant::now()),
        }
    }

    pub fn note(&self, msg: &str) {
        eprintln!("\r\x1b[K{msg}");
    }

    pub fn setup(&self, done: usize, total: usize) {
        eprint!("\r\x1b[Ksetup {done}/{total} consultations");
        if done == total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }

    pub fn measure(&self, system: &str, n: usize, t: Duration, total: Duration, fwd_pps: f64) {
        if let Ok(mut last) = self.last.lock() {
            if last.elapsed() < Duration::from_millis(200) && t < total {
                return;
            }
            *last = Instant::now();
        }
        let frac = (t.as_secs_f64() / total.as_secs_f64()).min(1.0);
        let width = 30;
        let filled = (frac * width as f64) as usize;
        eprint!(
            "\r\x1b[K{system:<9} N={n:<4} [{}{}] {:>4.1}/{:.0} s  forwarding {:.0} pkt/s",
            "#".repeat(filled),
            ".".repeat(width - filled),
            t.as_secs_f64(),
            total.as_secs_f64(),
            fwd_pps
        );
        if t >= total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

fn ramp_step(r: &RunResult) -> RampStep {
    RampStep {
        consultations: r.consultations,
        pps_out: r.pps_out,
        loss: r.loss,
        p99_ms: r.latency_ms.p99,
        forwarder_cpu_cores: r.forwarder_cpu_cores,
        healthy: r.healthy,
    }
}

fn finish_ramp(system: &str, steps: Vec<RampStep>) -> Ramp {
    let best = steps
        .iter()
        .take_while(|s| s.healthy)
        .last()
        .map(|s| (s.consultations, s.pps_out));
    Ramp {
        system: system.into(),
        steps,
        largest_healthy: best.map(|b| b.0),
        largest_healthy_pps_out: best.map(|b| b.1),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let opts = Options::parse();
    if opts.mls_timings {
        let t = mls_time::run(opts.mls_iterations)?;
        if opts.json {
            println!("{}", serde_json::to_string_pretty(&t)?);
        } else {
            println!("{}", mls_time::table(&t));
        }
        return Ok(());
    }
    if let Some(b) = &opts.baseline {
        anyhow::ensure!(b == "raw-relay", "--baseline: only raw-relay is known");
    }
    anyhow::ensure!(
        opts.target.is_none() || (opts.baseline.is_none() && !opts.baseline_only),
        "--target with --baseline: the raw relay runs on this machine, the server elsewhere, \
         so their figures do not compare; run the baseline on the server's machine"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let progress = Progress::new();
    let mut report = Report {
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: report::cpu_model(),
            loadavg_start: sys::loadavg(),
            loadavg_end: 0.0,
        },
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..Default::default()
    };
    let baseline = opts.baseline.is_some() || opts.baseline_only;
    let workers = opts.workers();

    rt.block_on(async {
        let mut target = if opts.baseline_only {
            None
        } else if let Some(url) = &opts.target {
            Some(sfu_run::Target::remote(url, &opts).await?)
        } else {
            Some(sfu_run::Target::start_local(opts.workers, !opts.no_bwe).await?)
        };
        if opts.ramp {
            let ns: Vec<usize> = (opts.ramp_start.max(1)..=opts.ramp_max)
                .step_by(opts.ramp_step.max(1))
                .collect();
            if let Some(t) = target.as_mut() {
                let mut steps = Vec::new();
                for &n in &ns {
                    let r = sfu_run::run(t, &opts, n, opts.ramp_duration, &progress).await?;
                    let healthy = r.healthy;
                    steps.push(ramp_step(&r));
                    if !healthy {
                        break;
                    }
                }
                report.ramps.push(finish_ramp("sfu", steps));
            }
            if baseline {
                let mut steps = Vec::new();
                for &n in &ns {
                    let o = opts.clone();
                    let r = tokio::task::block_in_place(|| {
                        relay::run(&o, n, o.ramp_duration, workers, &progress)
                    })?;
                    let healthy = r.healthy;
                    steps.push(ramp_step(&r));
                    if !healthy {
                        break;
                    }
                }
                report.ramps.push(finish_ramp("raw-relay", steps));
            }
        } else {
            if let Some(t) = target.as_mut() {
                let r =
                    sfu_run::run(t, &opts, opts.consultations, opts.duration, &progress).await?;
                report.runs.push(r);
            }
            if baseline {
                let o = opts.clone();
                let r = tokio::task::block_in_place(|| {
                    relay::run(&o, o.consultations, o.duration, workers, &progress)
                })?;
                report.runs.push(r);
            }
        }
        anyhow::Ok(())
    })?;

    // The headline ratios.
    let sfu = report.runs.iter().find(|r| r.system == "sfu");
    let raw = report.runs.iter().find(|r| r.system == "raw-relay");
    let mut ratio = Ratio::default();
    if let (Some(s), Some(r)) = (sfu, raw) {
        if r.pps_out_per_core > 0.0 {
            ratio.pps_per_core = Some(s.pps_out_per_core / r.pps_out_per_core);
        }
        if r.pps_out > 0.0 {
            ratio.pps_same_load = Some(s.pps_out / r.pps_out);
        }
    }
    let rs = report.ramps.iter().find(|r| r.system == "sfu");
    let rr = report.ramps.iter().find(|r| r.system == "raw-relay");
    if let (Some(Some(s)), Some(Some(r))) = (
        rs.map(|r| r.largest_healthy_pps_out),
        rr.map(|r| r.largest_healthy_pps_out),
    ) && r > 0.0
    {
        ratio.ramp_max_pps = Some(s / r);
    }
    report.ratio = ratio;
    report.machine.loadavg_end = sys::loadavg();
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report::table(&report));
    }
    // Worker threads of the in-process server and clients end with the process.
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("3h").is_err());
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000));
        assert_eq!(parse_rate("800k"), Ok(800_000));
        assert!(parse_rate("fast").is_err());
    }
}
