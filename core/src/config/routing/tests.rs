//! Routing strategy tests: each strategy's choice with an injected random source, the
//! in-flight limit, exclusion, state kept across reloads, and config validation.

use std::time::Duration;

use super::*;
use crate::env::MapEnv;

fn config(models: &str) -> Result<Config, Vec<crate::config::ConfigError>> {
    let yaml = format!(
        r#"
listen:
  grpc: "unix:/tmp/tollgate.sock"
  admin: "127.0.0.1:9464"
providers:
  a: {{ kind: openai, base_url: "http://127.0.0.1:1/v1" }}
  b: {{ kind: openai, base_url: "http://127.0.0.1:2/v1" }}
  c: {{ kind: openai, base_url: "http://127.0.0.1:3/v1" }}
pricing:
  models:
    cheap: {{ input: "1", output: "1" }}
    dear: {{ input: "10", output: "10" }}
    dear-out: {{ input: "0.5", output: "50" }}
models:
{models}
keys: []
"#
    );
    Config::from_yaml(&yaml, &MapEnv::from_pairs([("X", "y")]))
}

fn model(c: &Config) -> &Model {
    &c.models["m"]
}

fn no_cost(_: &Target) -> Option<Picodollars> {
    None
}

/// Picks and returns the chosen provider's name, dropping the slot at once.
fn name(m: &Model, excluded: Excluded, random: &mut dyn FnMut(u64) -> u64) -> String {
    match m.choose(excluded, &no_cost, random) {
        Pick::Chosen { target, .. } => target.provider.name.clone(),
        Pick::Busy => "busy".into(),
        Pick::Exhausted => "exhausted".into(),
    }
}

#[test]
fn weighted_picks_by_weight_with_the_injected_random_point() {
    let c = config(
        "  m:\n    targets:\n      - { provider: a, model: x, weight: 3 }\n      - { provider: b, model: x }\n",
    )
    .unwrap();
    let m = model(&c);
    assert_eq!(m.strategy(), Strategy::Weighted);
    for (r, want) in [(0, "a"), (2, "a"), (3, "b")] {
        assert_eq!(
            name(m, Excluded::NONE, &mut |n| {
                assert_eq!(n, 4);
                r
            }),
            want
        );
    }
    // With `a` left out, the total is only `b`'s weight.
    assert_eq!(
        name(m, Excluded::NONE.with(0), &mut |n| {
            assert_eq!(n, 1);
            0
        }),
        "b"
    );
}

#[test]
fn priority_takes_the_first_available_in_order() {
    let c = config(
        "  m:\n    strategy: priority\n    targets:\n      - { provider: a, model: x, max_requests_in_flight: 1 }\n      - { provider: b, model: x }\n      - { provider: c, model: x }\n",
    )
    .unwrap();
    let m = model(&c);
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "a");
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "a");
    // The next after those tried (a failover's question).
    assert_eq!(name(m, Excluded::NONE.with(0), &mut |_| 0), "b");
    assert_eq!(name(m, Excluded::NONE.with(0).with(1), &mut |_| 0), "c");
    assert_eq!(
        name(m, Excluded::NONE.with(0).with(1).with(2), &mut |_| 0),
        "exhausted"
    );
    // `a` at its limit: `b` serves.
    let Pick::Chosen { slot, .. } = m.choose(Excluded::NONE, &no_cost, &mut |_| 0) else {
        panic!("a is free");
    };
    assert_eq!(slot.stats().in_flight(), 1);
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "b");
    drop(slot);
    assert_eq!(m.targets[0].stats.in_flight(), 0);
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "a");
}

#[test]
fn round_robin_alternates_and_skips_excluded() {
    let c = config(
        "  m:\n    strategy: round_robin\n    targets:\n      - { provider: a, model: x }\n      - { provider: b, model: x }\n",
    )
    .unwrap();
    let m = model(&c);
    let picks: Vec<String> = (0..4)
        .map(|_| name(m, Excluded::NONE, &mut |_| 0))
        .collect();
    assert_eq!(picks, ["a", "b", "a", "b"]);
    let picks: Vec<String> = (0..3)
        .map(|_| name(m, Excluded::NONE.with(1), &mut |_| 0))
        .collect();
    assert_eq!(picks, ["a", "a", "a"]);
}

