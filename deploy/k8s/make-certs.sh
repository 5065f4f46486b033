#!/usr/bin/env bash
# Make the certificates that deploy/k8s's Secrets are generated from (kustomization.yaml,
# secretGenerator), before `kubectl apply -k deploy/k8s`:
#
#   deploy/k8s/make-certs.sh [CA_DIR [duro certs flags, e.g. --force to renew]]
#
# CA_DIR (default $DURO_CA_DIR, else ~/.duro/k8s-ca) keeps the cluster CA and its key: outside the
# repository and outside the cluster; run the script again with the same CA_DIR to add or renew
# certificates (docs/security.md, "Rotation"). It writes deploy/k8s/certs/ (ignored by git):
#
#   ca.pem                               the CA's certificate (in every Secret)
#   node-duro-node-{0,1,2}(.pem|-key.pem) one per node pod (the StatefulSet's pod names = node ids;
#                                        more replicas: more --node here and in kustomization.yaml)
#   placement(.pem|-key.pem)             the placement replicas'
#   edge-duro-edge(.pem|-key.pem)        the edges' (instances duro-edge.<pod>)
#   admin(.pem|-key.pem)                 an operator's (duro drain/migrate/status, etcdctl); in no Secret
#   etcd(.pem|-key.pem)                  etcd's client-port certificate, for your etcd members
#                                        (deploy/etcd-production.md); in no Secret
#
# Environment: DURO (the duro command, default `duro`), DURO_ETCD_HOSTS (comma-separated etcd
# member names/addresses for etcd's certificate, default etcd-client.etcd.svc.cluster.local).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ca_dir=${1:-${DURO_CA_DIR:-$HOME/.duro/k8s-ca}}
[ $# -gt 0 ] && shift
etcd_args=()
IFS=',' read -ra hosts <<<"${DURO_ETCD_HOSTS:-etcd-client.etcd.svc.cluster.local}"
for h in "${hosts[@]}"; do etcd_args+=(--etcd-host "$h"); done
${DURO:-duro} certs --dir "$here/certs" --ca-dir "$ca_dir" \
    --node duro-node-0 --node duro-node-1 --node duro-node-2 \
    --placement --edge duro-edge --admin "${etcd_args[@]}" "$@"
