//! TCP probes between namespaces: a server that answers every line with the address it saw
//! the connection come from (so a test reads the source NAT gave it), and a client connection
//! made inside a namespace that can be used from any thread (sockets keep their namespace).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::netns::try_enter_named;

/// A "who am I" server on `0.0.0.0:port` in a namespace, stopped on drop.
pub struct PeerEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PeerEcho {
    pub fn start(ns: &str, port: u16) -> Result<Self> {
        let listener = try_enter_named(ns, || TcpListener::bind(("0.0.0.0", port)))?
            .with_context(|| format!("binding port {port} in {ns}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        std::thread::spawn(move || answer(conn, peer));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn answer(conn: TcpStream, peer: SocketAddr) {
    let _ = conn.set_nonblocking(false);
    let Ok(mut w) = conn.try_clone() else { return };
    let mut lines = BufReader::new(conn).lines();
    while let Some(Ok(_)) = lines.next() {
        if writeln!(w, "{}", peer.ip()).is_err() {
            break;
        }
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection to a [`PeerEcho`] opened from inside namespace `ns`.
pub struct Probe {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Probe {
    pub fn connect(ns: &str, to: SocketAddr) -> Result<Self> {
        let s = try_enter_named(ns, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(3))
        })?
        .with_context(|| format!("connecting to {to} from {ns}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self {
            w: s.try_clone()?,
            r: BufReader::new(s),
        })
    }

    /// One exchange: the source address the server saw.
    pub fn ask(&mut self) -> Result<String> {
        writeln!(self.w, "who").context("sending")?;
        let mut line = String::new();
        self.r.read_line(&mut line).context("reading the answer")?;
        if line.is_empty() {
            bail!("connection closed");
        }
        Ok(line.trim().to_string())
    }
}

/// A fresh connection and one exchange: the source address the server saw.
pub fn source_seen(ns: &str, to: SocketAddr) -> Result<String> {
    Probe::connect(ns, to)?.ask()
}

/// Retries [`source_seen`] every 500 ms for up to `limit` (the path is being built).
pub fn wait_source_seen(ns: &str, to: SocketAddr, limit: Duration) -> Result<String> {
    let end = std::time::Instant::now() + limit;
    loop {
        match source_seen(ns, to) {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() > end => {
                return Err(e.context(format!("no answer from {to} within {limit:?}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}
