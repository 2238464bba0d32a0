//! The store suite: one test body, run against SQLite (a temp file) and against
//! PostgreSQL (a fresh database per run). The PostgreSQL run fails, never skips,
//! when the server cannot be reached: the test script guarantees one.

use confide_signaling::audit::{AuditAction, AuditEvent, AuditFilter, Outcome, Priority};
use confide_signaling::auth::{Session, SessionKind};
use confide_signaling::crypto::MasterKey;
use confide_signaling::model::*;
use confide_signaling::store::keys::{load_keyring, rotate_data_key, rotate_master_key};
use confide_signaling::store::*;
use rand::rngs::OsRng;
use sqlx::Connection as _;

const T: Timestamp = Timestamp(1_800_000_000_000);

fn account(name: &str, role: Role) -> NewAccount {
    NewAccount {
        username: name.into(),
        role,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$x$y".into(),
        display_name: vec![1, 2, 3],
        contact: None,
        created_at: T,
    }
}

fn dev(i: u8) -> DeviceId {
    DeviceId::parse(&format!("{i:032x}")).unwrap()
}

fn kp(i: u8) -> Vec<u8> {
    vec![0, 1, 0, 5, i]
}

fn device_event(principal: &str, action: AuditAction, d: &DeviceId) -> AuditEvent {
    AuditEvent::new(principal, action, Outcome::Success, T)
        .target(format!("device:{d}"))
        .detail("ed25519:AQID")
}

/// A pending registration of device `device` with key `[key; 32]` for `principal`, at
/// `T`, with a cap of two devices per principal.
async fn register_pending(store: &SqlStore, principal: &str, device: u8, key: u8) -> NewDevice {
    store
        .add_pending_device(principal, &dev(device), &[key; 32], T, 2)
        .await
        .unwrap()
}

