use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

const LIMITS: BodyLimits = BodyLimits {
    max_depth: 4,
    max_members: 3,
    blocking_bytes: 1 << 20,
};

/// Depth and largest object of a parsed value, the reference the scan must agree with.
fn reference(v: &Value) -> Shape {
    match v {
        Value::Object(m) => m.values().map(reference).fold(
            Shape {
                depth: 1,
                members: m.len(),
            },
            |acc, s| Shape {
                depth: acc.depth.max(s.depth + 1),
                members: acc.members.max(s.members),
            },
        ),
        Value::Array(a) => a.iter().map(reference).fold(
            Shape {
                depth: 1,
                members: 0,
            },
            |acc, s| Shape {
                depth: acc.depth.max(s.depth + 1),
                members: acc.members.max(s.members),
            },
        ),
        _ => Shape::default(),
    }
}

#[test]
fn limits_are_enforced_at_the_first_container_over_them() {
    assert_eq!(
        check(br#"{"a":[{"b":[1]}]}"#, &LIMITS),
        Ok(Shape {
            depth: 4,
            members: 1
        })
    );
    assert_eq!(
        check(br#"{"a":[{"b":[[1]]}]}"#, &LIMITS),
        Err(TooComplex::Depth(4))
    );
    assert_eq!(
        check(br#"{"a":1,"b":2,"c":{"d":1},"e":4}"#, &LIMITS),
        Err(TooComplex::Members(3))
    );
    // Brackets, colons and escaped quotes inside strings are text, not structure.
    assert_eq!(
        check(br#"{"a":"[[[[[{:::", "b\"[[[[[":":\\"}"#, &LIMITS),
        Ok(Shape {
            depth: 1,
            members: 2
        })
    );
    // An array holds any number of values; only objects' members count.
    let wide = format!("[{}]", vec!["1"; 10_000].join(","));
    assert!(check(wide.as_bytes(), &LIMITS).is_ok());
    // Garbage or truncation never panics.
    for body in [
        &b"\"abc\\"[..],
        b"}}}]]]",
        b"{\"a",
        b"\\",
        b"",
        b"{\"a\":\"\\",
    ] {
        let _ = check(body, &LIMITS);
    }
}

#[test]
fn the_scan_is_linear_in_the_body() {
    // 100,000 top-level members (about 1.5 MB), the shape that stalled everyone: refused
    // after the first members over the limit, and measured whole in one pass.
    let mut body = String::from("{\"model\":\"m\",\"messages\":[]");
    for i in 0..100_000 {
        body.push_str(&format!(",\"k{i}\":{i}"));
    }
    body.push('}');
    let started = Instant::now();
    assert_eq!(
        check(body.as_bytes(), &BodyLimits::default()),
        Err(TooComplex::Members(1000))
    );
    assert_eq!(measure(body.as_bytes()).members, 100_002);
    // Generous for a debug build on a loaded machine; the quadratic parse took seconds.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

proptest::proptest! {
    #![proptest_config(crate::fuzz::config())]

    #[test]
    fn the_scan_agrees_with_a_parser_on_valid_json(v in crate::fuzz::json_value()) {
        let text = serde_json::to_vec(&v).unwrap();
        proptest::prop_assert_eq!(measure(&text), reference(&v));
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        proptest::prop_assert_eq!(measure(&pretty), reference(&v));
    }

    #[test]
    fn the_scan_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = check(&bytes, &LIMITS);
        let _ = measure(&bytes);
    }
}
