use super::*;

fn at(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
}

fn line(key: &str, limit: Picodollars, hard: bool) -> Line {
    Line {
        key: key.to_owned(),
        limit,
        hard,
        scope: Scope::Tenant,
        period: Period::Monthly,
        budget: key.to_owned(),
        ends: None,
    }
}

#[test]
fn periods_follow_the_utc_calendar() {
    let now = at("2026-11-26T23:59:59Z"); // a Thursday
    assert_eq!(Period::Daily.instance(now), "d2026-11-26");
    assert_eq!(Period::Weekly.instance(now), "w2026-11-23");
    assert_eq!(Period::Monthly.instance(now), "m2026-11");
    assert_eq!(Period::Total.instance(now), "total");
    assert_eq!(Period::Daily.end(now), Some(at("2026-11-27T00:00:00Z")));
    assert_eq!(Period::Weekly.end(now), Some(at("2026-11-30T00:00:00Z")));
    assert_eq!(Period::Monthly.end(now), Some(at("2026-12-01T00:00:00Z")));
    assert_eq!(
        Period::Monthly.end(at("2026-12-31T10:00:00+02:00")),
        Some(at("2027-01-01T00:00:00Z"))
    );
    assert_eq!(Period::Total.end(now), None);
    // Another offset is read as UTC.
    assert_eq!(
        Period::Daily.instance(at("2026-11-27T01:00:00+02:00")),
        "d2026-11-26"
    );
}

#[test]
fn budgets_apply_by_scope_and_member() {
    let b = |id: &str, scope, member: Option<&str>| Budget {
        id: id.to_owned(),
        scope,
        member: member.map(str::to_owned),
        period: Period::Daily,
        limit: 10,
        hard: true,
    };
    let budgets = [
        b("acme", Scope::Tenant, Some("acme")),
        b("other", Scope::Tenant, Some("other")),
        b("each-user", Scope::EndUser, None),
        b("each-team", Scope::Team, None),
    ];
    let now = at("2026-11-26T12:00:00Z");
    let owner = Owner {
        key: "k1",
        team: None,
        tenant: Some("acme"),
        end_user: Some("alice"),
    };
    let got: Vec<String> = lines(&budgets, &owner, now)
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(
        got,
        ["tenant:d2026-11-26:acme", "end_user:d2026-11-26:alice"]
    );
}

#[test]
fn a_reservation_is_all_or_nothing() {
    let l = MemoryLedger::new();
    let lines = [line("a", 100, true), line("b", 50, true)];
    assert_eq!(
        l.reserve(&lines, 40).unwrap(),
        Reserved::Ok {
            soft_exceeded: vec![]
        }
    );
    // 40 + 20 > 50 on `b`: refused, and `a` keeps only the first reservation.
    assert_eq!(l.reserve(&lines, 20).unwrap(), Reserved::Refused(1));
    let keys = ["a".to_owned(), "b".to_owned()];
    assert_eq!(
        l.balances(&keys).unwrap(),
        [Balance {
            spent: 0,
            reserved: 40
        }; 2]
    );
    // Settling releases the reservation and records the real cost.
    l.settle(&keys, 40, 30).unwrap();
    assert_eq!(
        l.balances(&keys).unwrap(),
        [Balance {
            spent: 30,
            reserved: 0
        }; 2]
    );
    // Exactly the rest fits.
    assert!(matches!(
        l.reserve(&lines, 20).unwrap(),
        Reserved::Ok { .. }
    ));
    assert_eq!(l.reserve(&lines, 1).unwrap(), Reserved::Refused(1));
}

#[test]
fn soft_lines_never_refuse_but_say_when_they_are_exceeded() {
    let l = MemoryLedger::new();
    let lines = [line("soft", 10, false), line("hard", 1000, true)];
    assert_eq!(
        l.reserve(&lines, 8).unwrap(),
        Reserved::Ok {
            soft_exceeded: vec![]
        }
    );
    assert_eq!(
        l.reserve(&lines, 8).unwrap(),
        Reserved::Ok {
            soft_exceeded: vec![0]
        }
    );
}

