//! A TCP proxy the test controls, toxiproxy-style: it forwards connections to a real service until the test
//! cuts them or takes it down, so a test can break *its own* service's connections without disturbing the
//! tests running beside it. In front of RabbitMQ it can also tell its connections that the broker blocks
//! publishing, as RabbitMQ does during a memory or disk alarm, which would block every test's publishers.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt, copy_bidirectional},
    net::{TcpListener, TcpStream},
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};

pub struct Proxy {
    pub address: SocketAddr,
    /// Bumped to cut every open connection.
    cuts: Arc<watch::Sender<u64>>,
    /// While false, new connections are closed at once (the service looks down).
    up: Arc<watch::Sender<bool>>,
    /// Once true, open connections go silent: held open, nothing forwarded (a peer that stopped answering).
    stalled: Arc<watch::Sender<bool>>,
    /// In front of RabbitMQ: whether publishers are blocked.
    publishing_blocked: Arc<watch::Sender<bool>>,
    /// In front of PostgreSQL: a COMMIT's reply to lose, an append to freeze, listeners to silence.
    postgres: Arc<PostgresFaults>,
    listener: JoinHandle<()>,
}

/// What the proxy does to PostgreSQL's traffic.
#[derive(Default)]
struct PostgresFaults {
    /// Armed, the next transaction that appends to the event log commits and its connection is cut before the
    /// reply reaches the service (see [`Proxy::lose_the_reply_to_the_next_append`]).
    armed: AtomicBool,
    /// Connections that sent `LISTEN` no longer forward what the server sends (see [`Proxy::silence_listeners`]).
    listeners_silenced: AtomicBool,
    /// Connections that sent `LISTEN` so far.
    listeners: std::sync::atomic::AtomicU32,
    /// Replies lost so far.
    lost: std::sync::atomic::AtomicU32,
    /// Armed, the next transaction that appends to the event log never sends its COMMIT: its connection stays
    /// open and silent (see [`Proxy::freeze_the_next_append`]).
    freeze_armed: AtomicBool,
    /// Appends frozen so far.
    frozen: std::sync::atomic::AtomicU32,
}

/// What the proxy forwards.
#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    /// Bytes as they come.
    Tcp,
    /// AMQP 0-9-1, the broker's side frame by frame, so that a frame can be slipped in between two.
    Amqp,
    /// PostgreSQL: bytes as they come, watched for an append's COMMIT.
    Postgres,
}

