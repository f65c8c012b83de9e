//! The `fuser::Filesystem` adapter: every request's arguments are copied out of the
//! kernel's buffer and the work runs as a task on the tokio runtime, so requests are served
//! in parallel; the session loop only parses and dispatches.

use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use fuser::{
    BsdFileFlags, FileHandle, Filesystem, FopenFlags, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::core::FsCore;
use crate::ops::{Caller, NewEntry, SetAttrArgs, WriteRequest};

/// Largest read and write request the kernel sends (its own ceiling is 1 MiB).
pub const MAX_IO_BYTES: u32 = 1 << 20;
/// Asynchronous requests (write-back, read-ahead) the kernel keeps in flight.
const MAX_BACKGROUND_REQUESTS: u16 = 64;
const CONGESTION_THRESHOLD: u16 = 48;

pub struct ShoalFs {
    core: Arc<FsCore>,
}

impl ShoalFs {
    pub fn new(core: Arc<FsCore>) -> ShoalFs {
        ShoalFs { core }
    }

    fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<FsCore>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let core = self.core.clone();
        let permits = core.in_flight.clone();
        self.core.runtime.spawn(async move {
            // Bounded: at most max_in_flight requests run at once; the rest wait here.
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            work(core).await;
        });
    }
}

fn bytes(name: &OsStr) -> Bytes {
    Bytes::copy_from_slice(name.as_bytes())
}

fn new_entry(request: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32) -> NewEntry {
    NewEntry {
        parent: parent.0,
        name: bytes(name),
        mode: mode & !umask & 0o7777,
        file_type_mode: mode,
        caller: caller(request),
    }
}

fn caller(request: &Request) -> Caller {
    Caller {
        uid: request.uid(),
        gid: request.gid(),
        pid: request.pid(),
    }
}

impl Filesystem for ShoalFs {
    fn init(&mut self, _request: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_IO_BYTES);
        let _ = config.set_max_background(MAX_BACKGROUND_REQUESTS);
        let _ = config.set_congestion_threshold(CONGESTION_THRESHOLD);
        let mut wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_ASYNC_DIO;
        if self.core.config.kernel_writeback_cache && !self.core.config.read_only {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = bytes(name);
        self.spawn(move |core| async move { core.lookup(parent.0, name, reply).await });
    }

    fn getattr(&self, _request: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(move |core| async move { core.getattr(ino.0, reply).await });
    }

    fn setattr(
        &self,
        request: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let args = SetAttrArgs {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            caller: caller(request),
        };
        self.spawn(move |core| async move { core.setattr(ino.0, args, reply).await });
    }

    fn readlink(&self, _request: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |core| async move { core.readlink(ino.0, reply).await });
    }

    fn mknod(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let entry = new_entry(request, parent, name, mode, umask);
        self.spawn(move |core| async move { core.mknod(entry, rdev, reply).await });
    }

    fn mkdir(&self, request: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let entry = new_entry(request, parent, name, mode, umask);
        self.spawn(move |core| async move { core.mkdir(entry, reply).await });
    }

    fn unlink(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = bytes(name);
        self.spawn(move |core| async move { core.unlink(parent.0, name, reply).await });
    }

    fn rmdir(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = bytes(name);
        self.spawn(move |core| async move { core.rmdir(parent.0, name, reply).await });
    }

    fn symlink(&self, request: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (name, target, caller) = (bytes(link_name), bytes(target.as_os_str()), caller(request));
        self.spawn(move |core| async move { core.symlink(parent.0, name, target, caller, reply).await });
    }

    fn rename(
        &self,
        _request: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, new_name) = (bytes(name), bytes(new_name));
        self.spawn(move |core| async move { core.rename(parent.0, name, new_parent.0, new_name, flags, reply).await });
    }

    fn link(&self, _request: &Request, ino: INodeNo, new_parent: INodeNo, new_name: &OsStr, reply: ReplyEntry) {
        let new_name = bytes(new_name);
        self.spawn(move |core| async move { core.link(ino.0, new_parent.0, new_name, reply).await });
    }

    fn open(&self, _request: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(move |core| async move { core.open(ino.0, flags.0, reply).await });
    }

    fn read(
        &self,
        _request: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(move |core| async move { core.read(ino.0, fh.0, offset, size, reply).await });
    }

    fn write(
        &self,
        request: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let write = WriteRequest {
            ino: ino.0,
            fh: fh.0,
            offset,
            data: Bytes::copy_from_slice(data),
            // Set by the kernel on direct writes of a process without CAP_FSETID.
            kill_set_id: write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID),
            direct: flags.0 & libc::O_DIRECT != 0,
            caller: caller(request),
        };
        self.spawn(move |core| async move { core.write(write, reply).await });
    }

    fn flush(&self, _request: &Request, ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        self.spawn(move |core| async move { core.flush(ino.0, fh.0, Some(lock_owner.0), reply).await });
    }

    fn release(
        &self,
        _request: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |core| async move { core.release(ino.0, fh.0, reply).await });
    }

    fn fsync(&self, _request: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(move |core| async move { core.flush(ino.0, fh.0, None, reply).await });
    }

    fn opendir(&self, _request: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Counted like open files: a directory removed or replaced while open here stays
        // stat-able through its descriptors until they close.
        self.core.inodes.opened_directory(ino.0);
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn releasedir(&self, _request: &Request, ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.core.inodes.closed_directory(ino.0);
        reply.ok();
    }

    fn readdir(&self, _request: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        self.spawn(move |core| async move { core.readdir(ino.0, offset, reply).await });
    }

    fn readdirplus(&self, _request: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus) {
        self.spawn(move |core| async move { core.readdirplus(ino.0, offset, reply).await });
    }

    fn fsyncdir(&self, _request: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Directory changes are durable in the registry when they are acknowledged.
        reply.ok();
    }

    fn statfs(&self, _request: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(move |core| async move { core.statfs(reply).await });
    }

    fn setxattr(
        &self,
        _request: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (bytes(name), Bytes::copy_from_slice(value));
        self.spawn(move |core| async move { core.setxattr(ino.0, name, value, flags, reply).await });
    }

    fn getxattr(&self, _request: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = bytes(name);
        self.spawn(move |core| async move { core.getxattr(ino.0, name, size, reply).await });
    }

    fn listxattr(&self, _request: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn(move |core| async move { core.listxattr(ino.0, size, reply).await });
    }

    fn removexattr(&self, _request: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = bytes(name);
        self.spawn(move |core| async move { core.removexattr(ino.0, name, reply).await });
    }

    fn create(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let entry = new_entry(request, parent, name, mode, umask);
        self.spawn(move |core| async move { core.create(entry, flags, reply).await });
    }

    fn fallocate(
        &self,
        request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let caller = caller(request);
        self.spawn(move |core| async move { core.fallocate(ino.0, offset, length, mode, caller, reply).await });
    }
}
