//! Running CNI plugins: ADD in order with prevResult chaining, DEL in reverse, and a result cache
//! on disk so DEL after a crustd restart uses exactly the config and result of the ADD.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{CniError, NetworkConfigList};
use crate::metrics;
use crate::pod::spec::PortMapping;

/// What a plugin run produced when it did not succeed.
#[derive(Debug)]
pub enum RunFailure {
    /// Exited non-zero; stdout usually holds a CNI error object.
    Exit {
        code: Option<i32>,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    TimedOut,
    Io(std::io::Error),
}

pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, RunFailure>> + Send + 'a>>;

/// The process seam: runs one plugin binary with env and stdin, returns its stdout.
pub trait PluginRunner: Send + Sync {
    fn run<'a>(
        &'a self,
        binary: &'a Path,
        env: Vec<(String, String)>,
        stdin: Vec<u8>,
        timeout: Duration,
    ) -> RunFuture<'a>;
}

/// Runs plugins as real processes.
pub struct ProcessRunner;

impl PluginRunner for ProcessRunner {
    fn run<'a>(
        &'a self,
        binary: &'a Path,
        env: Vec<(String, String)>,
        stdin: Vec<u8>,
        timeout: Duration,
    ) -> RunFuture<'a> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            let mut cmd = tokio::process::Command::new(binary);
            cmd.envs(env)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            // ETXTBSY: a plugin just installed can still be open for writing in a child some
            // other thread forked; it goes away within moments.
            let mut tries = 0;
            let mut child = loop {
                match cmd.spawn() {
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    other => break other.map_err(RunFailure::Io)?,
                }
            };
            if let Some(mut s) = child.stdin.take() {
                // A plugin that exits without reading its config still has something to say.
                match s.write_all(&stdin).await {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        return Err(RunFailure::Io(e));
                    }
                    _ => {}
                }
            }
            let out = tokio::time::timeout(timeout, child.wait_with_output())
                .await
                .map_err(|_| RunFailure::TimedOut)?
                .map_err(RunFailure::Io)?;
            if out.status.success() {
                Ok(out.stdout)
            } else {
                Err(RunFailure::Exit {
                    code: out.status.code(),
                    stdout: out.stdout,
                    stderr: out.stderr,
                })
            }
        })
    }
}

/// The per-attachment inputs CNI needs besides the network config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// CNI_ARGS pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).
    pub args: Vec<(String, String)>,
    pub port_mappings: Vec<PortMapping>,
}

/// What is cached per attachment under `<root_dir>/cni/<container_id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedAttachment {
    pub version: u32,
    pub network: NetworkConfigList,
    pub runtime: RuntimeConf,
    /// None while ADD has not finished (a crash then still lets DEL run with the config).
    pub result: Option<Value>,
}

/// A CNI invoker bound to plugin dirs, a cache dir and a process runner.
pub struct Cni {
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    timeout: Duration,
    runner: Box<dyn PluginRunner>,
}

impl Cni {
    pub fn new(
        bin_dirs: Vec<PathBuf>,
        cache_dir: PathBuf,
        timeout: Duration,
        runner: Box<dyn PluginRunner>,
    ) -> Self {
        Self {
            bin_dirs,
            cache_dir,
            timeout,
            runner,
        }
    }

    fn cache_path(&self, container_id: &str) -> PathBuf {
        self.cache_dir.join(format!("{container_id}.json"))
    }

