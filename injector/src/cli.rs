//! `mast-init`'s command line: istio-iptables' flags and environment variables.
//!
//! Why hand-rolled: the injected `istio-init` container passes istio-iptables' exact argv
//! (`-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020
//! --log_output_level=default:info`), including empty values, and the same settings may come
//! from the environment (`ENVOY_PORT`, `ISTIO_INBOUND_PORTS`, …, as istio-iptables binds them
//! through viper). The environment is read through [`Env`] so tests pass a map instead of
//! mutating the process environment. Flags win over the environment, which wins over
//! [`CaptureConfig::default`] (the injector's defaults).

use crate::capture::{self, CaptureConfig, InterceptionMode, IpRanges, ParseError, PortSelection};

// Settings not given as flags come from an [`Env`]: the workspace's one environment
// abstraction, re-exported so `mast-init` and its tests name it here.
pub use mast_env::{Env, ProcessEnv};

// === constants ===

/// Env var enabling IPv6 rules, as in Istio.
pub const ENV_DUAL_STACK: &str = "ISTIO_AGENT_DUAL_STACK";

/// Usage text for `--help`.
pub const USAGE: &str = "\
mast-init: set up (or remove) the iptables rules that send a pod's TCP traffic through its
sidecar, as Istio's istio-iptables does.

USAGE: mast-init [FLAGS]            apply the rules (idempotent)
       mast-init --dry-run [FLAGS]  print the iptables-restore input instead
       mast-init --cleanup [FLAGS]  remove the ISTIO_* chains and the jumps into them

FLAGS (istio-iptables compatible; each also read from the env var shown):
  -p, --envoy-port PORT                          outbound redirect port [ENVOY_PORT, 15001]
  -z, --inbound-capture-port PORT                inbound redirect port [INBOUND_CAPTURE_PORT, 15006]
  -e, --inbound-tunnel-port PORT                 exempt a tunnel port (newer Istio: 15008) [INBOUND_TUNNEL_PORT]
  -u, --proxy-uid UIDS                           proxy UIDs, not captured [PROXY_UID, 1337]
  -g, --proxy-gid GIDS                           proxy GIDs, not captured [PROXY_GID, same as -u]
  -m, --istio-inbound-interception-mode MODE     REDIRECT or TPROXY [ISTIO_INBOUND_INTERCEPTION_MODE]
  -b, --istio-inbound-ports PORTS|*              inbound ports to capture [ISTIO_INBOUND_PORTS, *]
  -d, --istio-local-exclude-ports PORTS          inbound ports not captured with -b '*'; 15090,15021,15020
                                                 are always added [ISTIO_LOCAL_EXCLUDE_PORTS]
  -i, --istio-service-cidr CIDRS|*               outbound ranges to capture [ISTIO_SERVICE_CIDR, *]
  -x, --istio-service-exclude-cidr CIDRS         outbound ranges not captured [ISTIO_SERVICE_EXCLUDE_CIDR]
  -q, --istio-outbound-ports PORTS               outbound ports always captured [ISTIO_OUTBOUND_PORTS]
  -o, --istio-local-outbound-ports-exclude PORTS outbound ports never captured [ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE]
  -c, --istio-exclude-interfaces NICS            interfaces never captured [ISTIO_EXCLUDE_INTERFACES]
  -k, --kube-virt-interfaces NICS                VM interfaces treated as outbound [KUBE_VIRT_INTERFACES]
  -t, --istio-inbound-tproxy-mark MARK           TPROXY mark [ISTIO_INBOUND_TPROXY_MARK, 1337]
  -r, --istio-inbound-tproxy-route-table TABLE   TPROXY route table [ISTIO_INBOUND_TPROXY_ROUTE_TABLE, 133]
      --dual-stack                               also write ip6tables rules [ISTIO_AGENT_DUAL_STACK]
  -n, --dry-run                                  print the rules, change nothing
      --cleanup                                  remove what mast-init adds
      --skip-rule-apply                          change nothing (accepted for compatibility)
      --run-validation                           accepted for compatibility; no validation is run
  -f, --restore-format, --log_* VALUE            accepted and ignored
  -h, --help                                     this text

Exit status: 0 on success, 64 on a bad flag or value, 1 when iptables fails.
";

// === errors ===

