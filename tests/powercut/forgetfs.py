#!/usr/bin/python3
"""forgetfs: a FUSE file system that forgets, on a power cut, every write that was not
made durable — the test a SIGKILL cannot give (a kill keeps what the page cache holds).

It passes everything through to a backing folder and keeps, beside it, the durable
state a disk would keep through a cut, with the rules of a journaling file system:
- a file's data is durable from its last fsync/fdatasync; a file never synced comes back
  empty (if its name survives at all);
- a folder's entries (create, rename, unlink) are durable from that folder's last fsync;
- everything present when the file system was mounted is durable.
Files and folders are followed by identity across renames, so a file written,
fsynced and then renamed comes back under its old name unless the folder was synced.

Usage: forgetfs.py BACKING MOUNTPOINT
  `mkdir MOUNTPOINT/.forgetfs-cut` is the cut: when it returns (EEXIST, and nothing is
  created) the backing folder has been rebuilt from the durable state (the processes
  using the mount must be dead first, as after a real cut). `mkdir .forgetfs-freeze`
  makes every write hang until `mkdir .forgetfs-thaw` (a disk that stops answering);
  `mkdir .forgetfs-slow-reads` makes every read take 40 ms more (an SD card reading a
  large file back).
  SIGTERM unmounts and exits.

Test harness only (tests/it/powercut.rs, operations.rs); needs Debian's python3-fusepy and /dev/fuse.
"""

import errno
import os
import shutil
import stat
import sys
import threading
import time

import fusepy as fuse


