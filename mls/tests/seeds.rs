//! Writes seed inputs for the fuzz targets (`mls/fuzz/corpus/`): real Welcome, commit,
//! application message and KeyPackage bytes. Run by hand when the wire format changes:
//! `cargo test -p confide-mls --test tests seeds -- --ignored`.

use confide_mls::ConsultationGroup;

use crate::common::*;

#[test]
#[ignore = "writes files; run by hand to refresh the fuzz corpus"]
fn seeds() {
    let doctor = device("account:1");
    let patient = device("account:2");
    let kp = patient.key_packages(1).unwrap().remove(0);
    let mut dg = ConsultationGroup::create(&doctor, "1").unwrap();
    let c = dg
        .add(
            &doctor,
            &[confide_mls::ClaimedKeyPackage::parse(&doctor, &kp).unwrap()],
        )
        .unwrap();
    dg.confirm_commit(&doctor).unwrap();
    let update = dg.self_update(&doctor).unwrap();
    dg.confirm_commit(&doctor).unwrap();
    let chat = dg
        .seal(&doctor, br#"{"type":"chat","text":"hello"}"#)
        .unwrap();
    let dir = env!("CARGO_MANIFEST_DIR");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        std::fs::write(format!("{dir}/fuzz/corpus/{target}/{name}"), bytes).unwrap();
    };
    write("handshake", "welcome", c.welcome.as_ref().unwrap());
    write("handshake", "key_package", &kp);
    write(
        "handshake",
        "payload",
        br#"{"type":"checkpoint","size":3,"root":"AAAA"}"#,
    );
    write("group_message", "commit_add", &c.commit);
    write("group_message", "commit_update", &update.commit);
    write("group_message", "application", &chat);
}
