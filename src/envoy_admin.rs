//! A small blocking client for Envoy's admin endpoint (HTTP/1.1; Envoy answers HTTP/1.0 with
//! 426), for whoever starts Envoy with port 0 for its listener and admin (`tollgate up`, the
//! end-to-end tests): Envoy started with `--admin-address-path FILE` writes its admin address
//! there, and the admin's `/listeners?format=json` says where the listener is bound.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// The longest one admin request may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// `GET path` on the admin endpoint at `admin`: the status and the (de-chunked) body.
pub fn get(admin: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&admin, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    parse_answer(&answer).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP/1.1 answer from Envoy's admin at {admin}{path}"),
        )
    })
}

/// Status and body of a whole HTTP/1.1 answer (a chunked body is de-chunked).
fn parse_answer(answer: &[u8]) -> Option<(u16, String)> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..split]).ok()?;
    let mut body = &answer[split + 4..];
    let status = head.get(9..12)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Some((status, String::from_utf8_lossy(body).into_owned()));
    }
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some((status, String::from_utf8_lossy(&out).into_owned()));
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The admin address Envoy wrote to its `--admin-address-path` file; `None` until it has
/// (Envoy writes the file in place, so an empty or partial file means not yet).
pub fn admin_address(file: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The address Envoy's first listener is bound to, read from its admin endpoint's
/// `/listeners?format=json` answer (the bootstraps Tollgate renders have one listener).
/// `None` until it is bound (a listener given port 0 shows port 0 before that).
pub fn listener_address(listeners_json: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(listeners_json).ok()?;
    let socket = &v["listener_statuses"][0]["local_address"]["socket_address"];
    let ip: std::net::IpAddr = socket["address"].as_str()?.parse().ok()?;
    let port = u16::try_from(socket["port_value"].as_u64()?).ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}

/// Once the Envoy started with `--admin-address-path admin_file` is ready (`/ready` answers
/// 200): its admin address and its listener's. `None` while it is not.
pub fn ready(admin_file: &Path) -> Option<(SocketAddr, SocketAddr)> {
    let admin = admin_address(admin_file)?;
    let (status, _) = get(admin, "/ready").ok()?;
    if status != 200 {
        return None;
    }
    let (status, listeners) = get(admin, "/listeners?format=json").ok()?;
    if status != 200 {
        return None;
    }
    Some((admin, listener_address(&listeners)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_address_is_read_from_envoys_admin_answer() {
        // As Envoy 1.40 answers `/listeners?format=json`.
        let bound = r#"{"listener_statuses": [{"name": "llm",
            "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": 40295}}}]}"#;
        assert_eq!(
            listener_address(bound),
            Some("127.0.0.1:40295".parse().unwrap())
        );
        let unbound = bound.replace("40295", "0");
        assert_eq!(listener_address(&unbound), None);
        assert_eq!(listener_address(r#"{"listener_statuses": []}"#), None);
        assert_eq!(listener_address("not json"), None);
    }

    #[test]
    fn chunked_and_plain_answers_are_read_whole() {
        // As Envoy 1.40's admin answers `GET /ready` over HTTP/1.1.
        let chunked = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n5\r\nLIVE\n\r\n3\r\nab\n\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked), Some((200, "LIVE\nab\n".to_owned())));
        let plain =
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 16\r\n\r\nPRE_INITIALIZING";
        assert_eq!(
            parse_answer(plain),
            Some((503, "PRE_INITIALIZING".to_owned()))
        );
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nLI"),
            None
        );
        assert_eq!(parse_answer(b"garbage"), None);
    }

    #[test]
    fn the_admin_address_file_counts_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.address");
        assert_eq!(admin_address(&file), None);
        std::fs::write(&file, "").unwrap();
        assert_eq!(admin_address(&file), None);
        std::fs::write(&file, "127.0.0.1:39037").unwrap();
        assert_eq!(
            admin_address(&file),
            Some("127.0.0.1:39037".parse().unwrap())
        );
    }
}
