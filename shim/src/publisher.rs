//! Publishes task events to the events ttrpc endpoint (crustd's, or containerd's).
//!
//! Unlike the framework's publisher this one never touches protobuf reflection (type URLs
//! are written out), which keeps descriptor tables out of the shim's memory, and it keeps
//! order: one queue, each event retried for a while (crustd may be restarting) before the
//! next one goes out. Exits that happen while crustd is away longer than that are read
//! back by crustd with `state`/`wait` once it reconnects.

use std::time::{Duration, SystemTime};

use containerd_shim::protos::{
    protobuf::{
        Message,
        well_known_types::{any::Any, timestamp::Timestamp},
    },
    shim::{event::Envelope, events::ForwardRequest},
    shim_async::{Client, EventsClient},
    ttrpc,
};
use log::warn;
use tokio::sync::mpsc;

/// How long one event is retried while the endpoint is unreachable.
const RETRY_FOR: Duration = Duration::from_secs(30);

struct Item {
    topic: &'static str,
    type_url: &'static str,
    value: Vec<u8>,
    at: SystemTime,
}

#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Item>,
}

/// `unix://` in front of a bare socket path (containerd passes bare paths).
pub fn ttrpc_address(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("unix://{addr}")
    }
}

impl Publisher {
    pub fn new(address: &str, namespace: &str) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(ttrpc_address(address), namespace.to_string(), rx));
        Publisher { tx }
    }

    /// Queues an event; `type_url` is the message's full protobuf name.
    pub fn publish(&self, topic: &'static str, type_url: &'static str, msg: &impl Message) {
        match msg.write_to_bytes() {
            Ok(value) => {
                let _ = self.tx.send(Item {
                    topic,
                    type_url,
                    value,
                    at: SystemTime::now(),
                });
            }
            Err(e) => warn!("encode {topic}: {e}"),
        }
    }
}

async fn run(address: String, namespace: String, mut rx: mpsc::UnboundedReceiver<Item>) {
    let mut client: Option<EventsClient> = None;
    while let Some(item) = rx.recv().await {
        let req = ForwardRequest {
            envelope: Some(Envelope {
                timestamp: Some(Timestamp::from(item.at)).into(),
                namespace: namespace.clone(),
                topic: item.topic.to_string(),
                event: Some(Any {
                    type_url: item.type_url.to_string(),
                    value: item.value,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut backoff = Duration::from_millis(100);
        loop {
            if client.is_none() {
                client = Client::connect(&address).await.ok().map(EventsClient::new);
            }
            if let Some(c) = &client {
                let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
                match c.forward(ctx, &req).await {
                    Ok(_) => break,
                    Err(ttrpc::Error::RpcStatus(s)) => {
                        // The endpoint answered: retrying will not change its mind.
                        warn!("event {} refused: {}", item.topic, s.message());
                        break;
                    }
                    Err(_) => client = None,
                }
            }
            if tokio::time::Instant::now() + backoff > deadline {
                warn!("event {} dropped: {address} unreachable", item.topic);
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_paths_get_a_scheme() {
        assert_eq!(ttrpc_address("/run/x.sock"), "unix:///run/x.sock");
        assert_eq!(ttrpc_address("unix:///run/x.sock"), "unix:///run/x.sock");
    }
}
