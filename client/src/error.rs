use shoal_proto::errno::{Errno, FsError};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registry refused the operation with a file-system error.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// No registry leader completed the call within the deadline.
    #[error(
        "{operation}: gave up after {waited_ms} ms ({attempts} attempts); last error: {last_error}. Check that {addresses} are running and reachable"
    )]
    Unavailable {
        operation: String,
        attempts: u32,
        waited_ms: u64,
        last_error: String,
        addresses: String,
    },
    /// The registry rejected the request itself (malformed, or an internal failure).
    #[error("{operation}: {status}")]
    Rejected { operation: String, status: tonic::Status },
    /// The client was configured with something unusable.
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The errno a file system should report for this error.
    pub fn errno(&self) -> Errno {
        match self {
            ClientError::Fs(error) => error.errno,
            ClientError::Unavailable { .. } => Errno::EIO,
            ClientError::Rejected { status, .. } if status.code() == tonic::Code::InvalidArgument => Errno::EINVAL,
            ClientError::Rejected { .. } | ClientError::Config(_) => Errno::EIO,
        }
    }

    pub fn fs_error(&self) -> Option<&FsError> {
        match self {
            ClientError::Fs(error) => Some(error),
            _ => None,
        }
    }
}
