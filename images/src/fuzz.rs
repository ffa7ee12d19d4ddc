//! Property-based fuzzing of what the images crate parses from outside (see
//! docs/testing.md, "Fuzzing"): the settings shared by every `fuzz` module of
//! this crate, and the properties of public entry points (`unpack_layer`,
//! `Reference::parse`). Parsers with private entry points have a `mod fuzz` of
//! their own next to them (tar_reader/fuzz.rs, auth.rs, registry.rs).

use proptest::prelude::*;
use proptest::test_runner::Config;

/// `cases` cases, or as many as `PROPTEST_CASES` says (the run by hand:
/// `PROPTEST_CASES=100000 cargo test -p crust-images --lib fuzz`). Nothing is
/// persisted: a failure prints its minimal input, which becomes a plain regression
/// test next to the parser, so CI never writes `proptest-regressions` files.
pub(crate) fn config(cases: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Applies byte flips (position taken modulo the length) and a truncation.
pub(crate) fn mutate(mut bytes: Vec<u8>, flips: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if !bytes.is_empty() {
        for &(at, b) in flips {
            let n = bytes.len();
            bytes[at % n] = b;
        }
    }
    if let Some(c) = cut {
        let n = bytes.len();
        bytes.truncate(c % (n + 1));
    }
    bytes
}

/// Mutations: a few byte changes biased to the first header blocks, and maybe a cut.
pub(crate) fn mutations() -> impl Strategy<Value = (Vec<(usize, u8)>, Option<usize>)> {
    (
        prop::collection::vec(
            (
                prop_oneof![0usize..1024, any::<usize>()],
                prop_oneof![any::<u8>(), Just(0u8), Just(b'0'), Just(b'7'), Just(0xff)],
            ),
            0..6,
        ),
        prop::option::weighted(0.3, any::<usize>()),
    )
}

mod reference {
    use super::*;
    use crate::reference::Reference;

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]{1,6}",
            "[a-z0-9]{1,3}([._]|__|-{1,2})[a-z0-9]{1,3}",
        ]
    }

    /// Strings shaped like references, valid or nearly so.
    fn reference_like() -> impl Strategy<Value = String> {
        let domain = prop_oneof![
            Just(String::new()),
            Just("docker.io/".to_string()),
            Just("index.docker.io/".to_string()),
            Just("localhost/".to_string()),
            Just("localhost:5000/".to_string()),
            Just("[::1]:5000/".to_string()),
            "[a-zA-Z0-9-]{1,8}(\\.[a-z0-9-]{1,5}){0,2}(:[0-9]{0,5})?/",
        ];
        let tag = prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}");
        let digest = prop::option::of(prop_oneof![
            "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
            "[a-z0-9]{1,7}:[0-9a-fA-F]{0,70}",
        ]);
        (
            domain,
            prop::collection::vec(component(), 1..4),
            tag,
            digest,
        )
            .prop_map(|(d, path, tag, digest)| {
                let mut s = d + &path.join("/");
                if let Some(t) = tag {
                    s += &format!(":{t}");
                }
                if let Some(dg) = digest {
                    s += &format!("@{dg}");
                }
                s
            })
    }

    fn check(s: &str) {
        if let Ok(r) = Reference::parse(s) {
            let again = Reference::parse(&r.to_string())
                .unwrap_or_else(|e| panic!("{s:?} parsed as {r}, which does not parse: {e}"));
            assert_eq!(again, r, "{s:?}");
            assert_eq!(again.to_string(), r.to_string());
            assert!(r.tag().is_some() || r.digest().is_some());
            assert_eq!(r.name(), format!("{}/{}", r.domain(), r.path()));
        }
    }

    proptest! {
        #![proptest_config(config(2000))]

        #[test]
        fn arbitrary_strings(s in ".{0,80}") {
            check(&s);
        }

        #[test]
        fn reference_shaped_strings(s in reference_like()) {
            check(&s);
        }

        #[test]
        fn reference_alphabet(s in "[a-zA-Z0-9.:/@_\\[\\]-]{0,60}") {
            check(&s);
        }
    }
}

