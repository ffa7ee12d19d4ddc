//! Registry TLS: docker-registry serving HTTPS with a private CA made by the test and
//! requiring client certificates; crust configured through `[images.registries]` and
//! through containerd's host directory (`hosts.toml`, Docker's `certs.d` files), each
//! change taken up by SIGHUP without a restart.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use crust_e2e::cri::{ImageSpec, RemoveImageRequest};
use crust_e2e::registry::{Pki, Registry, fixtures};
use crust_e2e::workload::try_pull;
use crust_e2e::{Crustd, Options};
use nix::sys::signal::Signal;

/// Lines of crustd's log that end a SIGHUP reload, either way.
fn reloads(crustd: &Crustd) -> usize {
    crustd
        .log()
        .lines()
        .filter(|l| {
            l.contains("SIGHUP: registry configuration reloaded")
                || l.contains("the registry configuration in force is kept")
        })
        .count()
}

/// Sends SIGHUP and waits until crustd logged the reload's outcome: whether it took.
async fn sighup(crustd: &Crustd) -> Result<bool> {
    let before = reloads(crustd);
    crustd.signal(Signal::SIGHUP)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(crustd) == before {
        if Instant::now() > deadline {
            bail!("no reload logged after SIGHUP:\n{}", crustd.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = crustd.log();
    let last = log
        .lines()
        .rfind(|l| l.contains("SIGHUP:") && !l.contains("take effect"))
        .unwrap_or_default();
    Ok(last.contains("reloaded"))
}

async fn remove(crustd: &Crustd, image: &str) -> Result<()> {
    crustd
        .images()
        .await?
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// Pulls `image` and checks it is the fixture busybox.
async fn pulls(crustd: &Crustd, image: &str) -> Result<()> {
    let want = fixtures()["images"]["crust/busybox:latest"]["config_digest"]
        .as_str()
        .unwrap()
        .to_string();
    match try_pull(crustd, image).await {
        Ok(id) if id == want => Ok(()),
        Ok(id) => bail!("pulled {id}, not {want}"),
        Err(s) => bail!("pull of {image} failed: {s:?}"),
    }
}

/// A pull of `image` that fails, with a message containing each of `words`.
async fn refused(crustd: &Crustd, image: &str, words: &[&str]) -> Result<()> {
    match try_pull(crustd, image).await {
        Ok(id) => bail!("pull of {image} succeeded ({id}) where it must fail"),
        Err(s) => {
            for w in words {
                if !s.message().contains(w) {
                    bail!("pull of {image} failed without {w:?}: {s:?}");
                }
            }
            Ok(())
        }
    }
}

fn registry_toml(host: &str, pki: &Pki, ca: bool, client: bool) -> String {
    let mut keys = Vec::new();
    if ca {
        keys.push(format!("ca = [{:?}]", pki.path("ca.pem")));
    }
    if client {
        keys.push(format!(
            "client_cert = {:?}, client_key = {:?}",
            pki.path("client.pem"),
            pki.path("client.key")
        ));
    }
    format!("registries = {{ {host:?} = {{ {} }} }}", keys.join(", "))
}

/// Rewrites the `[images]` section of crustd's config file.
fn set_images_config(crustd: &Crustd, images: &str) -> Result<()> {
    let text = std::fs::read_to_string(&crustd.config_path)?;
    let head = text.split("[images]").next().unwrap_or_default();
    std::fs::write(&crustd.config_path, format!("{head}[images]\n{images}\n"))?;
    Ok(())
}

#[tokio::test]
async fn mtls_registry_through_crust_config_and_sighup() -> Result<()> {
    let pki = Pki::new()?;
    let reg = Registry::start_tls(&pki)?;
    let image = format!("{}/crust/busybox:latest", reg.addr);
    // The CA alone: the registry asks for a client certificate crust does not have.
    let crustd = Crustd::start_with(Options {
        images_config: registry_toml(&reg.addr, &pki, true, false),
        ..Default::default()
    })
    .await?;
    let hint = format!("TLS with {} failed", reg.addr);
    refused(&crustd, &image, &[&hint, "certificate"]).await?;

    // CA and client certificate, taken up by SIGHUP: the pull works.
    set_images_config(&crustd, &registry_toml(&reg.addr, &pki, true, true))?;
    assert!(sighup(&crustd).await?, "{}", crustd.log());
    pulls(&crustd, &image).await?;
    remove(&crustd, &image).await?;

    // A CA file that is not there: logged, and the set-up in force is kept.
    let missing = pki.path("missing-ca.pem");
    set_images_config(
        &crustd,
        &format!(
            "registries = {{ {:?} = {{ ca = [{missing:?}] }} }}",
            reg.addr
        ),
    )?;
    assert!(!sighup(&crustd).await?, "a bad config must not be taken");
    assert!(crustd.log().contains("missing-ca.pem"), "{}", crustd.log());
    pulls(&crustd, &image).await?;
    remove(&crustd, &image).await?;

    // The client certificate without the CA: the server's certificate is not trusted.
    set_images_config(&crustd, &registry_toml(&reg.addr, &pki, false, true))?;
    assert!(sighup(&crustd).await?);
    refused(&crustd, &image, &[&hint, "UnknownIssuer"]).await?;
    Ok(())
}

#[tokio::test]
async fn mtls_registry_through_hosts_toml_docker_certs_and_sighup() -> Result<()> {
    let pki = Pki::new()?;
    let reg = Registry::start_tls(&pki)?;
    let hosts = tempfile::tempdir()?;
    let crustd = Crustd::start_with(Options {
        images_config: format!("hosts_dir = {:?}", hosts.path()),
        ..Default::default()
    })
    .await?;
    let port = reg.addr.rsplit_once(':').unwrap().1;
    let own = hosts.path().join(format!("127.0.0.1_{port}_"));
    std::fs::create_dir(&own)?;
    let image = format!("{}/crust/busybox:latest", reg.addr);

    // containerd's hosts.toml, files relative to its directory.
    std::fs::copy(pki.path("ca.pem"), own.join("ca.pem"))?;
    std::fs::copy(pki.path("client.pem"), own.join("client.pem"))?;
    std::fs::copy(pki.path("client.key"), own.join("client.key"))?;
    let hosts_toml = format!(
        "server = \"https://{}\"\nca = \"ca.pem\"\nclient = [[\"client.pem\", \"client.key\"]]\n",
        reg.addr
    );
    std::fs::write(own.join("hosts.toml"), &hosts_toml)?;
    assert!(sighup(&crustd).await?, "{}", crustd.log());
    pulls(&crustd, &image).await?;
    remove(&crustd, &image).await?;

    // The client certificate dropped from hosts.toml: refused after the next SIGHUP.
    std::fs::write(
        own.join("hosts.toml"),
        format!("server = \"https://{}\"\nca = \"ca.pem\"\n", reg.addr),
    )?;
    assert!(sighup(&crustd).await?);
    refused(&crustd, &image, &["certificate"]).await?;

    // Docker's layout instead: ca.crt, client.cert, client.key.
    std::fs::remove_file(own.join("hosts.toml"))?;
    std::fs::rename(own.join("ca.pem"), own.join("ca.crt"))?;
    std::fs::rename(own.join("client.pem"), own.join("client.cert"))?;
    assert!(sighup(&crustd).await?);
    pulls(&crustd, &image).await?;
    remove(&crustd, &image).await?;

    // A mirror for another registry name, tried before its server (unreachable here).
    let other = hosts.path().join("registry.invalid");
    std::fs::create_dir(&other)?;
    std::fs::write(
        other.join("hosts.toml"),
        format!(
            "server = \"https://127.0.0.1:1\"\n\
             [host.\"https://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\nca = {:?}\n\
             client = [[{:?}, {:?}]]\n",
            reg.addr,
            own.join("ca.crt"),
            own.join("client.cert"),
            own.join("client.key")
        ),
    )?;
    assert!(sighup(&crustd).await?);
    pulls(&crustd, "registry.invalid/crust/busybox:latest").await?;
    Ok(())
}
