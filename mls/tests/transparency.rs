//! Key transparency: directory answers proven against signed checkpoints, newer
//! checkpoints proven consistent with older ones, and a forked log (a server showing two
//! people two histories) detected when members compare the heads they carry into the
//! group.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use confide_mls::danger::TestLog;
use confide_mls::transparency::{DirectoryAnswer, DirectoryDevice, GroupPayload, LogView};
use confide_mls::{Device, Error};

use crate::common::device;

const ORIGIN: &str = "confide.test/audit";

/// A server's audit log, in memory, written the way the server writes device entries.
struct Server {
    log: TestLog,
}

impl Server {
    fn new(seed: u8) -> Self {
        Self {
            log: TestLog::new(ORIGIN, seed),
        }
    }

    fn vkey(&self) -> String {
        self.log.vkey()
    }

    fn append(
        &mut self,
        actor: &str,
        action: &str,
        target: Option<String>,
        detail: Option<String>,
    ) -> u64 {
        self.log
            .append(actor, Some("patient"), action, target, detail)
    }

    fn register(&mut self, d: &Device) -> u64 {
        let n = d.name();
        self.append(
            n.principal.as_str(),
            "device_registered",
            Some(format!("device:{}", n.device)),
            Some(format!("ed25519:{}", B64.encode(d.signature_key()))),
        )
    }

    fn noise(&mut self, what: &str) {
        self.append("account:9", what, Some("appointment:1".into()), None);
    }

    fn checkpoint(&mut self) -> String {
        self.log.checkpoint().unwrap()
    }

    fn consistency(&self, from: u64, to: u64) -> Vec<String> {
        self.log.consistency(from, to).unwrap()
    }

    fn answer(&self, d: &Device, seq: u64) -> DirectoryAnswer {
        DirectoryAnswer {
            principal: d.name().principal.to_string(),
            role: "patient".into(),
            label: "P".into(),
            checkpoint: self.log.note().to_string(),
            devices: vec![DirectoryDevice {
                device: d.name().device.to_string(),
                signature_key: B64.encode(d.signature_key()),
                status: "active".into(),
                entries: vec![self.log.proven(seq)],
            }],
        }
    }
}

fn accept(view: &mut LogView, server: &Server, note: &str) -> Result<(), Error> {
    let head = view.parse_checkpoint(note)?;
    let proof = match view.proof_needed(&head) {
        Some((from, to)) => server.consistency(from, to),
        None => Vec::new(),
    };
    view.accept(head, &proof)
}

#[test]
fn a_logged_device_verifies_and_tampering_is_caught() {
    let patient = device("account:2");
    let mut server = Server::new(1);
    server.noise("login_ok");
    let seq = server.register(&patient);
    server.noise("join_ok");
    let note = server.checkpoint();
    let mut view = LogView::new(&server.vkey(), None).unwrap();
    accept(&mut view, &server, &note).unwrap();

    let answer = server.answer(&patient, seq);
    let (ok, bad) = view.verify_directory(&answer).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ok[0].signature_key, patient.signature_key());
    assert!(ok[0].active);

    // A different key served for the same logged entry.
    let ghost = device("account:2");
    let mut a = answer.clone();
    a.devices[0].signature_key = B64.encode(ghost.signature_key());
    assert!(view.verify_directory(&a).unwrap().0.is_empty());
    // An entry about another device, a proof that does not lead to the root, a
    // checkpoint signed by another key, a checkpoint not yet accepted.
    let mut a = answer.clone();
    a.devices[0].device = ghost.name().device.to_string();
    assert!(view.verify_directory(&a).unwrap().0.is_empty());
    let mut a = answer.clone();
    let first = a.devices[0].entries[0].proof[0].clone();
    a.devices[0].entries[0].proof.reverse();
    a.devices[0].entries[0].proof.push(first);
    assert!(view.verify_directory(&a).unwrap().0.is_empty());
    let mut other = Server::new(2);
    other.register(&patient);
    let other_note = other.checkpoint();
    assert!(matches!(
        view.parse_checkpoint(&other_note),
        Err(Error::Transparency(_))
    ));
    server.noise("logout");
    let newer = server.checkpoint();
    let mut a = answer.clone();
    a.checkpoint = newer;
    assert!(matches!(
        view.verify_directory(&a),
        Err(Error::Transparency(_))
    ));
}

