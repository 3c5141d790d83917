//! The `/metrics` HTTP endpoint, served by `hyper` (HTTP/1.x, one request per connection)
//! on a `tokio` current-thread runtime that owns one thread.
//!
//! Contract: [`serve_on`] answers `GET` (and `HEAD`) `/metrics` with the text the snapshot
//! function returns, other paths with 404 and other methods with 405. It is bounded against
//! hostile clients, as the control socket is ([`crate::serve`]):
//! - the request head must arrive whole within `Limits::deadline` (hyper's header-read
//!   timer, one deadline for the whole head: a byte a second does not reset it) and fit in
//!   `Limits::max_request` bytes (hyper's read-buffer bound, at least 8 KiB);
//! - a whole connection, answer included, lives at most twice the deadline, so a client that
//!   never reads its answer cannot hold a slot;
//! - at most `Limits::max_clients` connections are open at once: a new one cuts off the
//!   oldest, so slow clients cannot keep a prompt scrape out.
//!
//! Every client dropped for one of these reasons is counted in [`ClientStats`].

use crate::serve::Limits;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE as CT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::oneshot;

/// The Content-Type of the metrics text ([`crate::metrics::render`]).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoint did with its clients; every client it drops is counted here.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Requests answered (any status).
    pub served: AtomicU64,
    /// Connections cut off to make room for a new one (`max_clients` open already).
    pub evicted: AtomicU64,
    /// Connections ended by an error: a head too large or malformed, a head not complete
    /// within the deadline, or the client gone early.
    pub bad_requests: AtomicU64,
    /// Connections that outlived twice the deadline (e.g. a client that never reads).
    pub timed_out: AtomicU64,
    live: AtomicUsize,
}

