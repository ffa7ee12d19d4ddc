//! Blobs: a config fetched whole and checked against its digest and size; a layer
//! streamed chunk by chunk to its unpacker, a dropped connection resumed with `Range:
//! bytes=<sent>-` (a registry that answers 200 instead has its first `sent` bytes
//! skipped), with bounded retries and backoff; no byte for the no-progress timeout
//! fails the attempt.

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::CONTENT_RANGE;
use tokio::sync::mpsc;

use super::client::{Policy, RegistryClient, read_body};
use super::endpoint::chain;
use super::manifest::Descriptor;
use crate::error::{Error, Result};

/// Longest config blob accepted, whatever size the manifest states.
const MAX_CONFIG: u64 = 16 << 20;

/// `start` of a `Content-Range: bytes <start>-<end>/<size>` value.
fn range_start(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

impl RegistryClient {
    /// Fetches a small blob (a config, at most [`MAX_CONFIG`] bytes) whole and verifies
    /// its digest and size.
    pub async fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let what = format!("blob {}", desc.digest);
        let url = format!("{}/blobs/{}", self.base, desc.digest);
        let stated = u64::try_from(desc.size).ok().filter(|n| *n > 0);
        if let Some(n) = stated
            && n > MAX_CONFIG
        {
            return Err(Error::BadContent(format!(
                "{what}: the manifest states {n} bytes, more than the {MAX_CONFIG} a config may have"
            )));
        }
        let limit = stated.unwrap_or(MAX_CONFIG);
        let bytes = self
            .policy
            .retry(&what, &self.endpoint().host, || async {
                let resp = self.get(&url, &what, None, None).await?;
                read_body(resp, limit, &what).await
            })
            .await?;
        let digest = crate::digest::sha256(&bytes);
        if digest != desc.digest {
            return Err(Error::BadContent(format!(
                "{what}: digest mismatch: the content's digest is {digest}"
            )));
        }
        if desc.size > 0 && bytes.len() as u64 != limit {
            return Err(Error::BadContent(format!(
                "{what}: {} bytes, the manifest states {limit}",
                bytes.len()
            )));
        }
        Ok(bytes.to_vec())
    }

    /// Streams blob `desc` into `tx`, in order and each byte once, resuming after a
    /// dropped connection from where it stopped (Range request; if the registry ignores
    /// Range, the bytes already sent are skipped). The receiver verifies the digest.
    ///
    /// `Err(None)` means the receiver went away (it has its own error to report).
    pub async fn stream_blob(
        &self,
        desc: &Descriptor,
        tx: &mpsc::Sender<Result<Bytes>>,
        mut on_bytes: impl FnMut(u64),
    ) -> std::result::Result<(), Option<Error>> {
        let expected = u64::try_from(desc.size).ok().filter(|s| *s > 0);
        let mut sent: u64 = 0;
        let mut attempt = 0;
        loop {
            match self
                .stream_attempt(desc, expected, &mut sent, tx, &mut on_bytes)
                .await
            {
                Ok(()) => return Ok(()),
                Err(Some(Error::Unavailable(m))) if attempt < self.policy.retries => {
                    tracing::info!(digest = %desc.digest, sent, "blob download interrupted, resuming: {m}");
                    tokio::time::sleep(Policy::backoff(attempt)).await;
                    attempt += 1;
                }
                Err(Some(e)) => {
                    let e = match e {
                        Error::Unavailable(m) if attempt > 0 => {
                            Error::Unavailable(format!("{m} (after {} attempts)", attempt + 1))
                        }
                        e => e,
                    };
                    // Wake the receiver with the cause; it may be gone already.
                    let _ = tx.send(Err(e.clone())).await;
                    return Err(Some(e));
                }
                Err(None) => return Err(None),
            }
        }
    }

    async fn stream_attempt(
        &self,
        desc: &Descriptor,
        expected: Option<u64>,
        sent: &mut u64,
        tx: &mpsc::Sender<Result<Bytes>>,
        on_bytes: &mut impl FnMut(u64),
    ) -> std::result::Result<(), Option<Error>> {
        let what = format!("blob {}", desc.digest);
        let url = format!("{}/blobs/{}", self.base, desc.digest);
        let secs = self.policy.no_progress.as_secs_f32();
        let host = &self.endpoint().host;
        let stalled = |at: u64| {
            Error::Unavailable(format!(
                "{what}: no progress for {secs}s at byte {at} (from {host})"
            ))
        };
        let mut resp = tokio::time::timeout(
            self.policy.no_progress,
            self.get(&url, &what, None, (*sent > 0).then_some(*sent)),
        )
        .await
        .map_err(|_| Some(stalled(*sent)))?
        .map_err(Some)?;
        let mut skip = if resp.status() == StatusCode::PARTIAL_CONTENT {
            let start = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(range_start)
                .unwrap_or(*sent);
            if start > *sent {
                return Err(Some(Error::BadContent(format!(
                    "{what}: asked for bytes from {sent}, the registry sent from {start}",
                    sent = *sent
                ))));
            }
            *sent - start
        } else {
            // The registry ignored Range: skip what the receiver already has.
            *sent
        };
        loop {
            let next = tokio::time::timeout(self.policy.no_progress, resp.chunk())
                .await
                .map_err(|_| Some(stalled(*sent)))?;
            let mut chunk = match next {
                Ok(None) => break,
                Ok(Some(c)) => c,
                // Everything arrived; the receiver checks the digest.
                Err(_) if expected.is_some_and(|n| *sent >= n) => break,
                Err(e) => {
                    return Err(Some(Error::Unavailable(format!(
                        "{what}: connection lost at byte {sent}: {}",
                        chain(&e),
                        sent = *sent
                    ))));
                }
            };
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                let _ = chunk.split_to(n as usize);
                skip -= n;
                if chunk.is_empty() {
                    continue;
                }
            }
            *sent += chunk.len() as u64;
            on_bytes(chunk.len() as u64);
            if let Some(n) = expected
                && *sent > n
            {
                return Err(Some(Error::BadContent(format!(
                    "{what}: registry sent more than the {n} bytes the manifest states"
                ))));
            }
            tx.send(Ok(chunk)).await.map_err(|_| None)?;
        }
        match expected {
            Some(n) if *sent < n => Err(Some(Error::Unavailable(format!(
                "{what}: truncated: got {sent} of {n} bytes",
                sent = *sent
            )))),
            _ => Ok(()),
        }
    }
}