class ForgetFS(fuse.Operations):
    def __init__(self, backing):
        self.root = os.path.realpath(backing)
        self._mutex = threading.RLock()
        self.next_id = 1
        self.kind = {0: "dir"}  # id -> "dir" | "file" | "link"
        self.live = {"": 0}  # relative path -> id
        self.data = {}  # id -> bytes (durable content; absent: never synced)
        self.entries = {0: {}}  # dir id -> {name: id}, durable
        self.cuts = 0
        self.thawed = threading.Event()
        self.thawed.set()
        self.slow_reads = False
        self._adopt("", 0)

    # --- identity bookkeeping -------------------------------------------------------

    def _new(self, kind):
        i = self.next_id
        self.next_id += 1
        self.kind[i] = kind
        return i

    def _adopt(self, rel, dir_id):
        """Everything under `rel` at mount time is durable."""
        full = self._full(rel)
        for name in sorted(os.listdir(full)):
            child_rel = os.path.join(rel, name) if rel else name
            child_full = os.path.join(full, name)
            if os.path.islink(child_full):
                i = self._new("link")
                self.data[i] = os.readlink(child_full).encode()
            elif os.path.isdir(child_full):
                i = self._new("dir")
                self.entries[i] = {}
                self.live[child_rel] = i
                self._adopt(child_rel, i)
            else:
                i = self._new("file")
                with open(child_full, "rb") as f:
                    self.data[i] = f.read()
            self.live[child_rel] = i
            self.entries[dir_id][name] = i

    def _full(self, rel):
        return os.path.join(self.root, rel.lstrip("/"))

    @staticmethod
    def _rel(path):
        return path.lstrip("/")

    def _move_live(self, old, new):
        moved = {}
        for p, i in list(self.live.items()):
            if p == old or p.startswith(old + "/"):
                moved[new + p[len(old):]] = i
                del self.live[p]
        for p in [p for p in self.live if p == new or p.startswith(new + "/")]:
            del self.live[p]
        self.live.update(moved)

    # --- the cut --------------------------------------------------------------------

    def cut(self):
        with self._mutex:
            staging = self.root + ".cut"
            shutil.rmtree(staging, ignore_errors=True)
            os.mkdir(staging)
            live = {"": 0}
            self._rebuild(0, staging, "", live)
            for name in os.listdir(self.root):
                p = os.path.join(self.root, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
            for name in os.listdir(staging):
                os.rename(os.path.join(staging, name), os.path.join(self.root, name))
            os.rmdir(staging)
            self.live = live
            # Forget what neither the durable tree nor anything else refers to.
            reachable = set(live.values())
            self.data = {i: d for i, d in self.data.items() if i in reachable}
            self.entries = {i: e for i, e in self.entries.items() if i in reachable}
            self.cuts += 1
            print(f"cut {self.cuts}", flush=True)

    def _rebuild(self, dir_id, into, rel, live):
        for name, i in self.entries.get(dir_id, {}).items():
            target = os.path.join(into, name)
            child_rel = os.path.join(rel, name) if rel else name
            kind = self.kind.get(i)
            if kind == "dir":
                os.mkdir(target)
                self._rebuild(i, target, child_rel, live)
            elif kind == "link":
                os.symlink(self.data.get(i, b"").decode(), target)
            else:
                with open(target, "wb") as f:
                    f.write(self.data.get(i, b""))
            live[child_rel] = i

    # --- durability -----------------------------------------------------------------

    def fsync(self, path, datasync, fh):
        with self._mutex:
            os.fsync(fh)
            i = self.live.get(self._rel(path))
            if i is not None:
                with open(self._full(self._rel(path)), "rb") as f:
                    self.data[i] = f.read()
        return 0

    def fsyncdir(self, path, datasync, fh):
        with self._mutex:
            rel = self._rel(path)
            i = self.live.get(rel)
            if i is not None:
                full = self._full(rel)
                current = {}
                for name in os.listdir(full):
                    child_rel = os.path.join(rel, name) if rel else name
                    c = self.live.get(child_rel)
                    if c is not None:
                        current[name] = c
                self.entries[i] = current
        return 0

    # --- passthrough ----------------------------------------------------------------

    def getattr(self, path, fh=None):
        st = os.lstat(self._full(self._rel(path)))
        return {k: getattr(st, k) for k in (
            "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
            "st_uid", "st_ino")}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._full(self._rel(path)))

    def readlink(self, path):
        return os.readlink(self._full(self._rel(path)))

    def access(self, path, mode):
        if not os.access(self._full(self._rel(path)), mode):
            raise fuse.FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return os.chmod(self._full(self._rel(path)), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._full(self._rel(path)), uid, gid)

    def utimens(self, path, times=None):
        return os.utime(self._full(self._rel(path)), times)

    def statfs(self, path):
        s = os.statvfs(self._full(self._rel(path)))
        return {k: getattr(s, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    def mkdir(self, path, mode):
        with self._mutex:
            rel = self._rel(path)
            if rel == ".forgetfs-cut":
                self.cut()
                # Nothing is created: "exists" tells the caller the cut is done.
                raise fuse.FuseOSError(errno.EEXIST)
            if rel == ".forgetfs-slow-reads":
                self.slow_reads = True
                raise fuse.FuseOSError(errno.EEXIST)
            if rel in (".forgetfs-freeze", ".forgetfs-thaw"):
                # A disk that hangs (a dying card, a lost network file system): every
                # write waits until the thaw.
                if rel.endswith("freeze"):
                    self.thawed.clear()
                else:
                    self.thawed.set()
                raise fuse.FuseOSError(errno.EEXIST)
            os.mkdir(self._full(rel), mode)
            i = self._new("dir")
            self.entries[i] = {}
            self.live[rel] = i

    def rmdir(self, path):
        with self._mutex:
            rel = self._rel(path)
            os.rmdir(self._full(rel))
            self.live.pop(rel, None)

    def symlink(self, target, source):
        with self._mutex:
            rel = self._rel(target)
            os.symlink(source, self._full(rel))
            i = self._new("link")
            self.data[i] = source.encode()
            self.live[rel] = i

    def unlink(self, path):
        with self._mutex:
            rel = self._rel(path)
            os.unlink(self._full(rel))
            self.live.pop(rel, None)

    def rename(self, old, new):
        with self._mutex:
            o, n = self._rel(old), self._rel(new)
            os.rename(self._full(o), self._full(n))
            self._move_live(o, n)

    def link(self, target, source):
        raise fuse.FuseOSError(errno.EPERM)

    def mknod(self, path, mode, dev):
        with self._mutex:
            rel = self._rel(path)
            os.mknod(self._full(rel), mode, dev)
            self.live[rel] = self._new("file")

    def open(self, path, flags):
        return os.open(self._full(self._rel(path)), flags)

    def create(self, path, mode, fi=None):
        with self._mutex:
            rel = self._rel(path)
            # (the open flags are not passed down; read-write serves every caller)
            fd = os.open(self._full(rel), os.O_RDWR | os.O_CREAT, mode)
            if rel not in self.live:
                self.live[rel] = self._new("file")
            return fd

    def read(self, path, length, offset, fh):
        if self.slow_reads:
            time.sleep(0.04)
        os.lseek(fh, offset, os.SEEK_SET)
        return os.read(fh, length)

    def write(self, path, buf, offset, fh):
        self.thawed.wait()
        os.lseek(fh, offset, os.SEEK_SET)
        return os.write(fh, buf)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            with open(self._full(self._rel(path)), "r+b") as f:
                f.truncate(length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return os.close(fh)


def main():
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fs = ForgetFS(backing)
    fuse.FUSE(fs, mountpoint, foreground=True, nothreads=False, direct_io=True,
              attr_timeout=0, entry_timeout=0, allow_other=False)


if __name__ == "__main__":
    main()
