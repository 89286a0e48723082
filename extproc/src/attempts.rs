//! The outcomes of failover attempts, kept for the request they belong to: each attempt's
//! upstream ext_proc stream records its status and latency here under the request's id, and
//! the request's own stream takes them (once) when it writes its log event. Process-wide and
//! bounded: at most [`MAX_REQUESTS`] requests, none older than [`MAX_AGE`], at most
//! [`MAX_PER_REQUEST`] attempts each; one short `std` mutex, never held across an await.
//! An attempt whose stream ran on another replica behind the same Envoy is not here: the
//! request's log event keeps status 0 and latency 0 for it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The most requests whose attempts are kept.
pub const MAX_REQUESTS: usize = 65_536;
/// How long a request's attempts are kept when nobody takes them.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// The most attempts kept for one request.
pub const MAX_PER_REQUEST: usize = 16;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Which attempt (1 for the first).
    pub number: usize,
    /// The attempt's target index in its model's targets.
    pub target: usize,
    /// The HTTP status of its response headers; 0 when it ended without any.
    pub status: u16,
    /// How it ended.
    pub ending: Ending,
    /// Milliseconds from the attempt's request to its response headers (to its end, for one
    /// that got none), rounded up: a seen attempt is never 0.
    pub latency_ms: u32,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its response headers came (whatever their status).
    Answered,
    /// Its stream ended without response headers after the per-try timeout.
    Timeout,
    /// Its stream ended without response headers otherwise (a reset).
    Reset,
}

impl Ending {
    /// The log event's `attempt_errors` entry.
    pub fn label(self) -> &'static str {
        match self {
            Ending::Answered => "",
            Ending::Timeout => "timeout",
            Ending::Reset => "reset",
        }
    }
}

/// The log event's `attempt_errors` entry of an attempt no stream of this replica saw.
pub const NOT_SEEN: &str = "not_seen";

