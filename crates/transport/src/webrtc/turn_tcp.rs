//! TURN over a stream: `turn:host:port?transport=tcp` (TCP) and
//! `turns:host:port` (TLS over TCP).
//!
//! Only the hop to the TURN server is a stream; the relayed address is still
//! UDP (RFC 5766 §2.1, `REQUESTED-TRANSPORT` = UDP; RFC 6062 TCP allocations
//! are not used). The `rtc-turn` client stays the same sans-IO state as over
//! UDP; this module only carries its messages: STUN messages and ChannelData
//! messages back to back on the stream, each one found by its own length
//! field (a STUN message: a 20-byte header plus its length; ChannelData: a
//! 4-byte header plus its length, padded to a multiple of four over a stream,
//! RFC 5766 §11.5).
//!
//! The driver owns each stream and moves it forward from its own poll loop,
//! next to its UDP sockets: it connects (and runs the TLS handshake), writes
//! what the driver queued and reads whole messages, with no task or channel
//! in between.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Bytes queued for writing before new messages are dropped (as a full UDP
/// socket would drop them): the TURN client's transactions and ICE recover.
const WRITE_LIMIT: usize = 256 << 10;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 << 10;
/// Connecting (TCP and the TLS handshake) gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a TURN server is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// The default port of the scheme (`turns:` 5349, else 3478).
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5349,
            Transport::Udp | Transport::Tcp => 3478,
        }
    }
}

/// A TURN (or STUN) URL split into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IceUrl {
    /// A TURN server (else STUN).
    pub(crate) turn: bool,
    pub(crate) transport: Transport,
    /// `host:port`, the port defaulted by scheme.
    pub(crate) host_port: String,
    /// The host alone (the TLS server name).
    pub(crate) host: String,
}

/// Parses `stun:`, `turn:` and `turns:` URLs (RFC 7064/7065). `None` for
/// other schemes and for what no transport here carries (`turns:` over UDP,
/// i.e. DTLS, and STUN over TCP).
pub(crate) fn parse_url(url: &str) -> Option<IceUrl> {
    let (scheme, rest) = url.split_once(':')?;
    let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
    let transport_param = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("transport"))
        .map(|(_, v)| v.to_ascii_lowercase());
    let (turn, transport) = match (scheme.to_ascii_lowercase().as_str(), transport_param.as_deref()) {
        ("stun", None | Some("udp")) => (false, Transport::Udp),
        ("turn", None | Some("udp")) => (true, Transport::Udp),
        ("turn", Some("tcp")) => (true, Transport::Tcp),
        ("turns", None | Some("tcp")) => (true, Transport::Tls),
        _ => return None,
    };
    // `host`, `host:port`, `[v6]`, `[v6]:port`.
    let (host, port) = if let Some(v6) = address.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match address.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (address.to_owned(), None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port: u16 = match port {
        Some(p) => p.parse().ok()?,
        None => transport.default_port(),
    };
    let host_port = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    Some(IceUrl { turn, transport, host_port, host })
}

const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// Why a stream's bytes are not TURN messages.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadFrame(u8);

/// Takes the first whole message off `buf`: `Ok(None)` while it is
/// incomplete. A ChannelData message keeps its padding (its length field
/// says where the data ends).
pub(crate) fn next_message(buf: &mut BytesMut) -> Result<Option<BytesMut>, BadFrame> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let length = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let whole = match buf[0] {
        // STUN: the magic cookie at 4..8; the length excludes the 20-byte
        // header and is a multiple of 4.
        0x00..=0x3F if buf.len() < 8 => return Ok(None),
        0x00..=0x3F if length % 4 == 0 && buf[4..8] == STUN_COOKIE => 20 + length,
        // ChannelData: channel numbers 0x4000..=0x4FFF (RFC 8656 §12).
        0x40..=0x4F => 4 + length.next_multiple_of(4),
        _ => return Err(BadFrame(buf[0])),
    };
    if buf.len() < whole {
        buf.reserve(whole - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(whole)))
}

