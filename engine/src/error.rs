use std::path::PathBuf;

/// A failure of the storage engine, with the place it happened.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("storage engine at {path}: {operation} failed: {message}")]
    Engine {
        path: PathBuf,
        operation: &'static str,
        message: String,
    },
    #[error("storage engine at {path}: unknown key space {space:?} (known: {known})")]
    UnknownSpace {
        path: PathBuf,
        space: String,
        known: String,
    },
}