mod unpack {
    use super::*;
    use crate::unpack::unpack_layer;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    /// A ustar header block for `name` (and `link`), sealed with its checksum.
    fn header(flag: u8, name: &[u8], link: &[u8], size: u64, mode: u32) -> [u8; 512] {
        let mut b = [0u8; 512];
        let n = name.len().min(100);
        b[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        b[157..157 + l].copy_from_slice(&link[..l]);
        b[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
        b[108..116].copy_from_slice(b"0001750\0");
        b[116..124].copy_from_slice(b"0001750\0");
        b[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        b[136..148].copy_from_slice(b"14524140400\0");
        b[156] = flag;
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        b
    }

    /// Names that try to leave the layer: `..`, absolute names, the sentinel's name.
    fn name() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            Just("a"),
            Just("b"),
            Just(".."),
            Just("."),
            Just("sentinel"),
            Just("f"),
            Just(""),
            Just(".wh.a"),
            Just(".wh.f"),
            Just(".wh.sentinel"),
            Just(".wh..wh..opq"),
        ];
        (any::<bool>(), prop::collection::vec(part, 1..5)).prop_map(|(abs, parts)| {
            let s = parts.join("/");
            if abs { format!("/{s}") } else { s }
        })
    }

    #[derive(Debug, Clone)]
    enum E {
        Dir(String),
        File(String, Vec<u8>),
        Symlink(String, String),
        Hardlink(String, String),
    }

    fn entry() -> impl Strategy<Value = E> {
        prop_oneof![
            name().prop_map(E::Dir),
            (name(), prop::collection::vec(any::<u8>(), 0..600)).prop_map(|(n, d)| E::File(n, d)),
            (
                name(),
                prop_oneof![
                    name(),
                    Just("../sentinel".to_string()),
                    Just("/".to_string())
                ]
            )
                .prop_map(|(n, t)| E::Symlink(n, t)),
            (
                name(),
                prop_oneof![name(), Just("../sentinel/f".to_string())]
            )
                .prop_map(|(n, t)| E::Hardlink(n, t)),
        ]
    }

    fn archive(entries: &[E]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let (h, data): ([u8; 512], &[u8]) = match e {
                E::Dir(n) => (header(b'5', n.as_bytes(), b"", 0, 0o755), &[]),
                E::File(n, d) => (header(b'0', n.as_bytes(), b"", d.len() as u64, 0o644), d),
                E::Symlink(n, t) => (header(b'2', n.as_bytes(), t.as_bytes(), 0, 0o777), &[]),
                E::Hardlink(n, t) => (header(b'1', n.as_bytes(), t.as_bytes(), 0, 0o644), &[]),
            };
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    /// Every path under `dir` with its kind, size, mode, link count and link target.
    fn snapshot(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let mut names: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for p in names {
                let m = std::fs::symlink_metadata(&p).unwrap();
                let link = std::fs::read_link(&p).ok();
                out.push(format!(
                    "{} {:o} {} {} {:?} {}",
                    p.display(),
                    m.mode(),
                    m.len(),
                    m.nlink(),
                    link,
                    m.mtime()
                ));
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }

    fn check(bytes: &[u8]) {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path();
        let dest = top.join("dest");
        let sentinel = top.join("sentinel");
        std::fs::create_dir(&dest).unwrap();
        std::fs::create_dir(&sentinel).unwrap();
        std::fs::write(sentinel.join("f"), b"keep").unwrap();
        let before = snapshot(top);
        let _ = unpack_layer(bytes, &dest);
        let after: Vec<String> = snapshot(top)
            .into_iter()
            .filter(|l| {
                !l.starts_with(&format!("{}/", dest.display()))
                    && !l.starts_with(&format!("{} ", dest.display()))
            })
            .collect();
        let before: Vec<String> = before
            .into_iter()
            .filter(|l| {
                !l.starts_with(&format!("{}/", dest.display()))
                    && !l.starts_with(&format!("{} ", dest.display()))
            })
            .collect();
        assert_eq!(before, after, "the layer wrote outside its destination");
        assert_eq!(std::fs::read(sentinel.join("f")).unwrap(), b"keep");
    }

    proptest! {
        #![proptest_config(config(150))]

        #[test]
        fn hostile_archives_stay_inside(entries in prop::collection::vec(entry(), 1..8)) {
            check(&archive(&entries));
        }

        #[test]
        fn mutated_archives_stay_inside(
            entries in prop::collection::vec(entry(), 1..6),
            (flips, cut) in mutations(),
        ) {
            check(&mutate(archive(&entries), &flips, cut));
        }

        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            check(&bytes);
        }
    }
}
