//! `/metrics` on the admin listener, scraped during a live consultation of two native
//! clients (real TLS signaling, real UDP media through the SFU, E2EE frames), and the
//! exposition checked by Prometheus's own tools. Bounded in time and traffic; asserts
//! on behaviour, never on timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use confide_client::consultation::Happening;
use confide_client::{Credentials, Endpoint, MediaLoop, Participant, Traffic};
use confide_server::confide_signaling::model::Role;
use confide_server::{Config, Running, start};

struct Server {
    running: Running,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("data"));
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.admin_bind = Some("127.0.0.1:0".parse().unwrap());
    cfg.demo = true;
    cfg.static_dir = Some(dir.path().join("no-static"));
    cfg.media.workers = 1;
    let running = start(cfg).await.unwrap();
    // The demo patient starts without consent; these tests join as one who has given it.
    let demo = running.demo.as_ref().unwrap();
    confide_server::confide_signaling::ops::consent_demo_patient(
        running.state.store.as_ref(),
        demo,
        confide_server::confide_signaling::http::now(),
    )
    .await
    .unwrap();
    Server { running, _dir: dir }
}

impl Server {
    fn admin(&self) -> SocketAddr {
        self.running.admin.as_ref().expect("admin listener").addr
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new("localhost", self.running.addr, Some(&self.running.cert_der)).unwrap()
    }

    fn creds(&self, role: Role) -> Credentials {
        let a = self.running.demo.as_ref().unwrap().account(role).unwrap();
        Credentials {
            username: a.username.clone(),
            password: a.password.clone(),
            totp_secret: a.totp_secret.clone(),
        }
    }

    fn appointment(&self) -> i64 {
        self.running.demo.as_ref().unwrap().appointment_id.0
    }

    async fn scrape(&self) -> String {
        let r = reqwest::get(format!("http://{}/metrics", self.admin()))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        r.text().await.unwrap()
    }

    /// Scrapes until `cond` holds on the value of `series` (bounded).
    async fn wait_value(&self, series: &str, cond: impl Fn(f64) -> bool) -> String {
        let mut last = None;
        for _ in 0..600 {
            let text = self.scrape().await;
            last = value(&text, series);
            if last.is_some_and(&cond) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{series} never reached the expected value (last {last:?})");
    }
}

/// The value of one series (`name` or `name{labels}`) in an exposition.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Metric family names in an exposition (from its `# TYPE` lines).
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn check_docs_and_dashboard(text: &str) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/");
    let ops = std::fs::read_to_string(format!("{root}operations.md")).unwrap();
    let metrics_doc = ops.split("## Metrics").nth(1).expect("## Metrics section");
    let fams = families(text);
    for f in &fams {
        assert!(
            metrics_doc.contains(&format!("`{f}`")),
            "{f} is not documented in docs/operations.md"
        );
    }
    let dash = std::fs::read_to_string(format!("{root}grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let mut exprs = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            exprs += 1;
            for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !(word.starts_with("confide_") || word.starts_with("process_")) {
                    continue;
                }
                let base = word.trim_end_matches("_bucket");
                assert!(
                    fams.iter().any(|f| f == base),
                    "dashboard reads {word}, which /metrics does not export"
                );
            }
        }
    }
    assert!(exprs > 10);
}

/// Light traffic: enough packets to count, little load on a shared machine.
fn light() -> Traffic {
    Traffic {
        video_bps: 200_000,
        fps: 10,
        audio_pps: 20,
        ..Traffic::default()
    }
}

/// A consultation kept alive in the background: the doctor answers the SFU until told
/// to end; the patient until the consultation ends.
struct Live {
    stop: tokio::sync::oneshot::Sender<()>,
    doctor: tokio::task::JoinHandle<Participant>,
    patient: tokio::task::JoinHandle<()>,
}

