//! The SSRF guard: which endpoint URLs and addresses Hookline may send to. A URL is checked at
//! registration ([`AddressPolicy::check_url`]) and again at send time, where the sender connects
//! only to addresses [`AddressPolicy::resolve`] returned (no DNS rebinding in between).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use url::{Host, Url};

/// Why a URL or address may not be sent to: the message names the rule and the address, for
/// the 422 the API answers and the attempt the deliverer records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    url: String,
    reason: String,
    policy: bool,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.policy {
            write!(f, "{} is refused: {}", self.url, self.reason)
        } else {
            write!(f, "{}: {}", self.url, self.reason)
        }
    }
}

impl std::error::Error for Refused {}

impl Refused {
    fn policy(url: &str, reason: impl fmt::Display) -> Self {
        Self {
            url: url.to_owned(),
            reason: reason.to_string(),
            policy: true,
        }
    }

    fn unresolved(url: &str, reason: impl fmt::Display) -> Self {
        Self {
            url: url.to_owned(),
            reason: reason.to_string(),
            policy: false,
        }
    }

    /// True when the SSRF policy refused; false when the host could not be resolved at all
    /// (a transient failure worth a retry, not a forbidden address).
    pub fn by_policy(&self) -> bool {
        self.policy
    }

    /// Why, without the URL: `10.0.0.5 is a private address (10.0.0.0/8)`.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A malformed `OUTBOUND_*` setting, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} is invalid: {reason}")]
pub struct PolicyConfigError {
    pub name: &'static str,
    pub reason: String,
}

/// Name resolution, behind a seam so tests can answer for names no real DNS serves (the way a
/// rebinding attacker's DNS would); production uses the system resolver.
#[async_trait::async_trait]
pub trait Lookup: Send + Sync {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver (getaddrinfo on a blocking thread).
pub struct SystemLookup;

#[async_trait::async_trait]
impl Lookup for SystemLookup {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// Where outbound deliveries may go.
#[derive(Clone)]
pub struct AddressPolicy {
    allow_http: bool,
    allow: Vec<IpNet>,
    lookup: Arc<dyn Lookup>,
}

impl fmt::Debug for AddressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressPolicy")
            .field("allow_http", &self.allow_http)
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl Default for AddressPolicy {
    fn default() -> Self {
        Self::strict()
    }
}

/// A forbidden range: base address, prefix length, and what it is.
struct Range<T> {
    base: T,
    prefix: u8,
    what: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8, what: &'static str) -> Range<u32> {
    Range {
        base: u32::from_be_bytes([a, b, c, d]),
        prefix,
        what,
    }
}

const fn v6(segments: [u16; 8], prefix: u8, what: &'static str) -> Range<u128> {
    let mut base = 0u128;
    let mut i = 0;
    while i < 8 {
        base = (base << 16) | segments[i] as u128;
        i += 1;
    }
    Range { base, prefix, what }
}

impl Range<u32> {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == self.base
    }
    fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl Range<u128> {
    fn contains(&self, ip: Ipv6Addr) -> bool {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        u128::from(ip) & mask == self.base
    }
    fn cidr(&self) -> String {
        format!("{}/{}", Ipv6Addr::from(self.base), self.prefix)
    }
}

/// Cloud metadata and credential endpoints: refused whatever `OUTBOUND_ALLOW_CIDRS` opens.
const METADATA_V4: [Range<u32>; 4] = [
    v4(169, 254, 169, 254, 32, "a cloud metadata address"),
    v4(169, 254, 170, 2, 32, "a cloud credentials address (ECS)"),
    v4(169, 254, 170, 23, 32, "a cloud credentials address (EKS)"),
    v4(100, 100, 100, 200, 32, "a cloud metadata address (Alibaba)"),
];
const METADATA_V6: [Range<u128>; 2] = [
    v6(
        [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254],
        128,
        "a cloud metadata address",
    ),
    v6(
        [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23],
        128,
        "a cloud credentials address (EKS)",
    ),
];

/// Everything that is not the public internet. Order matters only for the message: the more
/// specific range comes first.
const FORBIDDEN_V4: [Range<u32>; 17] = [
    v4(0, 0, 0, 0, 32, "the unspecified address"),
    v4(0, 0, 0, 0, 8, "a \"this network\" address"),
    v4(10, 0, 0, 0, 8, "a private address"),
    v4(100, 64, 0, 0, 10, "a carrier-grade NAT address"),
    v4(127, 0, 0, 0, 8, "a loopback address"),
    v4(169, 254, 0, 0, 16, "a link-local address"),
    v4(172, 16, 0, 0, 12, "a private address"),
    v4(192, 0, 0, 0, 24, "an IETF protocol address"),
    v4(192, 0, 2, 0, 24, "a documentation address"),
    v4(192, 88, 99, 0, 24, "a 6to4 relay address"),
    v4(192, 168, 0, 0, 16, "a private address"),
    v4(198, 18, 0, 0, 15, "a benchmarking address"),
    v4(198, 51, 100, 0, 24, "a documentation address"),
    v4(203, 0, 113, 0, 24, "a documentation address"),
    v4(224, 0, 0, 0, 4, "a multicast address"),
    v4(255, 255, 255, 255, 32, "the broadcast address"),
    v4(240, 0, 0, 0, 4, "a reserved address"),
];
const FORBIDDEN_V6: [Range<u128>; 11] = [
    v6([0; 8], 128, "the unspecified address"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "a loopback address"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "a discard-only address"),
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "a local-use NAT64 address",
    ),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "a Teredo tunnel address"),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "a documentation address",
    ),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "a unique-local address"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "a link-local address"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "a site-local address"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "a multicast address"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "a documentation address"),
];

