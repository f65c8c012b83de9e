//! Access times. The kernel leaves atime to a FUSE file system: it drops its cached atime
//! after each read and asks again. The mount applies the atime mode to the registry's
//! attributes on each read and listing it serves, with an access-only change that leaves
//! ctime alone.

use shoal_client::proto as pb;

use crate::core::{AtimeMode, FsCore};

/// relatime updates an atime at least this old even if the file did not change.
const RELATIME_MAX_AGE_NS: i64 = 24 * 3600 * 1_000_000_000;

fn now_ns() -> i64 {
    crate::attrs::time_ns(std::time::SystemTime::now())
}

/// Linux's `relatime_need_update`.
fn relatime_wants_update(attr: &pb::Attr, now_ns: i64) -> bool {
    attr.atime_ns <= attr.mtime_ns || attr.atime_ns <= attr.ctime_ns || now_ns - attr.atime_ns >= RELATIME_MAX_AGE_NS
}

impl FsCore {
    /// True if a read of a file with `attr` would update its atime. Open then drops the
    /// kernel's cached pages of the file, so the first read reaches the mount (a read the
    /// page cache answers is never seen here).
    pub(crate) fn atime_wanted(&self, attr: &pb::Attr) -> bool {
        match self.config.atime {
            _ if self.config.read_only => false,
            AtimeMode::NoAtime => false,
            AtimeMode::RelAtime => relatime_wants_update(attr, now_ns()),
            AtimeMode::StrictAtime => true,
        }
    }

    /// Records a read or listing of `ino` as the atime mode asks. Failures are logged, not
    /// returned: the read itself succeeded.
    pub(crate) async fn accessed(&self, ino: u64) {
        let Some(attr) = self.inodes.attr(ino) else {
            return;
        };
        if !self.atime_wanted(&attr) {
            return;
        }
        let request = pb::SetAttrRequest {
            volume_id: self.volume_id,
            ino,
            access_only: true,
            ..Default::default()
        };
        match self.registry().set_attr(request).await {
            Ok(attr) => {
                self.inodes.remember(&attr);
            }
            Err(error) => tracing::debug!(ino, %error, "could not record an access time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relatime_updates_after_a_change_or_a_day() {
        let attr = |atime_ns, mtime_ns, ctime_ns| pb::Attr {
            atime_ns,
            mtime_ns,
            ctime_ns,
            ..Default::default()
        };
        assert!(
            relatime_wants_update(&attr(10, 10, 5), 20),
            "changed at the last access"
        );
        assert!(relatime_wants_update(&attr(10, 5, 12), 20), "inode changed since");
        assert!(
            !relatime_wants_update(&attr(10, 5, 5), 20),
            "read since the last change"
        );
        assert!(
            relatime_wants_update(&attr(10, 5, 5), 10 + RELATIME_MAX_AGE_NS),
            "a day old"
        );
    }
}
