//! A compiled policy: rules in order, each a bounded regex with an optional validator and an
//! action, behind one `RegexSet` that rules out clean text in a single pass.

use regex::{Regex, RegexSet};
use regex_syntax::hir::{Class, Hir, HirKind};

use crate::detectors::{Detector, Validator};
use crate::GuardError;

/// What happens when a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Refuse the request (or end the stream) naming the rule, never the matched text.
    Block,
    /// Replace the match with `[REDACTED:<rule id>]`.
    Redact,
    /// Let it through; record the verdict.
    Flag,
}

/// One rule of a policy, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// Unique id, named in verdicts, metrics and client errors.
    pub id: String,
    /// What to look for.
    pub detector: Detector,
    /// What to do on a match.
    pub action: Action,
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) id: String,
    pub(crate) action: Action,
    regex: Regex,
    validator: Option<Validator>,
    /// The longest text the regex can match, in bytes.
    pub(crate) max_len: usize,
    /// Every byte a match can contain.
    pub(crate) alphabet: Box<[bool; 256]>,
}

/// A compiled policy. Build once per config version; share behind an `Arc`.
#[derive(Debug)]
pub struct Engine {
    pub(crate) rules: Vec<Rule>,
    set: RegexSet,
}

/// A match of one rule, as byte offsets into the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// Index of the rule in the policy.
    pub rule: usize,
    /// Start offset.
    pub start: usize,
    /// End offset (exclusive).
    pub end: usize,
}

/// What a policy decided about a text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The first blocking rule that matched, if any.
    pub blocked_by: Option<String>,
    /// Rules whose matches were redacted, once each, in order of first match.
    pub redacted: Vec<String>,
    /// Rules that matched with action `flag`, once each, in order of first match.
    pub flagged: Vec<String>,
}

impl Verdict {
    pub(crate) fn record(&mut self, rule: &Rule) {
        let list = match rule.action {
            Action::Block => {
                if self.blocked_by.is_none() {
                    self.blocked_by = Some(rule.id.clone());
                }
                return;
            }
            Action::Redact => &mut self.redacted,
            Action::Flag => &mut self.flagged,
        };
        if !list.contains(&rule.id) {
            list.push(rule.id.clone());
        }
    }

    /// Whether any rule matched.
    pub fn matched(&self) -> bool {
        self.blocked_by.is_some() || !self.redacted.is_empty() || !self.flagged.is_empty()
    }
}

/// The result of checking a whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// The text with redactions applied, when any rule redacted.
    pub redacted_text: Option<String>,
}

/// Every byte `hir` can match, and whether it can match any byte of a non-ASCII character.
fn alphabet(hir: &Hir, out: &mut [bool; 256]) {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(lit) => lit.0.iter().for_each(|b| out[usize::from(*b)] = true),
        HirKind::Class(Class::Unicode(c)) => {
            for r in c.ranges() {
                let (lo, hi) = (u32::from(r.start()), u32::from(r.end()));
                for b in lo..=hi.min(0x7f) {
                    out[b as usize] = true;
                }
                if hi > 0x7f {
                    out[0x80..].iter_mut().for_each(|x| *x = true);
                }
            }
        }
        HirKind::Class(Class::Bytes(c)) => {
            for r in c.ranges() {
                for b in r.start()..=r.end() {
                    out[usize::from(b)] = true;
                }
            }
        }
        HirKind::Repetition(r) => alphabet(&r.sub, out),
        HirKind::Capture(c) => alphabet(&c.sub, out),
        HirKind::Concat(v) | HirKind::Alternation(v) => v.iter().for_each(|h| alphabet(h, out)),
    }
}

fn compile(spec: &RuleSpec) -> Result<Rule, GuardError> {
    let rule = spec.id.clone();
    if let Detector::DenyList(words) = &spec.detector {
        if words.iter().all(|w| w.trim().is_empty()) {
            return Err(GuardError::EmptyDenyList { rule });
        }
    }
    if spec.detector == Detector::PrivateKey && spec.action == Action::Redact {
        return Err(GuardError::UnsupportedAction {
            rule,
            detector: spec.detector.name(),
        });
    }
    let (pattern, validator) = spec.detector.pattern();
    let invalid = |e: String| GuardError::InvalidRegex {
        rule: rule.clone(),
        message: e,
    };
    let hir = regex_syntax::parse(&pattern).map_err(|e| invalid(e.to_string()))?;
    let props = hir.properties();
    let max_len = props
        .maximum_len()
        .ok_or_else(|| GuardError::Unbounded { rule: rule.clone() })?;
    if props.minimum_len() == Some(0) {
        return Err(GuardError::MatchesEmpty { rule });
    }
    let mut bytes = Box::new([false; 256]);
    alphabet(&hir, &mut bytes);
    let regex = Regex::new(&pattern).map_err(|e| invalid(e.to_string()))?;
    Ok(Rule {
        id: spec.id.clone(),
        action: spec.action,
        regex,
        validator,
        max_len,
        alphabet: bytes,
    })
}

