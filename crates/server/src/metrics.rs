//! The operators' `/metrics` endpoint (Prometheus text format) on the admin listener.
//!
//! The admin listener is a separate plain-HTTP port, loopback by default
//! (`confide serve --admin-bind 127.0.0.1:9443`), so metrics never share the public
//! HTTPS port. Put it behind your scraper's network only.
//!
//! Where the numbers come from, read at scrape time (nothing on the packet path):
//!
//! - SFU counters: [`SfuHandle::stats_now`] (atomics each worker publishes once per
//!   loop turn), including the forwarding-latency histogram the workers keep.
//! - Consultations, admitted participants and waiting-room size: [`AppState::census`].
//! - Signaling counters (auth failures, token revocations, WebSocket connections): the
//!   `metrics` facade inside `confide-signaling`, rendered by the Prometheus recorder
//!   this module installs once per process.
//! - Process CPU, memory, threads and file descriptors: `/proc/self`.
//!
//! Every name and label is documented in `docs/operations.md` (`## Metrics`). No label
//! carries a person's name or an id: labels are fixed words (`kind`, `reason`,
//! `worker` index).

use std::fmt::{Display, Write as _};
use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use confide_sfu::{DropReason, FORWARD_LATENCY_BUCKETS_US, SfuHandle, WorkerStats};
use confide_signaling::http::AppState;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Names of the counters signaling keeps through the `metrics` facade (see
/// `confide_signaling::http`); pre-registered here so they show from the first scrape.
const AUTH_FAILURES: &str = "confide_auth_failures_total";
const TOKEN_REVOCATIONS: &str = "confide_token_revocations_total";
const WS_CONNECTIONS: &str = "confide_websocket_connections";
const AUDIT_WRITE_FAILURES: &str = "confide_audit_write_failures_total";
/// Tree size of the latest checkpoint each witness cosigned (set by audit_cmd.rs).
pub const AUDIT_WITNESSED_SIZE: &str = "confide_audit_witnessed_size";
/// Unix time of each witness's latest accepted cosignature.
pub const AUDIT_WITNESSED_AT: &str = "confide_audit_witnessed_timestamp_seconds";

/// The running admin listener; dropping it stops the listener.
#[derive(Debug)]
pub struct Admin {
    /// Where it listens (useful when bound to port 0).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Ctx {
    state: AppState,
    sfu: Option<SfuHandle>,
}

/// Binds `bind` and serves `/metrics` (and `/healthz`) over plain HTTP.
pub async fn serve_admin(
    bind: SocketAddr,
    state: AppState,
    sfu: Option<SfuHandle>,
) -> anyhow::Result<Admin> {
    if !bind.ip().is_loopback() {
        tracing::warn!(%bind, "admin listener (metrics) is not on loopback; restrict who can reach it");
    }
    // Install before the first connection so signaling's counters start at zero.
    let _ = recorder();
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the admin listener {bind}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Ctx { state, sfu });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin listener stopped");
        }
    });
    tracing::info!(%addr, "admin listener (metrics) on http");
    Ok(Admin { addr, task })
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    let body = render(&ctx.state, ctx.sfu.as_ref());
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// The process-wide Prometheus recorder behind the `metrics` facade, installed on first
/// use. `None` if another recorder was installed first (then signaling's counters are
/// not exported; everything else still is).
fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let rec = PrometheusBuilder::new().build_recorder();
            let handle = rec.handle();
            if metrics::set_global_recorder(rec).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; signaling counters are not exported"
                );
                return None;
            }
            metrics::describe_counter!(
                AUTH_FAILURES,
                "Failed authentications by kind (login, mfa, websocket, throttled)."
            );
            metrics::describe_counter!(
                TOKEN_REVOCATIONS,
                "Session tokens revoked or expired, by reason."
            );
            metrics::describe_gauge!(WS_CONNECTIONS, "Open WebSocket connections on /ws.");
            for kind in ["login", "mfa", "websocket", "throttled"] {
                metrics::counter!(AUTH_FAILURES, "kind" => kind).increment(0);
            }
            for reason in ["logout", "expired", "revoked", "account_disabled"] {
                metrics::counter!(TOKEN_REVOCATIONS, "reason" => reason).increment(0);
            }
            metrics::gauge!(WS_CONNECTIONS).increment(0.0);
            metrics::describe_counter!(
                AUDIT_WRITE_FAILURES,
                "Audit entries that could not be written, by policy: closed (the action was \
                 refused) or open (the action, which ended access, went ahead). Alert on any."
            );
            for policy in ["closed", "open"] {
                metrics::counter!(AUDIT_WRITE_FAILURES, "policy" => policy).increment(0);
            }
            metrics::describe_gauge!(
                AUDIT_WITNESSED_SIZE,
                "Size of the latest audit checkpoint each witness cosigned. A witness that \
                 stops cosigning (it is down, or it refused a rewritten log) stops it growing."
            );
            metrics::describe_gauge!(
                AUDIT_WITNESSED_AT,
                "Unix time of each witness's latest accepted cosignature; alert when it is \
                 older than a few minutes."
            );
            Some(handle)
        })
        .as_ref()
}

