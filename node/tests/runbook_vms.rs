//! The operations runbook typed as written, on three "VMs": each its own network namespace,
//! host name, `/var/lib/concordance` and port 4100, peers found by host name, requests made
//! with `curl` inside the VM. Partitions are real packet filters (nftables) in a VM.
//!
//! Needs root (namespaces, mounts, nftables); as another user it says so and does nothing.

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use common::ADMIN_KEY;
use common::AGENT_KEY;
use serde_json::Value;

const NODE1: &str = "concordance --node-id=node1 --listen=0.0.0.0:4100 \\
  --data-dir=/var/lib/concordance --bootstrap \\
  --api-key=$CONCORDANCE_API_KEY --agent-key=$CONCORDANCE_AGENT_API_KEY";
const NODE2: &str = "concordance --node-id=node2 --listen=0.0.0.0:4100 \\
  --data-dir=/var/lib/concordance --join=node1:4100 \\
  --api-key=$CONCORDANCE_API_KEY --agent-key=$CONCORDANCE_AGENT_API_KEY";
const NODE3: &str = "concordance --node-id=node3 --listen=0.0.0.0:4100 \\
  --data-dir=/var/lib/concordance --join=node1:4100 \\
  --api-key=$CONCORDANCE_API_KEY --agent-key=$CONCORDANCE_AGENT_API_KEY";
const REMOVE_NODE2: &str = r#"curl -sS -X POST http://leader:4100/api/v1/cluster/remove \
  -H "Authorization: Bearer $CONCORDANCE_API_KEY" \
  -d '{"nodeId": "node2"}'"#;
const NODE2_NEW: &str = "concordance --node-id=node2-new --listen=0.0.0.0:4100 \\
  --data-dir=/var/lib/concordance-new --join=node1:4100";

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

