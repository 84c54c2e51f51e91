//! Where a webhook may be sent. A shop owner chooses a webhook's URL, and the server
//! makes the request from inside its own network: a URL that points at the loopback, a
//! private range or the cloud's metadata address would let a tenant call PostgreSQL, Redis,
//! NATS or the admin API (server-side request forgery). So such addresses are refused
//! twice:
//! - when the webhook is created (422 on `url`): the host as the URL parser reads it
//!   (`127.1`, `2130706433` and `0x7f.1` are all 127.0.0.1 to it, as to a browser), and
//!   every address a name resolves to;
//! - at every delivery, on the address actually connected to: the client resolves names
//!   through [`Guarded`], which drops internal addresses before the connection is made, so
//!   a name that resolves somewhere public at creation and to 127.0.0.1 later (DNS
//!   rebinding) is never called. No proxy is used (it would resolve the name itself), and
//!   redirects are never followed.
//!
//! `STOCKLINE_WEBHOOK_ALLOW_PRIVATE=true` lifts the rule, for a private network or tests.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How long a name may take to resolve when a webhook is created.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Resolves a host name to addresses (the system's resolver, or a test's).
pub trait Lookup: Send + Sync + 'static {
    fn lookup(
        &self,
        host: String,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

/// The system's resolver (getaddrinfo, through tokio).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: String,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(found.map(|addr| addr.ip()).collect())
        })
    }
}

/// Why a URL is not called.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    /// The address is kept for the server's log, never told to the client (it would map
    /// the internal network for a tenant).
    #[error("{host} is, or resolves to, an internal address; webhooks go to public addresses only")]
    Internal { host: String, ip: IpAddr },
    #[error("{0} names this machine; webhooks go to public addresses only")]
    LocalName(String),
    #[error("{0} did not resolve to a public address")]
    NoPublicAddress(String),
}

/// The rule for webhook targets, and the resolver it checks names with.
#[derive(Clone)]
pub struct Targets {
    allow_private: bool,
    lookup: Arc<dyn Lookup>,
}

impl Targets {
    pub fn new(allow_private: bool, lookup: Arc<dyn Lookup>) -> Self {
        Self {
            allow_private,
            lookup,
        }
    }

    /// The system's resolver.
    pub fn system(allow_private: bool) -> Self {
        Self::new(allow_private, Arc::new(SystemLookup))
    }

    /// Checks a new webhook's URL: its host, and every address its name resolves to now.
    /// A name that does not resolve yet is accepted (every delivery checks again).
    pub async fn check(&self, url: &Url) -> Result<(), Refused> {
        if self.allow_private {
            return Ok(());
        }
        self.check_literal(url)?;
        let Some(url::Host::Domain(name)) = url.host() else {
            return Ok(());
        };
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup.lookup(name.to_owned()))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        match found.into_iter().find(|ip| is_internal(*ip)) {
            Some(ip) => Err(Refused::Internal {
                host: name.to_owned(),
                ip,
            }),
            None => Ok(()),
        }
    }

    /// Checks what can be checked without resolving: an address written in the URL (never
    /// resolved, so [`Guarded`] does not see it), and names of this machine.
    pub fn check_literal(&self, url: &Url) -> Result<(), Refused> {
        if self.allow_private {
            return Ok(());
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name == "localhost" || name.ends_with(".localhost") {
                    return Err(Refused::LocalName(host));
                }
                return Ok(());
            }
            None => return Err(Refused::NoPublicAddress(host)),
        };
        if is_internal(ip) {
            return Err(Refused::Internal { host, ip });
        }
        Ok(())
    }

    /// The client deliveries use: names resolved through [`Guarded`], no proxy, no
    /// redirect.
    pub fn client(&self, timeout: Duration) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(Guarded(self.clone())))
            .user_agent(concat!("stockline/", env!("CARGO_PKG_VERSION")))
            .build()
    }
}