impl Outcome {
    /// `elapsed` in whole milliseconds, rounded up (at least 1).
    pub fn millis(elapsed: Duration) -> u32 {
        u32::try_from(elapsed.as_micros().div_ceil(1000))
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

/// The attempts of one request.
#[derive(Debug)]
struct Entry {
    born: Instant,
    outcomes: Vec<Outcome>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Request ids in the order their entries were made (a taken one stays until it ages
    /// out or is pushed out: its `born` no longer matches).
    order: VecDeque<(Instant, String)>,
}

impl Inner {
    /// Drops the oldest entry of `order` (and its entry, when still the same).
    fn pop_oldest(&mut self) {
        if let Some((born, id)) = self.order.pop_front() {
            if self.entries.get(&id).is_some_and(|e| e.born == born) {
                self.entries.remove(&id);
            }
        }
    }

    /// Drops what is older than `max_age` at `now`.
    fn prune(&mut self, now: Instant, max_age: Duration) {
        while self
            .order
            .front()
            .is_some_and(|(born, _)| now.saturating_duration_since(*born) > max_age)
        {
            self.pop_oldest();
        }
    }
}

/// Attempt outcomes by request id, bounded by count and by age.
#[derive(Debug)]
pub struct Book {
    inner: Mutex<Inner>,
    max_requests: usize,
    max_age: Duration,
}

impl Book {
    /// A book of at most `max_requests` requests, each kept at most `max_age`.
    pub fn new(max_requests: usize, max_age: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_requests: max_requests.max(1),
            max_age,
        }
    }

    /// Records `outcome` for `request_id` (an empty id is not recorded).
    pub fn record(&self, request_id: &str, outcome: Outcome) {
        self.record_at(request_id, outcome, Instant::now());
    }

    fn record_at(&self, request_id: &str, outcome: Outcome, now: Instant) {
        if request_id.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.prune(now, self.max_age);
        if let Some(e) = inner.entries.get_mut(request_id) {
            if let Some(same) = e.outcomes.iter_mut().find(|o| o.number == outcome.number) {
                *same = outcome;
            } else if e.outcomes.len() < MAX_PER_REQUEST {
                e.outcomes.push(outcome);
            }
            return;
        }
        while inner.order.len() >= self.max_requests {
            inner.pop_oldest();
        }
        inner.order.push_back((now, request_id.to_owned()));
        inner.entries.insert(
            request_id.to_owned(),
            Entry {
                born: now,
                outcomes: vec![outcome],
            },
        );
    }

    /// Takes the outcomes recorded for `request_id`, in attempt order (empty when none are
    /// here); a second take finds nothing.
    pub fn take(&self, request_id: &str) -> Vec<Outcome> {
        self.take_at(request_id, Instant::now())
    }

    fn take_at(&self, request_id: &str, now: Instant) -> Vec<Outcome> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.prune(now, self.max_age);
        let mut outcomes = inner
            .entries
            .remove(request_id)
            .map(|e| e.outcomes)
            .unwrap_or_default();
        outcomes.sort_by_key(|o| o.number);
        outcomes
    }

    /// Whether attempt `number` of `request_id` has an outcome here.
    pub fn has(&self, request_id: &str, number: usize) -> bool {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .entries
            .get(request_id)
            .is_some_and(|e| e.outcomes.iter().any(|o| o.number == number))
    }

    /// How many requests have outcomes here.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }

    /// Whether no request has outcomes here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The process's book.
pub fn book() -> &'static Book {
    static BOOK: OnceLock<Book> = OnceLock::new();
    BOOK.get_or_init(|| Book::new(MAX_REQUESTS, MAX_AGE))
}

/// What the attempts after the first need of a failover request whose first attempt the
/// request's own ext_proc prepared (translated for the chain's first target): the client's
/// body, and the facts that name the chain. Kept under Envoy's `x-request-id` (the one id
/// every attempt's upstream ext_proc sees without Tollgate adding a header), taken when the
/// request ends.
#[derive(Debug)]
pub struct Pending {
    /// Tollgate's request id (the outcome book's key).
    pub request_id: String,
    /// The model whose chain this is.
    pub model: String,
    /// The chain's first target.
    pub first: usize,
    /// Whether a budget applies to the request's key.
    pub budget_lines: bool,
    /// The client's method and path (with its query).
    pub method: String,
    pub path: String,
    /// The body in the client's dialect, as the guardrails left it.
    pub body: Vec<u8>,
    /// When the request's ext_proc sent the first attempt on.
    pub sent_at: Instant,
}

/// The most bytes of client bodies [`Pendings`] holds at once: past it, a failover request
/// goes to its first target alone (logged, counted by the caller).
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// How long a pending request is kept when its stream never takes it (a lost stream).
pub const MAX_PENDING_AGE: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct PendingInner {
    entries: HashMap<String, (Instant, std::sync::Arc<Pending>)>,
    order: VecDeque<(Instant, String)>,
    bytes: usize,
}

impl PendingInner {
    fn pop_oldest(&mut self) {
        if let Some((born, id)) = self.order.pop_front() {
            if self.entries.get(&id).is_some_and(|(b, _)| *b == born) {
                if let Some((_, p)) = self.entries.remove(&id) {
                    self.bytes = self.bytes.saturating_sub(p.body.len());
                }
            }
        }
    }
}

/// Pending failover requests by Envoy's request id, bounded by count, bytes and age.
#[derive(Debug)]
pub struct Pendings {
    inner: Mutex<PendingInner>,
    max_requests: usize,
    max_bytes: usize,
    max_age: Duration,
}

impl Pendings {
    /// A store of at most `max_requests` requests and `max_bytes` of bodies.
    pub fn new(max_requests: usize, max_bytes: usize, max_age: Duration) -> Self {
        Self {
            inner: Mutex::new(PendingInner::default()),
            max_requests: max_requests.max(1),
            max_bytes,
            max_age,
        }
    }

    /// Keeps `pending` under `envoy_id`; `false` (nothing kept) when the id is empty or
    /// already used, or the bodies would pass the byte bound.
    pub fn put(&self, envoy_id: &str, pending: Pending) -> bool {
        self.put_at(envoy_id, pending, Instant::now())
    }

    fn put_at(&self, envoy_id: &str, pending: Pending, now: Instant) -> bool {
        if envoy_id.is_empty() {
            return false;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        while inner
            .order
            .front()
            .is_some_and(|(born, _)| now.saturating_duration_since(*born) > self.max_age)
        {
            inner.pop_oldest();
        }
        if inner.entries.contains_key(envoy_id)
            || inner.bytes.saturating_add(pending.body.len()) > self.max_bytes
        {
            return false;
        }
        while inner.order.len() >= self.max_requests {
            inner.pop_oldest();
        }
        inner.bytes += pending.body.len();
        inner.order.push_back((now, envoy_id.to_owned()));
        inner
            .entries
            .insert(envoy_id.to_owned(), (now, std::sync::Arc::new(pending)));
        true
    }

    /// The pending request under `envoy_id`, left in place for later attempts.
    pub fn get(&self, envoy_id: &str) -> Option<std::sync::Arc<Pending>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .entries
            .get(envoy_id)
            .map(|(_, p)| std::sync::Arc::clone(p))
    }

    /// Drops the pending request under `envoy_id` (its request ended).
    pub fn remove(&self, envoy_id: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, p)) = inner.entries.remove(envoy_id) {
            inner.bytes = inner.bytes.saturating_sub(p.body.len());
        }
        // Its `order` slot goes when it reaches the front (a removed id no longer matches);
        // the queue stays bounded by `max_requests` through `put`'s pop.
    }

    /// How many requests are pending, and their body bytes.
    pub fn len_bytes(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (inner.entries.len(), inner.bytes)
    }
}

