//! The mastctl commands as a user runs them: the real binary, real files, and (for the
//! bootstrap) the real Envoy's `--mode validate`.

use std::process::Command;

#[test]
fn reports_file_resource_and_field_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: user}\nspec:\n  ports: [{name: http, port: 80}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: user}\nspec:\n  hosts: [user]\n  http:\n  - timeout: 5 seconds\n    route:\n    - destination: {host: user}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mastctl"))
        .arg("analyze")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    assert!(stderr.contains("VirtualService default/user"), "{stderr}");
    assert!(stderr.contains("spec.http[0].timeout"), "{stderr}");

    std::fs::remove_file(dir.path().join("bad.yaml")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mastctl"))
        .arg("analyze")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bootstrap(extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mastctl"))
        .args(["bootstrap", "--pod", "client-1", "--namespace", "default"])
        .args([
            "--labels",
            "app=client,version=v1",
            "--interception-mode",
            "NONE",
        ])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn node_is_shaped_as_istio() {
    let out = bootstrap(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["node"]["id"],
        "sidecar~127.0.0.1~client-1.default~default.svc.cluster.local"
    );
    assert_eq!(v["node"]["metadata"]["LABELS"]["version"], "v1");
    assert_eq!(v["node"]["metadata"]["INTERCEPTION_MODE"], "NONE");
}

#[test]
fn bad_flags_are_refused_naming_the_flag() {
    let out = bootstrap(&["--xds-address", "mastd-without-port"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--xds-address"));
}

/// The real Envoy accepts the bootstrap (`--mode validate`). scripts/test.sh installs it
/// and sets ENVOY_BIN; a developer run without it says so and checks the rest.
#[test]
fn real_envoy_accepts_it() {
    let Some(envoy) = std::env::var_os("ENVOY_BIN") else {
        eprintln!("ENVOY_BIN not set: skipping envoy --mode validate (scripts/test.sh sets it)");
        return;
    };
    for delta in [false, true] {
        let out = bootstrap(if delta { &["--delta"] } else { &[] });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.json");
        std::fs::write(&path, &out.stdout).unwrap();
        let v = Command::new(&envoy)
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .args(["--use-dynamic-base-id", "-l", "error"])
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "envoy rejected the bootstrap: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
}
