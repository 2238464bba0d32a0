//! Auditor packages: what `confide audit export` writes and `confide audit check`
//! reads, checked here without any database.

use std::io::Cursor;

use confide_audit::*;

use crate::util::{Fixture, fixture, with_event};

/// Exports `[from, to)` with the latest checkpoint at or before `from` as start and
/// the first at or after `to` as end, as the CLI does.
fn export(f: &Fixture, from: u64, to: u64) -> String {
    let start = f
        .checkpoints
        .iter()
        .filter(|c| c.checkpoint.size <= from)
        .max_by_key(|c| c.checkpoint.size);
    let end = f
        .checkpoints
        .iter()
        .filter(|c| c.checkpoint.size >= to)
        .min_by_key(|c| c.checkpoint.size)
        .unwrap();
    let mut out = Vec::new();
    let entries = f.rows[from as usize..to as usize]
        .iter()
        .map(|r| Ok(r.entry.clone()));
    let report =
        write_package(&mut out, &f.tree, &f.public, from, to, start, end, entries).unwrap();
    assert_eq!(report.entries, to - from);
    String::from_utf8(out).unwrap()
}

fn check(pkg: &str, f: &Fixture) -> Result<PackageReport, Error> {
    check_package(Cursor::new(pkg.as_bytes()), Some(&f.public))
}

fn lines(pkg: &str) -> Vec<String> {
    pkg.lines().map(str::to_owned).collect()
}