/// The process's pending failover requests.
pub fn pending() -> &'static Pendings {
    static PENDING: OnceLock<Pendings> = OnceLock::new();
    PENDING.get_or_init(|| Pendings::new(MAX_REQUESTS, MAX_PENDING_BYTES, MAX_PENDING_AGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(number: usize, status: u16) -> Outcome {
        Outcome {
            number,
            target: number - 1,
            status,
            ending: if status == 0 {
                Ending::Reset
            } else {
                Ending::Answered
            },
            latency_ms: 5,
        }
    }

    #[test]
    fn a_request_s_attempts_are_taken_once_in_order() {
        let book = Book::new(8, MAX_AGE);
        book.record("r1", outcome(2, 503));
        book.record("r1", outcome(1, 500));
        book.record("r2", outcome(1, 200));
        book.record("", outcome(1, 200));
        let taken = book.take("r1");
        assert_eq!(
            taken
                .iter()
                .map(|o| (o.number, o.status))
                .collect::<Vec<_>>(),
            [(1, 500), (2, 503)]
        );
        assert!(book.take("r1").is_empty());
        assert_eq!(book.len(), 1);
        assert!(book.has("r2", 1) && !book.has("r2", 2) && !book.has("r1", 1));
        // A later report of the same attempt replaces the earlier one.
        book.record("r2", outcome(1, 0));
        assert_eq!(book.take("r2")[0].status, 0);
        assert!(book.is_empty());
    }

    #[test]
    fn the_book_is_bounded_by_requests_attempts_and_age() {
        let book = Book::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..5 {
            book.record_at(&format!("r{i}"), outcome(1, 500), t0);
        }
        // The two oldest were pushed out.
        assert_eq!(book.len(), 3);
        assert!(book.take_at("r0", t0).is_empty());
        assert!(book.take_at("r1", t0).is_empty());
        assert_eq!(book.take_at("r4", t0).len(), 1);
        // Attempts per request are capped.
        for n in 1..=MAX_PER_REQUEST + 4 {
            book.record_at("r3", outcome(n, 500), t0);
        }
        assert_eq!(book.take_at("r3", t0).len(), MAX_PER_REQUEST);
        // What nobody takes ages out.
        let book = Book::new(8, Duration::from_secs(60));
        book.record_at("old", outcome(1, 500), t0);
        book.record_at("late", outcome(1, 500), t0 + Duration::from_secs(30));
        assert_eq!(book.len(), 2);
        assert!(book.take_at("old", t0 + Duration::from_secs(61)).is_empty());
        assert_eq!(book.len(), 1);
        assert!(book
            .take_at("late", t0 + Duration::from_secs(91))
            .is_empty());
        assert!(book.is_empty());
        // The order queue never outgrows the bound, taken entries included.
        for i in 0..100 {
            book.record_at(&format!("x{i}"), outcome(1, 500), t0);
            book.take_at(&format!("x{i}"), t0);
        }
        assert!(book.inner.lock().unwrap().order.len() <= 8);
    }

    fn pending(body: usize) -> Pending {
        Pending {
            request_id: "t".into(),
            model: "m".into(),
            first: 0,
            budget_lines: false,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            body: vec![b'x'; body],
            sent_at: Instant::now(),
        }
    }

    #[test]
    fn pending_requests_are_bounded_by_count_bytes_and_age() {
        let p = Pendings::new(2, 100, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(p.put_at("a", pending(40), t0));
        // One id once; an empty id never.
        assert!(!p.put_at("a", pending(1), t0));
        assert!(!p.put_at("", pending(1), t0));
        assert!(p.put_at("b", pending(40), t0));
        // Past the byte bound: refused, nothing pushed out.
        assert!(!p.put_at("c", pending(30), t0));
        assert_eq!(p.len_bytes(), (2, 80));
        assert_eq!(p.get("a").unwrap().body.len(), 40);
        p.remove("a");
        assert!(p.get("a").is_none());
        assert_eq!(p.len_bytes(), (1, 40));
        // Past the count bound, the oldest goes.
        assert!(p.put_at("c", pending(10), t0));
        assert!(p.put_at("d", pending(10), t0));
        assert!(p.get("b").is_none());
        assert_eq!(p.len_bytes(), (2, 20));
        // Aged out.
        assert!(p.put_at("e", pending(10), t0 + Duration::from_secs(61)));
        assert_eq!(p.len_bytes(), (1, 10));
        assert!(p.inner.lock().unwrap().order.len() <= 2);
    }
}
