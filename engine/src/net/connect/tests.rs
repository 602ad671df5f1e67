//! Tests of `connect`.

use super::*;

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().expect("address")).collect()
}

#[test]
fn families_alternate_starting_with_the_resolvers_first() {
    let got = interleave(&addrs(&[
        "[::1]:80",
        "[::2]:80",
        "[::3]:80",
        "127.0.0.1:80",
        "127.0.0.2:80",
    ]));
    let want = addrs(&[
        "[::1]:80",
        "127.0.0.1:80",
        "[::2]:80",
        "127.0.0.2:80",
        "[::3]:80",
    ]);
    assert_eq!(got, want);
    let got = interleave(&addrs(&[
        "127.0.0.1:80",
        "127.0.0.2:80",
        "127.0.0.3:80",
        "[::1]:80",
    ]));
    let want = addrs(&["127.0.0.1:80", "[::1]:80", "127.0.0.2:80", "127.0.0.3:80"]);
    assert_eq!(got, want);
}

#[test]
fn one_family_keeps_its_order() {
    let one = addrs(&["127.0.0.3:80", "127.0.0.1:80"]);
    assert_eq!(interleave(&one), one);
    assert!(interleave(&[]).is_empty());
}
