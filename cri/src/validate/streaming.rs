//! Exec and Attach: the streams asked for (the CRI API's MUSTs), checked before the
//! streaming server is reached.

use k8s_cri::v1::{AttachRequest, ExecRequest};

use super::{invalid, no_control};
use crate::error::CriResult;

pub fn exec(req: &ExecRequest) -> CriResult<()> {
    container_id(&req.container_id)?;
    if req.cmd.is_empty() {
        return Err(invalid("cmd", "is empty"));
    }
    streams(req.stdin, req.stdout, req.stderr, req.tty)
}

pub fn attach(req: &AttachRequest) -> CriResult<()> {
    container_id(&req.container_id)?;
    streams(req.stdin, req.stdout, req.stderr, req.tty)
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
    }
}
