//! The fallback, proven: under a seccomp filter that makes the io_uring syscalls fail with EPERM
//! (as Docker's default profile does), `ferry probe` picks portable and says why, `ferry get`
//! still downloads a byte-identical file on the portable back-end, and an explicit
//! `--backend uring` fails with an error that names the cause.

use std::process::{Command, Output};

use ferry_testkit::{
    Nginx, assert_no_output, assert_same_file, ferry_bin, seccomp_run_bin, write_data,
};

fn sandboxed(args: &[&str]) -> Output {
    Command::new(seccomp_run_bin())
        .arg(ferry_bin())
        .args(args)
        .env_remove("FERRY_SAFE_MODE")
        .output()
        .expect("run seccomp-run")
}

#[test]
fn probe_under_seccomp_picks_portable_and_says_why() {
    let dir = tempfile::tempdir().expect("tmp");
    let o = sandboxed(&[
        "probe",
        "--json",
        "--dir",
        dir.path().to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        v["probe"]["io_uring"]["setup"]["status"], "unavailable",
        "{v}"
    );
    assert_eq!(v["probe"]["io_uring"]["setup"]["errno"], libc::EPERM);
    assert_eq!(v["selection"]["backend"], "portable");
    assert_eq!(v["selection"]["fell_back"], true);
    let reason = v["selection"]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("EPERM") && reason.contains("seccomp"),
        "{reason}"
    );

    // And the same probe outside the sandbox picks io_uring on this machine, when it has one.
    let o = Command::new(ferry_bin())
        .args(["probe", "--json"])
        .env_remove("FERRY_SAFE_MODE")
        .output()
        .expect("probe");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    if ferry_testkit::kernel_probes_available() {
        assert_eq!(v["selection"]["backend"], "uring", "{v}");
    }
}

#[test]
fn get_under_seccomp_falls_back_and_downloads_identically() {
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 6 * (1 << 20) + 3, 11);
    let nginx = Nginx::start(src.path());
    let out = tempfile::tempdir().expect("tmp");
    let dest = out.path().join("f");
    let url = nginx.url("files", "f");
    let o = sandboxed(&[
        "get",
        &url,
        "-o",
        dest.to_str().expect("utf8"),
        "--json",
        "--chunk-size",
        "1M",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(r["backend"], "portable", "{r}");
    assert!(
        r["backend_reason"]
            .as_str()
            .is_some_and(|s| s.contains("EPERM")),
        "{r}"
    );
    // The reason is logged once, as a warning.
    assert_eq!(
        stderr.matches("io_uring unavailable").count(),
        1,
        "logged once: {stderr}"
    );
    assert_same_file(
        &src.path().join("f"),
        &dest,
        "backend=Portable (seccomp fallback)",
    );

    // An explicit io_uring request fails loudly, naming the cause, and writes nothing.
    let dest2 = out.path().join("g");
    let o = sandboxed(&[
        "--backend",
        "uring",
        "get",
        &url,
        "-o",
        dest2.to_str().expect("utf8"),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("io_uring") && stderr.contains("EPERM"),
        "{stderr}"
    );
    assert_no_output(&dest2, "explicit uring under seccomp");
}
