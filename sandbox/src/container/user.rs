//! Who a container's process runs as: the CRI security context and the image's
//! USER, resolved in the image's own /etc/passwd and /etc/group (never the host's).

use std::path::Path;

/// A resolved user: uid, primary gid, and every additional gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The user's name when /etc/passwd knows it.
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("invalid user spec {0:?}")]
    Invalid(String),
}

/// What asks for a user, strongest first: the CRI security context, then the
/// image's `USER` (`name`, `uid`, `name:group`, `uid:gid`).
#[derive(Debug, Default, Clone)]
pub struct UserRequest<'a> {
    pub run_as_user: Option<u32>,
    pub run_as_username: &'a str,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: &'a [u32],
    pub image_user: &'a str,
    /// SupplementalGroupsPolicy Strict: only the groups the request names, none
    /// merged from the image's /etc/group (Merge, the default, adds them).
    pub strict_groups: bool,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Reads `etc/passwd` and `etc/group` under `rootfs`. A file that is absent is
/// empty: numeric users still work, names do not.
pub fn read_user_db(rootfs: &Path) -> (String, String) {
    // The rootfs is the container's: a symlinked /etc/passwd could point
    // anywhere on the host, so read only regular files.
    let read = |rel: &str| {
        let p = rootfs.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_file() => std::fs::read_to_string(&p).unwrap_or_default(),
            _ => String::new(),
        }
    };
    (read("etc/passwd"), read("etc/group"))
}

/// Resolves the request against the given passwd and group file contents.
pub fn resolve(
    req: &UserRequest<'_>,
    passwd: &str,
    group: &str,
) -> Result<ResolvedUser, UserError> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group);

    // The user part and an optional group part.
    let (user_part, group_part): (UserPart, Option<String>) = if let Some(uid) = req.run_as_user {
        (UserPart::Uid(uid), None)
    } else if !req.run_as_username.is_empty() {
        (UserPart::Name(req.run_as_username.to_string()), None)
    } else if !req.image_user.is_empty() {
        let (u, g) = match req.image_user.split_once(':') {
            Some((u, g)) => (u, Some(g.to_string())),
            None => (req.image_user, None),
        };
        if u.is_empty() {
            return Err(UserError::Invalid(req.image_user.to_string()));
        }
        let part = match u.parse::<u32>() {
            Ok(uid) => UserPart::Uid(uid),
            Err(_) => UserPart::Name(u.to_string()),
        };
        (part, g)
    } else {
        (UserPart::Uid(0), None)
    };

    let (uid, mut gid, name) = match user_part {
        UserPart::Uid(uid) => match users.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.clone())),
            // A numeric uid need not exist; its group is then its own number's
            // group 0, as Docker and containerd do.
            None => (uid, 0, None),
        },
        UserPart::Name(n) => match users.iter().find(|e| e.name == n) {
            Some(e) => (e.uid, e.gid, Some(n)),
            None => return Err(UserError::UnknownUser(n)),
        },
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or(UserError::UnknownGroup(g))?,
        };
    }
    if let Some(g) = req.run_as_group {
        gid = g;
    }

    let mut additional: Vec<u32> = Vec::new();
    if let Some(n) = name.as_ref().filter(|_| !req.strict_groups) {
        for g in groups.iter().filter(|g| g.members.iter().any(|m| m == n)) {
            if g.gid != gid && !additional.contains(&g.gid) {
                additional.push(g.gid);
            }
        }
    }
    for &g in req.supplemental_groups {
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        name,
    })
}

enum UserPart {
    Uid(u32),
    Name(String),
}

/// The ids a running process has: its effective uid and gid and its
/// supplemental groups (what ContainerStatus.user reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Parses `/proc/<pid>/status`: `Uid:`/`Gid:` carry real, effective, saved and
/// filesystem ids; `Groups:` the supplemental ones.
pub fn parse_process_ids(status: &str) -> Option<ProcessIds> {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().filter_map(|x| x.parse::<u32>().ok()))
    };
    Some(ProcessIds {
        uid: field("Uid:")?.nth(1)?,
        gid: field("Gid:")?.nth(1)?,
        groups: field("Groups:")?.collect(),
    })
}