/// The IPv4 address an IPv6 address carries, in the forms a filter must see through:
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and
/// 6to4 `2002:AABB:CCDD::`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from(bits as u32);
    let seg = ip.segments();
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some(mapped);
    }
    // `::` and `::1` are IPv6's own unspecified and loopback, judged as such.
    if bits >> 32 == 0 && bits > 1 {
        return Some(low);
    }
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(low);
    }
    if seg[0] == 0x2002 {
        let [a, b] = seg[1].to_be_bytes();
        let [c, d] = seg[2].to_be_bytes();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

impl AddressPolicy {
    /// https only, every non-public address refused: what production runs with.
    pub fn strict() -> Self {
        Self {
            allow_http: false,
            allow: Vec::new(),
            lookup: Arc::new(SystemLookup),
        }
    }

    /// `OUTBOUND_ALLOW_HTTP` (`true`/`false`, default false) and `OUTBOUND_ALLOW_CIDRS`
    /// (comma-separated CIDRs or addresses, e.g. `127.0.0.0/8` for local development).
    pub fn from_env() -> Result<Self, PolicyConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Self::from_env`] over any source of settings.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, PolicyConfigError> {
        let allow_http = match get("OUTBOUND_ALLOW_HTTP").as_deref().map(str::trim) {
            None | Some("") => false,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
            Some(v) => {
                return Err(PolicyConfigError {
                    name: "OUTBOUND_ALLOW_HTTP",
                    reason: format!("{v:?} is not true or false"),
                })
            }
        };
        let mut allow = Vec::new();
        for item in get("OUTBOUND_ALLOW_CIDRS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| PolicyConfigError {
                    name: "OUTBOUND_ALLOW_CIDRS",
                    reason: format!("{item:?} is not a CIDR (e.g. 127.0.0.0/8) or an address"),
                })?;
            allow.push(net.trunc());
        }
        Ok(Self {
            allow_http,
            allow,
            lookup: Arc::new(SystemLookup),
        })
    }

    /// Allow plain `http://` URLs (local development and tests).
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// Open these ranges (cloud metadata addresses stay refused).
    pub fn allow_cidrs(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.allow.extend(nets.into_iter().map(|n| n.trunc()));
        self
    }

    /// Resolve names with `lookup` instead of the system resolver.
    pub fn with_lookup(mut self, lookup: Arc<dyn Lookup>) -> Self {
        self.lookup = lookup;
        self
    }

    pub fn allows_http(&self) -> bool {
        self.allow_http
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Why `ip` may not be sent to (`10.0.0.5 is a private address (10.0.0.0/8)`), or `None`
    /// when it may.
    pub fn forbidden(&self, ip: IpAddr) -> Option<String> {
        self.classify(ip).map(|what| format!("{ip} is {what}"))
    }

    /// What forbidden kind of address `ip` is (`a private address (10.0.0.0/8)`).
    fn classify(&self, ip: IpAddr) -> Option<String> {
        let unpacked = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let via = |inner: Ipv4Addr| match unpacked {
            Some(_) => format!(" (it carries {inner})"),
            None => String::new(),
        };
        // Metadata first: no allow-list opens it, in whatever form it is written.
        if let IpAddr::V6(v6) = ip {
            if let Some(r) = METADATA_V6.iter().find(|r| r.contains(v6)) {
                return Some(format!("{} ({})", r.what, r.cidr()));
            }
        }
        let v4 = match (ip, unpacked) {
            (IpAddr::V4(v4), _) | (_, Some(IpAddr::V4(v4))) => Some(v4),
            _ => None,
        };
        if let Some(v4) = v4 {
            if let Some(r) = METADATA_V4.iter().find(|r| r.contains(v4)) {
                return Some(format!("{}{} ({})", r.what, via(v4), r.cidr()));
            }
        }
        if self.allowed(ip) || unpacked.is_some_and(|inner| self.allowed(inner)) {
            return None;
        }
        if let IpAddr::V6(v6) = ip {
            if let Some(r) = FORBIDDEN_V6.iter().find(|r| r.contains(v6)) {
                return Some(format!("{} ({})", r.what, r.cidr()));
            }
        }
        if let Some(v4) = v4 {
            if let Some(r) = FORBIDDEN_V4.iter().find(|r| r.contains(v4)) {
                return Some(format!("{}{} ({})", r.what, via(v4), r.cidr()));
            }
        }
        None
    }

    /// Parse an endpoint URL and check what can be checked without DNS: the scheme (https, or
    /// http when allowed), a host, no user name or password, and a literal IP host's address.
    pub fn check_url(&self, raw: &str) -> Result<Url, Refused> {
        let raw = raw.trim();
        let url = Url::parse(raw).map_err(|e| {
            let shown: String = raw.chars().take(100).collect();
            Refused::policy(
                &format!("{shown:?}"),
                format_args!("it is not a valid URL ({e})"),
            )
        })?;
        let shown = display(&url);
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(Refused::policy(
                    &shown,
                    "only https URLs are accepted (OUTBOUND_ALLOW_HTTP=true allows http for \
                     local development)",
                ))
            }
            other => {
                return Err(Refused::policy(
                    &shown,
                    format_args!("the scheme {other:?} is not http or https"),
                ))
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused::policy(
                &shown,
                "a user name or password in the URL is not accepted",
            ));
        }
        match url.host() {
            None => return Err(Refused::policy(&shown, "it has no host")),
            Some(Host::Domain("")) => return Err(Refused::policy(&shown, "it has no host")),
            Some(Host::Domain(_)) => {}
            Some(Host::Ipv4(ip)) => self.check_ip(&shown, IpAddr::V4(ip))?,
            Some(Host::Ipv6(ip)) => self.check_ip(&shown, IpAddr::V6(ip))?,
        }
        Ok(url)
    }

    fn check_ip(&self, shown: &str, ip: IpAddr) -> Result<(), Refused> {
        match self.forbidden(ip) {
            Some(reason) => Err(Refused::policy(shown, reason)),
            None => Ok(()),
        }
    }

    /// The addresses to connect to for a checked URL. Refused when the host resolves to no
    /// address or when ANY of its addresses is forbidden: a name that mixes public and private
    /// answers is an attack, not a partial endpoint.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, Refused> {
        let shown = display(url);
        let port = url.port_or_known_default().unwrap_or(443);
        match url.host() {
            Some(Host::Ipv4(ip)) => {
                self.check_ip(&shown, IpAddr::V4(ip))?;
                Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)])
            }
            Some(Host::Ipv6(ip)) => {
                self.check_ip(&shown, IpAddr::V6(ip))?;
                Ok(vec![SocketAddr::new(IpAddr::V6(ip), port)])
            }
            Some(Host::Domain(name)) => self.resolve_name(&shown, name, port).await,
            None => Err(Refused::policy(&shown, "it has no host")),
        }
    }

    /// Resolve a host name and check every address (the sender's DNS hook calls this).
    pub(crate) async fn resolve_name(
        &self,
        shown: &str,
        name: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, Refused> {
        // A literal address handed in as a name (the sender's DNS hook never sees these, but
        // be safe) is judged as the address.
        if let Ok(ip) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
            self.check_ip(shown, ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs = self.lookup.lookup(name, port).await.map_err(|e| {
            Refused::unresolved(shown, format_args!("cannot resolve {name} ({})", e.kind()))
        })?;
        if addrs.is_empty() {
            return Err(Refused::unresolved(
                shown,
                format_args!("{name} resolves to no address"),
            ));
        }
        for addr in &addrs {
            if let Some(what) = self.classify(addr.ip()) {
                return Err(Refused::policy(
                    shown,
                    format_args!("{name} resolves to {}, {what}", addr.ip()),
                ));
            }
        }
        Ok(addrs)
    }
}

/// A URL as errors show it: scheme, host, port and path, never a query string or user info
/// (either may hold a token).
pub fn display(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> AddressPolicy {
        AddressPolicy::strict()
            .allow_http(true)
            .allow_cidrs(["127.0.0.0/8".parse().unwrap()])
    }

    fn refused(policy: &AddressPolicy, url: &str) -> String {
        match policy.check_url(url) {
            Err(e) => {
                assert!(e.by_policy());
                e.to_string()
            }
            Ok(u) => panic!("{url} was accepted as {u}"),
        }
    }

    /// Each forbidden range, by an address inside it and the range the message must name.
    const V4_CASES: [(&str, &str, &str); 17] = [
        ("127.0.0.1", "loopback", "127.0.0.0/8"),
        ("127.255.0.9", "loopback", "127.0.0.0/8"),
        ("10.0.0.5", "private", "10.0.0.0/8"),
        ("172.16.0.1", "private", "172.16.0.0/12"),
        ("172.31.255.254", "private", "172.16.0.0/12"),
        ("192.168.1.1", "private", "192.168.0.0/16"),
        ("169.254.1.1", "link-local", "169.254.0.0/16"),
        ("100.64.0.1", "carrier-grade NAT", "100.64.0.0/10"),
        ("100.127.255.255", "carrier-grade NAT", "100.64.0.0/10"),
        ("0.0.0.0", "unspecified", "0.0.0.0/32"),
        ("255.255.255.255", "broadcast", "255.255.255.255/32"),
        ("224.0.0.1", "multicast", "224.0.0.0/4"),
        ("239.255.255.250", "multicast", "224.0.0.0/4"),
        ("192.0.2.10", "documentation", "192.0.2.0/24"),
        ("169.254.169.254", "cloud metadata", "169.254.169.254/32"),
        ("100.100.100.200", "cloud metadata", "100.100.100.200/32"),
        ("240.0.0.1", "reserved", "240.0.0.0/4"),
    ];

    #[test]
    fn every_forbidden_ipv4_range_is_refused_with_its_name_and_range() {
        let strict = AddressPolicy::strict();
        for (ip, what, cidr) in V4_CASES {
            let msg = refused(&strict, &format!("https://{ip}/hook"));
            assert!(
                msg.starts_with(&format!("https://{ip}/hook is refused: {ip} is ")),
                "{msg}"
            );
            assert!(
                msg.contains(what) && msg.contains(&format!("({cidr})")),
                "{msg}"
            );
        }
    }

    #[test]
    fn the_message_says_which_rule_and_why() {
        let policy = AddressPolicy::strict().allow_http(true);
        assert_eq!(
            refused(&policy, "http://10.0.0.5/"),
            "http://10.0.0.5/ is refused: 10.0.0.5 is a private address (10.0.0.0/8)"
        );
    }

    #[test]
    fn the_ipv6_forms_of_every_forbidden_ipv4_range_are_refused_too() {
        let strict = AddressPolicy::strict();
        for (ip, what, _) in V4_CASES {
            let v4: Ipv4Addr = ip.parse().unwrap();
            let [a, b, c, d] = v4.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            for form in [
                format!("::ffff:{ip}"),
                format!("::ffff:{hi:x}:{lo:x}"),
                format!("64:ff9b::{ip}"),
                format!("2002:{hi:x}:{lo:x}::1"),
            ] {
                let msg = refused(&strict, &format!("https://[{form}]/"));
                assert!(msg.contains(what), "{form}: {msg}");
            }
            // IPv4-compatible `::a.b.c.d` (`::` and `::1` are IPv6's own, below).
            if u32::from(v4) > 1 {
                let msg = refused(&strict, &format!("https://[::{ip}]/"));
                assert!(msg.contains(what), "::{ip}: {msg}");
            }
        }
    }

    #[test]
    fn every_forbidden_ipv6_range_is_refused() {
        let strict = AddressPolicy::strict();
        for (ip, what) in [
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("fd00:ec2::254", "cloud metadata"),
            ("64:ff9b:1::a00:1", "NAT64"),
        ] {
            let msg = refused(&strict, &format!("https://[{ip}]:8443/x"));
            assert!(msg.contains(what), "{ip}: {msg}");
        }
    }

    #[test]
    fn public_addresses_and_names_pass_the_url_check() {
        let strict = AddressPolicy::strict();
        for url in [
            "https://93.184.215.14/hook",
            "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hook",
            "https://hooks.example.com/hook?x=1",
            "https://example.com:8443/",
        ] {
            assert!(strict.check_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn the_allow_list_opens_loopback_but_never_the_metadata_addresses() {
        let policy = dev();
        assert!(policy.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(policy.check_url("http://[::ffff:127.0.0.1]:9000/").is_ok());
        assert!(refused(&policy, "http://10.0.0.1/").contains("private"));
        let everything = AddressPolicy::strict()
            .allow_http(true)
            .allow_cidrs(["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]);
        assert!(everything.check_url("http://10.0.0.1/").is_ok());
        for ip in [
            "169.254.169.254",
            "[::ffff:169.254.169.254]",
            "[fd00:ec2::254]",
            "100.100.100.200",
            "169.254.170.2",
        ] {
            let msg = refused(&everything, &format!("http://{ip}/latest/meta-data/"));
            assert!(msg.contains("cloud"), "{msg}");
        }
    }

    #[test]
    fn plain_http_is_refused_unless_allowed() {
        let msg = refused(&AddressPolicy::strict(), "http://hooks.example.com/");
        assert!(msg.contains("only https"), "{msg}");
        assert!(AddressPolicy::strict()
            .allow_http(true)
            .check_url("http://hooks.example.com/")
            .is_ok());
    }

    #[test]
    fn garbage_user_info_and_other_schemes_are_refused_clearly() {
        let strict = AddressPolicy::strict();
        assert!(refused(&strict, "not a url").contains("is not a valid URL"));
        assert!(refused(&strict, "").contains("is not a valid URL"));
        assert!(refused(&strict, "https://").contains("not a valid URL"));
        assert!(refused(&strict, "ftp://example.com/").contains("\"ftp\" is not http or https"));
        assert!(refused(&strict, "file:///etc/passwd").contains("not http or https"));
        let msg = refused(&strict, "https://user:hunter2@example.com/");
        assert!(msg.contains("user name or password"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn an_error_never_shows_the_query_string() {
        let msg = refused(
            &AddressPolicy::strict(),
            "https://10.1.2.3/hook?token=s3cr3t",
        );
        assert!(!msg.contains("s3cr3t"), "{msg}");
        assert!(msg.starts_with("https://10.1.2.3/hook is refused"), "{msg}");
    }

    #[test]
    fn obfuscated_ipv4_literals_are_read_as_the_address_they_are() {
        let strict = AddressPolicy::strict();
        for url in [
            "https://2130706433/",
            "https://0x7f.1/",
            "https://0177.0.0.1/",
            "https://127.1/",
        ] {
            assert!(refused(&strict, url).contains("loopback"), "{url}");
        }
    }

    #[tokio::test]
    async fn localhost_is_refused_when_resolved_because_it_is_loopback() {
        let strict = AddressPolicy::strict();
        let url = strict.check_url("https://localhost:9000/hook").unwrap();
        let err = strict.resolve(&url).await.unwrap_err();
        assert!(err.by_policy());
        assert!(
            err.to_string()
                .starts_with("https://localhost:9000/hook is refused: localhost resolves to "),
            "{err}"
        );
        assert!(err.to_string().contains("loopback"), "{err}");

        let addrs = dev().resolve(&url).await.unwrap();
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9000));
    }

    struct Answers(Vec<IpAddr>);

    #[async_trait::async_trait]
    impl Lookup for Answers {
        async fn lookup(&self, _host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            Ok(self.0.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
        }
    }

    #[tokio::test]
    async fn one_forbidden_answer_among_public_ones_refuses_the_whole_name() {
        let policy = AddressPolicy::strict().with_lookup(Arc::new(Answers(vec![
            "93.184.215.14".parse().unwrap(),
            "10.0.0.7".parse().unwrap(),
        ])));
        let url = policy.check_url("https://hooks.example.com/").unwrap();
        let err = policy.resolve(&url).await.unwrap_err();
        assert!(err.by_policy());
        assert!(
            err.to_string()
                .ends_with("resolves to 10.0.0.7, a private address (10.0.0.0/8)"),
            "{err}"
        );

        let public = AddressPolicy::strict()
            .with_lookup(Arc::new(Answers(vec!["93.184.215.14".parse().unwrap()])));
        assert_eq!(
            public.resolve(&url).await.unwrap(),
            vec!["93.184.215.14:443".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_not_a_policy_refusal() {
        let policy = AddressPolicy::strict().with_lookup(Arc::new(Answers(vec![])));
        let url = policy.check_url("https://nowhere.invalid/").unwrap();
        let err = policy.resolve(&url).await.unwrap_err();
        assert!(!err.by_policy());
        assert!(err.to_string().contains("resolves to no address"), "{err}");
    }

    #[test]
    fn settings_come_from_the_environment_and_a_bad_value_names_its_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let p = AddressPolicy::from_vars(env(&[])).unwrap();
        assert!(!p.allows_http());
        assert!(p.forbidden("127.0.0.1".parse().unwrap()).is_some());

        let p = AddressPolicy::from_vars(env(&[
            ("OUTBOUND_ALLOW_HTTP", "true"),
            ("OUTBOUND_ALLOW_CIDRS", " 127.0.0.0/8, ::1 ,10.1.2.3"),
        ]))
        .unwrap();
        assert!(p.allows_http());
        for ip in ["127.0.0.1", "::1", "10.1.2.3"] {
            assert_eq!(p.forbidden(ip.parse().unwrap()), None, "{ip}");
        }
        assert!(p.forbidden("10.1.2.4".parse().unwrap()).is_some());

        let err =
            AddressPolicy::from_vars(env(&[("OUTBOUND_ALLOW_HTTP", "yes please")])).unwrap_err();
        assert_eq!(err.name, "OUTBOUND_ALLOW_HTTP");
        let err =
            AddressPolicy::from_vars(env(&[("OUTBOUND_ALLOW_CIDRS", "127.0.0.0/33")])).unwrap_err();
        assert_eq!(err.name, "OUTBOUND_ALLOW_CIDRS");
        assert!(err
            .to_string()
            .starts_with("OUTBOUND_ALLOW_CIDRS is invalid"));
    }
}
