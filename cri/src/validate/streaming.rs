//! ExecSync, Exec, Attach and PortForward: the command, streams and ports asked for
//! (the CRI API's MUSTs), checked before a process or the streaming server is reached.

use k8s_cri::v1::{AttachRequest, ExecRequest, ExecSyncRequest, PortForwardRequest};

use super::{invalid, no_control};
use crate::error::CriResult;

/// An empty command is refused where it is run (crust-sandbox); a NUL cannot reach
/// execve, and a negative timeout means nothing (0 is "no timeout").
pub fn exec_sync(req: &ExecSyncRequest) -> CriResult<()> {
    no_control("container_id", &req.container_id)?;
    cmd(&req.cmd)?;
    if req.timeout < 0 {
        return Err(invalid(
            "timeout",
            format!("{} s is negative (0 is no timeout)", req.timeout),
        ));
    }
    Ok(())
}

fn cmd(cmd: &[String]) -> CriResult<()> {
    match cmd.iter().find(|a| a.contains('\0')) {
        Some(a) => Err(invalid(
            "cmd",
            format!("{} contains a NUL byte", super::shown(a)),
        )),
        None => Ok(()),
    }
}

pub fn exec(req: &ExecRequest) -> CriResult<()> {
    container_id(&req.container_id)?;
    if req.cmd.is_empty() {
        return Err(invalid("cmd", "is empty"));
    }
    cmd(&req.cmd)?;
    streams(req.stdin, req.stdout, req.stderr, req.tty)
}

pub fn attach(req: &AttachRequest) -> CriResult<()> {
    container_id(&req.container_id)?;
    streams(req.stdin, req.stdout, req.stderr, req.tty)
}

pub fn port_forward(req: &PortForwardRequest) -> CriResult<()> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid("pod_sandbox_id", "is empty"));
    }
    no_control("pod_sandbox_id", &req.pod_sandbox_id)?;
    match req.port.iter().find(|p| !(1..=65535).contains(*p)) {
        Some(p) => Err(invalid("port", format!("{p} is not a port (1 to 65535)"))),
        None => Ok(()),
    }
}

fn container_id(id: &str) -> CriResult<()> {
    if id.is_empty() {
        return Err(invalid("container_id", "is empty"));
    }
    no_control("container_id", id)
}

/// "One of stdin, stdout, and stderr MUST be true"; "if tty is true, stderr MUST be false".
fn streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> CriResult<()> {
    if !(stdin || stdout || stderr) {
        return Err(invalid(
            "stdin, stdout, stderr",
            "none is asked for: one of them must be",
        ));
    }
    if tty && stderr {
        return Err(invalid(
            "stderr",
            "a TTY has one output stream: stderr must be false with tty",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_sync_command_and_timeout() {
        let ok = ExecSyncRequest {
            container_id: "c".into(),
            cmd: vec!["sh".into(), "-c".into(), "echo a\necho b".into()],
            timeout: 0,
        };
        assert!(exec_sync(&ok).is_ok());
        assert!(
            exec_sync(&ExecSyncRequest {
                timeout: -1,
                ..ok.clone()
            })
            .is_err()
        );
        let nul = ExecSyncRequest {
            cmd: vec!["a\0b".into()],
            ..ok
        };
        assert!(exec_sync(&nul).is_err());
    }

    #[test]
    fn streams_as_the_api_says() {
        let ok = ExecRequest {
            container_id: "c".into(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        };
        assert!(exec(&ok).is_ok());
        assert!(
            exec(&ExecRequest {
                stdout: false,
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            exec(&ExecRequest {
                cmd: vec![],
                ..ok.clone()
            })
            .is_err()
        );
        let tty = ExecRequest {
            tty: true,
            stderr: true,
            ..ok.clone()
        };
        assert!(exec(&tty).is_err());
        let attach_req = AttachRequest {
            container_id: "c".into(),
            stdin: true,
            ..Default::default()
        };
        assert!(attach(&attach_req).is_ok());
        assert!(
            attach(&AttachRequest {
                container_id: String::new(),
                ..attach_req
            })
            .is_err()
        );
        let pf = |port: Vec<i32>| PortForwardRequest {
            pod_sandbox_id: "p".into(),
            port,
        };
        assert!(port_forward(&pf(vec![80, 65535])).is_ok());
        assert!(port_forward(&pf(vec![80, 0])).is_err());
        assert!(port_forward(&pf(vec![70000])).is_err());
    }
}
