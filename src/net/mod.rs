//! The network side: one mio event loop per worker thread.
//!
//! Every worker binds its own listening socket on the same address with `SO_REUSEPORT`, so the
//! kernel spreads connections over the workers and no socket is handed between threads. Under
//! socket activation (systemd passes one listener, held across restarts so that no connection
//! is refused meanwhile) every worker polls a duplicate of that one socket instead, and whichever
//! wakes first accepts. A worker
//! owns its connections (a `Slab`), its segment writer, and its buffers; nothing on the request
//! path is shared between workers except the read-only [`NodeState`] and, at session start, the
//! session table. The main thread starts the workers, waits for the signal to stop, and then
//! wakes them through their `Waker`s.

pub mod conn;
pub mod prepare;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::Waker;
use socket2::{Domain, Protocol, Socket, Type};

use crate::log::SegmentService;
use crate::routes::NodeState;

/// Pending connections the kernel queues per listener before the worker accepts them.
const LISTEN_BACKLOG: i32 = 4096;

/// Running workers.
pub struct Server {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
    pool: prepare::Pool,
}

impl Server {
    /// Binds every worker's listener (or shares `inherited`, the socket systemd passed) and
    /// starts the workers; returns once all of them are accepting and have their segment writer
    /// open.
    pub fn start(
        node: Arc<NodeState>,
        segments: Arc<SegmentService>,
        inherited: Option<std::net::TcpListener>,
    ) -> io::Result<Server> {
        let workers = node.config.workers;
        let mut listeners = Vec::with_capacity(workers);
        match inherited {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                for _ in 1..workers {
                    listeners.push(Socket::from(listener.try_clone()?));
                }
                listeners.push(Socket::from(listener));
            }
            None => {
                let first = bind_reuseport(node.config.listen)?;
                let addr = local_addr(&first)?;
                listeners.push(first);
                for _ in 1..workers {
                    listeners.push(bind_reuseport(addr)?);
                }
            }
        }
        let addr = local_addr(&listeners[0])?;

        let pool = prepare::Pool::start(&node, node.config.prepare_threads)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(workers);
        let mut wakers = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        let max_connections_each = node.config.max_connections.div_ceil(workers).max(1);
        for (id, listener) in listeners.into_iter().enumerate() {
            let poll = mio::Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), worker::WAKER)?);
            let port = pool.port(Arc::clone(&waker));
            wakers.push(waker);
            let listener = mio::net::TcpListener::from_std(listener.into());
            let node = node.clone();
            let segments = segments.clone();
            let stopping = stopping.clone();
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn(move || {
                    let worker_id = id as u16;
                    let log = match segments.writer(worker_id) {
                        Ok(log) => log,
                        Err(e) => {
                            let _ = ready.send(Err(io::Error::other(e.to_string())));
                            return;
                        }
                    };
                    drop(segments);
                    let own = worker::Own {
                        poll,
                        listener,
                        log,
                        pool: port,
                    };
                    let worker =
                        worker::Worker::new(worker_id, own, node, stopping, max_connections_each);
                    match worker {
                        Ok(worker) => {
                            let _ = ready.send(Ok(()));
                            worker.run();
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                })?;
            threads.push(thread);
        }
        drop(ready_tx);
        let server = Server {
            addr,
            stopping,
            wakers,
            threads,
            pool,
        };
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    server.stop();
                    return Err(e);
                }
                Err(_) => {
                    server.stop();
                    return Err(io::Error::other("a worker died while starting"));
                }
            }
        }
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish (bounded by the shutdown timeout),
    /// closes every worker's segment, and returns when all workers have exited.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        // The workers' ports are gone with them: the preparation threads run out of work.
        self.pool.stop();
    }
}

fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "listener has no IP address"))
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}
