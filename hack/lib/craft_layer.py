#!/usr/bin/env python3
"""Write hand-made layer tars for hack/fixtures (uncompressed, for umoci raw add-layer).

Usage: craft_layer.py KIND OUT.tar [EXPECT.json]

KIND:
  special           file types, modes, owners, links and xattrs an unpacker must keep;
                    EXPECT.json lists every entry as the snapshot should show it
  dotdot            a file whose path climbs out of the root with ..
  absolute          a file with an absolute path (not hostile since Go's archive/tar
                    rules: it is relative to the layer root and must land inside it)
  symlink           a symlink to /tmp, then a file written through it
  symlink-relative  a symlink to ../../../../tmp, then a file written through it
  hardlink          a hard link to ../../../../../etc/passwd

The hostile kinds each carry one harmless file (`ok`) first, so an unpacker that
refuses the layer must also clean up what it already wrote. Their escape targets
are files named crust-hostile-* under /tmp, so a broken unpacker leaves an
obvious, harmless trace.
"""

import io
import json
import sys
import tarfile

MTIME = 1700000000  # fixed, so the layers are reproducible
OLD_MTIME = 981173106  # 2001-02-03T04:05:06Z, for the mtime check
LONG_DIR = "special/" + "/".join(["a-rather-long-directory-name"] * 5)


def entry(name, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, data=b"", **kw):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = kw.get("mtime", MTIME)
    info.linkname = kw.get("target", "")
    info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in kw.get("xattrs", {}).items()}
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def special():
    d, f, s, h = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    return [
        entry("special", d, 0o755),
        entry("special/owned", f, 0o640, 1000, 2000, b"owned\n"),
        entry("special/setuid", f, 0o4755, data=b"#!/bin/sh\necho setuid\n"),
        entry("special/setgid-dir", d, 0o2775, 0, 2000),
        entry("special/sticky-dir", d, 0o1777),
        entry("special/private-dir", d, 0o700, 1000, 1000),
        entry("special/hardlink-a", f, 0o644, data=b"linked\n"),
        entry("special/hardlink-b", h, 0o644, target="special/hardlink-a"),
        entry("special/symlink", s, 0o777, target="hardlink-a"),
        entry("special/abs-symlink", s, 0o777, target="/etc/passwd"),
        entry("special/dangling", s, 0o777, target="/does/not/exist"),
        entry("special/xattr", f, 0o644, data=b"xattr\n", xattrs={"user.crust": "fixture"}),
        entry("special/fifo", tarfile.FIFOTYPE, 0o644),
        entry("special/mtime", f, 0o644, data=b"old\n", mtime=OLD_MTIME),
        entry("special/empty", f, 0o644),
        entry("special/name with spaces and \u00fcn\u00efc\u00f6d\u00e9", f, 0o644, data=b"utf8\n"),
        entry(LONG_DIR, d, 0o755),
        entry(LONG_DIR + "/file", f, 0o644, data=b"long\n"),
    ]


def hostile(kind):
    d, f, s, h = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    ok = entry("ok", f, 0o644, data=b"ok\n")
    if kind == "dotdot":
        return [ok, entry("../../../../tmp/crust-hostile-dotdot", f, data=b"escaped\n")]
    if kind == "absolute":
        return [ok, entry("/tmp/crust-hostile-absolute", f, data=b"escaped\n")]
    if kind == "symlink":
        return [ok, entry("evil", s, 0o777, target="/tmp"),
                entry("evil/crust-hostile-symlink", f, data=b"escaped\n")]
    if kind == "symlink-relative":
        return [ok, entry("evil", s, 0o777, target="../../../../tmp"),
                entry("evil/crust-hostile-symlink-relative", f, data=b"escaped\n")]
    if kind == "hardlink":
        return [ok, entry("evil", h, 0o644, target="../../../../../etc/passwd")]
    raise SystemExit(f"craft_layer: unknown kind {kind}")


def describe(info):
    kinds = {tarfile.REGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
             tarfile.LNKTYPE: "hardlink", tarfile.FIFOTYPE: "fifo"}
    out = {"path": "/" + info.name, "type": kinds[info.type], "mode": f"{info.mode:04o}",
           "uid": info.uid, "gid": info.gid}
    if info.type == tarfile.REGTYPE:
        out["size"] = info.size
    if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        out["target"] = ("/" if info.type == tarfile.LNKTYPE else "") + info.linkname
    if info.type != tarfile.SYMTYPE:
        out["mtime"] = info.mtime
    xattrs = {k[len("SCHILY.xattr."):]: v for k, v in info.pax_headers.items()}
    if xattrs:
        out["xattrs"] = xattrs
    return out


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    kind, out = sys.argv[1], sys.argv[2]
    entries = special() if kind == "special" else hostile(kind)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, data)
    if len(sys.argv) == 4:
        with open(sys.argv[3], "w", encoding="utf-8") as fh:
            json.dump([describe(info) for info, _ in entries], fh, ensure_ascii=False)


if __name__ == "__main__":
    main()
