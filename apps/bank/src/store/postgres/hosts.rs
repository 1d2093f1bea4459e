//! Making a connection to one of the URL's hosts, each attempt bounded as libpq bounds it.
//!
//! `tokio-postgres` bounds only the TCP connect by `connect_timeout`: a host that accepts
//! TCP connections but never answers the start-up (a hung server, a stalled proxy) would
//! hold the whole attempt, and the hosts after it (a standby the operator listed) would
//! never be tried. Here each host of the URL, and each address of a host name, is tried in
//! turn with a single-host copy of the configuration, its attempt (TCP, start-up,
//! authentication, the `target_session_attrs` check) bounded by `connect_timeout`; the
//! host name's lookup (on a thread of its own) is bounded by it as well. The first that
//! succeeds is the connection; if none does, the last one's error is the attempt's.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use tokio_postgres::config::{Host, LoadBalanceHosts};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};

use super::conn::ConnectError;

/// A connection made: its client and the future that drives its socket.
pub(super) type Made = (Client, Connection<Socket, NoTlsStream>);

/// Connects to the first of `config`'s hosts (and of each host name's addresses) that
/// answers, each attempt within `connect_timeout`.
pub(super) async fn connect(config: &Config) -> Result<Made, ConnectError> {
    connect_resolving(config, |name, port| async move {
        // On a thread of its own, not the runtime's blocking pool: a lookup that hangs
        // past its bound (a DNS server that does not answer) while the next host
        // connects must not hold the runtime, whose drop would wait for it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("pg-lookup".to_owned())
            .spawn(move || {
                let found = (name.as_str(), port)
                    .to_socket_addrs()
                    .map(|found| found.map(|a: SocketAddr| a.ip()).collect());
                let _ = tx.send(found);
            })?;
        rx.await
            .map_err(|_| std::io::Error::other("the lookup ended without an answer"))?
    })
    .await
}