/// The resolver of the delivery client: it answers only the public addresses of a name
/// (all of them with `allow_private`), so the connection can only be made to one of those.
pub struct Guarded(Targets);

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let targets = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = targets.lookup.lookup(host.clone()).await?;
            let allowed: Vec<SocketAddr> = found
                .iter()
                .filter(|ip| targets.allow_private || !is_internal(**ip))
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            if allowed.is_empty() {
                let refused = match found.first() {
                    Some(ip) => Refused::Internal { host, ip: *ip },
                    None => Refused::NoPublicAddress(host),
                };
                return Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Whether `ip` is anything but a public unicast address: loopback, private, shared
/// (carrier NAT), link-local (the cloud metadata service is 169.254.169.254),
/// unique-local, site-local, multicast, broadcast, unspecified, reserved, benchmarking, or
/// an IPv6 address that embeds one of those (mapped, compatible, NAT64, 6to4).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking (RFC 2544)
        || a >= 240 // reserved
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_internal_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated, still routed inside)
}

/// The IPv4 address an IPv6 address carries: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
        return Some(tail());
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail());
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// The guard's refusal inside a client error, if that is why the request failed.
pub fn refusal(error: &reqwest::Error) -> Option<&Refused> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    /// A resolver the test controls: every name resolves to what it holds now.
    struct Scripted(Mutex<Vec<IpAddr>>);

    impl Lookup for Scripted {
        fn lookup(
            &self,
            _host: String,
        ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
            let answer = self.0.lock().unwrap().clone();
            Box::pin(async move { Ok(answer) })
        }
    }

    #[tokio::test]
    async fn every_spelling_of_an_internal_address_is_refused() {
        let targets = Targets::new(false, Arc::new(Scripted(Mutex::new(Vec::new()))));
        for spelling in [
            "http://127.0.0.1:8080/hook",
            "http://localhost:5432/",
            "http://LOCALHOST./",
            "http://db.localhost/",
            "http://[::1]:6379/",
            "http://0.0.0.0:4222/",
            "http://127.1:8080/admin",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://10.0.0.5/",
            "http://172.16.3.4/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:c0a8:0101::]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "https://[::]/",
        ] {
            assert!(
                targets.check(&url(spelling)).await.is_err(),
                "{spelling} was accepted"
            );
        }
        for public in [
            "https://hooks.example.com/x",
            "http://93.184.216.34/",
            "http://[2606:2800:220:1::]/",
        ] {
            assert!(
                targets.check(&url(public)).await.is_ok(),
                "{public} was refused"
            );
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_inside_is_refused_at_creation() {
        let lookup = Arc::new(Scripted(Mutex::new(vec!["10.1.2.3".parse().unwrap()])));
        let targets = Targets::new(false, lookup);
        assert!(matches!(
            targets.check(&url("https://hooks.example.com/")).await,
            Err(Refused::Internal { .. })
        ));
        let allowed = Targets::new(true, Arc::new(SystemLookup));
        assert!(allowed.check(&url("http://127.0.0.1:9/")).await.is_ok());
    }

    /// DNS rebinding: public when the webhook was created, loopback when it is delivered.
    /// The delivery client never connects (a loopback listener counts connections).
    #[tokio::test]
    async fn a_name_that_later_resolves_to_loopback_is_never_called() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let lookup = Arc::new(Scripted(Mutex::new(vec!["93.184.216.34".parse().unwrap()])));
        let targets = Targets::new(false, lookup.clone());
        let hook = url(&format!("http://hooks.example.com:{port}/hook"));
        assert!(targets.check(&hook).await.is_ok(), "public at creation");

        *lookup.0.lock().unwrap() = vec!["127.0.0.1".parse().unwrap()];
        let client = targets.client(Duration::from_secs(2)).unwrap();
        let error = client.post(hook.clone()).send().await.unwrap_err();
        let refused = refusal(&error).expect("refused by the guard");
        assert!(matches!(refused, Refused::Internal { .. }), "{refused}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing connected");

        // With the rule lifted, the same client shape does connect (the listener is real).
        let open = Targets::new(true, lookup).client(Duration::from_millis(300));
        let _ = open.unwrap().post(hook).send().await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
