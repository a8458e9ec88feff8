//! Pins `plan` against the rule listings istio-iptables produces (its
//! `tools/istio-iptables/pkg/capture/testdata/*.golden`), written out here by hand.

use super::*;

const NAT_HEADER: &str = "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
";

const REDIRECTS: &str = "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
";

const OWNER_RULES: &str = "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
";

fn cidrs(s: &str) -> Vec<Cidr> {
    parse_cidrs(s).unwrap()
}

fn v4(cfg: &CaptureConfig) -> String {
    plan(cfg).to_restore(Family::V4)
}

#[test]
fn default_config_is_the_injectors_default() {
    // -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020
    let expected = format!(
        "{NAT_HEADER}{REDIRECTS}-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
{OWNER_RULES}-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_eq!(v4(&CaptureConfig::default()), expected);
    assert!(plan(&CaptureConfig::default()).v6.is_empty());
}

#[test]
fn always_excluded_ports_are_added_after_user_ports() {
    let cfg = CaptureConfig {
        inbound_ports_exclude: vec![15090, 15021, 4, 5, 6],
        ..Default::default()
    };
    assert_eq!(
        cfg.effective_inbound_exclusions(),
        vec![15090, 15021, 4, 5, 6, 15020]
    );
    let cfg = CaptureConfig {
        inbound_ports_exclude: vec![],
        ..Default::default()
    };
    assert_eq!(
        cfg.effective_inbound_exclusions(),
        vec![15090, 15021, 15020]
    );
}

#[test]
fn ip_ranges_include_and_exclude() {
    // traffic-params.yaml.injected: -i 127.0.0.1/24,10.96.0.1/24 -x 10.96.0.2/24,10.96.0.3/24
    // -b '*' -d 15090,15021,4,5,6. An included loopback range drops the "app to itself over
    // lo" RETURN rules, as istio-iptables does.
    let cfg = CaptureConfig {
        outbound_ip_ranges_include: IpRanges::Cidrs(cidrs("127.0.0.1/24,10.96.0.1/24")),
        outbound_ip_ranges_exclude: cidrs("10.96.0.2/24,10.96.0.3/24"),
        inbound_ports_exclude: vec![15090, 15021, 4, 5, 6],
        ..Default::default()
    };
    let expected = format!(
        "{NAT_HEADER}{REDIRECTS}-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 4 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 5 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 6 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 10.96.0.2/24 -j RETURN
-A ISTIO_OUTPUT -d 10.96.0.3/24 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/24 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -d 10.96.0.1/24 -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_eq!(v4(&cfg), expected);
}

#[test]
fn inbound_port_list_and_outbound_port_exclusions() {
    // traffic-annotations.yaml.injected: -b 1,2,3 -o 7,8,9 (exclusions of -d only apply to '*').
    let cfg = CaptureConfig {
        inbound_ports: PortSelection::Ports(vec![1, 2, 3]),
        outbound_ports_exclude: vec![7, 8, 9],
        ..Default::default()
    };
    let expected = format!(
        "{NAT_HEADER}{REDIRECTS}-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 1 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 2 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 3 -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp --dport 7 -j RETURN
-A ISTIO_OUTPUT -p tcp --dport 8 -j RETURN
-A ISTIO_OUTPUT -p tcp --dport 9 -j RETURN
{OWNER_RULES}-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_eq!(v4(&cfg), expected);
}

#[test]
fn outbound_ports_include_without_ranges() {
    // istio-iptables' outbound-ports-include golden: -q 32000,31000, no -i, no -b.
    let cfg = CaptureConfig {
        inbound_ports: PortSelection::Ports(vec![]),
        outbound_ip_ranges_include: IpRanges::Cidrs(vec![]),
        outbound_ports_include: vec![32000, 31000],
        ..Default::default()
    };
    let expected = format!(
        "*nat
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
{REDIRECTS}-A OUTPUT -p tcp -j ISTIO_OUTPUT
{OWNER_RULES}-A ISTIO_OUTPUT -p tcp --dport 32000 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -p tcp --dport 31000 -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_eq!(v4(&cfg), expected);
}

#[test]
fn excluded_interfaces_and_kubevirt() {
    // basic-exclude-nic (-c) and kube-virt-interfaces (-k) goldens.
    let cfg = CaptureConfig {
        inbound_ports: PortSelection::Ports(vec![]),
        exclude_interfaces: vec!["not-istio-nic".into()],
        kube_virt_interfaces: vec!["net1".into()],
        ..Default::default()
    };
    let expected = format!(
        "*nat
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -i not-istio-nic -j RETURN
-A OUTPUT -o not-istio-nic -j RETURN
-I PREROUTING 1 -i net1 -j RETURN
{REDIRECTS}-A OUTPUT -p tcp -j ISTIO_OUTPUT
{OWNER_RULES}-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-I PREROUTING 1 -i net1 -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_eq!(v4(&cfg), expected);
}

#[test]
fn tunnel_port_gives_the_newer_istio_rules() {
    // inbound-ports-wildcard golden of current Istio (HBONE port 15008 exempted).
    let cfg = CaptureConfig {
        inbound_tunnel_port: Some(15008),
        inbound_ports_exclude: vec![],
        ..Default::default()
    };
    let out = v4(&cfg);
    assert!(out.contains("-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN\n"));
    assert!(out.contains(
        "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT\n"
    ));
}

#[test]
fn tproxy_mode() {
    // hello-tproxy.yaml.injected: -m TPROXY, otherwise defaults; istio-iptables' tproxy golden.
    let cfg = CaptureConfig {
        mode: InterceptionMode::Tproxy,
        inbound_ports_exclude: vec![],
        ..Default::default()
    };
    let expected = format!(
        "*mangle
:ISTIO_DIVERT - [0:0]
:ISTIO_TPROXY - [0:0]
:ISTIO_INBOUND - [0:0]
-A ISTIO_DIVERT -j MARK --set-mark 1337
-A ISTIO_DIVERT -j ACCEPT
-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT
-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY
-A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark
-A OUTPUT -p tcp -o lo -m mark --mark 1337 -j RETURN
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --gid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark
-I ISTIO_INBOUND 1 -p tcp -m mark --mark 1337 -j RETURN
-I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN
-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN
COMMIT
*nat
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
{REDIRECTS}-A OUTPUT -p tcp -j ISTIO_OUTPUT
{OWNER_RULES}-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"
    );
    assert_eq!(v4(&cfg), expected);
}

#[test]
fn ipv6_splits_ranges_by_family() {
    let cfg = CaptureConfig {
        ipv6: true,
        inbound_ports: PortSelection::Ports(vec![]),
        outbound_ip_ranges_include: IpRanges::Cidrs(cidrs("10.0.0.0/8,fd00::/8")),
        outbound_ip_ranges_exclude: cidrs("10.1.0.0/16,fd00:1::/32"),
        ..Default::default()
    };
    let rules = plan(&cfg);
    let v4 = rules.to_restore(Family::V4);
    let v6 = rules.to_restore(Family::V6);
    assert!(v4.contains("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT\n"));
    assert!(!v4.contains("fd00"));
    assert!(v6.contains("-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN\n"));
    assert!(v6.contains(
        "-A ISTIO_OUTPUT -o lo ! -d ::1/128 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT\n"
    ));
    assert!(v6.contains(
        "-A ISTIO_OUTPUT -d ::1/128 -j RETURN\n-A ISTIO_OUTPUT -d fd00:1::/32 -j RETURN\n"
    ));
    assert!(v6.contains("-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT\n"));
    assert!(!v6.contains("10.0.0.0"));
}

#[test]
fn builtin_chain_rules_are_identified() {
    let rules = plan(&CaptureConfig::default());
    let builtin: Vec<String> = rules
        .v4
        .iter()
        .filter(|r| r.in_builtin_chain())
        .map(|r| r.to_string())
        .collect();
    assert_eq!(
        builtin,
        vec![
            "-t nat -A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-t nat -A OUTPUT -p tcp -j ISTIO_OUTPUT",
        ]
    );
}

#[test]
fn parsing() {
    assert_eq!("*".parse::<PortSelection>(), Ok(PortSelection::All));
    assert_eq!(
        "".parse::<PortSelection>(),
        Ok(PortSelection::Ports(vec![]))
    );
    assert_eq!(
        " 80, 443 ".parse::<PortSelection>(),
        Ok(PortSelection::Ports(vec![80, 443]))
    );
    assert_eq!(parse_ports("80,http"), Err(ParseError::Port("http".into())));
    assert_eq!(parse_ports("0"), Err(ParseError::Port("0".into())));
    assert_eq!(parse_ports("70000"), Err(ParseError::Port("70000".into())));
    assert_eq!("*".parse::<IpRanges>(), Ok(IpRanges::All));
    assert_eq!("".parse::<IpRanges>(), Ok(IpRanges::Cidrs(vec![])));
    assert_eq!(
        parse_cidrs("10.0.0.1"),
        Err(ParseError::Cidr("10.0.0.1".into()))
    );
    assert_eq!(
        parse_cidrs("10.0.0.0/33"),
        Err(ParseError::Cidr("10.0.0.0/33".into()))
    );
    assert_eq!(cidrs("10.96.0.1/24")[0].to_string(), "10.96.0.1/24");
    assert_eq!("TPROXY".parse(), Ok(InterceptionMode::Tproxy));
    assert_eq!(
        "redirect".parse::<InterceptionMode>(),
        Err(ParseError::Mode("redirect".into()))
    );
    assert_eq!(parse_ids("1337,0"), Ok(vec![1337, 0]));
    assert_eq!(
        parse_ids("istio-proxy"),
        Err(ParseError::Id("istio-proxy".into()))
    );
    assert_eq!(
        parse_interfaces("net1, eth0"),
        Ok(vec!["net1".into(), "eth0".into()])
    );
    assert!(parse_interfaces("a b").is_err());
    assert!(parse_interfaces("averyveryverylongname").is_err());
}