fn join(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn exported_package_checks_offline() {
    let f = fixture(500, 64);
    let pkg = export(&f, 100, 300);
    let r = check(&pkg, &f).unwrap();
    assert_eq!((r.from, r.to, r.entries), (100, 300, 200));
    assert_eq!((r.start_size, r.end_size), (64, 320));
    assert_eq!(r.key_fingerprint, f.public.fingerprint());
    // Without a pinned key the package's own key is used and reported.
    let r = check_package(Cursor::new(pkg.as_bytes()), None).unwrap();
    assert_eq!(r.key_fingerprint, f.public.fingerprint());
    // Whole log, no start checkpoint.
    check(&export(&f, 0, 500), &f).unwrap();
    // Empty range.
    check(&export(&f, 64, 64), &f).unwrap();
}

#[test]
fn package_entries_are_json_lines_of_entries() {
    let f = fixture(10, 4);
    let pkg = export(&f, 0, 10);
    let l = lines(&pkg);
    assert_eq!(l.len(), 11);
    let header: PackageHeader = serde_json::from_str(&l[0]).unwrap();
    assert_eq!(header.format, PACKAGE_FORMAT);
    let first: PackageLine = serde_json::from_str(&l[1]).unwrap();
    assert_eq!(first.entry, f.rows[0].entry);
}

#[test]
fn tampered_entry_field_fails_naming_it() {
    let f = fixture(200, 50);
    let mut l = lines(&export(&f, 0, 200));
    let mut line: PackageLine = serde_json::from_str(&l[1 + 77]).unwrap();
    line.entry = with_event(&line.entry, |e| e.outcome = Outcome::Success);
    line.entry = with_event(&line.entry, |e| e.actor = "account:0".into());
    l[1 + 77] = serde_json::to_string(&line).unwrap();
    let err = check(&join(&l), &f).unwrap_err();
    assert_eq!(err.finding(), Some(&Finding::InclusionFailed { seq: 77 }));
    assert!(err.to_string().contains("entry 77"));
}

#[test]
fn tampered_text_edit_fails() {
    // A plain text edit of the file, as an auditee with a text editor might make.
    let f = fixture(50, 10);
    let pkg = export(&f, 0, 50);
    let edited = pkg.replacen("\"request_id\":\"req-33\"", "\"request_id\":\"req-34\"", 1);
    assert_ne!(edited, pkg);
    assert_eq!(
        check(&edited, &f).unwrap_err().finding(),
        Some(&Finding::InclusionFailed { seq: 33 })
    );
}

#[test]
fn deleted_reordered_or_extra_lines_fail() {
    let f = fixture(100, 25);
    let l = lines(&export(&f, 0, 100));

    let mut deleted = l.clone();
    deleted.remove(1 + 40);
    assert_eq!(
        check(&join(&deleted), &f).unwrap_err().finding(),
        Some(&Finding::Missing { seq: 40 })
    );

    let mut swapped = l.clone();
    swapped.swap(1 + 40, 1 + 41);
    assert_eq!(
        check(&join(&swapped), &f).unwrap_err().finding(),
        Some(&Finding::Missing { seq: 40 })
    );

    let mut dup = l.clone();
    dup.insert(1 + 41, l[1 + 40].clone());
    assert_eq!(
        check(&join(&dup), &f).unwrap_err().finding(),
        Some(&Finding::OutOfOrder {
            expected: 41,
            found: 40
        })
    );

    let truncated = &l[..l.len() - 1];
    assert_eq!(
        check(&join(truncated), &f).unwrap_err().finding(),
        Some(&Finding::Missing { seq: 99 })
    );

    let mut extra = l.clone();
    extra.push(l[1].clone());
    assert!(check(&join(&extra), &f).is_err());
}

#[test]
fn tampered_header_fails() {
    let f = fixture(200, 50);
    let l = lines(&export(&f, 60, 120));
    let header: PackageHeader = serde_json::from_str(&l[0]).unwrap();

    // Edited checkpoint size or root: the signature no longer verifies.
    let mut h = header.clone();
    h.end_checkpoint = h.end_checkpoint.replacen("\n150\n", "\n149\n", 1);
    let mut m = l.clone();
    m[0] = serde_json::to_string(&h).unwrap();
    assert!(matches!(
        check(&join(&m), &f).unwrap_err().finding(),
        Some(Finding::BadCheckpointSignature { .. })
    ));

    // Broken consistency proof.
    let mut h = header.clone();
    h.consistency_proof[0].0[0] ^= 1;
    let mut m = l.clone();
    m[0] = serde_json::to_string(&h).unwrap();
    assert_eq!(
        check(&join(&m), &f).unwrap_err().finding(),
        Some(&Finding::InconsistentCheckpoints {
            old_size: 50,
            new_size: 150
        })
    );

    // A different log key: refused against the pinned key.
    let other = LogSigningKey::from_seed(&[5; 32]);
    let mut h = header.clone();
    h.log_key = other.public_key().to_vkey("clinic.example/audit").unwrap();
    let mut m = l.clone();
    m[0] = serde_json::to_string(&h).unwrap();
    assert_eq!(
        check(&join(&m), &f).unwrap_err().finding(),
        Some(&Finding::UnexpectedKey)
    );

    // A whole package re-signed by another key passes only its own key's check: the
    // fingerprint tells the auditor it is not the clinic's.
    let mut h = header.clone();
    h.from = 0;
    let mut m = l.clone();
    m[0] = serde_json::to_string(&h).unwrap();
    assert!(check(&join(&m), &f).is_err());
}

#[test]
fn control_characters_in_a_package_are_refused() {
    let f = fixture(20, 10);
    let pkg = export(&f, 0, 20);
    let edited = pkg.replacen("\"req-3\"", "\"req-3\\u001b[2J\"", 1);
    assert_eq!(
        check(&edited, &f).unwrap_err().finding(),
        Some(&Finding::NotCanonical { seq: 3 })
    );
}

#[test]
fn garbage_never_panics() {
    let f = fixture(20, 10);
    let pkg = export(&f, 0, 20);
    for cut in (0..pkg.len()).step_by(97) {
        let _ = check_package(Cursor::new(&pkg.as_bytes()[..cut]), None);
    }
    for junk in ["", "\n", "{}", "null\n", "[]\n{}\n", &"x".repeat(2 << 20)] {
        assert!(check_package(Cursor::new(junk.as_bytes()), None).is_err());
    }
}

#[test]
fn export_refuses_a_tampered_store() {
    let f = fixture(100, 50);
    let end = f.checkpoints.last().unwrap();
    let mut rows: Vec<AuditEntry> = f.rows.iter().map(|r| r.entry.clone()).collect();
    rows[30] = with_event(&rows[30], |e| e.role = None);
    let mut out = Vec::new();
    let err = write_package(
        &mut out,
        &f.tree,
        &f.public,
        0,
        100,
        None,
        end,
        rows.into_iter().map(Ok),
    )
    .unwrap_err();
    assert_eq!(err.finding(), Some(&Finding::Altered { seq: 30 }));
}

mod mutated {
    //! Property tests over the parsers an auditor feeds with files from elsewhere: a
    //! package with any bytes changed is refused (never accepted, never a panic), and
    //! notes and keys of any content are parsed or refused without a panic.

    use std::io::Cursor;
    use std::sync::OnceLock;

    use confide_audit::*;
    use proptest::prelude::*;

    use super::export;
    use crate::util::{Fixture, fixture};

    fn shared() -> &'static (Fixture, String) {
        static F: OnceLock<(Fixture, String)> = OnceLock::new();
        F.get_or_init(|| {
            let f = fixture(40, 16);
            let pkg = export(&f, 8, 40);
            (f, pkg)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn any_changed_byte_is_refused(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
            let (f, pkg) = shared();
            let mut bytes = pkg.as_bytes().to_vec();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            let r = check_package(Cursor::new(&bytes), Some(&f.public));
            if bytes != pkg.as_bytes() {
                prop_assert!(r.is_err(), "a changed package was accepted");
            }
        }

        #[test]
        fn cut_or_spliced_packages_are_refused(cut in any::<prop::sample::Index>(), junk in prop::collection::vec(any::<u8>(), 0..64)) {
            let (f, pkg) = shared();
            let bytes = pkg.as_bytes();
            let at = cut.index(bytes.len());
            let mut spliced = bytes[..at].to_vec();
            spliced.extend_from_slice(&junk);
            spliced.extend_from_slice(&bytes[at..]);
            if !junk.is_empty() {
                prop_assert!(check_package(Cursor::new(&spliced), Some(&f.public)).is_err());
            }
            prop_assert!(check_package(Cursor::new(&bytes[..at]), Some(&f.public)).is_err());
        }

        #[test]
        fn notes_and_keys_of_any_content_never_panic(text in "\\PC{0,300}", raw in prop::collection::vec(any::<u8>(), 0..300)) {
            let (f, _) = shared();
            let lossy = String::from_utf8_lossy(&raw).into_owned();
            for t in [text.as_str(), lossy.as_str()] {
                let _ = SignedCheckpoint::from_note(t, &f.public);
                let _ = LogPublicKey::from_vkey(t);
                let _ = LogSigningKey::from_skey(t);
            }
        }
    }
}
