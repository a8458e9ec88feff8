//! citadel's root on a cluster: kept in a Secret, as Istio keeps it, so every mastd replica and
//! every restart signs with the same root.
//!
//! On a laptop the root lives in the CA directory; a cluster has no shared disk, and two
//! replicas with two roots would split the mesh (each replica's workloads distrusting the
//! other's). Istio's answer, followed here with its names so an Istio install's Secrets work
//! unchanged:
//! 1. the plug-in Secret `cacerts` (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
//!    `cert-chain.pem`), an operator's intermediate under an organisation root, wins;
//! 2. else the self-signed root in `istio-ca-secret` (`ca-cert.pem`, `ca-key.pem`);
//! 3. else a new self-signed root (citadel's generator), *created* — never updated — so that
//!    when replicas start together exactly one create succeeds; the others get 409
//!    AlreadyExists and read the winner's root.
//!
//! An error reading either Secret (RBAC, API server down) is an error, not "absent": falling
//! through to a new root on a transient failure would fork the mesh's trust.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use mast_citadel::{CaError, CaOptions, CaPem, CertificateAuthority};

/// Istio's self-signed root Secret.
pub const CA_SECRET: &str = "istio-ca-secret";
/// Istio's plug-in CA Secret.
pub const PLUGIN_SECRET: &str = "cacerts";
/// The `type` Istio gives `istio-ca-secret`.
pub const CA_SECRET_TYPE: &str = "istio.io/ca-root";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} lacks {missing}")]
    Incomplete {
        namespace: String,
        name: String,
        missing: String,
    },
    #[error("Secret {namespace}/{name}: {source}")]
    BadCa {
        namespace: String,
        name: String,
        #[source]
        source: CaError,
    },
    #[error("creating a self-signed root: {0}")]
    Generate(#[source] CaError),
}

/// Where the root came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootSource {
    /// The plug-in `cacerts` Secret.
    PlugIn,
    /// `istio-ca-secret`, already there.
    Existing,
    /// `istio-ca-secret`, just created by this replica.
    Created,
    /// `istio-ca-secret`, created by another replica while this one tried to.
    CreatedByPeer,
}

/// The CA's material and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedRoot {
    pub pem: CaPem,
    pub source: RootSource,
}