/// A bad command line or environment; `mast-init` exits 64 on it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("unknown flag {0:?}")]
    UnknownFlag(String),
    #[error("flag {0} needs a value")]
    MissingValue(String),
    #[error("bad value {value:?} for {flag}: {source}")]
    InvalidValue {
        /// The flag (`-p/--envoy-port`) or env var (`$ENVOY_PORT`) that carried it.
        flag: String,
        value: String,
        source: ParseError,
    },
    #[error("flag {flag} takes no value (got {value:?})")]
    UnexpectedValue { flag: String, value: String },
    #[error("unexpected argument {0:?}: mast-init takes only flags")]
    Positional(String),
    #[error("flag {0} is an istio-iptables feature mast-init does not support")]
    Unsupported(String),
    #[error("--dry-run and --cleanup cannot be combined")]
    Conflict,
}

// === types ===

/// What `mast-init` was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Install the rules (removing any previous ones first).
    Apply,
    /// Print the `iptables-restore` input.
    DryRun,
    /// Remove the rules.
    Cleanup,
    /// Do nothing (`--skip-rule-apply`).
    Skip,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Run {
        action: Action,
        config: Box<CaptureConfig>,
    },
}

/// The settings istio-iptables takes a value for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setting {
    ProxyPort,
    InboundCapturePort,
    InboundTunnelPort,
    ProxyUid,
    ProxyGid,
    Mode,
    InboundPorts,
    InboundPortsExclude,
    ExcludeInterfaces,
    ServiceCidr,
    ServiceExcludeCidr,
    OutboundPorts,
    OutboundPortsExclude,
    KubeVirtInterfaces,
    TproxyMark,
    TproxyRouteTable,
}

struct Spec {
    short: Option<char>,
    long: &'static str,
    env: &'static str,
    setting: Setting,
}

const SPECS: &[Spec] = &[
    spec('p', "envoy-port", "ENVOY_PORT", Setting::ProxyPort),
    spec(
        'z',
        "inbound-capture-port",
        "INBOUND_CAPTURE_PORT",
        Setting::InboundCapturePort,
    ),
    spec(
        'e',
        "inbound-tunnel-port",
        "INBOUND_TUNNEL_PORT",
        Setting::InboundTunnelPort,
    ),
    spec('u', "proxy-uid", "PROXY_UID", Setting::ProxyUid),
    spec('g', "proxy-gid", "PROXY_GID", Setting::ProxyGid),
    spec(
        'm',
        "istio-inbound-interception-mode",
        "ISTIO_INBOUND_INTERCEPTION_MODE",
        Setting::Mode,
    ),
    spec(
        'b',
        "istio-inbound-ports",
        "ISTIO_INBOUND_PORTS",
        Setting::InboundPorts,
    ),
    spec(
        'd',
        "istio-local-exclude-ports",
        "ISTIO_LOCAL_EXCLUDE_PORTS",
        Setting::InboundPortsExclude,
    ),
    spec(
        'c',
        "istio-exclude-interfaces",
        "ISTIO_EXCLUDE_INTERFACES",
        Setting::ExcludeInterfaces,
    ),
    spec(
        'i',
        "istio-service-cidr",
        "ISTIO_SERVICE_CIDR",
        Setting::ServiceCidr,
    ),
    spec(
        'x',
        "istio-service-exclude-cidr",
        "ISTIO_SERVICE_EXCLUDE_CIDR",
        Setting::ServiceExcludeCidr,
    ),
    spec(
        'q',
        "istio-outbound-ports",
        "ISTIO_OUTBOUND_PORTS",
        Setting::OutboundPorts,
    ),
    spec(
        'o',
        "istio-local-outbound-ports-exclude",
        "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        Setting::OutboundPortsExclude,
    ),
    spec(
        'k',
        "kube-virt-interfaces",
        "KUBE_VIRT_INTERFACES",
        Setting::KubeVirtInterfaces,
    ),
    spec(
        't',
        "istio-inbound-tproxy-mark",
        "ISTIO_INBOUND_TPROXY_MARK",
        Setting::TproxyMark,
    ),
    spec(
        'r',
        "istio-inbound-tproxy-route-table",
        "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
        Setting::TproxyRouteTable,
    ),
];

/// istio-iptables flags for features mast-init lacks: refused by name rather than ignored, so
/// nobody believes DNS capture (say) is on.
const UNSUPPORTED: &[&str] = &[
    "redirect-dns",
    "capture-all-dns",
    "drop-invalid",
    "network-namespace",
    "cni-mode",
    "host-nsenter-exec",
    "iptables-trace-logging",
    "iptables-probe-port",
    "probe-timeout",
];

