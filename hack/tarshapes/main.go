// tarshapes writes a directory tree as a layer tar with Go's archive/tar, in
// one of the shapes other tools do not make: odd endings, odd names, PAX
// global headers, base-256 numbers, hard-link target spellings. hack/fixtures
// (hack/lib/interop.sh) turns each into a crust/interop:go-<shape> image.
//
// Usage: tarshapes SHAPE TREE OUT.tar
//
// Every shape holds the entries of TREE (paths relative to it, parents before
// children, in lexical order; owners, modes, devices, symlinks, hard links and
// user.* xattrs as on disk), plus what the shape adds:
//
//	plain             nothing: archive/tar's own output, closed normally
//	no-eoa            a last file, then padding but no end-of-archive blocks
//	unpadded          a last file whose data ends the tar: no padding, no
//	                  end blocks
//	one-zero-block    a last file, then a single zero block
//	trailing-data     a normal end, then a header and data of a file that
//	                  must not appear, and text
//	names             "/", "." and "./" first; "/etc/x" and "./a/../b" last
//	implicit-parents  tmp/implicit-parent and new/sub/file, with no entry for
//	                  their directories: /tmp is in the layer below (1777),
//	                  new/ nowhere
//	pax-global        a PAX global header first
//	base256           corpus/big-ids with uid and gid 3000000, GNU format, so
//	                  both are base-256 numbers
//	hardlinks         hard links to bin/sh (a regular file TREE must have)
//	                  spelled /bin/sh, ./bin/sh and bin/sh
//	hardlink-lower    corpus/busybox-hardlink, a hard link to bin/busybox,
//	                  which is not in this layer but in the one below
package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The time of entries the shapes add (tree entries keep their own).
var epoch = time.Unix(1700000000, 0)

// lastFile is the entry whose end is the end of the tar in the shapes about
// endings; its size is not a multiple of 512, so it needs padding.
const lastFile = "corpus/last-entry"

var lastData = []byte("the last entry of this layer\n")

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: tarshapes SHAPE TREE OUT.tar")
		os.Exit(2)
	}
	out, err := write(os.Args[1], os.Args[2])
	if err == nil {
		err = os.WriteFile(os.Args[3], out, 0o644)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "tarshapes %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func write(shape, tree string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	switch shape {
	case "names":
		for _, name := range []string{"/", ".", "./"} {
			if err := tw.WriteHeader(dir(name)); err != nil {
				return nil, err
			}
		}
	case "pax-global":
		err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeXGlobalHeader,
			PAXRecords: map[string]string{
				"comment":       "crust interop corpus: a PAX global header",
				"crust.interop": "global",
			},
		})
		if err != nil {
			return nil, err
		}
	case "hardlinks":
		if fi, err := os.Lstat(filepath.Join(tree, "bin/sh")); err != nil || !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s/bin/sh must be a regular file", tree)
		}
	}
	if err := writeTree(tw, tree); err != nil {
		return nil, err
	}
	switch shape {
	case "plain", "pax-global", "trailing-data":
	case "no-eoa", "unpadded", "one-zero-block":
		if err := file(tw, lastFile, lastData, nil); err != nil {
			return nil, err
		}
	case "names":
		for _, name := range []string{"/etc/x", "./a/../b"} {
			if err := file(tw, name, []byte(name+"\n"), nil); err != nil {
				return nil, err
			}
		}
	case "implicit-parents":
		for _, name := range []string{"tmp/implicit-parent", "new/sub/file"} {
			if err := file(tw, name, []byte(name+"\n"), nil); err != nil {
				return nil, err
			}
		}
	case "base256":
		err := file(tw, "corpus/big-ids", []byte("uid and gid 3000000\n"), func(h *tar.Header) {
			h.Uid, h.Gid = 3000000, 3000000
			h.Format = tar.FormatGNU
		})
		if err != nil {
			return nil, err
		}
	case "hardlink-lower":
		h := &tar.Header{Typeflag: tar.TypeLink, Name: "corpus/busybox-hardlink", Linkname: "bin/busybox", Mode: 0o755, ModTime: epoch}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
	case "hardlinks":
		for _, l := range [][2]string{
			{"corpus/hardlink-absolute", "/bin/sh"},
			{"corpus/hardlink-dot", "./bin/sh"},
			{"corpus/hardlink-plain", "bin/sh"},
		} {
			h := &tar.Header{Typeflag: tar.TypeLink, Name: l[0], Linkname: l[1], Mode: 0o755, ModTime: epoch}
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
		}
	default:
		return nil, fmt.Errorf("unknown shape")
	}
	return end(shape, tw, &buf)
}

// end finishes the archive as the shape wants it.
func end(shape string, tw *tar.Writer, buf *bytes.Buffer) ([]byte, error) {
	switch shape {
	case "no-eoa", "one-zero-block", "unpadded":
		// Flush pads the last file's data to a block; Close would add the
		// two zero blocks.
		if err := tw.Flush(); err != nil {
			return nil, err
		}
		out := buf.Bytes()
		switch shape {
		case "one-zero-block":
			out = append(out, make([]byte, 512)...)
		case "unpadded":
			out = out[:len(out)-(512-len(lastData)%512)%512]
		}
		return out, nil
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if shape == "trailing-data" {
		// Another archive after the end: a reader stops at the end blocks.
		var after bytes.Buffer
		aw := tar.NewWriter(&after)
		if err := file(aw, "corpus/after-the-end", []byte("must not be unpacked\n"), nil); err != nil {
			return nil, err
		}
		if err := aw.Close(); err != nil {
			return nil, err
		}
		buf.Write(after.Bytes())
		buf.WriteString("and some text that is not a tar at all\n")
	}
	return buf.Bytes(), nil
}

func dir(name string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch}
}

func file(tw *tar.Writer, name string, data []byte, edit func(*tar.Header)) error {
	h := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}
	if edit != nil {
		edit(h)
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

type inode struct{ dev, ino uint64 }

// writeTree writes every entry under root (not root itself).
func writeTree(tw *tar.Writer, root string) error {
	seen := map[inode]string{}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var target string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		// Numeric owners only; atime and ctime are not layer content.
		h.Uname, h.Gname = "", ""
		h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			key := inode{uint64(st.Dev), st.Ino}
			if first, ok := seen[key]; ok {
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
			} else {
				seen[key] = h.Name
			}
		}
		if err := addXattrs(h, p); err != nil {
			return err
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if _, err := tw.Write(data); err != nil {
				return err
			}
		}
		return nil
	})
}

// addXattrs records the user.* xattrs of p as SCHILY.xattr PAX records.
func addXattrs(h *tar.Header, p string) error {
	if h.Typeflag == tar.TypeSymlink {
		return nil // Listxattr would follow it
	}
	names := make([]byte, 4096)
	n, err := syscall.Listxattr(p, names)
	if err != nil || n == 0 {
		return nil // no xattrs, or a file system without them
	}
	for _, name := range strings.Split(strings.TrimRight(string(names[:n]), "\x00"), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		value := make([]byte, 4096)
		vn, err := syscall.Getxattr(p, name, value)
		if err != nil {
			return fmt.Errorf("%s: xattr %s: %w", p, name, err)
		}
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+name] = string(value[:vn])
	}
	return nil
}
