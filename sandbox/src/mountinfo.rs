//! Reading `/proc/self/mountinfo`: the one place that knows its escaping.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The text of this process's `/proc/self/mountinfo`.
pub fn read() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
}

/// The mount point of a mountinfo line (its fifth field), with the kernel's octal
/// escapes of space, tab, newline and backslash (`\040` ...) undone.
pub fn mount_point(line: &str) -> Option<PathBuf> {
    line.split(' ').nth(4).map(unescape)
}

fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        let line = "32 22 0:42 / /a\\040b\\011c\\134d rw shared:9 - tmpfs tmpfs rw";
        assert_eq!(mount_point(line), Some(PathBuf::from("/a b\tc\\d")));
        assert_eq!(
            mount_point("22 1 254:0 / / rw - ext4 /dev/vda rw"),
            Some(PathBuf::from("/"))
        );
        // A backslash not followed by three octal digits is kept.
        assert_eq!(
            mount_point("1 1 0:1 / /x\\9y rw - t t rw"),
            Some(PathBuf::from("/x\\9y"))
        );
        assert_eq!(mount_point("short line"), None);
    }
}
