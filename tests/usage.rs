//! `tollgate usage` over an NDJSON fixture (`tests/fixtures/usage/`: seven requests over three
//! days, one of them stored twice in two files as a replay would): the exact table and JSON.
//! The same command against ClickHouse is tested in `logger/tests/clickhouse.rs`.

// Test support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::process::Command;

use common::TOLLGATE;

fn usage(args: &[&str]) -> (bool, String, String) {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/usage");
    let out = Command::new(TOLLGATE)
        .args(["usage", "--data-dir", fixture])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_default_table_groups_by_day_tenant_key_and_model_counting_a_replay_once() {
    let (ok, out, err) = usage(&[]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "\
day         tenant  key          model        requests  input_tokens  output_tokens               cost_usd
2026-11-23  acme    search-prod  gpt-4o              1          1200            300         0.006000000000
2026-11-23  acme    search-prod  gpt-4o-mini         2          1010            205         0.000274500000
2026-11-23  beta    batch        gpt-4o              1             1              1         0.000012500000
2026-11-24  acme    search-prod  gpt-4o-mini         1          1000            200         0.000270000000
2026-11-24  beta    batch        gpt-4o              1       4000000        1000000  18446744.073709551615
2026-11-25  beta    batch        gpt-4o              1             5              0         0.000012500000
total                                                7       4003216        1000706  18446744.080279051615
"
    );
}

#[test]
fn grouping_and_a_day_range_are_chosen_by_flags() {
    let (ok, out, err) = usage(&[
        "--by",
        "tenant",
        "--from",
        "2026-11-24",
        "--to",
        "2026-11-24",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "\
tenant  requests  input_tokens  output_tokens               cost_usd
acme           1          1000            200         0.000270000000
beta           1       4000000        1000000  18446744.073709551615
total          2       4001000        1000200  18446744.073979551615
"
    );
    let (ok, out, _) = usage(&["--by", "model", "--to", "2026-11-23"]);
    assert!(ok);
    assert_eq!(
        out,
        "\
model        requests  input_tokens  output_tokens        cost_usd
gpt-4o              2          1201            301  0.006012500000
gpt-4o-mini         2          1010            205  0.000274500000
total               4          2211            506  0.006287000000
"
    );
}

#[test]
fn json_carries_exact_spend_as_strings() {
    let (ok, out, err) = usage(&["--by", "key", "--from", "2026-11-24", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "by": ["key"],
            "rows": [
                {"key": "batch", "requests": 2, "input_tokens": 4000005, "output_tokens": 1000000,
                 "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
                 "cost_picodollars": "18446744073722051615", "cost_usd": "18446744.073722051615"},
                {"key": "search-prod", "requests": 1, "input_tokens": 1000, "output_tokens": 200,
                 "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
                 "cost_picodollars": "270000000", "cost_usd": "0.000270000000"}
            ],
            "total": {"requests": 3, "input_tokens": 4001005, "output_tokens": 1000200,
                 "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
                 "cost_picodollars": "18446744073992051615", "cost_usd": "18446744.073992051615"}
        })
    );
}

#[test]
fn bad_flags_are_refused_with_a_clear_message() {
    for (args, want) in [
        (&["--by", "tenant,tenant"][..], "--by names `tenant` twice"),
        (&["--by", "team"][..], "`team` is not a grouping"),
        (
            &["--from", "2026-11-25", "--to", "2026-11-24"][..],
            "--from 2026-11-25 is after --to 2026-11-24",
        ),
        (
            &["--from", "23/11/2026"][..],
            "is not a day like 2026-11-23",
        ),
    ] {
        let (ok, _, err) = usage(args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let out = Command::new(TOLLGATE).args(["usage"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir"));
}
