//! The file-system operations, grouped by what they touch. Each is an async method on
//! [`FsCore`](crate::core::FsCore) that answers the kernel through its reply object.

mod atime;
mod dirs;
mod entries;
mod files;
mod privileges;
mod xattrs;

use fuser::Errno;
use shoal_client::ClientError;

pub use entries::{Caller, NewEntry, SetAttrArgs};
pub use files::WriteRequest;
pub use xattrs::CapabilityCache;

pub(crate) fn fail(error: &ClientError) -> Errno {
    crate::attrs::errno(error)
}