impl Proxy {
    /// Forwards to `upstream` (`host:port`).
    async fn start(upstream: &str, protocol: Protocol) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let address = listener.local_addr().expect("proxy address");
        let cuts = Arc::new(watch::Sender::new(0_u64));
        let up = Arc::new(watch::Sender::new(true));
        let stalled = Arc::new(watch::Sender::new(false));
        let publishing_blocked = Arc::new(watch::Sender::new(false));
        let postgres = Arc::new(PostgresFaults::default());
        let (upstream, cuts_, up_, stalled_) = (upstream.to_owned(), cuts.clone(), up.clone(), stalled.clone());
        let (blocked_, faults_) = (publishing_blocked.clone(), postgres.clone());
        let listener = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // Subscribe first: `take_down` marks the proxy down before it cuts, so a connection either
                // sees it down here or is subscribed in time to be cut.
                let mut cut = cuts_.subscribe();
                if !*up_.borrow() {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let mut stall = stalled_.subscribe();
                let blocked = blocked_.subscribe();
                let faults = faults_.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                    let mut client = client;
                    let forward = async {
                        match protocol {
                            Protocol::Tcp => drop(copy_bidirectional(&mut client, &mut server).await),
                            Protocol::Amqp => relay_amqp(&mut client, &mut server, blocked).await,
                            Protocol::Postgres => relay_postgres(&mut client, &mut server, &faults).await,
                        }
                    };
                    let stalled = tokio::select! {
                        () = forward => false,
                        _ = cut.changed() => false,
                        stalled = stall.wait_for(|stalled| *stalled) => stalled.is_ok(),
                    };
                    if stalled {
                        // Both sockets stay open and silent until a cut.
                        let _ = cut.changed().await;
                    }
                });
            }
        });
        Self { address, cuts, up, stalled, publishing_blocked, postgres, listener }
    }

    /// In front of PostgreSQL ([`Proxy::in_front_of_database`]): the next transaction that inserts into the
    /// event log commits, and its connection is cut before the reply to its COMMIT reaches the service (as a
    /// network fault or a server crash at that moment would): the events are in the log, and the service was
    /// not told so.
    pub fn lose_the_reply_to_the_next_append(&self) {
        self.postgres.armed.store(true, Ordering::SeqCst);
    }

    /// In front of PostgreSQL: the next transaction that inserts into the event log goes no further, its
    /// COMMIT held back and its connection left open, as an instance frozen (or cut off) in the middle of an
    /// append would leave it: the transaction stays open on the server, with the append lock.
    pub fn freeze_the_next_append(&self) {
        self.postgres.freeze_armed.store(true, Ordering::SeqCst);
    }

    /// Appends frozen so far.
    pub fn frozen_appends(&self) -> u32 {
        self.postgres.frozen.load(Ordering::SeqCst)
    }

    /// Replies to a COMMIT lost so far.
    pub fn lost_commit_replies(&self) -> u32 {
        self.postgres.lost.load(Ordering::SeqCst)
    }

    /// In front of PostgreSQL: the connections that listen for NOTIFY stay open, and hear nothing more from the
    /// server (a connection gone silent, as one through a network partition does until TCP gives up on it); or
    /// hear it again.
    pub fn silence_listeners(&self, silenced: bool) {
        self.postgres.listeners_silenced.store(silenced, Ordering::SeqCst);
    }

    /// How many connections have sent `LISTEN`.
    pub fn listeners(&self) -> u32 {
        self.postgres.listeners.load(Ordering::SeqCst)
    }

    /// In front of RabbitMQ ([`Proxy::in_front_of_broker`]): blocks publishers as a memory alarm would, or
    /// ends the block (see [`relay_amqp`]).
    pub fn block_publishing(&self, blocked: bool) {
        self.publishing_blocked.send_replace(blocked);
    }

    /// Closes every open connection (as a broker or database restart would); new ones are let through.
    pub fn cut(&self) {
        self.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// Cuts every connection and refuses new ones until [`Proxy::restore`].
    pub fn take_down(&self) {
        self.up.send_replace(false);
        self.cut();
    }

    /// Open connections stop forwarding, but stay open: the service behind stopped answering.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets new connections through again, and ends a stall (cutting the connections it silenced).
    pub fn restore(&self) {
        self.up.send_replace(true);
        if self.stalled.send_replace(false) {
            self.cut();
        }
    }

    /// `url` split before its `host:port`: what comes before, and the `host:port`.
    fn split_authority(url: &str) -> (String, String) {
        let authority_start = url.find('@').map_or_else(|| url.find("://").map_or(0, |i| i + 3), |i| i + 1);
        let authority_end = url[authority_start..].find('/').map_or(url.len(), |i| authority_start + i);
        (url[..authority_start].to_owned(), url[authority_start..authority_end].to_owned())
    }

    /// Starts a proxy in front of the service `url` points at; returns it and `url` rewritten to go through it.
    pub async fn in_front_of(url: &str) -> (Self, String) {
        Self::in_front_of_with(url, Protocol::Tcp).await
    }

    /// [`Proxy::in_front_of`] a PostgreSQL `url`, able to [lose a commit's reply](Proxy::lose_the_reply_to_the_next_append)
    /// and to [silence listeners](Proxy::silence_listeners).
    /// The URL through it asks for clear text, for the proxy to see the statements (a server with `ssl = on`
    /// is asked for TLS otherwise).
    pub async fn in_front_of_database(url: &str) -> (Self, String) {
        let (proxy, through) = Self::in_front_of_with(url, Protocol::Postgres).await;
        let separator = if through.contains('?') { '&' } else { '?' };
        (proxy, format!("{through}{separator}sslmode=disable"))
    }

    /// [`Proxy::in_front_of`] a RabbitMQ `url`, able to [block publishing](Proxy::block_publishing).
    pub async fn in_front_of_broker(url: &str) -> (Self, String) {
        Self::in_front_of_with(url, Protocol::Amqp).await
    }

    async fn in_front_of_with(url: &str, protocol: Protocol) -> (Self, String) {
        let (prefix, upstream) = Self::split_authority(url);
        let proxy = Self::start(&upstream, protocol).await;
        let rest = &url[prefix.len() + upstream.len()..];
        let through = format!("{prefix}{}{rest}", proxy.address);
        (proxy, through)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.listener.abort();
        self.cut();
    }
}

