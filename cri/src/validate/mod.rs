//! Validation of CRI requests at the edge, before anything on the node changes.
//!
//! Every rule that needs only the request lives here, one file per kind of
//! request; checks that need the node (a host path exists, the image's user
//! exists, a sysctl is namespaced, the cgroup driver accepts a parent) stay
//! where that knowledge is, in `crust-sandbox`. A refused request is
//! InvalidArgument with a message that starts with the field's path in the
//! CRI message (`metadata.name: …`), and shows request strings escaped and
//! shortened, never raw.
//!
//! The limits follow Kubernetes (apimachinery's validation) wherever kubelet
//! is held to them too, so nothing kubelet legitimately sends is refused:
//! pod names are DNS-1123 subdomains (253), namespaces and container names
//! DNS-1123 labels (63) — letters of either case, as crictl users write
//! them —, label and annotation keys qualified names, annotations 256 KiB in
//! all. Beyond that, what cannot work or is dangerous is refused: control
//! characters in names, keys and paths (they reach CNI, file names and logs),
//! paths longer than the kernel takes, negative or out-of-range resources.

pub mod container;
pub mod image;
pub mod pod;
pub mod resources;
pub mod security;
pub mod streaming;

use std::collections::HashMap;
use std::fmt::Display;

use crate::error::{CriError, CriResult};

/// Longest path the kernel takes (PATH_MAX, with its NUL).
pub const MAX_PATH: usize = 4095;
/// Longest file name (NAME_MAX).
pub const MAX_NAME: usize = 255;
/// DNS-1123 label.
pub const MAX_LABEL: usize = 63;
/// DNS-1123 subdomain.
pub const MAX_SUBDOMAIN: usize = 253;
/// Sum of the sizes of all annotation keys and values (apimachinery's TotalAnnotationSizeLimitB).
pub const MAX_ANNOTATIONS_SIZE: usize = 256 * 1024;

/// The InvalidArgument of a field.
pub(crate) fn invalid(field: impl Display, problem: impl Display) -> CriError {
    CriError::InvalidArgument(format!("{field}: {problem}"))
}

/// A request string as it may appear in a message or log: escaped, and cut
/// after 64 characters.
pub fn shown(s: &str) -> String {
    const KEEP: usize = 64;
    match s.char_indices().nth(KEEP) {
        None => format!("{s:?}"),
        Some((at, _)) => format!("{:?}… ({} bytes)", &s[..at], s.len()),
    }
}

/// No control character (NUL, newline, ESC, DEL, C1 …) anywhere in `s`.
pub(crate) fn no_control(field: impl Display, s: &str) -> CriResult<()> {
    match s.chars().find(|c| c.is_control()) {
        None => Ok(()),
        Some(c) => Err(invalid(
            field,
            format!(
                "{} contains the control character U+{:04X}",
                shown(s),
                c as u32
            ),
        )),
    }
}

/// Printable text of at most `max` bytes.
pub(crate) fn text(field: impl Display, s: &str, max: usize) -> CriResult<()> {
    no_control(&field, s)?;
    if s.len() > max {
        return Err(invalid(
            field,
            format!("{} is longer than {max} bytes", shown(s)),
        ));
    }
    Ok(())
}

