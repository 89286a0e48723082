//! Bounded in-memory log of the API requests the mock received, served as JSON at
//! `GET /__mock/requests` (oldest first) and cleared by `DELETE /__mock/requests`.
//!
//! The hot path only takes a std `Mutex` to push one `Arc` (and pop the oldest); turning
//! entries into JSON happens when a test asks for them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::http::{HeaderMap, Method};
use bytes::Bytes;
use serde_json::{Map, Value};

/// How many requests the log keeps.
pub(crate) const CAPACITY: usize = 200;

/// Bodies larger than this are recorded as a note of their size only, so a benchmark with
/// large prompts does not pin hundreds of megabytes.
pub(crate) const MAX_RECORDED_BODY: usize = 1024 * 1024;

/// One recorded request, kept raw until it is asked for.
pub(crate) struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// `{"method","path","query","headers":{lowercase name: value},"body"}`; the body is the
    /// parsed JSON when it parses, else the (lossy UTF-8) text.
    fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for (name, value) in &self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            match headers.get_mut(name.as_str()) {
                // Repeated headers are joined the way HTTP allows folding them.
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_owned(), Value::String(value.into_owned()));
                }
            }
        }
        let body = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()));
        serde_json::json!({
            "method": self.method.as_str(),
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "body": body,
        })
    }
}

/// The ring of the last [`CAPACITY`] requests.
#[derive(Default)]
pub(crate) struct RequestLog {
    entries: Mutex<VecDeque<Arc<Recorded>>>,
}

impl RequestLog {
    /// Appends one request, evicting the oldest when full.
    pub(crate) fn record(&self, mut entry: Recorded) {
        if entry.body.len() > MAX_RECORDED_BODY {
            entry.body = Bytes::from(format!("<{} bytes, not recorded>", entry.body.len()));
        }
        self.push(Arc::new(entry));
    }

    fn push(&self, entry: Arc<Recorded>) {
        let evicted = {
            let mut entries = self.lock();
            let evicted = if entries.len() >= CAPACITY {
                entries.pop_front()
            } else {
                None
            };
            entries.push_back(entry);
            evicted
        };
        // The evicted entry is freed here, outside the lock.
        drop(evicted);
    }

    /// All recorded requests as JSON, oldest first.
    pub(crate) fn to_json(&self) -> Value {
        let snapshot: Vec<Arc<Recorded>> = self.lock().iter().cloned().collect();
        Value::Array(snapshot.iter().map(|entry| entry.to_json()).collect())
    }

    /// Forgets every recorded request.
    pub(crate) fn clear(&self) {
        let cleared = std::mem::take(&mut *self.lock());
        drop(cleared);
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Recorded>>> {
        // A panic while holding the lock cannot leave the deque inconsistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Recorded {
        Recorded {
            method: Method::POST,
            path: path.to_owned(),
            query: String::new(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{\"a\":1}"),
        }
    }

    #[test]
    fn keeps_the_last_capacity_entries_oldest_first() {
        let log = RequestLog::default();
        for index in 0..CAPACITY + 5 {
            log.record(entry(&format!("/{index}")));
        }
        let json = log.to_json();
        let entries = json.as_array().unwrap();
        assert_eq!(entries.len(), CAPACITY);
        assert_eq!(entries[0]["path"], "/5");
        assert_eq!(entries[CAPACITY - 1]["path"], format!("/{}", CAPACITY + 4));
        assert_eq!(entries[0]["body"], serde_json::json!({"a": 1}));
        log.clear();
        assert_eq!(log.to_json(), serde_json::json!([]));
    }

    #[test]
    fn large_bodies_are_noted_not_kept() {
        let log = RequestLog::default();
        let mut big = entry("/big");
        big.body = Bytes::from(vec![b'x'; MAX_RECORDED_BODY + 1]);
        log.record(big);
        let json = log.to_json();
        let body = json[0]["body"].as_str().unwrap();
        assert!(body.contains("not recorded"), "{body}");
    }
}
