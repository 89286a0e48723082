//! Budget cost on the hot path: ext_authz's precheck, the reservation estimate (a ~1 KB chat
//! body counted with `o200k_base`), and a reservation with its settlement on the in-memory
//! ledger (four lines: key, team, tenant, end user).

// Benchmark support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use futures::executor::block_on;
use time::OffsetDateTime;
use tollgate_core::budget::{
    self, Admission, Budget, Ledger, MemoryLedger, Owner, Period, Reservation, Scope,
};
use tollgate_core::config::ProviderKind;
use tollgate_extproc::budget::{prompt_tokens, Counter};
use tollgate_extproc::translator::json::RawObject;

fn budgets() -> Vec<Budget> {
    [Scope::Key, Scope::Team, Scope::Tenant, Scope::EndUser]
        .into_iter()
        .map(|scope| Budget {
            id: scope.label().to_owned(),
            scope,
            member: None,
            period: Period::Monthly,
            limit: u128::MAX,
            hard: true,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let owner = Owner {
        key: "search-prod",
        team: Some("search"),
        tenant: Some("acme"),
        end_user: Some("user-42"),
    };
    let budgets = budgets();
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let now = OffsetDateTime::now_utc();

    c.bench_function("precheck (4 lines, in-memory)", |b| {
        b.iter(|| {
            let lines = budget::lines(&budgets, &owner, now);
            block_on(budget::precheck(ledger.as_ref(), black_box(&lines))).unwrap()
        })
    });

    let text =
        "Summarise the quarterly report for the board, highlighting revenue, churn and hiring. "
            .repeat(12);
    let body = serde_json::json!({"model": "gpt-4o", "max_tokens": 256, "messages": [
        {"role": "system", "content": "You are a concise analyst."},
        {"role": "user", "content": text}]})
    .to_string();
    let counter = Counter::for_target(ProviderKind::Openai, "gpt-4o");
    let _ = counter.count("warm");
    c.bench_function("estimate (1 KB chat body, o200k)", |b| {
        b.iter(|| {
            let obj = RawObject::parse(black_box(body.as_bytes())).unwrap();
            prompt_tokens(&obj, counter)
        })
    });

    c.bench_function("reserve + settle (4 lines, in-memory)", |b| {
        b.iter(|| {
            let lines = budget::lines(&budgets, &owner, now);
            match block_on(Reservation::reserve(&ledger, lines, black_box(47_000_000))).unwrap() {
                Admission::Admitted(r, _) => r.settle(35_000_000),
                Admission::Refused(_) => unreachable!(),
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
