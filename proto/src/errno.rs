//! File-system errors on the wire: a Linux errno in gRPC status metadata.
//!
//! Why errno and not only gRPC codes: the FUSE client must hand the kernel exactly the errno
//! a local file system would (ENOTEMPTY, EXDEV, EDQUOT ...). gRPC's sixteen codes cannot
//! carry that, so the errno travels in the `shoal-errno` metadata key and the status code is
//! only a coarse hint for generic gRPC tooling.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Metadata key carrying the errno of a failed namespace call.
pub const ERRNO_METADATA_KEY: &str = "shoal-errno";

/// The errno values Shoal returns. Numbers are Linux's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(i32)]
pub enum Errno {
    EPERM = 1,
    ENOENT = 2,
    EIO = 5,
    E2BIG = 7,
    EBADF = 9,
    EAGAIN = 11,
    EACCES = 13,
    EBUSY = 16,
    EEXIST = 17,
    EXDEV = 18,
    ENOTDIR = 20,
    EISDIR = 21,
    EINVAL = 22,
    EFBIG = 27,
    ENOSPC = 28,
    EROFS = 30,
    EMLINK = 31,
    ERANGE = 34,
    ENAMETOOLONG = 36,
    ENOSYS = 38,
    ENOTEMPTY = 39,
    ELOOP = 40,
    ENODATA = 61,
    EOVERFLOW = 75,
    ENOTSUP = 95,
    ETIMEDOUT = 110,
    ESTALE = 116,
    EDQUOT = 122,
}

impl Errno {
    const ALL: [Errno; 28] = [
        Errno::EPERM,
        Errno::ENOENT,
        Errno::EIO,
        Errno::E2BIG,
        Errno::EBADF,
        Errno::EAGAIN,
        Errno::EACCES,
        Errno::EBUSY,
        Errno::EEXIST,
        Errno::EXDEV,
        Errno::ENOTDIR,
        Errno::EISDIR,
        Errno::EINVAL,
        Errno::EFBIG,
        Errno::ENOSPC,
        Errno::EROFS,
        Errno::EMLINK,
        Errno::ERANGE,
        Errno::ENAMETOOLONG,
        Errno::ENOSYS,
        Errno::ENOTEMPTY,
        Errno::ELOOP,
        Errno::ENODATA,
        Errno::EOVERFLOW,
        Errno::ENOTSUP,
        Errno::ETIMEDOUT,
        Errno::ESTALE,
        Errno::EDQUOT,
    ];

    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Errno> {
        Self::ALL.into_iter().find(|errno| errno.code() == code)
    }

    fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Errno::ENOENT | Errno::ENODATA => Code::NotFound,
            Errno::EEXIST => Code::AlreadyExists,
            Errno::EINVAL | Errno::E2BIG | Errno::ENAMETOOLONG | Errno::EFBIG | Errno::ERANGE | Errno::EOVERFLOW => {
                Code::InvalidArgument
            }
            Errno::EDQUOT | Errno::ENOSPC | Errno::EMLINK => Code::ResourceExhausted,
            Errno::EPERM | Errno::EACCES | Errno::EROFS => Code::PermissionDenied,
            Errno::ENOSYS | Errno::ENOTSUP => Code::Unimplemented,
            Errno::EIO => Code::Internal,
            Errno::EAGAIN | Errno::EBUSY => Code::Unavailable,
            Errno::ETIMEDOUT => Code::DeadlineExceeded,
            _ => Code::FailedPrecondition,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A file-system error: the errno a caller acts on and a message a human reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{errno}: {message}")]
pub struct FsError {
    pub errno: Errno,
    pub message: String,
}

impl FsError {
    pub fn new(errno: Errno, message: impl Into<String>) -> Self {
        FsError {
            errno,
            message: message.into(),
        }
    }

    /// The gRPC status that carries this error.
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.errno.grpc_code(), self.message.clone());
        status.metadata_mut().insert(
            ERRNO_METADATA_KEY,
            self.errno
                .code()
                .to_string()
                .parse()
                .expect("a decimal number is valid metadata"),
        );
        status
    }

    /// The file-system error a status carries, if it carries one.
    pub fn from_status(status: &tonic::Status) -> Option<FsError> {
        let code: i32 = status.metadata().get(ERRNO_METADATA_KEY)?.to_str().ok()?.parse().ok()?;
        Some(FsError {
            errno: Errno::from_code(code)?,
            message: status.message().to_string(),
        })
    }
}

impl From<FsError> for tonic::Status {
    fn from(error: FsError) -> Self {
        error.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_errno_round_trips_through_a_status() {
        for errno in Errno::ALL {
            let error = FsError::new(errno, format!("volume 3 inode 9: {errno}"));
            let back = FsError::from_status(&error.to_status()).expect("errno metadata present");
            assert_eq!(back, error);
        }
    }

    #[test]
    fn status_without_errno_is_not_a_file_system_error() {
        assert_eq!(FsError::from_status(&tonic::Status::unavailable("down")), None);
    }
}
