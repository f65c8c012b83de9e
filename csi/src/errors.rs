//! Registry and agent errors as the gRPC codes the CSI specification names.

use shoal_client::{ClientError, Errno};
use tonic::{Code, Status};

/// A registry call's failure, as a CSI status; `what` names the request.
pub fn from_registry(what: &str, error: ClientError) -> Status {
    let code = match &error {
        ClientError::Fs(fs) => match fs.errno {
            Errno::ENOENT => Code::NotFound,
            Errno::EEXIST => Code::AlreadyExists,
            Errno::EINVAL | Errno::ENAMETOOLONG => Code::InvalidArgument,
            Errno::ENOSPC | Errno::EDQUOT => Code::ResourceExhausted,
            _ => Code::Internal,
        },
        ClientError::Unavailable { .. } => Code::Unavailable,
        ClientError::Rejected { status, .. } => status.code(),
        ClientError::Config(_) => Code::FailedPrecondition,
    };
    Status::new(code, format!("{what}: {error}"))
}

/// True if a registry error says the thing asked for does not exist.
pub fn is_not_found(error: &ClientError) -> bool {
    matches!(error, ClientError::Fs(fs) if fs.errno == Errno::ENOENT)
}

pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}
