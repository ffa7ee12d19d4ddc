//! The streaming scenarios: exec round trips and port-forward throughput.

use super::*;

impl Ctx {
    /// ExecSync of `true` in one running container.
    pub(super) async fn exec(&self) -> Result<(), BenchError> {
        let (pods, containers) = self.populate(1).await?;
        let cid = containers
            .first()
            .ok_or_else(|| BenchError::Invalid("no container".to_string()))?;
        for i in 0..=self.s.count {
            let (r, d) = self.cri.exec_sync(cid, &["true"]).await?;
            if r.exit_code != 0 {
                return Err(BenchError::Invalid(format!(
                    "ExecSync true exited {}: {}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stderr)
                )));
            }
            if i > 0 {
                self.rec.record("ExecSync", d);
            }
        }
        // The same through the streaming server, as `kubectl exec` runs it: the Exec
        // RPC, the WebSocket (v4.channel.k8s.io) and the process's result.
        for i in 0..=self.s.count {
            let begin = Instant::now();
            let (url, _) = self.cri.exec(cid, &["true"]).await?;
            crate::portforward::exec(&url).await?;
            if i > 0 {
                self.rec
                    .record("Exec through the streaming server", begin.elapsed());
            }
        }
        self.teardown_all(&pods).await?;
        self.keep_only(&["ExecSync", "Exec through the streaming server"]);
        Ok(())
    }

    /// PortForward to an echo server in a pod, then `bytes` echoed through
    /// the streaming server, `count` times (one connection each).
    pub(super) async fn port_forward(&self) -> Result<(), BenchError> {
        // A runtime without PortForward is unsupported before any pod starts.
        if let Err(e @ BenchError::Unsupported { .. }) =
            self.cri.port_forward("crust-bench-probe", ECHO_PORT).await
        {
            return Err(e);
        }
        self.ensure_image().await?;
        let pod = self.start_pod(0).await?;
        let config = echo_container(&self.s.run_id, self.image()?);
        let (cid, _) = self
            .cri
            .create_container(&pod.id, &config, &pod.config)
            .await?;
        add(&self.tracker.containers, &cid);
        self.cri.start_container(&cid).await?;
        // The listener comes up a moment after the start: retry a tiny echo.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (url, _) = self.cri.port_forward(&pod.id, ECHO_PORT).await?;
            match crate::portforward::echo(&url, ECHO_PORT, 16).await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        self.rec.clear();
        for _ in 0..self.s.count {
            let (url, d) = self.cri.port_forward(&pod.id, ECHO_PORT).await?;
            self.rec.record("PortForward", d);
            let took = crate::portforward::echo(&url, ECHO_PORT, self.s.bytes).await?;
            self.rec.record("echo", took);
        }
        if let Some(echo) = self.rec.operations().into_iter().find(|o| o.name == "echo") {
            let mib = self.s.bytes as f64 / (1024.0 * 1024.0);
            self.rec.figure("echoed", "MiB", mib);
            self.rec.figure(
                "throughput",
                "MiB/s",
                mib / (echo.summary.median_ms / 1e3).max(1e-9),
            );
        }
        self.teardown_all(std::slice::from_ref(&pod.id)).await?;
        self.keep_only(&["PortForward", "echo"]);
        Ok(())
    }
}
