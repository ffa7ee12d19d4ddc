#!/usr/bin/env python3
"""Write a directory tree as a layer tar with Python's tarfile (for hack/lib/interop.sh).

Usage: interop_tarfile.py FORMAT TREE OUT.tar

FORMAT is gnu, pax or ustar (tarfile's GNU_FORMAT, PAX_FORMAT, USTAR_FORMAT).
Entries are TREE's, relative to it, with numeric owners; tarfile itself turns
repeated inodes into hard links. pax also records user.* xattrs
(SCHILY.xattr.*), gives corpus/hello a fractional mtime, corpus/app/owned a
uname and gname, and adds corpus/big-uid with uid and gid 3000000, which only
PAX records can hold.
"""

import io
import os
import sys
import tarfile

FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}
BIG_ID = 3000000  # more than the 2097151 of 7 octal digits
EXCLUDE = {
    # ustar cannot hold a link target over 100 bytes.
    "ustar": {"corpus/symlink-long"},
}


def pax_extras(path, info):
    """Records only PAX can carry; path is the file on disk."""
    if info.type != tarfile.SYMTYPE:
        for name in os.listxattr(path, follow_symlinks=False):
            if name.startswith("user."):
                value = os.getxattr(path, name, follow_symlinks=False)
                info.pax_headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    if info.name == "corpus/hello":
        info.mtime += 0.25
    if info.name == "corpus/app/owned":
        info.pax_headers.update(uname="crust-app", gname="crust-app")


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in FORMATS:
        raise SystemExit(__doc__)
    fmt, tree, out = sys.argv[1:]
    exclude = EXCLUDE.get(fmt, set())
    with tarfile.open(out, "w", format=FORMATS[fmt]) as tar:
        for top, dirs, files in os.walk(tree):
            dirs.sort()
            for name in sorted(dirs + files):
                path = os.path.join(top, name)
                arcname = os.path.relpath(path, tree)
                if arcname in exclude:
                    continue
                info = tar.gettarinfo(path, arcname)
                info.uname = info.gname = ""
                if fmt == "pax":
                    pax_extras(path, info)
                if info.isreg():
                    with open(path, "rb") as data:
                        tar.addfile(info, data)
                else:
                    tar.addfile(info)
        if fmt == "pax":
            big = tarfile.TarInfo("corpus/big-uid")
            data = b"uid and gid 3000000, in PAX records\n"
            big.size, big.mode, big.mtime = len(data), 0o644, 1700000000
            big.uid = big.gid = BIG_ID
            tar.addfile(big, io.BytesIO(data))


if __name__ == "__main__":
    main()
