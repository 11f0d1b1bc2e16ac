//! `hookline license` as the operator runs it: keygen, then issue with the private key from
//! the environment, then verify with the public key alone — each a process of its own, offline.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const HOOKLINE: &str = env!("CARGO_BIN_EXE_hookline");

/// `hookline license ARGS` with no licence settings from the developer's own environment.
fn license(args: &[&str]) -> Command {
    let mut cmd = Command::new(HOOKLINE);
    cmd.arg("license").args(args);
    for name in [
        "LICENSE_PRIVATE_KEY",
        "LICENSE_PUBLIC_KEY",
        "LICENSE_ISSUER",
        "HOOKLINE_TIERS",
        "HOOKLINE_TIERS_FILE",
    ] {
        cmd.env_remove(name);
    }
    cmd
}

fn run(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hookline");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh key pair from `hookline license keygen`: (private, public).
fn keygen() -> (String, String) {
    let out = run(license(&["keygen"]), "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let value = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("keygen printed no {name}= line: {stdout}"))
            .to_owned()
    };
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    (value("LICENSE_PRIVATE_KEY"), value("LICENSE_PUBLIC_KEY"))
}

fn issue(private_key: &str, args: &[&str]) -> String {
    let mut cmd = license(&["issue"]);
    cmd.args(args).env("LICENSE_PRIVATE_KEY", private_key);
    let out = run(cmd, "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    token
}

#[test]
fn keygen_issue_and_verify_work_offline_end_to_end() {
    let (private, public) = keygen();
    let token = issue(
        &private,
        &[
            "--org",
            "org-globex",
            "--tier",
            "enterprise",
            "--seats",
            "75",
            "--days",
            "90",
        ],
    );
    // The token from stdin, as `hookline license issue … | hookline license verify` does.
    let out = run(license(&["verify", "--public-key", &public]), &token);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["sub"], "org-globex");
    assert_eq!(claims["tier"], "enterprise");
    assert_eq!(claims["seats"], 75);
    assert_eq!(claims["iss"], "hookline");
    assert_eq!(claims["limits"]["endpoints"], serde_json::Value::Null);
    let days = (claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap()) / 86_400;
    assert_eq!(days, 90);
    // And as an argument.
    let out = run(license(&["verify", "--public-key", &public, &token]), "");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn verify_exits_1_with_the_reason_for_another_key_or_a_malformed_token() {
    let (private, _) = keygen();
    let (_, other_public) = keygen();
    let token = issue(&private, &["--org", "org-globex", "--tier", "team"]);
    let out = run(
        license(&["verify", "--public-key", &other_public, &token]),
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("signature does not verify"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no claims are printed for a refused licence"
    );

    let out = run(
        license(&["verify", "--public-key", &other_public, "nonsense"]),
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not a well-formed JWT"));
}

#[test]
fn issue_refuses_a_past_expiry_and_a_missing_key() {
    let (private, _) = keygen();
    let mut cmd = license(&[
        "issue",
        "--org",
        "o",
        "--expires-at",
        "2020-01-01T00:00:00Z",
    ]);
    cmd.env("LICENSE_PRIVATE_KEY", &private);
    let out = run(cmd, "");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("expires_at must be in the future"));

    let out = run(license(&["issue", "--org", "o"]), "");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("LICENSE_PRIVATE_KEY"),
        "{}",
        text(&out.stderr)
    );
}