impl ClientStats {
    /// Connections open now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

/// A running metrics endpoint; dropping it stops the thread and closes every connection.
pub struct Server {
    pub addr: SocketAddr,
    pub stats: Arc<ClientStats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "metrics::Server({})", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The text a scrape returns.
pub type Snapshot = Arc<dyn Fn() -> String + Send + Sync>;

/// [`serve_on`] a new listener on `addr` (e.g. `127.0.0.1:9100`; port 0 picks one).
pub fn serve(addr: &str, limits: Limits, snapshot: Snapshot) -> std::io::Result<Server> {
    serve_on(TcpListener::bind(addr)?, limits, Arc::default(), snapshot)
}

/// Serves the metrics on a listener bound already (`espd run` binds before it drops its
/// privileges), counting into `stats` (see the module contract).
pub fn serve_on(
    listener: TcpListener,
    limits: Limits,
    stats: Arc<ClientStats>,
    snapshot: Snapshot,
) -> std::io::Result<Server> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let (stop, stopped) = oneshot::channel();
    let st = stats.clone();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || rt.block_on(accept_loop(listener, limits, st, snapshot, stopped)))?;
    Ok(Server {
        addr,
        stats,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The open connections, oldest first: (id, the sender that cuts it off).
type Open = VecDeque<(u64, oneshot::Sender<()>)>;

async fn accept_loop(
    listener: TcpListener,
    limits: Limits,
    stats: Arc<ClientStats>,
    snapshot: Snapshot,
    mut stopped: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.deadline)
        .max_buf_size(limits.max_request.max(8192));
    let http = Arc::new(http);
    let max = limits.max_clients.max(1);
    let open: Arc<std::sync::Mutex<Open>> = Arc::default();
    let mut next_id = 0u64;
    loop {
        let conn = tokio::select! {
            _ = &mut stopped => return,
            c = listener.accept() => c,
        };
        let Ok((tcp, _)) = conn else { continue };
        let id = next_id;
        next_id += 1;
        let (cut, cut_off) = oneshot::channel::<()>();
        {
            let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
            while o.len() >= max {
                if let Some((_, oldest)) = o.pop_front() {
                    let _ = oldest.send(());
                    stats.evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
            o.push_back((id, cut));
        }
        stats.live.fetch_add(1, Ordering::AcqRel);
        let (http, stats, snapshot, open) =
            (http.clone(), stats.clone(), snapshot.clone(), open.clone());
        tokio::spawn(async move {
            let svc_stats = stats.clone();
            let svc = hyper::service::service_fn(move |req| {
                svc_stats.served.fetch_add(1, Ordering::Relaxed);
                let r = answer(&req, &snapshot);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let served = http.serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                r = tokio::time::timeout(2 * limits.deadline, served) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                },
                // Cut off for a newer client (counted where it was cut).
                _ = cut_off => {}
            }
            open.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(i, _)| *i != id);
            stats.live.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// The answer to one request.
fn answer(req: &Request<Incoming>, snapshot: &Snapshot) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "not found: try /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed on /metrics\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = reply(StatusCode::OK, snapshot());
    r.headers_mut()
        .insert(CT, hyper::header::HeaderValue::from_static(CONTENT_TYPE));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    fn get(addr: SocketAddr, req: &str) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let mut r = String::new();
        let _ = c.read_to_string(&mut r);
        r
    }

    fn server(limits: Limits) -> Server {
        serve(
            "127.0.0.1:0",
            limits,
            Arc::new(|| "x 1\n# EOF\n".to_string()),
        )
        .unwrap()
    }

    fn wait_until(f: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn answers_get_and_head_on_metrics_only() {
        let s = server(Limits::default());
        let r = get(s.addr, "GET /metrics HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
        assert!(
            r.contains(&format!("content-type: {CONTENT_TYPE}\r\n")),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\nx 1\n# EOF\n"), "{r}");
        let r = get(s.addr, "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("connection: close\r\n"), "no keep-alive: {r}");
        let r = get(s.addr, "HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let r = get(s.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        let r = get(s.addr, "POST /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("allow: GET, HEAD\r\n"), "{r}");
        let r = get(s.addr, "\x16\x03\x01garbage\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 400 Bad Request\r\n") || r.is_empty(),
            "{r}"
        );
        assert!(wait_until(
            || s.stats.bad_requests.load(Ordering::Relaxed) == 1
        ));
        assert_eq!(s.stats.served.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_head_too_large_or_too_slow_is_dropped_and_counted() {
        let s = server(Limits {
            max_request: 8192,
            deadline: Duration::from_millis(400),
            max_clients: 4,
        });
        let mut big = TcpStream::connect(s.addr).unwrap();
        let _ =
            big.write_all(format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(20_000)).as_bytes());
        // A byte every 100 ms never ends the head: the one deadline ends it.
        let mut slow = TcpStream::connect(s.addr).unwrap();
        let t0 = Instant::now();
        let mut cut = false;
        for b in b"GET /metrics HTTP/1.1\r\nHost: a\r\nX: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" {
            if slow.write_all(&[*b]).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            let mut x = [0u8; 1];
            slow.set_nonblocking(true).unwrap();
            if slow.read(&mut x).is_ok() {
                cut = true;
                break;
            }
            slow.set_nonblocking(false).unwrap();
        }
        assert!(
            cut && t0.elapsed() < Duration::from_secs(3),
            "{:?}",
            t0.elapsed()
        );
        assert!(wait_until(
            || s.stats.bad_requests.load(Ordering::Relaxed) == 2
        ));
        assert!(wait_until(|| s.stats.live() == 0));
        drop(big);
    }

    /// Clients that never finish their head fill the cap; a prompt scrape still gets its
    /// answer (the oldest is cut off for it), and a client that never reads its answer
    /// lives at most twice the deadline.
    #[test]
    fn slow_clients_cannot_keep_a_scrape_out() {
        let s = server(Limits {
            max_request: 8192,
            deadline: Duration::from_millis(500),
            max_clients: 3,
        });
        let mut slow = vec![];
        for _ in 0..3 {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(b"GET /met").unwrap();
            slow.push(c);
        }
        assert!(wait_until(|| s.stats.live() == 3));
        let t0 = Instant::now();
        let r = get(s.addr, "GET /metrics HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.0 200 OK"), "{r}");
        assert!(
            t0.elapsed() < Duration::from_millis(400),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(s.stats.evicted.load(Ordering::Relaxed), 1);
        assert!(
            wait_until(|| s.stats.live() == 0),
            "the deadline ends every slow client"
        );
        drop(slow);
        // Dropping the server ends its thread and closes its port.
        let addr = s.addr;
        drop(s);
        assert!(TcpStream::connect(addr).is_err());
    }
}
