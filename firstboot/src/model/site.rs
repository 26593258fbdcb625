//! The site configuration: what the operator tells a box about its place in
//! the world (name, profile, network, admin access).
//!
//! It comes as TOML (`site.toml` on a partition labelled CIAB-CONFIG or on
//! the ESP, read by the caller and handed to [`SiteConfig::parse`]) or as a
//! few `ciab.*` arguments on the kernel command line
//! ([`SiteConfig::from_kernel_cmdline`]). Both go through the same
//! deserialisation and the same checks, and every error names its source, the
//! key and the problem, with line and column for files:
//!
//! ```text
//! site.toml:7:11: key `network.gateway`: 10.0.0.1 is outside 192.0.2.10/24
//! kernel command line: key `ciab.ip`: `192.0.2.10/33` is not a CIDR: the prefix length must be 0 to 32
//! ```
//!
//! ```toml
//! hostname = "box1"
//! domain = "example.internal"
//! profile = "eval"
//! admin_email = "ops@example.org"
//! time_zone = "Europe/Berlin"
//! ntp_servers = ["10.0.0.1"]
//! ssh_authorized_keys = ["ssh-ed25519 AAAA... comment"]
//!
//! [network]
//! nic = "enp1s0"
//! mode = "static"
//! address = "192.0.2.10/24"
//! gateway = "192.0.2.1"
//! dns = ["192.0.2.53"]
//! floating_range = "192.0.2.128/25"
//!
//! [public_endpoint]
//! host = "cloud.example.org"
//! port = 443
//! ```

use crate::model::hardware::Hardware;
use crate::model::plan::Profile;
use base64::Engine as _;
use ciab_core::toml_position::{line_col, TomlPositions};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Source name used for errors in a configuration from the kernel command line.
pub const KERNEL_CMDLINE: &str = "kernel command line";

/// The operator's configuration of one box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// The box's host name: one or more RFC 1123 labels. Default `ciab`.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// DNS domain the host name lives in; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Sizing profile; `None`: the image's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// Where the box's own mail (cron, alerts) goes. Checked loosely: `name@domain.tld`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_email: Option<String>,
    /// IANA time zone name, e.g. `Europe/Berlin`; `None`: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// NTP servers (host names or addresses). `None`: not configured (the
    /// box's default); `Some([])`: explicitly no NTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp_servers: Option<Vec<String>>,
    /// authorized_keys lines for the admin user: `TYPE BASE64 [COMMENT]`.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// The box's uplink.
    #[serde(default)]
    pub network: Network,
    /// The name/address and port the cloud advertises, when clients reach it
    /// through NAT or a port forward; `None`: the box's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_endpoint: Option<PublicEndpoint>,
    /// What the USB installer does (ignored by an installed box).
    #[serde(default, skip_serializing_if = "Install::is_default")]
    pub install: Install,
    /// Where this configuration came from, to locate errors found later.
    #[serde(skip)]
    origin: Origin,
}

/// The uplink's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Interface name; `None`: the first NIC with carrier (see [`SiteConfig::resolve_nic`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
    /// DHCP (default) or a static address.
    #[serde(default)]
    pub mode: NetworkMode,
    /// The box's address and prefix length; required with `mode = "static"`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Cidr>,
    /// Default gateway; static only, and inside `address`'s subnet.
    #[serde(default, deserialize_with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// DNS resolvers; with DHCP these are used in addition to the lease's.
    #[serde(default, deserialize_with = "ip_list")]
    pub dns: Vec<IpAddr>,
    /// The provider network Neutron hands out floating IPs and router
    /// gateways from (IPv4, /29 or larger); must not hold the box's own
    /// address or the gateway. The box takes its first address, routes it and
    /// masquerades traffic leaving it; the site's router may route the range
    /// to the box's address to reach floating IPs. Default 172.24.4.0/24.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_range: Option<Cidr>,
}

/// How the USB installer picks and treats the box's internal disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Install {
    /// The disk to install to: `serial:<serial>`, `by-path:<id>` (as in
    /// `/dev/disk/by-path/`; virtio, NVMe and SATA disks) or `/dev/<name>`.
    /// `None`: the largest non-removable disk that is not the installer's
    /// own medium; two such disks of the same size need an explicit choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// Erase a disk that holds partitions or data without asking.
    #[serde(default)]
    pub wipe: bool,
    /// How long the installer waits on the console for an operator to
    /// confirm erasing a disk that holds data, when `wipe` is false.
    #[serde(default = "default_confirm_seconds")]
    pub confirm_timeout_seconds: u32,
}

impl Default for Install {
    fn default() -> Self {
        Install { disk: None, wipe: false, confirm_timeout_seconds: default_confirm_seconds() }
    }
}

impl Install {
    fn is_default(&self) -> bool {
        *self == Install::default()
    }
}

fn default_confirm_seconds() -> u32 {
    60
}

/// How the uplink gets its address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Dhcp,
    Static,
}

/// The endpoint the cloud advertises to its users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicEndpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port, default 443.
    #[serde(default = "default_https_port")]
    pub port: u16,
}

fn default_hostname() -> String {
    "ciab".to_owned()
}

fn default_https_port() -> u16 {
    443
}

impl Default for SiteConfig {
    /// DHCP on the first NIC with carrier, host name `ciab`, the image's profile.
    fn default() -> Self {
        SiteConfig {
            hostname: default_hostname(),
            domain: None,
            profile: None,
            admin_email: None,
            time_zone: None,
            ntp_servers: None,
            ssh_authorized_keys: Vec::new(),
            network: Network::default(),
            public_endpoint: None,
            install: Install::default(),
            origin: Origin { source_name: "built-in defaults".to_owned(), ..Origin::default() },
        }
    }
}

/// A configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    /// Something in the configuration is wrong.
    #[error("{}", render(source_name, *position, key.as_deref(), message))]
    Invalid {
        /// `site.toml`, `ESP:/ciab/site.toml`, [`KERNEL_CMDLINE`], … as the caller named it.
        source_name: String,
        /// 1-based line and column of the offending value in a file.
        position: Option<(usize, usize)>,
        /// Dotted key (`network.gateway`) or, from the kernel command line, the argument (`ciab.ip`).
        key: Option<String>,
        message: String,
    },
    /// The box has no NIC at all to put the uplink on.
    #[error("no network interface: this box has none besides lo")]
    NoNetworkInterface,
}

