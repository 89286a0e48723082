//! Detector positives and near-miss negatives, compile-time errors, and streaming redaction
//! that gives the same text wherever the chunk boundaries fall.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn rule(id: &str, detector: Detector, action: Action) -> RuleSpec {
    RuleSpec {
        id: id.to_owned(),
        detector,
        action,
    }
}

fn one(detector: Detector) -> Engine {
    Engine::new(&[rule("r", detector, Action::Redact)]).unwrap()
}

fn hits(e: &Engine, text: &str) -> Vec<String> {
    e.findings(text, 0)
        .iter()
        .map(|f| text[f.start..f.end].to_owned())
        .collect()
}

#[test]
fn luhn_accepts_valid_numbers_only() {
    assert!(luhn_valid("4111 1111 1111 1111"));
    assert!(luhn_valid("5500-0000-0000-0004"));
    assert!(luhn_valid("378282246310005"));
    assert!(!luhn_valid("4111 1111 1111 1112"));
    assert!(!luhn_valid("1234567890123"));
    assert!(!luhn_valid("0000"), "too short");
}

#[test]
fn iban_checksum_is_checked() {
    assert!(iban_valid("GB82 WEST 1234 5698 7654 32"));
    assert!(iban_valid("DE89370400440532013000"));
    assert!(iban_valid("FR1420041010050500013M02606"));
    assert!(!iban_valid("GB82 WEST 1234 5698 7654 33"));
    assert!(!iban_valid("DE89370400440532013001"));
}

#[test]
fn credit_cards_need_the_luhn_check() {
    let e = one(Detector::CreditCard);
    assert_eq!(
        hits(&e, "pay with 4111 1111 1111 1111 today"),
        ["4111 1111 1111 1111"]
    );
    assert_eq!(
        hits(&e, "card 5500-0000-0000-0004."),
        ["5500-0000-0000-0004"]
    );
    assert!(hits(&e, "order 4111 1111 1111 1112 shipped").is_empty());
    assert!(hits(&e, "tracking 1234567890123456").is_empty());
}

#[test]
fn ibans_need_the_checksum() {
    let e = one(Detector::Iban);
    assert_eq!(
        hits(&e, "send to GB82 WEST 1234 5698 7654 32 please"),
        ["GB82 WEST 1234 5698 7654 32"]
    );
    assert_eq!(
        hits(&e, "IBAN DE89370400440532013000"),
        ["DE89370400440532013000"]
    );
    assert!(hits(&e, "IBAN DE89370400440532013001").is_empty());
}

#[test]
fn emails_phones_ssns_and_ips() {
    let e = one(Detector::Email);
    assert_eq!(
        hits(&e, "mail jane.doe+llm@example.co.uk now"),
        ["jane.doe+llm@example.co.uk"]
    );
    assert!(hits(&e, "not an email: user@localhost or @handle").is_empty());

    let e = one(Detector::Phone);
    assert_eq!(hits(&e, "call (415) 555-0123 now"), ["(415) 555-0123"]);
    assert_eq!(hits(&e, "or 415-555-0123."), ["415-555-0123"]);
    assert_eq!(hits(&e, "UK +44 20 7946 0958 office"), ["+44 20 7946 0958"]);
    assert!(hits(&e, "version 1.2.3 released in 2024").is_empty());
    assert!(hits(&e, "order 4155550123 shipped").is_empty());

    let e = one(Detector::UsSsn);
    assert_eq!(hits(&e, "ssn 123-45-6789."), ["123-45-6789"]);
    assert!(hits(&e, "never issued: 000-12-3456 666-12-3456 912-34-5678").is_empty());
    assert!(hits(&e, "123-45-67890 is too long").is_empty());

    let e = one(Detector::IpAddress);
    assert_eq!(hits(&e, "host 192.168.1.20 up"), ["192.168.1.20"]);
    assert_eq!(
        hits(&e, "v6 2001:db8::8a2e:370:7334 ok"),
        ["2001:db8::8a2e:370:7334"]
    );
    assert!(hits(&e, "version 999.1.1.1 and time 10:30:00").is_empty());
}

