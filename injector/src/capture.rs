//! The capture planner: turns a [`CaptureConfig`] into the iptables rules that steer a pod's
//! TCP traffic through the sidecar, exactly as Istio's `istio-iptables` lays them out.
//!
//! Why a pure planner: the rules are the contract with the rest of the mesh (the proxy listens on
//! 15001/15006 and expects `SO_ORIGINAL_DST` to hold the real destination; operators read
//! `iptables-save` output and compare it with Istio's). Keeping rule generation free of I/O lets
//! unit tests pin every rule against Istio's own listings, while `crate::iptables` only pipes the
//! rendered text into `iptables-restore`.
//!
//! Chain names and rule order follow istio-iptables: `ISTIO_INBOUND`, `ISTIO_IN_REDIRECT`,
//! `ISTIO_OUTPUT`, `ISTIO_REDIRECT` in the nat table (plus `ISTIO_DIVERT`/`ISTIO_TPROXY` in
//! mangle for TPROXY mode).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

// === constants ===

/// UID (and by default GID) the proxy runs as; its own traffic is never captured.
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Port the proxy's `virtualOutbound` listener binds.
pub const DEFAULT_PROXY_PORT: u16 = 15001;
/// Port the proxy's `virtualInbound` listener binds.
pub const DEFAULT_INBOUND_CAPTURE_PORT: u16 = 15006;
/// Inbound ports that are never captured: Prometheus stats (15090), health (15021) and the
/// agent's merged metrics (15020). Istio's injector always passes them in `-d`.
pub const ALWAYS_EXCLUDED_INBOUND_PORTS: [u16; 3] = [15090, 15021, 15020];
/// Packet mark used by TPROXY mode (Istio's `--istio-inbound-tproxy-mark`).
pub const DEFAULT_TPROXY_MARK: u32 = 1337;
/// Policy-routing table used by TPROXY mode (Istio's `--istio-inbound-tproxy-route-table`).
pub const DEFAULT_TPROXY_ROUTE_TABLE: u32 = 133;
/// Mark the proxy's outbound-to-local traffic carries in TPROXY mode.
const OUTBOUND_MARK: &str = "1338";

/// Chain receiving every inbound TCP packet (from nat or mangle `PREROUTING`).
pub const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
/// Chain redirecting to the inbound capture port (15006).
pub const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
/// Chain receiving every locally generated TCP packet (from nat `OUTPUT`).
pub const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
/// Chain redirecting to the outbound capture port (15001).
pub const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
/// TPROXY mode: marks packets of established inbound connections.
pub const ISTIO_DIVERT: &str = "ISTIO_DIVERT";
/// TPROXY mode: hands new inbound connections to the proxy.
pub const ISTIO_TPROXY: &str = "ISTIO_TPROXY";

/// Every chain this crate may create, in the order istio-iptables declares them.
pub const ISTIO_CHAINS: [&str; 6] = [
    ISTIO_DIVERT,
    ISTIO_TPROXY,
    ISTIO_INBOUND,
    ISTIO_REDIRECT,
    ISTIO_IN_REDIRECT,
    ISTIO_OUTPUT,
];

// === errors ===

/// A capture setting that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("invalid port {0:?}: expected a number from 1 to 65535")]
    Port(String),
    #[error("invalid CIDR {0:?}: expected ADDRESS/PREFIX, e.g. 10.96.0.0/12")]
    Cidr(String),
    #[error("invalid interception mode {0:?}: expected REDIRECT or TPROXY")]
    Mode(String),
    #[error("invalid id {0:?}: expected a numeric UID/GID")]
    Id(String),
    #[error("invalid interface name {0:?}")]
    Interface(String),
}

// === types ===

/// How inbound connections reach the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InterceptionMode {
    /// nat `REDIRECT`: the proxy reads the destination with `SO_ORIGINAL_DST`.
    #[default]
    Redirect,
    /// mangle `TPROXY`: the destination is kept on the socket; the source address is preserved.
    Tproxy,
}

/// Which ports (inbound or outbound) are selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSelection {
    /// `*`: every port.
    All,
    /// An explicit list; empty means none.
    Ports(Vec<u16>),
}

/// Which destination ranges outbound capture covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpRanges {
    /// `*`: every destination.
    All,
    /// An explicit list; empty disables outbound capture.
    Cidrs(Vec<Cidr>),
}

/// An address with a prefix length, printed back as written (iptables masks it itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