#[test]
fn least_latency_prefers_unmeasured_then_fastest_and_explores() {
    let c = config(
        "  m:\n    strategy: least_latency\n    targets:\n      - { provider: a, model: x }\n      - { provider: b, model: x }\n",
    )
    .unwrap();
    let m = model(&c);
    let no_explore = &mut |n: u64| if n == 1000 { 999 } else { 0 };
    // Neither measured: the first unmeasured goes first.
    assert_eq!(name(m, Excluded::NONE, no_explore), "a");
    m.targets[0]
        .stats
        .record_latency(Duration::from_millis(300));
    // `b` unmeasured: tried next.
    assert_eq!(name(m, Excluded::NONE, no_explore), "b");
    m.targets[1].stats.record_latency(Duration::from_millis(20));
    for _ in 0..5 {
        assert_eq!(name(m, Excluded::NONE, no_explore), "b");
    }
    // Exploration (a draw under the share) picks at random: here the slow one.
    let mut asked = Vec::new();
    assert_eq!(
        name(m, Excluded::NONE, &mut |n| {
            asked.push(n);
            0
        }),
        "a"
    );
    assert_eq!(asked, [1000, 2]);
    // `b` slows down, `a` recovers: the averages move and so does the traffic.
    for _ in 0..20 {
        m.targets[1]
            .stats
            .record_latency(Duration::from_millis(500));
        m.targets[0].stats.record_latency(Duration::from_millis(10));
    }
    assert_eq!(name(m, Excluded::NONE, no_explore), "a");
}

#[test]
fn the_latency_average_moves_by_a_fifth() {
    let s = TargetStats::default();
    assert_eq!(s.latency(), None);
    s.record_latency(Duration::from_millis(100));
    assert_eq!(s.latency(), Some(Duration::from_millis(100)));
    s.record_latency(Duration::from_millis(600));
    assert_eq!(s.latency(), Some(Duration::from_millis(200)));
}

#[test]
fn least_cost_picks_the_cheapest_for_the_request() {
    let c = config(
        "  m:\n    strategy: least_cost\n    targets:\n      - { provider: a, model: dear }\n      - { provider: b, model: cheap }\n      - { provider: c, model: dear-out }\n",
    )
    .unwrap();
    let m = model(&c);
    let price = |tokens: (u64, u64)| {
        let prices = &c.prices;
        move |t: &Target| {
            prices.get(&t.upstream_model).map(|p| {
                p.cost(&crate::usage::Usage {
                    input_tokens: tokens.0,
                    output_tokens: tokens.1,
                    cache_read_tokens: 0,
                    cache_write_tokens: 0,
                    reasoning_tokens: 0,
                    source: crate::usage::UsageSource::Estimated,
                })
            })
        }
    };
    let pick = |tokens| match m.choose(Excluded::NONE, &price(tokens), &mut |_| 0) {
        Pick::Chosen { target, .. } => target.upstream_model.clone(),
        other => panic!("{other:?}"),
    };
    // Mostly output: `cheap` (1 + 1) beats `dear-out` (0.5 + 50).
    assert_eq!(pick((100, 1000)), "cheap");
    // All prompt: `dear-out`'s input price is lowest.
    assert_eq!(pick((100_000, 0)), "dear-out");
    // The cheapest excluded: the next cheapest.
    match m.choose(Excluded::NONE.with(1), &price((100, 1000)), &mut |_| 0) {
        Pick::Chosen { target, .. } => assert_eq!(target.upstream_model, "dear"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_target_at_its_limit_is_busy() {
    let c = config(
        "  m:\n    strategy: round_robin\n    targets:\n      - { provider: a, model: x, max_requests_in_flight: 1 }\n      - { provider: b, model: x, max_requests_in_flight: 2 }\n",
    )
    .unwrap();
    let m = model(&c);
    let mut held = Vec::new();
    for _ in 0..3 {
        match m.choose(Excluded::NONE, &no_cost, &mut |_| 0) {
            Pick::Chosen { slot, .. } => held.push(slot),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "busy");
    held.pop();
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "b");
}

#[test]
fn a_reload_keeps_the_state_of_unchanged_targets() {
    let old = config(
        "  m:\n    strategy: round_robin\n    targets:\n      - { provider: a, model: x, max_requests_in_flight: 1 }\n      - { provider: b, model: x }\n",
    )
    .unwrap();
    let Pick::Chosen { slot, .. } = model(&old).choose(Excluded::NONE, &no_cost, &mut |_| 0) else {
        panic!("a is free");
    };
    model(&old).targets[1]
        .stats
        .record_latency(Duration::from_millis(40));
    let mut new = config(
        "  m:\n    strategy: round_robin\n    targets:\n      - { provider: a, model: x, max_requests_in_flight: 1 }\n      - { provider: b, model: x }\n      - { provider: c, model: x }\n",
    )
    .unwrap();
    new.adopt_routing_state(&old);
    let m = model(&new);
    assert_eq!(m.targets[0].stats.in_flight(), 1);
    assert_eq!(
        m.targets[1].stats.latency(),
        Some(Duration::from_millis(40))
    );
    assert_eq!(m.targets[2].stats.latency(), None);
    // The cursor continues (b is next), and `a` stays at its limit under the new config.
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "b");
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "c");
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "b");
    drop(slot);
    assert_eq!(m.targets[0].stats.in_flight(), 0);
}