fn render(source: &str, position: Option<(usize, usize)>, key: Option<&str>, message: &str) -> String {
    let mut out = source.to_owned();
    if let Some((line, col)) = position {
        out.push_str(&format!(":{line}:{col}"));
    }
    if let Some(key) = key {
        out.push_str(&format!(": key `{key}`"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}

impl SiteConfig {
    /// Parses and checks `text`, a site.toml; `source_name` names it in errors.
    pub fn parse(source_name: &str, text: &str) -> Result<SiteConfig, SiteError> {
        let origin = Origin { source_name: source_name.to_owned(), positions: TomlPositions::new(text), aliases: BTreeMap::new() };
        let mut config: SiteConfig =
            serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let position = inner.span().map(|s| line_col(text, s.start));
                origin.serde_error(&path, inner.message(), position)
            })?;
        config.origin = origin;
        config.validate()?;
        Ok(config)
    }

    /// Reads the `ciab.*` arguments of a kernel command line:
    /// `ciab.hostname=`, `ciab.profile=`, `ciab.ip=<cidr>|dhcp`,
    /// `ciab.gateway=`, `ciab.dns=<a>,<b>` and `ciab.nic=`. A given
    /// `ciab.ip=<cidr>` means a static address. `None` when none of them is
    /// there; other arguments, `ciab.*` ones for other components included,
    /// are ignored. The last of repeated arguments wins, as in the kernel.
    pub fn from_kernel_cmdline(cmdline: &str) -> Result<Option<SiteConfig>, SiteError> {
        let mut root = toml::Table::new();
        let mut network = toml::Table::new();
        let mut aliases = BTreeMap::new();
        let mut found = false;
        for arg in split_cmdline(cmdline) {
            let Some((name, value)) = arg.split_once('=') else { continue };
            let string = |v: &str| toml::Value::String(v.to_owned());
            let (in_network, key, value) = match name {
                "ciab.hostname" => (false, "hostname", string(value)),
                "ciab.profile" => (false, "profile", string(value)),
                "ciab.nic" => (true, "nic", string(value)),
                "ciab.gateway" => (true, "gateway", string(value)),
                "ciab.dns" => {
                    (true, "dns", toml::Value::Array(value.split(',').filter(|s| !s.is_empty()).map(string).collect()))
                }
                "ciab.ip" if value == "dhcp" => {
                    network.remove("address");
                    (true, "mode", string("dhcp"))
                }
                "ciab.ip" => {
                    network.insert("address".to_owned(), string(value));
                    aliases.insert("network.address".to_owned(), name.to_owned());
                    (true, "mode", string("static"))
                }
                _ => continue,
            };
            if in_network {
                network.insert(key.to_owned(), value);
                aliases.insert(format!("network.{key}"), name.to_owned());
            } else {
                root.insert(key.to_owned(), value);
                aliases.insert(key.to_owned(), name.to_owned());
            }
            found = true;
        }
        if !found {
            return Ok(None);
        }
        if !network.is_empty() {
            root.insert("network".to_owned(), toml::Value::Table(network));
        }
        let origin = Origin { source_name: KERNEL_CMDLINE.to_owned(), positions: TomlPositions::default(), aliases };
        let mut config: SiteConfig = serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
            let path = e.path().to_string();
            origin.serde_error(&path, e.inner().message(), None)
        })?;
        config.origin = origin;
        config.validate()?;
        Ok(Some(config))
    }

    /// Checks every value and how they fit together. [`SiteConfig::parse`]
    /// and [`SiteConfig::from_kernel_cmdline`] have done so already; call it
    /// on a configuration built or changed in code.
    pub fn validate(&self) -> Result<(), SiteError> {
        let err = |key: &str, message: String| Err(self.origin.error(key, message));
        if let Err(why) = check_host_name(&self.hostname) {
            return err("hostname", format!("`{}` is not a valid host name: {why}", self.hostname));
        }
        if self.hostname.len() > 64 {
            return err("hostname", format!("`{}` is longer than 64 characters, the kernel's limit", self.hostname));
        }
        if let Some(domain) = &self.domain {
            if let Err(why) = check_host_name(domain) {
                return err("domain", format!("`{domain}` is not a valid domain name: {why}"));
            }
        }
        if let Some(email) = &self.admin_email {
            if !is_email(email) {
                return err("admin_email", format!("`{email}` is not an e-mail address: expected name@domain.tld"));
            }
        }
        if let Some(tz) = &self.time_zone {
            if !is_time_zone(tz) {
                return err(
                    "time_zone",
                    format!("`{tz}` is not an IANA time zone name: expected Area/Location, e.g. Europe/Berlin, or UTC"),
                );
            }
        }
        for (i, server) in self.ntp_servers.iter().flatten().enumerate() {
            if server.parse::<IpAddr>().is_err() && check_host_name(server).is_err() {
                return err(&format!("ntp_servers[{i}]"), format!("`{server}` is neither an IP address nor a host name"));
            }
        }
        for (i, key) in self.ssh_authorized_keys.iter().enumerate() {
            if let Err(why) = check_ssh_key(key) {
                return err(&format!("ssh_authorized_keys[{i}]"), format!("not a usable SSH public key: {why}"));
            }
        }
        self.validate_network()?;
        if let Some(disk) = &self.install.disk {
            let ok = match disk.split_once(':') {
                Some(("serial", v)) | Some(("by-path", v)) => !v.is_empty(),
                _ => disk.strip_prefix("/dev/").is_some_and(|n| !n.is_empty() && !n.contains('/')),
            };
            if !ok {
                return err("install.disk", format!("`{disk}` names no disk: use serial:<serial>, by-path:<id> or /dev/<name>"));
            }
        }
        if let Some(endpoint) = &self.public_endpoint {
            if endpoint.host.parse::<IpAddr>().is_err() {
                if let Err(why) = check_host_name(&endpoint.host) {
                    return err(
                        "public_endpoint.host",
                        format!("`{}` is neither an IP address nor a host name: {why}", endpoint.host),
                    );
                }
            }
            if endpoint.port == 0 {
                return err("public_endpoint.port", "port 0 cannot be reached; use 1 to 65535".to_owned());
            }
        }
        Ok(())
    }

    fn validate_network(&self) -> Result<(), SiteError> {
        let err = |key: &str, message: String| Err(self.origin.error(key, message));
        let net = &self.network;
        if let Some(nic) = &net.nic {
            if !is_interface_name(nic) {
                return err(
                    "network.nic",
                    format!("`{nic}` is not a network interface name: 1 to 15 characters, none of '/', ':' or spaces"),
                );
            }
        }
        match net.mode {
            NetworkMode::Dhcp => {
                if net.address.is_some() {
                    return err("network.address", "only used with mode = \"static\"; mode is dhcp".to_owned());
                }
                if net.gateway.is_some() {
                    return err("network.gateway", "only used with mode = \"static\"; mode is dhcp".to_owned());
                }
            }
            NetworkMode::Static => {
                let Some(address) = net.address else {
                    return err(
                        "network.address",
                        "required with mode = \"static\": the box's address and prefix, e.g. 192.0.2.10/24".to_owned(),
                    );
                };
                if address.prefix() == 0 {
                    return err("network.address", format!("{address} is no subnet: the prefix length must not be 0"));
                }
                if address.is_network_or_broadcast() {
                    return err(
                        "network.address",
                        format!("{address} is the subnet's network or broadcast address, not a host's"),
                    );
                }
                if let Some(gateway) = net.gateway {
                    if !address.contains(gateway) {
                        return err("network.gateway", format!("{gateway} is outside {address}"));
                    }
                    if gateway == address.addr() {
                        return err("network.gateway", format!("{gateway} is the box's own address"));
                    }
                }
            }
        }
        if let Some(range) = net.floating_range {
            if range.addr() != range.network() {
                return err(
                    "network.floating_range",
                    format!("{range} has host bits set; did you mean {}/{}?", range.network(), range.prefix()),
                );
            }
            if !range.addr().is_ipv4() || range.prefix() > 29 {
                return err("network.floating_range", format!("{range}: floating IPs need an IPv4 range of 8 addresses or more (/29 or shorter)"));
            }
            if let Some(address) = net.address {
                if range.contains(address.addr()) {
                    return err("network.floating_range", format!("{range} holds the box's own address {}", address.addr()));
                }
            }
            if let Some(gateway) = net.gateway {
                if range.contains(gateway) {
                    return err("network.floating_range", format!("{range} holds the gateway {gateway}"));
                }
            }
        }
        Ok(())
    }

    /// Checks the configuration against the box: a named NIC must exist.
    pub fn validate_against(&self, hw: &Hardware) -> Result<(), SiteError> {
        let Some(nic) = &self.network.nic else { return Ok(()) };
        if hw.nics.iter().any(|n| &n.name == nic) {
            return Ok(());
        }
        let existing = if hw.nics.is_empty() {
            "it has none".to_owned()
        } else {
            format!("it has {}", hw.nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "))
        };
        Err(self.origin.error("network.nic", format!("this box has no network interface `{nic}`; {existing}")))
    }

    /// The uplink: the named NIC (which must exist), else the first NIC with
    /// carrier, else the first NIC (it may be plugged in later).
    pub fn resolve_nic(&self, hw: &Hardware) -> Result<String, SiteError> {
        self.validate_against(hw)?;
        if let Some(nic) = &self.network.nic {
            return Ok(nic.clone());
        }
        hw.nics
            .iter()
            .find(|n| n.carrier)
            .or_else(|| hw.nics.first())
            .map(|n| n.name.clone())
            .ok_or(SiteError::NoNetworkInterface)
    }

    /// The name errors call this configuration's source by.
    pub fn source_name(&self) -> &str {
        &self.origin.source_name
    }
}