const fn spec(short: char, long: &'static str, env: &'static str, setting: Setting) -> Spec {
    Spec {
        short: Some(short),
        long,
        env,
        setting,
    }
}

// === parsing ===

/// Parses `args` (without the program name), falling back on `env` for unset settings.
pub fn parse<I, S>(args: I, env: &dyn Env) -> Result<Command, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut values: Vec<(Setting, String, String)> = Vec::new();
    let mut dry_run = false;
    let mut cleanup = false;
    let mut skip = false;
    let mut dual_stack = None;
    let mut args = args.into_iter().map(Into::into);

    while let Some(arg) = args.next() {
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let flag = format!("--{name}");
            if let Some(spec) = SPECS.iter().find(|s| s.long == name) {
                let value = match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .ok_or_else(|| CliError::MissingValue(flag.clone()))?,
                };
                values.push((spec.setting, describe(spec), value));
                continue;
            }
            match name {
                "help" => return Ok(Command::Help),
                "dry-run" => dry_run = bool_value(&flag, inline)?,
                "cleanup" | "clean" => cleanup = bool_value(&flag, inline)?,
                "skip-rule-apply" => skip = bool_value(&flag, inline)?,
                "dual-stack" | "ipv6" => dual_stack = Some(bool_value(&flag, inline)?),
                "run-validation" | "restore-format" => {
                    bool_value(&flag, inline)?;
                }
                n if n.starts_with("log_") || n.starts_with("log-") => {
                    // Istio's logging flags (--log_output_level=default:info) take a value.
                    if inline.is_none() {
                        args.next()
                            .ok_or_else(|| CliError::MissingValue(flag.clone()))?;
                    }
                }
                n if UNSUPPORTED.contains(&n) => return Err(CliError::Unsupported(flag)),
                _ => return Err(CliError::UnknownFlag(flag)),
            }
        } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let Some(c) = chars.next() else {
                return Err(CliError::UnknownFlag(arg));
            };
            let rest: String = chars.collect();
            let flag = format!("-{c}");
            if let Some(spec) = SPECS.iter().find(|s| s.short == Some(c)) {
                let value = if rest.is_empty() {
                    args.next()
                        .ok_or_else(|| CliError::MissingValue(describe(spec)))?
                } else {
                    rest
                };
                values.push((spec.setting, describe(spec), value));
                continue;
            }
            if !rest.is_empty() {
                return Err(CliError::UnknownFlag(arg));
            }
            match c {
                'h' => return Ok(Command::Help),
                'n' => dry_run = true,
                'f' => {}
                _ => return Err(CliError::UnknownFlag(flag)),
            }
        } else {
            return Err(CliError::Positional(arg));
        }
    }

    if dry_run && cleanup {
        return Err(CliError::Conflict);
    }

    let mut config = CaptureConfig::default();
    let mut gid_given = false;
    // Environment first, so flags given later override it.
    for spec in SPECS {
        if let Some(value) = env.var(spec.env) {
            gid_given |= spec.setting == Setting::ProxyGid;
            apply(&mut config, spec.setting, &value).map_err(|source| CliError::InvalidValue {
                flag: format!("${}", spec.env),
                value,
                source,
            })?;
        }
    }
    for (setting, flag, value) in values {
        gid_given |= setting == Setting::ProxyGid;
        apply(&mut config, setting, &value).map_err(|source| CliError::InvalidValue {
            flag,
            value,
            source,
        })?;
    }
    // istio-iptables: the GID defaults to the UID.
    if !gid_given {
        config.proxy_gids = config.proxy_uids.clone();
    }
    config.ipv6 = match dual_stack {
        Some(v) => v,
        None => env
            .var(ENV_DUAL_STACK)
            .is_some_and(|v| v == "true" || v == "1"),
    };

    let action = if dry_run {
        Action::DryRun
    } else if cleanup {
        Action::Cleanup
    } else if skip {
        Action::Skip
    } else {
        Action::Apply
    };
    Ok(Command::Run {
        action,
        config: Box::new(config),
    })
}

fn describe(spec: &Spec) -> String {
    match spec.short {
        Some(c) => format!("-{c}/--{}", spec.long),
        None => format!("--{}", spec.long),
    }
}

