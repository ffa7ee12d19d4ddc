//! Pulls against a small in-process registry (hyper on 127.0.0.1:0) that can misbehave:
//! wrong digests, truncated and stalled blobs, dropped connections, auth.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crust_images::digest::sha256;
use crust_images::{Auth, Config, Error, ImageStore, RegistryConfig};
use futures::StreamExt as _;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Blob {
    Good,
    /// Same length, different bytes.
    WrongDigest,
    /// Sends half the bytes, then drops the connection, every time.
    Truncated,
    /// Sends half the bytes, then nothing, forever.
    Stalled,
    /// Drops the connection half-way the first time only; honours Range afterwards.
    Flaky,
    /// Answers 500, every time.
    ServerError,
    /// Sends its bytes only once every other blob of the registry has been asked for,
    /// and `then_ms` more (fails the body after 5 s otherwise).
    AfterOthers {
        then_ms: u64,
    },
    /// Sends half its bytes, then the rest once `State::released` is set (or after 5 s).
    Held,
    /// Answers 429 with this `Retry-After` to the first `times` GETs, then is good.
    RateLimited {
        times: usize,
        retry_after: &'static str,
    },
}

#[derive(Default)]
struct State {
    manifests: HashMap<String, (String, Bytes)>,
    blobs: HashMap<String, (Bytes, Blob)>,
    blob_gets: HashMap<String, usize>,
    ranges: Vec<String>,
    basic_auth: Option<String>,
    /// Bearer-token auth: (base64 user:password the token service wants, the token).
    bearer: Option<(String, String)>,
    /// With `bearer`: the token service also takes the OAuth2 refresh-token grant (POST).
    oauth: Option<OAuth>,
    /// Forms POSTed to the token service.
    token_posts: Vec<HashMap<String, String>>,
    /// GET token requests.
    token_gets: usize,
    /// The scopes of every token request (GET `scope` params, POST `scope` field).
    token_scopes: Vec<Vec<String>>,
    /// With `bearer`: the token service also gives tokens to anonymous GETs (as Docker
    /// Hub's does for public images).
    anonymous_tokens: bool,
    /// The `expires_in` the token service answers (300 when unset).
    token_expires_in: Option<u64>,
    /// Bytes of padding in the token service's GET answers.
    token_padding: usize,
    /// GET token requests are answered 307 to this URL prefix, the path and query.
    token_redirect: Option<String>,
    /// Another scope the registry's Bearer challenge names after the repository's.
    challenge_extra_scope: Option<String>,
    /// A challenge put before the Bearer one in the same `WWW-Authenticate` value.
    challenge_before: Option<String>,
    /// Every request: method, path and the status answered.
    requests: Vec<(String, String, u16)>,
    /// Lets `Blob::Held` bodies finish.
    released: bool,
    /// Blob GETs (once authorized) are answered 307 to this URL prefix and the path.
    redirect_blobs: Option<String>,
    /// Every request: path and its `Authorization` header, if any.
    authorizations: Vec<(String, Option<String>)>,
    addr: String,
}

struct OAuth {
    /// The refresh (identity) token it accepts.
    refresh_token: String,
    /// What it answers a POST with instead, e.g. 404 or 405: no OAuth2 here.
    post_status: Option<StatusCode>,
    /// Each grant answers a new refresh token, and only the newest is taken.
    rotate: bool,
}

/// Decodes `application/x-www-form-urlencoded`.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let dec = |s: &str| {
        let s = s.replace('+', " ");
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                if let Ok(v) = u8::from_str_radix(hex, 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// The values of `key` in a query string, in order.
fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let one = parse_form(format!("k={v}").as_bytes());
            (k == key).then(|| one.get("k").cloned().unwrap_or_default())
        })
        .collect()
}

/// Scopes a token request of a pull may name: at least one, each once, each
/// `repository:crust/<name>:pull`.
fn good_scopes(scopes: &[String]) -> bool {
    let mut seen = std::collections::HashSet::new();
    !scopes.is_empty()
        && scopes.iter().all(|s| {
            seen.insert(s.as_str())
                && s.strip_prefix("repository:crust/")
                    .and_then(|r| r.strip_suffix(":pull"))
                    .is_some_and(|n| !n.is_empty() && !n.contains(' '))
        })
}

#[derive(Clone, Default)]
struct Registry(Arc<Mutex<State>>);

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(
            Full::new(body.into())
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .expect("response")
}

