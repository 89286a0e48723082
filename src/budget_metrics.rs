//! `tollgate_budget_used_ratio` and `tollgate_budget_spent_usd`: a [`Ledger`] wrapper that
//! remembers the budget lines requests reserve on, and a refresh (run on each `/metrics`
//! scrape) that reads their balances back from the ledger, in memory or in Redis.
//!
//! Only lines that have seen a reservation since start-up are exported, at most
//! [`MAX_LINES`], and never those of the `end_user` scope (end-user names are the client's data
//! and unbounded in number). A line leaves the metrics when its period ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;
use tollgate_core::budget::{Balance, Ledger, LedgerFuture, Line, Reserved, Scope};
use tollgate_core::metrics::{BudgetLabels, Metrics};
use tollgate_core::pricing::Picodollars;

/// The most budget lines exported.
pub const MAX_LINES: usize = 1000;

/// Picodollars in one US dollar.
const PICODOLLARS_PER_USD: f64 = 1e12;

#[derive(Debug, Clone)]
struct Tracked {
    /// The ledger line (several budgets may share one: a soft and a hard one).
    line: String,
    labels: BudgetLabels,
    limit: Picodollars,
    ends: Option<OffsetDateTime>,
}

/// A ledger that remembers the lines it is asked to reserve on, for the budget gauges.
pub struct ObservedLedger {
    inner: Arc<dyn Ledger>,
    /// By budget id and ledger line.
    lines: Mutex<HashMap<(String, String), Tracked>>,
    metrics: Metrics,
}

impl std::fmt::Debug for ObservedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedLedger")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl ObservedLedger {
    /// Wraps `inner`; the gauges go to `metrics`.
    pub fn new(inner: Arc<dyn Ledger>, metrics: Metrics) -> Self {
        Self {
            inner,
            lines: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<(String, String), Tracked>> {
        match self.lines.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn remember(&self, lines: &[Line]) {
        let mut map = self.map();
        for line in lines {
            let id = (line.budget.clone(), line.key.clone());
            if line.scope == Scope::EndUser || map.contains_key(&id) {
                continue;
            }
            if map.len() >= MAX_LINES {
                tracing::debug!(
                    max = MAX_LINES,
                    "Budget metrics: too many lines, this one is not exported"
                );
                continue;
            }
            // `scope:period:member`, the member last (it may hold `:` itself).
            let member = line.key.splitn(3, ':').nth(2).unwrap_or_default();
            map.insert(
                id,
                Tracked {
                    line: line.key.clone(),
                    labels: BudgetLabels {
                        budget: line.budget.clone(),
                        scope: line.scope.label(),
                        member: member.to_owned(),
                    },
                    limit: line.limit,
                    ends: line.ends,
                },
            );
        }
    }

    /// Drops lines whose period has ended, then sets each remaining line's gauges from the
    /// ledger's balances. A ledger that cannot answer leaves the gauges as they were.
    pub async fn refresh(&self) {
        let now = OffsetDateTime::now_utc();
        let lines: Vec<Tracked> = {
            let mut map = self.map();
            map.retain(|_, t| {
                let live = t.ends.is_none_or(|end| end > now);
                if !live {
                    self.metrics.budget_used.remove(&t.labels);
                    self.metrics.budget_spent.remove(&t.labels);
                }
                live
            });
            map.values().cloned().collect()
        };
        if lines.is_empty() {
            return;
        }
        let keys: Vec<String> = lines.iter().map(|t| t.line.clone()).collect();
        let balances = match self.inner.balances(&keys).await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "Budget metrics: the ledger did not answer");
                return;
            }
        };
        for (t, b) in lines.iter().zip(balances) {
            self.metrics
                .budget_used
                .get_or_create(&t.labels)
                .set(used_ratio(b, t.limit));
            self.metrics
                .budget_spent
                .get_or_create(&t.labels)
                .set(b.spent as f64 / PICODOLLARS_PER_USD);
        }
    }
}

/// Spend plus reservations over the limit (a zero limit with anything committed is infinite).
fn used_ratio(b: Balance, limit: Picodollars) -> f64 {
    let committed = b.committed();
    match (committed, limit) {
        (0, _) => 0.0,
        (_, 0) => f64::INFINITY,
        (c, l) => c as f64 / l as f64,
    }
}

