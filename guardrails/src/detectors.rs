//! The built-in detectors: a bounded regex each (so a stream needs to hold back only a bounded
//! number of bytes) and, where a format has one, a checksum that a candidate must pass.

/// A check a candidate match must pass (a checksum).
pub(crate) type Validator = fn(&str) -> bool;

/// What a rule looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detector {
    /// Email addresses.
    Email,
    /// Phone numbers: North American (`(415) 555-0123`, `415-555-0123`) and international
    /// (`+44 20 7946 0958`).
    Phone,
    /// Payment card numbers of 13 to 19 digits, spaces or dashes allowed, passing the Luhn check.
    CreditCard,
    /// IBANs passing the ISO 13616 mod-97 check.
    Iban,
    /// US social security numbers written `AAA-GG-SSSS`, excluding numbers never issued.
    UsSsn,
    /// IPv4 and IPv6 addresses.
    IpAddress,
    /// API keys and tokens of common providers (OpenAI, Anthropic, AWS, GitHub, Slack, Google,
    /// Stripe, Tollgate's own keys) and JWTs.
    Secrets,
    /// The first line of a PEM private key block.
    PrivateKey,
    /// Prompt-injection phrasings (see `corpus/injection.txt` for what is and is not caught).
    PromptInjection,
    /// Whole words or phrases, case-insensitive.
    DenyList(Vec<String>),
    /// A custom regex; every repetition must be bounded.
    Regex(String),
}

impl Detector {
    /// The detector's name in config and verdicts.
    pub fn name(&self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::CreditCard => "credit_card",
            Detector::Iban => "iban",
            Detector::UsSsn => "us_ssn",
            Detector::IpAddress => "ip_address",
            Detector::Secrets => "secrets",
            Detector::PrivateKey => "private_key",
            Detector::PromptInjection => "prompt_injection",
            Detector::DenyList(_) => "deny_list",
            Detector::Regex(_) => "regex",
        }
    }

    /// The regex source, and a validator a candidate must pass.
    pub(crate) fn pattern(&self) -> (String, Option<Validator>) {
        match self {
            Detector::Email => (ascii(EMAIL), None),
            Detector::Phone => (ascii(PHONE), None),
            Detector::CreditCard => (ascii(CARD), Some(luhn_valid)),
            Detector::Iban => (ascii(IBAN), Some(iban_valid)),
            Detector::UsSsn => (ascii(SSN), None),
            Detector::IpAddress => (ascii(IP), Some(ip_valid)),
            Detector::Secrets => (ascii(&SECRETS.join("|")), None),
            Detector::PrivateKey => (ascii(PRIVATE_KEY), None),
            Detector::PromptInjection => (ascii(&format!("(?i){}", INJECTION.join("|"))), None),
            Detector::DenyList(words) => {
                let alternatives: Vec<String> = words
                    .iter()
                    .map(|w| {
                        w.split_whitespace()
                            .map(regex::escape)
                            .collect::<Vec<_>>()
                            .join(r"\s{1,3}")
                    })
                    .collect();
                (format!(r"(?i)\b(?:{})\b", alternatives.join("|")), None)
            }
            Detector::Regex(p) => (p.clone(), None),
        }
    }
}

/// Built-in patterns are ASCII-only (`\d`, `\w`, `\s`, `\b` and case folding): the formats
/// they describe are ASCII, and it keeps every pattern within the regex crate's DFAs, which
/// Unicode classes and word boundaries would push out to the much slower NFA simulation.
fn ascii(pattern: &str) -> String {
    format!("(?-u:{pattern})")
}

const EMAIL: &str =
    r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,4}\.[A-Za-z]{2,24}\b";
