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

fn keys(k: &[&str]) -> Vec<String> {
    k.iter().map(|s| (*s).to_owned()).collect()
}

fn ok() -> Reserved {
    Reserved::Ok {
        soft_exceeded: vec![],
    }
}

#[test]
fn a_reservation_is_all_or_nothing() {
    let l = MemoryLedger::new();
    let lines = [line("a", 100, true), line("b", 50, true)];
    assert_eq!(l.reserve_now(&lines, 40), ok());
    // 40 + 20 > 50 on `b`: refused, and `a` keeps only the first reservation.
    assert_eq!(l.reserve_now(&lines, 20), Reserved::Refused(1));
    let both = keys(&["a", "b"]);
    let held = Balance {
        spent: 0,
        reserved: 40,
    };
    assert_eq!(l.balances_now(&both), [held; 2]);
    // Settling releases the reservation and records the real cost.
    l.settle(both.clone(), 40, 30);
    let settled = Balance {
        spent: 30,
        reserved: 0,
    };
    assert_eq!(l.balances_now(&both), [settled; 2]);
    // Exactly the rest fits.
    assert_eq!(l.reserve_now(&lines, 20), ok());
    assert_eq!(l.reserve_now(&lines, 1), Reserved::Refused(1));
}

#[test]
fn soft_lines_never_refuse_but_say_when_they_are_exceeded() {
    let l = MemoryLedger::new();
    let lines = [line("soft", 10, false), line("hard", 1000, true)];
    assert_eq!(l.reserve_now(&lines, 8), ok());
    assert_eq!(
        l.reserve_now(&lines, 8),
        Reserved::Ok {
            soft_exceeded: vec![0]
        }
    );
}

#[tokio::test]
async fn a_reservation_settles_or_refunds_exactly_once() {
    let memory = Arc::new(MemoryLedger::new());
    let ledger: Arc<dyn Ledger> = memory.clone();
    let a = keys(&["a"]);
    let reserve = |amount| Reservation::reserve(&ledger, vec![line("a", 100, true)], amount);
    let Admission::Admitted(r, _) = reserve(60).await.unwrap() else {
        panic!("refused")
    };
    // Dropped without a settlement (a cut stream): refunded.
    drop(r);
    assert_eq!(memory.balances_now(&a)[0], Balance::default());
    let Admission::Admitted(r, _) = reserve(60).await.unwrap() else {
        panic!("refused")
    };
    r.settle(25); // consumes: the drop after it must not refund again
    assert_eq!(
        memory.balances_now(&a)[0],
        Balance {
            spent: 25,
            reserved: 0
        }
    );
    match reserve(80).await.unwrap() {
        Admission::Refused(l) => assert_eq!(l.key, "a"),
        Admission::Admitted(..) => panic!("80 does not fit in 75"),
    }
}

#[tokio::test]
async fn budgets_sharing_a_ledger_line_reserve_and_settle_it_once() {
    // A soft and a hard budget on the same scope, period and member share one ledger line.
    let memory = Arc::new(MemoryLedger::new());
    let ledger: Arc<dyn Ledger> = memory.clone();
    let a = keys(&["a"]);
    let shared = vec![line("a", 50, false), line("a", 100, true)];
    let Admission::Admitted(r, soft) = Reservation::reserve(&ledger, shared.clone(), 60)
        .await
        .unwrap()
    else {
        panic!("refused")
    };
    assert_eq!(soft.len(), 1, "the soft budget is past its limit");
    assert_eq!(memory.balances_now(&a)[0].reserved, 60);
    r.settle(40);
    assert_eq!(
        memory.balances_now(&a)[0],
        Balance {
            spent: 40,
            reserved: 0
        }
    );
    // The hard budget still sees 40 spent, not 80: 60 more fits in its 100.
    assert!(matches!(
        Reservation::reserve(&ledger, shared, 60).await.unwrap(),
        Admission::Admitted(..)
    ));
}

