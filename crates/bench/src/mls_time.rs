//! `confide-bench --mls-timings`: the native cost of the MLS operations each
//! consultation's setup goes through (the doctor creates the group, adds 1 or 7
//! members, a member processes a commit, a joiner processes a Welcome, a claimed
//! KeyPackage is verified), timed one call at a time in this binary's build, with the
//! same inputs as `mls/benches/group.rs`. Each figure is the median and the 90th
//! percentile over `--mls-iterations` runs; setup work of a run (fresh groups and
//! KeyPackages) is outside the timed call.

use std::time::{Duration, Instant};

use confide_mls::{ClaimedKeyPackage, ConsultationGroup, Device, Principal};
use serde::Serialize;

/// One operation's timing.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub operation: &'static str,
    pub iterations: usize,
    pub median_us: f64,
    pub p90_us: f64,
}

fn device(p: &str) -> anyhow::Result<Device> {
    Ok(Device::generate(Principal::new(p)?)?)
}

fn claims(doctor: &Device, members: &[Device]) -> anyhow::Result<Vec<ClaimedKeyPackage>> {
    members
        .iter()
        .map(|m| {
            let kp = m.key_packages(1)?.remove(0);
            Ok(ClaimedKeyPackage::parse(doctor, &kp)?)
        })
        .collect()
}

fn summarize(operation: &'static str, mut runs: Vec<Duration>) -> Timing {
    runs.sort();
    let q = |f: f64| {
        let i = ((runs.len() as f64 * f).ceil() as usize).clamp(1, runs.len()) - 1;
        runs[i].as_secs_f64() * 1e6
    };
    Timing {
        operation,
        iterations: runs.len(),
        median_us: q(0.5),
        p90_us: q(0.9),
    }
}

/// Times `op` on inputs from `setup`, `n` times.
fn time<S, T>(
    n: usize,
    operation: &'static str,
    mut setup: impl FnMut() -> anyhow::Result<S>,
    mut op: impl FnMut(S) -> anyhow::Result<T>,
) -> anyhow::Result<Timing> {
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n {
        let input = setup()?;
        let t0 = Instant::now();
        let out = op(input)?;
        runs.push(t0.elapsed());
        drop(std::hint::black_box(out));
    }
    Ok(summarize(operation, runs))
}

/// Runs every timing `n` times.
pub fn run(n: usize) -> anyhow::Result<Vec<Timing>> {
    let n = n.max(1);
    let doctor = device("account:1")?;
    let doctor_principal = Principal::new("account:1")?;
    let patient = device("account:2")?;
    let mut out = Vec::new();
    out.push(time(
        n,
        "group_create",
        || Ok(()),
        |()| Ok(ConsultationGroup::create(&doctor, "1")?),
    )?);
    out.push(time(
        n,
        "key_package_verify",
        || Ok(patient.key_packages(1)?.remove(0)),
        |kp| Ok(ClaimedKeyPackage::parse(&doctor, &kp)?),
    )?);
    for (k, name) in [
        (1usize, "add_1_commit_and_welcome"),
        (7, "add_7_commit_and_welcome"),
    ] {
        let members = (0..k)
            .map(|i| device(&format!("account:{}", i + 2)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        out.push(time(
            n,
            name,
            || {
                Ok((
                    ConsultationGroup::create(&doctor, "1")?,
                    claims(&doctor, &members)?,
                ))
            },
            |(mut g, kps)| {
                let c = g.add(&doctor, &kps)?;
                g.confirm_commit(&doctor)?;
                Ok(c)
            },
        )?);
    }
    out.push(time(
        n,
        "process_welcome",
        || {
            let mut g = ConsultationGroup::create(&doctor, "1")?;
            let c = g.add(&doctor, &claims(&doctor, std::slice::from_ref(&patient))?)?;
            c.welcome
                .ok_or_else(|| anyhow::anyhow!("an add commit without a Welcome"))
        },
        |w| {
            Ok(ConsultationGroup::join(
                &patient,
                "1",
                &w,
                &doctor_principal,
            )?)
        },
    )?);
    out.push(time(
        n,
        "process_commit",
        || {
            let mut g = ConsultationGroup::create(&doctor, "1")?;
            let c = g.add(&doctor, &claims(&doctor, std::slice::from_ref(&patient))?)?;
            g.confirm_commit(&doctor)?;
            let welcome = c
                .welcome
                .ok_or_else(|| anyhow::anyhow!("an add commit without a Welcome"))?;
            let pg = ConsultationGroup::join(&patient, "1", &welcome, &doctor_principal)?;
            let u = g.self_update(&doctor)?;
            Ok((pg, u.commit))
        },
        |(mut pg, commit)| Ok(pg.handle_message(&patient, &commit)?),
    )?);
    let g = ConsultationGroup::create(&doctor, "1")?;
    out.push(time(
        n,
        "export_epoch_secret",
        || Ok(()),
        |()| Ok(g.epoch_secret(&doctor)?),
    )?);
    Ok(out)
}

/// A small table of the timings.
pub fn table(t: &[Timing]) -> String {
    let mut s = String::from("| operation | runs | median (ms) | p90 (ms) |\n|---|---|---|---|\n");
    for r in t {
        s.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} |\n",
            r.operation,
            r.iterations,
            r.median_us / 1000.0,
            r.p90_us / 1000.0
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_operation_is_timed() {
        let t = super::run(2).unwrap();
        assert_eq!(t.len(), 7);
        assert!(t.iter().all(|r| r.iterations == 2 && r.median_us > 0.0));
        assert!(super::table(&t).contains("add_7_commit_and_welcome"));
    }
}