fn bool_value(flag: &str, inline: Option<String>) -> Result<bool, CliError> {
    match inline.as_deref() {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(CliError::UnexpectedValue {
            flag: flag.to_string(),
            value: other.to_string(),
        }),
    }
}

fn apply(cfg: &mut CaptureConfig, setting: Setting, value: &str) -> Result<(), ParseError> {
    match setting {
        Setting::ProxyPort => cfg.proxy_port = one_port(value)?,
        Setting::InboundCapturePort => cfg.inbound_capture_port = one_port(value)?,
        Setting::InboundTunnelPort => {
            cfg.inbound_tunnel_port = if value.trim().is_empty() {
                None
            } else {
                Some(one_port(value)?)
            }
        }
        Setting::ProxyUid => cfg.proxy_uids = ids(value)?,
        Setting::ProxyGid => cfg.proxy_gids = ids(value)?,
        Setting::Mode => cfg.mode = value.trim().parse::<InterceptionMode>()?,
        Setting::InboundPorts => cfg.inbound_ports = value.parse::<PortSelection>()?,
        Setting::InboundPortsExclude => cfg.inbound_ports_exclude = capture::parse_ports(value)?,
        Setting::ExcludeInterfaces => cfg.exclude_interfaces = capture::parse_interfaces(value)?,
        Setting::ServiceCidr => cfg.outbound_ip_ranges_include = value.parse::<IpRanges>()?,
        Setting::ServiceExcludeCidr => {
            cfg.outbound_ip_ranges_exclude = capture::parse_cidrs(value)?
        }
        Setting::OutboundPorts => cfg.outbound_ports_include = capture::parse_ports(value)?,
        Setting::OutboundPortsExclude => cfg.outbound_ports_exclude = capture::parse_ports(value)?,
        Setting::KubeVirtInterfaces => cfg.kube_virt_interfaces = capture::parse_interfaces(value)?,
        Setting::TproxyMark => cfg.tproxy_mark = one_id(value)?,
        Setting::TproxyRouteTable => cfg.tproxy_route_table = one_id(value)?,
    }
    Ok(())
}

fn one_port(value: &str) -> Result<u16, ParseError> {
    match capture::parse_ports(value)?.as_slice() {
        [port] => Ok(*port),
        _ => Err(ParseError::Port(value.to_string())),
    }
}

fn ids(value: &str) -> Result<Vec<u32>, ParseError> {
    let ids = capture::parse_ids(value)?;
    if ids.is_empty() {
        return Err(ParseError::Id(value.to_string()));
    }
    Ok(ids)
}

