//! Installing crust on a node: `hack/install` into a temporary root (its unit
//! checked by `systemd-analyze verify`, the operator's files kept by uninstall,
//! the data dirs only removed by --purge and never while mounted), and the
//! Debian package from `hack/package` installed on this machine with `dpkg -i`
//! and purged again.
//!
//! Both reuse the workspace's debug binaries (`--binaries`), not release builds.
//! systemd is not PID 1 here: enabling and starting the service, and its
//! restart behaviour, are not exercised.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crust_e2e::{binary, require_root};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin_dir() -> PathBuf {
    binary("crustd").parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn install(root: &Path, args: &[&str]) -> Output {
    run(Command::new(repo().join("hack/install"))
        .arg("--destdir")
        .arg(root)
        .arg("--binaries")
        .arg(bin_dir())
        .args(args))
}

/// Every path below `root`, relative, sorted.
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// `systemd-analyze verify` of the unit as installed below `root`: in a mount
/// namespace of its own where `root`'s /usr/local is the system's, so the
/// ExecStart binary and the man page of Documentation= are checked where the
/// unit names them.
fn verify_unit(root: &Path, unit: &Path) -> Output {
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1/usr/local\" /usr/local && exec systemd-analyze verify \"$2\"")
        .arg("sh")
        .arg(root)
        .arg(unit))
}