// --- Where values came from -------------------------------------------------

/// The source of a configuration and where each of its values was, so errors
/// found after deserialisation can point at them.
#[derive(Debug, Clone, Default)]
struct Origin {
    source_name: String,
    /// Dotted key (`network.dns[1]`) → 1-based line and column of its value.
    positions: TomlPositions,
    /// Dotted key → what the source calls it (`network.address` → `ciab.ip`).
    aliases: BTreeMap<String, String>,
}

/// Where a configuration came from is not part of its value.
impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Origin {}

impl Origin {
    /// An error at `key`, located at its value, or else at the nearest
    /// enclosing table that is in the source.
    fn error(&self, key: &str, message: String) -> SiteError {
        let mut position = None;
        let mut at = key;
        loop {
            if let Some(p) = self.positions.value(at) {
                position = Some(p);
                break;
            }
            match at.rfind(['.', '[']) {
                Some(i) => at = &at[..i],
                None => break,
            }
        }
        SiteError::Invalid {
            source_name: self.source_name.clone(),
            position,
            key: Some(self.alias(key)),
            message,
        }
    }

    fn alias(&self, key: &str) -> String {
        let base = key.split('[').next().unwrap_or(key);
        self.aliases.get(key).or_else(|| self.aliases.get(base)).cloned().unwrap_or_else(|| key.to_owned())
    }

    /// Turns a deserialisation error at `path` into a [`SiteError`]; unknown
    /// keys are reported at the key itself, other errors at the value.
    fn serde_error(&self, path: &str, message: &str, position: Option<(usize, usize)>) -> SiteError {
        let path = if path == "." { "" } else { path };
        let message = message.trim_end();
        let (key, position, message) = match message.strip_prefix("unknown field `").and_then(|m| m.split_once('`')) {
            // The path may or may not end in the unknown key already; the
            // position is toml's, which points at the key rather than its value.
            Some((field, rest)) => {
                let key = match path {
                    "" => field.to_owned(),
                    p if p == field || p.ends_with(&format!(".{field}")) => p.to_owned(),
                    p => format!("{p}.{field}"),
                };
                (key, position, format!("unknown key{rest}"))
            }
            // No path: the text is not TOML at all.
            None if path.is_empty() => (String::new(), position, format!("invalid TOML: {message}")),
            // toml locates errors inside arrays at the array; the first pass knows better.
            None => (path.to_owned(), self.positions.value(path).or(position), message.to_owned()),
        };
        SiteError::Invalid {
            source_name: self.source_name.clone(),
            position,
            key: (!key.is_empty()).then(|| self.alias(&key)),
            message,
        }
    }
}