impl Live {
    async fn start(s: &Server, media: &Arc<MediaLoop>) -> Live {
        let (mut doctor, patient) = live_consultation(s, media).await;
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let doctor = tokio::spawn(async move {
            doctor
                .serve_until(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            doctor
        });
        let patient = tokio::spawn(async move {
            patient.wait_ended(Duration::from_secs(120)).await.unwrap();
        });
        Live {
            stop,
            doctor,
            patient,
        }
    }

    /// The doctor ends the consultation; both sides see it end.
    async fn end(self) {
        let _ = self.stop.send(());
        let doctor = self.doctor.await.unwrap();
        doctor.end().await.unwrap();
        self.patient.await.unwrap();
    }
}

/// Doctor and patient in the demo appointment, both keyed and sending.
async fn live_consultation(s: &Server, media: &Arc<MediaLoop>) -> (Participant, Participant) {
    let ep = s.endpoint();
    let appt = s.appointment();
    let mut doctor = Participant::join(&ep, &s.creds(Role::Doctor), appt, media.clone())
        .await
        .unwrap();
    doctor.start_media(light()).await.unwrap();
    let mut patient = Participant::join(&ep, &s.creds(Role::Patient), appt, media.clone())
        .await
        .unwrap();
    // The waiting room shows in the gauge before the doctor admits.
    s.wait_value("confide_waiting_room_participants", |v| v == 1.0)
        .await;
    let (admitted, joined) = tokio::join!(doctor.admit(1), patient.wait_admitted());
    admitted.unwrap();
    joined.unwrap();
    patient.start_media(light()).await.unwrap();
    let keyed = |h: &[Happening]| h.iter().any(|h| matches!(h, Happening::Keyed { .. }));
    let (d, p) = tokio::join!(
        doctor.run_until(Duration::from_secs(20), keyed),
        patient.run_until(Duration::from_secs(20), keyed)
    );
    d.unwrap();
    p.unwrap();
    (doctor, patient)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_live_consultation() {
    let s = server().await;
    let idle = s.scrape().await;
    assert_eq!(value(&idle, "confide_consultations_active"), Some(0.0));
    assert_eq!(
        value(&idle, "confide_rtp_packets_out_total{kind=\"video\"}"),
        Some(0.0)
    );
    let failures_before = value(&idle, "confide_auth_failures_total{kind=\"login\"}").unwrap();

    // A failed login is counted (by kind, never by who).
    let ep = s.endpoint();
    assert!(ep.login("doctor", "wrong password", None).await.is_err());
    s.wait_value("confide_auth_failures_total{kind=\"login\"}", |v| {
        v > failures_before
    })
    .await;

    let media = Arc::new(MediaLoop::start("metrics-test-media", [127, 0, 0, 1].into()).unwrap());
    let consultation = Live::start(&s, &media).await;
    let live = s
        .wait_value("confide_consultations_active", |v| v == 1.0)
        .await;
    assert_eq!(value(&live, "confide_participants"), Some(2.0));
    assert_eq!(value(&live, "confide_waiting_room_participants"), Some(0.0));
    assert!(value(&live, "confide_websocket_connections").unwrap() >= 2.0);
    assert_eq!(value(&live, "confide_sfu_rooms"), Some(1.0));

    // Packet counters rise while the consultation runs.
    let first = s
        .wait_value("confide_rtp_packets_out_total{kind=\"video\"}", |v| v > 0.0)
        .await;
    let v0 = value(&first, "confide_rtp_packets_out_total{kind=\"video\"}").unwrap();
    let a0 = value(&first, "confide_rtp_packets_in_total{kind=\"audio\"}").unwrap();
    s.wait_value("confide_rtp_packets_out_total{kind=\"video\"}", |v| v > v0)
        .await;
    let later = s
        .wait_value("confide_rtp_packets_in_total{kind=\"audio\"}", |v| v > a0)
        .await;
    assert!(value(&later, "confide_rtp_bytes_out_total{kind=\"video\"}").unwrap() > 0.0);
    assert!(value(&later, "confide_udp_datagrams_in_total").unwrap() > 0.0);
    assert!(value(&later, "confide_forwarding_latency_seconds_count").unwrap() > 0.0);
    assert!(
        value(
            &later,
            "confide_forwarding_latency_seconds_bucket{le=\"+Inf\"}"
        )
        .unwrap()
            > 0.0
    );
    assert!(value(&later, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(value(&later, "process_cpu_seconds_total").is_some());
    // Frames really went through, sealed and opened.
    let stats = media.stats(false).await.unwrap();
    assert!(stats.frames_received() > 0);
    assert_eq!(stats.open_failures, 0);

    // Every family is documented in operations.md, and the Grafana dashboard only reads
    // families that exist.
    check_docs_and_dashboard(&later);

    // No label carries a person: no usernames, display names or account ids.
    for needle in [
        "\"doctor\"",
        "\"patient\"",
        "Demo",
        "account:",
        "appointment",
    ] {
        let hit = later
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.contains(needle));
        assert!(hit.is_none(), "a series mentions {needle}: {hit:?}");
    }

    // The doctor ends: the gauge goes back to 0.
    consultation.end().await;
    let after = s
        .wait_value("confide_consultations_active", |v| v == 0.0)
        .await;
    assert_eq!(value(&after, "confide_participants"), Some(0.0));
}

/// Scrapes a live consultation and runs `promtool check metrics` over it, then lets a
/// real Prometheus server scrape the endpoint until the target is up. Both tools come
/// from the Debian `prometheus` package (scripts/parts/40-metrics.sh); without them the
/// test says so and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_accepts_the_endpoint() {
    let have = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // A skipped check proves nothing: the test command installs both (scripts/test).
    assert!(
        have("promtool") && have("prometheus"),
        "promtool and prometheus are required (Debian package `prometheus`; scripts/test installs it)"
    );
    let s = server().await;
    let media = Arc::new(MediaLoop::start("prom-test-media", [127, 0, 0, 1].into()).unwrap());
    let consultation = Live::start(&s, &media).await;
    let text = s
        .wait_value("confide_rtp_packets_out_total{kind=\"video\"}", |v| v > 0.0)
        .await;

    // promtool: the format and the naming conventions (lint) are clean.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes the admin listener.
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: confide\n    static_configs:\n      - targets: ['{}']\n",
            s.admin()
        ),
    )
    .unwrap();
    let mut prom = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=confide_consultations_active");
    let mut seen = None;
    for _ in 0..240 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(r) = reqwest::get(&query).await else {
            continue;
        };
        let Ok(v) = r.json::<serde_json::Value>().await else {
            continue;
        };
        if let Some(sample) = v["data"]["result"][0]["value"][1].as_str() {
            seen = Some(sample.to_string());
            break;
        }
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(
        seen.as_deref(),
        Some("1"),
        "Prometheus never scraped a live consultation"
    );

    consultation.end().await;
}
