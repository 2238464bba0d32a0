//! The key directory over HTTPS: who may look whom up, device registration and
//! revocation, KeyPackages, and the key-transparency proofs in its answers
//! (docs/protocol.md, "Key directory"; docs/security.md, "Key directory and
//! transparency (server side)").

mod common;

use std::collections::BTreeSet;

use common::*;
use confide_audit::{
    AuditEntry, Hash, LogPublicKey, SignedCheckpoint, verify_consistency, verify_inclusion,
};
use confide_server::confide_signaling::audit::AuditAction;
use confide_server::confide_signaling::model::{DeviceId, Role};
use confide_server::confide_signaling::proto::encode_b64;
use serde_json::{Value, json};

async fn log_key(ts: &TestServer) -> LogPublicKey {
    let r = ts.req("GET", "/api/audit/key", None, None).await;
    let vkey = r.body.as_str().unwrap().trim().to_owned();
    LogPublicKey::from_vkey(&vkey).unwrap().1
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| Hash::from_base64(h.as_str().unwrap()).unwrap())
        .collect()
}

/// Verify every entry of a directory answer against its checkpoint, as a client does;
/// returns the parsed entries by device.
fn verify_answer(answer: &Value, key: &LogPublicKey) -> Vec<(String, Vec<AuditEntry>)> {
    let cp = SignedCheckpoint::from_note(answer["checkpoint"].as_str().unwrap(), key)
        .expect("the checkpoint is signed by the log key");
    assert_eq!(answer["size"].as_u64(), Some(cp.checkpoint.size));
    let mut out = Vec::new();
    for d in answer["devices"].as_array().unwrap() {
        let mut entries = Vec::new();
        for e in d["entries"].as_array().unwrap() {
            let entry = AuditEntry::from_json(e["entry"].as_str().unwrap()).unwrap();
            let seq = e["seq"].as_u64().unwrap();
            assert_eq!(entry.seq(), seq);
            verify_inclusion(
                seq,
                cp.checkpoint.size,
                &entry.leaf_hash(),
                &hashes(&e["proof"]),
                &cp.checkpoint.root,
            )
            .expect("the inclusion proof leads to the checkpoint's root");
            entries.push(entry);
        }
        out.push((d["device"].as_str().unwrap().to_owned(), entries));
    }
    out
}