/// Kernel command line words: whitespace-separated, double quotes group.
fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

// --- Addresses ----------------------------------------------------------------

/// An address with a prefix length (`192.0.2.10/24`, `2001:db8::1/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `addr`/`prefix`; `None` if the prefix is too long for the family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        (prefix <= max_prefix(addr)).then_some(Cidr { addr, prefix })
    }

    /// The address as written (host bits included).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The subnet's first address.
    pub fn network(&self) -> IpAddr {
        from_bits(self.addr, bits(self.addr) & self.mask())
    }

    /// Whether `ip` is in the subnet (never, for the other address family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && bits(ip) & self.mask() == bits(self.addr) & self.mask()
    }

    /// The subnet's network or (IPv4) broadcast address, unusable for a
    /// host, except in /31 and /32 (and IPv6 /127, /128) where every address is.
    pub fn is_network_or_broadcast(&self) -> bool {
        if self.prefix + 1 >= max_prefix(self.addr) {
            return false;
        }
        let b = bits(self.addr);
        let host = b & !self.mask() & family_mask(self.addr);
        host == 0 || (self.addr.is_ipv4() && host == !self.mask() & family_mask(self.addr))
    }

    /// The prefix as a mask in the low bits of a u128.
    fn mask(&self) -> u128 {
        let width = u32::from(max_prefix(self.addr));
        let host_bits = width - u32::from(self.prefix);
        family_mask(self.addr) & !(u128::MAX.checked_shr(128 - host_bits).unwrap_or(0))
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn family_mask(ip: IpAddr) -> u128 {
    if ip.is_ipv4() {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_bits(like: IpAddr, value: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((value as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(value.into()),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((addr, prefix)) = s.split_once('/') else {
            return Err(format!("`{s}` is not a CIDR: add the prefix length, e.g. {s}/24"));
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("`{s}` is not a CIDR: `{addr}` is not an IP address"))?;
        let max = max_prefix(addr);
        prefix
            .parse::<u8>()
            .ok()
            .filter(|p| prefix.bytes().all(|b| b.is_ascii_digit()) && *p <= max)
            .and_then(|p| Cidr::new(addr, p))
            .ok_or_else(|| format!("`{s}` is not a CIDR: the prefix length must be 0 to {max}"))
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// An IP address with an error message that shows the bad value.
struct Ip(IpAddr);

impl<'de> Deserialize<'de> for Ip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Ip).map_err(|_| de::Error::custom(format!("`{s}` is not an IP address")))
    }
}

fn opt_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    Ok(Option::<Ip>::deserialize(d)?.map(|ip| ip.0))
}

fn ip_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    Ok(Vec::<Ip>::deserialize(d)?.into_iter().map(|ip| ip.0).collect())
}

// --- Value checks -------------------------------------------------------------

/// RFC 1123 host name: dot-separated labels of letters, digits and '-'.
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".to_owned());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (leading, trailing or doubled '.')".to_owned());
        }
        if label.len() > 63 {
            return Err(format!("label `{label}` is longer than 63 characters"));
        }
        if let Some(c) = label.chars().find(|c| !c.is_ascii_alphanumeric() && *c != '-') {
            return Err(format!("{c:?} is not allowed; use letters, digits and '-'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with '-'"));
        }
    }
    // RFC 3696: a top-level label is never all digits, so names cannot look like addresses.
    if name.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err("the last label is all digits".to_owned());
    }
    Ok(())
}

/// Loosely `local@domain.tld`: enough to catch a missing or misplaced part.
/// The local part is kept to characters that are inert in the files it is
/// written to (no quotes, no `|` that /etc/aliases would run as a command).
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    !local.is_empty()
        && local.chars().all(|c| c.is_ascii_alphanumeric() || "._%+-=".contains(c))
        && domain.contains('.')
        && check_host_name(domain).is_ok()
}

/// `UTC`, `Europe/Berlin`, `America/Argentina/Buenos_Aires`, `Etc/GMT+5`: the
/// shape of an IANA name. Whether the zone exists is tzdata's business.
fn is_time_zone(s: &str) -> bool {
    s.len() <= 64
        && s.split('/').all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && part.chars().all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
        })
}

/// Linux interface names: at most IFNAMSIZ-1 bytes, no '/', ':' or whitespace.
fn is_interface_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// Key types OpenSSH 10 (Debian trixie) accepts in authorized_keys.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
];