/// What [`TurnStream::poll_incoming`] hands the driver.
pub(crate) enum Incoming {
    /// One whole TURN message from the server.
    Message(BytesMut),
    /// The stream is gone (could not connect, TLS refused, closed, or
    /// carried something that is not TURN); nothing follows.
    Closed(String),
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Connecting: the TCP connection and, for `turns:`, the TLS handshake.
type Connecting = Pin<Box<dyn Future<Output = Result<Box<dyn Stream>, String>> + Send>>;

enum State {
    Connecting(Connecting),
    Open(Box<dyn Stream>),
    /// Ended, and the driver was told why.
    Closed,
}

/// One TURN server reached over TCP or TLS. The driver owns it and moves it
/// forward from its own poll loop ([`poll_streams`], [`write_streams`]):
/// there is no task of its own and no channel between it and the driver, so
/// a message costs no task wake-up in either direction.
pub(crate) struct TurnStream {
    pub(crate) server: SocketAddr,
    state: State,
    /// Bytes read and not yet taken off as whole messages.
    read: BytesMut,
    /// Whole messages queued and not yet written (at most [`WRITE_LIMIT`]).
    write: BytesMut,
    /// Written since the last flush (TLS may hold a record back).
    unflushed: bool,
}

/// The TLS settings of `turns:` servers: the web PKI roots, the PEM file
/// named by `SSL_CERT_FILE` (as OpenSSL-based clients read it) and `ca_pem`.
pub(crate) fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut add = |pem: &[u8], what: &str| -> Result<(), String> {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("bad CA certificate in {what}: {e}"))?;
            roots.add(cert).map_err(|e| format!("bad CA certificate in {what}: {e}"))?;
        }
        Ok(())
    };
    if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
        match std::fs::read(&path) {
            Ok(pem) => add(&pem, &path.to_string_lossy())?,
            Err(e) => tracing::warn!(path = %path.to_string_lossy(), "SSL_CERT_FILE not read: {e}"),
        }
    }
    if let Some(pem) = ca_pem {
        add(pem, "the configured CA")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl TurnStream {
    /// A stream to `server` (TLS when `tls` has a config, checking the
    /// certificate against `host`). It connects once polled; messages
    /// queued meanwhile wait.
    pub(crate) fn connect(server: SocketAddr, host: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let host = host.to_owned();
        let connecting: Connecting = Box::pin(async move {
            tokio::time::timeout(CONNECT_TIMEOUT, open(server, &host, tls))
                .await
                .map_err(|_| format!("connecting to {server} took over {CONNECT_TIMEOUT:?}"))?
        });
        Self {
            server,
            state: State::Connecting(connecting),
            read: BytesMut::new(),
            write: BytesMut::new(),
            unflushed: false,
        }
    }

    /// Queues one whole message; false (dropped, as a full UDP socket
    /// would) when the queue is full or the stream is gone. The bytes go out
    /// at the next [`write_streams`] or poll.
    pub(crate) fn send(&mut self, message: &[u8]) -> bool {
        if matches!(self.state, State::Closed) || self.write.len() + message.len() > WRITE_LIMIT {
            return false;
        }
        self.write.extend_from_slice(message);
        true
    }

    /// The next message or the stream's end (`Pending` after the end).
    /// Writes what is queued first.
    pub(crate) fn poll_incoming(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        if let State::Connecting(connecting) = &mut self.state {
            match connecting.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(io)) => self.state = State::Open(io),
                Poll::Ready(Err(e)) => return self.close(e),
            }
        }
        if let Err(e) = self.poll_write(cx) {
            return self.close(e);
        }
        match self.poll_message(cx) {
            Poll::Ready(Ok(message)) => Poll::Ready(Incoming::Message(message)),
            Poll::Ready(Err(reason)) => self.close(reason),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next whole message off the open stream; `Err` says why the
    /// stream ends.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<BytesMut, String>> {
        let State::Open(io) = &mut self.state else { return Poll::Pending };
        loop {
            match next_message(&mut self.read) {
                Ok(Some(message)) => return Poll::Ready(Ok(message)),
                Ok(None) => {}
                Err(BadFrame(b)) => return Poll::Ready(Err(format!("not a TURN message (first byte {b:#04x})"))),
            }
            self.read.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(io.as_mut()), cx, &mut self.read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if self.read.is_empty() => return Poll::Ready(Err("closed by the server".into())),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err("closed in the middle of a message".into())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("read: {e}"))),
            }
        }
    }

    /// Writes (and flushes) as much of the queue as the socket takes now.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), String> {
        let State::Open(io) = &mut self.state else { return Ok(()) };
        while !self.write.is_empty() {
            match Pin::new(io.as_mut()).poll_write(cx, &self.write) {
                Poll::Ready(Ok(0)) => return Err("write: the stream takes no more".into()),
                Poll::Ready(Ok(n)) => {
                    self.write.advance(n);
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Err(format!("write: {e}")),
                Poll::Pending => return Ok(()),
            }
        }
        if self.unflushed {
            match Pin::new(io.as_mut()).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(format!("write: {e}")),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    fn close(&mut self, reason: String) -> Poll<Incoming> {
        self.state = State::Closed;
        self.write = BytesMut::new();
        self.read = BytesMut::new();
        Poll::Ready(Incoming::Closed(reason))
    }
}

/// Connects, and runs the TLS handshake for `turns:`.
async fn open(
    server: SocketAddr,
    host: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Stream>, String> {
    let tcp = TcpStream::connect(server).await.map_err(|e| format!("TCP connect to {server}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let Some(config) = tls else { return Ok(Box::new(tcp)) };
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("bad TLS server name {host:?}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {server} ({host}): {e}"))?;
    Ok(Box::new(tls))
}

/// The first stream with something to hand over: (index, what). Every
/// stream's queued writes go out on the way.
pub(crate) fn poll_streams(streams: &mut [TurnStream], cx: &mut Context<'_>) -> Poll<(usize, Incoming)> {
    for (i, s) in streams.iter_mut().enumerate() {
        if let Poll::Ready(incoming) = s.poll_incoming(cx) {
            return Poll::Ready((i, incoming));
        }
    }
    Poll::Pending
}

/// [`poll_streams`] without waiting. The next [`poll_streams`] registers
/// the driver's waker again.
pub(crate) fn try_streams(streams: &mut [TurnStream]) -> Option<(usize, Incoming)> {
    match poll_streams(streams, &mut Context::from_waker(Waker::noop())) {
        Poll::Ready(found) => Some(found),
        Poll::Pending => None,
    }
}

/// Writes what the driver just queued, now rather than at its next poll.
/// A failed write leaves the queue as it was: the next poll writes again,
/// fails the same way and closes the stream with that reason.
pub(crate) fn write_streams(streams: &mut [TurnStream]) {
    let mut cx = Context::from_waker(Waker::noop());
    for s in streams.iter_mut().filter(|s| !s.write.is_empty()) {
        if let Err(e) = s.poll_write(&mut cx) {
            tracing::trace!(server = %s.server, "TURN stream write failed: {e}");
        }
    }
}

/// The ICE priority of a relayed candidate (RFC 8445 §5.1.2.1, type
/// preference 0 for relays): a relay reached over a stream gets a lower
/// local preference than one reached over UDP, so that ICE prefers the UDP
/// one when both work (a stream adds head-of-line blocking under loss).
pub(crate) fn relay_priority(over_stream: bool) -> u32 {
    let local_preference: u32 = if over_stream { 32_767 } else { 65_535 };
    (local_preference << 8) + (256 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn urls() {
        let u = parse_url("turn:10.0.0.1:3478?transport=tcp").unwrap();
        assert_eq!((u.turn, u.transport, u.host_port.as_str()), (true, Transport::Tcp, "10.0.0.1:3478"));
        let u = parse_url("turns:turn.example.com").unwrap();
        assert_eq!(
            (u.transport, u.host_port.as_str(), u.host.as_str()),
            (Transport::Tls, "turn.example.com:5349", "turn.example.com")
        );
        let u = parse_url("turns:turn.example.com:443?transport=tcp").unwrap();
        assert_eq!((u.transport, u.host_port.as_str()), (Transport::Tls, "turn.example.com:443"));
        let u = parse_url("turn:example.com").unwrap();
        assert_eq!((u.transport, u.host_port.as_str()), (Transport::Udp, "example.com:3478"));
        let u = parse_url("stun:[::1]:3479").unwrap();
        assert_eq!((u.turn, u.host_port.as_str(), u.host.as_str()), (false, "[::1]:3479", "::1"));
        assert_eq!(parse_url("turns:example.com?transport=udp"), None, "DTLS is not carried");
        assert_eq!(parse_url("stun:example.com?transport=tcp"), None);
        assert_eq!(parse_url("http://example.com"), None);
        assert_eq!(parse_url("turn:example.com:notaport"), None);
        assert_eq!(parse_url("turn::3478"), None);
    }

    fn stun(len: u16) -> Vec<u8> {
        let mut m = vec![0x01, 0x01];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend(std::iter::repeat_n(9, usize::from(len)));
        m
    }

    #[test]
    fn frames_stun_and_padded_channel_data_in_any_split() {
        let mut wire = stun(8);
        // ChannelData on channel 0x4001 with 5 bytes of data and 3 of padding.
        wire.extend_from_slice(&[0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        wire.extend(stun(0));
        for cut in 0..wire.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                buf.extend_from_slice(part);
                while let Some(m) = next_message(&mut buf).unwrap() {
                    got.push(m.len());
                }
            }
            assert_eq!(got, vec![28, 12, 20], "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn refuses_what_is_not_turn() {
        // A TLS record (a `turns:` server reached over plain TCP), a STUN
        // length that is not a multiple of 4, a reserved channel number.
        let bad: [&[u8]; 4] = [
            &[0x16, 0x03, 0x03, 0x00, 0x5a, 0x02, 0x00, 0x00],
            &[0x00, 0x01, 0x00, 0x03, 0x21, 0x12, 0xA4, 0x42],
            b"SSH-2.0-",
            &[0x80, 0, 0, 0],
        ];
        for bad in bad {
            assert!(next_message(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
    }

    /// Polls `stream` to its end: the lengths of the messages it handed
    /// over, and why it ended.
    async fn drain(stream: &mut TurnStream) -> (Vec<usize>, String) {
        let mut lens = Vec::new();
        loop {
            match std::future::poll_fn(|cx| stream.poll_incoming(cx)).await {
                Incoming::Message(m) => lens.push(m.len()),
                Incoming::Closed(reason) => return (lens, reason),
            }
        }
    }

    /// A TURN server stand-in on a real TCP socket: what the driver queues
    /// arrives whole (also what it queues before the connection is up), and
    /// what the server writes comes back as messages, then the end of the
    /// stream.
    #[tokio::test]
    async fn carries_messages_over_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut got = vec![0; 24 + 20];
            conn.read_exact(&mut got).await.unwrap();
            let mut reply = stun(0);
            reply.extend_from_slice(&[0x40, 0x00, 0x00, 0x01, 0xAA, 0, 0, 0]);
            conn.write_all(&reply[..10]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            conn.write_all(&reply[10..]).await.unwrap();
            got
        });
        let mut stream = TurnStream::connect(server, "127.0.0.1", None);
        assert!(stream.send(&stun(4)));
        assert!(stream.send(&stun(0)));
        let (lens, reason) = drain(&mut stream).await;
        assert_eq!((lens, reason.as_str()), (vec![20, 8], "closed by the server"));
        let mut sent = stun(4);
        sent.extend(stun(0));
        assert_eq!(peer.await.unwrap(), sent);
        assert!(!stream.send(&stun(0)), "a closed stream takes nothing");
    }

    /// Messages queued past the write limit are dropped, not buffered.
    #[tokio::test]
    async fn the_write_queue_is_bounded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut stream = TurnStream::connect(listener.local_addr().unwrap(), "127.0.0.1", None);
        let big = [0x40, 0x00, 0xFF, 0xFC].into_iter().chain(std::iter::repeat_n(0, 0xFFFC)).collect::<Vec<u8>>();
        let taken = (0..10).filter(|_| stream.send(&big)).count();
        assert_eq!(taken, WRITE_LIMIT / big.len());
    }

    /// The server's side of a test stream: accepts one connection, writes
    /// `bytes` and closes it.
    fn server_writing(listener: tokio::net::TcpListener, bytes: Vec<u8>) {
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.write_all(&bytes).await.unwrap();
        });
    }

    #[tokio::test]
    async fn garbage_from_the_server_ends_the_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut stream = TurnStream::connect(listener.local_addr().unwrap(), "127.0.0.1", None);
        // The start of a TLS ServerHello (a `turns:` server taken for a `turn:` one).
        server_writing(listener, vec![0x16, 0x03, 0x03, 0x00, 0x5a, 0x02, 0x00, 0x00, 0x56]);
        let (lens, reason) = drain(&mut stream).await;
        assert!(lens.is_empty() && reason.contains("not a TURN message"), "{lens:?} {reason}");
    }

    #[tokio::test]
    async fn a_message_cut_short_by_the_end_of_the_stream_is_reported() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut stream = TurnStream::connect(listener.local_addr().unwrap(), "127.0.0.1", None);
        server_writing(listener, stun(8)[..22].to_vec());
        let (lens, reason) = drain(&mut stream).await;
        assert!(lens.is_empty() && reason.contains("middle of a message"), "{lens:?} {reason}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_reported() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut stream = TurnStream::connect(addr, "127.0.0.1", None);
        let (lens, reason) = drain(&mut stream).await;
        assert!(lens.is_empty() && reason.contains("TCP connect"), "{lens:?} {reason}");
    }

    /// A TURN-over-TLS server stand-in with a certificate for 127.0.0.1:
    /// trusted through the configured CA, messages cross; not trusted, the
    /// handshake fails and the stream says so.
    #[tokio::test]
    async fn carries_messages_over_tls_and_checks_the_certificate() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let pem = cert.cert.pem();
        let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut got = vec![0; 24];
                    if tls.read_exact(&mut got).await.is_ok() {
                        let _ = tls.write_all(&got).await;
                        let _ = tls.flush().await;
                    }
                });
            }
        });

        let mut stream = TurnStream::connect(addr, "127.0.0.1", Some(tls_config(Some(pem.as_bytes())).unwrap()));
        assert!(stream.send(&stun(4)));
        match std::future::poll_fn(|cx| stream.poll_incoming(cx)).await {
            Incoming::Message(m) => assert_eq!(&m[..], &stun(4)[..]),
            Incoming::Closed(reason) => panic!("closed: {reason}"),
        }

        let mut untrusted = TurnStream::connect(addr, "127.0.0.1", Some(tls_config(None).unwrap()));
        match std::future::poll_fn(|cx| untrusted.poll_incoming(cx)).await {
            Incoming::Closed(reason) => assert!(reason.contains("TLS handshake"), "{reason}"),
            Incoming::Message(_) => panic!("an untrusted server's message taken"),
        }
    }
}
