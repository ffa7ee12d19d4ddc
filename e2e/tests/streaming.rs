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

/// `crictl exec` with `args`, `input` on its stdin; its exit code and output.
fn crictl_exec(socket: &std::path::Path, args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(crictl())
        .arg("--config")
        .arg(crictl_config(socket))
        .arg("--timeout")
        .arg("20s")
        .arg("exec")
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

    let (code, out, err) = crictl_exec(sock, &[&id, "echo", "hello from exec"], b"");
    assert_eq!(
        (code, out.as_str()),
        (0, "hello from exec\n"),
        "stderr: {err}"
    );

    // stdout and stderr stay apart without a TTY.
    let (code, out, err) = crictl_exec(sock, &[&id, "sh", "-c", "echo out; echo err >&2"], b"");
    assert_eq!((code, out.as_str(), err.as_str()), (0, "out\n", "err\n"));

    // A non-zero exit reaches crictl, which reports it (client-go read the code
    // from the Status on the error stream) and fails.
    let (code, _, err) = crictl_exec(sock, &[&id, "sh", "-c", "exit 3"], b"");
    assert_ne!(code, 0);
    assert!(
        err.contains("command terminated with exit code 3"),
        "stderr: {err}"
    );

    // stdin piped in, echoed back; closing it ends `cat`.
    let input: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let (code, out, err) = crictl_exec(sock, &["-i", &id, "cat"], &input);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out.len(), input.len());
    assert!(
        out.as_bytes() == input.as_slice(),
        "cat echoed something else"
    );

    // With a TTY (crictl needs a terminal: script gives it one): the process has a
    // terminal of the size crictl reports.
    let script = format!(
        "stty cols 91 rows 27; {} --config {} exec -it {id} sh -c 'tty; stty size'",
        crictl().display(),
        crictl_config(sock).display()
    );
    let out = Command::new("script")
        .args(["-qec", &script, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tty exec: {text}");
    assert!(text.contains("/dev/pts/"), "no terminal: {text:?}");
    assert!(text.contains("27 91"), "terminal size not passed: {text:?}");

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
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
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