/// The key directory's tables, the relation behind its lookups, and the log reads
/// behind its proofs. `inv` is a redeemed invite to `appt` (doctor `doc`, patient
/// `pat`).
async fn key_directory(
    store: &SqlStore,
    url: &str,
    doc: AccountId,
    pat: AccountId,
    appt: AppointmentId,
    inv: InviteId,
) {
    // Who shares an appointment with whom.
    let (d, p, g) = (
        Principal::Account(doc),
        Principal::Account(pat),
        Principal::Guest(inv),
    );
    let stranger = store
        .create_account(account("stranger", Role::Patient))
        .await
        .unwrap();
    let s = Principal::Account(stranger);
    let unused = store
        .create_invite(NewInvite {
            appointment: appt,
            token_hash: vec![9; 32],
            expires_at: T.plus_secs(60),
            created_by: doc,
            created_at: T,
            label: None,
        })
        .await
        .unwrap();
    let g2 = store
        .create_invite(NewInvite {
            appointment: appt,
            token_hash: vec![10; 32],
            expires_at: T.plus_secs(60),
            created_by: doc,
            created_at: T,
            label: None,
        })
        .await
        .unwrap();
    assert!(store.redeem_invite(g2, T).await.unwrap());
    for (a, b) in [
        (&d, &p),
        (&p, &d),
        (&g, &d),
        (&p, &g),
        (&g, &Principal::Guest(g2)),
    ] {
        assert!(store.share_appointment(a, b).await.unwrap(), "{a} {b}");
    }
    for (a, b) in [
        (&s, &d),
        (&s, &p),
        (&g, &s),
        (&Principal::Guest(unused), &d),
        (&g, &Principal::Guest(unused)),
        (&d, &Principal::Account(AccountId(999_999))),
    ] {
        assert!(!store.share_appointment(a, b).await.unwrap(), "{a} {b}");
    }
    assert_eq!(store.invite(inv).await.unwrap().unwrap().appointment, appt);
    assert!(
        store
            .invite(unused)
            .await
            .unwrap()
            .unwrap()
            .used_at
            .is_none()
    );
    assert!(store.invite(InviteId(999_999)).await.unwrap().is_none());

    // A registration is pending (invisible, unusable) until its entry is logged.
    let name = p.to_string();
    assert_eq!(
        register_pending(store, &name, 1, 1).await,
        NewDevice::Inserted
    );
    let pending = store.device(&name, &dev(1)).await.unwrap().unwrap();
    assert!(pending.registered_seq.is_none() && !pending.is_active());
    assert!(store.devices(&name).await.unwrap().is_empty());
    store.drop_pending_device(&name, &dev(1)).await.unwrap();
    assert!(store.device(&name, &dev(1)).await.unwrap().is_none());

    assert_eq!(
        register_pending(store, &name, 1, 1).await,
        NewDevice::Inserted
    );
    let (_, leaf) = store
        .record_audit_leaf(device_event(&name, AuditAction::DeviceRegistered, &dev(1)))
        .await
        .unwrap();
    assert!(store.confirm_device(&name, &dev(1), leaf).await.unwrap());
    assert!(
        !store
            .confirm_device(&name, &dev(1), leaf + 1)
            .await
            .unwrap()
    );
    let rec = store.device(&name, &dev(1)).await.unwrap().unwrap();
    assert_eq!(
        (
            rec.registered_seq,
            rec.signature_key.clone(),
            rec.is_active()
        ),
        (Some(leaf), vec![1; 32], true)
    );
    assert_eq!(
        register_pending(store, &name, 1, 2).await,
        NewDevice::Exists(rec.clone())
    );
    // The same id under another principal is another device.
    assert_eq!(
        register_pending(store, &d.to_string(), 1, 2).await,
        NewDevice::Inserted
    );
    // The cap counts devices that are not revoked, pending ones included.
    assert_eq!(
        register_pending(store, &name, 2, 2).await,
        NewDevice::Inserted
    );
    assert_eq!(
        register_pending(store, &name, 3, 3).await,
        NewDevice::TooMany
    );
    assert_eq!(store.devices(&name).await.unwrap(), vec![rec.clone()]);

    // KeyPackages: active devices only, capped, claimed once, last resort kept.
    assert_eq!(
        store
            .add_key_packages(&name, &dev(2), vec![kp(1)], None, 5)
            .await
            .unwrap(),
        AddKeyPackages::NoDevice,
        "pending"
    );
    let count = |available, last_resort| {
        AddKeyPackages::Stored(KeyPackageCount {
            available,
            last_resort,
        })
    };
    assert_eq!(
        store
            .add_key_packages(&name, &dev(1), vec![kp(1), kp(2), kp(3)], Some(kp(9)), 5)
            .await
            .unwrap(),
        count(3, true)
    );
    assert_eq!(
        store
            .add_key_packages(&name, &dev(1), vec![kp(4), kp(5), kp(6)], None, 5)
            .await
            .unwrap(),
        AddKeyPackages::TooMany
    );
    assert_eq!(
        store
            .add_key_packages(&name, &dev(1), vec![kp(4), kp(5)], Some(kp(10)), 5)
            .await
            .unwrap(),
        count(5, true)
    );
    for i in 1..=5 {
        assert_eq!(
            store.claim_key_package(&name, &dev(1)).await.unwrap(),
            Some(ClaimedKeyPackage {
                data: kp(i),
                last_resort: false
            })
        );
    }
    for _ in 0..2 {
        assert_eq!(
            store.claim_key_package(&name, &dev(1)).await.unwrap(),
            Some(ClaimedKeyPackage {
                data: kp(10),
                last_resort: true
            })
        );
    }
    // Concurrent claims never share a one-time KeyPackage.
    let fresh: Vec<Vec<u8>> = (20..28).map(kp).collect();
    store
        .add_key_packages(&name, &dev(1), fresh.clone(), None, 50)
        .await
        .unwrap();
    let claims: Vec<_> = (0..12)
        .map(|_| {
            let (store, name) = (store.clone(), name.clone());
            tokio::spawn(async move { store.claim_key_package(&name, &dev(1)).await })
        })
        .collect();
    let mut one_time = Vec::new();
    for c in claims {
        let got = c.await.unwrap().unwrap().unwrap();
        if !got.last_resort {
            one_time.push(got.data);
        }
    }
    one_time.sort();
    assert_eq!(
        one_time, fresh,
        "each one-time KeyPackage went to one claim"
    );
    assert_eq!(
        store.key_package_count(&name, &dev(1)).await.unwrap(),
        KeyPackageCount {
            available: 0,
            last_resort: true
        }
    );

    // Revocation: once, at its entry; the KeyPackages go with it.
    store
        .add_key_packages(&name, &dev(1), vec![kp(30)], None, 5)
        .await
        .unwrap();
    let (_, revoked) = store
        .record_audit_leaf(device_event(&name, AuditAction::DeviceRevoked, &dev(1)))
        .await
        .unwrap();
    assert!(revoked > leaf);
    assert!(
        store
            .revoke_device(&name, &dev(1), T.plus_secs(5), revoked)
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_device(&name, &dev(1), T.plus_secs(6), revoked + 1)
            .await
            .unwrap()
    );
    let rec = store.device(&name, &dev(1)).await.unwrap().unwrap();
    assert_eq!(
        (rec.revoked_at, rec.revoked_seq, rec.is_active()),
        (Some(T.plus_secs(5)), Some(revoked), false)
    );
    assert_eq!(store.claim_key_package(&name, &dev(1)).await.unwrap(), None);
    assert_eq!(
        store.key_package_count(&name, &dev(1)).await.unwrap(),
        KeyPackageCount {
            available: 0,
            last_resort: false
        }
    );
    assert_eq!(
        store
            .add_key_packages(&name, &dev(1), vec![kp(31)], None, 5)
            .await
            .unwrap(),
        AddKeyPackages::NoDevice
    );
    assert_eq!(store.devices(&name).await.unwrap(), vec![rec]);
    // A revoked device no longer counts against the cap.
    assert_eq!(
        register_pending(store, &name, 3, 3).await,
        NewDevice::Inserted
    );

    // The log reads behind the directory's proofs.
    let entry = store.log_entry(leaf).await.unwrap().unwrap();
    assert_eq!(
        (entry.seq(), entry.action(), entry.actor(), entry.detail()),
        (
            leaf,
            "device_registered",
            name.as_str(),
            Some("ed25519:AQID")
        )
    );
    assert!(store.log_entry(revoked + 100).await.unwrap().is_none());
    assert!(
        store.log_checkpoint().await.unwrap().is_none(),
        "no signer here"
    );
    let writer = confide_audit::store::AuditWriter::new(
        confide_audit::store::AuditStore::connect(url)
            .await
            .unwrap(),
        "test.invalid/log",
        confide_audit::LogSigningKey::from_seed(&[5; 32]),
        confide_audit::CheckpointPolicy::default(),
    )
    .unwrap();
    let now = confide_audit::Timestamp::from_unix_millis(T.0).unwrap();
    let signed = writer.checkpoint_now(now).await.unwrap().unwrap();
    let cp = store.log_checkpoint().await.unwrap().unwrap();
    assert_eq!(cp.size, signed.checkpoint.size);
    assert!(cp.size > revoked);
    let parsed =
        confide_audit::SignedCheckpoint::from_note(&cp.note, &writer.public_key()).unwrap();
    assert_eq!(parsed.checkpoint, signed.checkpoint);
    for seq in [leaf, revoked] {
        let e = store.log_entry(seq).await.unwrap().unwrap();
        let proof = store.log_inclusion_proof(seq, cp.size).await.unwrap();
        confide_audit::verify_inclusion(
            seq,
            cp.size,
            &e.leaf_hash(),
            &proof,
            &parsed.checkpoint.root,
        )
        .unwrap();
    }
    assert!(store.log_inclusion_proof(leaf, cp.size + 1).await.is_err());
}