/// `TYPE BASE64 [COMMENT]`, where the blob decodes and names the same type.
fn check_ssh_key(line: &str) -> Result<(), String> {
    if line.contains(['\n', '\r']) {
        // Would add lines of its own to authorized_keys.
        return Err("it spans several lines; give one key per list item".to_owned());
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("it contains control characters".to_owned());
    }
    let mut words = line.split_whitespace();
    let (Some(kind), blob) = (words.next(), words.next()) else {
        return Err("it is empty".to_owned());
    };
    if kind == "ssh-dss" {
        return Err("DSA keys are not supported by OpenSSH 10; use ssh-ed25519".to_owned());
    }
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "unknown key type `{kind}` (options before the key type are not supported); expected one of {}",
            SSH_KEY_TYPES.join(", ")
        ));
    }
    let Some(blob) = blob else {
        return Err(format!("no base64 key after `{kind}`"));
    };
    // Padded, and the bits past the last byte zero: OpenSSH's b64_pton
    // refuses anything else, and so does the STANDARD engine.
    let bytes = base64::engine::general_purpose::STANDARD.decode(blob).map_err(|_| "the key is not valid base64".to_owned())?;
    let mut reader = SshReader(&bytes);
    let inner = reader.string().ok_or_else(|| "the key data is truncated".to_owned())?;
    if inner != kind.as_bytes() {
        return Err(format!("the key data is for `{}`, not `{kind}`", String::from_utf8_lossy(inner)));
    }
    match kind {
        "ssh-ed25519" => {
            if reader.string().map(<[u8]>::len) == Some(32) && reader.0.is_empty() {
                Ok(())
            } else {
                Err("the ed25519 key data is truncated or malformed".to_owned())
            }
        }
        "ssh-rsa" => {
            let modulus = reader.string().and_then(|_exponent| reader.string());
            // OpenSSH refuses RSA keys below 1024 bits (RequiredRSASize).
            match modulus.map(|n| n.iter().skip_while(|b| **b == 0).count() * 8) {
                Some(bits) if bits >= 1024 => Ok(()),
                Some(bits) => Err(format!("the RSA key has {bits} bits; OpenSSH requires at least 1024")),
                None => Err("the RSA key data is truncated".to_owned()),
            }
        }
        _ if reader.0.is_empty() => Err("the key data is truncated".to_owned()),
        _ => Ok(()),
    }
}

/// Reads the SSH wire format's length-prefixed strings.
struct SshReader<'a>(&'a [u8]);