impl Registry {
    /// Changes how the blob `digest` is served.
    fn set_blob(&self, digest: &str, how: Blob) {
        self.0.lock().unwrap().blobs.get_mut(digest).unwrap().1 = how;
    }

    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        self.0.lock().unwrap().addr = addr.to_string();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let me = me.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                Ok::<_, Infallible>(me.handle(Request::from_parts(parts, body)))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr.to_string()
    }

    fn handle(&self, req: Request<Bytes>) -> Response<Body> {
        let (method, path) = (req.method().to_string(), req.uri().path().to_string());
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.0
            .lock()
            .unwrap()
            .authorizations
            .push((path.clone(), authorization));
        let resp = self.answer(req);
        self.0
            .lock()
            .unwrap()
            .requests
            .push((method, path, resp.status().as_u16()));
        resp
    }

    /// Requests made with `method` to paths starting with `prefix`, and how many of
    /// them were answered 401.
    fn count(&self, method: &str, prefix: &str) -> (usize, usize) {
        let st = self.0.lock().unwrap();
        let hits = st
            .requests
            .iter()
            .filter(|(m, p, _)| m == method && p.starts_with(prefix));
        let all: Vec<_> = hits.collect();
        let unauthorized = all.iter().filter(|(_, _, s)| *s == 401).count();
        (all.len(), unauthorized)
    }

    fn answer(&self, req: Request<Bytes>) -> Response<Body> {
        let mut st = self.0.lock().unwrap();
        // Blob storage style: `/cdn/<path>` sends on to `<path>` on the same host, with a
        // relative Location and a signature in the query.
        if let Some(rest) = req.uri().path().strip_prefix("/cdn") {
            let mut r = full(StatusCode::FOUND, "");
            r.headers_mut().insert(
                "location",
                format!("{rest}?X-Signature=s3cr3t").parse().unwrap(),
            );
            return r;
        }
        if let Some(expected) = &st.basic_auth {
            let got = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if got != format!("Basic {expected}") {
                let mut r = full(
                    StatusCode::UNAUTHORIZED,
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}"#,
                );
                r.headers_mut()
                    .insert("www-authenticate", "Basic realm=\"test\"".parse().unwrap());
                return r;
            }
        }
        let path = req.uri().path().to_string();
        let auth_header = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if let Some((basic, token)) = st.bearer.clone() {
            if path == "/token" && req.method() == hyper::Method::POST {
                let Some(oauth) = &st.oauth else {
                    return full(StatusCode::METHOD_NOT_ALLOWED, "");
                };
                if let Some(status) = oauth.post_status {
                    return full(status, "");
                }
                let ct = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if ct != "application/x-www-form-urlencoded" {
                    return full(StatusCode::BAD_REQUEST, "not a form");
                }
                let f = parse_form(req.body());
                let want = oauth.refresh_token.clone();
                let rotate = oauth.rotate;
                st.token_posts.push(f.clone());
                let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
                let scopes: Vec<String> = field("scope").split(' ').map(str::to_string).collect();
                let scopes_ok = good_scopes(&scopes);
                st.token_scopes.push(scopes);
                if field("grant_type") != "refresh_token"
                    || field("service") != "test"
                    || !scopes_ok
                    || field("client_id").is_empty()
                {
                    return full(StatusCode::BAD_REQUEST, r#"{"error":"invalid_request"}"#);
                }
                if field("refresh_token") != want {
                    return full(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_grant"}"#);
                }
                let expires = st.token_expires_in.unwrap_or(300);
                let refresh = if rotate {
                    let next = format!("{want}+");
                    if let Some(o) = st.oauth.as_mut() {
                        o.refresh_token = next.clone();
                    }
                    format!(r#","refresh_token":"{next}""#)
                } else {
                    String::new()
                };
                return full(
                    StatusCode::OK,
                    format!(
                        r#"{{"access_token":"{token}"{refresh},"expires_in":{expires},"scope":"{}"}}"#,
                        field("scope")
                    ),
                );
            }
            if path == "/token" {
                st.token_gets += 1;
                if let Some(to) = &st.token_redirect {
                    let query = req.uri().query().unwrap_or("");
                    let mut r = full(StatusCode::TEMPORARY_REDIRECT, "");
                    r.headers_mut()
                        .insert("location", format!("{to}{path}?{query}").parse().unwrap());
                    return r;
                }
                let anonymous = st.anonymous_tokens && auth_header.is_empty();
                if auth_header != format!("Basic {basic}") && !anonymous {
                    return full(StatusCode::UNAUTHORIZED, "bad credentials");
                }
                let query = req.uri().query().unwrap_or("");
                let scopes = query_values(query, "scope");
                let scopes_ok = good_scopes(&scopes);
                st.token_scopes.push(scopes);
                if !scopes_ok {
                    return full(StatusCode::BAD_REQUEST, "bad scopes");
                }
                let expires = st.token_expires_in.unwrap_or(300);
                let pad = "x".repeat(st.token_padding);
                return full(
                    StatusCode::OK,
                    format!(r#"{{"token":"{token}","expires_in":{expires},"pad":"{pad}"}}"#),
                );
            }
            if auth_header != format!("Bearer {token}") {
                let mut r = full(
                    StatusCode::UNAUTHORIZED,
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"token"}]}"#,
                );
                // As docker-registry does: the scope of the repository asked for.
                let repo = path
                    .strip_prefix("/v2/")
                    .and_then(|p| p.split_once("/manifests/").or(p.split_once("/blobs/")))
                    .map(|(r, _)| r);
                let extra = st
                    .challenge_extra_scope
                    .as_ref()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default();
                let scope = repo
                    .map(|r| format!(",scope=\"repository:{r}:pull{extra}\""))
                    .unwrap_or_default();
                let before = st
                    .challenge_before
                    .as_ref()
                    .map(|c| format!("{c}, "))
                    .unwrap_or_default();
                let challenge = format!(
                    "{before}Bearer realm = \"http://{}/token\", service=\"test\"{scope}",
                    st.addr
                );
                r.headers_mut()
                    .insert("www-authenticate", challenge.parse().unwrap());
                return r;
            }
        }
        if path == "/v2/" {
            return full(StatusCode::OK, "{}");
        }
        if let Some((_, reference)) = path.split_once("/manifests/") {
            let Some((ct, body)) = st.manifests.get(reference).cloned() else {
                return full(
                    StatusCode::NOT_FOUND,
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}"#,
                );
            };
            let mut r = full(StatusCode::OK, body.clone());
            r.headers_mut().insert("content-type", ct.parse().unwrap());
            r.headers_mut()
                .insert("docker-content-digest", sha256(&body).parse().unwrap());
            return r;
        }
        let Some((_, digest)) = path.split_once("/blobs/") else {
            return full(StatusCode::NOT_FOUND, "");
        };
        if let Some(to) = &st.redirect_blobs {
            let mut r = full(StatusCode::TEMPORARY_REDIRECT, "");
            r.headers_mut()
                .insert("location", format!("{to}{path}").parse().unwrap());
            return r;
        }
        let Some((data, kind)) = st.blobs.get(digest).cloned() else {
            return full(
                StatusCode::NOT_FOUND,
                r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}"#,
            );
        };
        let n = {
            let c = st.blob_gets.entry(digest.to_string()).or_default();
            *c += 1;
            *c
        };
        let range = req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(r) = &range {
            st.ranges.push(r.clone());
        }
        drop(st);
        let len = data.len();
        let half = data.slice(..len / 2);
        // After the chunks: end, stall forever, or cut the connection (after a pause,
        // so that hyper flushes what was sent before).
        #[derive(Clone, Copy)]
        enum Then {
            End,
            Stall,
            Cut,
        }
        let stream_of = |chunks: Vec<Bytes>, then: Then| -> Body {
            let s = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
            let s: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> = match then {
                Then::End => s.boxed(),
                Then::Stall => s.chain(futures::stream::pending()).boxed(),
                Then::Cut => s
                    .chain(futures::stream::once(async {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Err(std::io::Error::other("connection cut"))
                    }))
                    .boxed(),
            };
            BodyExt::boxed_unsync(StreamBody::new(s.map(|r| r.map(Frame::data))))
        };
        let with_len = |body: Body, n: usize, status: StatusCode| {
            Response::builder()
                .status(status)
                .header("content-length", n.to_string())
                .body(body)
                .expect("response")
        };
        match kind {
            Blob::RateLimited { times, retry_after } if n <= times => {
                let mut r = full(
                    StatusCode::TOO_MANY_REQUESTS,
                    r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
                );
                r.headers_mut()
                    .insert("retry-after", retry_after.parse().unwrap());
                r
            }
            Blob::RateLimited { .. } | Blob::Good => {
                with_len(stream_of(vec![data], Then::End), len, StatusCode::OK)
            }
            Blob::ServerError => full(StatusCode::INTERNAL_SERVER_ERROR, "down"),
            Blob::Held => {
                let reg = self.0.clone();
                let rest = data.slice(len / 2..);
                let wait = futures::stream::once(async move {
                    for _ in 0..500 {
                        if reg.lock().unwrap().released {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Ok::<_, std::io::Error>(rest)
                });
                let s = futures::stream::iter([Ok::<_, std::io::Error>(half.clone())]).chain(wait);
                with_len(
                    BodyExt::boxed_unsync(StreamBody::new(s.map(|r| r.map(Frame::data)))),
                    len,
                    StatusCode::OK,
                )
            }
            Blob::AfterOthers { then_ms } => {
                let reg = self.0.clone();
                let me = digest.to_string();
                let body = futures::stream::once(async move {
                    for _ in 0..500 {
                        let all_asked = {
                            let st = reg.lock().unwrap();
                            st.blobs
                                .keys()
                                .filter(|d| **d != me)
                                .all(|d| st.blob_gets.get(d).is_some_and(|n| *n > 0))
                        };
                        if all_asked {
                            tokio::time::sleep(Duration::from_millis(then_ms)).await;
                            return Ok(data);
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(std::io::Error::other(
                        "the other blobs were never asked for",
                    ))
                });
                with_len(
                    BodyExt::boxed_unsync(StreamBody::new(body.map(|r| r.map(Frame::data)))),
                    len,
                    StatusCode::OK,
                )
            }
            Blob::WrongDigest => {
                let mut bad = data.to_vec();
                bad[len / 2] ^= 0xff;
                with_len(
                    stream_of(vec![Bytes::from(bad)], Then::End),
                    len,
                    StatusCode::OK,
                )
            }
            Blob::Truncated => with_len(
                stream_of(vec![half.clone()], Then::Cut),
                len,
                StatusCode::OK,
            ),
            Blob::Stalled => with_len(
                stream_of(vec![half.clone()], Then::Stall),
                len,
                StatusCode::OK,
            ),
            Blob::Flaky if n == 1 => with_len(
                stream_of(vec![half.clone()], Then::Cut),
                len,
                StatusCode::OK,
            ),
            Blob::Flaky => {
                let start = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(0)
                    .min(len);
                let rest = data.slice(start..);
                let mut r = with_len(
                    stream_of(vec![rest.clone()], Then::End),
                    rest.len(),
                    StatusCode::PARTIAL_CONTENT,
                );
                r.headers_mut().insert(
                    "content-range",
                    format!("bytes {start}-{}/{len}", len - 1).parse().unwrap(),
                );
                r
            }
        }
    }
}

/// A layer: (compressed bytes, diff id).
fn layer(files: &[(&str, &[u8])], zstd: bool) -> (Bytes, String) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let diff = sha256(&tar);
    let compressed = if zstd {
        zstd::encode_all(&tar[..], 3).unwrap()
    } else {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    (Bytes::from(compressed), diff)
}

struct TestImage {
    manifest_digest: String,
    config_digest: String,
    layer_digests: Vec<String>,
}

/// Registers an image under `tag` made of `layers` (each with its blob behaviour).
fn add_image(
    reg: &Registry,
    tag: &str,
    layers: &[((Bytes, String), Blob)],
    user: &str,
) -> TestImage {
    let mut st = reg.0.lock().unwrap();
    let diff_ids: Vec<&String> = layers.iter().map(|((_, d), _)| d).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"User": user, "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_digest = sha256(config.as_bytes());
    st.blobs.insert(
        config_digest.clone(),
        (Bytes::from(config.clone()), Blob::Good),
    );
    let mut descs = Vec::new();
    let mut layer_digests = Vec::new();
    for ((data, _), kind) in layers {
        let d = sha256(data);
        st.blobs.insert(d.clone(), (data.clone(), *kind));
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d, "size": data.len(),
        }));
        layer_digests.push(d);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": descs,
    })
    .to_string();
    let manifest_digest = sha256(manifest.as_bytes());
    let ct = "application/vnd.oci.image.manifest.v1+json".to_string();
    let body = Bytes::from(manifest);
    st.manifests
        .insert(tag.to_string(), (ct.clone(), body.clone()));
    st.manifests.insert(manifest_digest.clone(), (ct, body));
    TestImage {
        manifest_digest,
        config_digest,
        layer_digests,
    }
}

