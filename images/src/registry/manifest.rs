//! Manifests and indexes (OCI and Docker schema2): fetched with the accepted media
//! types in `Accept`, at most 4 MiB, known by the sha256 of the bytes received (which
//! must equal a digest reference's digest and the `Docker-Content-Digest` header); an
//! index resolves to `linux/<this arch>`, preferring no variant or v8.

use bytes::Bytes;
use serde::Deserialize;

use super::client::{RegistryClient, read_body};
use crate::error::{Error, Result};
use crate::reference::Reference;

/// Media types of manifests and indexes we accept.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Longest manifest or index accepted (containerd's limit too).
const MAX_MANIFEST: u64 = 4 << 20;

/// A descriptor as found in manifests.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Content digest.
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// An image manifest, Docker schema2 or OCI, or an index / manifest list.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: i64,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    /// The config blob.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// Layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

impl Manifest {
    fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_deref(),
            Some(
                "application/vnd.oci.image.index.v1+json"
                    | "application/vnd.docker.distribution.manifest.list.v2+json"
            )
        ) || (self.config.is_none() && !self.manifests.is_empty())
    }
}

/// This node's platform in OCI terms.
pub fn node_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        a => a,
    };
    ("linux", arch)
}

fn pick_platform(index: &Manifest) -> Option<&Descriptor> {
    let (os, arch) = node_platform();
    let matching = index.manifests.iter().filter(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    });
    // Prefer the plain variant (or v8 on arm64) when several match.
    let mut best = None;
    for d in matching {
        let v = d.platform.as_ref().and_then(|p| p.variant.as_deref());
        if v.is_none() || v == Some("v8") {
            return Some(d);
        }
        best.get_or_insert(d);
    }
    best
}

/// What a reference resolved to.
pub struct Resolved {
    /// Digest of what the reference names (the index, for multi-arch images).
    pub repo_digest: String,
    /// The platform's image manifest.
    pub manifest: Manifest,
    /// Digest of that manifest.
    pub manifest_digest: String,
    /// Raw manifests fetched (index and manifest), to keep in the content store.
    pub blobs: Vec<(String, Bytes)>,
}

impl RegistryClient {
    async fn manifest(&self, tag_or_digest: &str) -> Result<(Bytes, String, Manifest)> {
        let what = format!("manifest {}:{tag_or_digest}", self.name);
        let url = format!("{}/manifests/{tag_or_digest}", self.base);
        let accept = MANIFEST_TYPES.join(", ");
        let (bytes, header) = self
            .policy
            .retry(&what, &self.endpoint().host, || async {
                let resp = self.get(&url, &what, Some(&accept), None).await?;
                let header = resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty());
                Ok((read_body(resp, MAX_MANIFEST, &what).await?, header))
            })
            .await?;
        // What a digest names is that content and nothing else; a tag's manifest is
        // known by the digest of what came, which the registry's header must agree with.
        let digest = crate::digest::sha256(&bytes);
        if tag_or_digest.contains(':') && tag_or_digest != digest {
            return Err(Error::BadContent(format!(
                "{what}: digest mismatch: the content's digest is {digest}"
            )));
        }
        if let Some(h) = header
            && h.starts_with("sha256:")
            && h != digest
        {
            return Err(Error::BadContent(format!(
                "{what}: Docker-Content-Digest {h} does not match the content's {digest}"
            )));
        }
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::BadContent(format!("{what}: not a manifest: {e}")))?;
        if m.schema_version != 2 {
            return Err(Error::BadContent(format!(
                "{what}: unsupported schema version {}",
                m.schema_version
            )));
        }
        Ok((bytes, digest, m))
    }

    /// Resolves `reference` to this node's image manifest.
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved> {
        let top = reference
            .digest()
            .or(reference.tag())
            .unwrap_or("latest")
            .to_string();
        let (bytes, digest, m) = self.manifest(&top).await?;
        let mut blobs = vec![(digest.clone(), bytes)];
        if !m.is_index() {
            return Ok(Resolved {
                repo_digest: digest.clone(),
                manifest: m,
                manifest_digest: digest,
                blobs,
            });
        }
        let (os, arch) = node_platform();
        let entry = pick_platform(&m).ok_or_else(|| {
            Error::NotFound(format!("{reference}: no image for platform {os}/{arch}"))
        })?;
        let (mbytes, mdigest, manifest) = self.manifest(&entry.digest).await?;
        if manifest.is_index() || manifest.config.is_none() {
            return Err(Error::BadContent(format!(
                "{reference}: platform entry {} is not an image manifest",
                entry.digest
            )));
        }
        blobs.push((mdigest.clone(), mbytes));
        Ok(Resolved {
            repo_digest: digest,
            manifest,
            manifest_digest: mdigest,
            blobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_node_platform() {
        let (_, arch) = node_platform();
        let idx: Manifest = serde_json::from_str(&format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
              {{"digest":"sha256:a","size":1,"platform":{{"os":"linux","architecture":"s390x"}}}},
              {{"digest":"sha256:b","size":1,"platform":{{"os":"linux","architecture":"{arch}"}}}}]}}"#
        ))
        .unwrap();
        assert!(idx.is_index());
        assert_eq!(pick_platform(&idx).unwrap().digest, "sha256:b");
    }
}

/// Property-based fuzzing of manifest and index decoding (docs/testing.md, "Fuzzing").
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::config;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,10}".prop_map(Value::from),
            prop_oneof![
                Just("linux"),
                Just("amd64"),
                Just("arm64"),
                Just("v8"),
                Just("application/vnd.oci.image.index.v1+json"),
                Just("sha256:0000000000000000000000000000000000000000000000000000000000000000"),
            ]
            .prop_map(Value::from),
        ];
        let key = prop_oneof![
            Just("schemaVersion"),
            Just("mediaType"),
            Just("config"),
            Just("layers"),
            Just("manifests"),
            Just("digest"),
            Just("size"),
            Just("platform"),
            Just("os"),
            Just("architecture"),
            Just("variant"),
            Just("x"),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(key.clone().prop_map(String::from), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn decode(bytes: &[u8]) {
        if let Ok(m) = serde_json::from_slice::<Manifest>(bytes) {
            let _ = m.is_index();
            let _ = pick_platform(&m);
            for d in m.layers.iter().chain(&m.manifests).chain(&m.config) {
                let _ = crate::reference::validate_digest(&d.digest);
            }
        }
    }

    proptest! {
        #![proptest_config(config(2000))]

        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            decode(&bytes);
        }

        #[test]
        fn arbitrary_json(v in json_value()) {
            decode(&serde_json::to_vec(&v).unwrap());
        }

        #[test]
        fn mutated_json(v in json_value(), at in any::<usize>(), b in any::<u8>()) {
            let mut bytes = serde_json::to_vec(&v).unwrap();
            let n = bytes.len();
            bytes[at % n] = b;
            decode(&bytes);
        }
    }
}