#[tokio::test]
async fn precheck_refuses_only_a_hard_line_already_used_up() {
    let l = MemoryLedger::new();
    l.add_spent(&keys(&["a"]), 100).await.unwrap();
    let lines = [line("a", 100, false), line("b", 100, true)];
    assert_eq!(precheck(&l, &lines).await.unwrap(), None);
    l.add_spent(&keys(&["b"]), 100).await.unwrap();
    assert_eq!(precheck(&l, &lines).await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_never_exceed_a_hard_limit() {
    let memory = Arc::new(MemoryLedger::new());
    let ledger: Arc<dyn Ledger> = memory.clone();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let ledger = Arc::clone(&ledger);
            tokio::spawn(async move {
                let mut held = Vec::new();
                for _ in 0..100 {
                    if let Admission::Admitted(r, _) =
                        Reservation::reserve(&ledger, vec![line("a", 1000, true)], 10)
                            .await
                            .unwrap()
                    {
                        held.push(r);
                    }
                    tokio::task::yield_now().await;
                }
                let n = held.len();
                for r in held {
                    r.settle(10);
                }
                n
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    // Reservations equal to their settlements: exactly the limit's worth, never more.
    assert_eq!(admitted, 100);
    assert_eq!(memory.balances_now(&keys(&["a"]))[0].spent, 1000);
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

#[test]
fn sums_stamped_with_their_spans_start_restore_the_same_lines_as_the_requests() {
    // A Wednesday: the week (from Monday, 30 November) started before the month.
    let now = at("2026-12-02T12:00:00Z");
    let starts = restored_period_starts(now);
    let nanos = |s: &str| i64::try_from(at(s).unix_timestamp_nanos()).unwrap();
    assert_eq!(
        starts,
        [
            nanos("2026-12-02T00:00:00Z"),
            nanos("2026-12-01T00:00:00Z"),
            nanos("2026-11-30T00:00:00Z")
        ]
    );
    let owner = Owner {
        key: "k",
        team: Some("t"),
        tenant: Some("acme"),
        end_user: None,
    };
    let times = [
        "2026-12-02T09:00:00Z",
        "2026-12-02T00:00:00Z",
        "2026-12-01T23:00:00Z",
        "2026-11-30T05:00:00Z",
        "2026-11-29T23:59:59Z",
        "2020-01-01T00:00:00Z",
    ];
    let ids: Vec<String> = (0..times.len()).map(|i| format!("r{i}")).collect();
    let requests: Vec<Spend> = times
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(i, (t, id))| Spend {
            request_id: id,
            start_unix_nanos: nanos(t),
            owner: owner.clone(),
            cost: 10u128.pow(u32::try_from(i).unwrap()),
        })
        .collect();
    // What ClickHouse hands back: one sum per span, stamped with the span's start.
    let mut sums: HashMap<i64, Picodollars> = HashMap::new();
    for r in &requests {
        let since = starts
            .iter()
            .copied()
            .find(|s| r.start_unix_nanos >= *s)
            .unwrap_or(i64::MIN);
        *sums.entry(since).or_default() += r.cost;
    }
    assert_eq!(sums.len(), 4);
    let sum_ids: Vec<String> = (0..sums.len()).map(|i| i.to_string()).collect();
    let stamped = sums.iter().zip(&sum_ids).map(|((since, cost), id)| Spend {
        request_id: id,
        start_unix_nanos: *since,
        owner: owner.clone(),
        cost: *cost,
    });
    let expected = restored_lines(requests.clone(), now);
    assert_eq!(restored_lines(stamped, now), expected);
    assert_eq!(expected["key:d2026-12-02:k"], 11);
    assert_eq!(expected["key:m2026-12:k"], 111);
    assert_eq!(expected["key:w2026-11-30:k"], 1111);
    assert_eq!(expected["key:total:k"], 111_111);
}