#[test]
fn strategy_fields_are_validated_with_their_paths() {
    let errs = config(
        "  m:\n    strategy: least_cost\n    targets:\n      - { provider: a, model: unpriced, weight: 2, max_requests_in_flight: 0 }\n",
    )
    .unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for p in [
        "models.m.targets[0].weight",
        "models.m.targets[0].max_requests_in_flight",
        "models.m.targets[0].model",
    ] {
        assert!(paths.contains(&p), "{p} missing in {errs:?}");
    }
    let errs = config("  m:\n    strategy: fastest\n    targets: [{ provider: a, model: x }]\n")
        .unwrap_err();
    assert!(errs[0].path.contains("models.m.strategy"), "{errs:?}");
    let many: String = (0..65)
        .map(|i| format!("      - {{ provider: a, model: x{i} }}\n"))
        .collect();
    let errs = config(&format!("  m:\n    targets:\n{many}")).unwrap_err();
    assert!(
        errs.iter().any(|e| e.path == "models.m.targets"),
        "{errs:?}"
    );
}

#[test]
fn a_single_target_draws_nothing_and_still_has_its_limit() {
    let c = config("  m:\n    targets: [{ provider: a, model: x, max_requests_in_flight: 1 }]\n")
        .unwrap();
    let m = model(&c);
    let never = &mut |_: u64| -> u64 { panic!("no draw for one target") };
    let Pick::Chosen { slot, .. } = m.choose(Excluded::NONE, &no_cost, never) else {
        panic!("a is free");
    };
    assert_eq!(name(m, Excluded::NONE, never), "busy");
    drop(slot);
    assert_eq!(name(m, Excluded::NONE.with(0), never), "exhausted");
    assert_eq!(name(m, Excluded::NONE, never), "a");
}

#[test]
fn a_target_cooling_down_is_left_out_until_its_time_unless_all_are() {
    let c = config(
        "  m:\n    strategy: priority\n    targets:\n      - { provider: a, model: x }\n      - { provider: b, model: x }\n",
    )
    .unwrap();
    let m = model(&c);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // A deadline in the past changes nothing.
    m.targets[0].stats.cool_down_until(now_ms - 1_000);
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "a");
    // `a` asked to be left alone for a minute: `b` serves meanwhile.
    m.targets[0].stats.cool_down_until(now_ms + 60_000);
    assert!(m.targets[0].stats.cooling(now_ms));
    assert!(!m.targets[0].stats.cooling(now_ms + 60_000));
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "b");
    // An earlier deadline does not shorten a later one.
    m.targets[0].stats.cool_down_until(now_ms + 1);
    assert!(m.targets[0].stats.cooling(now_ms + 30_000));
    // Every target left cooling (b excluded, or cooling too): picked as if none were.
    assert_eq!(name(m, Excluded::NONE.with(1), &mut |_| 0), "a");
    m.targets[1].stats.cool_down_until(now_ms + 60_000);
    assert_eq!(name(m, Excluded::NONE, &mut |_| 0), "a");
    // The cool-down is routing state, kept across a reload of the same targets.
    let mut fresh = config(
        "  m:\n    strategy: priority\n    targets:\n      - { provider: a, model: x }\n      - { provider: b, model: x }\n",
    )
    .unwrap();
    fresh.adopt_routing_state(&c);
    assert!(model(&fresh).targets[0].stats.cooling(now_ms));
}