/// IP family of a rule set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The iptables tables capture touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Mangle,
    Nat,
}

/// Istio's capture knobs. `Default` is what the injector passes for a plain pod:
/// `-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// `-p`: outbound redirect port.
    pub proxy_port: u16,
    /// `-z`: inbound redirect port.
    pub inbound_capture_port: u16,
    /// `-e`: HBONE tunnel port that newer Istio releases exempt from capture; `None` (the
    /// default) gives the classic rule set.
    pub inbound_tunnel_port: Option<u16>,
    /// `-u`: proxy UIDs whose traffic is not captured.
    pub proxy_uids: Vec<u32>,
    /// `-g`: proxy GIDs whose traffic is not captured.
    pub proxy_gids: Vec<u32>,
    /// `-m`: inbound interception mode.
    pub mode: InterceptionMode,
    /// `-b`: inbound ports to capture.
    pub inbound_ports: PortSelection,
    /// `-d`: inbound ports to leave alone when `inbound_ports` is `*`. The ports in
    /// [`ALWAYS_EXCLUDED_INBOUND_PORTS`] are added by the planner if missing.
    pub inbound_ports_exclude: Vec<u16>,
    /// `-i`: outbound destinations to capture.
    pub outbound_ip_ranges_include: IpRanges,
    /// `-x`: outbound destinations to leave alone.
    pub outbound_ip_ranges_exclude: Vec<Cidr>,
    /// `-q`: outbound ports always captured.
    pub outbound_ports_include: Vec<u16>,
    /// `-o`: outbound ports never captured.
    pub outbound_ports_exclude: Vec<u16>,
    /// `-c`: interfaces whose traffic is never captured.
    pub exclude_interfaces: Vec<String>,
    /// `-k`: virtual interfaces (KubeVirt) whose inbound traffic is treated as outbound.
    pub kube_virt_interfaces: Vec<String>,
    /// `-t`: TPROXY packet mark.
    pub tproxy_mark: u32,
    /// `-r`: TPROXY policy-routing table.
    pub tproxy_route_table: u32,
    /// Also plan ip6tables rules.
    pub ipv6: bool,
}

/// One iptables rule: `-A chain args…` or `-I chain position args…` in `table`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub chain: String,
    /// `Some(n)` inserts at position `n` (1-based) instead of appending.
    pub position: Option<u32>,
    pub args: Vec<String>,
}

/// The planned rules, per IP family, in the order they must be applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub v4: Vec<Rule>,
    /// Empty unless [`CaptureConfig::ipv6`] is set.
    pub v6: Vec<Rule>,
}

// === impl InterceptionMode ===

impl FromStr for InterceptionMode {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Istio treats anything but TPROXY as REDIRECT; being strict catches typos instead.
        match s {
            "REDIRECT" | "" => Ok(Self::Redirect),
            "TPROXY" => Ok(Self::Tproxy),
            other => Err(ParseError::Mode(other.to_string())),
        }
    }
}

impl fmt::Display for InterceptionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Redirect => "REDIRECT",
            Self::Tproxy => "TPROXY",
        })
    }
}

// === impl PortSelection ===

impl FromStr for PortSelection {
    type Err = ParseError;

    /// `*`, or a comma-separated list (empty = none), as istio-iptables takes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            return Ok(Self::All);
        }
        parse_ports(s).map(Self::Ports)
    }
}

// === impl IpRanges ===

impl FromStr for IpRanges {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            return Ok(Self::All);
        }
        parse_cidrs(s).map(Self::Cidrs)
    }
}

// === impl Cidr ===

impl Cidr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix_len <= max).then_some(Self { addr, prefix_len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn family(&self) -> Family {
        if self.addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl FromStr for Cidr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::Cidr(s.to_string());
        let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        Self::new(addr, len).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

// === impl Table ===

impl Table {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Mangle => "mangle",
            Self::Nat => "nat",
        }
    }

    /// Tables in the order they are rendered (as istio-iptables does).
    pub const ALL: [Table; 2] = [Table::Mangle, Table::Nat];
}

// === impl CaptureConfig ===

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            proxy_port: DEFAULT_PROXY_PORT,
            inbound_capture_port: DEFAULT_INBOUND_CAPTURE_PORT,
            inbound_tunnel_port: None,
            proxy_uids: vec![DEFAULT_PROXY_UID],
            proxy_gids: vec![DEFAULT_PROXY_UID],
            mode: InterceptionMode::Redirect,
            inbound_ports: PortSelection::All,
            inbound_ports_exclude: ALWAYS_EXCLUDED_INBOUND_PORTS.to_vec(),
            outbound_ip_ranges_include: IpRanges::All,
            outbound_ip_ranges_exclude: Vec::new(),
            outbound_ports_include: Vec::new(),
            outbound_ports_exclude: Vec::new(),
            exclude_interfaces: Vec::new(),
            kube_virt_interfaces: Vec::new(),
            tproxy_mark: DEFAULT_TPROXY_MARK,
            tproxy_route_table: DEFAULT_TPROXY_ROUTE_TABLE,
            ipv6: false,
        }
    }
}