#[test]
fn a_reservation_settles_or_refunds_exactly_once() {
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let keys = ["a".to_owned()];
    let Admission::Admitted(r, _) =
        Reservation::reserve(&ledger, vec![line("a", 100, true)], 60).unwrap()
    else {
        panic!("refused")
    };
    // Dropped without a settlement (a cut stream): refunded.
    drop(r);
    assert_eq!(ledger.balances(&keys).unwrap()[0], Balance::default());
    let Admission::Admitted(r, _) =
        Reservation::reserve(&ledger, vec![line("a", 100, true)], 60).unwrap()
    else {
        panic!("refused")
    };
    r.settle(25); // consumes: the drop after it must not refund again
    assert_eq!(
        ledger.balances(&keys).unwrap()[0],
        Balance {
            spent: 25,
            reserved: 0
        }
    );
    match Reservation::reserve(&ledger, vec![line("a", 100, true)], 80).unwrap() {
        Admission::Refused(l) => assert_eq!(l.key, "a"),
        Admission::Admitted(..) => panic!("80 does not fit in 75"),
    }
}

#[test]
fn precheck_refuses_only_a_hard_line_already_used_up() {
    let l = MemoryLedger::new();
    l.add_spent("a", 100).unwrap();
    let lines = [line("a", 100, false), line("b", 100, true)];
    assert_eq!(precheck(&l, &lines).unwrap(), None);
    l.add_spent("b", 100).unwrap();
    assert_eq!(precheck(&l, &lines).unwrap(), Some(1));
}

#[test]
fn concurrent_reservations_never_exceed_a_hard_limit() {
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let admitted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ledger = Arc::clone(&ledger);
                s.spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..100 {
                        if let Admission::Admitted(r, _) =
                            Reservation::reserve(&ledger, vec![line("a", 1000, true)], 10).unwrap()
                        {
                            held.push(r);
                        }
                    }
                    let n = held.len();
                    for r in held {
                        r.settle(10);
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    // Reservations equal to their settlements: exactly the limit's worth, never more.
    assert_eq!(admitted, 100);
    let spent = ledger.balances(&["a".to_owned()]).unwrap()[0].spent;
    assert_eq!(spent, 1000);
}

#[test]
fn restored_spend_counts_each_request_once_in_the_current_periods_only() {
    let now = at("2026-11-26T12:00:00Z");
    let nanos = |s: &str| i64::try_from(at(s).unix_timestamp_nanos()).unwrap();
    let spend = |id, when: &str, end_user, cost| Spend {
        request_id: id,
        start_unix_nanos: nanos(when),
        owner: Owner {
            key: "k",
            team: Some(""),
            tenant: Some("acme"),
            end_user,
        },
        cost,
    };
    let lines = restored_lines(
        [
            spend("a", "2026-11-26T01:00:00Z", Some("alice"), 10),
            spend("a", "2026-11-26T01:00:00Z", Some("alice"), 10), // a duplicate
            spend("b", "2026-11-24T01:00:00Z", None, 100),         // this week, not today
            spend("c", "2026-10-31T23:59:59Z", None, 1000),        // last month
            spend("d", "2026-11-26T02:00:00Z", None, 0),           // nothing to count
        ],
        now,
    );
    let get = |k: &str| lines.get(k).copied().unwrap_or(0);
    assert_eq!(get("key:d2026-11-26:k"), 10);
    assert_eq!(get("key:w2026-11-23:k"), 110);
    assert_eq!(get("tenant:m2026-11:acme"), 110);
    assert_eq!(get("tenant:total:acme"), 1110);
    assert_eq!(get("end_user:total:alice"), 10);
    assert!(!lines.keys().any(|k| k.starts_with("team:")), "{lines:?}");
    assert_eq!(lines.len(), 4 + 4 + 4);
}
