# Shared by up, down, smoke-test, fault and load-image: the names, subnets and ports of one
# environment, all derived from its instance number (CONCORDANCE_K8S_INSTANCE, 0..9,
# default 0), so that environments of different instances can run side by side. Instance 0
# is the one the tests use; take the machine-wide lock (/tmp/concordance-k8s-env.lock) to
# use it. Nothing an environment creates on the host is shared with another instance:
# bridge, routes, network namespaces, cgroups, ports, state folder.

CC_INSTANCE="${CONCORDANCE_K8S_INSTANCE:-0}"
if [[ ! $CC_INSTANCE =~ ^[0-9]$ ]]; then
  printf 'error: CONCORDANCE_K8S_INSTANCE must be a digit (0..9), not %s\n' "$CC_INSTANCE" >&2
  exit 2
fi
# Instance 0: bridge ccbr0, nodes and control plane on 10.244.0.0/24, pods in 10.244.0.0/16
# (node-N gets 10.244.N.0/24), Services in 10.96.0.0/16. Instance i shifts the second byte.
CC_BRIDGE=ccbr$CC_INSTANCE
CC_NET_PREFIX=10.$((244 + CC_INSTANCE))
CC_BRIDGE_IP=$CC_NET_PREFIX.0.1          # the host on the node network: API server, CoreDNS
CC_SERVICES_GW_IP=$CC_NET_PREFIX.0.2     # the namespace that routes the host's Service traffic
CC_CLUSTER_CIDR=$CC_NET_PREFIX.0.0/16
CC_SERVICE_CIDR=10.$((96 + CC_INSTANCE)).0.0/16
CC_API_SERVICE_IP=10.$((96 + CC_INSTANCE)).0.1
CC_CLUSTER_DOMAIN=cluster.local
# Network namespaces and host-side interfaces: cc0-node-1, cc0-services; cc0n1, cc0svc.
CC_NETNS_PREFIX=cc$CC_INSTANCE-
CC_ETCD_PORT=$((12379 + 10 * CC_INSTANCE))
CC_ETCD_PEER_PORT=$((12380 + 10 * CC_INSTANCE))
CC_API_PORT=$((16443 + CC_INSTANCE))
CC_COREDNS_HEALTH_PORT=$((18080 + 10 * CC_INSTANCE))
CC_COREDNS_READY_PORT=$((18181 + 10 * CC_INSTANCE))
CC_NODES="node-1 node-2 node-3"
# The cgroup (in every v1 hierarchy) holding the nodes: /concordance-k8s-0/node-1/...
CC_CGROUP=concordance-k8s-$CC_INSTANCE
# Records which state folder the running environment of this instance uses.
if ((CC_INSTANCE == 0)); then CC_ACTIVE=/run/concordance-k8s/active; else CC_ACTIVE=/run/concordance-k8s/active-$CC_INSTANCE; fi

# node_index NODE: node-2 -> 2
node_index() { echo "${1##*-}"; }
node_ip() { echo "$CC_NET_PREFIX.0.$((10 + $(node_index "$1")))"; }
node_pod_cidr() { echo "$CC_NET_PREFIX.$(node_index "$1").0/24"; }
node_netns() { echo "$CC_NETNS_PREFIX$1"; }
node_veth() { echo "cc${CC_INSTANCE}n$(node_index "$1")"; }

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

# The state folder of the running environment of this instance (or CONCORDANCE_K8S_DIR).
active_state() { echo "${CONCORDANCE_K8S_DIR:-$(cat "$CC_ACTIVE" 2>/dev/null || true)}"; }