impl CaptureConfig {
    /// User exclusions first, in their order, then whichever always-excluded port is missing:
    /// `-d 15090,15021,15020` thus yields the same rules as istio-iptables.
    pub fn effective_inbound_exclusions(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        for p in self
            .inbound_ports_exclude
            .iter()
            .chain(ALWAYS_EXCLUDED_INBOUND_PORTS.iter())
        {
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
        ports
    }
}

// === impl Rule ===

impl Rule {
    /// The `-j` target, if any.
    pub fn target(&self) -> Option<&str> {
        self.args
            .iter()
            .position(|a| a == "-j")
            .and_then(|i| self.args.get(i + 1))
            .map(String::as_str)
    }

    /// True for rules placed in a kernel chain (`PREROUTING`, `OUTPUT`, …) rather than in one of
    /// ours: those are the rules cleanup must delete one by one.
    pub fn in_builtin_chain(&self) -> bool {
        !ISTIO_CHAINS.contains(&self.chain.as_str())
    }

    /// The rule as an `iptables-restore` line.
    pub fn to_restore_line(&self) -> String {
        let head = match self.position {
            Some(n) => format!("-I {} {n}", self.chain),
            None => format!("-A {}", self.chain),
        };
        if self.args.is_empty() {
            head
        } else {
            format!("{head} {}", self.args.join(" "))
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-t {} {}", self.table.as_str(), self.to_restore_line())
    }
}

// === impl Rules ===

impl Rules {
    pub fn family(&self, family: Family) -> &[Rule] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// The `ISTIO_*` chains `table` needs for `family`, in declaration order.
    pub fn chains(&self, family: Family, table: Table) -> Vec<&'static str> {
        let rules = self.family(family);
        ISTIO_CHAINS
            .into_iter()
            .filter(|chain| {
                rules
                    .iter()
                    .any(|r| r.table == table && (r.chain == *chain || r.target() == Some(*chain)))
            })
            .collect()
    }