/// Everything `/metrics` returns, as text.
pub fn render(state: &AppState, sfu: Option<&SfuHandle>) -> String {
    let mut w = Writer::default();
    let census = state.census();
    w.gauge(
        "confide_consultations_active",
        "Consultations currently open (someone joined and it has not ended).",
        census.consultations,
    );
    w.gauge(
        "confide_participants",
        "Participants admitted to an open consultation.",
        census.admitted,
    );
    w.gauge(
        "confide_waiting_room_participants",
        "Participants waiting to be admitted.",
        census.waiting,
    );
    if let Some(sfu) = sfu {
        render_sfu(&mut w, sfu);
    }
    render_process(&mut w);
    let mut out = w.0;
    if let Some(h) = recorder() {
        h.run_upkeep();
        out.push_str(&h.render());
    }
    out
}

fn render_sfu(w: &mut Writer, sfu: &SfuHandle) {
    let stats = sfu.stats_now();
    let t = stats.total();
    let kinds = |f: fn(&WorkerStats) -> (u64, u64)| {
        let (a, v) = f(&t);
        [("audio", a), ("video", v)]
    };
    w.labelled(
        "confide_rtp_packets_in_total",
        "counter",
        "RTP packets received from publishers, by media kind.",
        "kind",
        kinds(|s| (s.audio_packets_in, s.video_packets_in)),
    );
    w.labelled(
        "confide_rtp_packets_out_total",
        "counter",
        "RTP packets forwarded to subscribers (one per subscriber), by media kind.",
        "kind",
        kinds(|s| (s.audio_packets_out, s.video_packets_out)),
    );
    w.labelled(
        "confide_rtp_bytes_in_total",
        "counter",
        "RTP payload bytes received from publishers, by media kind.",
        "kind",
        kinds(|s| (s.audio_bytes_in, s.video_bytes_in)),
    );
    w.labelled(
        "confide_rtp_bytes_out_total",
        "counter",
        "RTP payload bytes forwarded to subscribers, by media kind.",
        "kind",
        kinds(|s| (s.audio_bytes_out, s.video_bytes_out)),
    );
    w.counter(
        "confide_udp_datagrams_in_total",
        "UDP datagrams received by the SFU workers (media, RTCP, STUN, DTLS).",
        t.datagrams_in,
    );
    w.counter(
        "confide_udp_datagrams_out_total",
        "UDP datagrams sent by the SFU workers.",
        t.datagrams_out,
    );
    w.counter(
        "confide_udp_bytes_in_total",
        "UDP bytes received by the SFU workers.",
        t.udp_bytes_in,
    );
    w.counter(
        "confide_udp_bytes_out_total",
        "UDP bytes sent by the SFU workers.",
        t.udp_bytes_out,
    );
    w.labelled(
        "confide_dropped_packets_total",
        "counter",
        "Datagrams or packets the SFU dropped, by reason.",
        "reason",
        DropReason::ALL.map(|r| (r.as_str(), t.drops(r))),
    );
    w.counter(
        "confide_nacks_received_total",
        "NACKs received from subscribers (answered from the SFU's buffer).",
        t.nacks,
    );
    w.counter(
        "confide_nacks_sent_total",
        "NACKs sent to publishers for packets lost on the way in.",
        t.nacks_sent,
    );
    w.counter(
        "confide_keyframe_requests_received_total",
        "Keyframe requests (PLI/FIR) received from subscribers.",
        t.keyframe_requests_in,
    );
    w.counter(
        "confide_keyframe_requests_sent_total",
        "Keyframe requests (PLI/FIR) sent to publishers after merging and throttling.",
        t.keyframe_requests_out,
    );
    w.counter(
        "confide_sfu_peer_panics_total",
        "Participants dropped because their WebRTC session hit an internal bug.",
        t.panics,
    );
    w.gauge("confide_sfu_rooms", "Media rooms open on the SFU.", t.rooms);
    w.labelled(
        "confide_sfu_worker_connections",
        "gauge",
        "Media sessions held by each SFU worker (one worker per core).",
        "worker",
        stats
            .workers
            .iter()
            .enumerate()
            .map(|(i, s)| (i.to_string(), s.active_connections)),
    );
    w.labelled(
        "confide_sfu_worker_rtp_packets_out_total",
        "counter",
        "RTP packets forwarded by each SFU worker.",
        "worker",
        stats
            .workers
            .iter()
            .enumerate()
            .map(|(i, s)| (i.to_string(), s.audio_packets_out + s.video_packets_out)),
    );
    // Histogram: cumulative buckets in seconds.
    let l = &stats.forward_latency;
    let name = "confide_forwarding_latency_seconds";
    w.head(
        name,
        "histogram",
        "Time from receiving a packet batch to sending the packets it produced, per forwarded packet.",
    );
    let mut cum = 0u64;
    for (i, us) in FORWARD_LATENCY_BUCKETS_US.iter().enumerate() {
        cum += l.buckets[i];
        let le = format!("{}", *us as f64 / 1e6);
        w.line(&format!("{name}_bucket{{le=\"{le}\"}}"), cum);
    }
    w.line(&format!("{name}_bucket{{le=\"+Inf\"}}"), l.count);
    w.line(&format!("{name}_sum"), l.sum_ns as f64 / 1e9);
    w.line(&format!("{name}_count"), l.count);
}

