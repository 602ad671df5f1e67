//! `--limit-rate`: one cap for all the connections of a download, on every back-end and sink.
//! Only a lower bound on the time is checked (a download that keeps to the cap cannot be
//! faster than the bucket allows; a slow machine only makes it slower), and the bytes.

use ferry_testkit::{assert_same_file, get_ok_sink, modes_under_test, serve_one_file};

#[test]
fn four_connections_share_one_cap() {
    const SIZE: u64 = 3 << 20;
    const RATE: u64 = 1 << 20;
    let (_src, file, nginx) = serve_one_file(SIZE, 91);
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let args = ["--limit-rate", "1M", "-c", "4", "--chunk-size", "256K"];
        let report = get_ok_sink(mode, &nginx.url("files", "f"), &dest, &args);
        assert_same_file(&file, &dest, &format!("{mode:?}"));
        assert!(
            report["connections"].as_u64() >= Some(2),
            "{mode:?}: {report}"
        );
        // What the bucket lets through at once: its burst (a tenth of a second, at least
        // 16 KiB) and one read of at most a twentieth of a second per connection.
        let head_start = RATE / 10 + 4 * (RATE / 20);
        let least = (SIZE - head_start) as f64 / RATE as f64;
        let seconds = report["seconds"].as_f64().expect("seconds");
        assert!(
            seconds >= least,
            "{mode:?}: {SIZE} bytes at {RATE} B/s took {seconds} s, less than {least} s"
        );
        eprintln!("ran on {mode:?}: 3 MiB at 1 MiB/s over 4 connections in {seconds:.2} s");
    }
}