/// Letters (either case), digits and '-', starting and ending with a letter or digit.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A DNS-1123 label (RFC 1123, as apimachinery's IsDNS1123Label, either case): 1 to 63 bytes.
pub(crate) fn dns_label(field: impl Display, s: &str) -> CriResult<()> {
    text(&field, s, MAX_LABEL)?;
    if !is_dns_label(s) {
        return Err(invalid(
            field,
            format!(
                "{} must be 1 to {MAX_LABEL} letters, digits or '-', starting and ending \
                 with a letter or digit",
                shown(s)
            ),
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain (apimachinery's IsDNS1123Subdomain, either case): 1 to 253 bytes
/// of dot-separated labels.
pub(crate) fn dns_subdomain(field: impl Display, s: &str) -> CriResult<()> {
    text(&field, s, MAX_SUBDOMAIN)?;
    if s.is_empty() || !s.split('.').all(is_dns_label) {
        return Err(invalid(
            field,
            format!(
                "{} must be 1 to {MAX_SUBDOMAIN} letters, digits, '-' or '.', each \
                 dot-separated part starting and ending with a letter or digit",
                shown(s)
            ),
        ));
    }
    Ok(())
}

/// A qualified name (apimachinery's IsQualifiedName): `[prefix/]name`, the prefix a
/// DNS subdomain, the name 1 to 63 letters, digits, '-', '_', '.' starting and ending
/// with a letter or digit.
pub(crate) fn qualified_name(field: impl Display, key: &str) -> CriResult<()> {
    no_control(&field, key)?;
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > MAX_SUBDOMAIN || !p.split('.').all(is_dns_label))
    {
        return Err(invalid(
            field,
            format!("the prefix of {} must be a DNS subdomain", shown(key)),
        ));
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric();
    if !ok {
        return Err(invalid(
            field,
            format!(
                "{} must be a qualified name: [prefix/]name, name 1 to {MAX_LABEL} letters, \
                 digits, '-', '_' or '.', starting and ending with a letter or digit",
                shown(key)
            ),
        ));
    }
    Ok(())
}

/// Labels: qualified-name keys; values printable and at most 253 bytes (apimachinery
/// allows 63, but kubelet puts the pod's name, up to 253, in `io.kubernetes.pod.name`).
pub(crate) fn labels(field: &str, labels: &HashMap<String, String>) -> CriResult<()> {
    for (k, v) in labels {
        qualified_name(format!("{field} key"), k)?;
        text(format!("{field}[{}]", shown(k)), v, MAX_SUBDOMAIN)?;
    }
    Ok(())
}

/// Annotations: qualified-name keys, at most 256 KiB of keys and values in all. Values
/// are free text (JSON, with newlines): they are stored and returned, never interpreted.
pub(crate) fn annotations(field: &str, annotations: &HashMap<String, String>) -> CriResult<()> {
    let mut size = 0;
    for (k, v) in annotations {
        qualified_name(format!("{field} key"), k)?;
        size += k.len() + v.len();
    }
    if size > MAX_ANNOTATIONS_SIZE {
        return Err(invalid(
            field,
            format!("{size} bytes in all, more than the {MAX_ANNOTATIONS_SIZE} allowed"),
        ));
    }
    Ok(())
}

/// A path: printable, at most PATH_MAX bytes, no component longer than NAME_MAX.
fn path(field: impl Display, p: &str) -> CriResult<()> {
    text(&field, p, MAX_PATH)?;
    if let Some(c) = p.split('/').find(|c| c.len() > MAX_NAME) {
        return Err(invalid(
            field,
            format!(
                "the path component {} is longer than {MAX_NAME} bytes",
                shown(c)
            ),
        ));
    }
    Ok(())
}

/// An absolute path on the host or in the container.
pub(crate) fn absolute_path(field: impl Display, p: &str) -> CriResult<()> {
    path(&field, p)?;
    if !p.starts_with('/') {
        return Err(invalid(
            field,
            format!("{} must be an absolute path", shown(p)),
        ));
    }
    Ok(())
}

/// A path below a directory: relative, and never climbing out with `..`.
pub(crate) fn relative_path_below(field: impl Display, p: &str, below: &str) -> CriResult<()> {
    path(&field, p)?;
    if p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return Err(invalid(
            field,
            format!("{} must be relative to {below}, without '..'", shown(p)),
        ));
    }
    Ok(())
}

/// An enum value the CRI API defines (prost keeps unknown numbers, and `field()` would
/// quietly read them as the default).
pub(crate) fn known<E: TryFrom<i32>>(field: impl Display, v: i32) -> CriResult<E> {
    E::try_from(v).map_err(|_| invalid(field, format!("{v} is not a value the CRI API defines")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: CriResult<()>) -> String {
        match r {
            Err(CriError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn control_characters_are_refused_and_shown_escaped() {
        let m = msg(no_control("metadata.name", "a\0b"));
        assert!(m.starts_with("metadata.name: \"a\\0b\""), "{m}");
        assert!(m.contains("U+0000"), "{m}");
        for bad in ["a\nb", "\x1b[31m", "x\x7f", "x\u{85}"] {
            assert!(no_control("f", bad).is_err(), "{bad:?}");
        }
        assert!(no_control("f", "ünïcode ok").is_ok());
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let m = msg(dns_label("metadata.name", &"x".repeat(10_000)));
        assert!(m.contains("(10000 bytes)"), "{m}");
        assert!(m.len() < 200, "{m}");
    }

    #[test]
    fn dns_names() {
        for ok in ["a", "web-0", "A1", &"x".repeat(63)] {
            assert!(dns_label("f", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", "a b", &"x".repeat(64)] {
            assert!(dns_label("f", bad).is_err(), "{bad}");
        }
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        for ok in ["kube-apiserver-node1.example.com", "Nginx", &long] {
            assert!(dns_subdomain("f", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "a/b", "a;b=c", &format!("{long}x")] {
            assert!(dns_subdomain("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn qualified_names_as_apimachinery() {
        for ok in [
            "app",
            "io.kubernetes.pod.name",
            "kubernetes.io/config.seen",
            "a_b",
            "example.com/A-b_c.d",
        ] {
            assert!(qualified_name("f", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "_a",
            "a b",
            "a/b/c",
            "bad_prefix/x",
            &"x".repeat(64),
            "a\nb",
        ] {
            assert!(qualified_name("f", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn annotation_size_is_bounded_and_values_are_free() {
        let mut a = HashMap::from([("k".to_string(), "{\n \"json\": 1\n}\n".to_string())]);
        assert!(annotations("annotations", &a).is_ok());
        a.insert("big".into(), "x".repeat(MAX_ANNOTATIONS_SIZE));
        assert!(msg(annotations("annotations", &a)).contains("262144"));
    }

    #[test]
    fn label_values_up_to_a_pod_name() {
        let mut l = HashMap::from([("io.kubernetes.pod.name".to_string(), "p".repeat(253))]);
        assert!(labels("labels", &l).is_ok());
        l.insert("x".into(), "a\nb".into());
        assert!(labels("labels", &l).is_err());
    }

    #[test]
    fn paths() {
        assert!(absolute_path("f", "/var/log/pods/x").is_ok());
        assert!(absolute_path("f", "var/log").is_err());
        assert!(absolute_path("f", &format!("/{}", "x".repeat(256))).is_err());
        assert!(absolute_path("f", &"/x".repeat(2048)).is_err());
        assert!(relative_path_below("f", "c/0.log", "d").is_ok());
        for bad in ["/abs.log", "../x.log", "c/../../x.log", "c/\0.log"] {
            assert!(relative_path_below("f", bad, "d").is_err(), "{bad:?}");
        }
        // ".." inside a name is only a name.
        assert!(relative_path_below("f", "c/a..b.log", "d").is_ok());
    }

    #[test]
    fn unknown_enum_values() {
        use k8s_cri::v1::NamespaceMode;
        assert!(known::<NamespaceMode>("f", 2).is_ok());
        assert!(msg(known::<NamespaceMode>("f", 7).map(|_| ())).contains("7"));
    }
}