    /// `iptables-restore` input for `family`; apply it with `--noflush` so rules that are not
    /// ours survive. Empty when the family has no rules.
    pub fn to_restore(&self, family: Family) -> String {
        let rules = self.family(family);
        let mut out = String::new();
        for table in Table::ALL {
            if !rules.iter().any(|r| r.table == table) {
                continue;
            }
            out.push_str(&format!("*{}\n", table.as_str()));
            for chain in self.chains(family, table) {
                out.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for rule in rules.iter().filter(|r| r.table == table) {
                out.push_str(&rule.to_restore_line());
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

// === planning ===

/// Plans the capture rules for `cfg`.
pub fn plan(cfg: &CaptureConfig) -> Rules {
    Rules {
        v4: Planner::new(cfg, Family::V4).run(),
        v6: if cfg.ipv6 {
            Planner::new(cfg, Family::V6).run()
        } else {
            Vec::new()
        },
    }
}

/// Builds one family's rules in istio-iptables order.
struct Planner<'a> {
    cfg: &'a CaptureConfig,
    family: Family,
    rules: Vec<Rule>,
    /// Host loopback (`127.0.0.1/32` or `::1/128`).
    loopback: &'static str,
    /// Source address of the proxy's inbound passthrough (`127.0.0.6/32` or `::6/128`).
    passthrough_src: &'static str,
}

impl<'a> Planner<'a> {
    fn new(cfg: &'a CaptureConfig, family: Family) -> Self {
        let (loopback, passthrough_src) = match family {
            Family::V4 => ("127.0.0.1/32", "127.0.0.6/32"),
            Family::V6 => ("::1/128", "::6/128"),
        };
        Self {
            cfg,
            family,
            rules: Vec::new(),
            loopback,
            passthrough_src,
        }
    }

    fn append(&mut self, table: Table, chain: &str, args: &[&str]) {
        self.rules.push(Rule {
            table,
            chain: chain.to_string(),
            position: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        });
    }

    fn insert(&mut self, table: Table, chain: &str, position: u32, args: &[&str]) {
        self.rules.push(Rule {
            table,
            chain: chain.to_string(),
            position: Some(position),
            args: args.iter().map(|a| a.to_string()).collect(),
        });
    }

    fn run(mut self) -> Vec<Rule> {
        let cfg = self.cfg;
        let tproxy = cfg.mode == InterceptionMode::Tproxy;
        let proxy_port = cfg.proxy_port.to_string();
        let inbound_port = cfg.inbound_capture_port.to_string();
        let tunnel_port = cfg.inbound_tunnel_port.map(|p| p.to_string());

        // Excluded interfaces bypass everything, so they go first.
        for nic in &cfg.exclude_interfaces {
            self.append(Table::Nat, "PREROUTING", &["-i", nic, "-j", "RETURN"]);
            self.append(Table::Nat, "OUTPUT", &["-o", nic, "-j", "RETURN"]);
        }
        if tproxy {
            for nic in &cfg.exclude_interfaces {
                self.append(Table::Mangle, "PREROUTING", &["-i", nic, "-j", "RETURN"]);
                self.append(Table::Mangle, "OUTPUT", &["-o", nic, "-j", "RETURN"]);
            }
        }
        // KubeVirt interfaces are not inbound; the outbound section below re-inserts jumps to
        // ISTIO_REDIRECT ahead of this one.
        for nic in &cfg.kube_virt_interfaces {
            self.insert(Table::Nat, "PREROUTING", 1, &["-i", nic, "-j", "RETURN"]);
        }

        if let Some(tunnel) = &tunnel_port {
            self.append(
                Table::Nat,
                ISTIO_INBOUND,
                &["-p", "tcp", "--dport", tunnel, "-j", "RETURN"],
            );
        }
        self.append(
            Table::Nat,
            ISTIO_REDIRECT,
            &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &proxy_port],
        );
        self.append(
            Table::Nat,
            ISTIO_IN_REDIRECT,
            &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &inbound_port],
        );

        self.inbound();

        self.append(Table::Nat, "OUTPUT", &["-p", "tcp", "-j", ISTIO_OUTPUT]);
        // Port exclusions come before the loopback handling so excluded ports never loop back.
        for port in &cfg.outbound_ports_exclude {
            let port = port.to_string();
            self.append(
                Table::Nat,
                ISTIO_OUTPUT,
                &["-p", "tcp", "--dport", &port, "-j", "RETURN"],
            );
        }
        // The proxy's inbound passthrough binds 127.0.0.6 when dialling the app: leave it.
        let passthrough_src = self.passthrough_src;
        self.append(
            Table::Nat,
            ISTIO_OUTPUT,
            &["-o", "lo", "-s", passthrough_src, "-j", "RETURN"],
        );
        self.owner_rules("--uid-owner", &cfg.proxy_uids, tunnel_port.as_deref());
        self.owner_rules("--gid-owner", &cfg.proxy_gids, tunnel_port.as_deref());
        // Apps talking to localhost (and Envoy-aware apps) are not captured.
        let loopback = self.loopback;
        self.append(Table::Nat, ISTIO_OUTPUT, &["-d", loopback, "-j", "RETURN"]);
        for cidr in self.cidrs(&cfg.outbound_ip_ranges_exclude) {
            self.append(Table::Nat, ISTIO_OUTPUT, &["-d", &cidr, "-j", "RETURN"]);
        }
        for port in &cfg.outbound_ports_include {
            let port = port.to_string();
            self.append(
                Table::Nat,
                ISTIO_OUTPUT,
                &["-p", "tcp", "--dport", &port, "-j", ISTIO_REDIRECT],
            );
        }
        self.outbound_include();

        if tproxy {
            self.tproxy_marks();
        }
        self.rules
    }

    /// PREROUTING → ISTIO_INBOUND and the per-port decisions in it.
    fn inbound(&mut self) {
        let cfg = self.cfg;
        let tproxy = cfg.mode == InterceptionMode::Tproxy;
        let table = if tproxy { Table::Mangle } else { Table::Nat };
        if cfg.inbound_ports == PortSelection::Ports(Vec::new()) {
            return;
        }
        if tproxy {
            let mark = cfg.tproxy_mark.to_string();
            let tproxy_mark = format!("{mark}/0xffffffff");
            let inbound_port = cfg.inbound_capture_port.to_string();
            let loopback = self.loopback;
            self.append(
                Table::Mangle,
                ISTIO_DIVERT,
                &["-j", "MARK", "--set-mark", &mark],
            );
            self.append(Table::Mangle, ISTIO_DIVERT, &["-j", "ACCEPT"]);
            self.append(
                Table::Mangle,
                ISTIO_TPROXY,
                &[
                    "!",
                    "-d",
                    loopback,
                    "-p",
                    "tcp",
                    "-j",
                    "TPROXY",
                    "--tproxy-mark",
                    &tproxy_mark,
                    "--on-port",
                    &inbound_port,
                ],
            );
        }
        self.append(table, "PREROUTING", &["-p", "tcp", "-j", ISTIO_INBOUND]);
        let established = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"];
        match &cfg.inbound_ports {
            PortSelection::All => {
                for port in cfg.effective_inbound_exclusions() {
                    let port = port.to_string();
                    self.append(
                        table,
                        ISTIO_INBOUND,
                        &["-p", "tcp", "--dport", &port, "-j", "RETURN"],
                    );
                }
                if tproxy {
                    let mut args = vec!["-p", "tcp"];
                    args.extend(established);
                    args.extend(["-j", ISTIO_DIVERT]);
                    self.append(table, ISTIO_INBOUND, &args);
                    self.append(table, ISTIO_INBOUND, &["-p", "tcp", "-j", ISTIO_TPROXY]);
                } else {
                    self.append(
                        table,
                        ISTIO_INBOUND,
                        &["-p", "tcp", "-j", ISTIO_IN_REDIRECT],
                    );
                }
            }
            PortSelection::Ports(ports) => {
                for port in ports {
                    let port = port.to_string();
                    if tproxy {
                        let mut args = vec!["-p", "tcp", "--dport", &port];
                        args.extend(established);
                        args.extend(["-j", ISTIO_DIVERT]);
                        self.append(table, ISTIO_INBOUND, &args);
                        self.append(
                            table,
                            ISTIO_INBOUND,
                            &["-p", "tcp", "--dport", &port, "-j", ISTIO_TPROXY],
                        );
                    } else {
                        self.append(
                            table,
                            ISTIO_INBOUND,
                            &["-p", "tcp", "--dport", &port, "-j", ISTIO_IN_REDIRECT],
                        );
                    }
                }
            }
        }
    }

    /// The three rules per proxy UID (or GID): app → VIP → proxy → same pod goes back through
    /// inbound; app → itself over lo is left alone; anything else from the proxy is left alone.
    fn owner_rules(&mut self, owner_flag: &str, ids: &[u32], tunnel_port: Option<&str>) {
        // An explicitly included loopback range means the user wants loopback captured.
        let loopback_included = match &self.cfg.outbound_ip_ranges_include {
            IpRanges::All => false,
            IpRanges::Cidrs(cidrs) => cidrs.iter().any(|c| c.addr.is_loopback()),
        };
        let loopback = self.loopback;
        for id in ids {
            let id = id.to_string();
            let mut args = vec!["-o", "lo", "!", "-d", loopback];
            if let Some(tunnel) = tunnel_port {
                args.extend(["-p", "tcp", "!", "--dport", tunnel]);
            }
            args.extend(["-m", "owner", owner_flag, &id, "-j", ISTIO_IN_REDIRECT]);
            self.append(Table::Nat, ISTIO_OUTPUT, &args);
            if !loopback_included {
                self.append(
                    Table::Nat,
                    ISTIO_OUTPUT,
                    &[
                        "-o", "lo", "-m", "owner", "!", owner_flag, &id, "-j", "RETURN",
                    ],
                );
            }
            self.append(
                Table::Nat,
                ISTIO_OUTPUT,
                &["-m", "owner", owner_flag, &id, "-j", "RETURN"],
            );
        }
    }

    /// The final jump(s) to ISTIO_REDIRECT, plus KubeVirt's PREROUTING shortcuts.
    fn outbound_include(&mut self) {
        let cfg = self.cfg;
        match &cfg.outbound_ip_ranges_include {
            IpRanges::All => {
                self.append(Table::Nat, ISTIO_OUTPUT, &["-j", ISTIO_REDIRECT]);
                for nic in &cfg.kube_virt_interfaces {
                    self.insert(
                        Table::Nat,
                        "PREROUTING",
                        1,
                        &["-i", nic, "-j", ISTIO_REDIRECT],
                    );
                }
            }
            IpRanges::Cidrs(cidrs) => {
                for cidr in self.cidrs(cidrs) {
                    for nic in &cfg.kube_virt_interfaces {
                        self.insert(
                            Table::Nat,
                            "PREROUTING",
                            1,
                            &["-i", nic, "-d", &cidr, "-j", ISTIO_REDIRECT],
                        );
                    }
                    self.append(
                        Table::Nat,
                        ISTIO_OUTPUT,
                        &["-d", &cidr, "-j", ISTIO_REDIRECT],
                    );
                }
            }
        }
    }

    /// TPROXY keeps the connection mark so replies route back to the proxy, and marks the
    /// proxy's own traffic to the pod so it is not diverted a second time.
    fn tproxy_marks(&mut self) {
        let cfg = self.cfg;
        let mark = cfg.tproxy_mark.to_string();
        let loopback = self.loopback;
        let passthrough_src = self.passthrough_src;
        self.append(
            Table::Mangle,
            "PREROUTING",
            &[
                "-p",
                "tcp",
                "-m",
                "mark",
                "--mark",
                &mark,
                "-j",
                "CONNMARK",
                "--save-mark",
            ],
        );
        self.append(
            Table::Mangle,
            "OUTPUT",
            &[
                "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", &mark, "-j", "RETURN",
            ],
        );
        for (flag, ids) in [
            ("--uid-owner", &cfg.proxy_uids),
            ("--gid-owner", &cfg.proxy_gids),
        ] {
            for id in ids {
                let id = id.to_string();
                self.append(
                    Table::Mangle,
                    "OUTPUT",
                    &[
                        "!",
                        "-d",
                        loopback,
                        "-p",
                        "tcp",
                        "-o",
                        "lo",
                        "-m",
                        "owner",
                        flag,
                        &id,
                        "-j",
                        "MARK",
                        "--set-mark",
                        OUTBOUND_MARK,
                    ],
                );
            }
        }
        self.append(
            Table::Mangle,
            "OUTPUT",
            &[
                "-p",
                "tcp",
                "-m",
                "connmark",
                "--mark",
                &mark,
                "-j",
                "CONNMARK",
                "--restore-mark",
            ],
        );
        if self.cfg.inbound_ports == PortSelection::Ports(Vec::new()) {
            return;
        }
        self.insert(
            Table::Mangle,
            ISTIO_INBOUND,
            1,
            &["-p", "tcp", "-m", "mark", "--mark", &mark, "-j", "RETURN"],
        );
        self.insert(
            Table::Mangle,
            ISTIO_INBOUND,
            2,
            &[
                "-p",
                "tcp",
                "-s",
                passthrough_src,
                "-i",
                "lo",
                "-j",
                "RETURN",
            ],
        );
        self.insert(
            Table::Mangle,
            ISTIO_INBOUND,
            3,
            &[
                "-p",
                "tcp",
                "-i",
                "lo",
                "-m",
                "mark",
                "!",
                "--mark",
                OUTBOUND_MARK,
                "-j",
                "RETURN",
            ],
        );
    }

    /// The CIDRs of this planner's family, as strings.
    fn cidrs(&self, cidrs: &[Cidr]) -> Vec<String> {
        cidrs
            .iter()
            .filter(|c| c.family() == self.family)
            .map(Cidr::to_string)
            .collect()
    }
}

// === parsing helpers ===

/// Splits istio-iptables' comma-separated lists, ignoring blanks (`-x ""` is an empty list).
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// Parses a comma-separated port list.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, ParseError> {
    split_list(s)
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(ParseError::Port(p.to_string())),
        })
        .collect()
}

/// Parses a comma-separated CIDR list.
pub fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, ParseError> {
    split_list(s).map(str::parse).collect()
}

/// Parses a comma-separated list of numeric UIDs or GIDs.
pub fn parse_ids(s: &str) -> Result<Vec<u32>, ParseError> {
    split_list(s)
        .map(|p| p.parse::<u32>().map_err(|_| ParseError::Id(p.to_string())))
        .collect()
}

/// Parses a comma-separated list of interface names, rejecting anything iptables would
/// misread (names are at most 15 bytes, no spaces or slashes).
pub fn parse_interfaces(s: &str) -> Result<Vec<String>, ParseError> {
    split_list(s)
        .map(|name| {
            let ok = name.len() <= 15
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+'));
            if ok {
                Ok(name.to_string())
            } else {
                Err(ParseError::Interface(name.to_string()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