fn one_id(value: &str) -> Result<u32, ParseError> {
    match capture::parse_ids(value)?.as_slice() {
        [id] => Ok(*id),
        _ => Err(ParseError::Id(value.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::capture::Cidr;

    fn no_env() -> HashMap<&'static str, &'static str> {
        HashMap::new()
    }

    fn run(args: &[&str], env: &dyn Env) -> Result<(Action, CaptureConfig), CliError> {
        match parse(args.iter().copied(), env)? {
            Command::Run { action, config } => Ok((action, *config)),
            Command::Help => panic!("unexpected help"),
        }
    }

    #[test]
    fn golden_default_args_give_the_default_config() {
        // hello.yaml.injected's istio-init args.
        let args = [
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
            "--log_output_level=default:info",
        ];
        let (action, config) = run(&args, &no_env()).unwrap();
        assert_eq!(action, Action::Apply);
        assert_eq!(config, CaptureConfig::default());
        // No flags at all means the same.
        assert_eq!(run(&[], &no_env()).unwrap().1, CaptureConfig::default());
    }

    #[test]
    fn traffic_annotation_args() {
        // traffic-annotations.yaml.injected and kubevirtInterfaces.yaml.injected.
        let args = [
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "127.0.0.1/24,10.96.0.1/24",
            "-x",
            "10.96.0.2/24,10.96.0.3/24",
            "-b",
            "1,2,3",
            "-d",
            "15090,15021,4,5,6,15020",
            "-o",
            "7,8,9",
            "-k",
            "net1",
            "--log_output_level=default:info",
        ];
        let (_, c) = run(&args, &no_env()).unwrap();
        assert_eq!(
            c.outbound_ip_ranges_include,
            IpRanges::Cidrs(capture::parse_cidrs("127.0.0.1/24,10.96.0.1/24").unwrap())
        );
        assert_eq!(c.outbound_ip_ranges_exclude.len(), 2);
        assert_eq!(c.inbound_ports, PortSelection::Ports(vec![1, 2, 3]));
        assert_eq!(c.inbound_ports_exclude, vec![15090, 15021, 4, 5, 6, 15020]);
        assert_eq!(c.outbound_ports_exclude, vec![7, 8, 9]);
        assert_eq!(c.kube_virt_interfaces, vec!["net1".to_string()]);
    }

    #[test]
    fn long_and_attached_forms() {
        let (action, c) = run(
            &[
                "--envoy-port=15101",
                "--inbound-capture-port",
                "15106",
                "-u1000",
                "-g",
                "2000",
                "--istio-inbound-interception-mode=TPROXY",
                "-q",
                "80,443",
                "-c",
                "eth9",
                "-n",
            ],
            &no_env(),
        )
        .unwrap();
        assert_eq!(action, Action::DryRun);
        assert_eq!((c.proxy_port, c.inbound_capture_port), (15101, 15106));
        assert_eq!((c.proxy_uids, c.proxy_gids), (vec![1000], vec![2000]));
        assert_eq!(c.mode, InterceptionMode::Tproxy);
        assert_eq!(c.outbound_ports_include, vec![80, 443]);
        assert_eq!(c.exclude_interfaces, vec!["eth9".to_string()]);
    }

    #[test]
    fn gid_follows_uid_unless_given() {
        let (_, c) = run(&["-u", "1000"], &no_env()).unwrap();
        assert_eq!(c.proxy_gids, vec![1000]);
    }

    #[test]
    fn env_fills_in_and_flags_override() {
        let env: HashMap<&str, &str> = [
            ("ENVOY_PORT", "16001"),
            ("ISTIO_INBOUND_PORTS", "9080"),
            ("ISTIO_SERVICE_EXCLUDE_CIDR", "10.0.0.0/8"),
            ("ISTIO_AGENT_DUAL_STACK", "true"),
        ]
        .into_iter()
        .collect();
        let (_, c) = run(&["-b", "8080"], &env).unwrap();
        assert_eq!(c.proxy_port, 16001);
        assert_eq!(c.inbound_ports, PortSelection::Ports(vec![8080]));
        assert_eq!(
            c.outbound_ip_ranges_exclude,
            vec!["10.0.0.0/8".parse::<Cidr>().unwrap()]
        );
        assert!(c.ipv6);
        let bad: HashMap<&str, &str> = [("ENVOY_PORT", "abc")].into_iter().collect();
        let err = run(&[], &bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad value \"abc\" for $ENVOY_PORT: invalid port \"abc\": expected a number from 1 to 65535"
        );
    }

    #[test]
    fn actions() {
        assert_eq!(run(&["--cleanup"], &no_env()).unwrap().0, Action::Cleanup);
        assert_eq!(
            run(&["--skip-rule-apply", "--run-validation"], &no_env())
                .unwrap()
                .0,
            Action::Skip
        );
        assert_eq!(parse(["--help"], &no_env()), Ok(Command::Help));
        assert_eq!(
            run(&["--dry-run", "--cleanup"], &no_env()),
            Err(CliError::Conflict)
        );
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["-p", "x"],
                "bad value \"x\" for -p/--envoy-port: invalid port \"x\": expected a number from 1 to 65535",
            ),
            (&["-p"], "flag -p/--envoy-port needs a value"),
            (
                &["-m", "NONE"],
                "bad value \"NONE\" for -m/--istio-inbound-interception-mode: invalid interception mode \"NONE\": expected REDIRECT or TPROXY",
            ),
            (
                &["-x", "10.0.0.0"],
                "bad value \"10.0.0.0\" for -x/--istio-service-exclude-cidr: invalid CIDR \"10.0.0.0\": expected ADDRESS/PREFIX, e.g. 10.96.0.0/12",
            ),
            (&["--frobnicate"], "unknown flag \"--frobnicate\""),
            (&["-Z"], "unknown flag \"-Z\""),
            (
                &["--redirect-dns"],
                "flag --redirect-dns is an istio-iptables feature mast-init does not support",
            ),
            (
                &["istio-iptables"],
                "unexpected argument \"istio-iptables\": mast-init takes only flags",
            ),
            (
                &["--dry-run=maybe"],
                "flag --dry-run takes no value (got \"maybe\")",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(
                run(args, &no_env()).unwrap_err().to_string(),
                *want,
                "{args:?}"
            );
        }
    }
}
