# The parts of a test node, used by up (to start them) and fault (to stop or partition
# them). A node is a failure domain of its own: network namespace cc<i>-node-N (veth to the
# host bridge), cgroup /concordance-k8s-<i>/node-N in every cgroup v1 hierarchy (its daemons
# in system/, its pods in kubepods/ below it), its own containerd (root, state, socket), its
# kubelet and kube-proxy, and a UTS namespace per daemon with the node's host name.
# Needs common.sh.

# The cgroup v1 hierarchies mounted on the host (cpu, memory, freezer, ..., name=systemd).
cgroup_hierarchies() {
  awk '$3 == "cgroup" { print $2 }' /proc/mounts
}

node_cgroup() { echo "$CC_CGROUP/$1"; }

# cgroup_create PATH: creates PATH (relative to each hierarchy's root) in every hierarchy; a
# new cpuset cgroup gets its parent's CPUs and memory nodes (it is born empty, and a process
# cannot join an empty cpuset).
cgroup_create() {
  local h dir part path
  for h in $(cgroup_hierarchies); do
    path=""
    for part in ${1//\// }; do
      path+="/$part"
      dir="$h$path"
      [[ -d $dir ]] && continue
      mkdir "$dir"
      if [[ -f $dir/cpuset.cpus ]]; then
        cat "${dir%/*}/cpuset.cpus" >"$dir/cpuset.cpus"
        cat "${dir%/*}/cpuset.mems" >"$dir/cpuset.mems"
      fi
    done
  done
}

# cgroup_remove PATH: removes PATH and everything below it (deepest first) in every
# hierarchy, thawing it first. Processes still inside make it fail; kill them before.
cgroup_remove() {
  local h
  for h in $(cgroup_hierarchies); do
    [[ -d $h/$1 ]] || continue
    [[ -f $h/$1/freezer.state ]] && echo THAWED >"$h/$1/freezer.state" 2>/dev/null
    find "$h/$1" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  return 0
}

# cgroup_pids PATH: every process in PATH and below (the freezer hierarchy sees them all).
cgroup_pids() {
  local dir=/sys/fs/cgroup/freezer/$1
  [[ -d $dir ]] || return 0
  find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null
}

# node_exec NODE COMMAND...: runs COMMAND (exec, same pid) in the node's system cgroup,
# network namespace and a new UTS namespace named after the node. The mount namespace stays
# the host's: kubelet, containerd and the CNI plugins must see each other's mounts.
node_exec() {
  local node=$1 h
  shift
  for h in $(cgroup_hierarchies); do
    echo $BASHPID >"$h/$(node_cgroup "$node")/system/cgroup.procs"
  done
  exec nsenter --net="/run/netns/$(node_netns "$node")" \
    unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$node" "$@"
}

# node_ctr NODE ARGS...: ctr against the node's containerd, in the CRI namespace.
node_ctr() {
  local node=$1 state
  shift
  state="$(active_state)"
  ctr --address "$state/nodes/$node/containerd.sock" --namespace k8s.io "$@"
}

# freezer_set PATH FROZEN|THAWED: freezes or thaws a cgroup and waits until it is.
freezer_set() {
  local file=/sys/fs/cgroup/freezer/$1/freezer.state i
  [[ -f $file ]] || return 1
  echo "$2" >"$file"
  for i in $(seq 100); do
    [[ $(cat "$file") == "$2" ]] && return 0
    sleep 0.1
  done
  return 1
}