/// Load citadel's CA from the Secrets in `namespace` (mastd's), creating `istio-ca-secret` if
/// neither Secret exists. This is mastd's entry point on a cluster.
pub async fn load_ca(
    client: kube::Client,
    namespace: &str,
    opts: CaOptions,
) -> Result<(CertificateAuthority, LoadedRoot), Error> {
    let root = load_or_create(client, namespace, &opts.trust_domain).await?;
    let name = match root.source {
        RootSource::PlugIn => PLUGIN_SECRET,
        _ => CA_SECRET,
    };
    let ca = CertificateAuthority::from_pem(&root.pem, opts).map_err(|source| Error::BadCa {
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    Ok((ca, root))
}

/// The CA material the Secrets hold now (`cacerts`, else `istio-ca-secret`) with the name of
/// the Secret it comes from; `None` when neither exists. Creates nothing.
pub async fn in_force(
    client: kube::Client,
    namespace: &str,
) -> Result<Option<(CaPem, &'static str)>, Error> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    for (name, plugin) in [(PLUGIN_SECRET, true), (CA_SECRET, false)] {
        let found = api.get_opt(name).await.map_err(|source| Error::Api {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
        if let Some(s) = found {
            return Ok(Some((from_secret(&s, namespace, name, plugin)?, name)));
        }
    }
    Ok(None)
}

/// Resolves when the Secrets name a CA other than `loaded` — an operator plugged in
/// `cacerts`, or replaced a root — with a sentence saying which Secret changed. Read every
/// `every`.
///
/// citadel's root is in every workload's trust bundle and in the certificates mastd serves
/// with; swapping it under running servers would be a partial change, so mastd restarts to
/// load it (see mastd's `--ca-poll-interval`). A Secret that cannot be read, is incomplete or
/// was deleted changes nothing: the CA in force stays, and the reason is logged.
pub async fn wait_for_change(
    client: kube::Client,
    namespace: &str,
    loaded: &CaPem,
    every: std::time::Duration,
) -> String {
    let mut told = None;
    loop {
        tokio::time::sleep(every).await;
        let problem = match in_force(client.clone(), namespace).await {
            Ok(Some((pem, name))) if pem != *loaded => {
                return format!("Secret {namespace}/{name} holds a new CA");
            }
            Ok(Some(_)) => None,
            Ok(None) => Some(format!(
                "neither Secret {namespace}/{PLUGIN_SECRET} nor {namespace}/{CA_SECRET} exists; \
                 the CA in force stays"
            )),
            Err(e) => Some(format!("{e}; the CA in force stays")),
        };
        if problem != told {
            if let Some(p) = &problem {
                tracing::warn!("{p}");
            }
            told = problem;
        }
    }
}

/// The CA's PEM material from `cacerts`, else `istio-ca-secret`, else a new self-signed root
/// stored create-only in `istio-ca-secret`.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<LoadedRoot, Error> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_err = |name: &str| {
        let (namespace, name) = (namespace.to_string(), name.to_string());
        move |source| Error::Api {
            namespace,
            name,
            source,
        }
    };
    if let Some(s) = api
        .get_opt(PLUGIN_SECRET)
        .await
        .map_err(api_err(PLUGIN_SECRET))?
    {
        let pem = from_secret(&s, namespace, PLUGIN_SECRET, true)?;
        tracing::info!(%namespace, "plug-in CA loaded from Secret cacerts");
        return Ok(LoadedRoot {
            pem,
            source: RootSource::PlugIn,
        });
    }
    if let Some(s) = api.get_opt(CA_SECRET).await.map_err(api_err(CA_SECRET))? {
        return Ok(LoadedRoot {
            pem: from_secret(&s, namespace, CA_SECRET, false)?,
            source: RootSource::Existing,
        });
    }
    let pem = CaPem::self_signed(trust_domain).map_err(Error::Generate)?;
    match api.create(&PostParams::default(), &to_secret(&pem)).await {
        Ok(_) => {
            tracing::info!(%namespace, "created a self-signed root CA in Secret istio-ca-secret");
            Ok(LoadedRoot {
                pem,
                source: RootSource::Created,
            })
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Another replica won the race: its root is the mesh's.
            let s = api.get(CA_SECRET).await.map_err(api_err(CA_SECRET))?;
            tracing::info!(%namespace, "another replica created istio-ca-secret first; using its root");
            Ok(LoadedRoot {
                pem: from_secret(&s, namespace, CA_SECRET, false)?,
                source: RootSource::CreatedByPeer,
            })
        }
        Err(e) => Err(api_err(CA_SECRET)(e)),
    }
}

/// `istio-ca-secret` for a self-signed root, with Istio's keys and type.
pub fn to_secret(pem: &CaPem) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        (CaPem::CA_CERT, &pem.ca_cert),
        (CaPem::CA_KEY, &pem.ca_key),
        (CaPem::CERT_CHAIN, &pem.cert_chain),
        (CaPem::ROOT_CERT, &pem.root_cert),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "mast".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some(CA_SECRET_TYPE.into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The CA's material from a Secret's data; a plug-in Secret must also have `root-cert.pem`.
fn from_secret(s: &Secret, namespace: &str, name: &str, plugin: bool) -> Result<CaPem, Error> {
    let data = s.data.as_ref();
    let text = |k: &str| {
        data.and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let pem = CaPem {
        ca_cert: text(CaPem::CA_CERT),
        ca_key: text(CaPem::CA_KEY),
        cert_chain: text(CaPem::CERT_CHAIN),
        root_cert: text(CaPem::ROOT_CERT),
    };
    let mut required = vec![(CaPem::CA_CERT, &pem.ca_cert), (CaPem::CA_KEY, &pem.ca_key)];
    if plugin {
        required.push((CaPem::ROOT_CERT, &pem.root_cert));
    }
    let missing: Vec<&str> = required
        .into_iter()
        .filter(|(_, v)| v.trim().is_empty())
        .map(|(k, _)| k)
        .collect();
    if !missing.is_empty() {
        return Err(Error::Incomplete {
            namespace: namespace.into(),
            name: name.into(),
            missing: missing.join(", "),
        });
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::testing::{FakeApiServer, status};

    const NS: &str = "mast-system";
    const SECRETS: &str = "/api/v1/namespaces/mast-system/secrets";

    fn b64(s: &str) -> String {
        // Secrets' data is base64 on the wire; k8s-openapi encodes ByteString the same way.
        serde_json::to_value(ByteString(s.as_bytes().to_vec()))
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    fn secret_json(name: &str, pem: &CaPem) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NS},
            "type": if name == CA_SECRET { CA_SECRET_TYPE } else { "Opaque" },
            "data": {
                "ca-cert.pem": b64(&pem.ca_cert),
                "ca-key.pem": b64(&pem.ca_key),
                "cert-chain.pem": b64(&pem.cert_chain),
                "root-cert.pem": b64(&pem.root_cert),
            }
        })
    }

    #[tokio::test]
    async fn first_start_creates_the_root_and_restarts_load_it() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        let (ca, root) = load_ca(client.clone(), NS, CaOptions::default())
            .await
            .unwrap();
        assert_eq!(root.source, RootSource::Created);
        let stored = api.get_at(&format!("{SECRETS}/{CA_SECRET}")).unwrap();
        assert_eq!(stored["type"], CA_SECRET_TYPE);
        assert_eq!(stored["data"]["cert-chain.pem"], "");
        assert!(stored["data"]["ca-key.pem"].as_str().unwrap().len() > 100);

        let (again, root) = load_ca(client, NS, CaOptions::default()).await.unwrap();
        assert_eq!(root.source, RootSource::Existing);
        assert_eq!(again.trust_bundle_pem(), ca.trust_bundle_pem());
        assert_eq!(
            api.requests()
                .iter()
                .filter(|l| l.starts_with("POST"))
                .count(),
            1,
            "{:?}",
            api.requests()
        );
    }

    #[tokio::test]
    async fn a_lost_create_race_reads_the_winners_root() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        let winner = CaPem::self_signed("cluster.local").unwrap();
        api.put_at(
            &format!("{SECRETS}/{CA_SECRET}"),
            secret_json(CA_SECRET, &winner),
        );
        // Our first read comes before the peer's create lands: 404, then our create is 409.
        let first = Arc::new(AtomicBool::new(true));
        api.hook(move |method, path, _| {
            (*method == Method::GET
                && path.ends_with("/secrets/istio-ca-secret")
                && first.swap(false, Ordering::SeqCst))
            .then(|| {
                let msg = "secrets \"istio-ca-secret\" not found";
                (404, status(404, "NotFound", msg, "secrets", CA_SECRET))
            })
        });
        let root = load_or_create(client, NS, "cluster.local").await.unwrap();
        assert_eq!(root.source, RootSource::CreatedByPeer);
        assert_eq!(root.pem, winner);
        assert!(
            api.requests()
                .iter()
                .any(|l| l.starts_with("POST /api/v1/namespaces/mast-system/secrets")),
            "{:?}",
            api.requests()
        );
    }

    #[tokio::test]
    async fn plugin_cacerts_takes_precedence() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        let org = CaPem::self_signed("Org Root").unwrap();
        let plug = CaPem {
            root_cert: org.ca_cert.clone(),
            ..org.clone()
        };
        api.put_at(
            &format!("{SECRETS}/{CA_SECRET}"),
            secret_json(CA_SECRET, &CaPem::self_signed("cluster.local").unwrap()),
        );
        api.put_at(
            &format!("{SECRETS}/{PLUGIN_SECRET}"),
            secret_json(PLUGIN_SECRET, &plug),
        );
        let (ca, root) = load_ca(client, NS, CaOptions::default()).await.unwrap();
        assert_eq!(root.source, RootSource::PlugIn);
        assert_eq!(ca.trust_bundle_pem().trim(), org.ca_cert.trim());

        // A plug-in Secret without its root is an error naming the key.
        let (client, api) = FakeApiServer::start_in_memory().await;
        api.put_at(
            &format!("{SECRETS}/{PLUGIN_SECRET}"),
            secret_json(PLUGIN_SECRET, &org),
        );
        let err = load_or_create(client, NS, "cluster.local")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Secret mast-system/cacerts lacks root-cert.pem"
        );
    }

    #[tokio::test]
    async fn a_read_error_is_not_absence() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        api.hook(|method, path, _| {
            (*method == Method::GET && path.ends_with("/secrets/cacerts")).then(|| {
                let msg = "secrets \"cacerts\" is forbidden: User \"system:serviceaccount:mast-system:mastd\" cannot get resource \"secrets\" in API group \"\" in the namespace \"mast-system\"";
                (403, status(403, "Forbidden", msg, "secrets", PLUGIN_SECRET))
            })
        });
        let err = load_or_create(client, NS, "cluster.local")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Api { .. }), "{err}");
        assert!(
            !api.requests().iter().any(|l| l.starts_with("POST")),
            "no new root on a read error"
        );
    }

    #[tokio::test]
    async fn a_plugged_in_or_replaced_root_is_noticed_and_nothing_else_is() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        let (_, root) = load_ca(client.clone(), NS, CaOptions::default())
            .await
            .unwrap();
        let every = std::time::Duration::from_millis(20);
        let wait = |loaded: CaPem| {
            let client = client.clone();
            tokio::spawn(async move { wait_for_change(client, NS, &loaded, every).await })
        };
        // Unchanged, or deleted: nothing happens.
        let quiet = wait(root.pem.clone());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        api.delete_at(&format!("{SECRETS}/{CA_SECRET}"));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!quiet.is_finished());
        quiet.abort();
        // An operator plugs in an organisation's CA.
        let org = CaPem::self_signed("Org Root").unwrap();
        let plug = CaPem {
            root_cert: org.ca_cert.clone(),
            ..org
        };
        let noticed = wait(root.pem.clone());
        api.put_at(
            &format!("{SECRETS}/{PLUGIN_SECRET}"),
            secret_json(PLUGIN_SECRET, &plug),
        );
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), noticed)
            .await
            .expect("the new CA was not noticed")
            .unwrap();
        assert_eq!(why, "Secret mast-system/cacerts holds a new CA");
        // And the root the Secrets hold now is that CA.
        let (pem, name) = in_force(client, NS).await.unwrap().unwrap();
        assert_eq!((pem, name), (plug, PLUGIN_SECRET));
    }
}
