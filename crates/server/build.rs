//! Records the commit the binary is built from, for `confide --version` (an operator
//! reporting a problem names the exact build). Outside a git checkout (a source tarball,
//! a package build) it is `unknown`; `CONFIDE_COMMIT` in the build environment wins.

use std::process::Command;

fn main() {
    let commit = std::env::var("CONFIDE_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|c| !c.is_empty())
    });
    println!(
        "cargo:rustc-env=CONFIDE_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    println!("cargo:rerun-if-env-changed=CONFIDE_COMMIT");
    // A new commit moves HEAD or the branch it points at.
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--git-path", "HEAD"])
        .output()
        && out.status.success()
    {
        let head = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        println!("cargo:rerun-if-changed={head}");
        if let Ok(text) = std::fs::read_to_string(&head)
            && let Some(r) = text.strip_prefix("ref: ")
            && let Ok(out) = Command::new("git")
                .args(["rev-parse", "--git-path", r.trim()])
                .output()
        {
            println!(
                "cargo:rerun-if-changed={}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
    }
}