/// Activation links, password and second-factor resets, and the session revocations
/// that go with them. `doc` has an enabled second factor and one unused recovery code.
async fn account_lifecycle(store: &SqlStore, doc: AccountId, pat: AccountId) {
    use confide_signaling::auth::ActivationPurpose;
    let link = |account, hash: u8, purpose| NewActivation {
        account,
        token_hash: vec![hash; 32],
        purpose,
        created_by: Some(doc),
        created_at: T,
        expires_at: T.plus_secs(3600),
    };
    // A link marks the account as waiting; a second link replaces the first.
    let mut tx = store.begin().await.unwrap();
    let first = tx
        .create_activation(link(pat, 0xa1, ActivationPurpose::Activate))
        .await
        .unwrap();
    tx.set_activation_pending(pat, true).await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        store
            .account(pat)
            .await
            .unwrap()
            .unwrap()
            .activation_pending
    );
    let a = store
        .activation_by_hash(&[0xa1; 32])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.id, a.account, a.purpose, a.created_by),
        (first, pat, ActivationPurpose::Activate, Some(doc))
    );
    assert!(a.usable(T) && !a.usable(T.plus_secs(3600)));
    let mut tx = store.begin().await.unwrap();
    let second = tx
        .create_activation(link(pat, 0xa2, ActivationPurpose::ResetPassword))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        store
            .activation_by_hash(&[0xa1; 32])
            .await
            .unwrap()
            .is_none(),
        "the earlier unused link is gone"
    );
    assert_eq!(
        store.latest_activation(pat).await.unwrap().unwrap().id,
        second
    );
    // Single use, and never after expiry.
    let mut tx = store.begin().await.unwrap();
    assert!(
        !tx.use_activation(second, T.plus_secs(3600)).await.unwrap(),
        "expired"
    );
    assert!(tx.use_activation(second, T).await.unwrap());
    assert!(!tx.use_activation(second, T).await.unwrap(), "used");
    tx.set_password_hash(pat, "").await.unwrap();
    tx.set_activation_pending(pat, false).await.unwrap();
    tx.commit().await.unwrap();
    let p = store.account(pat).await.unwrap().unwrap();
    assert!(!p.activation_pending && !p.has_password());
    assert_eq!(
        store
            .activation_by_hash(&[0xa2; 32])
            .await
            .unwrap()
            .unwrap()
            .used_at,
        Some(T)
    );
    // A rolled-back use leaves the link usable.
    let mut tx = store.begin().await.unwrap();
    let third = tx
        .create_activation(link(pat, 0xa3, ActivationPurpose::Activate))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert!(tx.use_activation(third, T).await.unwrap());
    drop(tx);
    let a = store
        .activation_by_hash(&[0xa3; 32])
        .await
        .unwrap()
        .unwrap();
    assert!(a.usable(T));

    // Sessions: all of an account's, or all but the caller's.
    let session = |hash: u8, who| Session {
        token_hash: vec![hash; 32],
        principal: Principal::Account(who),
        role: Role::Doctor,
        kind: SessionKind::Full,
        scope: None,
        created_at: T,
        last_seen: T,
        expires_at: T.plus_secs(3600),
        revoked: false,
    };
    for (h, who) in [(0xb1, doc), (0xb2, doc), (0xb3, doc), (0xb4, pat)] {
        store.create_session(&session(h, who)).await.unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.revoke_account_sessions(doc, Some(&[0xb1; 32]))
            .await
            .unwrap(),
        2
    );
    tx.commit().await.unwrap();
    let revoked = |h: u8| async move { store.session(&[h; 32]).await.unwrap().map(|s| s.revoked) };
    assert_eq!(revoked(0xb1).await, Some(false), "the caller's own");
    assert_eq!(revoked(0xb2).await, Some(true));
    assert_eq!(revoked(0xb4).await, Some(false), "another account's");
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.revoke_account_sessions(doc, None).await.unwrap(), 1);
    tx.commit().await.unwrap();
    assert_eq!(revoked(0xb1).await, Some(true));

    // Changing a second factor keeps the enabled one until the new one is confirmed;
    // clearing it removes both and every recovery code.
    let before = store.account(doc).await.unwrap().unwrap();
    store.set_totp_pending(doc, vec![8; 40]).await.unwrap();
    let a = store.account(doc).await.unwrap().unwrap();
    assert!(a.totp_enabled);
    assert_eq!(a.totp_secret, before.totp_secret);
    assert_eq!(a.totp_pending, Some(vec![8; 40]));
    let mut tx = store.begin().await.unwrap();
    tx.clear_second_factor(doc).await.unwrap();
    assert!(tx.set_account_disabled(doc, true).await.unwrap());
    tx.commit().await.unwrap();
    let a = store.account(doc).await.unwrap().unwrap();
    assert!(!a.totp_enabled && a.totp_secret.is_none() && a.totp_pending.is_none());
    assert!(a.totp_last_step.is_none() && a.disabled);
    assert_eq!(store.recovery_codes_remaining(doc).await.unwrap(), 0);
    let mut tx = store.begin().await.unwrap();
    assert!(tx.set_account_disabled(doc, false).await.unwrap());
    assert!(
        !tx.set_account_disabled(AccountId(999_999), false)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    assert!(!store.account(doc).await.unwrap().unwrap().disabled);
}