fn code(r: &Resp) -> &str {
    r.body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_answers_only_the_principal_and_its_appointment_peers() {
    let ts = server().await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let patient = ts.login_demo(Role::Patient).await;
    let staff = ts.login_demo(Role::Staff).await;
    let (stranger_id, pw, _) = ts.add_account("stranger", Role::Patient).await;
    let stranger = ts.login("stranger", &pw, None).await;
    let stranger_p = stranger_id.to_string();
    let (guest, guest_p) = ts.guest(&doctor).await;
    let doc_p = ts.principal(Role::Doctor);
    let pat_p = ts.principal(Role::Patient);
    ts.new_device(&doctor).await;

    let get = |token: &str, who: &str| {
        let path = format!("/api/directory/{who}");
        let token = token.to_owned();
        let ts = &ts;
        async move { ts.req("GET", &path, Some(&token), None).await }
    };
    // Allowed: oneself, and the parties of a shared appointment (guests included).
    for (token, who, role) in [
        (&doctor, &doc_p, "doctor"),
        (&patient, &doc_p, "doctor"),
        (&doctor, &pat_p, "patient"),
        (&guest, &doc_p, "doctor"),
        (&guest, &pat_p, "patient"),
        (&doctor, &guest_p, "guest"),
        (&patient, &guest_p, "guest"),
        (&stranger, &stranger_p, "patient"),
    ] {
        let r = get(token, who).await;
        assert_eq!(r.status, 200, "{who}: {:?}", r.body);
        assert_eq!(r.body["principal"], who.as_str());
        assert_eq!(r.body["role"], role);
    }
    let r = get(&patient, &doc_p).await;
    assert_eq!(r.body["label"], "Dr. Demo Doctor");
    assert_eq!(r.body["devices"].as_array().unwrap().len(), 1);
    assert_eq!(get(&doctor, &guest_p).await.body["label"], "Guest");

    // Refused: unrelated, unknown and malformed principals all look the same.
    let unknown = get(&doctor, "account:999999").await;
    assert_eq!(unknown.status, 404);
    for (token, who) in [
        (&stranger, doc_p.as_str()),
        (&stranger, guest_p.as_str()),
        (&staff, pat_p.as_str()),
        (&staff, doc_p.as_str()),
        (&doctor, "guest:999999"),
        (&doctor, "17"),
        (&doctor, "account:-1"),
    ] {
        let r = get(token, who).await;
        assert_eq!((r.status, &r.body), (404, &unknown.body), "{who}");
    }
    // Claiming a KeyPackage is guarded the same way.
    let d = ts.new_device(&patient).await;
    let claim = |token: &str, who: &str| {
        let path = format!("/api/directory/{who}/devices/{}/key_package", d.id);
        let token = token.to_owned();
        let ts = &ts;
        async move { ts.req("POST", &path, Some(&token), None).await }
    };
    assert_eq!(claim(&doctor, &pat_p).await.status, 404);
    assert_eq!(code(&claim(&doctor, &pat_p).await), "no_key_package");
    let r = claim(&stranger, &pat_p).await;
    assert_eq!((r.status, &r.body), (404, &unknown.body));
    // Without a session: 401, as everywhere.
    let r = ts
        .req("GET", &format!("/api/directory/{doc_p}"), None, None)
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_registration_is_idempotent_and_a_device_key_never_changes() {
    let ts = server().await;
    let patient = ts.login_demo(Role::Patient).await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let d = Device::random();

    let first = ts.register(&patient, &d).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(first.body["device"], d.id.as_str());
    let seq = first.body["seq"].as_u64().unwrap();
    let again = ts.register(&patient, &d).await;
    assert_eq!((again.status, &again.body), (200, &first.body));
    let logged = ts.audit(AuditAction::DeviceRegistered).await;
    assert_eq!(logged.len(), 1, "an idempotent repeat is not logged again");
    assert_eq!(
        logged[0].event.target.as_deref(),
        Some(format!("device:{}", d.id).as_str())
    );
    assert_eq!(
        logged[0].event.detail.as_deref(),
        Some(format!("ed25519:{}", d.key_b64()).as_str())
    );
    assert_eq!(logged[0].event.source, None, "entries are served to peers");

    // Another key under the same id: refused, the old key stays.
    let other = Device {
        key: [7; 32],
        ..d.clone()
    };
    let r = ts.register(&patient, &other).await;
    assert_eq!((r.status, code(&r)), (409, "device_key_conflict"));
    // The same id is independent per principal.
    assert_eq!(ts.register(&doctor, &other).await.status, 201);

    // Bad ids and keys.
    for id in ["ABCDEF0123456789abcdef0123456789", "abc", "../../x"] {
        let r = ts
            .req(
                "PUT",
                &format!("/api/devices/{id}"),
                Some(&patient),
                Some(json!({"signature_key": d.key_b64()})),
            )
            .await;
        assert!(r.status == 400 || r.status == 404, "{id}: {}", r.status);
    }
    for key in ["", "AAEC", "!!!!", &encode_b64(&[1u8; 33])] {
        let r = ts
            .req(
                "PUT",
                &format!("/api/devices/{}", Device::random().id),
                Some(&patient),
                Some(json!({"signature_key": key})),
            )
            .await;
        assert_eq!(r.status, 400, "{key}");
    }

    // Revocation: logged, idempotent, final; only the owner may revoke.
    let path = format!("/api/devices/{}", d.id);
    assert_eq!(
        ts.req("DELETE", &path, Some(&doctor), None).await.status,
        200
    );
    let r = ts.req("DELETE", &path, Some(&patient), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let revoked = r.body["seq"].as_u64().unwrap();
    assert!(revoked > seq);
    let r = ts.req("DELETE", &path, Some(&patient), None).await;
    assert_eq!(r.body["seq"].as_u64(), Some(revoked));
    assert_eq!(ts.audit(AuditAction::DeviceRevoked).await.len(), 2);
    let r = ts.register(&patient, &d).await;
    assert_eq!((r.status, code(&r)), (409, "device_revoked"));
    let r = ts
        .req(
            "DELETE",
            &format!("/api/devices/{}", Device::random().id),
            Some(&patient),
            None,
        )
        .await;
    assert_eq!(r.status, 404);

    // At most 10 active devices; revoking one makes room.
    let mut devices = Vec::new();
    for _ in 0..10 {
        devices.push(ts.new_device(&patient).await);
    }
    let r = ts.register(&patient, &Device::random()).await;
    assert_eq!((r.status, code(&r)), (409, "too_many_devices"));
    let path = format!("/api/devices/{}", devices[0].id);
    assert_eq!(
        ts.req("DELETE", &path, Some(&patient), None).await.status,
        200
    );
    ts.new_device(&patient).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_uploaded_counted_claimed_once_and_fall_back_to_last_resort() {
    let ts = server().await;
    let patient = ts.login_demo(Role::Patient).await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let pat_p = ts.principal(Role::Patient);
    let d = ts.new_device(&patient).await;
    let own = format!("/api/devices/{}/key_packages", d.id);
    let claim_path = format!("/api/directory/{pat_p}/devices/{}/key_package", d.id);

    let r = ts.req("GET", &own, Some(&patient), None).await;
    assert_eq!(r.body, json!({"available": 0, "last_resort": false}));
    let (kps, lr) = ts.upload_key_packages(&patient, &d, 3, true).await;
    let r = ts.req("GET", &own, Some(&patient), None).await;
    assert_eq!(r.body, json!({"available": 3, "last_resort": true}));
    // Only the owner counts or uploads.
    assert_eq!(ts.req("GET", &own, Some(&doctor), None).await.status, 404);
    let r = ts
        .req(
            "POST",
            &own,
            Some(&doctor),
            Some(json!({"key_packages": [key_package()]})),
        )
        .await;
    assert_eq!(r.status, 404);

    let mut claimed = BTreeSet::new();
    for _ in 0..3 {
        let r = ts.req("POST", &claim_path, Some(&doctor), None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["last_resort"], false);
        claimed.insert(r.body["key_package"].as_str().unwrap().to_owned());
    }
    assert_eq!(claimed, kps.iter().cloned().collect());
    for _ in 0..2 {
        let r = ts.req("POST", &claim_path, Some(&doctor), None).await;
        assert_eq!(r.body["last_resort"], true);
        assert_eq!(r.body["key_package"].as_str(), lr.as_deref());
    }
    let r = ts.req("GET", &own, Some(&patient), None).await;
    assert_eq!(r.body, json!({"available": 0, "last_resort": true}));

    // A new last resort replaces the old one.
    let (_, lr2) = ts.upload_key_packages(&patient, &d, 0, true).await;
    let r = ts.req("POST", &claim_path, Some(&doctor), None).await;
    assert_eq!(r.body["key_package"].as_str(), lr2.as_deref());

    // Refused uploads change nothing.
    let bad = [
        json!({"key_packages": ["!!"]}),
        json!({"key_packages": [""]}),
        json!({"key_packages": [encode_b64(&[0, 1, 0, 1, 9, 9])]}),
        json!({"key_packages": [encode_b64(&[0, 2, 0, 5, 9, 9])]}),
        json!({"key_packages": [encode_b64(&[0, 1, 0])]}),
        json!({"key_packages": [encode_b64(&{
            let mut v = vec![0, 1, 0, 5];
            v.resize(16 * 1024 + 1, 7);
            v
        })]}),
        json!({"key_packages": [], "last_resort": "AAEC"}),
        json!({"key_packages": (0..101).map(|_| key_package()).collect::<Vec<_>>()}),
        json!({"key_packages": [], "extra": 1}),
    ];
    for body in bad {
        let r = ts.req("POST", &own, Some(&patient), Some(body)).await;
        assert!(
            r.status == 400 || r.status == 422,
            "{}: {:?}",
            r.status,
            r.body
        );
    }
    let r = ts.req("GET", &own, Some(&patient), None).await;
    assert_eq!(r.body, json!({"available": 0, "last_resort": true}));

    // At most 200 stored: 100 + 100 fit, one more does not.
    ts.upload_key_packages(&patient, &d, 100, false).await;
    ts.upload_key_packages(&patient, &d, 100, false).await;
    let r = ts
        .req(
            "POST",
            &own,
            Some(&patient),
            Some(json!({"key_packages": [key_package()]})),
        )
        .await;
    assert_eq!((r.status, code(&r)), (409, "too_many_key_packages"));

    // A revoked device hands out nothing, and its KeyPackages are gone.
    let path = format!("/api/devices/{}", d.id);
    assert_eq!(
        ts.req("DELETE", &path, Some(&patient), None).await.status,
        200
    );
    let r = ts.req("POST", &claim_path, Some(&doctor), None).await;
    assert_eq!((r.status, code(&r)), (404, "not_found"));
    let kps = ts
        .store()
        .key_package_count(&pat_p, &DeviceId::parse(&d.id).unwrap())
        .await
        .unwrap();
    assert_eq!((kps.available, kps.last_resort), (0, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_get_the_same_key_package() {
    let ts = server().await;
    let patient = ts.login_demo(Role::Patient).await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let d = ts.new_device(&patient).await;
    let (kps, lr) = ts.upload_key_packages(&patient, &d, 12, true).await;
    let path = format!(
        "/api/directory/{}/devices/{}/key_package",
        ts.principal(Role::Patient),
        d.id
    );
    let claims = (0..16).map(|_| ts.req("POST", &path, Some(&doctor), None));
    let got: Vec<Resp> = futures_util::future::join_all(claims).await;
    let mut one_time = Vec::new();
    let mut last = 0;
    for r in &got {
        assert_eq!(r.status, 200, "{:?}", r.body);
        let kp = r.body["key_package"].as_str().unwrap().to_owned();
        if r.body["last_resort"] == true {
            assert_eq!(Some(kp), lr);
            last += 1;
        } else {
            one_time.push(kp);
        }
    }
    let unique: BTreeSet<_> = one_time.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        one_time.len(),
        "a KeyPackage was handed out twice"
    );
    assert_eq!(unique, kps.into_iter().collect());
    assert_eq!(last, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_entries_are_provable_at_once_and_carry_the_key() {
    let ts = server().await;
    let key = log_key(&ts).await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let patient = ts.login_demo(Role::Patient).await;
    let pat_p = ts.principal(Role::Patient);
    // Registered, then looked up at once: no waiting for the signer's schedule.
    let d1 = ts.new_device(&patient).await;
    let d2 = ts.new_device(&patient).await;
    let r = ts
        .req(
            "GET",
            &format!("/api/directory/{pat_p}"),
            Some(&doctor),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let verified = verify_answer(&r.body, &key);
    assert_eq!(verified.len(), 2);
    for (d, (device, entries)) in [&d1, &d2].into_iter().zip(&verified) {
        assert_eq!(device, &d.id);
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(e.action(), "device_registered");
        assert_eq!(e.actor(), pat_p);
        assert_eq!(e.target(), Some(format!("device:{}", d.id).as_str()));
        assert_eq!(
            e.detail(),
            Some(format!("ed25519:{}", d.key_b64()).as_str())
        );
        assert_eq!(e.source(), None);
        assert_eq!(e.request_id(), None);
    }
    let served = &r.body["devices"][0];
    assert_eq!(served["signature_key"], d1.key_b64());
    assert_eq!(served["status"], "active");

    // A revocation is provable at once too, and the device is served as revoked.
    let path = format!("/api/devices/{}", d1.id);
    assert_eq!(
        ts.req("DELETE", &path, Some(&patient), None).await.status,
        200
    );
    let r = ts
        .req(
            "GET",
            &format!("/api/directory/{pat_p}"),
            Some(&doctor),
            None,
        )
        .await;
    let verified = verify_answer(&r.body, &key);
    let (_, entries) = &verified[0];
    assert_eq!(r.body["devices"][0]["status"], "revoked");
    assert_eq!(
        entries.iter().map(|e| e.action()).collect::<Vec<_>>(),
        ["device_registered", "device_revoked"]
    );
    assert_eq!(r.body["devices"][1]["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_proofs_between_checkpoints_verify() {
    let ts = server().await;
    let key = log_key(&ts).await;
    let patient = ts.login_demo(Role::Patient).await;
    let pat_p = ts.principal(Role::Patient);
    let lookup = || async {
        let r = ts
            .req(
                "GET",
                &format!("/api/directory/{pat_p}"),
                Some(&patient),
                None,
            )
            .await;
        SignedCheckpoint::from_note(r.body["checkpoint"].as_str().unwrap(), &key)
            .unwrap()
            .checkpoint
    };
    ts.new_device(&patient).await;
    let old = lookup().await;
    // More entries (logins are logged too), another registration, a new checkpoint.
    ts.login_demo(Role::Doctor).await;
    ts.new_device(&patient).await;
    let new = lookup().await;
    assert!(new.size > old.size);

    let r = ts
        .req(
            "GET",
            &format!("/api/audit/consistency?from={}&to={}", old.size, new.size),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (r.body["from"].as_u64(), r.body["to"].as_u64()),
        (Some(old.size), Some(new.size))
    );
    let proof = hashes(&r.body["proof"]);
    verify_consistency(old.size, new.size, &old.root, &new.root, &proof).unwrap();
    // The proof is bound to these trees: another pair of sizes does not verify with it.
    assert!(verify_consistency(old.size - 1, new.size, &old.root, &new.root, &proof).is_err());
    // Equal sizes: an empty proof.
    let r = ts
        .req(
            "GET",
            &format!("/api/audit/consistency?from={0}&to={0}", new.size),
            None,
            None,
        )
        .await;
    assert_eq!(r.body["proof"], json!([]));

    for q in [
        format!("from={}&to={}", new.size, old.size),
        format!("from=0&to={}", u64::MAX),
        "from=1&to=x".to_owned(),
        "to=3".to_owned(),
    ] {
        let r = ts
            .req("GET", &format!("/api/audit/consistency?{q}"), None, None)
            .await;
        assert_eq!(r.status, 400, "{q}: {:?}", r.body);
    }
}
