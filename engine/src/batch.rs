/// One change inside a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        space: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        space: &'static str,
        key: Vec<u8>,
    },
    /// Removes every key in `[start, end)`.
    DeleteRange {
        space: &'static str,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// A set of changes applied atomically by [`crate::KvEngine::write`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
    size_bytes: usize,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, space: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let (key, value) = (key.into(), value.into());
        self.size_bytes += key.len() + value.len();
        self.ops.push(BatchOp::Put { space, key, value });
    }

    pub fn delete(&mut self, space: &'static str, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.size_bytes += key.len();
        self.ops.push(BatchOp::Delete { space, key });
    }

    pub fn delete_range(&mut self, space: &'static str, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        let (start, end) = (start.into(), end.into());
        assert!(start <= end, "delete_range with start after end");
        self.size_bytes += start.len() + end.len();
        self.ops.push(BatchOp::DeleteRange { space, start, end });
    }

    /// Moves every operation of `other` to the end of this batch.
    pub fn append(&mut self, mut other: WriteBatch) {
        self.size_bytes += other.size_bytes;
        self.ops.append(&mut other.ops);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Bytes of keys and values carried, a bound callers use to cap batch memory.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}
