//! Server-sent-events response bodies as OpenAI streams them: each event is `data: <json>\n\n`
//! sent as its own body frame, with the chunk delay between consecutive events.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{self, Stream, StreamExt};
use serde::Serialize;

/// The event that ends an OpenAI stream.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// One `data: <json>\n\n` event.
pub(crate) fn event(payload: &impl Serialize) -> Bytes {
    let mut buf = BytesMut::with_capacity(256).writer();
    buf.get_mut().put_slice(b"data: ");
    // Serializing our own plain structs into memory cannot fail; fall back to an empty object
    // rather than dropping the event if it ever did.
    if serde_json::to_writer(&mut buf, payload).is_err() {
        buf.get_mut().put_slice(b"{}");
    }
    buf.get_mut().put_slice(b"\n\n");
    buf.into_inner().freeze()
}

/// The events as a stream, one item (one body frame) per event, `delay` between them.
pub(crate) fn paced(events: Vec<Bytes>, delay: Duration) -> impl Stream<Item = Bytes> + Send {
    stream::unfold(
        (events.into_iter(), true),
        move |(mut events, first)| async move {
            let event = events.next()?;
            if !first {
                tokio::time::sleep(delay).await;
            }
            Some((event, (events, false)))
        },
    )
}

/// The delay between the chunks of an endless stream when none is set.
const ENDLESS_DEFAULT_DELAY: Duration = Duration::from_millis(100);

/// `first`, then `repeated` over and over, never ending, `delay` (at least 1 ms; 100 ms when
/// zero) between events.
pub(crate) fn endless(
    first: Bytes,
    repeated: Vec<Bytes>,
    delay: Duration,
) -> impl Stream<Item = Bytes> + Send {
    let delay = if delay.is_zero() {
        ENDLESS_DEFAULT_DELAY
    } else {
        delay.max(Duration::from_millis(1))
    };
    let rest = stream::iter(repeated)
        .cycle()
        .then(move |event| async move {
            tokio::time::sleep(delay).await;
            event
        });
    stream::once(async move { first }).chain(rest)
}

/// A `200 text/event-stream` response streaming `events`.
pub(crate) fn response(events: Vec<Bytes>, delay: Duration) -> Response {
    let body = if delay.is_zero() {
        Body::from_stream(stream::iter(events.into_iter().map(Ok::<_, Infallible>)))
    } else {
        Body::from_stream(paced(events, delay).map(Ok::<_, Infallible>))
    };
    stream_response(body)
}

/// A `200 text/event-stream` response that never ends: `first`, then `repeated` forever.
pub(crate) fn endless_response(first: Bytes, repeated: Vec<Bytes>, delay: Duration) -> Response {
    stream_response(Body::from_stream(
        endless(first, repeated, delay).map(Ok::<_, Infallible>),
    ))
}

fn stream_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paced_yields_one_item_per_event_with_the_delay_between() {
        let events = vec![
            Bytes::from_static(b"data: 1\n\n"),
            Bytes::from_static(b"data: 2\n\n"),
            Bytes::from_static(DONE),
        ];
        let start = tokio::time::Instant::now();
        let mut stream = std::pin::pin!(paced(events.clone(), Duration::from_millis(10)));
        let mut seen = Vec::new();
        while let Some(item) = stream.next().await {
            seen.push((item, start.elapsed()));
        }
        assert_eq!(seen.len(), 3);
        for (index, (item, at)) in seen.iter().enumerate() {
            assert_eq!(item, &events[index]);
            assert_eq!(*at, Duration::from_millis(10 * index as u64));
        }
    }

    #[test]
    fn event_is_data_line_and_blank_line() {
        let bytes = event(&serde_json::json!({"a": 1}));
        assert_eq!(&bytes[..], b"data: {\"a\":1}\n\n");
    }
}
