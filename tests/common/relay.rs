//! A TCP relay the test process owns, for servers a test kills and starts again while their
//! clients keep one address: the relay listens on a port it bound itself (port 0, never released
//! while the relay lives) and forwards each connection to wherever the server listens now. A
//! restarted server binds port 0 again and reports its new address to [`Relay::set_target`];
//! nobody has to get the old port back, which another process may have taken meanwhile.
//!
//! While no server is set (or it refuses), the relay accepts and closes at once: the client sees
//! its connection end, as it would see a refusal. When the server dies mid-connection, the
//! client's connection ends too. Shared by the end-to-end harness and `logger/tests` (through
//! `tests/common/clickhouse.rs`).

// Test support: failing loudly is the point here.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    /// A relay on `listen` (`127.0.0.1:0` for a port of its own), forwarding to `target`.
    pub fn start(listen: &str, target: Option<SocketAddr>) -> Relay {
        let listener = TcpListener::bind(listen)
            .unwrap_or_else(|e| panic!("the relay cannot listen on {listen}: {e}"));
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (target, stop) = (Arc::clone(&target), Arc::clone(&stop));
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let to = *target.lock().unwrap();
                    std::thread::spawn(move || relay(client, to));
                }
            })
        };
        Relay {
            addr,
            target,
            stop,
            accept: Some(accept),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go from now on (`None`: nowhere, they are closed at once).
    pub fn set_target(&self, target: Option<SocketAddr>) {
        *self.target.lock().unwrap() = target;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Copies bytes both ways until the server's side ends; then ends both connections.
fn relay(client: TcpStream, to: Option<SocketAddr>) {
    let Some(server) = to.and_then(|to| TcpStream::connect(to).ok()) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    // No Nagle delay on either leg: gRPC and HTTP exchanges are many small writes.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client_in), Ok(server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Client → server: when the client stops sending, tell the server so (half-close).
    let upstream = std::thread::spawn(move || {
        let _ = copy(client_in, &server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    // Server → client: when the server's side ends (an answer, a close or a crash), so does
    // the client's connection.
    let _ = copy(server.try_clone().unwrap(), &client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = upstream.join();
}

fn copy(mut from: TcpStream, mut to: &TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}