fn must(cmd: &str) {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three VMs on a private switch: everything lives in namespaces this test creates.
struct Vms {
    id: String,
    subnet: u32,
    root: PathBuf,
    procs: Vec<Child>,
}

impl Vms {
    fn ns(&self, vm: usize) -> String {
        format!("cc{}v{vm}", self.id)
    }

    fn ip(&self, vm: usize) -> String {
        format!("10.231.{}.{vm}", self.subnet)
    }

    fn create() -> Self {
        let pid = std::process::id();
        let id = format!("{:x}", pid % 0xfffff);
        let vms = Self {
            subnet: pid % 250,
            root: tempfile::tempdir().unwrap().keep(),
            id,
            procs: vec![],
        };
        let sw = format!("cc{}sw", vms.id);
        must(&format!(
            "ip netns add {sw} && ip -n {sw} link add br0 type bridge && ip -n {sw} link set br0 up"
        ));
        // Both data dirs of the runbook exist on the host only as empty mount points.
        must("mkdir -p /var/lib/concordance /var/lib/concordance-new");
        let hosts: String = (1..=3)
            .map(|i| format!("{} node{i}\n", vms.ip(i)))
            .chain([format!(
                "{} node2-new\n{} leader\n127.0.0.1 localhost\n",
                vms.ip(2),
                vms.ip(1)
            )])
            .collect();
        for i in 1..=3 {
            let ns = vms.ns(i);
            must(&format!(
                "ip netns add {ns} && ip link add e{i} netns {ns} type veth peer name p{i} netns {sw} && \
                 ip -n {sw} link set p{i} master br0 && ip -n {sw} link set p{i} up && \
                 ip -n {ns} addr add {}/24 dev e{i} && ip -n {ns} link set e{i} up && ip -n {ns} link set lo up",
                vms.ip(i)
            ));
            std::fs::create_dir_all(format!("/etc/netns/{ns}")).unwrap();
            std::fs::write(format!("/etc/netns/{ns}/hosts"), &hosts).unwrap();
            for d in ["concordance", "concordance-new"] {
                std::fs::create_dir_all(vms.root.join(format!("vm{i}/{d}"))).unwrap();
            }
        }
        vms
    }

    /// Runs `script` on VM `vm` as that host: its network, host name and disks.
    fn command(&self, vm: usize, hostname: &str, script: &str) -> Command {
        let bin_dir = Path::new(common::bin())
            .parent()
            .unwrap()
            .display()
            .to_string();
        let disks = format!(
            "mount --bind {root}/vm{vm}/concordance /var/lib/concordance && \
             mount --bind {root}/vm{vm}/concordance-new /var/lib/concordance-new",
            root = self.root.display()
        );
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns(vm),
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(format!("{disks} && hostname {hostname} && {script}"))
        .env(
            "PATH",
            format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .env("CONCORDANCE_API_KEY", ADMIN_KEY)
        .env("CONCORDANCE_AGENT_API_KEY", AGENT_KEY)
        .env_remove("CONCORDANCE_DATA_DIR");
        c
    }

    /// Starts a runbook line on a VM (`exec` so a kill reaches the node itself).
    fn start(&mut self, vm: usize, hostname: &str, line: &str) -> usize {
        let log = std::fs::File::create(self.root.join(format!("{hostname}.log"))).unwrap();
        let child = self
            .command(vm, hostname, &format!("exec {line}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push(child);
        self.procs.len() - 1
    }

    fn kill(&mut self, proc_index: usize) {
        let _ = self.procs[proc_index].kill();
        let _ = self.procs[proc_index].wait();
    }

    /// Runs a command (a runbook curl) on a VM and returns its stdout.
    fn run(&self, vm: usize, script: &str) -> (bool, String) {
        let out = self
            .command(vm, &format!("node{vm}"), script)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn curl_json(&self, vm: usize, args: &str) -> Option<Value> {
        let (ok, out) = self.run(vm, &format!("curl -sS --max-time 8 {args}"));
        if !ok {
            return None;
        }
        serde_json::from_str(&out).ok()
    }

    fn wait_ready(&self, vm: usize, host: &str) {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let (ok, _) = self.run(
                vm,
                &format!("curl -sf --max-time 2 http://{host}:4100/api/v1/ready"),
            );
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{host} not ready; log:\n{}",
                self.log(host)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self, host: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("{host}.log"))).unwrap_or_default()
    }

    fn put(&self, vm: usize, key: &str, value: &str) -> Option<Value> {
        self.curl_json(
            vm,
            &format!(
                "-X PUT http://node{vm}:4100/api/v1/kv/{key} -H \"Authorization: Bearer $CONCORDANCE_AGENT_API_KEY\" -d '{{\"value\": {value}}}'"
            ),
        )
    }

    fn get(&self, vm: usize, key: &str, consistency: &str) -> Option<Value> {
        self.curl_json(
            vm,
            &format!(
                "'http://node{vm}:4100/api/v1/kv/{key}?consistency={consistency}' -H \"Authorization: Bearer $CONCORDANCE_AGENT_API_KEY\""
            ),
        )
    }
}

impl Drop for Vms {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 1..=3 {
            let ns = self.ns(i);
            let _ = sh(&format!("ip netns del {ns}"));
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        let _ = sh(&format!("ip netns del cc{}sw", self.id));
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn is_root() -> bool {
    sh("id -u").stdout.starts_with(b"0")
}

#[test]
fn the_runbook_as_typed_on_three_vms_with_a_replacement_and_a_partition() {
    // Failing, not skipping: a run that tested nothing must not pass.
    assert!(
        is_root(),
        "this test needs root for its network namespaces: run it as root, as CI does"
    );
    let mut vms = Vms::create();
    let n1 = vms.start(1, "node1", NODE1);
    vms.wait_ready(1, "node1");
    let n2 = vms.start(2, "node2", NODE2);
    vms.start(3, "node3", NODE3);
    vms.wait_ready(2, "node2");
    vms.wait_ready(3, "node3");

    // Health monitoring lines, typed as written (no key).
    let (ok, health) = vms.run(1, "curl http://node1:4100/api/v1/health");
    assert!(ok && health.contains("\"ok\""), "{health}");
    let status = vms
        .curl_json(1, "http://node1:4100/api/v1/cluster/status")
        .unwrap();
    assert_eq!(status["leader"], "node1");
    // Listening on 0.0.0.0, each node advertises <host name>:4100.
    let mut addrs: Vec<&str> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["address"].as_str().unwrap())
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["node1:4100", "node2:4100", "node3:4100"]);
    let (ok, _) = vms.run(1, "curl -f http://node1:4100/api/v1/ready");
    assert!(ok);

    for i in 1..=3 {
        let answer = vms.put(i, &format!("from/node{i}"), &format!("{i}"));
        assert!(
            answer.as_ref().is_some_and(|a| a["revision"].is_u64()),
            "write through node{i}: {answer:?}"
        );
    }
    for i in 1..=3 {
        for j in 1..=3 {
            let v = vms
                .get(i, &format!("from/node{j}"), "linearizable")
                .unwrap();
            assert_eq!(v["kv"]["value"], j as u64);
        }
    }

    // Replace failed node: node2 dies, is removed with the runbook's curl, and node2-new
    // (no keys on its command line) joins with an empty data dir.
    vms.kill(n2);
    let (ok, out) = vms.run(1, REMOVE_NODE2);
    assert!(ok && out.contains("removed"), "{out}");
    vms.start(2, "node2-new", NODE2_NEW);
    vms.wait_ready(2, "node2-new");
    let v = vms
        .curl_json(2, "'http://node2-new:4100/api/v1/kv/from/node3?consistency=serializable' -H \"Authorization: Bearer $CONCORDANCE_API_KEY\"")
        .unwrap();
    assert_eq!(v["kv"]["value"], 3);

    // Partition: cut node1 (the leader) off from both others with a packet filter in its VM.
    must(&format!(
        "ip netns exec {} nft -f - <<'EOF'\ntable inet partition {{\n chain input {{ type filter hook input priority 0; ip saddr {{ {}, {} }} drop; }}\n chain output {{ type filter hook output priority 0; ip daddr {{ {}, {} }} drop; }}\n}}\nEOF",
        vms.ns(1),
        vms.ip(2),
        vms.ip(3),
        vms.ip(2),
        vms.ip(3)
    ));
    let cut_at = Instant::now();
    let mut majority_write = None;
    let mut attempts = Vec::new();
    while cut_at.elapsed() < Duration::from_secs(15) {
        let r = vms.put(3, "partition/majority", "1");
        attempts.push((cut_at.elapsed(), r.clone()));
        if r.is_some_and(|v| v["revision"].is_u64()) {
            majority_write = Some(cut_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = majority_write.unwrap_or_else(|| {
        panic!(
            "the majority side never accepted a write; attempts: {attempts:?}\nnode3's log:\n{}\nnode2-new's log:\n{}",
            vms.log("node3"),
            vms.log("node2-new")
        )
    });
    assert!(
        took < Duration::from_secs(5),
        "majority took {took:?} to write again; attempts: {attempts:?}"
    );
    // The minority side is read-only: serializable reads work, writes and linearizable reads fail.
    let v = vms.get(1, "from/node1", "serializable").unwrap();
    assert_eq!(v["kv"]["value"], 1);
    let w = vms.put(1, "partition/minority", "1").unwrap();
    assert!(
        w["error"]["code"] == "no_quorum" || w["error"]["code"] == "not_leader",
        "{w}"
    );
    let r = vms.get(1, "from/node1", "linearizable").unwrap();
    assert!(r["error"].is_object(), "{r}");

    // Heal: node1 rejoins as a follower and catches up.
    must(&format!(
        "ip netns exec {} nft delete table inet partition",
        vms.ns(1)
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = vms.get(1, "partition/majority", "linearizable")
            && v["kv"]["value"] == 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node1 did not heal:\n{}",
            vms.log("node1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    vms.wait_ready(1, "node1");
    vms.kill(n1);
}