/// Forwards an AMQP 0-9-1 connection frame by frame, as RabbitMQ treats publishers during an alarm: while
/// `blocked`, a connection that publishes is no longer read from (its frames wait here until the block ends)
/// and is told so (`connection.blocked`, then `connection.unblocked` when the block ends). A connection that
/// does not publish meanwhile is neither stopped nor told.
async fn relay_amqp(client: &mut TcpStream, server: &mut TcpStream, blocked: watch::Receiver<bool>) {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let published_while_blocked = AtomicBool::new(false);
    let publishing = Notify::new();
    let upstream = async {
        let mut protocol_header = [0; 8];
        if client_read.read_exact(&mut protocol_header).await.is_err()
            || server_write.write_all(&protocol_header).await.is_err()
        {
            return;
        }
        let mut blocked = blocked.clone();
        while let Some(frame) = read_frame(&mut client_read).await {
            if is_publish(&frame) && *blocked.borrow_and_update() {
                published_while_blocked.store(true, Ordering::Relaxed);
                publishing.notify_one();
                if blocked.wait_for(|blocked| !*blocked).await.is_err() {
                    return;
                }
                published_while_blocked.store(false, Ordering::Relaxed);
            }
            if server_write.write_all(&frame).await.is_err() {
                return;
            }
        }
    };
    // The broker's frames are read apart from writing them, so that a change never cuts a read in half.
    let (to_client, mut from_server) = mpsc::channel::<Vec<u8>>(16);
    let read_frames = async move {
        while let Some(frame) = read_frame(&mut server_read).await {
            if to_client.send(frame).await.is_err() {
                return;
            }
        }
    };
    let write_frames = async {
        let mut blocked = blocked.clone();
        let mut told_blocked = false;
        loop {
            tokio::select! {
                frame = from_server.recv() => match frame {
                    Some(frame) => if client_write.write_all(&frame).await.is_err() {
                        return;
                    },
                    None => return,
                },
                changed = blocked.changed() => if changed.is_err() {
                    return;
                },
                () = publishing.notified() => {}
            }
            let still_blocked = *blocked.borrow_and_update();
            if !still_blocked {
                published_while_blocked.store(false, Ordering::Relaxed);
            }
            let tell_blocked = still_blocked && published_while_blocked.load(Ordering::Relaxed);
            if tell_blocked != told_blocked {
                told_blocked = tell_blocked;
                if client_write.write_all(&connection_blocked_frame(tell_blocked)).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = read_frames => {}
        () = write_frames => {}
    }
}

/// Forwards a PostgreSQL connection as it comes, unless a lost reply is armed: then, once the service has sent
/// an insert into the event log on this connection, the COMMIT that follows goes to the server, and the
/// connection ends as soon as the server answers it, the answer not forwarded. The service sends a statement
/// only after the answer to the one before, so nothing else is held back. A frozen append's COMMIT is not
/// sent at all, and nothing after it.
async fn relay_postgres(client: &mut TcpStream, server: &mut TcpStream, faults: &PostgresFaults) {
    const APPEND: &[u8] = b"INSERT INTO events";
    const COMMIT: &[u8] = b"COMMIT\0";
    // A simple query (`Q`, its length, then the text) that starts with LISTEN: not UNLISTEN, which a connection
    // returned to the pool sends.
    const LISTEN: &[u8] = b"LISTEN ";
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let swallowing = AtomicBool::new(false);
    let listening = AtomicBool::new(false);
    let upstream = async {
        let (mut buffer, mut seen, mut appended) = (vec![0; 16 * 1024], Vec::new(), false);
        loop {
            let read = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            if buffer[..read].first() == Some(&b'Q') && buffer[..read].get(5..5 + LISTEN.len()) == Some(LISTEN) {
                listening.store(true, Ordering::SeqCst);
                faults.listeners.fetch_add(1, Ordering::SeqCst);
            }
            if faults.armed.load(Ordering::SeqCst) || faults.freeze_armed.load(Ordering::SeqCst) {
                // What this connection sent since the last look, with a tail kept for a word split by a read.
                seen.extend_from_slice(&buffer[..read]);
                if !appended && let Some(at) = find(&seen, APPEND) {
                    appended = true;
                    seen.drain(..at);
                }
                let committing = appended && find(&seen, COMMIT).is_some();
                if committing && faults.freeze_armed.swap(false, Ordering::SeqCst) {
                    faults.frozen.fetch_add(1, Ordering::SeqCst);
                    // Nothing more goes up; what the server says (its ending of the session) still comes down.
                    return std::future::pending().await;
                }
                if committing && faults.armed.swap(false, Ordering::SeqCst) {
                    swallowing.store(true, Ordering::SeqCst);
                }
                let keep = seen.len().saturating_sub(APPEND.len());
                seen.drain(..keep);
            }
            if server_write.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    };
    let downstream = async {
        let mut buffer = vec![0; 16 * 1024];
        loop {
            let read = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            if swallowing.load(Ordering::SeqCst) {
                faults.lost.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if listening.load(Ordering::SeqCst) && faults.listeners_silenced.load(Ordering::SeqCst) {
                continue;
            }
            if client_write.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The next frame: type (1 byte), channel (2), payload size (4), the payload and the frame end (1).
async fn read_frame(from: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut frame = vec![0; 7];
    from.read_exact(&mut frame).await.ok()?;
    let size = u32::from_be_bytes([frame[3], frame[4], frame[5], frame[6]]) as usize;
    frame.resize(7 + size + 1, 0);
    from.read_exact(&mut frame[7..]).await.ok()?;
    Some(frame)
}

/// A method frame of `basic.publish` (class 60, method 40).
fn is_publish(frame: &[u8]) -> bool {
    frame[0] == 1 && frame.get(7..11) == Some(&[0, 60, 0, 40])
}

/// `connection.blocked` (class 10, method 60, with a reason) or `connection.unblocked` (10, 61), on channel 0.
fn connection_blocked_frame(blocked: bool) -> Vec<u8> {
    let mut payload = vec![0, 10, 0, if blocked { 60 } else { 61 }];
    if blocked {
        let reason = b"low on memory (the test proxy)";
        payload.push(reason.len() as u8);
        payload.extend_from_slice(reason);
    }
    let mut frame = vec![1, 0, 0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend(payload);
    frame.push(0xCE);
    frame
}