/// [`connect`], host names resolved by `resolve`.
async fn connect_resolving<F>(
    config: &Config,
    resolve: impl Fn(String, u16) -> F,
) -> Result<Made, ConnectError>
where
    F: Future<Output = std::io::Result<Vec<IpAddr>>>,
{
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let n = hosts.len().max(addrs.len());
    let consistent = n > 0
        && (hosts.is_empty() || addrs.is_empty() || hosts.len() == addrs.len())
        && (ports.len() <= 1 || ports.len() == n);
    if !consistent {
        // tokio-postgres says what is wrong with the list, before any connection.
        return config.connect(NoTls).await.map_err(ConnectError::Db);
    }
    let random = config.get_load_balance_hosts() == LoadBalanceHosts::Random;
    let bound = config.get_connect_timeout().copied();
    let mut order: Vec<usize> = (0..n).collect();
    if random {
        shuffle(&mut order);
    }
    let mut last = None;
    for i in order {
        let host = hosts.get(i);
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let targets = match (addrs.get(i), host) {
            (Some(ip), _) => vec![Some(*ip)],
            (None, Some(Host::Tcp(name))) => {
                let lookup = resolve(name.clone(), port);
                match within(bound, &format!("{name}:{port}"), lookup).await {
                    Ok(Ok(mut ips)) => {
                        if random {
                            shuffle(&mut ips);
                        }
                        ips.into_iter().map(Some).collect()
                    }
                    Ok(Err(e)) => {
                        last = Some(ConnectError::Other(format!("{name}:{port}: {e}")));
                        continue;
                    }
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            (None, _) => vec![None],
        };
        for ip in targets {
            let one = single(config, host, ip, port);
            let shown = match (ip, host) {
                (Some(ip), _) => SocketAddr::new(ip, port).to_string(),
                (None, Some(Host::Unix(dir))) => format!("{}", dir.display()),
                (None, _) => format!("port {port}"),
            };
            match within(bound, &shown, one.connect(NoTls)).await {
                Ok(Ok(made)) => return Ok(made),
                Ok(Err(e)) => last = Some(ConnectError::Db(e)),
                Err(e) => last = Some(e),
            }
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::Other("no address to connect to".to_owned())))
}

/// `attempt` within `bound` (if any); past it, an error naming `what`.
pub(super) async fn within<T>(
    bound: Option<Duration>,
    what: &str,
    attempt: impl Future<Output = T>,
) -> Result<T, ConnectError> {
    match bound {
        Some(bound) => tokio::time::timeout(bound, attempt).await.map_err(|_| {
            ConnectError::Other(format!(
                "{what}: no connection within {bound:?} (connect_timeout)"
            ))
        }),
        None => Ok(attempt.await),
    }
}

/// `config` with only `host` (at `ip`, if given) and `port`: every other setting as is.
fn single(config: &Config, host: Option<&Host>, ip: Option<IpAddr>, port: u16) -> Config {
    let mut one = Config::new();
    if let Some(user) = config.get_user() {
        one.user(user);
    }
    if let Some(password) = config.get_password() {
        one.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        one.options(options);
    }
    if let Some(name) = config.get_application_name() {
        one.application_name(name);
    }
    match host {
        Some(Host::Tcp(name)) => {
            one.host(name);
        }
        Some(Host::Unix(dir)) => {
            one.host_path(dir);
        }
        None => {}
    }
    if let Some(ip) = ip {
        one.hostaddr(ip);
    }
    one.port(port)
        .ssl_mode(config.get_ssl_mode())
        .ssl_negotiation(config.get_ssl_negotiation())
        .keepalives(config.get_keepalives())
        .keepalives_idle(config.get_keepalives_idle())
        .target_session_attrs(config.get_target_session_attrs())
        .channel_binding(config.get_channel_binding())
        .load_balance_hosts(config.get_load_balance_hosts());
    if let Some(t) = config.get_connect_timeout() {
        one.connect_timeout(*t);
    }
    if let Some(t) = config.get_tcp_user_timeout() {
        one.tcp_user_timeout(*t);
    }
    if let Some(t) = config.get_keepalives_interval() {
        one.keepalives_interval(t);
    }
    if let Some(n) = config.get_keepalives_retries() {
        one.keepalives_retries(n);
    }
    one
}

/// Puts `items` in a random order (`load_balance_hosts=random`), from the standard
/// library's randomly keyed hasher.
fn shuffle<T>(items: &mut [T]) {
    let state = RandomState::new();
    for i in (1..items.len()).rev() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        let j = usize::try_from(h.finish() % (i as u64 + 1)).unwrap_or(0);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
    use std::str::FromStr;

    use duo_testkit::pg::PgCluster;

    /// Runs `connect_resolving` for `config`, its one host name resolving to `ips`.
    fn connect_to(config: &Config, ips: Vec<IpAddr>) -> Result<Made, ConnectError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(connect_resolving(config, move |_, _| {
            let ips = ips.clone();
            async move { Ok(ips) }
        }))
    }

    /// `db.test` at `port` as user and database `bank`, `connect_timeout` 1 s.
    fn named(port: u16) -> Config {
        let mut config = Config::new();
        config
            .host("db.test")
            .port(port)
            .user("bank")
            .dbname("bank")
            .connect_timeout(Duration::from_secs(1));
        config
    }

    /// Review round 12 of the bank: one host name with several addresses shared one
    /// bound across them (`connect_timeout` times the number of hosts, start-up
    /// included): a first address that accepts TCP connections but never answers took
    /// all of it, and the next address was never tried. Each address has its own now.
    #[test]
    fn a_silent_first_address_of_a_name_is_passed_over() {
        let Some(cluster) = PgCluster::for_test(&format!(
            "{}::a_silent_first_address_of_a_name_is_passed_over",
            env!("CARGO_CRATE_NAME")
        )) else {
            return;
        };
        // The server listens on 127.0.0.1 only: its port on ::1 is free for a host that
        // completes handshakes (the kernel's backlog) and never says a word.
        let Ok(silent) = TcpListener::bind((Ipv6Addr::LOCALHOST, cluster.port())) else {
            eprintln!("skipped: no ::1 to listen on");
            return;
        };
        let ips = vec![
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ];
        let made = connect_to(&named(cluster.port()), ips);
        assert!(made.is_ok(), "{:?}", made.err());
        // Only the silent one: the attempt ends, naming the bound.
        let made = connect_to(
            &named(cluster.port()),
            vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
        );
        let Err(ConnectError::Other(why)) = made else {
            panic!("connected to a silent host: {:?}", made.err());
        };
        assert!(
            why.contains("connect_timeout") && why.contains("[::1]"),
            "{why}"
        );
        drop(silent);
    }

    /// A host name whose lookup never ends is given up after `connect_timeout`.
    #[test]
    fn a_lookup_that_hangs_is_given_up() {
        let mut config = named(5432);
        config.connect_timeout(Duration::from_millis(100));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let made = runtime.block_on(connect_resolving(&config, |_, _| std::future::pending()));
        let Err(ConnectError::Other(why)) = made else {
            panic!("connected without an address: {:?}", made.err());
        };
        assert!(
            why.contains("db.test:5432") && why.contains("connect_timeout"),
            "{why}"
        );
    }

    /// A single-host URL's copy is the configuration itself: no setting is lost.
    #[test]
    fn a_single_host_copy_keeps_every_setting() {
        let url = "postgres://u:pw@db.example:6543/d?options=-c%20x%3D1&application_name=a\
                   &sslmode=disable&connect_timeout=3&tcp_user_timeout=4&keepalives=0\
                   &keepalives_idle=5&keepalives_interval=6&keepalives_retries=7\
                   &target_session_attrs=read-write&channel_binding=disable\
                   &load_balance_hosts=random";
        let config = Config::from_str(url).unwrap();
        let one = single(&config, config.get_hosts().first(), None, 6543);
        assert!(one == config, "{one:?}\n{config:?}");
        let mut with_ip = config.clone();
        with_ip.hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let one = single(
            &config,
            config.get_hosts().first(),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            6543,
        );
        assert!(one == with_ip, "{one:?}\n{with_ip:?}");
    }
}
