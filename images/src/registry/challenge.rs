//! `WWW-Authenticate` challenges: how a registry's 401 says it wants to be authorized
//! (RFC 9110 §11.6.1; the distribution token spec's `Bearer realm,service,scope`).

use std::collections::HashMap;

/// A challenge from `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The token service URL.
    pub realm: String,
    /// The `service` parameter, if given.
    pub service: Option<String>,
    /// The `scope` parameter, if given.
    pub scope: Option<String>,
}

/// The challenges of one `WWW-Authenticate` value, each its scheme (lower case) and
/// parameters (names lower case): `Basic realm="a", Bearer realm = "b", service=c` is
/// two. After a comma, a name followed by `=` is a parameter, anything else the scheme of
/// the next challenge (RFC 9110 §11.6.1; token68 credentials are not expected here).
fn parse_challenges(header: &str) -> Vec<(String, HashMap<String, String>)> {
    let c: Vec<char> = header.chars().collect();
    let n = c.len();
    let skip_ws = |mut i: usize| {
        while i < n && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut out: Vec<(String, HashMap<String, String>)> = Vec::new();
    let mut i = 0;
    loop {
        while i < n && (c[i] == ',' || c[i].is_whitespace()) {
            i += 1;
        }
        if i >= n {
            break;
        }
        let start = i;
        while i < n && !c[i].is_whitespace() && c[i] != ',' && c[i] != '=' {
            i += 1;
        }
        let token: String = c[start..i].iter().collect::<String>().to_ascii_lowercase();
        let j = skip_ws(i);
        if j < n && c[j] == '=' && !token.is_empty() {
            i = skip_ws(j + 1);
            let mut value = String::new();
            if i < n && c[i] == '"' {
                i += 1;
                while i < n {
                    match c[i] {
                        '\\' if i + 1 < n => {
                            value.push(c[i + 1]);
                            i += 2;
                            continue;
                        }
                        '"' => {
                            i += 1;
                            break;
                        }
                        ch => value.push(ch),
                    }
                    i += 1;
                }
            } else {
                while i < n && c[i] != ',' {
                    value.push(c[i]);
                    i += 1;
                }
                value = value.trim().to_string();
            }
            // A parameter before any scheme belongs to nothing.
            if let Some((_, params)) = out.last_mut() {
                params.insert(token, value);
            }
        } else if token.is_empty() {
            // A stray '=': skip it.
            i = j + 1;
        } else {
            out.push((token, HashMap::new()));
            i = j;
        }
    }
    out
}

/// Parses the `Bearer` challenge of a `WWW-Authenticate` value (`Bearer realm="…",
/// service="…"`), also among other challenges in the same value; `None` without one
/// with a realm.
pub fn parse_bearer_challenge(header: &str) -> Option<Challenge> {
    parse_challenges(header)
        .into_iter()
        .filter(|(scheme, _)| scheme == "bearer")
        .find_map(|(_, mut params)| {
            Some(Challenge {
                realm: params.remove("realm").filter(|r| !r.is_empty())?,
                service: params.remove("service"),
                scope: params.remove("scope"),
            })
        })
}

pub fn is_basic_challenge(header: &str) -> bool {
    parse_challenges(header)
        .iter()
        .any(|(scheme, _)| scheme == "basic")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert_eq!(c.scope.as_deref(), Some("repository:a/b:pull,push"));
        let c = parse_bearer_challenge(r#"bearer  realm=http://x/t , service="s\"q""#).unwrap();
        assert_eq!(
            (c.realm.as_str(), c.service.as_deref()),
            ("http://x/t", Some("s\"q"))
        );
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(parse_bearer_challenge(r#"Bearer service="x""#).is_none());
        let c = parse_bearer_challenge(r#"Bearer realm = "https://a/t" , service= "s""#).unwrap();
        assert_eq!(
            (c.realm.as_str(), c.service.as_deref()),
            ("https://a/t", Some("s"))
        );
        // Two challenges in one value: the Bearer one is found, whatever comes first.
        let two = r#"Basic realm="a", Bearer realm="https://b/t",service="x",scope="repository:p:pull repository:q:pull""#;
        let c = parse_bearer_challenge(two).unwrap();
        assert_eq!(c.realm, "https://b/t");
        assert_eq!(c.service.as_deref(), Some("x"));
        assert_eq!(
            c.scope.as_deref(),
            Some("repository:p:pull repository:q:pull")
        );
        assert!(is_basic_challenge(two));
        let c = parse_bearer_challenge(r#"Bearer realm="https://b/t", Basic realm="a""#).unwrap();
        assert_eq!((c.realm.as_str(), c.service), ("https://b/t", None));
        assert!(is_basic_challenge(r#"Basic realm="Registry Realm""#));
        assert!(is_basic_challenge("basic"));
        assert!(!is_basic_challenge(r#"Bearer realm="x""#));
    }
}

/// Property-based fuzzing of `WWW-Authenticate` parsing (docs/testing.md, "Fuzzing").
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::config;
    use proptest::prelude::*;

    /// RFC 9110 token characters.
    const TOKEN: &str = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}";

    #[derive(Debug, Clone)]
    enum Value {
        Token(String),
        Quoted(String),
    }

    fn challenge() -> impl Strategy<Value = (String, Vec<(String, Value)>)> {
        let value = prop_oneof![
            TOKEN.prop_map(Value::Token),
            ".{0,20}".prop_map(Value::Quoted),
        ];
        (
            prop_oneof![
                Just("Bearer".to_string()),
                Just("basic".to_string()),
                TOKEN.prop_map(String::from)
            ],
            prop::collection::vec(
                (
                    prop_oneof![Just("realm".to_string()), TOKEN.prop_map(String::from)],
                    value,
                ),
                0..4,
            ),
        )
    }

    fn render(challenges: &[(String, Vec<(String, Value)>)], ws: &str) -> String {
        challenges
            .iter()
            .map(|(scheme, params)| {
                let params: Vec<String> = params
                    .iter()
                    .map(|(k, v)| match v {
                        Value::Token(t) => format!("{k}{ws}={ws}{t}"),
                        Value::Quoted(q) => {
                            let q = q.replace('\\', "\\\\").replace('"', "\\\"");
                            format!("{k}{ws}={ws}\"{q}\"")
                        }
                    })
                    .collect();
                if params.is_empty() {
                    scheme.clone()
                } else {
                    format!("{scheme} {}", params.join(&format!("{ws},{ws}")))
                }
            })
            .collect::<Vec<_>>()
            .join(&format!("{ws},{ws}"))
    }

    proptest! {
        #![proptest_config(config(3000))]

        #[test]
        fn arbitrary_header_values(s in ".{0,120}") {
            let _ = parse_bearer_challenge(&s);
            let _ = is_basic_challenge(&s);
        }

        #[test]
        fn challenge_alphabet(s in "[A-Za-z =,\"\\\\\t]{0,80}") {
            let _ = parse_challenges(&s);
        }

        #[test]
        fn well_formed_challenges_parse(
            challenges in prop::collection::vec(challenge(), 1..4),
            ws in prop_oneof![Just(""), Just(" "), Just(" \t ")],
        ) {
            let header = render(&challenges, ws);
            let got = parse_challenges(&header);
            prop_assert_eq!(got.len(), challenges.len(), "{}", header);
            for ((scheme, params), (want_scheme, want)) in got.iter().zip(&challenges) {
                prop_assert_eq!(scheme, &want_scheme.to_ascii_lowercase());
                let mut expect = HashMap::new();
                for (k, v) in want {
                    let v = match v {
                        Value::Token(t) | Value::Quoted(t) => t.clone(),
                    };
                    expect.insert(k.to_ascii_lowercase(), v);
                }
                prop_assert_eq!(params, &expect, "{}", header);
            }
            let bearer = challenges
                .iter()
                .zip(&got)
                .filter(|((s, _), _)| s.eq_ignore_ascii_case("bearer"))
                .find_map(|(_, (_, p))| p.get("realm").filter(|r| !r.is_empty()).cloned());
            prop_assert_eq!(parse_bearer_challenge(&header).map(|c| c.realm), bearer);
        }
    }
}