struct Env {
    dir: tempfile::TempDir,
    db: Arc<crust_state::StateDb>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(crust_state::StateDb::open(&dir.path().join("state.redb")).unwrap());
    Env { dir, db }
}

impl Env {
    async fn store(&self, config: Config) -> ImageStore {
        ImageStore::open(self.dir.path().join("images"), config, self.db.clone())
            .await
            .unwrap()
    }
    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("images")
    }
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Nothing of a failed pull may remain: no blob of the bad layer, no ingest file, no
/// snapshot directory.
fn assert_nothing_left(e: &Env, store: &ImageStore, bad_blob: &str) {
    assert!(!store.content().contains(bad_blob), "bad blob kept");
    assert_eq!(count(&e.root().join("content/ingest")), 0, "ingest left");
    assert_eq!(count(&e.root().join("snapshots")), 0, "snapshot left");
    assert!(store.list(None).unwrap().is_empty());
}

/// Serves `reg`, and pulls its `crust/<repo>:v1` into a fresh store (with [`quick`]
/// retries), which must fail.
async fn failing_pull(reg: &Registry, repo: &str) -> (Env, ImageStore, Error) {
    let host = reg.serve().await;
    let e = env();
    let store = e.store(quick()).await;
    let err = store
        .pull(&format!("{host}/crust/{repo}:v1"), None)
        .await
        .unwrap_err();
    (e, store, err)
}

/// `digest` was asked twice, the second time from an offset (a Range resume).
fn assert_resumed_once(st: &State, digest: &str) {
    assert_eq!(st.blob_gets[digest], 2);
    assert!(
        st.ranges.iter().any(|r| r != "bytes=0-"),
        "resumed from an offset: {:?}",
        st.ranges
    );
}

/// Serves `upstream` and `mirror`, and opens a store (with [`quick`] retries) that
/// pulls `upstream`'s images through the mirror first; returns the upstream's host.
async fn behind_mirror(upstream: &Registry, mirror: &Registry) -> (Env, ImageStore, String) {
    let up_host = upstream.serve().await;
    let mi_host = mirror.serve().await;
    let e = env();
    let mut c = quick();
    c.registries.insert(
        up_host.clone(),
        RegistryConfig {
            mirrors: vec![format!("http://{mi_host}")],
            ..Default::default()
        },
    );
    let store = e.store(c).await;
    (e, store, up_host)
}