/// Process figures from `/proc/self` (Linux); absent elsewhere.
fn render_process(w: &mut Writer) {
    if let Some(cpu) = process_cpu_seconds() {
        w.counter(
            "process_cpu_seconds_total",
            "User and system CPU time of the server process, seconds.",
            cpu,
        );
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let field = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line[key.len()..].split_whitespace().next()?.parse().ok()
        };
        if let Some(kb) = field("VmRSS:") {
            w.gauge(
                "process_resident_memory_bytes",
                "Resident memory of the server process, bytes.",
                kb * 1024,
            );
        }
        if let Some(kb) = field("VmSize:") {
            w.gauge(
                "process_virtual_memory_bytes",
                "Virtual memory of the server process, bytes.",
                kb * 1024,
            );
        }
        if let Some(n) = field("Threads:") {
            w.gauge("process_threads", "OS threads of the server process.", n);
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        w.gauge(
            "process_open_fds",
            "Open file descriptors of the server process.",
            dir.count(),
        );
    }
}

/// utime + stime from `/proc/self/stat`, in seconds (USER_HZ is 100 on Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 (index 0), utime field 14 (index 11), stime 15 (12).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A tiny text-format writer.
#[derive(Default)]
struct Writer(String);

impl Writer {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn line(&mut self, series: &str, v: impl Display) {
        let _ = writeln!(self.0, "{series} {v}");
    }

    fn gauge(&mut self, name: &str, help: &str, v: impl Display) {
        self.head(name, "gauge", help);
        self.line(name, v);
    }

    fn counter(&mut self, name: &str, help: &str, v: impl Display) {
        self.head(name, "counter", help);
        self.line(name, v);
    }

    fn labelled<L: Display, V: Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (L, V)>,
    ) {
        self.head(name, kind, help);
        for (l, v) in values {
            self.line(&format!("{name}{{{label}=\"{l}\"}}"), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_seconds().is_some());
        }
    }

    #[test]
    fn writer_emits_help_type_and_samples() {
        let mut w = Writer::default();
        w.labelled("x_total", "counter", "X.", "kind", [("a", 1), ("b", 2)]);
        assert_eq!(
            w.0,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{kind=\"a\"} 1\nx_total{kind=\"b\"} 2\n"
        );
    }
}
