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

#[test]
fn once_one_answered_connections_take_the_family_in_turn_without_the_failed() {
    let list = addrs(&["127.0.0.1:80", "[::1]:80", "127.0.0.2:80", "127.0.0.3:80"]);
    let w = Winners::default();
    // Nothing known: the race's order.
    assert_eq!(w.order(&list), interleave(&list));
    // 127.0.0.2 won while [::1] failed: IPv4 only from now on, in turn, the winner second.
    w.record(&list, list[2], &[list[1]]);
    let firsts: Vec<SocketAddr> = (0..6).map(|_| w.order(&list)[0]).collect();
    let want = addrs(&[
        "127.0.0.1:80",
        "127.0.0.2:80",
        "127.0.0.3:80",
        "127.0.0.1:80",
        "127.0.0.2:80",
        "127.0.0.3:80",
    ]);
    assert_eq!(firsts, want);
    let order = w.order(&list);
    assert_eq!(order[1], list[2], "the winner right behind: {order:?}");
    assert_eq!(
        order.len(),
        list.len(),
        "every address still tried: {order:?}"
    );
    // 127.0.0.3 failed while 127.0.0.1 answered: left out of the turns.
    w.record(&list, list[0], &[list[3]]);
    let firsts: Vec<SocketAddr> = (0..4).map(|_| w.order(&list)[0]).collect();
    assert!(!firsts.contains(&list[3]), "{firsts:?}");
    assert!(
        firsts.contains(&list[0]) && firsts.contains(&list[2]),
        "{firsts:?}"
    );
    // Only addresses that answered may take Fast Open.
    assert!(w.answered(&list, list[0]) && w.answered(&list, list[2]));
    assert!(!w.answered(&list, list[1]) && !w.answered(&list, list[3]));
    w.forget(list[0]);
    assert_eq!(w.order(&list), interleave(&list), "forgotten: a race again");
}