/// The front desk's reads and writes: appointments by period, moving and cancelling
/// only booked ones, the patient search index (all terms must match, per key id,
/// rebuilt and dropped by key), a person's live sessions, break-glass grants newest
/// first.
async fn front_desk(store: &SqlStore) {
    let doc = store
        .create_account(account("fd-doc", Role::Doctor))
        .await
        .unwrap();
    let pat = store
        .create_account(account("fd-pat", Role::Patient))
        .await
        .unwrap();
    let admin = store
        .create_account(account("fd-admin", Role::Admin))
        .await
        .unwrap();
    let book = |start: Timestamp, minutes: i64| NewAppointment {
        doctor: doc,
        patient: Some(pat),
        start,
        duration_s: minutes * 60,
        reason: None,
        created_by: doc,
        created_at: T,
    };
    let first = store
        .create_appointment(book(T.plus_secs(3600), 30))
        .await
        .unwrap();
    let second = store
        .create_appointment(book(T.plus_secs(3 * 3600), 30))
        .await
        .unwrap();
    let between = |from: i64, to: i64| AppointmentQuery {
        doctor: Some(doc),
        from: Some(T.plus_secs(from)),
        to: Some(T.plus_secs(to)),
        ..Default::default()
    };
    let ids = |v: Vec<Appointment>| v.iter().map(|a| a.id).collect::<Vec<_>>();
    // Overlap: one that started before the period and ends in it counts; one that
    // ends exactly when the period starts does not; nor one that starts at its end.
    for (from, to, want) in [
        (3600 + 600, 2 * 3600, vec![first]),
        (3600 + 1800, 3 * 3600, vec![]),
        (0, 3600, vec![]),
        (0, 4 * 3600, vec![first, second]),
    ] {
        assert_eq!(
            ids(store.list_appointments(between(from, to)).await.unwrap()),
            want,
            "{from}..{to}"
        );
    }

    // Move and cancel change booked appointments only.
    let change = AppointmentChange {
        doctor: doc,
        start: T.plus_secs(5 * 3600),
        duration_s: 900,
    };
    let mut tx = store.begin().await.unwrap();
    assert!(tx.move_appointment(first, change).await.unwrap());
    assert!(tx.cancel_appointment(second).await.unwrap());
    assert!(!tx.cancel_appointment(second).await.unwrap(), "once");
    assert!(!tx.move_appointment(second, change).await.unwrap());
    assert!(
        !tx.move_appointment(AppointmentId(987_654), change)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let a = store.appointment(first).await.unwrap().unwrap();
    assert_eq!((a.start, a.duration_s), (T.plus_secs(5 * 3600), 900));
    let b = store.appointment(second).await.unwrap().unwrap();
    assert_eq!(b.status, AppointmentStatus::Cancelled);
    // Dropping a transaction rolls the move back.
    let mut tx = store.begin().await.unwrap();
    assert!(
        tx.move_appointment(
            first,
            AppointmentChange {
                duration_s: 60,
                ..change
            }
        )
        .await
        .unwrap()
    );
    drop(tx);
    assert_eq!(
        store.appointment(first).await.unwrap().unwrap().duration_s,
        900
    );

    // The search index.
    let (m1, m2, m3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    let mut tx = store.begin().await.unwrap();
    tx.set_date_of_birth(pat, vec![9, 9, 9]).await.unwrap();
    tx.replace_patient_index(pat, 1, vec![m1, m2, m2])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.date_of_birth(pat).await.unwrap(), Some(vec![9, 9, 9]));
    assert_eq!(store.date_of_birth(doc).await.unwrap(), None);
    assert_eq!(
        store.search_patient_index(1, &[m1], 10).await.unwrap(),
        vec![pat]
    );
    assert_eq!(
        store
            .search_patient_index(1, &[m2, m1, m1], 10)
            .await
            .unwrap(),
        vec![pat],
        "every distinct term must match"
    );
    assert!(
        store
            .search_patient_index(1, &[m1, m3], 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .search_patient_index(2, &[m1], 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .search_patient_index(1, &[], 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!store.unindexed_patients(1).await.unwrap().contains(&pat));
    assert!(store.unindexed_patients(2).await.unwrap().contains(&pat));
    assert!(
        !store.unindexed_patients(2).await.unwrap().contains(&doc),
        "only patients are indexed"
    );
    store.replace_patient_index(pat, 1, vec![m3]).await.unwrap();
    assert!(
        store
            .search_patient_index(1, &[m1], 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.replace_patient_index(pat, 2, vec![m1]).await.unwrap();
    assert_eq!(store.drop_patient_index_except(2).await.unwrap(), 1);
    assert!(
        store
            .search_patient_index(1, &[m3], 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.search_patient_index(2, &[m1], 10).await.unwrap(),
        vec![pat]
    );

    // Live sessions of one account: not revoked, not past their lifetime.
    let session = |hash: u8, expires: i64, revoked: bool| Session {
        token_hash: vec![hash; 32],
        principal: Principal::Account(admin),
        role: Role::Admin,
        kind: SessionKind::Full,
        scope: None,
        created_at: T.plus_secs(i64::from(hash)),
        last_seen: T,
        expires_at: T.plus_secs(expires),
        revoked,
    };
    for s in [
        session(0xd1, 3600, false),
        session(0xd2, 3600, true),
        session(0xd3, -1, false),
        session(0xd4, 7200, false),
    ] {
        store.create_session(&s).await.unwrap();
    }
    let live = store.account_sessions(admin, T).await.unwrap();
    assert_eq!(
        live.iter().map(|s| s.token_hash[0]).collect::<Vec<_>>(),
        vec![0xd1, 0xd4]
    );
    assert!(store.account_sessions(pat, T).await.unwrap().is_empty());

    // Break-glass grants for review: newest first, expired ones included.
    let g1 = store
        .create_break_glass(admin, pat, "first reason given", T, T.plus_secs(-1))
        .await
        .unwrap();
    let g2 = store
        .create_break_glass(admin, pat, "second reason given", T, T.plus_secs(3600))
        .await
        .unwrap();
    let grants = store.list_break_glass(10).await.unwrap();
    let mine: Vec<_> = grants.iter().filter(|g| g.admin == admin).collect();
    assert_eq!(mine.iter().map(|g| g.id).collect::<Vec<_>>(), vec![g2, g1]);
    assert_eq!(mine[0].patient, pat);
    assert_eq!(mine[1].reason, "first reason given");
    assert_eq!(store.list_break_glass(1).await.unwrap().len(), 1);
}

async fn suite(store: SqlStore, url: &str) {
    store.ping().await.unwrap();

    // accounts
    let doc = store
        .create_account(account("doc", Role::Doctor))
        .await
        .unwrap();
    let pat = store
        .create_account(account("pat", Role::Patient))
        .await
        .unwrap();
    assert!(matches!(
        store.create_account(account("doc", Role::Doctor)).await,
        Err(StoreError::Conflict)
    ));
    let a = store.account_by_username("doc").await.unwrap().unwrap();
    assert_eq!(
        (a.id, a.role, a.totp_enabled, a.disabled),
        (doc, Role::Doctor, false, false)
    );
    assert_eq!(a.display_name, vec![1, 2, 3]);
    assert!(store.account_by_username("nobody").await.unwrap().is_none());
    assert_eq!(store.list_accounts().await.unwrap().len(), 2);

    // The persisted login throttle: a compare-and-set, so of two attempts that read the
    // same count only one moves it.
    assert_eq!(
        store.login_throttle(doc).await.unwrap(),
        Some((0, Timestamp(0)))
    );
    assert!(store.set_login_throttle(doc, 0, 1, T).await.unwrap());
    assert!(
        !store.set_login_throttle(doc, 0, 1, T).await.unwrap(),
        "lost race"
    );
    assert!(
        store
            .set_login_throttle(doc, 1, 2, T.plus_secs(4))
            .await
            .unwrap()
    );
    assert_eq!(
        store.login_throttle(doc).await.unwrap(),
        Some((2, T.plus_secs(4)))
    );
    assert_eq!(
        store.login_throttle(AccountId(999_999)).await.unwrap(),
        None
    );

    // TOTP: pending, enable, replay protection
    store.set_totp_pending(doc, vec![9; 40]).await.unwrap();
    let a = store.account(doc).await.unwrap().unwrap();
    assert_eq!(
        (
            a.totp_pending.clone(),
            a.totp_secret.clone(),
            a.totp_enabled
        ),
        (Some(vec![9; 40]), None, false)
    );
    store.enable_totp(doc, 100).await.unwrap();
    let a = store.account(doc).await.unwrap().unwrap();
    assert_eq!(
        (
            a.totp_secret.clone(),
            a.totp_pending.clone(),
            a.totp_enabled
        ),
        (Some(vec![9; 40]), None, true),
        "the pending secret became the enabled one"
    );
    assert!(
        store.enable_totp(doc, 100).await.is_err(),
        "nothing pending to enable"
    );
    assert!(
        !store.use_totp_step(doc, 100).await.unwrap(),
        "same step again"
    );
    assert!(!store.use_totp_step(doc, 99).await.unwrap(), "older step");
    assert!(store.use_totp_step(doc, 101).await.unwrap());
    assert_eq!(
        store.account(doc).await.unwrap().unwrap().totp_last_step,
        Some(101)
    );

    // recovery codes are single-use
    store
        .replace_recovery_codes(doc, vec![vec![1; 32], vec![2; 32]])
        .await
        .unwrap();
    assert_eq!(store.recovery_codes_remaining(doc).await.unwrap(), 2);
    assert!(store.use_recovery_code(doc, &[1; 32], T).await.unwrap());
    assert!(!store.use_recovery_code(doc, &[1; 32], T).await.unwrap());
    assert!(
        !store.use_recovery_code(pat, &[2; 32], T).await.unwrap(),
        "other account's code"
    );
    assert_eq!(store.recovery_codes_remaining(doc).await.unwrap(), 1);
    assert_eq!(store.recovery_codes_remaining(pat).await.unwrap(), 0);

    // sessions
    let s = Session {
        token_hash: vec![7; 32],
        principal: Principal::Account(pat),
        role: Role::Patient,
        kind: SessionKind::Full,
        scope: None,
        created_at: T,
        last_seen: T,
        expires_at: T.plus_secs(3600),
        revoked: false,
    };
    store.create_session(&s).await.unwrap();
    store
        .touch_session(&[7; 32], T.plus_secs(10))
        .await
        .unwrap();
    let got = store.session(&[7; 32]).await.unwrap().unwrap();
    assert_eq!(
        (got.principal.clone(), got.last_seen),
        (Principal::Account(pat), T.plus_secs(10))
    );
    assert!(store.revoke_session(&[7; 32]).await.unwrap());
    assert!(!store.revoke_session(&[7; 32]).await.unwrap());
    assert!(store.session(&[7; 32]).await.unwrap().unwrap().revoked);
    store
        .create_session(&Session {
            token_hash: vec![8; 32],
            ..s.clone()
        })
        .await
        .unwrap();
    assert_eq!(store.revoke_account_sessions(pat).await.unwrap(), 1);

    // Purging: revoked and expired rows go, live ones stay.
    for (hash, expires) in [(9u8, T.plus_secs(10)), (10, T.plus_secs(3600))] {
        store
            .create_session(&Session {
                token_hash: vec![hash; 32],
                expires_at: expires,
                ..s.clone()
            })
            .await
            .unwrap();
    }
    assert_eq!(store.purge_sessions(T.plus_secs(10)).await.unwrap(), 3);
    for gone in [7u8, 8, 9] {
        assert!(
            store.session(&[gone; 32]).await.unwrap().is_none(),
            "{gone}"
        );
    }
    assert!(store.session(&[10; 32]).await.unwrap().is_some());

    // disable
    assert!(store.set_account_disabled(pat, true).await.unwrap());
    assert!(store.account(pat).await.unwrap().unwrap().disabled);
    store.set_account_disabled(pat, false).await.unwrap();

    account_lifecycle(&store, doc, pat).await;

    // appointments
    let appt = store
        .create_appointment(NewAppointment {
            doctor: doc,
            patient: Some(pat),
            start: T,
            duration_s: 1800,
            reason: Some(vec![5; 20]),
            created_by: doc,
            created_at: T,
        })
        .await
        .unwrap();
    let other = store
        .create_appointment(NewAppointment {
            doctor: doc,
            patient: None,
            start: T.plus_secs(-60),
            duration_s: 600,
            reason: None,
            created_by: doc,
            created_at: T,
        })
        .await
        .unwrap();
    let a = store.appointment(appt).await.unwrap().unwrap();
    assert_eq!(
        (a.doctor, a.patient, a.duration_s, a.status),
        (doc, Some(pat), 1800, AppointmentStatus::Booked)
    );
    assert_eq!(a.end(), T.plus_secs(1800));
    let by_doc = store
        .list_appointments(AppointmentQuery {
            doctor: Some(doc),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_doc.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![other, appt],
        "ordered by start"
    );
    let by_pat = store
        .list_appointments(AppointmentQuery {
            patient: Some(pat),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_pat.len(), 1);
    store
        .set_appointment_status(appt, AppointmentStatus::Ended)
        .await
        .unwrap();
    assert_eq!(
        store.appointment(appt).await.unwrap().unwrap().status,
        AppointmentStatus::Ended
    );

    // invites: redeem once, never after expiry
    let inv = store
        .create_invite(NewInvite {
            appointment: appt,
            token_hash: vec![3; 32],
            expires_at: T.plus_secs(60),
            created_by: doc,
            created_at: T,
            label: Some(vec![7; 40]),
        })
        .await
        .unwrap();
    let r = store.invite_by_hash(&[3; 32]).await.unwrap().unwrap();
    assert_eq!((r.id, r.appointment, r.used_at), (inv, appt, None));
    assert_eq!(r.label, Some(vec![7; 40]));
    let sealed = store.sealed_cells().await.unwrap();
    assert!(
        sealed
            .iter()
            .any(|c| c.column == SealedColumn::InviteLabel && c.row == inv.0),
        "key rotation re-seals invite labels"
    );
    assert!(
        !store.redeem_invite(inv, T.plus_secs(61)).await.unwrap(),
        "expired"
    );
    assert!(store.redeem_invite(inv, T.plus_secs(1)).await.unwrap());
    assert!(
        !store.redeem_invite(inv, T.plus_secs(2)).await.unwrap(),
        "used"
    );
    assert!(store.invite_by_hash(&[4; 32]).await.unwrap().is_none());

    // consent
    let subj = pat.to_string();
    assert!(store.active_consent(&subj).await.unwrap().is_none());
    store.record_consent(&subj, "v1", T).await.unwrap();
    store
        .record_consent(&subj, "v2", T.plus_secs(1))
        .await
        .unwrap();
    assert_eq!(
        store.active_consent(&subj).await.unwrap().unwrap().version,
        "v2"
    );
    assert!(store.revoke_consent(&subj, T.plus_secs(2)).await.unwrap());
    assert!(store.active_consent(&subj).await.unwrap().is_none());
    assert!(!store.revoke_consent(&subj, T.plus_secs(3)).await.unwrap());

    // chat ciphertext
    let c1 = store
        .store_chat(NewChat {
            appointment: appt,
            sender: ParticipantId(4),
            sender_role: Role::Patient,
            sent_at: T,
            ciphertext: vec![0xde, 0xad],
        })
        .await
        .unwrap();
    let hist = store.chat_history(appt).await.unwrap();
    assert_eq!(hist.len(), 1);
    assert_eq!(
        (hist[0].id, hist[0].sender, hist[0].ciphertext.clone()),
        (c1, ParticipantId(4), vec![0xde, 0xad])
    );
    assert!(store.chat_history(other).await.unwrap().is_empty());

    // break-glass grants expire, and open one patient only
    let g = store
        .create_break_glass(doc, pat, "patient unconscious", T, T.plus_secs(60))
        .await
        .unwrap();
    let active = store
        .active_break_glass(doc, pat, T.plus_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((active.id, active.patient), (g, pat));
    assert!(
        store
            .active_break_glass(doc, doc, T.plus_secs(1))
            .await
            .unwrap()
            .is_none(),
        "another patient"
    );
    assert!(
        store
            .active_break_glass(doc, pat, T.plus_secs(61))
            .await
            .unwrap()
            .is_none()
    );

    // audit: append-only sequence, filters
    let mut seqs = vec![];
    for (i, action) in [
        AuditAction::LoginOk,
        AuditAction::LoginFailed,
        AuditAction::BreakGlassGranted,
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = AuditEvent::new(format!("account:{i}"), action, Outcome::Success, T)
            .role(Role::Admin)
            .target("appointment:1")
            .source(Some("127.0.0.1".into()))
            .request_id(Some("r1".into()));
        if action == AuditAction::BreakGlassGranted {
            e = e.high().detail("reason given");
        }
        seqs.push(store.record_audit(e).await.unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let all = store.audit_events(AuditFilter::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    let bg = store
        .audit_events(AuditFilter {
            action: Some(AuditAction::BreakGlassGranted),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bg.len(), 1);
    assert_eq!(bg[0].event.priority, Priority::High);
    assert_eq!(bg[0].event.detail.as_deref(), Some("reason given"));
    assert_eq!(bg[0].event.source.as_deref(), Some("127.0.0.1"));
    assert_eq!(bg[0].event.role, Some(Role::Admin));
    let after = store
        .audit_events(AuditFilter {
            after: Some(seqs[0]),
            actor: Some("account:1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].event.action, AuditAction::LoginFailed);

    key_directory(&store, url, doc, pat, appt, inv).await;

    front_desk(&store).await;

    // keys: first load makes a key; rotation of master and data key
    let m1 = MasterKey::generate(&mut OsRng);
    let ring = load_keyring(&store, &m1, T).await.unwrap();
    // The rows above hold placeholder bytes; give every sealed column a real envelope.
    for cell in store.sealed_cells().await.unwrap() {
        let value = ring.seal(cell.column.context(), b"x", &mut OsRng);
        store
            .update_sealed_cell(&SealedCell { value, ..cell })
            .await
            .unwrap();
    }
    let sealed = ring.seal(
        confide_signaling::crypto::ctx::REASON,
        b"headache",
        &mut OsRng,
    );
    store
        .update_sealed_cell(&SealedCell {
            column: SealedColumn::Reason,
            row: appt.0,
            value: sealed,
        })
        .await
        .unwrap();
    let m2 = MasterKey::generate(&mut OsRng);
    assert!(
        rotate_master_key(&store, &m2, &m1, T).await.is_err(),
        "wrong old key"
    );
    assert_eq!(rotate_master_key(&store, &m1, &m2, T).await.unwrap(), 1);
    assert!(
        load_keyring(&store, &m1, T).await.is_err(),
        "old master key no longer opens"
    );
    let new_id = rotate_data_key(&store, &m2, T).await.unwrap();
    assert_eq!(new_id, 2);
    let ring = load_keyring(&store, &m2, T).await.unwrap();
    assert_eq!(ring.active_id(), 2);
    // The rotation rebuilt the search index under the new key from the re-sealed
    // names (every name is "x" here) and dropped the rows of older keys.
    let x = ring.blind_index(&confide_signaling::blind_index::name_term("x"));
    assert_eq!(x.0, 2);
    let found = store.search_patient_index(2, &[x.1], 100).await.unwrap();
    assert!(found.contains(&pat), "{found:?}");
    assert!(store.unindexed_patients(2).await.unwrap().is_empty());
    assert_eq!(store.drop_patient_index_except(2).await.unwrap(), 0);
    let reason = store
        .appointment(appt)
        .await
        .unwrap()
        .unwrap()
        .reason
        .unwrap();
    assert_eq!(
        confide_signaling::crypto::Keyring::key_id_of(&reason),
        Ok(2)
    );
    assert_eq!(
        &ring
            .open(confide_signaling::crypto::ctx::REASON, &reason)
            .unwrap()[..],
        b"headache"
    );
    assert_eq!(
        store.data_keys().await.unwrap().len(),
        1,
        "old data key dropped"
    );

    one_audit_store(&store, url, &all).await;
    store.close().await;
}

/// The admin read path reads the Merkle log itself (issue: audit trail, item 2): there
/// is no second, unguarded table to forge rows in, and a row edited in the log changes
/// what the admin sees only together with a `verify` finding naming it.
async fn one_audit_store(
    store: &SqlStore,
    url: &str,
    recorded: &[confide_signaling::audit::AuditRecord],
) {
    use confide_audit::store::{AuditStore, Backend as AB};
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let old_table = sqlx::query("SELECT COUNT(*) FROM audit_events")
        .execute(&mut conn)
        .await;
    assert!(old_table.is_err(), "the plain audit_events copy is gone");

    // What the admin read returns is the log's entry at the same sequence number.
    let backend = if url.starts_with("sqlite:") {
        AB::Sqlite
    } else {
        AB::Postgres
    };
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let log = AuditStore::attach(pool.clone(), backend);
    let first = &recorded[0];
    let entry = log
        .entries(first.seq.0 as u64, 1)
        .await
        .unwrap()
        .remove(0)
        .entry;
    assert_eq!(entry.actor(), first.event.actor);
    assert_eq!(entry.action(), first.event.action.as_str());

    // Someone with the database owner's rights edits that entry's actor.
    let drop_guard = match backend {
        AB::Sqlite => "DROP TRIGGER audit_log_no_update",
        AB::Postgres => "DROP TRIGGER audit_log_append_only ON audit_log",
    };
    sqlx::query(drop_guard).execute(&mut conn).await.unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'account:99' WHERE seq = $1")
        .bind(first.seq.0)
        .execute(&mut conn)
        .await
        .unwrap();
    let seen = store
        .audit_events(AuditFilter {
            actor: Some("account:99".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(seen.len(), 1, "the admin read is the log");
    let key = confide_audit::LogSigningKey::from_seed(&[5; 32]).public_key();
    let err = log
        .verify(&key, "test.invalid/log", None, &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.finding(),
        Some(&confide_audit::Finding::Altered {
            seq: first.seq.0 as u64
        })
    );
    pool.close().await;
}

#[tokio::test]
async fn store_suite_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.sqlite3").display());
    suite(SqlStore::connect(&url).await.unwrap(), &url).await;
}

fn pg_base_url() -> String {
    std::env::var("CONFIDE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Create a fresh database for one test and return its URL.
async fn fresh_pg_database() -> String {
    sqlx::any::install_default_drivers();
    let base = pg_base_url();
    let mut conn = sqlx::AnyConnection::connect(&base)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at CONFIDE_TEST_DATABASE_URL must be reachable: {e}")
        });
    let mut b = [0u8; 6];
    rand::RngCore::fill_bytes(&mut OsRng, &mut b);
    let name = format!("confide_t_{}", hex::encode(b));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let (prefix, rest) = base.rsplit_once('/').expect("URL has a database path");
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{prefix}/{name}{query}")
}

#[tokio::test]
async fn store_suite_postgres() {
    let url = fresh_pg_database().await;
    let store = SqlStore::connect(&url).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    suite(store, &url).await;
}
