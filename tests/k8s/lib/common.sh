# Shared by up, down, smoke-test and fault: fixed names of the one environment a machine runs.
#
# Only one environment runs on a machine at a time: kube-proxy owns the host's service rules
# and CoreDNS listens on the bridge address, so two would fight. up refuses a second one.

CC_BRIDGE=ccbr0
CC_BRIDGE_IP=10.244.0.1
CC_CLUSTER_CIDR=10.244.0.0/16
CC_SERVICE_CIDR=10.96.0.0/16
CC_API_SERVICE_IP=10.96.0.1
CC_CLUSTER_DOMAIN=cluster.local
CC_NETNS_PREFIX=cc-
CC_ETCD_PORT=12379
CC_ETCD_PEER_PORT=12380
CC_API_PORT=16443
CC_NODES="node-1 node-2 node-3"
# Records which state folder the running environment uses.
CC_ACTIVE=/run/concordance-k8s/active

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds or time runs out.
wait_for() {
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      printf 'error: %s did not happen within %ss\n' "$what" "$timeout" >&2
      return 1
    fi
    sleep 0.5
  done
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
