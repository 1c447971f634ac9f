//! A TCP proxy whose link can be cut and restored: the demo's stand-in for a
//! network that fails. [`Proxy::down`] drops every proxied connection (the
//! client sees its connection close) and refuses new ones until
//! [`Proxy::up`] listens again on the same address.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy's tasks: the acceptor (while up) and one per connection.
#[derive(Default)]
struct Tasks {
    accept: Option<JoinHandle<()>>,
    conns: Vec<JoinHandle<()>>,
}

/// A loopback TCP proxy to one upstream address.
pub(super) struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Tasks>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub(super) async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Self { addr: listener.local_addr()?, upstream, tasks: Arc::default() };
        proxy.listen(listener);
        Ok(proxy)
    }

    /// The address clients dial.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link: every proxied connection closes (both ways) and new
    /// connections are refused.
    pub(super) fn down(&self) {
        let mut tasks = lock(&self.tasks);
        if let Some(accept) = tasks.accept.take() {
            accept.abort();
        }
        for conn in tasks.conns.drain(..) {
            conn.abort();
        }
    }

    /// Restores the link: accepts again on the same address.
    pub(super) async fn up(&self) -> io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.listen(listener);
        Ok(())
    }

    fn listen(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let upstream = self.upstream;
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut tasks = lock(&tasks);
                tasks.conns.retain(|c| !c.is_finished());
                tasks.conns.push(conn);
            }
        });
        lock(&self.tasks).accept = Some(accept);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

/// The task list; a panic elsewhere cannot leave it inconsistent, so a
/// poisoned lock is still usable.
fn lock(tasks: &Mutex<Tasks>) -> MutexGuard<'_, Tasks> {
    tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
