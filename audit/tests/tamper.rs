//! `verify_log` against logs edited after the fact, the way someone with write access
//! to the database would: one field, one stored hash, a deleted row, swapped rows, a
//! cut-off tail, a forged checkpoint.

use confide_audit::*;

use crate::util::{ORIGIN, fixture, with_event};

#[test]
fn intact_log_verifies() {
    let f = fixture(1000, 64);
    let r = f.verify(&f.rows).unwrap();
    assert_eq!(r.size, 1000);
    assert_eq!(r.root, f.tree.root());
    assert_eq!(r.signed_size, 1000);
    assert_eq!(r.unsigned_tail, 0);
    assert_eq!(r.checkpoints_checked, f.checkpoints.len());
    assert_eq!(f.checkpoints.len(), 1000 / 64 + 1);
}

#[test]
fn edited_field_names_the_entry() {
    let f = fixture(300, 50);
    let mut rows = f.rows.clone();
    rows[137].entry = with_event(&rows[137].entry, |e| e.outcome = Outcome::Success);
    rows[137].entry = with_event(&rows[137].entry, |e| e.actor = "account:999".into());
    let err = f.verify(&rows).unwrap_err();
    assert_eq!(err.finding(), Some(&Finding::Altered { seq: 137 }));
    assert!(err.to_string().contains("entry 137"), "{err}");
}

#[test]
fn edited_field_and_rewritten_hash_names_the_checkpoint_range() {
    let f = fixture(300, 50);
    let mut rows = f.rows.clone();
    rows[137].entry = with_event(&rows[137].entry, |e| e.source = None);
    rows[137].leaf_hash = Some(rows[137].entry.leaf_hash());
    let err = f.verify(&rows).unwrap_err();
    assert_eq!(
        err.finding(),
        Some(&Finding::RangeAltered { from: 100, to: 150 })
    );
}

#[test]
fn edited_row_without_stored_hashes_names_the_checkpoint_range() {
    let f = fixture(300, 50);
    let mut rows: Vec<StoredEntry> = f
        .rows
        .iter()
        .map(|r| StoredEntry {
            entry: r.entry.clone(),
            leaf_hash: None,
        })
        .collect();
    rows[299].entry = with_event(&rows[299].entry, |e| e.detail = Some("x".into()));
    assert_eq!(
        f.verify(&rows).unwrap_err().finding(),
        Some(&Finding::RangeAltered { from: 250, to: 300 })
    );
}

#[test]
fn deleted_row_names_the_entry() {
    let f = fixture(300, 50);
    let mut rows = f.rows.clone();
    rows.remove(42);
    assert_eq!(
        f.verify(&rows).unwrap_err().finding(),
        Some(&Finding::Missing { seq: 42 })
    );
}

#[test]
fn deleted_row_with_renumbering_names_the_entry() {
    // Deleting row 42 and shifting later sequence numbers down to hide the gap.
    let f = fixture(300, 50);
    let mut rows = f.rows.clone();
    rows.remove(42);
    for r in rows.iter_mut().skip(42) {
        let e = &r.entry;
        r.entry = AuditEntry::new(e.seq() - 1, e.time(), e.event());
    }
    assert_eq!(
        f.verify(&rows).unwrap_err().finding(),
        Some(&Finding::Altered { seq: 42 })
    );
}

#[test]
fn swapped_rows_name_the_first() {
    // Reordering: two rows exchange their sequence numbers (and stored hashes).
    let f = fixture(300, 50);
    let mut rows = f.rows.clone();
    let (a, b) = (rows[10].clone(), rows[20].clone());
    rows[10] = StoredEntry {
        entry: AuditEntry::new(10, b.entry.time(), b.entry.event()),
        leaf_hash: b.leaf_hash,
    };
    rows[20] = StoredEntry {
        entry: AuditEntry::new(20, a.entry.time(), a.entry.event()),
        leaf_hash: a.leaf_hash,
    };
    assert_eq!(
        f.verify(&rows).unwrap_err().finding(),
        Some(&Finding::Altered { seq: 10 })
    );
}

