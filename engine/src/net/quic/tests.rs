use super::*;

fn facts() -> Facts<'static> {
    Facts {
        asked: true,
        safe_mode: false,
        https_port: Some(443),
        direct: true,
        failed_in_job: false,
        remembered: None,
        now: 10_000,
    }
}

#[test]
fn quic_only_where_asked_for_https_and_direct() {
    assert_eq!(choose(facts()), Choice::Quic { port: 443 });
    let not_asked = Facts {
        asked: false,
        ..facts()
    };
    assert_eq!(choose(not_asked), Choice::Tcp);
    let http = Facts {
        https_port: None,
        ..facts()
    };
    assert_eq!(choose(http), Choice::Tcp);
    let proxied = Facts {
        direct: false,
        ..facts()
    };
    assert_eq!(choose(proxied), Choice::TcpBecause(NoH3::Proxied));
    let safe = Facts {
        safe_mode: true,
        ..facts()
    };
    assert_eq!(choose(safe), Choice::TcpBecause(NoH3::SafeMode));
}

#[test]
fn a_failure_in_this_job_is_said_once() {
    let failed = Facts {
        failed_in_job: true,
        ..facts()
    };
    assert_eq!(choose(failed), Choice::Tcp);
    // Even in safe mode or through a proxy: the reason was recorded already.
    assert_eq!(
        choose(Facts {
            safe_mode: true,
            ..failed
        }),
        Choice::Tcp
    );
}

#[test]
fn the_memory_sends_quic_elsewhere_or_not_at_all() {
    let advertised = Entry::H3 {
        port: 8443,
        until: 20_000,
    };
    let f = Facts {
        remembered: Some(&advertised),
        ..facts()
    };
    assert_eq!(choose(f), Choice::Quic { port: 8443 });
    let failed = Entry::Failed {
        port: 443,
        why: "no answer".into(),
        at: 9_400,
        until: 10_000 + 600,
    };
    let f = Facts {
        remembered: Some(&failed),
        ..facts()
    };
    assert_eq!(
        choose(f),
        Choice::TcpBecause(NoH3::Remembered {
            why: "no answer".into(),
            ago: Duration::from_secs(600),
        })
    );
    // A proxy still wins: the memory is about the direct path.
    let f = Facts {
        remembered: Some(&advertised),
        direct: false,
        ..facts()
    };
    assert_eq!(choose(f), Choice::TcpBecause(NoH3::Proxied));
}

#[test]
fn reasons_read_as_sentences() {
    let deadline = NoH3::NoAnswer(Duration::from_secs(2)).to_string();
    assert!(
        deadline.contains("no answer to the QUIC handshake within 2.0 s"),
        "{deadline}"
    );
    let remembered = NoH3::Remembered {
        why: "x".into(),
        ago: Duration::from_secs(90),
    }
    .to_string();
    assert!(
        remembered.contains("an earlier run failed 90 s ago (x)"),
        "{remembered}"
    );
}
