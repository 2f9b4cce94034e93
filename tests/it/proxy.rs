//! A TCP proxy the test controls, toxiproxy-style: it forwards connections to a real service until the test
//! cuts them or takes it down, so a test can break *its own* service's connections without disturbing the
//! tests running beside it.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
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
    listener: JoinHandle<()>,
}

impl Proxy {
    /// Forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let address = listener.local_addr().expect("proxy address");
        let cuts = Arc::new(watch::Sender::new(0_u64));
        let up = Arc::new(watch::Sender::new(true));
        let stalled = Arc::new(watch::Sender::new(false));
        let (upstream, cuts_, up_, stalled_) = (upstream.to_owned(), cuts.clone(), up.clone(), stalled.clone());
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
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                    let mut client = client;
                    let stalled = tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => false,
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
        Self { address, cuts, up, stalled, listener }
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
        let (prefix, upstream) = Self::split_authority(url);
        let proxy = Self::start(&upstream).await;
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