impl<'a> SshReader<'a> {
    fn string(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.0.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        let (s, rest) = (rest.get(..len)?, rest.get(len..)?);
        self.0 = rest;
        Some(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::hardware::{Firmware, Nic};

    #[test]
    fn install_section_names_a_disk_or_is_refused() {
        let c = SiteConfig::parse("site.toml", "[install]\ndisk = \"serial:QM0001\"\nwipe = true\n").unwrap();
        assert_eq!(c.install.disk.as_deref(), Some("serial:QM0001"));
        assert!(c.install.wipe);
        assert_eq!(c.install.confirm_timeout_seconds, 60);
        assert!(!SiteConfig::parse("s", "").unwrap().install.wipe);
        let err = SiteConfig::parse("site.toml", "[install]\ndisk = \"sda\"\n").unwrap_err().to_string();
        assert!(err.contains("site.toml:2:8: key `install.disk`") && err.contains("serial:<serial>"), "{err}");
        let err = SiteConfig::parse("site.toml", "[install]\nwipe = \"yes\"\n").unwrap_err().to_string();
        assert!(err.contains("install.wipe"), "{err}");
    }

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP8X4vm9Xbkw3tbMnqnx5R0EqC9q58mct1YB5TAVTjRT ops@box";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNoXbGbmngUQYu54zfX/Z6I6FnJSncXK5IgNAWz05eosWR+Ozsws7pkMI8Jax1t/KanBIIvoXoBpvfdsXpGkZXc= ec";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDFfczF/Gq7WcQDTu7b3hjlfQKRCvCIja5lC/w097FvRbElehrp9X9EwqYL+u8ApJgmXYlJe32aEbcs3BpPD2IlsTolrwcPq/QUjagtuQ5xNQ86ME63eVcecOA0hcqpMgloa7QirJ4xIGiK6l61wjJuKz2UdS4V33HDKbaXWuRcLnnoX2B4wTKQjTVObM8mE4+rjU+C7gSttq4P2gOCqAOb18U7BtXJYAp78qS2A+JKitwaTOqMXQ0AGQI9o9WPzIVZBIfL940vt+JRK1yGcxx9FJ+hmaNZ2JkWf4jm9vsZHoh0wZ5FzoFbI+jT6LAtj0mpWCr7ZoXwg4eR5znh0Dnz rsa";

    fn full() -> String {
        format!(
            r#"hostname = "box1"
domain = "example.internal"
profile = "eval"
admin_email = "ops@example.org"
time_zone = "Europe/Berlin"
ntp_servers = ["10.0.0.1", "ntp.example.org"]
ssh_authorized_keys = ["{ED25519}", "{ECDSA}", "{RSA}"]

[network]
nic = "enp1s0"
mode = "static"
address = "192.0.2.10/24"
gateway = "192.0.2.1"
dns = ["192.0.2.53", "2001:db8::53"]
floating_range = "192.0.2.128/25"

[public_endpoint]
host = "cloud.example.org"
port = 8443
"#
        )
    }

    fn err(text: &str) -> String {
        SiteConfig::parse("site.toml", text).unwrap_err().to_string()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn hw(nics: &[(&str, bool)]) -> Hardware {
        Hardware {
            cpus: 4,
            memory_bytes: 16 << 30,
            firmware: Firmware::Uefi,
            kvm_device: true,
            disks: vec![],
            nics: nics
                .iter()
                .map(|(name, carrier)| Nic { name: (*name).into(), mac: "52:54:00:00:00:01".into(), carrier: *carrier })
                .collect(),
        }
    }

    #[test]
    fn full_config_parses() {
        let c = SiteConfig::parse("site.toml", &full()).unwrap();
        assert_eq!(c.hostname, "box1");
        assert_eq!(c.domain.as_deref(), Some("example.internal"));
        assert_eq!(c.profile, Some(Profile::Eval));
        assert_eq!(c.admin_email.as_deref(), Some("ops@example.org"));
        assert_eq!(c.time_zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(c.ntp_servers, Some(vec!["10.0.0.1".to_owned(), "ntp.example.org".to_owned()]));
        assert_eq!(c.ssh_authorized_keys, vec![ED25519, ECDSA, RSA]);
        let n = &c.network;
        assert_eq!(n.nic.as_deref(), Some("enp1s0"));
        assert_eq!(n.mode, NetworkMode::Static);
        assert_eq!(n.address, Some(Cidr { addr: ip("192.0.2.10"), prefix: 24 }));
        assert_eq!(n.gateway, Some(ip("192.0.2.1")));
        assert_eq!(n.dns, vec![ip("192.0.2.53"), ip("2001:db8::53")]);
        assert_eq!(n.floating_range.map(|r| r.to_string()).as_deref(), Some("192.0.2.128/25"));
        assert_eq!(c.public_endpoint, Some(PublicEndpoint { host: "cloud.example.org".into(), port: 8443 }));
        assert_eq!(c.source_name(), "site.toml");

        // Serialises back to an equal configuration.
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<SiteConfig>(&json).unwrap(), c);
        let toml_text = toml::to_string(&c).unwrap();
        assert_eq!(SiteConfig::parse("again.toml", &toml_text).unwrap(), c);
    }

    #[test]
    fn minimal_configs_are_the_defaults() {
        let default = SiteConfig::default();
        assert_eq!(default.hostname, "ciab");
        assert_eq!(default.network.mode, NetworkMode::Dhcp);
        assert_eq!(default.profile, None);
        assert_eq!(SiteConfig::parse("site.toml", "").unwrap(), default);
        assert_eq!(SiteConfig::parse("site.toml", "# nothing set\n[network]\n").unwrap(), default);
        let c = SiteConfig::parse("site.toml", "hostname = \"lab-7\"\n[public_endpoint]\nhost = \"203.0.113.7\"\n").unwrap();
        assert_eq!(c.hostname, "lab-7");
        assert_eq!(c.public_endpoint, Some(PublicEndpoint { host: "203.0.113.7".into(), port: 443 }));
        assert_eq!(c.ntp_servers, None);
        assert_eq!(SiteConfig::parse("site.toml", "ntp_servers = []").unwrap().ntp_servers, Some(vec![]));
        default.validate().unwrap();
    }

    #[test]
    fn bad_values_name_source_line_column_and_key() {
        let gw = "[network]\nmode = \"static\"\naddress = \"192.0.2.10/24\"\ngateway = \"10.0.0.1\"\n";
        assert_eq!(err(gw), "site.toml:4:11: key `network.gateway`: 10.0.0.1 is outside 192.0.2.10/24");

        let cases: &[(&str, &str)] = &[
            (
                "[network]\nmode = \"static\"\naddress = \"192.0.2.10/33\"\n",
                "site.toml:3:11: key `network.address`: `192.0.2.10/33` is not a CIDR: the prefix length must be 0 to 32",
            ),
            (
                "[network]\nmode = \"static\"\naddress = \"192.0.2.10\"\n",
                "site.toml:3:11: key `network.address`: `192.0.2.10` is not a CIDR: add the prefix length, e.g. 192.0.2.10/24",
            ),
            (
                "[network]\nfloating_range = \"192.0.2.300/25\"\n",
                "site.toml:2:18: key `network.floating_range`: `192.0.2.300/25` is not a CIDR: `192.0.2.300` is not an IP address",
            ),
            (
                "[network]\nfloating_range = \"192.0.2.130/25\"\n",
                "site.toml:2:18: key `network.floating_range`: 192.0.2.130/25 has host bits set; did you mean 192.0.2.128/25?",
            ),
            (
                "[network]\nmode = \"static\"\naddress = \"192.0.2.10/24\"\nfloating_range = \"192.0.2.0/28\"\n",
                "site.toml:4:18: key `network.floating_range`: 192.0.2.0/28 holds the box's own address 192.0.2.10",
            ),
            (
                "[network]\nfloating_range = \"192.0.2.128/30\"\n",
                "site.toml:2:18: key `network.floating_range`: 192.0.2.128/30: floating IPs need an IPv4 range of 8 addresses or more (/29 or shorter)",
            ),
            (
                "[network]\nfloating_range = \"fd00::/64\"\n",
                "site.toml:2:18: key `network.floating_range`: fd00::/64: floating IPs need an IPv4 range of 8 addresses or more (/29 or shorter)",
            ),
            (
                "[network]\nmode = \"static\"\ngateway = \"192.0.2.1\"\n",
                "site.toml:1:1: key `network.address`: required with mode = \"static\": the box's address and prefix, e.g. 192.0.2.10/24",
            ),
            (
                "[network]\naddress = \"192.0.2.10/24\"\n",
                "site.toml:2:11: key `network.address`: only used with mode = \"static\"; mode is dhcp",
            ),
            (
                "[network]\nmode = \"static\"\naddress = \"192.0.2.0/24\"\n",
                "site.toml:3:11: key `network.address`: 192.0.2.0/24 is the subnet's network or broadcast address, not a host's",
            ),
            ("[network]\nmode = \"dhcp4\"\n", "site.toml:2:8: key `network.mode`: unknown variant `dhcp4`, expected `dhcp` or `static`"),
            ("[network]\ndns = [\"192.0.2.53\", \"dns.example\"]\n", "site.toml:2:22: key `network.dns[1]`: `dns.example` is not an IP address"),
            (
                "hostname = \"box1\"\nhostnmae = \"box2\"\n",
                "site.toml:2:1: key `hostnmae`: unknown key, expected one of `hostname`, `domain`, `profile`, `admin_email`, `time_zone`, `ntp_servers`, `ssh_authorized_keys`, `network`, `public_endpoint`, `install`",
            ),
            (
                "[network]\nnic = \"enp1s0\"\ngatway = \"192.0.2.1\"\n",
                "site.toml:3:1: key `network.gatway`: unknown key, expected one of `nic`, `mode`, `address`, `gateway`, `dns`, `floating_range`",
            ),
            ("[storage]\nsize = 1\n", "site.toml:1:2: key `storage`: unknown key, expected one of `hostname`, `domain`, `profile`, `admin_email`, `time_zone`, `ntp_servers`, `ssh_authorized_keys`, `network`, `public_endpoint`, `install`"),
            ("hostname = \"box_1\"\n", "site.toml:1:12: key `hostname`: `box_1` is not a valid host name: '_' is not allowed; use letters, digits and '-'"),
            ("hostname = \"-box\"\n", "site.toml:1:12: key `hostname`: `-box` is not a valid host name: label `-box` starts or ends with '-'"),
            ("hostname = \"box1.\"\n", "site.toml:1:12: key `hostname`: `box1.` is not a valid host name: empty label (leading, trailing or doubled '.')"),
            ("hostname = 7\n", "site.toml:1:12: key `hostname`: invalid type: integer `7`, expected a string"),
            ("domain = \"10.0.0.1\"\n", "site.toml:1:10: key `domain`: `10.0.0.1` is not a valid domain name: the last label is all digits"),
            ("profile = \"huge\"\n", "site.toml:1:11: key `profile`: unknown variant `huge`, expected one of `tiny`, `eval`, `box`, `edge`"),
            ("hostname = \"a123456789a123456789a123456789a123456789.a123456789a123456789a12345\"\n", "site.toml:1:12: key `hostname`: `a123456789a123456789a123456789a123456789.a123456789a123456789a12345` is longer than 64 characters, the kernel's limit"),
            ("admin_email = \"|/bin/sh@example.org\"\n", "site.toml:1:15: key `admin_email`: `|/bin/sh@example.org` is not an e-mail address: expected name@domain.tld"),
            // Dotted keys and inline tables are located too.
            (
                "network.mode = \"static\"\nnetwork.address = \"192.0.2.10/24\"\nnetwork.gateway = \"10.0.0.1\"\n",
                "site.toml:3:19: key `network.gateway`: 10.0.0.1 is outside 192.0.2.10/24",
            ),
            (
                "network = { mode = \"static\", address = \"192.0.2.10/24\", gateway = \"10.0.0.1\" }\n",
                "site.toml:1:67: key `network.gateway`: 10.0.0.1 is outside 192.0.2.10/24",
            ),
            ("admin_email = \"ops@example\"\n", "site.toml:1:15: key `admin_email`: `ops@example` is not an e-mail address: expected name@domain.tld"),
            ("time_zone = \"Europe/Berlin \"\n", "site.toml:1:13: key `time_zone`: `Europe/Berlin ` is not an IANA time zone name: expected Area/Location, e.g. Europe/Berlin, or UTC"),
            ("ntp_servers = [\"pool..ntp.org\"]\n", "site.toml:1:16: key `ntp_servers[0]`: `pool..ntp.org` is neither an IP address nor a host name"),
            ("[public_endpoint]\nhost = \"cloud.example.org\"\nport = 70000\n", "site.toml:3:8: key `public_endpoint.port`: invalid value: integer `70000`, expected u16"),
            ("[public_endpoint]\nport = 443\n", "site.toml:1:1: key `public_endpoint`: missing field `host`"),
            ("hostname = \"box1\"\nhostname = \"box2\"\n", "site.toml:2:1: invalid TOML: duplicate key `hostname` in document root"),
            ("hostname = box1\n", "site.toml:1:12: invalid TOML: invalid string\nexpected `\"`, `'`"),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(text, expected)| err(text) != *expected)
            .map(|(text, expected)| format!("for {text:?}\n  got:  {}\n  want: {expected}", err(text)))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn ssh_keys_are_checked() {
        let bad = |key: &str| err(&format!("ssh_authorized_keys = [{:?}, {key:?}]\n", ED25519));
        let at = "site.toml:1:116: key `ssh_authorized_keys[1]`: not a usable SSH public key: ";
        assert_eq!(bad("ssh-ed25519"), format!("{at}no base64 key after `ssh-ed25519`"));
        assert_eq!(bad("ssh-ed25519 AAAA!!!! x"), format!("{at}the key is not valid base64"));
        let swapped = ECDSA.replacen("ecdsa-sha2-nistp256", "ssh-ed25519", 1);
        assert_eq!(bad(&swapped), format!("{at}the key data is for `ecdsa-sha2-nistp256`, not `ssh-ed25519`"));
        let short = ED25519.replacen("TAVTjRT", "TAVT", 1);
        assert_eq!(bad(&short), format!("{at}the key is not valid base64"));
        assert_eq!(
            bad("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP8X4vm9Xbkw3tbMnqnx5R0EqC9q58mct1YB5TAVTg== x"),
            format!("{at}the ed25519 key data is truncated or malformed")
        );
        assert_eq!(bad("ssh-dss AAAAB3NzaC1kc3M= old"), format!("{at}DSA keys are not supported by OpenSSH 10; use ssh-ed25519"));
        assert_eq!(
            bad(&format!("from=\"10.0.0.0/8\" {ED25519}")),
            format!("{at}unknown key type `from=\"10.0.0.0/8\"` (options before the key type are not supported); expected one of ssh-ed25519, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com, ssh-rsa")
        );
        assert_eq!(bad(&format!("{ED25519}\n{RSA}")), format!("{at}it spans several lines; give one key per list item"));
        // A 512-bit RSA key: exponent 65537, modulus 0x00 + 64 bytes.
        let mut blob = Vec::new();
        for part in [b"ssh-rsa".to_vec(), vec![1, 0, 1], [vec![0], vec![0xc5; 64]].concat()] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(&part);
        }
        assert_eq!(
            bad(&format!("ssh-rsa {}", base64::engine::general_purpose::STANDARD.encode(&blob))),
            format!("{at}the RSA key has 512 bits; OpenSSH requires at least 1024")
        );
    }

    #[test]
    fn ssh_key_base64_is_as_strict_as_openssh() {
        let not_base64 = Err("the key is not valid base64".to_owned());
        let key = |blob: &str| check_ssh_key(&format!("ssh-ed25519 {blob}"));
        assert_eq!(key("QQ=="), Err("the key data is truncated".to_owned()));
        assert_eq!(key("Q==="), not_base64);
        assert_eq!(key("QQ="), not_base64);
        assert_eq!(key("QQ"), not_base64, "padding is required");
        assert_eq!(key("QR=="), not_base64, "the bits past the last byte must be zero");
        assert_eq!(key("Q=Q="), not_base64);
    }

    #[test]
    fn nic_must_exist_and_resolves() {
        let box_ = hw(&[("eno1", false), ("enp1s0", true), ("enp2s0", true)]);
        let named = SiteConfig::parse("site.toml", "[network]\nnic = \"enp9s0\"\n").unwrap();
        assert_eq!(
            named.validate_against(&box_).unwrap_err().to_string(),
            "site.toml:2:7: key `network.nic`: this box has no network interface `enp9s0`; it has eno1, enp1s0, enp2s0"
        );
        assert_eq!(named.resolve_nic(&box_).unwrap_err(), named.validate_against(&box_).unwrap_err());
        assert_eq!(
            named.validate_against(&hw(&[])).unwrap_err().to_string(),
            "site.toml:2:7: key `network.nic`: this box has no network interface `enp9s0`; it has none"
        );

        let ok = SiteConfig::parse("site.toml", "[network]\nnic = \"enp2s0\"\n").unwrap();
        ok.validate_against(&box_).unwrap();
        assert_eq!(ok.resolve_nic(&box_).unwrap(), "enp2s0");

        let default = SiteConfig::default();
        assert_eq!(default.resolve_nic(&box_).unwrap(), "enp1s0", "first with carrier");
        assert_eq!(default.resolve_nic(&hw(&[("eno1", false), ("eno2", false)])).unwrap(), "eno1", "else first");
        let none = default.resolve_nic(&hw(&[])).unwrap_err();
        assert_eq!(none, SiteError::NoNetworkInterface);
        assert_eq!(none.to_string(), "no network interface: this box has none besides lo");
    }

    #[test]
    fn kernel_cmdline() {
        let cmdline = "BOOT_IMAGE=/vmlinuz root=UUID=1234 ro quiet ciab.hostname=edge-3 ciab.profile=edge \
                       ciab.ip=192.0.2.10/24 ciab.gateway=192.0.2.1 ciab.dns=192.0.2.53,192.0.2.54 \"ciab.nic=enp1s0\" ciab.debug=1";
        let c = SiteConfig::from_kernel_cmdline(cmdline).unwrap().unwrap();
        assert_eq!(c.hostname, "edge-3");
        assert_eq!(c.profile, Some(Profile::Edge));
        assert_eq!(c.network.mode, NetworkMode::Static);
        assert_eq!(c.network.address.map(|a| a.to_string()).as_deref(), Some("192.0.2.10/24"));
        assert_eq!(c.network.gateway, Some(ip("192.0.2.1")));
        assert_eq!(c.network.dns, vec![ip("192.0.2.53"), ip("192.0.2.54")]);
        assert_eq!(c.network.nic.as_deref(), Some("enp1s0"));
        assert_eq!(c.source_name(), KERNEL_CMDLINE);

        assert_eq!(SiteConfig::from_kernel_cmdline("root=/dev/vda2 ro ciab.debug=1").unwrap(), None);
        let dhcp = SiteConfig::from_kernel_cmdline("ciab.ip=192.0.2.10/24 ciab.ip=dhcp").unwrap().unwrap();
        assert_eq!((dhcp.network.mode, dhcp.network.address), (NetworkMode::Dhcp, None), "the last one wins");
        assert_eq!(SiteConfig::from_kernel_cmdline("ciab.hostname=x").unwrap().unwrap().network, Network::default());

        let bad = |cmdline: &str| SiteConfig::from_kernel_cmdline(cmdline).unwrap_err().to_string();
        assert_eq!(
            bad("ciab.ip=192.0.2.10/33"),
            "kernel command line: key `ciab.ip`: `192.0.2.10/33` is not a CIDR: the prefix length must be 0 to 32"
        );
        assert_eq!(
            bad("ciab.ip=192.0.2.10/24 ciab.gateway=10.0.0.1"),
            "kernel command line: key `ciab.gateway`: 10.0.0.1 is outside 192.0.2.10/24"
        );
        assert_eq!(bad("ciab.gateway=10.0.0.1"), "kernel command line: key `ciab.gateway`: only used with mode = \"static\"; mode is dhcp");
        assert_eq!(bad("ciab.dns=192.0.2.53,nope"), "kernel command line: key `ciab.dns`: `nope` is not an IP address");
        assert_eq!(bad("ciab.profile=big"), "kernel command line: key `ciab.profile`: unknown variant `big`, expected one of `tiny`, `eval`, `box`, `edge`");
        assert_eq!(
            bad("ciab.hostname=my_box"),
            "kernel command line: key `ciab.hostname`: `my_box` is not a valid host name: '_' is not allowed; use letters, digits and '-'"
        );
        let named = SiteConfig::from_kernel_cmdline("ciab.nic=eth9").unwrap().unwrap();
        assert_eq!(
            named.validate_against(&hw(&[("eth0", true)])).unwrap_err().to_string(),
            "kernel command line: key `ciab.nic`: this box has no network interface `eth9`; it has eth0"
        );
    }

    #[test]
    fn cidr_arithmetic() {
        let c: Cidr = "192.0.2.10/24".parse().unwrap();
        assert_eq!(c.network(), ip("192.0.2.0"));
        assert!(c.contains(ip("192.0.2.255")) && !c.contains(ip("192.0.3.1")) && !c.contains(ip("::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let host: Cidr = "192.0.2.10/32".parse().unwrap();
        assert!(host.contains(ip("192.0.2.10")) && !host.contains(ip("192.0.2.11")) && !host.is_network_or_broadcast());
        assert!("192.0.2.255/24".parse::<Cidr>().unwrap().is_network_or_broadcast());
        assert!(!"192.0.2.0/31".parse::<Cidr>().unwrap().is_network_or_broadcast());
        let v6: Cidr = "2001:db8::10/64".parse().unwrap();
        assert_eq!(v6.network(), ip("2001:db8::"));
        assert!(v6.contains(ip("2001:db8::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!"2001:db8::ff/64".parse::<Cidr>().unwrap().is_network_or_broadcast());
        assert_eq!("::1/129".parse::<Cidr>().unwrap_err(), "`::1/129` is not a CIDR: the prefix length must be 0 to 128");
        assert_eq!("10.0.0.1/+8".parse::<Cidr>().unwrap_err(), "`10.0.0.1/+8` is not a CIDR: the prefix length must be 0 to 32");
    }

    #[test]
    fn cmdline_words_honour_quotes() {
        assert_eq!(split_cmdline("a  b=\"c d\" \"e f\"g"), vec!["a", "b=c d", "e fg"]);
    }
}
