//! N consultations through a real `confide` server: REST login with TOTP, WebSocket
//! signaling, waiting room and admission, the consultation's MLS group (each person's
//! device registered with its KeyPackages, the doctor's device checking each joiner in
//! the key directory and its log, the Add commit and the Welcome), WebRTC through the
//! SFU with frames under the group's epoch keys.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use confide_client::{Credentials, Endpoint, LoopStats, MediaLoop, Participant, SlotId, Traffic};
use confide_server::confide_signaling::http::now;
use confide_server::confide_signaling::model::Role;
use confide_server::confide_signaling::ops;
use confide_server::{Config, Running};
use serde_json::json;
use tokio::sync::watch;

use crate::report::{Quantiles, RunResult};
use crate::{Options, Progress, sys};

/// Where the server is.
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub cert_der: Option<Vec<u8>>,
    /// In-process server (for its SFU counters and account creation).
    pub local: Option<(Running, tempfile::TempDir)>,
    staff: Credentials,
    /// Pairs (doctor, patient) created so far, with their account ids.
    people: Vec<(Credentials, i64, Credentials, i64)>,
    /// Session tokens by username: like a browser, a person logs in once and keeps the
    /// session for later consultations (a TOTP code is also good for one login only).
    tokens: std::collections::HashMap<String, String>,
    next_source: u32,
}

impl Target {
    /// Starts a server in this process (SFU with `workers` threads, 0 = one per core).
    pub async fn start_local(workers: usize, bwe: bool) -> anyhow::Result<Target> {
        let dir = tempfile::tempdir()?;
        let mut cfg = Config::new(dir.path().join("data"));
        cfg.bind = "127.0.0.1:0".parse()?;
        cfg.demo = true;
        cfg.static_dir = Some(dir.path().join("no-static"));
        cfg.media.workers = workers;
        cfg.media.bwe = bwe;
        let running = confide_server::start(cfg).await?;
        let demo = running.demo.clone().context("demo accounts")?;
        let staff = demo.account(Role::Staff).context("staff")?;
        Ok(Target {
            addr: running.addr,
            host: "localhost".into(),
            cert_der: Some(running.cert_der.clone()),
            staff: Credentials {
                username: staff.username.clone(),
                password: staff.password.clone(),
                totp_secret: staff.totp_secret.clone(),
            },
            local: Some((running, dir)),
            people: Vec::new(),
            tokens: std::collections::HashMap::new(),
            next_source: 0,
        })
    }

    /// A server running elsewhere (`https://host:port`), with the accounts of
    /// `opts.people` (made there by `confide admin bench-accounts`).
    pub async fn remote(url: &str, opts: &Options) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("https://")
            .context("--target: https://host:port")?
            .trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .context("--target: https://host:port")?;
        let port: u16 = port.parse().context("--target: the port")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        // IPv4 first: `localhost` often resolves to ::1 first, and a server bound to
        // 127.0.0.1 is not there.
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .with_context(|| format!("{host} has no address"))?;
        let path = opts.people.as_ref().context("--target needs --people")?;
        let people: ops::BenchPeople = serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )
        .context("--people: the JSON `confide admin bench-accounts` prints")?;
        let cert_der = match &opts.target_cert {
            Some(p) => {
                use rustls_pki_types::pem::PemObject as _;
                let c = rustls_pki_types::CertificateDer::from_pem_file(p)
                    .with_context(|| format!("--target-cert {}: a PEM certificate", p.display()))?;
                Some(c.as_ref().to_vec())
            }
            None => None,
        };
        Ok(Target {
            addr,
            host,
            cert_der,
            staff: creds(&people.staff),
            local: None,
            people: people.pairs.iter().map(pair).collect(),
            tokens: std::collections::HashMap::new(),
            next_source: 0,
        })
    }

    pub fn sfu(&self) -> Option<&confide_sfu::SfuHandle> {
        self.local.as_ref().and_then(|(r, _)| r.sfu.as_ref())
    }

    /// Each simulated person connects from its own loopback address (127.1.x.y), as
    /// real people come from their own addresses.
    fn endpoint(&mut self) -> anyhow::Result<Endpoint> {
        self.next_source = self.next_source.wrapping_add(1);
        let n = self.next_source % 65_000 + 1;
        let source = IpAddr::V4(Ipv4Addr::new(127, 1, (n >> 8) as u8, n as u8));
        let source = self.addr.ip().is_loopback().then_some(source);
        Ok(Endpoint::with_source(
            &self.host,
            self.addr,
            self.cert_der.as_deref(),
            source,
        )?)
    }

    /// Makes sure `n` doctor/patient pairs exist (doctors with TOTP, patients with
    /// consent), through the store API of the in-process server.
    async fn ensure_people(&mut self, n: usize) -> anyhow::Result<()> {
        let Some((running, _)) = &self.local else {
            anyhow::ensure!(
                n <= self.people.len(),
                "--people has {} doctor/patient pairs; {n} consultations need {n} \
                 (confide admin bench-accounts --pairs {n})",
                self.people.len()
            );
            return Ok(());
        };
        let state = running.state.clone();
        let terms = running
            .demo
            .as_ref()
            .map(|d| d.terms_version.clone())
            .unwrap_or_default();
        if self.people.len() < n {
            let first = self.people.len();
            let made = ops::create_bench_pairs(
                state.store.as_ref(),
                &state.keyring,
                "bench",
                first,
                n - first,
                &terms,
            )
            .await?;
            self.people.extend(made.iter().map(pair));
        }
        Ok(())
    }
}