#[test]
fn secrets_and_private_keys() {
    let e = one(Detector::Secrets);
    for secret in [
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "xoxb-1234567890-abcdefghij",
        "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
        "sk_live_abcdefghijklmnop1234",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ] {
        assert_eq!(hits(&e, &format!("key: {secret} end")), [secret], "{secret}");
    }
    assert!(hits(&e, "a task-list, skip-to-content, AKIA123").is_empty());

    let e = Engine::new(&[rule("pk", Detector::PrivateKey, Action::Block)]).unwrap();
    let v = e
        .check("here:\n-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n")
        .verdict;
    assert_eq!(v.blocked_by.as_deref(), Some("pk"));
    assert!(!e.check("-----BEGIN PUBLIC KEY-----").verdict.matched());
}

fn corpus() -> Vec<(bool, String)> {
    include_str!("../corpus/injection.txt")
        .lines()
        .filter_map(|l| {
            l.strip_prefix("+ ")
                .map(|t| (true, t.to_owned()))
                .or_else(|| l.strip_prefix("- ").map(|t| (false, t.to_owned())))
        })
        .collect()
}

#[test]
fn the_injection_corpus_is_classified_as_written() {
    let e = Engine::new(&[rule("inj", Detector::PromptInjection, Action::Flag)]).unwrap();
    let lines = corpus();
    assert!(lines.iter().filter(|(p, _)| *p).count() >= 15);
    assert!(lines.iter().filter(|(p, _)| !*p).count() >= 10);
    for (positive, text) in lines {
        assert_eq!(
            e.check(&text).verdict.flagged == ["inj"],
            positive,
            "{}: {text}",
            if positive { "missed" } else { "false positive" }
        );
    }
}

#[test]
fn deny_lists_match_whole_words_in_any_case() {
    let e = one(Detector::DenyList(vec![
        "project titan".into(),
        "Falcon".into(),
    ]));
    assert_eq!(
        hits(&e, "About PROJECT  Titan and falcon."),
        ["PROJECT  Titan", "falcon"]
    );
    assert!(hits(&e, "falconry and titanic projects").is_empty());
}

#[test]
fn actions_block_redact_and_flag_and_blocking_names_only_the_rule() {
    let e = Engine::new(&[
        rule("no-cards", Detector::CreditCard, Action::Block),
        rule("emails", Detector::Email, Action::Redact),
        rule("ips", Detector::IpAddress, Action::Flag),
    ])
    .unwrap();
    let o = e.check("mail a@example.com from 10.0.0.1, twice: b@example.com");
    assert_eq!(
        o.redacted_text.as_deref(),
        Some("mail [REDACTED:emails] from 10.0.0.1, twice: [REDACTED:emails]")
    );
    assert_eq!(o.verdict.redacted, ["emails"]);
    assert_eq!(o.verdict.flagged, ["ips"]);
    assert_eq!(o.verdict.blocked_by, None);
    let o = e.check("card 4111111111111111");
    assert_eq!(o.verdict.blocked_by.as_deref(), Some("no-cards"));
    assert_eq!(o.redacted_text, None);
    let clean = e.check("nothing to see here");
    assert!(!clean.verdict.matched());
    assert_eq!(clean.redacted_text, None);
}

#[test]
fn bad_policies_are_refused_with_the_rule_named() {
    let err = |d: Detector, a: Action| Engine::new(&[rule("x", d, a)]).unwrap_err();
    assert!(matches!(
        err(Detector::Regex("secret-[a-z]+".into()), Action::Redact),
        GuardError::Unbounded { .. }
    ));
    assert!(matches!(
        err(Detector::Regex("(".into()), Action::Flag),
        GuardError::InvalidRegex { .. }
    ));
    assert!(matches!(
        err(Detector::Regex("a{0,3}".into()), Action::Flag),
        GuardError::MatchesEmpty { .. }
    ));
    assert!(matches!(
        err(Detector::DenyList(vec![" ".into()]), Action::Block),
        GuardError::EmptyDenyList { .. }
    ));
    assert!(matches!(
        err(Detector::PrivateKey, Action::Redact),
        GuardError::UnsupportedAction { .. }
    ));
    let dup = Engine::new(&[
        rule("x", Detector::Email, Action::Flag),
        rule("x", Detector::Phone, Action::Flag),
    ])
    .unwrap_err();
    assert_eq!(dup, GuardError::DuplicateRule { rule: "x".into() });
    assert!(err(Detector::Regex("secret-[a-z]+".into()), Action::Redact)
        .to_string()
        .contains("rule `x`"));
}

