//! The deployment's offline checks, as part of `cargo test`: Terraform
//! formatting and provider schema, checkov, trivy and hadolint, and the
//! Python tests over the parsed Terraform (IAM allow-list, Pub/Sub limits,
//! validations, schedule). `scripts/checks/run` installs its pinned tools on
//! first use (about two minutes) and runs them all; see scripts/checks/README.md.

use std::process::Command;

#[test]
fn terraform_and_dockerfile_checks_pass() {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/checks/run"))
        .arg("--keep-going")
        .output()
        .expect("bash runs scripts/checks/run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/checks/run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("checks: all") && summary.contains("pytest"),
        "unexpected summary: {summary}"
    );
    println!("{summary}");
}
