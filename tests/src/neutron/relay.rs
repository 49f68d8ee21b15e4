//! A TCP relay between two namespaces' loopbacks, so that an agent in a host namespace reaches
//! RabbitMQ at 127.0.0.1:5672 of its own namespace while the broker listens only on the stack
//! namespace's loopback: no listener on a real interface, no route through the root namespace.
//! Sockets belong to the namespace of the thread that creates them, so the listener is made by
//! a thread inside the host namespace and each upstream connection by one inside the stack's;
//! plain threads then copy bytes both ways.

use std::{
    io,
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::netns::try_enter_named;

/// A running relay: 127.0.0.1:`port` in one namespace → 127.0.0.1:`to_port` in another. Drop
/// closes the listener and every relayed connection.
pub struct Relay {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
    pub port: u16,
}

impl Relay {
    /// Listens on 127.0.0.1:`port` inside namespace `from_ns`; each connection is relayed to
    /// 127.0.0.1:`to_port` inside namespace `to_ns`.
    pub fn start(from_ns: &str, port: u16, to_ns: &str, to_port: u16) -> Result<Self> {
        let listener = try_enter_named(from_ns, || TcpListener::bind(("127.0.0.1", port)))?
            .with_context(|| format!("relay: binding 127.0.0.1:{port} in {from_ns}"))?;
        // Polled, so that Drop can stop the acceptor without a connection to wake it.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2, to_ns) = (stop.clone(), conns.clone(), to_ns.to_string());
        let acceptor = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if let Err(e) = relay_one(client, &to_ns, to_port, &conns2) {
                            eprintln!("relay to {to_ns}:{to_port}: {e:#}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        eprintln!("relay accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        });
        Ok(Self {
            stop,
            conns,
            acceptor: Some(acceptor),
            port,
        })
    }
}

/// Connects upstream from inside `to_ns` and pumps both directions on two threads; when
/// either side ends, both are shut down.
fn relay_one(
    client: TcpStream,
    to_ns: &str,
    to_port: u16,
    conns: &Mutex<Vec<TcpStream>>,
) -> Result<()> {
    client.set_nonblocking(false)?;
    let upstream = try_enter_named(to_ns, || TcpStream::connect(("127.0.0.1", to_port)))?
        .with_context(|| format!("connecting to 127.0.0.1:{to_port} in {to_ns}"))?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if let Ok(mut c) = conns.lock() {
        // Closed connections pile up otherwise (an agent reconnecting many times).
        c.retain(|s| s.peer_addr().is_ok());
        c.push(client.try_clone()?);
        c.push(upstream.try_clone()?);
    }
    for (mut from, mut to) in [
        (client.try_clone()?, upstream.try_clone()?),
        (upstream, client),
    ] {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    Ok(())
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        if let Ok(c) = self.conns.lock() {
            for s in c.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}