fn pii_engine() -> Arc<Engine> {
    Arc::new(
        Engine::new(&[
            rule("email", Detector::Email, Action::Redact),
            rule("card", Detector::CreditCard, Action::Redact),
            rule("phone", Detector::Phone, Action::Redact),
            rule("iban", Detector::Iban, Action::Redact),
            rule("ssn", Detector::UsSsn, Action::Redact),
            rule("secret", Detector::Secrets, Action::Redact),
            rule("ip", Detector::IpAddress, Action::Flag),
        ])
        .unwrap(),
    )
}

fn stream(engine: &Arc<Engine>, chunks: &[&[u8]]) -> (String, Verdict) {
    let mut s = StreamScanner::new(Arc::clone(engine));
    let mut out = String::new();
    for c in chunks {
        out.push_str(&s.push(c).text);
    }
    out.push_str(&s.finish().text);
    (out, s.verdict().clone())
}

const PII_TEXT: &str = "Sure — écrivez à jane.doe@example.com ou appelez (415) 555-0123. \
Carte 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32, SSN 123-45-6789, \
host 10.1.2.3, key sk-proj-abcdefghijklmnopqrstuvwxyz0123. Not a card: 4111 1111 1111 1112 ✓";

#[test]
fn a_stream_split_at_every_boundary_redacts_exactly_like_the_whole_text() {
    let engine = pii_engine();
    let whole = engine.check(PII_TEXT);
    let expected = whole.redacted_text.clone().unwrap();
    for leak in [
        "jane.doe",
        "555-0123",
        "1111 1111 1111 1111",
        "WEST",
        "6789",
        "abcdefghij",
    ] {
        assert!(!expected.contains(leak), "{leak} leaked: {expected}");
    }
    let bytes = PII_TEXT.as_bytes();
    for i in 0..=bytes.len() {
        let (out, verdict) = stream(&engine, &[&bytes[..i], &bytes[i..]]);
        assert_eq!(out, expected, "split at byte {i}");
        assert_eq!(verdict, whole.verdict, "split at byte {i}");
    }
    // Byte by byte, too (every boundary at once, including inside each UTF-8 character).
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(stream(&engine, &singles).0, expected);
}

#[test]
fn prose_is_held_back_by_a_few_bytes_at_most() {
    let engine = pii_engine();
    let mut s = StreamScanner::new(Arc::clone(&engine));
    let out = s.push(b"The answer to your question is yes, and ");
    assert!(out.text.starts_with("The answer to your question is yes,"));
    assert!(s.held() <= 4, "held {} bytes", s.held());
    let out = s.push(b"here is an email: a@b");
    assert!(
        !out.text.contains("a@b"),
        "a possible match is held: {out:?}"
    );
    let out = s.push(b".com and more");
    assert!(out.text.contains("[REDACTED:email]"), "{out:?}");
    assert!(!out.text.contains("a@b.com"));
}

#[test]
fn a_blocking_match_in_a_stream_is_reported_once() {
    let engine = Arc::new(Engine::new(&[rule("no-ssn", Detector::UsSsn, Action::Block)]).unwrap());
    let mut s = StreamScanner::new(engine);
    assert_eq!(s.push(b"the number is 123-45-").blocked_by, None);
    let out = s.push(b"6789 and more");
    assert_eq!(out.blocked_by.as_deref(), Some("no-ssn"));
    assert_eq!(s.push(b" later").blocked_by, None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_chunking_of_any_mix_gives_the_whole_text_result(
        parts in proptest::collection::vec(0usize..8, 1..20),
        cuts in proptest::collection::vec(0usize..400, 0..12),
    ) {
        const PIECES: [&str; 8] = [
            "hello world ", "bob@example.org ", "4111-1111-1111-1111 ", "(212) 555-0199 ",
            "DE89 3704 0044 0532 0130 00 ", "ünïcödé ✓ ", "123-45-6789 ", "4111 1111 1111 1112 ",
        ];
        let text: String = parts.iter().map(|&i| PIECES[i]).collect();
        let engine = pii_engine();
        let whole = engine.check(&text);
        let expected = whole.redacted_text.clone().unwrap_or_else(|| text.clone());
        let bytes = text.as_bytes();
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for p in points {
            chunks.push(&bytes[prev..p]);
            prev = p;
        }
        chunks.push(&bytes[prev..]);
        let (out, verdict) = stream(&engine, &chunks);
        prop_assert_eq!(out, expected);
        prop_assert_eq!(verdict, whole.verdict);
    }
}
