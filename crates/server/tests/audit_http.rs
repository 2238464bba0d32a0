//! The audit log's checkpoints and key are served over HTTPS and verify against each
//! other (issue: tamper-evident audit trail, "checkpoints are stored and served").

mod common;

use confide_audit::{LogPublicKey, SignedCheckpoint};
use confide_server::audit_cmd::{self, AuditCmd};
use confide_server::confide_signaling::model::Role;

#[tokio::test]
async fn checkpoint_and_key_are_served_and_verify() {
    let s = common::server().await;
    // A login is audited, so the log is not empty.
    let _token = s.login_demo(Role::Doctor).await;

    let key = s.req("GET", "/api/audit/key", None, None).await;
    assert_eq!(key.status, 200);
    let vkey = key.body.as_str().expect("key is text").trim().to_owned();
    let (origin, public) = LogPublicKey::from_vkey(&vkey).expect("a valid verifier key");
    assert!(!origin.is_empty());

    // Sign a checkpoint now instead of waiting for the signer's policy.
    let cfg = confide_server::Config::new(s.data_dir.clone());
    audit_cmd::run(cfg, AuditCmd::Checkpoint).await.unwrap();

    let cp = s.req("GET", "/api/audit/checkpoint", None, None).await;
    assert_eq!(cp.status, 200);
    let note = cp.body.as_str().expect("checkpoint is text");
    let signed = SignedCheckpoint::from_note(note, &public).expect("signed by the served key");
    signed.verify(&public).unwrap();
    assert!(signed.checkpoint.size > 0, "the login was logged");

    // Another key does not verify it: the note really is bound to the log key.
    let other = confide_audit::LogSigningKey::from_seed(&[7; 32]).public_key();
    assert!(SignedCheckpoint::from_note(note, &other).is_err());
}
