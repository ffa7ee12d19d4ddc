//! Streaming exec against a real crustd, driven by the real client: crictl v1.36
//! from `../shared/bin` (SPDY/3.1, what kubelet and crictl speak by default).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crust_e2e::cri;
use crust_e2e::workload::{create_sleeper, remove_pod, scene, start, wait_for};

fn crictl() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bin/crictl")
}

/// A crictl config file next to `socket` naming it (without one crictl warns on
/// stderr about the missing /etc/crictl.yaml).
fn crictl_config(socket: &std::path::Path) -> PathBuf {
    let path = socket.with_extension("crictl.yaml");
    let endpoint = format!("unix://{}", socket.display());
    // Written aside and renamed: concurrent callers never read half a file.
    let tmp = socket.with_extension(format!("{:?}.tmp", std::thread::current().id()));
    std::fs::write(
        &tmp,
        format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// `crictl exec` over SPDY with `args`, `input` on its stdin; its exit code and output.
fn crictl_exec(socket: &std::path::Path, args: &[&str], input: &[u8]) -> (i32, String, String) {
    crictl_exec_over("spdy", socket, args, input)
}

/// `crictl exec --transport <transport>`.
fn crictl_exec_over(
    transport: &str,
    socket: &std::path::Path,
    args: &[&str],
    input: &[u8],
) -> (i32, String, String) {
    let mut child = Command::new(crictl())
        .arg("--config")
        .arg(crictl_config(socket))
        .arg("--timeout")
        .arg("20s")
        .args(["exec", "--transport", transport])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crictl runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// crustd's metrics text, read with a plain HTTP/1.0 GET.
fn metrics_text(crustd: &crust_e2e::Crustd) -> String {
    let mut s = std::net::TcpStream::connect(crustd.metrics_addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Host pids whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok().as_ref() == Some(&want))
        .collect()
}

#[tokio::test]
async fn crictl_exec_streams_output_input_and_exit_codes() {
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene(240, "stream-exec").await;
    let id = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &id).await;
    let sock = &crustd.socket;

    for t in ["spdy", "websocket"] {
        let (code, out, err) = crictl_exec_over(t, sock, &[&id, "echo", "hello from exec"], b"");
        assert_eq!(
            (code, out.as_str()),
            (0, "hello from exec\n"),
            "{t}: stderr: {err}"
        );

        // stdout and stderr stay apart without a TTY.
        let (code, out, err) =
            crictl_exec_over(t, sock, &[&id, "sh", "-c", "echo out; echo err >&2"], b"");
        assert_eq!((code, out.as_str(), err.as_str()), (0, "out\n", "err\n"));

        // A non-zero exit reaches crictl, which reports it (client-go read the code
        // from the Status on the error stream) and fails.
        let (code, _, err) = crictl_exec_over(t, sock, &[&id, "sh", "-c", "exit 3"], b"");
        assert_ne!(code, 0);
        assert!(
            err.contains("command terminated with exit code 3"),
            "{t}: stderr: {err}"
        );

        // stdin piped in, echoed back; closing it ends `cat`.
        let input: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        let (code, out, err) = crictl_exec_over(t, sock, &["-i", &id, "cat"], &input);
        assert_eq!(code, 0, "{t}: stderr: {err}");
        assert_eq!(out.len(), input.len());
        assert!(
            out.as_bytes() == input.as_slice(),
            "cat echoed something else"
        );
    }

    // With a TTY (crictl needs a terminal: script gives it one): the process has a
    // terminal of the size crictl reports.
    for t in ["spdy", "websocket"] {
        let script = format!(
            "stty cols 91 rows 27; {} --config {} exec --transport {t} -it {id} sh -c 'tty; stty size'",
            crictl().display(),
            crictl_config(sock).display()
        );
        let out = Command::new("script")
            .args(["-qec", &script, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("script runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{t}: tty exec: {text}");
        assert!(text.contains("/dev/pts/"), "{t}: no terminal: {text:?}");
        assert!(
            text.contains("27 91"),
            "{t}: terminal size not passed: {text:?}"
        );
    }

    // What the sessions were, in crustd's metrics.
    use crust_e2e::workload::counter;
    for t in ["spdy", "websocket"] {
        let l = [("kind", "exec"), ("transport", t)];
        assert!(
            counter(&crustd, "crust_streaming_sessions_total", &l).await >= 5.0,
            "{t}"
        );
    }
    let streamed_in = counter(
        &crustd,
        "crust_streaming_bytes_total",
        &[("kind", "exec"), ("direction", "in")],
    )
    .await;
    let input_len: usize = (0..200_000u32).map(|i| format!("{i}\n").len()).sum();
    assert!(streamed_in >= 2.0 * input_len as f64, "{streamed_in}");
    wait_for(
        "no session to be left open",
        Duration::from_secs(10),
        || {
            let text = metrics_text(&crustd);
            !text
                .lines()
                .any(|l| l.starts_with("crust_streaming_sessions_active{") && !l.ends_with(" 0"))
        },
    )
    .await;

    // Bad requests are refused before any URL exists.
    let refused = rt
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec![],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let refused = rt
        .exec(cri::ExecRequest {
            container_id: "0000000000000000".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    remove_pod(&mut rt, &pod).await;
}

/// Sends an upgrade request to a streaming URL; returns the status line.
fn upgrade(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    // One write: a server that refuses what it read first (a TLS port answering plain
    // HTTP) may reset the connection before a second write, which then fails.
    if let Err(e) = s.write_all(request.as_bytes()) {
        return format!("write failed: {e}");
    }
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn tokens_are_single_use_and_clients_that_leave_end_their_process() {
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene(241, "stream-tokens").await;
    let id = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &id).await;
    let url = |rt: &mut crust_e2e::workload::Rt, cmd: &[&str]| {
        let req = cri::ExecRequest {
            container_id: id.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            stdout: true,
            ..Default::default()
        };
        let mut rt = rt.clone();
        async move { rt.exec(req).await.expect("Exec").into_inner().url }
    };
    let u = url(&mut rt, &["true"]).await;
    assert!(u.starts_with("http://127.0.0.1:"), "{u}");
    assert!(upgrade(&u).contains("101"), "first use");
    assert!(upgrade(&u).contains("404"), "second use");
    let unknown = format!("{}x", &u[..u.len() - 1]);
    assert!(upgrade(&unknown).contains("404"));

    // A client that vanishes mid-stream: its process is gone afterwards.
    let mut child = Command::new(crictl())
        .arg("--config")
        .arg(crictl_config(&crustd.socket))
        .args(["exec", &id, "sleep", "777"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the exec'd sleep to run", Duration::from_secs(10), || {
        !pids_running(&["sleep", "777"]).is_empty()
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("the exec'd sleep to end", Duration::from_secs(10), || {
        pids_running(&["sleep", "777"]).is_empty()
    })
    .await;

    // Twenty sessions at once.
    let socket = crustd.socket.clone();
    let runs: Vec<_> = (0..20)
        .map(|i| {
            let socket = socket.clone();
            let id = id.clone();
            std::thread::spawn(move || crictl_exec(&socket, &[&id, "echo", &format!("n{i}")], b""))
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let (code, out, err) = r.join().unwrap();
        assert_eq!((code, out.trim()), (0, format!("n{i}").as_str()), "{err}");
    }
    remove_pod(&mut rt, &pod).await;
}

/// An HTTP GET of `/` on 127.0.0.1:`port`; the body, or why there is none.
fn http_get(port: u16) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") => Ok(body.to_string()),
        _ => Err(format!("no HTTP answer: {out:?}")),
    }
}

/// [`http_get`] until it answers (a forward's first connection may race its
/// listener), at most 5 s.
async fn http_get_soon(port: u16) -> Result<String, String> {
    let mut body = Err(String::new());
    for _ in 0..20 {
        body = http_get(port);
        if body.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    body
}

/// `crictl port-forward` of `mappings` to pod `pod`, left running; killed on drop.
struct Forward(std::process::Child);

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn port_forward(
    transport: &str,
    socket: &std::path::Path,
    pod: &str,
    mappings: &[String],
) -> Forward {
    let child = Command::new(crictl())
        .arg("--config")
        .arg(crictl_config(socket))
        .args(["port-forward", "--transport", transport, pod])
        .args(mappings)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(socket.with_extension("port-forward.log")).unwrap())
        .spawn()
        .expect("crictl runs");
    let local: u16 = mappings[0].split(':').next().unwrap().parse().unwrap();
    wait_for("crictl to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", local)).is_ok()
    })
    .await;
    Forward(child)
}

/// A container serving `body` over HTTP on `port` with busybox's httpd.
async fn serve_http(
    rt: &mut crust_e2e::workload::Rt,
    pod: &str,
    pc: &cri::PodSandboxConfig,
    image: &str,
    port: u16,
    body: &str,
) {
    let script = format!(
        "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /www"
    );
    let id = crust_e2e::workload::create(
        rt,
        pod,
        pc,
        crust_e2e::workload::container_config("web", image, &["sh", "-c", &script]),
    )
    .await
    .expect("create web");
    start(rt, &id).await;
}

#[tokio::test]
async fn crictl_port_forward_reaches_pod_and_host_network_pods() {
    let (_registry, crustd, net, image, mut rt, pc, pod) = scene(242, "stream-pf").await;
    serve_http(&mut rt, &pod, &pc, &image, 8080, "hello-from-the-pod").await;
    // The pod's port 8080 is on its own loopback: only a connection made inside its
    // network namespace reaches it.
    for t in ["spdy", "websocket"] {
        let good = crust_e2e::free_port();
        let fwd = port_forward(t, &crustd.socket, &pod, &[format!("{good}:8080")]).await;
        let body = http_get_soon(good).await;
        assert_eq!(body.as_deref(), Ok("hello-from-the-pod\n"));
        // Concurrent connections through one session.
        let gets: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(move || http_get(good)))
            .collect();
        for g in gets {
            assert_eq!(g.join().unwrap().as_deref(), Ok("hello-from-the-pod\n"));
        }
        drop(fwd);
        // Nothing listens on port 9 in the pod: the refusal reaches the client on that
        // request's error stream (crictl then ends its session, as kubectl does), and
        // the next session works.
        let refused = crust_e2e::free_port();
        let fwd = port_forward(t, &crustd.socket, &pod, &[format!("{refused}:9")]).await;
        assert!(http_get(refused).is_err());
        let log = crustd.socket.with_extension("port-forward.log");
        wait_for(
            "crictl to report the refusal",
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("error forwarding port 9 to pod")
            },
        )
        .await;
        drop(fwd);
        let again = crust_e2e::free_port();
        let fwd = port_forward(t, &crustd.socket, &pod, &[format!("{again}:8080")]).await;
        assert_eq!(
            http_get(again).as_deref(),
            Ok("hello-from-the-pod\n"),
            "{t}"
        );
        drop(fwd);
        let _ = std::fs::remove_file(&log);
    }
    remove_pod(&mut rt, &pod).await;

    // A host-network pod: the port is the node's.
    let mut host_pc =
        crust_e2e::workload::pod_config("stream-pf-host", &net, &crustd.dir().join("logs"));
    crust_e2e::workload::namespaces(&mut host_pc).network = cri::NamespaceMode::Node as i32;
    let host_pod = crust_e2e::workload::run_pod(&mut rt, &host_pc).await;
    let host_port = crust_e2e::free_port();
    serve_http(
        &mut rt,
        &host_pod,
        &host_pc,
        &image,
        host_port,
        "hello-from-the-host",
    )
    .await;
    let local = crust_e2e::free_port();
    let _fwd = port_forward(
        "websocket",
        &crustd.socket,
        &host_pod,
        &[format!("{local}:{host_port}")],
    )
    .await;
    let body = http_get_soon(local).await;
    assert_eq!(body.as_deref(), Ok("hello-from-the-host\n"));
    remove_pod(&mut rt, &host_pod).await;
}

/// `crictl attach` with `args` over `transport`, left running with its stdout and
/// stdin piped.
fn crictl_attach(transport: &str, socket: &std::path::Path, args: &[&str]) -> std::process::Child {
    Command::new(crictl())
        .arg("--config")
        .arg(crictl_config(socket))
        .args(["attach", "--transport", transport])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crictl runs")
}

#[tokio::test]
async fn crictl_attach_follows_output_and_feeds_stdin() {
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene(246, "stream-attach").await;
    let ticker = crust_e2e::workload::create_ticker(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &ticker).await;
    for t in ["spdy", "websocket"] {
        // Output as it comes: new ticks, in order, and detaching leaves the
        // container running.
        let mut child = crictl_attach(t, &crustd.socket, &[&ticker]);
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let mut buf = [0u8; 4096];
            let until = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < until && text.matches("tick").count() < 8 {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            text
        });
        let text = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let ticks: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
            .collect();
        assert!(ticks.len() >= 5, "{t}: attached output {text:?}");
        assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{t}: {ticks:?}");
        let st = crust_e2e::workload::status(&mut rt, &ticker).await;
        assert_eq!(
            st.state,
            cri::ContainerState::ContainerRunning as i32,
            "{t}"
        );
    }

    // Stdin: a container reading one line; stdin_once closes it after the attach.
    for t in ["spdy", "websocket"] {
        let mut config = crust_e2e::workload::container_config(
            &format!("reader-{t}"),
            &image,
            &[
                "sh",
                "-c",
                "read line; echo got:$line; read more || echo stdin-closed",
            ],
        );
        config.stdin = true;
        config.stdin_once = true;
        let id = crust_e2e::workload::create(&mut rt, &pod, &pc, config)
            .await
            .expect("create reader");
        start(&mut rt, &id).await;
        let mut child = crictl_attach(t, &crustd.socket, &["-i", &id]);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"hello attach\n")
            .unwrap();
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("got:hello attach"),
            "{t}: {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st = crust_e2e::workload::wait_exited(&mut rt, &id, Duration::from_secs(10)).await;
        assert_eq!(st.exit_code, 0, "{t}");
        let log = std::fs::read_to_string(st.log_path).unwrap_or_default();
        assert!(
            log.contains("stdin-closed"),
            "{t}: stdin_once closed stdin: {log:?}"
        );
    }

    // Stdin is refused for a container made without it.
    let refused = rt
        .attach(cri::AttachRequest {
            container_id: ticker.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    remove_pod(&mut rt, &pod).await;
}

/// A self-signed certificate for 127.0.0.1 and its key, made by openssl in `dir`.
fn self_signed(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join("stream.crt"), dir.join("stream.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl: {out:?}");
    (crt, key)
}

#[tokio::test]
async fn streaming_over_tls_from_configured_files() {
    let certs = tempfile::tempdir().unwrap();
    let (crt, key) = self_signed(certs.path());
    let opts = crust_e2e::Options {
        extra_config: format!("[streaming]\ntls_cert_file = {crt:?}\ntls_key_file = {key:?}\n"),
        ..Default::default()
    };
    let (_registry, crustd, _net, image, mut rt, pc, pod) =
        crust_e2e::workload::scene_with(247, "stream-tls", opts).await;
    let id = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &id).await;

    // The URL is https, and it serves the real client over both transports
    // (crictl, like kubelet's proxy for a runtime, connects to it over TLS).
    let url = rt
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    for t in ["spdy", "websocket"] {
        let (code, out, err) = crictl_exec_over(
            t,
            &crustd.socket,
            &["-i", &id, "sh", "-c", "cat; exit 4"],
            b"tls\n",
        );
        assert_eq!(out, "tls\n", "{t}: stderr: {err}");
        assert_ne!(code, 0);
        assert!(err.contains("exit code 4"), "{t}: {err}");
    }

    // Plain HTTP to the TLS port gets no session: the handshake fails, and the
    // refusal is counted.
    let addr = url
        .strip_prefix("https://")
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let plain = upgrade(&format!("http://{addr}/exec/sometoken"));
    assert!(!plain.contains("101"), "plain HTTP was served: {plain:?}");
    wait_for(
        "the refused handshake counted",
        Duration::from_secs(10),
        || {
            crust_e2e::metric_value(
                &metrics_text(&crustd),
                "crust_streaming_refused_total{reason=\"tls\"}",
            )
            .is_some_and(|v| v >= 1.0)
        },
    )
    .await;
    remove_pod(&mut rt, &pod).await;

    // A key that does not fit its certificate stops crustd at start, naming the file.
    let other = tempfile::tempdir().unwrap();
    let (_, other_key) = self_signed(other.path());
    let err = crust_e2e::Crustd::start_with(crust_e2e::Options {
        extra_config: format!(
            "[streaming]\ntls_cert_file = {crt:?}\ntls_key_file = {other_key:?}\n"
        ),
        ..Default::default()
    })
    .await
    .err()
    .expect("crustd refuses a key that does not fit");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("stream.key") && msg.contains("does not fit"),
        "{msg}"
    );
}
