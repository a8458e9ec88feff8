#!/usr/bin/env bash
# End-to-end on a real Kubernetes cluster (kind): build Mast's images, install Mast, deploy the
# todo-list sample into an injected namespace, and check the traffic split the sidecars apply
# — 50/50, then 80/20 — by counting which version of `user` answers a client in the mesh.
#
# Not run in CI here (it needs Docker, kind, kubectl and registry access for base images);
# for users and maintainers who have them:
#   scripts/e2e-kind.sh                 # builds, creates cluster `mast-e2e`, tests, deletes it
#   KEEP_CLUSTER=1 scripts/e2e-kind.sh  # leave the cluster up afterwards to look around
#   SKIP_BUILD=1 scripts/e2e-kind.sh    # reuse images already built with these tags
#   REQUESTS=400 scripts/e2e-kind.sh    # requests per split measurement (default 200)
#
# Steps: docker build (docker/*.Dockerfile) → kind create cluster → kind load → apply
# manifests/install/{crds,mast,istiod-alias,gateways,injector-webhook}.yaml → wait for mastd and the
# webhook's caBundle → apply manifests/samples/todolist (namespace `default` labelled
# istio-injection=enabled) and manifests/samples/kubernetes → check every pod got its sidecar
# → count versions over REQUESTS requests at 50/50, then at 80/20. The cluster is deleted on
# exit, success or not (unless KEEP_CLUSTER=1); on failure the pods and mastd's logs are
# printed first.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-mast-e2e}
REQUESTS=${REQUESTS:-200}
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
MASTD_IMAGE=ghcr.io/mast-mesh/mastd:$VERSION
PROXY_IMAGE=ghcr.io/mast-mesh/mast-proxy:$VERSION
SAMPLES_IMAGE=ghcr.io/mast-mesh/samples:$VERSION

log() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (needed: docker, kind, kubectl)"
done

created=0
cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ "$created" = 1 ]; then
        log "diagnostics (exit code $rc)"
        kubectl get pods -A -o wide || true
        kubectl -n mast-system logs deploy/mastd --tail=100 || true
        kubectl get events -n default --sort-by=.lastTimestamp | tail -30 || true
    fi
    if [ "$created" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
        log "deleting kind cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER" || true
    elif [ "$created" = 1 ]; then
        log "cluster $CLUSTER kept (KEEP_CLUSTER=1): kind delete cluster --name $CLUSTER"
    fi
    exit "$rc"
}
trap cleanup EXIT

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building images $VERSION (docker/*.Dockerfile)"
    export DOCKER_BUILDKIT=1
    docker build -f docker/mastd.Dockerfile -t "$MASTD_IMAGE" .
    docker build -f docker/proxy.Dockerfile -t "$PROXY_IMAGE" .
    docker build -f docker/samples.Dockerfile -t "$SAMPLES_IMAGE" .
fi

log "creating kind cluster $CLUSTER"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    fail "a kind cluster named $CLUSTER already exists; delete it or set CLUSTER=…"
fi
kind create cluster --name "$CLUSTER" --wait 120s
created=1
kubectl config use-context "kind-$CLUSTER" >/dev/null

log "loading images into the cluster"
kind load docker-image --name "$CLUSTER" "$MASTD_IMAGE" "$PROXY_IMAGE" "$SAMPLES_IMAGE"

log "installing Mast: CRDs"
kubectl apply -f manifests/install/crds.yaml
kubectl wait --for=condition=Established --timeout=60s -f manifests/install/crds.yaml

log "installing Mast: mastd, istiod alias, injection webhook"
kubectl apply -f manifests/install/mast.yaml
kubectl apply -f manifests/install/istiod-alias.yaml
kubectl apply -f manifests/install/gateways.yaml
kubectl apply -f manifests/install/injector-webhook.yaml
kubectl -n mast-system rollout status deploy/mastd --timeout=180s \
    || fail "mastd did not become ready (readiness: GET :15014/ready)"

log "waiting for mastd to fill the webhook's caBundle"
for _ in $(seq 60); do
    ca=$(kubectl get mutatingwebhookconfiguration mast-sidecar-injector \
        -o jsonpath='{.webhooks[0].clientConfig.caBundle}')
    [ -n "$ca" ] && break
    sleep 2
done
[ -n "$ca" ] || fail "the MutatingWebhookConfiguration's caBundle is still empty after 120 s"

log "deploying the todo-list sample into namespace default (istio-injection=enabled)"
kubectl apply -f manifests/samples/todolist/services.yaml
kubectl apply -f manifests/samples/todolist/user-destination-rule.yaml
kubectl apply -f manifests/samples/todolist/user-split.yaml
kubectl apply -f manifests/samples/todolist/mtls.yaml
kubectl apply -f manifests/samples/kubernetes/todolist.yaml
kubectl apply -f manifests/samples/kubernetes/curl.yaml
for d in myapp user-v1 user-v2 todo curl; do
    kubectl -n default rollout status "deploy/$d" --timeout=180s || fail "deployment $d not ready"
done

log "checking every sample pod has its sidecar"
for app in myapp user todo curl; do
    containers=$(kubectl -n default get pods -l "app=$app" \
        -o jsonpath='{range .items[*]}{.spec.initContainers[*].name} {.spec.containers[*].name}{"\n"}{end}')
    grep -q istio-proxy <<<"$containers" || fail "pods of $app have no istio-proxy: $containers"
done
echo "ok: myapp, user, todo and curl are injected"

log "myapp answers through the mesh (calls user and todo by Service name)"
kubectl -n default exec deploy/curl -c curl -- \
    curl -sS --fail --max-time 10 http://myapp:8080/api/page \
    || fail "myapp's /api/page did not answer 200"
echo

# Counts the versions of `user` over $REQUESTS requests from the curl pod (through its
# sidecar, so through the split), and prints "v1 v2".
count_versions() {
    kubectl -n default exec deploy/curl -c curl -- sh -c "
        for i in \$(seq $REQUESTS); do
            curl -s -o /dev/null -D - --max-time 5 http://user:8081/ | tr -d '\r' | grep -i '^x-user-version:'
        done" | awk '{v[tolower($2)]++} END {printf "%d %d\n", v["v1"], v["v2"]}'
}

# Expects v1's share of answers within [lo, hi] percent; retries a few times so a split
# just applied has time to reach the sidecar.
check_split() {
    local name=$1 lo=$2 hi=$3 v1 v2 share
    for attempt in 1 2 3 4 5; do
        v1=0 v2=0
        read -r v1 v2 < <(count_versions || echo "0 0") || true
        share=$(( v1 * 100 / (v1 + v2 > 0 ? v1 + v2 : 1) ))
        echo "$name, attempt $attempt: v1=$v1 v2=$v2 (v1 ${share}%)"
        if [ $((v1 + v2)) -ge $((REQUESTS * 9 / 10)) ] && [ "$share" -ge "$lo" ] && [ "$share" -le "$hi" ]; then
            echo "ok: $name split holds (v1 ${share}% within ${lo}–${hi}%)"
            return 0
        fi
        sleep 3
    done
    fail "$name: v1 share ${share}% (v1=$v1 v2=$v2 of $REQUESTS) outside ${lo}–${hi}%"
}

log "split 50/50 (manifests/samples/todolist/user-split.yaml)"
check_split "50/50" 35 65

log "split 80/20 (manifests/samples/kubernetes/user-split-80-20.yaml)"
kubectl apply -f manifests/samples/kubernetes/user-split-80-20.yaml
check_split "80/20" 70 90

log "e2e on kind passed: Mast installed, sample injected, 50/50 and 80/20 splits measured"