fn quick() -> Config {
    Config {
        retries: 1,
        no_progress_timeout_secs: 1,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_status_list_remove_gc() {
    let reg = Registry::default();
    let base = layer(&[("etc/os-release", b"crust")], false);
    let app = layer(&[("app/run", b"#!/bin/sh\n")], true);
    let img = add_image(
        &reg,
        "v1",
        &[(base.clone(), Blob::Good), (app, Blob::Good)],
        "1000:1000",
    );
    let other = add_image(&reg, "other", &[(base, Blob::Good)], "nobody");
    let host = reg.serve().await;
    let e = env();
    let store = e.store(Config::default()).await;
    let name = format!("{host}/crust/app");

    let id = store.pull(&format!("{name}:v1"), None).await.unwrap();
    assert_eq!(id, img.config_digest);
    let id2 = store.pull(&format!("{name}:other"), None).await.unwrap();
    assert_eq!(id2, other.config_digest);

    let im = store
        .status(&format!("{name}:v1"))
        .unwrap()
        .expect("by tag");
    assert_eq!(im.repo_tags, vec![format!("{name}:v1")]);
    assert_eq!(
        im.repo_digests,
        vec![format!("{name}@{}", img.manifest_digest)]
    );
    assert_eq!(im.uid, Some(1000));
    assert!(!im.pinned);
    assert!(im.size > 0);
    let o = store.status(&id2).unwrap().expect("by id");
    assert_eq!((o.uid, o.username.as_str()), (None, "nobody"));
    assert_eq!(
        store
            .status(&format!("{name}@{}", img.manifest_digest))
            .unwrap()
            .map(|i| i.id),
        Some(id.clone()),
        "by digest"
    );
    assert!(store.status(&id[7..19]).unwrap().is_some(), "by short id");
    assert!(store.status(&format!("{name}:nope")).unwrap().is_none());
    assert!(matches!(
        store.status("Bad Ref"),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(store.list(None).unwrap().len(), 2);
    assert_eq!(store.list(Some(&format!("{name}:other"))).unwrap().len(), 1);

    // Shared base layer: one snapshot, one blob; both layers of v1 visible in the chain.
    assert_eq!(count(&e.root().join("snapshots")), 2);
    let chain = im.chain_id.clone().unwrap();
    let lowers = store.snapshotter().lowers(&chain).unwrap();
    assert_eq!(lowers.len(), 2);
    assert_eq!(
        std::fs::read(lowers[0].join("app/run")).unwrap(),
        b"#!/bin/sh\n"
    );
    assert_eq!(
        std::fs::read(lowers[1].join("etc/os-release")).unwrap(),
        b"crust"
    );
    let cfg: serde_json::Value = serde_json::from_slice(&store.config_json(&id).unwrap()).unwrap();
    assert_eq!(cfg["config"]["User"], "1000:1000");
    let gets = reg.0.lock().unwrap().blob_gets.clone();
    assert_eq!(gets[&img.layer_digests[0]], 1, "base layer fetched once");

    let fs = store.fs_info().await.unwrap();
    assert!(fs.snapshots.bytes > 0 && fs.snapshots.inodes > 0);
    assert!(fs.content.bytes > 0 && fs.content.inodes > 0);
    assert!(fs.content.path.starts_with(fs.content.mountpoint.as_path()));

    // Records survive a restart.
    drop(store);
    let store = e.store(Config::default()).await;
    assert_eq!(store.list(None).unwrap().len(), 2);

    // Remove by tag: v1's own layer goes, the shared base stays for "other".
    store.remove(&format!("{name}:v1")).await.unwrap();
    store.remove(&format!("{name}:v1")).await.unwrap();
    assert!(store.status(&id).unwrap().is_none());
    assert_eq!(count(&e.root().join("snapshots")), 1);
    assert!(!store.content().contains(&img.layer_digests[1]));
    assert!(store.content().contains(&img.layer_digests[0]));
    store.remove(&id2).await.unwrap();
    assert_eq!(count(&e.root().join("snapshots")), 0);
    assert!(store.content().list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_do_the_work_once() {
    let reg = Registry::default();
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let l = layer(&[("big", &big)], false);
    let img = add_image(&reg, "v1", &[(l, Blob::Good)], "");
    let host = reg.serve().await;
    let e = env();
    let store = e.store(Config::default()).await;
    let r = format!("{host}/crust/big:v1");
    let (a, b) = tokio::join!(store.pull(&r, None), store.pull(&r, None));
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(reg.0.lock().unwrap().blob_gets[&img.layer_digests[0]], 1);
    assert_eq!(count(&e.root().join("snapshots")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_download_while_the_config_comes() {
    let reg = Registry::default();
    let a = layer(&[("a", &[1u8; 300_000][..])], false);
    let b = layer(&[("b", b"bee")], true);
    let img = add_image(&reg, "v1", &[(a, Blob::Good), (b, Blob::Good)], "");
    // The config is answered only once both layers have been asked for: a pull that
    // waited for the config before fetching layers would never get it.
    reg.set_blob(&img.config_digest, Blob::AfterOthers { then_ms: 0 });
    let host = reg.serve().await;
    let e = env();
    let store = e.store(Config::default()).await;
    let id = store
        .pull(&format!("{host}/crust/overlap:v1"), None)
        .await
        .unwrap();
    assert_eq!(id, img.config_digest);
    let gets = reg.0.lock().unwrap().blob_gets.clone();
    for d in &img.layer_digests {
        assert_eq!(gets[d], 1, "{d} fetched once");
    }
    assert_eq!(count(&e.root().join("snapshots")), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_fails_while_layers_download_leaves_nothing_after_gc() {
    let reg = Registry::default();
    let a = layer(&[("a", &[1u8; 300_000][..])], false);
    // The layer is half-way when the config fails (after its retry).
    let img = add_image(&reg, "v1", &[(a, Blob::Held)], "");
    reg.set_blob(&img.config_digest, Blob::ServerError);
    let (e, store, err) = failing_pull(&reg, "noconfig").await;
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert!(err.to_string().contains(&img.config_digest), "{err}");
    assert_eq!(reg.0.lock().unwrap().blob_gets[&img.layer_digests[0]], 1);
    reg.0.lock().unwrap().released = true;
    // The abandoned download cleans up after itself.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (count(&e.root().join("content/ingest")) > 0 || count(&e.root().join("snapshots")) > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&e.root().join("content/ingest")), 0, "ingest left");
    assert_eq!(count(&e.root().join("snapshots")), 0, "staging left");
    assert!(store.list(None).unwrap().is_empty());
    store.gc().await.unwrap();
    assert!(store.content().list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_images_sharing_a_layer_pulled_at_once_fetch_it_once() {
    let reg = Registry::default();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let base = layer(&[("base", &big)], false);
    let one = add_image(
        &reg,
        "one",
        &[
            (base.clone(), Blob::Good),
            (layer(&[("one", b"1")], false), Blob::Good),
        ],
        "",
    );
    let two = add_image(
        &reg,
        "two",
        &[
            (base, Blob::Good),
            (layer(&[("two", b"2")], false), Blob::Good),
        ],
        "",
    );
    // Image one's top layer comes last, after image two has everything: two must wait
    // for one to commit the shared base instead of unpacking it a second time.
    reg.set_blob(&one.layer_digests[1], Blob::Held);
    let host = reg.serve().await;
    let e = env();
    let store = e.store(Config::default()).await;
    let (r1, r2) = (
        format!("{host}/crust/shared:one"),
        format!("{host}/crust/shared:two"),
    );
    // One asks for the base first, so that two finds it downloaded (not committed).
    let base_asked = || {
        reg.0
            .lock()
            .unwrap()
            .blob_gets
            .contains_key(&one.layer_digests[0])
    };
    let second = async {
        while !base_asked() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // One's top layer is held back until two is done, or for half a second if two
        // waits (as it should) for one to commit the base.
        let two = store.pull(&r2, None);
        tokio::pin!(two);
        let done = tokio::select! {
            r = &mut two => Some(r),
            () = tokio::time::sleep(Duration::from_millis(500)) => None,
        };
        reg.0.lock().unwrap().released = true;
        match done {
            Some(r) => r,
            None => two.await,
        }
    };
    let (a, b) = tokio::join!(store.pull(&r1, None), second);
    assert_eq!(a.unwrap(), one.config_digest);
    assert_eq!(b.unwrap(), two.config_digest);
    assert_eq!(
        reg.0.lock().unwrap().blob_gets[&one.layer_digests[0]],
        1,
        "shared layer fetched once"
    );
    // One snapshot for the shared base, one for each top layer, and none unpacked in
    // vain: snapshot directories are numbered from 1 by every unpack begun.
    assert_eq!(count(&e.root().join("snapshots")), 3);
    for n in 1..=3 {
        assert!(
            e.root().join("snapshots").join(n.to_string()).is_dir(),
            "{n}"
        );
    }
    for im in [&one, &two] {
        let chain = store
            .status(&im.config_digest)
            .unwrap()
            .unwrap()
            .chain_id
            .unwrap();
        assert_eq!(store.snapshotter().lowers(&chain).unwrap().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_blob_is_refused() {
    let reg = Registry::default();
    let l = layer(&[("f", &[7u8; 100_000][..])], false);
    let img = add_image(&reg, "v1", &[(l, Blob::WrongDigest)], "");
    let (e, store, err) = failing_pull(&reg, "bad").await;
    assert!(matches!(err, Error::BadContent(_)), "{err}");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert_nothing_left(&e, &store, &img.layer_digests[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_blob_fails_clearly() {
    let reg = Registry::default();
    let l = layer(&[("f", &[7u8; 100_000][..])], true);
    let img = add_image(&reg, "v1", &[(l, Blob::Truncated)], "");
    let (e, store, err) = failing_pull(&reg, "cut").await;
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&img.layer_digests[0]), "{msg}");
    assert!(msg.contains("after 2 attempts"), "{msg}");
    assert_nothing_left(&e, &store, &img.layer_digests[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_blob_times_out() {
    let reg = Registry::default();
    let l = layer(&[("f", &[7u8; 100_000][..])], false);
    let img = add_image(&reg, "v1", &[(l, Blob::Stalled)], "");
    let host = reg.serve().await;
    let e = env();
    let store = e
        .store(Config {
            retries: 0,
            ..quick()
        })
        .await;
    let t = Instant::now();
    let err = store
        .pull(&format!("{host}/crust/stall:v1"), None)
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(err.to_string().contains("no progress for 1s"), "{err}");
    assert!(err.to_string().contains(&host), "names the registry: {err}");
    assert_nothing_left(&e, &store, &img.layer_digests[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_resumes_with_range() {
    let reg = Registry::default();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let l = layer(&[("f", &data)], false);
    let img = add_image(&reg, "v1", &[(l, Blob::Flaky)], "");
    let host = reg.serve().await;
    let e = env();
    let store = e.store(quick()).await;
    store
        .pull(&format!("{host}/crust/flaky:v1"), None)
        .await
        .unwrap();
    assert_resumed_once(&reg.0.lock().unwrap(), &img.layer_digests[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_keeps_the_image_name() {
    let reg = Registry::default();
    let l = layer(&[("pause", b"p")], false);
    add_image(&reg, "3.9", &[(l, Blob::Good)], "65535");
    let host = reg.serve().await;
    let e = env();
    let mut c = quick();
    c.registries.insert(
        "registry.k8s.io".into(),
        RegistryConfig {
            mirrors: vec![format!("http://{host}")],
            ..Default::default()
        },
    );
    let store = e.store(c).await;
    let id = store.pull("registry.k8s.io/pause:3.9", None).await.unwrap();
    let im = store.status("registry.k8s.io/pause:3.9").unwrap().unwrap();
    assert_eq!(im.id, id);
    assert_eq!(im.repo_tags, vec!["registry.k8s.io/pause:3.9".to_string()]);
    assert!(im.pinned, "the default pinned list has the pause image");
}

/// A registry that wants basic auth (user:secret) for its one-layer image
/// `crust/<repo>:v1`, a store, and the image's reference.
async fn basic_auth_scene(repo: &str) -> (Registry, Env, ImageStore, String) {
    use base64::Engine as _;
    let reg = Registry::default();
    let l = layer(&[("f", b"x")], false);
    add_image(&reg, "v1", &[(l, Blob::Good)], "");
    reg.0.lock().unwrap().basic_auth =
        Some(base64::engine::general_purpose::STANDARD.encode("user:secret"));
    let host = reg.serve().await;
    let e = env();
    let store = e.store(quick()).await;
    let r = format!("{host}/crust/{repo}:v1");
    (reg, e, store, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_right_and_wrong() {
    let (_reg, _e, store, r) = basic_auth_scene("private").await;
    let err = store.pull(&r, None).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
    let wrong = Auth {
        username: "user".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = store.pull(&r, Some(&wrong)).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
    let right = Auth {
        username: "user".into(),
        password: "secret".into(),
        ..Default::default()
    };
    store.pull(&r, Some(&right)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_is_not_found() {
    let reg = Registry::default();
    let (_e, _store, err) = failing_pull(&reg, "none").await;
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_pull_cleans_up_after_itself() {
    let reg = Registry::default();
    let l = layer(&[("f", &[7u8; 100_000][..])], false);
    let img = add_image(&reg, "v1", &[(l, Blob::Stalled)], "");
    let host = reg.serve().await;
    let e = env();
    let store = e.store(Config::default()).await;
    // The client goes away while the layer is half-way: the pull future is dropped.
    let r = format!("{host}/crust/gone:v1");
    let pulled = tokio::time::timeout(Duration::from_millis(500), store.pull(&r, None)).await;
    assert!(pulled.is_err(), "the pull should still be running");
    // The unpacker thread sees the channel close and drops its ingest file.
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&e.root().join("content/ingest")) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_nothing_left(&e, &store, &img.layer_digests[0]);
    // The same pull, once the registry sends the whole blob, works.
    reg.0
        .lock()
        .unwrap()
        .blobs
        .get_mut(&img.layer_digests[0])
        .unwrap()
        .1 = Blob::Good;
    store.pull(&r, None).await.unwrap();
    assert_eq!(count(&e.root().join("content/ingest")), 0);
    assert_eq!(count(&e.root().join("snapshots")), 1);
}

/// Pulls dropped at every stage (downloading, unpacking, committing), as a client's
/// deadline drops them: the unpacking threads run on after the drop and must still
/// leave no ingest file and no staging snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_dropped_while_unpacking_leave_no_staging_snapshot() {
    let reg = Registry::default();
    // Many small files: the unpacker is busy writing them when the drop comes.
    let names: Vec<String> = (0..3000).map(|i| format!("d{}/f{i}", i % 50)).collect();
    let data = vec![9u8; 1024];
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &data[..])).collect();
    let l = layer(&files, false);
    add_image(&reg, "v1", &[(l, Blob::Good)], "");
    let host = reg.serve().await;
    let e = env();
    let store = e.store(Config::default()).await;
    let r = format!("{host}/crust/drop:v1");
    let mut dropped = 0;
    for ms in [1u64, 2, 3, 5, 8, 12, 16, 20, 30, 40, 60, 80] {
        if tokio::time::timeout(Duration::from_millis(ms), store.pull(&r, None))
            .await
            .is_ok()
        {
            // Pulled in time: start over for the next try.
            store.remove(&r).await.unwrap();
            store.gc().await.unwrap();
            continue;
        }
        dropped += 1;
        let settled = Instant::now() + Duration::from_secs(10);
        while (count(&e.root().join("content/ingest")) > 0
            || count(&e.root().join("snapshots")) > 0)
            && Instant::now() < settled
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            count(&e.root().join("content/ingest")),
            0,
            "ingest left ({ms} ms)"
        );
        assert_eq!(
            count(&e.root().join("snapshots")),
            0,
            "snapshot left ({ms} ms)"
        );
        assert!(store.list(None).unwrap().is_empty());
    }
    assert!(dropped > 0, "every pull finished in time");
    store.pull(&r, None).await.unwrap();
    assert_eq!(count(&e.root().join("snapshots")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_challenge() {
    use base64::Engine as _;
    let reg = Registry::default();
    let l = layer(&[("f", b"x")], false);
    add_image(&reg, "v1", &[(l, Blob::Good)], "");
    reg.0.lock().unwrap().bearer = Some((
        base64::engine::general_purpose::STANDARD.encode("robot:hunter2"),
        "tok-123".to_string(),
    ));
    let host = reg.serve().await;
    let e = env();
    let store = e.store(quick()).await;
    let r = format!("{host}/crust/tokened:v1");
    let wrong = Auth {
        username: "robot".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = store.pull(&r, Some(&wrong)).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
    let right = Auth {
        auth: base64::engine::general_purpose::STANDARD.encode("robot:hunter2"),
        ..Default::default()
    };
    store.pull(&r, Some(&right)).await.unwrap();
    // A registry token from the request is sent as is.
    store.remove(&r).await.unwrap();
    let token = Auth {
        registry_token: "tok-123".into(),
        ..Default::default()
    };
    let (_, refused) = reg.count("GET", "/v2/");
    let gets = reg.0.lock().unwrap().token_gets;
    store.pull(&r, Some(&token)).await.unwrap();
    assert_eq!(
        reg.count("GET", "/v2/").1,
        refused,
        "sent with the first request"
    );
    assert_eq!(reg.0.lock().unwrap().token_gets, gets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_token_refresh_grant() {
    use base64::Engine as _;
    let reg = Registry::default();
    let l = layer(&[("f", b"x")], false);
    add_image(&reg, "v1", &[(l, Blob::Good)], "");
    {
        let mut st = reg.0.lock().unwrap();
        st.bearer = Some((
            base64::engine::general_purpose::STANDARD.encode("robot:hunter2"),
            "tok-123".to_string(),
        ));
        st.oauth = Some(OAuth {
            refresh_token: "refresh-abc".into(),
            post_status: None,
            rotate: false,
        });
    }
    let host = reg.serve().await;
    let e = env();
    let store = e.store(quick()).await;
    let r = format!("{host}/crust/oauth:v1");

    // A wrong identity token: refused by the token service, said so.
    let wrong = Auth {
        identity_token: "stale".into(),
        ..Default::default()
    };
    let err = store.pull(&r, Some(&wrong)).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("identity token refused"), "{msg}");
    assert!(msg.contains("invalid_grant"), "{msg}");
    assert!(store.list(None).unwrap().is_empty());

    // The right one: a form POST with the refresh-token grant, no GET token request.
    let right = Auth {
        identity_token: "refresh-abc".into(),
        ..Default::default()
    };
    // (The refused grant fell back to the GET token request, refused too.)
    let gets = reg.0.lock().unwrap().token_gets;
    assert_eq!(gets, 1, "POST 401 falls back to GET");
    store.pull(&r, Some(&right)).await.unwrap();
    {
        let st = reg.0.lock().unwrap();
        assert_eq!(st.token_gets, gets, "no GET token request");
        let f = st.token_posts.last().expect("a POST");
        assert_eq!(f["grant_type"], "refresh_token");
        assert_eq!(f["refresh_token"], "refresh-abc");
        assert_eq!(f["service"], "test");
        assert_eq!(f["scope"], "repository:crust/oauth:pull");
        assert_eq!(f["client_id"], "crust");
    }
    // The access token is kept: pulling again logs in no more.
    let posts = reg.0.lock().unwrap().token_posts.len();
    store.remove(&r).await.unwrap();
    store.pull(&r, Some(&right)).await.unwrap();
    assert_eq!(reg.0.lock().unwrap().token_posts.len(), posts);
    // Another repository: a grant for its scope alone.
    store
        .pull(&format!("{host}/crust/other:v1"), Some(&right))
        .await
        .unwrap();
    let st = reg.0.lock().unwrap();
    assert_eq!(
        st.token_posts.last().map(|f| f["scope"].as_str()),
        Some("repository:crust/other:pull")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_token_falls_back_to_get_without_oauth() {
    use base64::Engine as _;
    // 401: a token service that refuses the grant (Artifactory) still takes the GET.
    for status in [
        StatusCode::NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED,
        StatusCode::UNAUTHORIZED,
    ] {
        let reg = Registry::default();
        let l = layer(&[("f", b"x")], false);
        add_image(&reg, "v1", &[(l, Blob::Good)], "");
        {
            let mut st = reg.0.lock().unwrap();
            st.bearer = Some((
                base64::engine::general_purpose::STANDARD.encode("robot:hunter2"),
                "tok-123".to_string(),
            ));
            st.oauth = Some(OAuth {
                refresh_token: "refresh-abc".into(),
                post_status: Some(status),
                rotate: false,
            });
        }
        let host = reg.serve().await;
        let e = env();
        let store = e.store(quick()).await;
        let r = format!("{host}/crust/nooauth:v1");
        let auth = Auth {
            username: "robot".into(),
            password: "hunter2".into(),
            identity_token: "refresh-abc".into(),
            ..Default::default()
        };
        store.pull(&r, Some(&auth)).await.unwrap();
        let st = reg.0.lock().unwrap();
        assert!(
            st.token_gets > 0,
            "{status}: GET token request with basic auth"
        );
    }
}

/// Bytes gzip cannot shrink much, so half a blob is half the layer.
fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_failing_mid_layer_falls_back_to_upstream() {
    let upstream = Registry::default();
    let mirror = Registry::default();
    let a_data = noise(400_000, 1);
    let b_data = noise(200_000, 2);
    let a = layer(&[("a", &a_data)], false);
    let b = layer(&[("b", &b_data)], true);
    let up = add_image(
        &upstream,
        "v1",
        &[(a.clone(), Blob::Good), (b.clone(), Blob::Good)],
        "",
    );
    // The mirror has the same image, but cuts layer a half-way every time and answers
    // 500 for layer b.
    let mi = add_image(
        &mirror,
        "v1",
        &[(a, Blob::Truncated), (b, Blob::ServerError)],
        "",
    );
    assert_eq!(up.manifest_digest, mi.manifest_digest);
    let (e, store, up_host) = behind_mirror(&upstream, &mirror).await;
    let r = format!("{up_host}/crust/app:v1");
    let id = store.pull(&r, None).await.unwrap();
    assert_eq!(id, up.config_digest);

    let im = store.status(&r).unwrap().expect("pulled");
    assert_eq!(im.repo_tags, vec![r.clone()], "the upstream name");
    assert_eq!(
        im.repo_digests,
        vec![format!("{up_host}/crust/app@{}", up.manifest_digest)]
    );
    {
        let m = mirror.0.lock().unwrap();
        assert_eq!(
            m.blob_gets[&mi.layer_digests[0]], 2,
            "mirror: try + 1 retry"
        );
        assert_eq!(
            m.blob_gets[&mi.layer_digests[1]], 2,
            "mirror: try + 1 retry"
        );
        let u = upstream.0.lock().unwrap();
        assert!(
            !u.manifests.is_empty() && !u.blob_gets.contains_key(&up.config_digest),
            "manifest and config came from the mirror"
        );
        assert_eq!(
            u.blob_gets[&up.layer_digests[0]], 1,
            "layer a from upstream"
        );
        assert_eq!(
            u.blob_gets[&up.layer_digests[1]], 1,
            "layer b from upstream"
        );
        assert!(
            u.ranges.is_empty(),
            "upstream downloads start from byte 0, without Range: {:?}",
            u.ranges
        );
    }
    // Whole layers from upstream, nothing half-written left of the mirror's attempts.
    assert_eq!(count(&e.root().join("content/ingest")), 0, "ingest left");
    assert_eq!(count(&e.root().join("snapshots")), 2, "one dir per layer");
    for d in &up.layer_digests {
        assert!(store.content().contains(d));
        let on_disk = std::fs::read(store.content().blob_path(d).unwrap()).unwrap();
        assert_eq!(sha256(&on_disk), *d);
    }
    let lowers = store
        .snapshotter()
        .lowers(im.chain_id.as_deref().unwrap())
        .unwrap();
    assert_eq!(std::fs::read(lowers[0].join("b")).unwrap(), b_data);
    assert_eq!(std::fs::read(lowers[1].join("a")).unwrap(), a_data);
    assert_eq!(store.gc().await.unwrap(), Default::default(), "no garbage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_without_the_blobs_falls_back_for_config_and_layers() {
    let upstream = Registry::default();
    let mirror = Registry::default();
    let l = layer(&[("f", &noise(50_000, 3))], false);
    let up = add_image(&upstream, "v1", &[(l.clone(), Blob::Good)], "7");
    let mi = add_image(&mirror, "v1", &[(l, Blob::Good)], "7");
    {
        // The mirror has the manifest only: 500 for the config, 404 for the layer.
        let mut st = mirror.0.lock().unwrap();
        if let Some(c) = st.blobs.get_mut(&mi.config_digest) {
            c.1 = Blob::ServerError;
        }
        st.blobs.remove(&mi.layer_digests[0]);
    }
    let (e, store, up_host) = behind_mirror(&upstream, &mirror).await;
    let r = format!("{up_host}/crust/thin:v1");
    let id = store.pull(&r, None).await.unwrap();
    assert_eq!(id, up.config_digest);
    assert_eq!(store.status(&r).unwrap().unwrap().uid, Some(7));
    let u = upstream.0.lock().unwrap();
    assert_eq!(u.blob_gets[&up.config_digest], 1, "config from upstream");
    assert_eq!(u.blob_gets[&up.layer_digests[0]], 1, "layer from upstream");
    assert_eq!(count(&e.root().join("content/ingest")), 0);
    assert_eq!(count(&e.root().join("snapshots")), 1);
}

/// Requests to `/v2/` itself (the ping oci-client made before every request).
fn pings(reg: &Registry) -> usize {
    let st = reg.0.lock().unwrap();
    st.requests.iter().filter(|(_, p, _)| p == "/v2/").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pull_goes_straight_to_the_registry() {
    let reg = Registry::default();
    let a = layer(&[("a", b"a")], false);
    let b = layer(&[("b", b"b")], true);
    add_image(&reg, "v1", &[(a, Blob::Good), (b, Blob::Good)], "");
    let host = reg.serve().await;
    let e = env();
    let store = e.store(quick()).await;
    store
        .pull(&format!("{host}/crust/anon:v1"), None)
        .await
        .unwrap();
    assert_eq!(pings(&reg), 0, "no GET /v2/");
    let st = reg.0.lock().unwrap();
    let paths: Vec<&str> = st.requests.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(paths.len(), 4, "manifest, config, 2 layers: {paths:?}");
    assert!(st.requests.iter().all(|(m, _, s)| m == "GET" && *s == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_sent_up_front_once_asked_for() {
    let (reg, _e, store, r) = basic_auth_scene("basic").await;
    let right = Auth {
        username: "user".into(),
        password: "secret".into(),
        ..Default::default()
    };
    store.pull(&r, Some(&right)).await.unwrap();
    // The manifest is asked twice (401 Basic, then with the credentials); config and
    // layer carry them from the start.
    assert_eq!(reg.count("GET", "/v2/"), (4, 1));
    store.remove(&r).await.unwrap();
    store.pull(&r, Some(&right)).await.unwrap();
    assert_eq!(reg.count("GET", "/v2/"), (7, 1), "no 401 the second time");
    assert_eq!(pings(&reg), 0);
}

/// A registry behind a token service (robot:hunter2) with images in two repositories.
async fn bearer_registry(expires_in: Option<u64>) -> (Registry, String, Auth) {
    use base64::Engine as _;
    let reg = Registry::default();
    let a = layer(&[("a", &noise(10_000, 4))], false);
    let b = layer(&[("b", &noise(10_000, 5))], false);
    add_image(&reg, "v1", &[(a, Blob::Good), (b, Blob::Good)], "");
    {
        let mut st = reg.0.lock().unwrap();
        st.bearer = Some((
            base64::engine::general_purpose::STANDARD.encode("robot:hunter2"),
            "tok-123".to_string(),
        ));
        st.token_expires_in = expires_in;
    }
    let host = reg.serve().await;
    let auth = Auth {
        username: "robot".into(),
        password: "hunter2".into(),
        ..Default::default()
    };
    (reg, host, auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_asked_once_per_scope() {
    let (reg, host, auth) = bearer_registry(None).await;
    let e = env();
    let store = e.store(quick()).await;
    let one = format!("{host}/crust/one:v1");
    store.pull(&one, Some(&auth)).await.unwrap();
    assert_eq!(reg.0.lock().unwrap().token_gets, 1);
    // Manifest (401, then with the token), config, two layers: one challenge only.
    assert_eq!(reg.count("GET", "/v2/crust/one/"), (5, 1));
    // Another repository is another scope: its own token.
    let two = format!("{host}/crust/two:v1");
    store.pull(&two, Some(&auth)).await.unwrap();
    assert_eq!(reg.0.lock().unwrap().token_gets, 2);
    // The first scope's token is still good: no token request, no 401.
    store.remove(&one).await.unwrap();
    store.pull(&one, Some(&auth)).await.unwrap();
    assert_eq!(reg.0.lock().unwrap().token_gets, 2);
    assert_eq!(reg.count("GET", "/v2/crust/one/"), (9, 1));
    assert_eq!(pings(&reg), 0);
    let st = reg.0.lock().unwrap();
    assert!(st.token_posts.is_empty(), "no identity token, no POST");
    // Each token request names its own repository only: the first challenge's scope
    // does not stick to the host.
    assert_eq!(
        st.token_scopes,
        [["repository:crust/one:pull"], ["repository:crust/two:pull"]]
    );
}

/// The token service revokes the token it gave: the registry takes only a new one.
fn revoke_token(reg: &Registry) {
    let mut st = reg.0.lock().unwrap();
    if let Some((_, token)) = st.bearer.as_mut() {
        token.push('+');
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_bearer_token_is_fetched_again() {
    // expires_in 1 is taken as 60 s (the token spec's least): the token is kept.
    let (reg, host, auth) = bearer_registry(Some(1)).await;
    let e = env();
    let store = e.store(quick()).await;
    let r = format!("{host}/crust/short:v1");
    store.pull(&r, Some(&auth)).await.unwrap();
    store.remove(&r).await.unwrap();
    store.pull(&r, Some(&auth)).await.unwrap();
    assert_eq!(reg.0.lock().unwrap().token_gets, 1, "the token is kept");
    assert_eq!(reg.count("GET", "/v2/").1, 1, "one 401 in all");
    // Refused before its time: the 401 brings a new token.
    revoke_token(&reg);
    store.remove(&r).await.unwrap();
    store.pull(&r, Some(&auth)).await.unwrap();
    assert_eq!(reg.0.lock().unwrap().token_gets, 2, "a new token");
    assert_eq!(reg.count("GET", "/v2/").1, 2, "one more 401");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_token_is_used_next_time() {
    let (reg, host, _) = bearer_registry(None).await;
    reg.0.lock().unwrap().oauth = Some(OAuth {
        refresh_token: "refresh-abc".into(),
        post_status: None,
        rotate: true,
    });
    let e = env();
    let store = e.store(quick()).await;
    let r = format!("{host}/crust/rotate:v1");
    let auth = Auth {
        identity_token: "refresh-abc".into(),
        ..Default::default()
    };
    store.pull(&r, Some(&auth)).await.unwrap();
    // The access token is revoked: the next pull needs a new grant.
    revoke_token(&reg);
    store.remove(&r).await.unwrap();
    // kubelet sends the token it was given; the service takes only the rotated one now.
    store.pull(&r, Some(&auth)).await.unwrap();
    let st = reg.0.lock().unwrap();
    let sent: Vec<&str> = st
        .token_posts
        .iter()
        .map(|f| f["refresh_token"].as_str())
        .collect();
    assert_eq!(sent, ["refresh-abc", "refresh-abc+"]);
    assert_eq!(st.token_gets, 0, "no fallback to GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_bearer_token() {
    let (reg, host, _) = bearer_registry(None).await;
    let e = env();
    let store = e.store(quick()).await;
    let r = format!("{host}/crust/public:v1");
    let err = store.pull(&r, None).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
    assert!(err.to_string().contains("anonymous"), "{err}");
    reg.0.lock().unwrap().anonymous_tokens = true;
    store.pull(&r, None).await.unwrap();
    // Refused, then given: two token requests. The second pull knows the registry
    // wants a token and asks for it before the manifest: no 401 this time.
    assert_eq!(reg.0.lock().unwrap().token_gets, 2);
    assert_eq!(reg.count("GET", "/v2/"), (5, 1));
    assert_eq!(pings(&reg), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_blob_storage_carry_no_authorization() {
    // The registry wants a token and sends every blob GET on to "blob storage" (another
    // port), which redirects once more on its own host before it serves the blob.
    let (reg, host, auth) = bearer_registry(None).await;
    let storage = Registry::default();
    let data = noise(300_000, 6);
    let l = layer(&[("f", &data)], false);
    let img = add_image(&storage, "v1", &[(l.clone(), Blob::Flaky)], "");
    add_image(&reg, "v1", &[(l, Blob::Good)], "");
    let storage_host = storage.serve().await;
    reg.0.lock().unwrap().redirect_blobs = Some(format!("http://{storage_host}/cdn"));
    let e = env();
    let store = e.store(quick()).await;
    let r = format!("{host}/crust/redirected:v1");
    let id = store.pull(&r, Some(&auth)).await.unwrap();
    assert_eq!(id, img.config_digest);
    let im = store.status(&r).unwrap().unwrap();
    let lowers = store
        .snapshotter()
        .lowers(im.chain_id.as_deref().unwrap())
        .unwrap();
    assert_eq!(std::fs::read(lowers[0].join("f")).unwrap(), data);
    {
        let st = reg.0.lock().unwrap();
        assert!(
            st.authorizations
                .iter()
                .any(|(p, a)| p.contains("/blobs/") && a.is_some()),
            "the registry itself gets the token"
        );
        let s = storage.0.lock().unwrap();
        assert!(
            s.authorizations.iter().all(|(_, a)| a.is_none()),
            "no Authorization at any hop of blob storage: {:?}",
            s.authorizations
        );
        assert!(
            s.authorizations.iter().any(|(p, _)| p.starts_with("/cdn/"))
                && s.authorizations.iter().any(|(p, _)| p.starts_with("/v2/")),
            "both hops: {:?}",
            s.authorizations
        );
        // The layer was cut half-way once: resumed with Range at the final hop.
        assert_resumed_once(&s, &img.layer_digests[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_by_blob_storage_is_no_registry_challenge() {
    use base64::Engine as _;
    // Blob storage answers 401 with a Basic challenge (or 403, an expired signature):
    // not the registry's; nothing learnt, no credentials sent there, retried, Unavailable
    // naming the storage host.
    let reg = Registry::default();
    let storage = Registry::default();
    let l = layer(&[("f", b"x")], false);
    add_image(&reg, "v1", &[(l.clone(), Blob::Good)], "");
    add_image(&storage, "v1", &[(l, Blob::Good)], "");
    storage.0.lock().unwrap().basic_auth =
        Some(base64::engine::general_purpose::STANDARD.encode("user:secret"));
    let storage_host = storage.serve().await;
    reg.0.lock().unwrap().redirect_blobs = Some(format!("http://{storage_host}/cdn"));
    let host = reg.serve().await;
    let e = env();
    let store = e.store(quick()).await;
    let auth = Auth {
        username: "user".into(),
        password: "secret".into(),
        ..Default::default()
    };
    let err = store
        .pull(&format!("{host}/crust/s3:v1"), Some(&auth))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&storage_host) && msg.contains("401"), "{msg}");
    assert!(!msg.contains("s3cr3t"), "no signature in messages: {msg}");
    let s = storage.0.lock().unwrap();
    assert!(
        s.authorizations.iter().all(|(_, a)| a.is_none()),
        "{:?}",
        s.authorizations
    );
    // Each blob GET (try + 1 retry) went to the registry first.
    assert!(s.authorizations.len() >= 2, "{:?}", s.authorizations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_stated_too_large_is_refused_before_download() {
    let reg = Registry::default();
    let l = layer(&[("f", b"x")], false);
    let img = add_image(&reg, "v1", &[(l, Blob::Good)], "");
    {
        // The manifest claims a 4 GiB config.
        let mut st = reg.0.lock().unwrap();
        let (ct, body) = st.manifests["v1"].clone();
        let mut m: serde_json::Value = serde_json::from_slice(&body).unwrap();
        m["config"]["size"] = serde_json::json!(4u64 << 30);
        st.manifests
            .insert("v1".into(), (ct, Bytes::from(m.to_string())));
    }
    let (_e, _store, err) = failing_pull(&reg, "bigconfig").await;
    assert!(matches!(err, Error::BadContent(_)), "{err}");
    assert!(err.to_string().contains("more than"), "{err}");
    let st = reg.0.lock().unwrap();
    assert!(
        !st.blob_gets.contains_key(&img.config_digest),
        "config not asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_token_answer_is_refused() {
    let (reg, host, auth) = bearer_registry(None).await;
    reg.0.lock().unwrap().token_padding = 2 << 20;
    let e = env();
    let store = e.store(quick()).await;
    let err = store
        .pull(&format!("{host}/crust/bigtoken:v1"), Some(&auth))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_with_two_schemes_and_scopes() {
    // `Basic realm="registry", Bearer realm = "…", service="test",scope="<repo> <other>"`:
    // the Bearer challenge is taken, its two scopes asked for as two scope params, and
    // the extra scope only in the token request answering that challenge.
    let (reg, host, auth) = bearer_registry(None).await;
    {
        let mut st = reg.0.lock().unwrap();
        st.challenge_extra_scope = Some("repository:crust/base:pull".into());
        st.challenge_before = Some("Basic realm=\"registry\"".into());
    }
    let e = env();
    let store = e.store(quick()).await;
    store
        .pull(&format!("{host}/crust/app:v1"), Some(&auth))
        .await
        .unwrap();
    store
        .pull(&format!("{host}/crust/other:v1"), Some(&auth))
        .await
        .unwrap();
    let st = reg.0.lock().unwrap();
    assert_eq!(
        st.token_scopes,
        [
            vec!["repository:crust/app:pull", "repository:crust/base:pull"],
            vec!["repository:crust/other:pull"]
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_waits_briefly_or_gives_up() {
    // Retry-After 1: waited for (the config is asked twice), the pull succeeds.
    let reg = Registry::default();
    let l = layer(&[("f", b"x")], false);
    let img = add_image(&reg, "v1", &[(l, Blob::Good)], "");
    reg.set_blob(
        &img.config_digest,
        Blob::RateLimited {
            times: 1,
            retry_after: "1",
        },
    );
    let host = reg.serve().await;
    let e = env();
    let store = e
        .store(Config {
            no_progress_timeout_secs: 5,
            ..quick()
        })
        .await;
    store
        .pull(&format!("{host}/crust/limited:v1"), None)
        .await
        .unwrap();
    assert_eq!(reg.0.lock().unwrap().blob_gets[&img.config_digest], 2);

    // Retry-After an hour: no waiting, no retry, an error that says so.
    let reg = Registry::default();
    let l = layer(&[("f", b"x")], false);
    let img = add_image(&reg, "v1", &[(l, Blob::Good)], "");
    reg.set_blob(
        &img.config_digest,
        Blob::RateLimited {
            times: 100,
            retry_after: "3600",
        },
    );
    let (_e, _store, err) = failing_pull(&reg, "limited").await;
    assert!(matches!(err, Error::RateLimited(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("rate limited") && msg.contains("3600"),
        "{msg}"
    );
    assert_eq!(
        reg.0.lock().unwrap().blob_gets[&img.config_digest],
        1,
        "not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_request_redirected_elsewhere_goes_without_credentials() {
    // The realm sends the GET token request on to another host (which gives tokens to
    // anyone): followed, the basic credentials left behind.
    let (reg, host, auth) = bearer_registry(None).await;
    let other = Registry::default();
    {
        let mut st = other.0.lock().unwrap();
        st.bearer = Some(("nobody".into(), "tok-123".into()));
        st.anonymous_tokens = true;
    }
    let other_host = other.serve().await;
    reg.0.lock().unwrap().token_redirect = Some(format!("http://{other_host}"));
    let e = env();
    let store = e.store(quick()).await;
    store
        .pull(&format!("{host}/crust/moved:v1"), Some(&auth))
        .await
        .unwrap();
    assert!(
        reg.0
            .lock()
            .unwrap()
            .authorizations
            .iter()
            .any(|(p, a)| p == "/token" && a.as_deref().is_some_and(|a| a.starts_with("Basic "))),
        "the realm itself gets the credentials"
    );
    let st = other.0.lock().unwrap();
    assert_eq!(st.token_gets, 1);
    assert_eq!(st.token_scopes, [["repository:crust/moved:pull"]]);
    assert!(
        st.authorizations.iter().all(|(_, a)| a.is_none()),
        "{:?}",
        st.authorizations
    );
}