impl Engine {
    /// Compiles a policy's rules, in order (earlier rules win where matches overlap).
    pub fn new(specs: &[RuleSpec]) -> Result<Engine, GuardError> {
        let mut rules: Vec<Rule> = Vec::with_capacity(specs.len());
        for spec in specs {
            if rules.iter().any(|r| r.id == spec.id) {
                return Err(GuardError::DuplicateRule {
                    rule: spec.id.clone(),
                });
            }
            rules.push(compile(spec)?);
        }
        let set = RegexSet::new(rules.iter().map(|r| r.regex.as_str())).map_err(|e| {
            GuardError::InvalidRegex {
                rule: String::new(),
                message: e.to_string(),
            }
        })?;
        Ok(Engine { rules, set })
    }

    /// The rule ids, in policy order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// The id of rule `index`.
    pub fn rule_id(&self, index: usize) -> &str {
        self.rules.get(index).map_or("", |r| r.id.as_str())
    }

    /// The most bytes a stream may have to hold back for this policy.
    pub fn max_hold(&self) -> usize {
        self.rules.iter().map(|r| r.max_len).max().unwrap_or(0)
    }

    /// Every finding in `text` from `from` on, non-overlapping: leftmost first, then the longer,
    /// then the earlier rule.
    pub(crate) fn findings(&self, text: &str, from: usize) -> Vec<Finding> {
        let hay = text.get(from..).unwrap_or("");
        let hits = self.set.matches(hay);
        if !hits.matched_any() {
            return Vec::new();
        }
        let mut all = Vec::new();
        for i in hits.iter() {
            let Some(rule) = self.rules.get(i) else {
                continue;
            };
            // Search the whole text so `\b` sees the character before `from`.
            let mut at = from;
            while let Some(m) = rule.regex.find_at(text, at) {
                if rule.validator.is_none_or(|v| v(m.as_str())) {
                    all.push(Finding {
                        rule: i,
                        start: m.start(),
                        end: m.end(),
                    });
                    at = m.end();
                } else {
                    // A candidate failing its checksum must not hide a valid one inside it.
                    at = text[m.start()..]
                        .char_indices()
                        .nth(1)
                        .map_or(text.len() + 1, |(n, _)| m.start() + n);
                }
                if at > text.len() {
                    break;
                }
            }
        }
        all.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end), f.rule));
        let mut kept: Vec<Finding> = Vec::with_capacity(all.len());
        for f in all {
            if kept.last().is_none_or(|k| f.start >= k.end) {
                kept.push(f);
            }
        }
        kept
    }

    /// Applies the findings to `text[from..to]`: appends the (possibly redacted) text to `out`
    /// and records verdicts.
    pub(crate) fn apply(
        &self,
        text: &str,
        from: usize,
        to: usize,
        findings: &[Finding],
        out: &mut String,
        verdict: &mut Verdict,
    ) {
        let mut pos = from;
        for f in findings {
            let Some(rule) = self.rules.get(f.rule) else {
                continue;
            };
            verdict.record(rule);
            if rule.action == Action::Redact {
                out.push_str(text.get(pos..f.start).unwrap_or(""));
                out.push_str("[REDACTED:");
                out.push_str(&rule.id);
                out.push(']');
                pos = f.end;
            }
        }
        out.push_str(text.get(pos..to).unwrap_or(""));
    }

    /// Judges a whole text (a prompt, a complete response).
    pub fn check(&self, text: &str) -> Outcome {
        let findings = self.findings(text, 0);
        let mut verdict = Verdict::default();
        if findings.is_empty() {
            return Outcome {
                verdict,
                redacted_text: None,
            };
        }
        let mut out = String::with_capacity(text.len());
        self.apply(text, 0, text.len(), &findings, &mut out, &mut verdict);
        let redacted_text = (!verdict.redacted.is_empty()).then_some(out);
        Outcome {
            verdict,
            redacted_text,
        }
    }
}
