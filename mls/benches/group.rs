//! Native cost of the MLS operations a consultation performs: the doctor creates the
//! group, adds 1 or 7 members (commit + Welcome), a member processes a commit, a joiner
//! processes a Welcome, and the SFrame base key export per epoch.
//!
//! `cargo bench -p confide-mls`. Figures in docs/benchmarks.md ("MLS key layer").

use std::hint::black_box;

use confide_mls::{ClaimedKeyPackage, ConsultationGroup, Device, Principal};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn device(p: &str) -> Device {
    Device::generate(Principal::new(p).unwrap()).unwrap()
}

fn claims(doctor: &Device, members: &[Device]) -> Vec<ClaimedKeyPackage> {
    members
        .iter()
        .map(|m| ClaimedKeyPackage::parse(doctor, &m.key_packages(1).unwrap()[0]).unwrap())
        .collect()
}

fn bench(c: &mut Criterion) {
    let doctor = device("account:1");
    c.bench_function("group_create", |b| {
        b.iter(|| black_box(ConsultationGroup::create(&doctor, "1").unwrap()))
    });
    for n in [1usize, 7] {
        let members: Vec<Device> = (0..n)
            .map(|i| device(&format!("account:{}", i + 2)))
            .collect();
        c.bench_function(&format!("add_{n}_commit_and_welcome"), |b| {
            b.iter_batched(
                || {
                    (
                        ConsultationGroup::create(&doctor, "1").unwrap(),
                        claims(&doctor, &members),
                    )
                },
                |(mut g, kps)| {
                    let c = g.add(&doctor, &kps).unwrap();
                    g.confirm_commit(&doctor).unwrap();
                    black_box(c)
                },
                BatchSize::SmallInput,
            )
        });
    }
    let patient = device("account:2");
    c.bench_function("process_welcome", |b| {
        b.iter_batched(
            || {
                let mut g = ConsultationGroup::create(&doctor, "1").unwrap();
                let c = g
                    .add(&doctor, &claims(&doctor, std::slice::from_ref(&patient)))
                    .unwrap();
                c.welcome.unwrap()
            },
            |w| {
                black_box(
                    ConsultationGroup::join(
                        &patient,
                        "1",
                        &w,
                        &Principal::new("account:1").unwrap(),
                    )
                    .unwrap(),
                )
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("process_commit", |b| {
        b.iter_batched(
            || {
                let mut g = ConsultationGroup::create(&doctor, "1").unwrap();
                let c = g
                    .add(&doctor, &claims(&doctor, std::slice::from_ref(&patient)))
                    .unwrap();
                g.confirm_commit(&doctor).unwrap();
                let pg = ConsultationGroup::join(
                    &patient,
                    "1",
                    &c.welcome.unwrap(),
                    &Principal::new("account:1").unwrap(),
                )
                .unwrap();
                let u = g.self_update(&doctor).unwrap();
                (pg, u.commit)
            },
            |(mut pg, commit)| black_box(pg.handle_message(&patient, &commit).unwrap()),
            BatchSize::SmallInput,
        )
    });
    let mut g = ConsultationGroup::create(&doctor, "1").unwrap();
    c.bench_function("export_epoch_secret", |b| {
        b.iter(|| black_box(g.epoch_secret(&doctor).unwrap()))
    });
    let _ = &mut g;
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
