//! `GET /v1/budget` and `GET /v1/usage`, answered by Tollgate itself for the calling key from
//! the spend ledger: the budgets that apply to the key (and to the end user its request
//! names), and the key's own spend per period.

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tollgate_core::budget::{self, Balance, Ledger, LedgerError, Owner, Period, Scope};
use tollgate_core::config::Budgets;
use tollgate_core::pricing::format_usd;

/// The periods a key's spend is kept for, budgets or not.
pub const USAGE_PERIODS: [Period; 4] = [
    Period::Daily,
    Period::Weekly,
    Period::Monthly,
    Period::Total,
];

/// The ledger lines of a key's own spend at `now`, one per [`USAGE_PERIODS`] entry.
pub fn usage_lines(key_id: &str, now: OffsetDateTime) -> Vec<String> {
    USAGE_PERIODS
        .iter()
        .map(|p| budget::line_key(Scope::Key, *p, key_id, now))
        .collect()
}

fn time(t: Option<OffsetDateTime>) -> Value {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

/// `GET /v1/budget`: every budget that applies to `owner` (the config's, and `extra`: those
/// that came with the key from the control plane), with what is spent, reserved and left in
/// its current period.
pub async fn budget_report(
    budgets: &Budgets,
    extra: &[budget::Budget],
    ledger: &dyn Ledger,
    owner: &Owner<'_>,
    now: OffsetDateTime,
) -> Result<Value, LedgerError> {
    let lines = budget::lines_with(&budgets.limits, extra, owner, now);
    let keys: Vec<String> = lines.iter().map(|l| l.key.clone()).collect();
    let balances = ledger.balances(&keys).await?;
    let data: Vec<Value> = lines
        .iter()
        .zip(balances)
        .map(|(l, b)| {
            json!({
                "id": l.budget,
                "scope": l.scope.label(),
                "period": l.period.label(),
                "mode": if l.hard { "hard" } else { "soft" },
                "limit_usd": format_usd(l.limit),
                "spent_usd": format_usd(b.spent),
                "reserved_usd": format_usd(b.reserved),
                "remaining_usd": format_usd(l.limit.saturating_sub(b.committed())),
                "period_start": time(l.period.start(now)),
                "resets_at": time(l.ends),
            })
        })
        .collect();
    Ok(json!({"object": "budget", "key_id": owner.key, "data": data}))
}

/// `GET /v1/usage`: the key's spend in the current day, ISO week, month and in total.
pub async fn usage_report(
    ledger: &dyn Ledger,
    key_id: &str,
    now: OffsetDateTime,
) -> Result<Value, LedgerError> {
    let keys = usage_lines(key_id, now);
    let balances = ledger.balances(&keys).await?;
    let data: Vec<Value> = USAGE_PERIODS
        .iter()
        .zip(balances)
        .map(|(p, b): (&Period, Balance)| {
            json!({
                "period": p.label(),
                "period_start": time(p.start(now)),
                "spent_usd": format_usd(b.spent),
                "reserved_usd": format_usd(b.reserved),
            })
        })
        .collect();
    Ok(json!({"object": "usage", "key_id": key_id, "data": data}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::budget::{Budget, MemoryLedger};

    #[tokio::test]
    async fn reports_read_the_ledger_for_the_calling_key_only() {
        let now = OffsetDateTime::parse("2026-11-26T12:00:00Z", &Rfc3339).unwrap();
        let budgets = Budgets {
            limits: vec![
                Budget {
                    id: "k-daily".into(),
                    scope: Scope::Key,
                    member: Some("k1".into()),
                    period: Period::Daily,
                    limit: 1_000_000_000_000,
                    hard: true,
                },
                Budget {
                    id: "other-key".into(),
                    scope: Scope::Key,
                    member: Some("k2".into()),
                    period: Period::Daily,
                    limit: 1,
                    hard: true,
                },
            ],
            default_max_tokens: 16,
            end_user_header: "x-tollgate-end-user".into(),
            restore: None,
            redis: None,
            fail_open: false,
            max_output_tokens_per_request: None,
            max_cost_per_request: None,
        };
        let ledger = MemoryLedger::new();
        ledger.settle(vec!["key:d2026-11-26:k1".into()], 0, 250_000_000_000);
        ledger.settle(vec!["key:total:k1".into()], 0, 7);
        let owner = Owner {
            key: "k1",
            ..Default::default()
        };
        let v = budget_report(&budgets, &[], &ledger, &owner, now)
            .await
            .unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
        let b = &v["data"][0];
        assert_eq!(b["id"], "k-daily");
        assert_eq!(b["spent_usd"], "0.250000000000");
        assert_eq!(b["remaining_usd"], "0.750000000000");
        assert_eq!(b["resets_at"], "2026-11-27T00:00:00Z");
        let v = usage_report(&ledger, "k1", now).await.unwrap();
        let spent: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["spent_usd"].as_str().unwrap())
            .collect();
        assert_eq!(
            spent,
            [
                "0.250000000000",
                "0.000000000000",
                "0.000000000000",
                "0.000000000007"
            ]
        );
        assert_eq!(v["data"][2]["period_start"], "2026-11-01T00:00:00Z");
    }
}