/// The ids process `pid` runs with, as the host's /proc shows them; None when
/// it is gone.
pub fn process_ids(pid: u32) -> Option<ProcessIds> {
    parse_process_ids(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app,root\nnogroup:x:65534:\n";

    fn r(req: UserRequest<'_>) -> Result<ResolvedUser, UserError> {
        resolve(&req, PASSWD, GROUP)
    }

    #[test]
    fn default_is_root() {
        let u = r(UserRequest::default()).expect("root");
        assert_eq!((u.uid, u.gid), (0, 0));
        assert_eq!(u.additional_gids, vec![10]);
    }

    #[test]
    fn image_user_by_name_and_uid_gid() {
        let u = r(UserRequest {
            image_user: "app",
            ..Default::default()
        })
        .expect("app");
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![10]);
        let u = r(UserRequest {
            image_user: "1000:65534",
            ..Default::default()
        })
        .expect("uid:gid");
        assert_eq!((u.uid, u.gid), (1000, 65534));
        let u = r(UserRequest {
            image_user: "app:wheel",
            ..Default::default()
        })
        .expect("name:group");
        assert_eq!((u.uid, u.gid), (1000, 10));
    }

    #[test]
    fn security_context_wins_over_image() {
        let u = r(UserRequest {
            run_as_user: Some(65534),
            run_as_group: Some(5),
            supplemental_groups: &[7, 8],
            image_user: "app",
            ..Default::default()
        })
        .expect("resolves");
        assert_eq!((u.uid, u.gid), (65534, 5));
        assert_eq!(u.additional_gids, vec![7, 8]);
        let u = r(UserRequest {
            run_as_username: "nobody",
            image_user: "app",
            ..Default::default()
        })
        .expect("resolves");
        assert_eq!((u.uid, u.gid), (65534, 65534));
    }

    #[test]
    fn unknown_numeric_uid_is_fine_unknown_name_is_not() {
        let u = r(UserRequest {
            run_as_user: Some(4242),
            ..Default::default()
        })
        .expect("numeric");
        assert_eq!((u.uid, u.gid), (4242, 0));
        assert_eq!(
            r(UserRequest {
                run_as_username: "ghost",
                ..Default::default()
            }),
            Err(UserError::UnknownUser("ghost".into()))
        );
        assert_eq!(
            r(UserRequest {
                image_user: "app:ghosts",
                ..Default::default()
            }),
            Err(UserError::UnknownGroup("ghosts".into()))
        );
    }

    #[test]
    fn strict_keeps_only_the_requested_groups() {
        let req = |strict_groups| UserRequest {
            image_user: "app",
            supplemental_groups: &[7],
            strict_groups,
            ..Default::default()
        };
        // Merge: wheel (10) from /etc/group, then the request's.
        assert_eq!(r(req(false)).expect("merge").additional_gids, vec![10, 7]);
        let u = r(req(true)).expect("strict");
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![7]);
    }

    #[test]
    fn process_ids_are_the_effective_ones() {
        let status = "Name:\tsh\nUid:\t1000\t1001\t1000\t1001\nGid:\t5\t6\t5\t6\nGroups:\t7 10 \n";
        assert_eq!(
            parse_process_ids(status),
            Some(ProcessIds {
                uid: 1001,
                gid: 6,
                groups: vec![7, 10]
            })
        );
        assert_eq!(
            parse_process_ids("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n").map(|p| p.groups),
            Some(vec![])
        );
        assert_eq!(parse_process_ids("Name: x\n"), None);
        let me = process_ids(std::process::id()).expect("own ids");
        assert_eq!(me.uid, nix::unistd::geteuid().as_raw());
    }

    #[test]
    fn symlinked_passwd_is_not_followed() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("etc")).expect("mkdir");
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/passwd")).expect("link");
        let (passwd, _) = read_user_db(d.path());
        assert!(passwd.is_empty());
    }
}
