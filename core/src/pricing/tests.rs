//! Price parsing, exact cost arithmetic, catalog lookups by provider model ids.

use super::*;
use crate::usage::UsageSource;

fn usage(input: u64, output: u64, read: u64, write: u64, reasoning: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: read,
        cache_write_tokens: write,
        reasoning_tokens: reasoning,
        source: UsageSource::Provider,
    }
}

#[test]
fn prices_parse_exactly_and_print_back() {
    assert_eq!(
        PerToken::parse_usd_per_million("2.50"),
        Ok(PerToken(2_500_000))
    );
    assert_eq!(
        PerToken::parse_usd_per_million("0.075"),
        Ok(PerToken(75_000))
    );
    assert_eq!(
        PerToken::parse_usd_per_million("3"),
        Ok(PerToken(3_000_000))
    );
    assert_eq!(PerToken::parse_usd_per_million("0.000001"), Ok(PerToken(1)));
    assert_eq!(PerToken(2_500_000).to_string(), "2.5");
    assert_eq!(PerToken(75_000).to_string(), "0.075");
    assert_eq!(PerToken(15_000_000).to_string(), "15");
    for bad in [
        "",
        "abc",
        "-1",
        "1.2.3",
        "0.0000001",
        "1e3",
        "99999999999999999999",
    ] {
        assert!(PerToken::parse_usd_per_million(bad).is_err(), "{bad}");
    }
}

#[test]
fn cost_charges_cached_tokens_at_cache_prices_and_is_exact() {
    let t = PriceTable::builtin();
    let gpt4o = t.get("gpt-4o").unwrap();
    // 1000 prompt tokens of which 400 cached, 200 output:
    // 600 × 2.50 + 400 × 1.25 + 200 × 10 = 1500 + 500 + 2000 = 4000 USD per million = $0.004.
    let c = gpt4o.cost(&usage(1000, 200, 400, 0, 0));
    assert_eq!(c, 4_000_000_000);
    assert_eq!(format_usd(c), "0.004000000000");

    let sonnet = t.get("claude-sonnet-4-5").unwrap();
    // 10 000 prompt tokens: 2 000 read from cache, 3 000 written, 5 000 plain; 1 000 out.
    // 5000×3 + 2000×0.30 + 3000×3.75 + 1000×15 = 15000 + 600 + 11250 + 15000 = 41850 → $0.04185.
    assert_eq!(
        format_usd(sonnet.cost(&usage(10_000, 1_000, 2_000, 3_000, 0))),
        "0.041850000000"
    );
}

#[test]
fn a_million_small_requests_add_up_to_the_exact_total() {
    let price = *PriceTable::builtin().get("gpt-4o-mini").unwrap();
    let one = usage(7, 3, 0, 0, 0);
    let total: Picodollars = (0..1_000_000).map(|_| price.cost(&one)).sum();
    // 7 × 0.15 + 3 × 0.60 = 2.85 USD per million requests' worth of tokens... exactly.
    assert_eq!(format_usd(total), "2.850000000000");
    let float: f64 = (0..1_000_000).map(|_| to_usd_f64(price.cost(&one))).sum();
    assert_ne!(float, 2.85, "floats drift; that is why costs are integers");
}

#[test]
fn long_prompts_use_long_context_prices() {
    let t = PriceTable::builtin();
    let pro = t.get("gemini-2.5-pro").unwrap();
    // At the threshold: short prices. Above: long prices for the whole request.
    assert_eq!(
        format_usd(pro.cost(&usage(200_000, 1_000, 0, 0, 0))),
        "0.260000000000"
    );
    assert_eq!(
        format_usd(pro.cost(&usage(200_001, 1_000, 0, 0, 0))),
        "0.515002500000"
    );
}

#[test]
fn reasoning_priced_apart_only_when_configured() {
    let mut price = *PriceTable::builtin().get("o3").unwrap();
    let u = usage(0, 1_000, 0, 0, 600);
    assert_eq!(price.cost(&u), 1_000 * 8_000_000);
    price.reasoning = Some(PerToken(1_000_000));
    assert_eq!(price.cost(&u), 400 * 8_000_000 + 600 * 1_000_000);
}

#[test]
fn provider_model_ids_find_their_catalog_entry() {
    let t = PriceTable::builtin();
    for (id, base) in [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        (
            "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            "claude-3-5-haiku",
        ),
        ("anthropic/claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
    ] {
        assert_eq!(t.get(id), t.get(base), "{id}");
        assert!(t.get(id).is_some(), "{id}");
    }
    // No guessing: a different model never borrows a neighbour's price.
    for unknown in [
        "o1-mini",
        "gpt-4o-audio",
        "claude-unknown-20250101",
        "llama-3.1-8b",
    ] {
        assert!(t.get(unknown).is_none(), "{unknown}");
    }
}

#[test]
fn overrides_replace_the_catalog() {
    let mut t = PriceTable::builtin();
    let custom = Price {
        input: PerToken(1),
        output: PerToken(2),
        ..Price::default()
    };
    t.set("gpt-4o", custom);
    t.set("llama-3.1-8b", custom);
    assert_eq!(t.get("gpt-4o-2024-08-06"), Some(&custom));
    assert_eq!(t.get("llama-3.1-8b"), Some(&custom));
}

#[test]
fn every_catalog_price_parses() {
    for &(m, a, b, c, d) in CATALOG {
        for s in [a, b, c, d] {
            assert!(PerToken::parse_usd_per_million(s).is_ok(), "{m}: {s}");
        }
    }
    for &(m, _, a, b, c, d) in LONG_CONTEXT {
        assert!(
            CATALOG.iter().any(|e| e.0 == m),
            "{m} has long-context prices only"
        );
        for s in [a, b, c, d] {
            assert!(PerToken::parse_usd_per_million(s).is_ok(), "{m}: {s}");
        }
    }
}

#[test]
fn usd_amounts_parse_to_exact_picodollars() {
    assert_eq!(parse_usd("100"), Ok(100_000_000_000_000));
    assert_eq!(parse_usd("0.50"), Ok(500_000_000_000));
    assert_eq!(parse_usd("0.000000000001"), Ok(1));
    assert!(parse_usd("0.0000000000001").is_err());
    assert!(parse_usd("-1").is_err());
    assert!(parse_usd("1e3").is_err());
    assert!(parse_usd("").is_err());
}