    /// The cached attachment of a container, if any.
    pub fn cached(&self, container_id: &str) -> Option<CachedAttachment> {
        let bytes = std::fs::read(self.cache_path(container_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the entry aside and renames it into place, so a crash never leaves half of
    /// one. A failed write leaves no temporary file; a full disk is [`CniError::NoSpace`].
    fn write_cache(&self, c: &CachedAttachment) -> Result<(), CniError> {
        let path = self.cache_path(&c.runtime.container_id);
        let tmp = path.with_extension("json.tmp");
        let written = crust_state::private::create_dir(&self.cache_dir)
            .map_err(|e| (self.cache_dir.clone(), e))
            .and_then(|()| {
                let bytes = serde_json::to_vec(c).unwrap_or_default();
                crust_state::private::write_file(&tmp, &bytes).map_err(|e| (tmp.clone(), e))
            })
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| (path.clone(), e)));
        let Err((at, e)) = written else {
            return Ok(());
        };
        let _ = std::fs::remove_file(&tmp);
        Err(match crust_state::NoSpace::from_io("write", &at, &e) {
            Some(full) => CniError::NoSpace(full),
            None => CniError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", at.display()),
            )),
        })
    }

    /// ADD: runs the plugins in order, each given the previous one's result. On failure the
    /// plugins are DELeted again (so IPAM leases and iptables rules do not leak) and the cache
    /// entry is removed. Returns the final result.
    pub async fn add(
        &self,
        network: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<Value, CniError> {
        let started = Instant::now();
        let mut cached = CachedAttachment {
            version: 1,
            network: network.clone(),
            runtime: rt.clone(),
            result: None,
        };
        self.write_cache(&cached)?;
        let result = self.add_chain(network, rt).await;
        metrics::observe_cni("add", started.elapsed(), result.is_ok());
        match result {
            Ok(res) => {
                cached.result = Some(res.clone());
                if let Err(e) = self.write_cache(&cached) {
                    let _ = self.del_chain(network, rt, Some(&res)).await;
                    let _ = std::fs::remove_file(self.cache_path(&rt.container_id));
                    return Err(e);
                }
                Ok(res)
            }
            Err(e) => {
                if let Err(del) = self.del_chain(network, rt, None).await {
                    tracing::warn!(container = %rt.container_id, error = %del, "CNI DEL after failed ADD");
                }
                let _ = std::fs::remove_file(self.cache_path(&rt.container_id));
                Err(e)
            }
        }
    }

    async fn add_chain(
        &self,
        network: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &network.plugins {
            let conf = plugin_conf(plugin, network, prev.as_ref(), rt);
            let out = self.exec(plugin, "ADD", &conf, rt).await?;
            let res: Value = serde_json::from_slice(&out).map_err(|e| CniError::Plugin {
                plugin: plugin_type(plugin),
                command: "ADD".into(),
                message: format!("invalid result JSON: {e}"),
            })?;
            prev = Some(res);
        }
        prev.ok_or_else(|| CniError::Plugin {
            plugin: network.name.clone(),
            command: "ADD".into(),
            message: "network has no plugins".into(),
        })
    }

    /// CHECK for a container, from its cached attachment: every plugin in order with the ADD
    /// result as prevResult. Ok(false) when there is nothing to check (no cache entry, a CNI
    /// version before 0.4.0, or `disableCheck` in the config).
    pub async fn check(&self, container_id: &str) -> Result<bool, CniError> {
        let Some(c) = self.cached(container_id) else {
            return Ok(false);
        };
        let Some(result) = c.result.as_ref() else {
            return Ok(false);
        };
        if c.network.disable_check || !version_at_least(&c.network.cni_version, (0, 4, 0)) {
            return Ok(false);
        }
        for plugin in &c.network.plugins {
            let conf = plugin_conf(plugin, &c.network, Some(result), &c.runtime);
            self.exec(plugin, "CHECK", &conf, &c.runtime).await?;
        }
        Ok(true)
    }

    /// DEL for a container, using the cached config and result when there is one (falling back
    /// to `network`), then forgets the cache entry. No cache and no network: nothing to do.
    pub async fn del(
        &self,
        container_id: &str,
        network: Option<&NetworkConfigList>,
        rt: &RuntimeConf,
    ) -> Result<(), CniError> {
        let cached = self.cached(container_id);
        let (net, rt, prev) = match (&cached, network) {
            (Some(c), _) => (&c.network, &c.runtime, c.result.as_ref()),
            (None, Some(n)) => (n, rt, None),
            (None, None) => return Ok(()),
        };
        let started = Instant::now();
        let result = self.del_chain(net, rt, prev).await;
        metrics::observe_cni("del", started.elapsed(), result.is_ok());
        result?;
        match std::fs::remove_file(self.cache_path(container_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// DEL in reverse order. Every plugin is called even when one fails (so the IPAM lease is
    /// released whatever portmap says); the first error is returned.
    async fn del_chain(
        &self,
        network: &NetworkConfigList,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        // prevResult on DEL exists from CNI 0.4.0 on.
        let prev = prev.filter(|_| version_at_least(&network.cni_version, (0, 4, 0)));
        let mut first_err = None;
        for plugin in network.plugins.iter().rev() {
            let conf = plugin_conf(plugin, network, prev, rt);
            if let Err(e) = self.exec(plugin, "DEL", &conf, rt).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn find_plugin(&self, name: &str) -> Result<PathBuf, CniError> {
        if !name.is_empty() && !name.contains('/') {
            for d in &self.bin_dirs {
                let p = d.join(name);
                if crate::config::is_executable(&p) {
                    return Ok(p);
                }
            }
        }
        Err(CniError::PluginNotFound {
            plugin: name.to_string(),
            dirs: self.bin_dirs.clone(),
        })
    }

    async fn exec(
        &self,
        plugin: &Value,
        command: &str,
        conf: &Value,
        rt: &RuntimeConf,
    ) -> Result<Vec<u8>, CniError> {
        let ty = plugin_type(plugin);
        let binary = self.find_plugin(&ty)?;
        let cni_path = std::env::join_paths(&self.bin_dirs)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let args = rt
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let env = vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), rt.container_id.clone()),
            ("CNI_NETNS".into(), rt.netns.to_string_lossy().into_owned()),
            ("CNI_IFNAME".into(), rt.ifname.clone()),
            ("CNI_ARGS".into(), args),
            ("CNI_PATH".into(), cni_path),
        ];
        let stdin = serde_json::to_vec(conf).unwrap_or_default();
        let fail = |message: String| CniError::Plugin {
            plugin: ty.clone(),
            command: command.into(),
            message,
        };
        match self.runner.run(&binary, env, stdin, self.timeout).await {
            Ok(out) => Ok(out),
            Err(RunFailure::TimedOut) => Err(fail(format!("timed out after {:?}", self.timeout))),
            Err(RunFailure::Io(e)) => Err(fail(format!("running {}: {e}", binary.display()))),
            Err(RunFailure::Exit {
                code,
                stdout,
                stderr,
            }) => Err(fail(error_message(code, &stdout, &stderr))),
        }
    }
}

/// A plugin's stdin: its config plus the list's name and version, prevResult and the
/// runtimeConfig for the capabilities it declares.
fn plugin_conf(
    plugin: &Value,
    network: &NetworkConfigList,
    prev: Option<&Value>,
    rt: &RuntimeConf,
) -> Value {
    let mut conf = plugin.clone();
    let Some(obj) = conf.as_object_mut() else {
        return conf;
    };
    obj.insert("name".into(), json!(network.name));
    obj.insert("cniVersion".into(), json!(network.cni_version));
    if let Some(p) = prev {
        obj.insert("prevResult".into(), p.clone());
    }
    let wants_ports = plugin
        .get("capabilities")
        .and_then(|c| c.get("portMappings"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // kubelet lists every container port; only those with a host port are mappings.
    let mapped: Vec<_> = rt
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .collect();
    if wants_ports && !mapped.is_empty() {
        let ports: Vec<Value> = mapped
            .iter()
            .map(|p| {
                let mut m = json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": match p.protocol {
                        crate::pod::spec::Protocol::Tcp => "tcp",
                        crate::pod::spec::Protocol::Udp => "udp",
                        crate::pod::spec::Protocol::Sctp => "sctp",
                    },
                });
                if !p.host_ip.is_empty() {
                    m["hostIP"] = json!(p.host_ip);
                }
                m
            })
            .collect();
        obj.insert("runtimeConfig".into(), json!({ "portMappings": ports }));
    }
    conf
}

fn plugin_type(plugin: &Value) -> String {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn error_message(code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout)
        && let Some(msg) = v.get("msg").and_then(Value::as_str)
    {
        let mut m = msg.to_string();
        if let Some(d) = v
            .get("details")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
        {
            m.push_str(&format!(": {d}"));
        }
        if let Some(c) = v.get("code").and_then(Value::as_i64) {
            m.push_str(&format!(" (code {c})"));
        }
        return m;
    }
    let err = String::from_utf8_lossy(stderr);
    let out = String::from_utf8_lossy(stdout);
    let text = [err.trim(), out.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match code {
        Some(c) => format!("exit status {c}: {text}"),
        None => format!("killed by a signal: {text}"),
    }
}

fn version_at_least(v: &str, min: (u32, u32, u32)) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let got = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    got >= min
}

/// The IP addresses (without prefix length) a CNI result gives, IPv4 first.
pub fn result_ips(result: &Value) -> Vec<String> {
    let mut ips: Vec<String> = Vec::new();
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    // An address of a host-side interface (no `sandbox`) is not the pod's.
    let on_host = |ip: &Value| {
        let idx = ip.get("interface").and_then(Value::as_u64)?;
        let iface = interfaces?.get(idx as usize)?;
        Some(
            iface
                .get("sandbox")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty(),
        )
    };
    if let Some(list) = result.get("ips").and_then(Value::as_array) {
        for ip in list {
            if on_host(ip) == Some(true) {
                continue;
            }
            if let Some(a) = ip.get("address").and_then(Value::as_str) {
                ips.push(a.split('/').next().unwrap_or(a).to_string());
            }
        }
    }
    // CNI 0.2.0 results.
    for key in ["ip4", "ip6"] {
        if let Some(a) = result
            .get(key)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
        {
            ips.push(a.split('/').next().unwrap_or(a).to_string());
        }
    }
    ips.sort_by_key(|ip| ip.contains(':'));
    ips.dedup();
    ips
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Call = (String, Vec<(String, String)>, Value);

    /// Records every call; answers from a script keyed by (plugin, command).
    #[derive(Clone, Default)]
    struct FakeRunner {
        calls: Arc<Mutex<Vec<Call>>>,
        fail: Option<(&'static str, &'static str)>,
        /// Fills the filesystem of this directory when the last plugin's ADD runs.
        fill_on_add: Arc<Mutex<Option<PathBuf>>>,
    }

    impl PluginRunner for FakeRunner {
        fn run<'a>(
            &'a self,
            binary: &'a Path,
            env: Vec<(String, String)>,
            stdin: Vec<u8>,
            _t: Duration,
        ) -> RunFuture<'a> {
            Box::pin(async move {
                let name = binary.file_name().unwrap().to_string_lossy().into_owned();
                let cmd = env
                    .iter()
                    .find(|(k, _)| k == "CNI_COMMAND")
                    .unwrap()
                    .1
                    .clone();
                let conf: Value = serde_json::from_slice(&stdin).unwrap();
                self.calls
                    .lock()
                    .unwrap()
                    .push((name.clone(), env, conf.clone()));
                if self.fail == Some((name.as_str(), cmd.as_str())) {
                    return Err(RunFailure::Exit {
                        code: Some(1),
                        stdout: br#"{"code":11,"msg":"boom","details":"no more IPs"}"#.to_vec(),
                        stderr: vec![],
                    });
                }
                if cmd == "DEL" {
                    return Ok(vec![]);
                }
                let fill_dir = self.fill_on_add.lock().unwrap().clone();
                if let Some(dir) = fill_dir.filter(|_| name == "portmap") {
                    fill(&dir);
                }
                // Chain: bridge makes the IP, portmap passes prevResult through.
                let res = match conf.get("prevResult") {
                    Some(p) => p.clone(),
                    None => json!({"cniVersion": "1.0.0", "ips": [{"address": "10.88.0.9/16"}]}),
                };
                Ok(serde_json::to_vec(&res).unwrap())
            })
        }
    }

    fn setup(runner: FakeRunner) -> (tempfile::TempDir, Cni, NetworkConfigList, RuntimeConf) {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for p in ["bridge", "portmap"] {
            let f = bin.join(p);
            std::fs::write(&f, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let cni = Cni::new(
            vec![d.path().join("nope"), bin],
            d.path().join("cache"),
            Duration::from_secs(5),
            Box::new(runner),
        );
        let net = NetworkConfigList::from_conflist(
            br#"{"cniVersion":"1.0.0","name":"testnet","plugins":[{"type":"bridge","bridge":"crust9"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            Path::new("/x.conflist"),
        )
        .unwrap();
        let rt = RuntimeConf {
            container_id: "abc".into(),
            netns: "/run/crust/pods/abc/ns/net".into(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), "web".into()),
            ],
            port_mappings: vec![PortMapping {
                container_port: 80,
                host_port: 8080,
                host_ip: "127.0.0.1".into(),
                ..Default::default()
            }],
        };
        (d, cni, net, rt)
    }

    fn env<'a>(e: &'a [(String, String)], k: &str) -> &'a str {
        &e.iter().find(|(x, _)| x == k).unwrap().1
    }

    #[tokio::test]
    async fn add_chains_results_and_del_reverses_with_cache() {
        let runner = FakeRunner::default();
        let (_d, cni, net, rt) = setup(runner.clone());
        let res = cni.add(&net, &rt).await.unwrap();
        assert_eq!(result_ips(&res), vec!["10.88.0.9"]);
        {
            let calls = runner.calls.lock().unwrap();
            assert_eq!(calls.len(), 2);
            let (name, e, conf) = &calls[0];
            assert_eq!(name, "bridge");
            assert_eq!(env(e, "CNI_COMMAND"), "ADD");
            assert_eq!(env(e, "CNI_CONTAINERID"), "abc");
            assert_eq!(env(e, "CNI_NETNS"), "/run/crust/pods/abc/ns/net");
            assert_eq!(env(e, "CNI_IFNAME"), "eth0");
            assert_eq!(
                env(e, "CNI_ARGS"),
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"
            );
            assert!(env(e, "CNI_PATH").ends_with("/bin"));
            assert_eq!(conf["name"], "testnet");
            assert_eq!(conf["cniVersion"], "1.0.0");
            assert!(conf.get("prevResult").is_none());
            assert!(conf.get("runtimeConfig").is_none());
            let (name, _, conf) = &calls[1];
            assert_eq!(name, "portmap");
            assert_eq!(conf["prevResult"]["ips"][0]["address"], "10.88.0.9/16");
            // The container port without a host port is not a mapping.
            assert_eq!(
                conf["runtimeConfig"]["portMappings"],
                json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}])
            );
        }
        assert!(cni.cached("abc").unwrap().result.is_some());

        // DEL after a "restart": no network given, the cache supplies config and result.
        runner.calls.lock().unwrap().clear();
        cni.del("abc", None, &RuntimeConf::default()).await.unwrap();
        {
            let calls = runner.calls.lock().unwrap();
            let order: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
            assert_eq!(order, vec!["portmap", "bridge"]);
            assert_eq!(env(&calls[1].1, "CNI_NETNS"), "/run/crust/pods/abc/ns/net");
            assert_eq!(
                calls[1].2["prevResult"]["ips"][0]["address"],
                "10.88.0.9/16"
            );
        }
        assert!(cni.cached("abc").is_none());
        // A second DEL is a no-op.
        runner.calls.lock().unwrap().clear();
        cni.del("abc", None, &RuntimeConf::default()).await.unwrap();
        assert!(runner.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn check_runs_every_plugin_in_order_with_the_add_result() {
        let runner = FakeRunner::default();
        let (_d, cni, net, rt) = setup(runner.clone());
        assert!(!cni.check("abc").await.unwrap(), "nothing attached yet");
        cni.add(&net, &rt).await.unwrap();
        runner.calls.lock().unwrap().clear();
        assert!(cni.check("abc").await.unwrap());
        let calls = runner.calls.lock().unwrap();
        let order: Vec<String> = calls
            .iter()
            .map(|c| format!("{} {}", c.0, env(&c.1, "CNI_COMMAND")))
            .collect();
        assert_eq!(order, vec!["bridge CHECK", "portmap CHECK"]);
        assert_eq!(
            calls[0].2["prevResult"]["ips"][0]["address"],
            "10.88.0.9/16"
        );
    }

    #[tokio::test]
    async fn failed_add_dels_everything_and_forgets() {
        let runner = FakeRunner {
            fail: Some(("portmap", "ADD")),
            ..Default::default()
        };
        let (_d, cni, net, rt) = setup(runner.clone());
        let err = cni.add(&net, &rt).await.unwrap_err().to_string();
        assert!(
            err.contains("portmap ADD failed: boom: no more IPs (code 11)"),
            "{err}"
        );
        let order: Vec<String> = runner
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| format!("{} {}", c.0, env(&c.1, "CNI_COMMAND")))
            .collect();
        assert_eq!(
            order,
            vec!["bridge ADD", "portmap ADD", "portmap DEL", "bridge DEL"]
        );
        assert!(cni.cached("abc").is_none());
    }

    #[tokio::test]
    async fn del_continues_past_a_failing_plugin() {
        let runner = FakeRunner {
            fail: Some(("portmap", "DEL")),
            ..Default::default()
        };
        let (_d, cni, net, rt) = setup(runner.clone());
        cni.add(&net, &rt).await.unwrap();
        assert!(cni.del("abc", None, &rt).await.is_err());
        let calls = runner.calls.lock().unwrap();
        assert_eq!(calls.last().unwrap().0, "bridge");
        // Kept so that a later DEL can retry.
        assert!(cni.cached("abc").is_some());
    }

    /// A tmpfs on `dir` (the cache dir), unmounted on drop; None when not root.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(dir: &Path) -> Option<Tmpfs> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("not root: no tmpfs, nothing to check");
                return None;
            }
            std::fs::create_dir_all(dir).unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("size=256k,mode=0700"),
            )
            .unwrap();
            Some(Tmpfs(dir.to_path_buf()))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// Fills the filesystem of `dir` with `dir/filler` until not one byte more fits.
    fn fill(dir: &Path) {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.join("filler")).unwrap();
        while f.write(&[0u8; 4096]).is_ok_and(|n| n > 0) {}
        while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn assert_no_space(err: &CniError, cache: &Path) {
        assert!(matches!(err, CniError::NoSpace(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{}/abc.json", cache.display()))
                && msg.contains("no space left on device")
                && msg.contains("bytes free on its filesystem"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_full_disk_under_the_cache_is_no_space_and_leaves_no_entry() {
        let runner = FakeRunner::default();
        let (d, cni, net, rt) = setup(runner.clone());
        let cache = d.path().join("cache");
        let Some(_tmpfs) = Tmpfs::mount(&cache) else {
            return;
        };
        fill(&cache);
        let err = cni.add(&net, &rt).await.unwrap_err();
        assert_no_space(&err, &cache);
        assert!(runner.calls.lock().unwrap().is_empty(), "no plugin ran");
        assert_eq!(names(&cache), vec!["filler"], "no entry, no temporary file");

        std::fs::remove_file(cache.join("filler")).unwrap();
        cni.add(&net, &rt).await.expect("ADD once space is back");
        assert!(cni.cached("abc").unwrap().result.is_some());
    }

    #[tokio::test]
    async fn a_result_that_cannot_be_cached_is_no_space_and_the_add_undone() {
        let runner = FakeRunner::default();
        let (d, cni, net, rt) = setup(runner.clone());
        let cache = d.path().join("cache");
        let Some(_tmpfs) = Tmpfs::mount(&cache) else {
            return;
        };
        *runner.fill_on_add.lock().unwrap() = Some(cache.clone());
        let err = cni.add(&net, &rt).await.unwrap_err();
        assert_no_space(&err, &cache);
        let order: Vec<String> = runner
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| format!("{} {}", c.0, env(&c.1, "CNI_COMMAND")))
            .collect();
        assert_eq!(
            order,
            vec!["bridge ADD", "portmap ADD", "portmap DEL", "bridge DEL"],
            "the lease and port mappings are released"
        );
        assert_eq!(names(&cache), vec!["filler"], "no entry, no temporary file");
    }

    #[tokio::test]
    async fn missing_plugin_is_reported() {
        let (_d, cni, mut net, rt) = setup(FakeRunner::default());
        net.plugins[0]["type"] = json!("flannel");
        let err = cni.add(&net, &rt).await.unwrap_err();
        assert!(matches!(err, CniError::PluginNotFound { .. }), "{err}");
    }

    #[test]
    fn result_ips_v4_first_and_old_format() {
        let r = json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.88.0.5/16"}]});
        assert_eq!(result_ips(&r), vec!["10.88.0.5", "fd00::5"]);
        // What the bridge plugin answers: the gateway lives on the host's bridge.
        let r = json!({
            "interfaces": [
                {"name": "crust0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/crust/pods/x/ns/net"}
            ],
            "ips": [
                {"address": "10.88.0.1/16", "interface": 0},
                {"address": "10.88.0.7/16", "interface": 2, "gateway": "10.88.0.1"}
            ]
        });
        assert_eq!(result_ips(&r), vec!["10.88.0.7"]);
        let r = json!({"ip4": {"ip": "10.1.0.2/24"}});
        assert_eq!(result_ips(&r), vec!["10.1.0.2"]);
        assert!(version_at_least("1.0.0", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
    }

    /// A plugin as a real script: records its environment and stdin, answers per CNI_COMMAND.
    fn script_plugin(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn process_runner_runs_a_script_plugin_with_env_and_stdin() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        script_plugin(
            d.path(),
            "scriptnet",
            &format!(
                "cat > {log}.stdin\n\
                 env | grep ^CNI_ | sort > {log}.env\n\
                 case \"$CNI_COMMAND\" in\n\
                 ADD) echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.77.0.3/24\"}}]}}' ;;\n\
                 esac",
                log = log.display()
            ),
        );
        let cni = Cni::new(
            vec![d.path().to_path_buf()],
            d.path().join("cache"),
            Duration::from_secs(10),
            Box::new(ProcessRunner),
        );
        let net = NetworkConfigList::from_conf(
            br#"{"cniVersion":"1.0.0","name":"scripted","type":"scriptnet","mtu":1400}"#,
            Path::new("/x.conf"),
        )
        .unwrap();
        let rt = RuntimeConf {
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: vec![("K8S_POD_NAME".into(), "p".into())],
            port_mappings: vec![],
        };
        let res = cni.add(&net, &rt).await.unwrap();
        assert_eq!(result_ips(&res), vec!["10.77.0.3"]);
        let env = std::fs::read_to_string(format!("{}.env", log.display())).unwrap();
        assert!(env.contains("CNI_COMMAND=ADD\n"), "{env}");
        assert!(env.contains("CNI_CONTAINERID=c1\n"), "{env}");
        assert!(env.contains("CNI_NETNS=/run/netns/x\n"), "{env}");
        assert!(env.contains("CNI_ARGS=K8S_POD_NAME=p\n"), "{env}");
        assert!(
            env.contains(&format!("CNI_PATH={}\n", d.path().display())),
            "{env}"
        );
        let stdin: Value =
            serde_json::from_slice(&std::fs::read(format!("{}.stdin", log.display())).unwrap())
                .unwrap();
        assert_eq!(stdin["name"], "scripted");
        assert_eq!(stdin["mtu"], 1400);
        cni.del("c1", None, &RuntimeConf::default()).await.unwrap();
        let env = std::fs::read_to_string(format!("{}.env", log.display())).unwrap();
        assert!(env.contains("CNI_COMMAND=DEL\n"), "{env}");
        let stdin: Value =
            serde_json::from_slice(&std::fs::read(format!("{}.stdin", log.display())).unwrap())
                .unwrap();
        assert_eq!(stdin["prevResult"]["ips"][0]["address"], "10.77.0.3/24");
    }

    #[tokio::test]
    async fn process_runner_reports_plugin_errors_and_timeouts() {
        let d = tempfile::tempdir().unwrap();
        script_plugin(
            d.path(),
            "failnet",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"address pool exhausted","details":"10.77.0.0/30"}'; exit 1"#,
        );
        script_plugin(d.path(), "slownet", "cat >/dev/null; exec sleep 30");
        let cni = Cni::new(
            vec![d.path().to_path_buf()],
            d.path().join("cache"),
            Duration::from_millis(300),
            Box::new(ProcessRunner),
        );
        let rt = RuntimeConf {
            container_id: "c2".into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        let fail = NetworkConfigList::from_conf(
            br#"{"cniVersion":"1.0.0","name":"f","type":"failnet"}"#,
            Path::new("/f.conf"),
        )
        .unwrap();
        let err = cni.add(&fail, &rt).await.unwrap_err().to_string();
        assert!(
            err.contains("failnet ADD failed: address pool exhausted: 10.77.0.0/30 (code 11)"),
            "{err}"
        );
        let slow = NetworkConfigList::from_conf(
            br#"{"cniVersion":"1.0.0","name":"s","type":"slownet"}"#,
            Path::new("/s.conf"),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = cni.add(&slow, &rt).await.unwrap_err().to_string();
        assert!(err.contains("timed out"), "{err}");
        // ADD and the DEL after it each get the timeout; nothing waits for the 30 s sleep.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn error_message_without_json() {
        assert_eq!(
            error_message(Some(2), b"", b"oops\n"),
            "exit status 2: oops"
        );
    }
}