/// A doctor/patient pair as the harness keeps it: credentials and account ids.
fn pair(p: &ops::BenchPair) -> (Credentials, i64, Credentials, i64) {
    (
        creds(&p.doctor),
        p.doctor.id,
        creds(&p.patient),
        p.patient.id,
    )
}

fn creds(a: &ops::BenchAccount) -> Credentials {
    Credentials {
        username: a.username.clone(),
        password: a.password.clone(),
        totp_secret: a.totp_secret.clone(),
    }
}

struct Handles {
    slots: Vec<(Arc<MediaLoop>, SlotId)>,
    setup: Duration,
    /// Sessions made during setup: (username, token).
    tokens: Vec<(String, String)>,
}

/// The session token of `creds`: the cached one, or a fresh login (password + TOTP).
async fn session(
    ep: &Endpoint,
    creds: &Credentials,
    cached: Option<String>,
    made: &mut Vec<(String, String)>,
) -> anyhow::Result<String> {
    if let Some(t) = cached {
        return Ok(t);
    }
    let t = ep
        .login(
            &creds.username,
            &creds.password,
            creds.totp_secret.as_deref(),
        )
        .await?;
    made.push((creds.username.clone(), t.clone()));
    Ok(t)
}

/// One consultation: setup, then signaling served until `stop`, then the doctor ends.
#[allow(clippy::too_many_arguments)]
async fn consultation(
    eps: Vec<Endpoint>,
    doctor: (Credentials, Option<String>),
    patient: (Credentials, Option<String>),
    staff_token: String,
    appt: i64,
    extras: usize,
    media: Arc<MediaLoop>,
    traffic: Traffic,
    ready: tokio::sync::mpsc::Sender<Result<Handles, String>>,
    mut stop: watch::Receiver<bool>,
) {
    let t0 = Instant::now();
    let mut made = Vec::new();
    let setup = async {
        let dt = session(&eps[0], &doctor.0, doctor.1, &mut made).await?;
        let mut d = Participant::join_with_token(&eps[0], &dt, appt, media.clone()).await?;
        d.start_media(traffic).await?;
        let pt = session(&eps[1], &patient.0, patient.1, &mut made).await?;
        let mut others =
            vec![Participant::join_with_token(&eps[1], &pt, appt, media.clone()).await?];
        for k in 0..extras {
            // A guest: an invite from staff, redeemed with the terms accepted.
            let inv = eps[0]
                .request(
                    reqwest_post(),
                    &format!("/api/appointments/{appt}/invites"),
                    Some(&staff_token),
                    Some(&json!({"label": format!("Guest {}", k + 1)})),
                )
                .await?;
            let tok = inv["invite_token"].as_str().unwrap_or_default().to_string();
            let terms = eps[2 + k]
                .request(reqwest_get(), "/api/consent/terms", None, None)
                .await?;
            let guest = eps[2 + k]
                .request(
                    reqwest_post(),
                    "/api/invites/redeem",
                    None,
                    Some(&json!({"invite_token": tok, "accept_terms_version": terms["version"]})),
                )
                .await?;
            let token = guest["token"].as_str().unwrap_or_default().to_string();
            others.push(
                Participant::join_with_token(&eps[2 + k], &token, appt, media.clone()).await?,
            );
        }
        let n = others.len();
        let mut waits = Vec::new();
        for mut o in others {
            waits.push(tokio::spawn(
                async move { o.wait_admitted().await.map(|_| o) },
            ));
        }
        d.admit(n).await?;
        let mut all = vec![d];
        for w in waits {
            let mut o = w.await.map_err(|e| anyhow::anyhow!("{e}"))??;
            o.start_media(traffic).await?;
            all.push(o);
        }
        anyhow::Ok(all)
    };
    let mut all = match setup.await {
        Ok(a) => a,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}"))).await;
            return;
        }
    };
    // Keys from every peer and frames opened on every side.
    let peers = all.len() - 1;
    let mut serving = Vec::new();
    for mut p in all.drain(..) {
        let m = media.clone();
        serving.push(tokio::spawn(async move {
            let slot = p.slot();
            let flowing = async {
                let Some(slot) = slot else { return };
                for _ in 0..3000 {
                    match m.status(slot).await {
                        Ok(s) if s.keyed_peers >= peers && s.frames_opened > 0 => return,
                        Err(_) => return,
                        _ => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            };
            let r = p.serve_until(flowing).await;
            r.map(|_| p)
        }));
    }
    for s in serving {
        match s.await {
            Ok(Ok(p)) => all.push(p),
            Ok(Err(e)) => {
                let _ = ready.send(Err(format!("{e}"))).await;
                return;
            }
            Err(e) => {
                let _ = ready.send(Err(format!("{e}"))).await;
                return;
            }
        }
    }
    let setup = t0.elapsed();
    let slots = all
        .iter()
        .filter_map(|p| p.slot().map(|s| (media.clone(), s)))
        .collect();
    let _ = ready
        .send(Ok(Handles {
            slots,
            setup,
            tokens: made,
        }))
        .await;

    // Serve signaling until told to stop; then the doctor ends it.
    let mut tasks = Vec::new();
    let mut doctor = None;
    for (i, mut p) in all.into_iter().enumerate() {
        let mut stop = stop.clone();
        let t = tokio::spawn(async move {
            let r = p
                .serve_until(async {
                    let _ = stop.wait_for(|v| *v).await;
                })
                .await;
            (p, r)
        });
        if i == 0 {
            doctor = Some(t);
        } else {
            tasks.push(t);
        }
    }
    let _ = stop.wait_for(|v| *v).await;
    if let Some(d) = doctor
        && let Ok((d, _)) = d.await
    {
        let _ = d.end().await;
    }
    for t in tasks {
        if let Ok((p, _)) = t.await {
            let _ = p.wait_ended(Duration::from_secs(10)).await;
        }
    }
}

fn reqwest_post() -> confide_client::signaling::Method {
    confide_client::signaling::Method::POST
}

fn reqwest_get() -> confide_client::signaling::Method {
    confide_client::signaling::Method::GET
}

/// Runs `n` consultations for `opts.duration` and measures.
pub async fn run(
    target: &mut Target,
    opts: &Options,
    n: usize,
    duration: Duration,
    progress: &Progress,
) -> anyhow::Result<RunResult> {
    let per = 2 + opts.extra_participants;
    target.ensure_people(n).await?;
    let staff_ep = target.endpoint()?;
    let staff = target.staff.clone();
    let staff_token = match target.tokens.get(&staff.username) {
        Some(t) => t.clone(),
        None => {
            let t = staff_ep
                .login(
                    &staff.username,
                    &staff.password,
                    staff.totp_secret.as_deref(),
                )
                .await?;
            target.tokens.insert(staff.username.clone(), t.clone());
            t
        }
    };
    let loops: Vec<Arc<MediaLoop>> = (0..opts.client_threads.max(1))
        .map(|i| MediaLoop::start(&format!("bench-client-{i}"), target.addr.ip()).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n.max(1));
    let traffic = opts.traffic();
    progress.note(&format!(
        "setting up {n} consultations ({per} participants each)"
    ));
    let limit = Arc::new(tokio::sync::Semaphore::new(opts.setup_concurrency.max(1)));
    for i in 0..n {
        let (d, did, p, pid) = target.people[i].clone();
        let d = (d.clone(), target.tokens.get(&d.username).cloned());
        let p = (p.clone(), target.tokens.get(&p.username).cloned());
        let appt = staff_ep
            .request(
                reqwest_post(),
                "/api/appointments",
                Some(&staff_token),
                Some(
                    &json!({"doctor": did, "patient": pid, "start": now().secs(),
                              "duration_min": 240, "reason": "load test"}),
                ),
            )
            .await?["id"]
            .as_i64()
            .context("appointment id")?;
        let eps = (0..per)
            .map(|_| target.endpoint())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let media = loops[i % loops.len()].clone();
        let (tx, rx, tok, lim) = (
            ready_tx.clone(),
            stop_rx.clone(),
            staff_token.clone(),
            limit.clone(),
        );
        let extras = opts.extra_participants;
        tokio::spawn(async move {
            // Bounded concurrent setups: logins hash passwords on the server.
            let permit = lim.acquire_owned().await;
            let (inner_tx, mut inner_rx) = tokio::sync::mpsc::channel(1);
            let c = tokio::spawn(consultation(
                eps, d, p, tok, appt, extras, media, traffic, inner_tx, rx,
            ));
            let r = inner_rx
                .recv()
                .await
                .unwrap_or_else(|| Err("setup task ended".into()));
            drop(permit);
            let _ = tx.send(r).await;
            let _ = c.await;
        });
    }
    drop(ready_tx);
    let mut setups = Vec::new();
    let mut failed = 0;
    let mut slots = Vec::new();
    for _ in 0..n {
        let Some(r) = ready_rx.recv().await else {
            break;
        };
        match r {
            Ok(h) => {
                setups.push(h.setup);
                slots.extend(h.slots);
                target.tokens.extend(h.tokens);
            }
            Err(e) => {
                failed += 1;
                progress.note(&format!("consultation setup failed: {e}"));
            }
        }
        progress.setup(setups.len() + failed, n);
    }
    let _ = slots;

    // Warm up, then measure a window.
    tokio::time::sleep(opts.warmup).await;
    for l in &loops {
        l.stats(true).await?;
    }
    let sfu0 = target.sfu().map(|s| s.stats_now());
    let cpu0 = sys::thread_cpu("sfu-worker");
    let allocs0 = crate::alloc::sfu_allocations();
    let proc0 = sys::process_cpu();
    let cores0 = sys::CoreTimes::now();
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let fwd = match (&sfu0, target.sfu()) {
            (Some(a), Some(h)) => {
                let (a, b) = (a.total(), h.stats_now().total());
                (b.audio_packets_out + b.video_packets_out
                    - a.audio_packets_out
                    - a.video_packets_out) as f64
                    / t0.elapsed().as_secs_f64()
            }
            _ => 0.0,
        };
        progress.measure("sfu", n, t0.elapsed(), duration, fwd);
    }
    let wall = t0.elapsed().as_secs_f64();
    let mut ls = LoopStats::default();
    for l in &loops {
        ls.merge(&l.stats(false).await?);
    }
    let cpu = (sys::thread_cpu("sfu-worker") - cpu0).as_secs_f64() / wall;
    let allocs = crate::alloc::sfu_allocations() - allocs0;
    let proc_cpu = (sys::process_cpu() - proc0).as_secs_f64() / wall;
    let machine = sys::CoreTimes::now().busy_since(&cores0);
    let mut r = RunResult {
        system: "sfu".into(),
        consultations: n,
        participants_per_consultation: per,
        publishers: (n - failed) * per,
        subscriptions: (n - failed) * per * (per - 1),
        failed_setups: failed,
        duration_s: wall,
        latency_ms: Quantiles {
            p50: ls.latency_us(0.5).unwrap_or(0) as f64 / 1000.0,
            p95: ls.latency_us(0.95).unwrap_or(0) as f64 / 1000.0,
            p99: ls.latency_us(0.99).unwrap_or(0) as f64 / 1000.0,
        },
        audio_latency_ms: Some(Quantiles {
            p50: ls.audio_latency_us(0.5).unwrap_or(0) as f64 / 1000.0,
            p95: ls.audio_latency_us(0.95).unwrap_or(0) as f64 / 1000.0,
            p99: ls.audio_latency_us(0.99).unwrap_or(0) as f64 / 1000.0,
        }),
        loss: ls.frame_loss(),
        audio_loss: Some(ls.audio_loss()),
        jitter_ms: ls.jitter_us / 1000.0,
        forwarder_cpu_cores: cpu,
        process_cpu_cores: proc_cpu,
        machine_cpu_per_core: machine,
        rss_mb: sys::rss_bytes() as f64 / 1e6,
        open_failures: ls.open_failures,
        replayed: ls.replayed,
        remote: target.local.is_none(),
        ..Default::default()
    };
    if let (Some(a), Some(h)) = (&sfu0, target.sfu()) {
        let now = h.stats_now();
        let (a_t, b) = (a.total(), now.total());
        let d = |x: u64, y: u64| (x - y) as f64 / wall;
        r.pps_in = d(
            b.audio_packets_in + b.video_packets_in,
            a_t.audio_packets_in + a_t.video_packets_in,
        );
        r.pps_out = d(
            b.audio_packets_out + b.video_packets_out,
            a_t.audio_packets_out + a_t.video_packets_out,
        );
        r.mbps_in = d(b.udp_bytes_in, a_t.udp_bytes_in) * 8.0 / 1e6;
        r.mbps_out = d(b.udp_bytes_out, a_t.udp_bytes_out) * 8.0 / 1e6;
        // p99 of the SFU's own forwarding time, from the histogram delta.
        let (la, lb) = (&a.forward_latency, &now.forward_latency);
        let total = lb.count - la.count;
        if total > 0 {
            let want = (total as f64 * 0.99).ceil() as u64;
            let mut acc = 0;
            let mut p99 = None;
            for (i, ub) in confide_sfu::FORWARD_LATENCY_BUCKETS_US.iter().enumerate() {
                acc += lb.buckets[i] - la.buckets[i];
                if acc >= want {
                    p99 = Some(*ub as f64 / 1000.0);
                    break;
                }
            }
            r.forwarder_latency_p99_ms = p99.or(Some(f64::INFINITY));
        }
    } else {
        r.pps_in = (ls.audio_frames_sent + ls.video_frames_sent) as f64 / wall;
        r.pps_out = ls.frames_received() as f64 / wall;
    }
    r.pps_out_per_core = if cpu > 0.0 { r.pps_out / cpu } else { 0.0 };
    if r.pps_out > 0.0 && target.sfu().is_some() {
        r.sfu_allocations_per_packet = Some(allocs as f64 / (r.pps_out * wall));
    }
    setups.sort();
    if !setups.is_empty() {
        let q = |f: f64| {
            setups[((setups.len() as f64 * f).ceil() as usize).clamp(1, setups.len()) - 1]
                .as_secs_f64()
                * 1000.0
        };
        r.setup_ms = Some(Quantiles {
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
        });
        r.setup_max_ms = setups.last().map(|d| d.as_secs_f64() * 1000.0);
    }
    r.healthy = r.loss <= 0.01 && r.latency_ms.p99 <= 50.0 && failed == 0;

    // End every consultation and let the server close the rooms.
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    if let Some((running, _)) = &target.local {
        while running.state.live_rooms() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(loops);
    Ok(r)
}