#[test]
fn newer_checkpoints_must_extend_older_ones() {
    let patient = device("account:2");
    let mut server = Server::new(1);
    server.register(&patient);
    let first = server.checkpoint();
    let mut view = LogView::new(&server.vkey(), None).unwrap();
    accept(&mut view, &server, &first).unwrap();
    let saved = view.save();
    for _ in 0..5 {
        server.noise("join_ok");
    }
    let second = server.checkpoint();
    let mut view = LogView::new(&server.vkey(), Some(&saved)).unwrap();
    accept(&mut view, &server, &second).unwrap();
    assert_eq!(view.latest().unwrap().size, 6);
    // An older checkpoint shown later must still be a prefix of what we hold.
    accept(&mut view, &server, &first).unwrap();
    assert_eq!(view.latest().unwrap().size, 6);

    // The server rewrites history (drops entry 3 and re-appends): the new tree is not an
    // extension of the one we saw, and no proof it can make verifies.
    let mut forked = Server::new(1);
    forked.register(&patient);
    for i in 0..6 {
        forked.noise(if i == 2 { "rewritten" } else { "join_ok" });
    }
    let note = forked.checkpoint();
    let head = view.parse_checkpoint(&note).unwrap();
    let (from, to) = view.proof_needed(&head).unwrap();
    assert!(matches!(
        view.accept(head, &forked.consistency(from, to)),
        Err(Error::Transparency(_))
    ));
    assert!(matches!(
        view.accept(head, &server.consistency(from, 6)),
        Err(Error::Transparency(_))
    ));
    assert_eq!(view.latest().unwrap().size, 6);
}

/// Split view: the server shows Alice one log and Bob another (same key, same origin),
/// each internally consistent. Each alone sees nothing wrong; once Alice carries her
/// head into the consultation group (an MLS application message the server cannot
/// alter), Bob asks the server for a consistency proof between the two heads, and no
/// answer the server can give verifies.
#[test]
fn a_split_view_is_detected_when_members_compare_heads() {
    let alice_dev = device("account:1");
    let bob_dev = device("account:2");
    let mallory = device("account:2");

    // Common history, then the fork: Alice's log says Bob's device is `mallory`.
    let mut for_alice = Server::new(1);
    let mut for_bob = Server::new(1);
    for s in [&mut for_alice, &mut for_bob] {
        s.register(&alice_dev);
        s.noise("login_ok");
    }
    let m_seq = for_alice.register(&mallory);
    for_bob.register(&bob_dev);
    for_bob.noise("join_ok");
    let note_a = for_alice.checkpoint();
    let note_b = for_bob.checkpoint();

    let mut alice = LogView::new(&for_alice.vkey(), None).unwrap();
    accept(&mut alice, &for_alice, &note_a).unwrap();
    let (ok, _) = alice
        .verify_directory(&for_alice.answer(&mallory, m_seq))
        .unwrap();
    assert_eq!(ok.len(), 1, "Alice alone cannot tell");
    let mut bob = LogView::new(&for_bob.vkey(), None).unwrap();
    accept(&mut bob, &for_bob, &note_b).unwrap();

    // Alice's head travels in the group.
    let head = alice.latest().unwrap();
    let payload = GroupPayload::Checkpoint {
        size: head.size,
        root: head.root.to_base64(),
    };
    let received = GroupPayload::from_bytes(&payload.to_bytes())
        .unwrap()
        .head()
        .unwrap()
        .unwrap();
    let (lo, hi) = (received.size.min(4), received.size.max(4));
    for proof in [
        for_bob.consistency(lo, hi),
        for_alice.consistency(lo, lo),
        Vec::new(),
    ] {
        assert!(matches!(
            bob.check_peer_head(&received, &proof),
            Err(Error::Transparency(_))
        ));
    }
    // An honest peer head passes.
    let bob_head = bob.latest().unwrap();
    bob.check_peer_head(&bob_head, &[]).unwrap();
}