#[test]
fn hack_install_then_uninstall_keeps_the_operators_files_and_purge_the_data() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let out = install(r, &[]);
    assert!(out.status.success(), "{out:?}");

    let crustd = r.join("usr/local/bin/crustd");
    let unit = r.join("etc/systemd/system/crustd.service");
    for p in [
        crustd.clone(),
        r.join("usr/local/bin/crust-shim"),
        r.join("usr/local/share/man/man8/crustd.8"),
        r.join("usr/local/share/bash-completion/completions/crustd"),
        unit.clone(),
    ] {
        assert!(p.exists(), "{} not installed", p.display());
    }
    assert_eq!(
        std::fs::read(&unit).unwrap(),
        std::fs::read(repo().join("packaging/crustd.service")).unwrap()
    );
    let config = r.join("etc/crust/config.toml");
    let default = ok(Command::new(&crustd).args(["config", "default"]));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), default);
    ok(Command::new(&crustd)
        .arg("--config")
        .arg(&config)
        .args(["config", "check"]));
    let crictl = std::fs::read_to_string(r.join("etc/crictl.yaml")).unwrap();
    assert!(
        crictl.contains("runtime-endpoint: unix:///run/crust/crust.sock\n"),
        "{crictl}"
    );

    // The unit as installed passes systemd's own checks; one naming a missing binary does not.
    let v = verify_unit(r, &unit);
    assert!(v.status.success(), "systemd-analyze verify: {v:?}");
    let broken = r.join("broken.service");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&unit)
            .unwrap()
            .replace("/usr/local/bin/crustd ", "/usr/local/bin/crustd-gone "),
    )
    .unwrap();
    assert!(!verify_unit(r, &broken).status.success());
    std::fs::remove_file(&broken).unwrap();

    // The operator edits the config and adds a file; a reinstall keeps both.
    std::fs::write(&config, format!("{default}# the operator's\n")).unwrap();
    std::fs::write(r.join("etc/crust/extra.toml"), "# the operator's\n").unwrap();
    assert!(install(r, &[]).status.success());
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .ends_with("# the operator's\n")
    );

    // Data crustd would have made.
    std::fs::create_dir_all(r.join("var/lib/crust/images")).unwrap();
    std::fs::write(r.join("var/lib/crust/state.redb"), "").unwrap();
    std::fs::create_dir_all(r.join("run/crust")).unwrap();

    // --purge refuses while anything is mounted below the data dirs, and changes nothing.
    let before = tree(r);
    let mnt = r.join("var/lib/crust/images");
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let refused = install(r, &["--uninstall", "--purge"]);
    nix::mount::umount(&mnt).unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("still mounted below"),
        "{refused:?}"
    );
    assert_eq!(tree(r), before);

    // Uninstall removes what hack/install wrote and nothing else.
    let out = install(r, &["--uninstall"]);
    assert!(out.status.success(), "{out:?}");
    let left = tree(r);
    let expected: BTreeSet<String> = [
        "etc",
        "etc/crust",
        "etc/crust/config.toml",
        "etc/crust/extra.toml",
        "run",
        "run/crust",
        "var",
        "var/lib",
        "var/lib/crust",
        "var/lib/crust/images",
        "var/lib/crust/state.redb",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(left, expected);

    // --purge later removes the data dirs (read from the config left behind).
    let out = install(r, &["--uninstall", "--purge"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!r.join("var/lib/crust").exists() && !r.join("run/crust").exists());
    assert!(config.exists() && r.join("etc/crust/extra.toml").exists());
}

#[test]
fn hack_install_leaves_an_existing_crictl_yaml_and_refuses_a_bad_config() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/crust")).unwrap();
    std::fs::write(
        r.join("etc/crictl.yaml"),
        "runtime-endpoint: unix:///x.sock\n",
    )
    .unwrap();
    std::fs::write(r.join("etc/crust/config.toml"), "bogus_key = 1\n").unwrap();
    let before = tree(r);
    let out = install(r, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bogus_key") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(tree(r), before);

    std::fs::write(
        r.join("etc/crust/config.toml"),
        "socket = \"/run/other/c.sock\"\n",
    )
    .unwrap();
    assert!(install(r, &[]).status.success());
    assert_eq!(
        std::fs::read_to_string(r.join("etc/crictl.yaml")).unwrap(),
        "runtime-endpoint: unix:///x.sock\n"
    );
    assert!(install(r, &["--uninstall"]).status.success());
    assert_eq!(tree(r), before);
}

// ---- the Debian package ------------------------------------------------------

/// Paths on this machine whose name has "crust" in it, outside what tests and
/// other work use (/tmp, /work, /proc, ...) and man-db's page cache.
fn crust_paths() -> BTreeSet<String> {
    let out = ok(Command::new("find")
        .args(["/etc", "/usr", "/lib", "/var", "/opt", "-xdev"])
        .args([
            "(",
            "-path",
            "/var/tmp",
            "-o",
            "-path",
            "/var/cache/man",
            ")",
            "-prune",
            "-o",
        ])
        .args(["-name", "*crust*", "-print"]));
    out.lines().map(String::from).collect()
}

fn dpkg_status() -> String {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", "crust"]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// dpkg, retried while another apt or dpkg run holds its lock.
fn dpkg(args: &[&str]) -> Output {
    for _ in 0..60 {
        let out = run(Command::new("dpkg").args(args));
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("lock") {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    panic!("dpkg {args:?}: the dpkg lock stayed held");
}

/// Purges the package and the operator's test files even when the test failed.
struct Installed {
    operator_files: Vec<PathBuf>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !dpkg_status().is_empty() {
            let _ = dpkg(&["--purge", "crust"]);
        }
        for f in &self.operator_files {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir("/etc/crust");
        // `man crustd`, run by systemd-analyze, caches a formatted page.
        let _ = std::fs::remove_file("/var/cache/man/cat8/crustd.8.gz");
    }
}

#[test]
fn deb_installs_answers_and_purges_to_what_the_operator_made() {
    require_root();
    assert_eq!(
        dpkg_status(),
        "",
        "a crust package is installed on this machine already; not touching it"
    );
    let out_dir = tempfile::tempdir().unwrap();
    let deb = ok(Command::new(repo().join("hack/package"))
        .arg("--binaries")
        .arg(bin_dir())
        .arg("--out")
        .arg(out_dir.path()));
    let deb = PathBuf::from(deb.lines().last().unwrap());
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("crust_{}_amd64.deb", env!("CARGO_PKG_VERSION"))
    );
    let contents = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for p in [
        "./usr/bin/crustd",
        "./usr/bin/crust-shim",
        "./lib/systemd/system/crustd.service",
        "./etc/crust/config.toml",
        "./usr/share/man/man8/crustd.8.gz",
        "./usr/share/doc/crust/kubernetes.md",
        "./usr/share/doc/crust/grafana-dashboard.json",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {p}"))),
            "{p} not in\n{contents}"
        );
    }

    let before = crust_paths();
    let mut guard = Installed {
        operator_files: Vec::new(),
    };
    let out = dpkg(&["-i", &deb.display().to_string()]);
    assert!(out.status.success(), "dpkg -i: {out:?}");
    assert!(dpkg_status().starts_with("ii"), "{}", dpkg_status());

    let version = ok(Command::new("/usr/bin/crustd").arg("--version"));
    assert!(
        version.starts_with(&format!("crustd {}\n", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(
        version.contains("\nshim: /usr/bin/crust-shim\n"),
        "{version}"
    );
    let check = ok(Command::new("/usr/bin/crustd").args([
        "--config",
        "/etc/crust/config.toml",
        "config",
        "check",
    ]));
    assert!(
        check.contains("socket = \"/run/crust/crust.sock\""),
        "{check}"
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/crustd.service").unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/crustd --config /etc/crust/config.toml\n"),
        "{unit}"
    );
    let v =
        run(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/crustd.service"]));
    assert!(v.status.success(), "systemd-analyze verify: {v:?}");
    // Enabled as debhelper would (systemd not running: not started).
    assert!(Path::new("/etc/systemd/system/multi-user.target.wants/crustd.service").exists());
    assert_eq!(
        std::fs::read_to_string("/var/lib/dpkg/info/crust.conffiles").unwrap(),
        "/etc/crust/config.toml\n"
    );

    // What the operator makes: an edit of the conffile, a file of their own.
    let mut config = std::fs::read_to_string("/etc/crust/config.toml").unwrap();
    config.push_str("# the operator's\n");
    std::fs::write("/etc/crust/config.toml", config).unwrap();
    guard
        .operator_files
        .push(PathBuf::from("/etc/crust/operator.toml"));
    std::fs::write("/etc/crust/operator.toml", "# the operator's\n").unwrap();

    let out = dpkg(&["--purge", "crust"]);
    assert!(out.status.success(), "dpkg --purge: {out:?}");
    assert_eq!(dpkg_status(), "");
    let after = crust_paths();
    let added: Vec<&String> = after.difference(&before).collect();
    assert_eq!(added, ["/etc/crust"], "left behind");
    assert!(Path::new("/etc/crust/operator.toml").exists());
    assert!(
        !Path::new("/etc/crust/config.toml").exists(),
        "the conffile survived --purge"
    );
    let removed: Vec<&String> = before.difference(&after).collect();
    assert!(
        removed.is_empty(),
        "removed what was there before: {removed:?}"
    );
    for l in contents.lines() {
        let p = l.rsplit(' ').next().unwrap().trim_start_matches('.');
        if !l.starts_with('d') {
            assert!(!Path::new(p).exists(), "{p} left behind");
        }
    }
    drop(guard);
    assert!(!Path::new("/etc/crust").exists());
}