#[test]
fn consecutive_failures_eject_for_a_growing_time_up_to_the_cap() {
    let c = config(
        "  m:\n    ejection: { consecutive_failures: 3, base_ms: 1000, max_ms: 2500 }\n    targets:\n      - { provider: a, model: x }\n",
    )
    .unwrap();
    let s = &model(&c).targets[0].stats;
    let t0 = 1_000_000;
    // A success between failures starts the count again.
    assert!(!s.note_outcome(false, t0));
    assert!(!s.note_outcome(false, t0));
    assert!(!s.note_outcome(true, t0));
    assert!(!s.note_outcome(false, t0));
    assert!(!s.note_outcome(false, t0));
    assert!(!s.cooling(t0));
    // The third in a row ejects for base_ms.
    assert!(s.note_outcome(false, t0));
    assert!(s.cooling(t0 + 999));
    assert!(!s.cooling(t0 + 1_000));
    assert_eq!(s.cool_until_ms(), t0 + 1_000);
    // Failures of requests still in flight while it is out do not count.
    for _ in 0..5 {
        assert!(!s.note_outcome(false, t0 + 500));
    }
    // Back at once, failing again: the second ejection in a row lasts twice as long.
    let t1 = t0 + 1_000;
    assert!(!s.note_outcome(false, t1));
    assert!(!s.note_outcome(false, t1));
    assert!(s.note_outcome(false, t1));
    assert_eq!(s.cool_until_ms(), t1 + 2_000);
    // The third would last 3 s: capped at max_ms.
    let t2 = t1 + 2_000;
    for _ in 0..2 {
        assert!(!s.note_outcome(false, t2));
    }
    assert!(s.note_outcome(false, t2));
    assert_eq!(s.cool_until_ms(), t2 + 2_500);
    // A provider's wait (a 429's Retry-After, set before or after the failure is noted) does
    // not stop the count.
    let t4 = t2 + 2_500 + 60_000;
    s.cool_down_until(t4 + 10_000);
    for _ in 0..2 {
        assert!(!s.note_outcome(false, t4));
    }
    assert!(s.note_outcome(false, t4));
    assert_eq!(s.cool_until_ms(), t4 + 10_000, "the longer deadline stays");
    assert!(!s.note_outcome(true, t4 + 20_000));
    // After a long healthy stretch the count has decayed: base_ms again.
    let t3 = t4 + 1_000 + 60_000;
    for _ in 0..2 {
        assert!(!s.note_outcome(false, t3));
    }
    assert!(s.note_outcome(false, t3));
    assert_eq!(s.cool_until_ms(), t3 + 1_000);
}

#[test]
fn ejection_defaults_target_overrides_and_zero_turns_it_off() {
    let c = config(
        "  m:\n    ejection: { consecutive_failures: 2 }\n    targets:\n      - { provider: a, model: x }\n      - { provider: b, model: x, ejection: { consecutive_failures: 0 } }\n  n:\n    targets: [{ provider: c, model: x }]\n",
    )
    .unwrap();
    let a = &c.models["m"].targets[0].stats;
    assert_eq!(
        a.ejection(),
        Ejection {
            consecutive_failures: 2,
            base_ms: 30_000,
            max_ms: 300_000
        }
    );
    assert_eq!(c.models["n"].targets[0].stats.ejection(), Ejection::DEFAULT);
    let b = &c.models["m"].targets[1].stats;
    for _ in 0..100 {
        assert!(!b.note_outcome(false, 5));
    }
    assert!(!b.cooling(5));
    // An ejected target is left out of the pick like a cooling one.
    assert!(!a.note_outcome(false, 0));
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(a.note_outcome(false, now_ms));
    assert_eq!(name(&c.models["m"], Excluded::NONE, &mut |_| 0), "b");
}

#[test]
fn a_reload_applies_the_new_ejection_policy_to_the_state_it_keeps() {
    let yaml = |n: u32| {
        format!("  m:\n    ejection: {{ consecutive_failures: {n} }}\n    targets: [{{ provider: a, model: x }}]\n")
    };
    let old = config(&yaml(5)).unwrap();
    let s = Arc::clone(&model(&old).targets[0].stats);
    assert!(!s.note_outcome(false, 10));
    let mut new = config(&yaml(2)).unwrap();
    new.adopt_routing_state(&old);
    assert!(Arc::ptr_eq(&s, &model(&new).targets[0].stats));
    assert_eq!(s.ejection().consecutive_failures, 2);
    // The failure counted before the reload still counts.
    assert!(s.note_outcome(false, 10));
}

#[test]
fn bad_ejection_settings_name_their_field() {
    let errs = config(
        "  m:\n    ejection: { base_ms: 0, bogus: 1 }\n    targets: [{ provider: a, model: x }]\n",
    )
    .unwrap_err();
    assert!(format!("{errs:?}").contains("bogus"), "{errs:?}");
    let errs = config(
        "  m:\n    ejection: { base_ms: 0 }\n    targets:\n      - { provider: a, model: x, ejection: { base_ms: 5000, max_ms: 10 } }\n      - { provider: b, model: x, ejection: { max_ms: 100000000 } }\n",
    )
    .unwrap_err();
    let paths: Vec<_> = errs.iter().map(|e| e.to_string()).collect();
    let all = paths.join("\n");
    assert!(all.contains("models.m.ejection.base_ms"), "{all}");
    assert!(all.contains("models.m.targets[0].ejection.max_ms"), "{all}");
    assert!(all.contains("models.m.targets[1].ejection.max_ms"), "{all}");
}