impl Ledger for ObservedLedger {
    fn reserve<'a>(&'a self, lines: &'a [Line], amount: Picodollars) -> LedgerFuture<'a, Reserved> {
        self.remember(lines);
        self.inner.reserve(lines, amount)
    }

    fn balances<'a>(&'a self, keys: &'a [String]) -> LedgerFuture<'a, Vec<Balance>> {
        self.inner.balances(keys)
    }

    fn add_spent<'a>(&'a self, keys: &'a [String], amount: Picodollars) -> LedgerFuture<'a, ()> {
        self.inner.add_spent(keys, amount)
    }

    fn settle(&self, keys: Vec<String>, reserved: Picodollars, actual: Picodollars) {
        self.inner.settle(keys, reserved, actual);
    }

    fn flush(&self) -> LedgerFuture<'_, ()> {
        self.inner.flush()
    }

    fn flush_within(&self, within: std::time::Duration) -> LedgerFuture<'_, ()> {
        self.inner.flush_within(within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::budget::{lines, Budget, MemoryLedger, Owner, Period};

    fn budget(id: &str, scope: Scope, period: Period, usd: u128) -> Budget {
        Budget {
            id: id.to_owned(),
            scope,
            member: None,
            period,
            limit: usd * 1_000_000_000_000,
            hard: true,
        }
    }

    #[tokio::test]
    async fn reserved_lines_get_gauges_end_users_do_not_and_ended_periods_leave() {
        let metrics = Metrics::default();
        let ledger = ObservedLedger::new(Arc::new(MemoryLedger::new()), metrics.clone());
        let now = OffsetDateTime::now_utc();
        let mut soft = budget("acme-soft", Scope::Tenant, Period::Weekly, 2);
        soft.hard = false;
        let budgets = [
            budget("acme-monthly", Scope::Tenant, Period::Monthly, 10),
            budget("per-user", Scope::EndUser, Period::Daily, 5),
            soft,
        ];
        let owner = Owner {
            key: "k1",
            team: None,
            tenant: Some("acme"),
            end_user: Some("someone@example.com"),
        };
        let mut ls = lines(&budgets, &owner, now);
        assert_eq!(ls.len(), 3);
        let r = ledger.reserve(&ls, 4_000_000_000_000).await.unwrap();
        assert_eq!(
            r,
            Reserved::Ok {
                soft_exceeded: vec![2]
            }
        );
        let keys: Vec<String> = ls.iter().map(|l| l.key.clone()).collect();
        ledger.settle(keys, 4_000_000_000_000, 3_000_000_000_000);
        ledger.refresh().await;
        let t = metrics.text();
        let labels = "{budget=\"acme-monthly\",scope=\"tenant\",member=\"acme\"}";
        assert!(
            t.contains(&format!("tollgate_budget_used_ratio{labels} 0.3")),
            "{t}"
        );
        assert!(
            t.contains(&format!("tollgate_budget_spent_usd{labels} 3.0")),
            "{t}"
        );
        // A soft budget of the same tenant has its own ratio.
        assert!(
            t.contains("tollgate_budget_used_ratio{budget=\"acme-soft\",scope=\"tenant\",member=\"acme\"} 1.5"),
            "{t}"
        );
        assert!(!t.contains("someone@example.com"), "{t}");

        // The same line in a period that has ended leaves the metrics on the next refresh.
        ls.truncate(1);
        ls[0].ends = Some(now - time::Duration::seconds(1));
        ls[0].key = "tenant:m2000-01:old".to_owned();
        ledger.reserve(&ls, 1).await.unwrap();
        ledger.refresh().await;
        let t = metrics.text();
        assert!(!t.contains("member=\"old\""), "{t}");
        assert!(t.contains("member=\"acme\""), "{t}");
    }

    #[test]
    fn the_ratio_is_committed_over_the_limit() {
        let b = Balance {
            spent: 1,
            reserved: 1,
        };
        assert_eq!(used_ratio(b, 4), 0.5);
        assert_eq!(used_ratio(Balance::default(), 0), 0.0);
        assert!(used_ratio(b, 0).is_infinite());
    }
}
