//! Hostile-client bounds shared by the control socket and the metrics endpoint: one
//! thread per client up to a cap, a request size bound, one deadline for the whole
//! request (a client trickling a byte a second does not reset it), and a write timeout
//! (a client that never reads cannot hold its thread).
//!
//! Contract: [`Gate::serve`] reads the request and answers it on the client's own thread.
//! When `max_clients` are being served, the client that has been sending its request the
//! longest is cut off (a slow-loris client loses its slot to a new one, and a client that
//! sends its request at once is always served); past twice the cap new clients are refused.
//! [`read_request`] returns the request bytes once `done` says they are complete, or an
//! error when the request grows past `max_request` bytes or the deadline passes.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The bounds of one kind of client.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request accepted, in bytes.
    pub max_request: usize,
    /// Time for the whole request to arrive, and for each write of the answer.
    pub deadline: Duration,
    /// Clients served at once; more are refused.
    pub max_clients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: 8192,
            deadline: Duration::from_secs(5),
            max_clients: 16,
        }
    }
}

/// A stream with read and write timeouts that another thread can cut off.
pub trait Conn: Read + Write + Send + 'static {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()>;
    /// A handle that shuts the stream down (both directions) when called.
    fn cutter(&self) -> Option<Box<dyn Fn() + Send>>;
}

/// TCP and Unix streams have the same timeout, clone and shutdown calls.
macro_rules! conn_for {
    ($($t:ty),*) => {$(
        impl Conn for $t {
            fn set_timeouts(
                &self,
                read: Option<Duration>,
                write: Option<Duration>,
            ) -> io::Result<()> {
                self.set_read_timeout(read)?;
                self.set_write_timeout(write)
            }
            fn cutter(&self) -> Option<Box<dyn Fn() + Send>> {
                let c = self.try_clone().ok()?;
                Some(Box::new(move || {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }))
            }
        }
    )*};
}

conn_for!(TcpStream, UnixStream);

/// Why a request was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    TooLarge,
    Timeout,
    Closed,
}

/// Reads until `done(bytes)` holds, within `limits.max_request` bytes and one deadline.
pub fn read_request(
    c: &mut impl Conn,
    limits: &Limits,
    done: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, RequestError> {
    let end = Instant::now() + limits.deadline;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RequestError::Timeout);
        }
        c.set_timeouts(Some(left), Some(limits.deadline))
            .map_err(|_| RequestError::Closed)?;
        match c.read(&mut chunk) {
            Ok(0) => return Err(RequestError::Closed),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if done(&buf) {
                    return Ok(buf);
                }
                if buf.len() > limits.max_request {
                    return Err(RequestError::TooLarge);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(RequestError::Timeout);
            }
            Err(_) => return Err(RequestError::Closed),
        }
    }
}

/// A client still sending its request: when it started, and how to cut it off.
/// A client still sending its request: id, since when, how to cut it off, and whether it
/// still counts as live (cleared by whoever stops counting it first: its eviction or its
/// thread's end, so an evicted client frees its place at once, not when its thread ends).
type Reading = (u64, Instant, Box<dyn Fn() + Send>, Arc<AtomicBool>);

/// Admits clients, each on its own thread, within a cap (see the module contract).
#[derive(Default)]
pub struct Gate {
    live: AtomicUsize,
    next_id: AtomicU64,
    reading: std::sync::Mutex<Vec<Reading>>,
    /// Clients refused (more than twice the cap at once).
    pub refused: AtomicU64,
    /// Clients cut off while sending their request, to make room for a new one.
    pub evicted: AtomicU64,
    /// Requests dropped: too large, too slow, or closed early.
    pub bad_requests: AtomicU64,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gate({} live)", self.live())
    }
}

impl Gate {
    /// Reads the client's request (within `limits`, complete when `done` holds) and calls
    /// `answer` with it, on a thread of the client's own.
    pub fn serve<C: Conn>(
        self: &Arc<Self>,
        mut c: C,
        limits: Limits,
        done: impl Fn(&[u8]) -> bool + Send + 'static,
        answer: impl FnOnce(C, Vec<u8>) + Send + 'static,
    ) {
        let max = limits.max_clients.max(1);
        let live = self.live.fetch_add(1, Ordering::AcqRel);
        if live >= 2 * max {
            self.live.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let counted = Arc::new(AtomicBool::new(true));
        {
            let mut r = self.reading.lock().unwrap_or_else(|e| e.into_inner());
            if live >= max && !r.is_empty() {
                // The client that has been sending its request the longest goes.
                let oldest = (0..r.len()).min_by_key(|&i| r[i].1).unwrap_or(0);
                let (_, _, cut, its) = r.swap_remove(oldest);
                cut();
                if its.swap(false, Ordering::AcqRel) {
                    self.live.fetch_sub(1, Ordering::AcqRel);
                }
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(cut) = c.cutter() {
                r.push((id, Instant::now(), cut, counted.clone()));
            }
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("espd-client".into())
            .spawn(move || {
                let req = read_request(&mut c, &limits, done);
                me.reading
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|x| x.0 != id);
                match req {
                    Ok(req) => answer(c, req),
                    Err(_) => {
                        me.bad_requests.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if counted.swap(false, Ordering::AcqRel) {
                    me.live.fetch_sub(1, Ordering::AcqRel);
                }
            });
        if spawned.is_err() {
            self.reading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|x| x.0 != id);
            self.live.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Clients being served now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn a_request_is_bounded_in_size_and_time() {
        let lim = Limits {
            max_request: 64,
            deadline: Duration::from_millis(300),
            max_clients: 2,
        };
        let nl = |b: &[u8]| b.contains(&b'\n');
        let (mut a, mut b) = pair();
        a.write_all(b"show tunnels\n").unwrap();
        assert_eq!(read_request(&mut b, &lim, nl).unwrap(), b"show tunnels\n");
        let (mut a, mut b) = pair();
        a.write_all(&[b'x'; 200]).unwrap();
        assert_eq!(read_request(&mut b, &lim, nl), Err(RequestError::TooLarge));
        // A byte every 100 ms never completes the line: the one deadline ends it.
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || {
            for _ in 0..10 {
                if a.write_all(b"s").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let start = Instant::now();
        assert_eq!(read_request(&mut b, &lim, nl), Err(RequestError::Timeout));
        assert!(start.elapsed() < Duration::from_millis(700));
        drop(b);
        t.join().unwrap();
    }

    /// Slow clients fill the cap; a prompt client still gets its answer (the slowest
    /// reader is cut off for it), and every thread ends.
    #[test]
    fn slow_clients_cannot_keep_a_prompt_one_out() {
        let g = Arc::new(Gate::default());
        let lim = Limits {
            max_request: 64,
            deadline: Duration::from_secs(10),
            max_clients: 3,
        };
        let nl = |b: &[u8]| b.contains(&b'\n');
        let mut slow = vec![];
        for _ in 0..3 {
            let (a, b) = pair();
            g.serve(b, lim, nl, |_, _| {});
            slow.push(a);
        }
        let (mut a, b) = pair();
        a.write_all(b"show\n").unwrap();
        g.serve(b, lim, nl, |mut c, req| {
            let _ = c.write_all(&req);
        });
        let mut got = [0u8; 5];
        a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"show\n");
        assert_eq!(g.evicted.load(Ordering::Relaxed), 1);
        drop(slow);
        for _ in 0..200 {
            if g.live() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(g.live(), 0);
    }
}