#[test]
fn rows_out_of_order_are_reported() {
    let f = fixture(100, 50);
    let mut rows = f.rows.clone();
    rows.swap(10, 11);
    assert_eq!(
        f.verify(&rows).unwrap_err().finding(),
        Some(&Finding::Missing { seq: 10 })
    );
    let mut rows = f.rows.clone();
    rows.insert(5, rows[4].clone());
    assert_eq!(
        f.verify(&rows).unwrap_err().finding(),
        Some(&Finding::OutOfOrder {
            expected: 5,
            found: 4
        })
    );
}

#[test]
fn truncated_tail_is_reported() {
    let f = fixture(300, 50);
    let rows = &f.rows[..280];
    assert_eq!(
        f.verify(rows).unwrap_err().finding(),
        Some(&Finding::Truncated {
            seq: 280,
            checkpoint_size: 300
        })
    );
}

#[test]
fn forged_or_foreign_checkpoints_are_refused() {
    let f = fixture(100, 50);
    let mut cps = f.checkpoints.clone();
    cps[0].checkpoint.root = leaf_hash(b"forged");
    let err = verify_log(
        f.rows.iter().cloned().map(Ok),
        &cps,
        &f.public,
        ORIGIN,
        None,
    )
    .unwrap_err();
    assert_eq!(
        err.finding(),
        Some(&Finding::BadCheckpointSignature { size: 50 })
    );
    // A checkpoint properly signed by another key does not count.
    let other = LogSigningKey::from_seed(&[1; 32]);
    let mut cps = f.checkpoints.clone();
    cps.push(other.sign(f.checkpoints[0].checkpoint.clone()));
    assert!(
        verify_log(
            f.rows.iter().cloned().map(Ok),
            &cps,
            &f.public,
            ORIGIN,
            None
        )
        .is_err()
    );
    // A checkpoint for another log name is refused even under the right key.
    assert!(
        verify_log(
            f.rows.iter().cloned().map(Ok),
            &f.checkpoints,
            &f.public,
            "other.example/audit",
            None
        )
        .is_err()
    );
}

#[test]
fn unsigned_tail_is_reported_not_failed() {
    let f = fixture(100, 40);
    // Drop the final checkpoint: entries 80..100 are not yet covered by a signature.
    let cps: Vec<_> = f
        .checkpoints
        .iter()
        .filter(|c| c.checkpoint.size <= 80)
        .cloned()
        .collect();
    let r = verify_log(
        f.rows.iter().cloned().map(Ok),
        &cps,
        &f.public,
        ORIGIN,
        None,
    )
    .unwrap();
    assert_eq!((r.signed_size, r.unsigned_tail), (80, 20));
}

#[test]
fn archived_prefix_verifies_from_the_kept_frontier() {
    // Retention: entries below a checkpoint size are archived; the operator keeps the
    // frontier at that size, and verification starts there.
    let f = fixture(300, 50);
    let mut cr = CompactRange::new();
    for r in &f.rows[..150] {
        cr.push(r.leaf_hash.unwrap());
    }
    let rest = &f.rows[150..];
    let r = verify_log(
        rest.iter().cloned().map(Ok),
        &f.checkpoints,
        &f.public,
        ORIGIN,
        Some(&cr),
    )
    .unwrap();
    assert_eq!((r.entries, r.size, r.signed_size), (150, 300, 300));
    // The frontier is itself checked against the signed checkpoint.
    let mut wrong = CompactRange::new();
    for r in &f.rows[1..151] {
        wrong.push(r.leaf_hash.unwrap());
    }
    assert!(
        verify_log(
            rest.iter().cloned().map(Ok),
            &f.checkpoints,
            &f.public,
            ORIGIN,
            Some(&wrong)
        )
        .is_err()
    );
    // An archive point must be a checkpoint size.
    let mut odd = CompactRange::new();
    for r in &f.rows[..149] {
        odd.push(r.leaf_hash.unwrap());
    }
    assert!(
        verify_log(
            f.rows[149..].iter().cloned().map(Ok),
            &f.checkpoints,
            &f.public,
            ORIGIN,
            Some(&odd)
        )
        .is_err()
    );
}