const PHONE: &str = r"(?:\+[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,3}\b|(?:\(\d{3}\)[ .-]?|\b\d{3}[ .-])\d{3}[ .-]\d{4}\b)";
/// The groupings cards are written in (4-4-4-4 with one kind of separator, 4-6-5 for 15-digit
/// cards, or unbroken), so a card followed by more digits is still found whole.
const CARD: &str = r"\b(?:\d{4}-\d{4}-\d{4}-\d{4}(?:-\d{1,3})?|\d{4} \d{4} \d{4} \d{4}(?: \d{1,3})?|\d{4}[ -]\d{6}[ -]\d{5}|\d{13,19})\b";
/// Unbroken, or in groups of four separated by single spaces (the printed form).
const IBAN: &str = r"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)\b";
const SSN: &str = r"\b(?:00[1-9]|0[1-9]\d|[1-578]\d{2}|6[0-57-9]\d|66[0-57-9])-(?:0[1-9]|[1-9]\d)-(?:000[1-9]|00[1-9]\d|0[1-9]\d{2}|[1-9]\d{3})\b";
const IP: &str = r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b|\b(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,5})?\b";
const SECRETS: [&str; 10] = [
    r"\bsk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",
    r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
    r"\bxox[abprs]-[A-Za-z0-9-]{10,200}",
    r"\bAIza[0-9A-Za-z_-]{35}",
    r"\b[rs]k_live_[0-9A-Za-z]{16,200}\b",
    r"\btg-[0-9a-f]{64}\b",
    r"\beyJ[A-Za-z0-9_-]{8,1000}\.eyJ[A-Za-z0-9_-]{8,2000}\.[A-Za-z0-9_-]{8,1000}",
    r"\bglpat-[A-Za-z0-9_-]{20,100}",
];
const PRIVATE_KEY: &str = r"-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY-----";
/// Phrasings of instruction override, prompt extraction and role hijacking. Bounded gaps
/// (`\s{1,3}`, `(?:\w{1,20}\s{1,3}){0,3}`) keep the longest match short.
const INJECTION: [&str; 8] = [
    r"\b(?:ignore|disregard|forget|override|bypass)\s{1,3}(?:\w{1,20}\s{1,3}){0,3}(?:previous|prior|above|earlier|preceding|system|original)\s{1,3}(?:\w{1,20}\s{1,3}){0,2}(?:instructions?|prompts?|rules|directions|guidelines|context)\b",
    r"\b(?:reveal|print|show|output|repeat|leak|display)\s{1,3}(?:\w{1,20}\s{1,3}){0,3}(?:system\s{1,3}prompt|hidden\s{1,3}(?:instructions|prompt)|initial\s{1,3}instructions)\b",
    r"\byou\s{1,3}are\s{1,3}now\s{1,3}(?:DAN|in\s{1,3}developer\s{1,3}mode|an?\s{1,3}unrestricted|jailbroken|free\s{1,3}of\s{1,3}(?:all\s{1,3})?(?:rules|restrictions))\b",
    r"\b(?:enable|enter|activate)\s{1,3}(?:developer|god|jailbreak|DAN)\s{1,3}mode\b",
    r"\bdo\s{1,3}anything\s{1,3}now\b",
    r"\bpretend\s{1,3}(?:that\s{1,3})?you\s{1,3}(?:have|are\s{1,3}under)\s{1,3}no\s{1,3}(?:rules|restrictions|guidelines|filters)\b",
    r"\bnew\s{1,3}instructions\s{0,3}:\s{0,3}(?:ignore|disregard|you\s{1,3}(?:must|will))\b",
    r"(?:^|\n)\s{0,3}(?:system|assistant)\s{0,3}:\s{0,3}(?:ignore|you\s{1,3}must\s{1,3}now|override)\b",
];

/// The Luhn check over the digits of `s` (other characters ignored), for 13 to 19 digits.
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The ISO 13616 IBAN check: 15 to 34 characters, the first four moved to the end, letters
/// as 10..35, the whole number mod 97 equal to 1. Spaces are ignored.
pub fn iban_valid(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn ip_valid(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}
