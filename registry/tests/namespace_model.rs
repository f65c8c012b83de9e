//! Property test: the registry's namespace against a small in-memory model of POSIX
//! directory semantics. Random sequences of create, mkdir, rename (plain, no-replace,
//! exchange), link, unlink and rmdir run against both; every step must give the same
//! result (the same inode, or the same errno), and after every step the whole tree, link
//! counts and usage counters must agree. The namespace runs on a real RocksDB on disk.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use shoal_engine::{Durability, KvEngine, RocksEngine, RocksOptions};
use shoal_proto::errno::Errno;
use shoal_registry::command::{Command, CommandResult, NamespaceOp, Outcome, Proposal, VolumeSpec};
use shoal_registry::execute::execute;
use shoal_registry::keys::STATE_SPACES;
use shoal_registry::namespace::{self, ROOT_INO};
use shoal_registry::records::FileType;

const NAMES: &[&[u8]] = &[b"a", b"b", b"c", b"d", b".", b"..", b"x/y", b""];

#[derive(Clone, Debug)]
enum Op {
    Create {
        parent: usize,
        name: usize,
    },
    Mkdir {
        parent: usize,
        name: usize,
    },
    Unlink {
        parent: usize,
        name: usize,
    },
    Rmdir {
        parent: usize,
        name: usize,
    },
    Link {
        ino: usize,
        parent: usize,
        name: usize,
    },
    Rename {
        parent: usize,
        name: usize,
        new_parent: usize,
        new_name: usize,
        flags: u32,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let index = 0usize..64;
    let name = prop_oneof![8 => 0usize..4, 1 => 4usize..NAMES.len()];
    prop_oneof![
        3 => (index.clone(), name.clone()).prop_map(|(parent, name)| Op::Create { parent, name }),
        3 => (index.clone(), name.clone()).prop_map(|(parent, name)| Op::Mkdir { parent, name }),
        2 => (index.clone(), name.clone()).prop_map(|(parent, name)| Op::Unlink { parent, name }),
        2 => (index.clone(), name.clone()).prop_map(|(parent, name)| Op::Rmdir { parent, name }),
        2 => (index.clone(), index.clone(), name.clone()).prop_map(|(ino, parent, name)| Op::Link { ino, parent, name }),
        4 => (index.clone(), name.clone(), index, name, prop_oneof![4 => Just(0u32), 1 => Just(1u32), 1 => Just(2u32), 1 => Just(3u32)])
            .prop_map(|(parent, name, new_parent, new_name, flags)| Op::Rename { parent, name, new_parent, new_name, flags }),
    ]
}

/// Path → inode, and inode → (type, link count, parent directory).
type TreeSnapshot = (BTreeMap<Vec<u8>, u64>, BTreeMap<u64, (FileType, u32, u64)>);

#[derive(Clone, Debug)]
enum Node {
    Dir {
        entries: BTreeMap<Vec<u8>, u64>,
        parent: u64,
    },
    File {
        nlink: u32,
    },
}

/// POSIX directory semantics, written independently of the registry, with Shoal's
/// documented error precedence.
struct Model {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

type ModelResult = Result<Option<u64>, Errno>;

impl Model {
    fn new() -> Model {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node::Dir {
                entries: BTreeMap::new(),
                parent: ROOT_INO,
            },
        );
        Model { nodes, next_ino: 2 }
    }

    /// The inode an index picks: existing inodes in order, then some that never exist.
    fn pick(&self, index: usize) -> u64 {
        let mut inos: Vec<u64> = self.nodes.keys().copied().collect();
        inos.sort();
        inos.get(index % (inos.len() + 2))
            .copied()
            .unwrap_or(10_000 + index as u64)
    }

    fn valid_name(name: &[u8]) -> Result<(), Errno> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    fn dir(&self, ino: u64) -> Result<&BTreeMap<Vec<u8>, u64>, Errno> {
        match self.nodes.get(&ino) {
            None => Err(Errno::ENOENT),
            Some(Node::File { .. }) => Err(Errno::ENOTDIR),
            Some(Node::Dir { entries, .. }) => Ok(entries),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> &mut BTreeMap<Vec<u8>, u64> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir { entries, .. }) => entries,
            _ => panic!("model: {ino} is not a directory"),
        }
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(self.nodes.get(&ino), Some(Node::Dir { .. }))
    }

    fn parent_of(&self, ino: u64) -> u64 {
        match self.nodes[&ino] {
            Node::Dir { parent, .. } => parent,
            Node::File { .. } => panic!("files have no parent pointer"),
        }
    }

    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT_INO {
                return false;
            }
            ino = self.parent_of(ino);
        }
    }

    fn add(&mut self, parent: u64, name: &[u8], directory: bool) -> ModelResult {
        Self::valid_name(name)?;
        if self.dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = if directory {
            Node::Dir {
                entries: BTreeMap::new(),
                parent,
            }
        } else {
            Node::File { nlink: 1 }
        };
        self.nodes.insert(ino, node);
        self.dir_mut(parent).insert(name.to_vec(), ino);
        Ok(Some(ino))
    }

    fn drop_file_link(&mut self, ino: u64) {
        let Some(Node::File { nlink }) = self.nodes.get_mut(&ino) else {
            panic!("not a file")
        };
        *nlink -= 1;
        if *nlink == 0 {
            self.nodes.remove(&ino);
        }
    }

    fn unlink(&mut self, parent: u64, name: &[u8]) -> ModelResult {
        Self::valid_name(name)?;
        let ino = *self.dir(parent)?.get(name).ok_or(Errno::ENOENT)?;
        if self.is_dir(ino) {
            return Err(Errno::EISDIR);
        }
        self.dir_mut(parent).remove(name);
        self.drop_file_link(ino);
        Ok(Some(ino))
    }

    fn rmdir(&mut self, parent: u64, name: &[u8]) -> ModelResult {
        Self::valid_name(name)?;
        let ino = *self.dir(parent)?.get(name).ok_or(Errno::ENOENT)?;
        if !self.is_dir(ino) {
            return Err(Errno::ENOTDIR);
        }
        if !self.dir(ino)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.dir_mut(parent).remove(name);
        self.nodes.remove(&ino);
        Ok(None)
    }

    fn link(&mut self, ino: u64, parent: u64, name: &[u8]) -> ModelResult {
        Self::valid_name(name)?;
        match self.nodes.get(&ino) {
            None => return Err(Errno::ENOENT),
            Some(Node::Dir { .. }) => return Err(Errno::EPERM),
            Some(Node::File { .. }) => {}
        }
        if self.dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        self.dir_mut(parent).insert(name.to_vec(), ino);
        let Some(Node::File { nlink }) = self.nodes.get_mut(&ino) else {
            unreachable!()
        };
        *nlink += 1;
        Ok(Some(ino))
    }

    fn rename(&mut self, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8], flags: u32) -> ModelResult {
        if flags & !3 != 0 || flags == 3 {
            return Err(Errno::EINVAL);
        }
        Self::valid_name(name)?;
        Self::valid_name(new_name)?;
        self.dir(parent)?;
        self.dir(new_parent)?;
        let source = *self.dir(parent)?.get(name).ok_or(Errno::ENOENT)?;
        let target = self.dir(new_parent)?.get(new_name).copied();
        if flags == 2 {
            let target = target.ok_or(Errno::ENOENT)?;
            if source == target {
                return Ok(None);
            }
            if parent != new_parent {
                if self.is_dir(source) && self.is_ancestor(source, new_parent) {
                    return Err(Errno::EINVAL);
                }
                if self.is_dir(target) && self.is_ancestor(target, parent) {
                    return Err(Errno::EINVAL);
                }
            }
            self.dir_mut(parent).insert(name.to_vec(), target);
            self.dir_mut(new_parent).insert(new_name.to_vec(), source);
            if let Some(Node::Dir { parent: p, .. }) = self.nodes.get_mut(&source) {
                *p = new_parent;
            }
            if let Some(Node::Dir { parent: p, .. }) = self.nodes.get_mut(&target) {
                *p = parent;
            }
            return Ok(None);
        }
        if let Some(target) = target {
            if flags == 1 {
                return Err(Errno::EEXIST);
            }
            if target == source {
                return Ok(None);
            }
        }
        let source_dir = self.is_dir(source);
        if source_dir && parent != new_parent && self.is_ancestor(source, new_parent) {
            return Err(Errno::EINVAL);
        }
        let mut replaced = None;
        if let Some(target) = target {
            match (source_dir, self.is_dir(target)) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.dir(target)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            self.dir_mut(new_parent).remove(new_name);
            if self.is_dir(target) {
                self.nodes.remove(&target);
            } else {
                self.drop_file_link(target);
            }
            replaced = Some(target);
        }
        self.dir_mut(parent).remove(name);
        self.dir_mut(new_parent).insert(new_name.to_vec(), source);
        if let Some(Node::Dir { parent: p, .. }) = self.nodes.get_mut(&source) {
            *p = new_parent;
        }
        Ok(replaced)
    }
}

struct Real {
    engine: RocksEngine,
    volume_id: u64,
    clock_ns: i64,
}

impl Real {
    fn new(dir: &std::path::Path) -> Real {
        let engine = RocksEngine::open(dir, STATE_SPACES, &RocksOptions::default()).unwrap();
        let mut real = Real {
            engine,
            volume_id: 0,
            clock_ns: 1_000,
        };
        let spec = VolumeSpec {
            name: "model".into(),
            replicas: 1,
            quota_bytes: 0,
            quota_inodes: 0,
            stripe_width: 1,
            chunk_size_bytes: 0,
            root_uid: 0,
            root_gid: 0,
            root_mode: 0o755,
        };
        match real.run(Command::CreateVolume { spec }) {
            Ok(Outcome::Volume(info)) => real.volume_id = info.record.id,
            other => panic!("cannot create the test volume: {other:?}"),
        }
        real
    }

    fn run(&mut self, command: Command) -> CommandResult {
        self.clock_ns += 1;
        let proposal = Proposal {
            request_id: None,
            now_ns: self.clock_ns,
            command,
        };
        let (batch, result) = execute(&self.engine, &proposal).expect("no storage fault");
        self.engine.write(batch, Durability::Buffered).unwrap();
        result
    }

    fn op(&mut self, op: NamespaceOp) -> Result<Option<u64>, Errno> {
        let volume_id = self.volume_id;
        match self.run(Command::Namespace { volume_id, op }) {
            Ok(Outcome::Attr(attr)) => Ok(Some(attr.ino)),
            Ok(Outcome::Unlinked { ino, .. }) => Ok(Some(ino)),
            Ok(Outcome::Renamed { replaced }) => Ok(replaced.map(|(ino, _)| ino)),
            Ok(Outcome::Done) => Ok(None),
            Ok(other) => panic!("unexpected outcome {other:?}"),
            Err(error) => Err(error.errno),
        }
    }

    /// Walks the real tree from the root: (path → ino), and ino → (type, nlink, parent).
    fn snapshot(&self) -> TreeSnapshot {
        let mut paths = BTreeMap::new();
        let mut inodes = BTreeMap::new();
        let mut stack = vec![(Vec::new(), ROOT_INO)];
        while let Some((path, dir)) = stack.pop() {
            let attr = namespace::getattr(&self.engine, self.volume_id, dir).unwrap();
            inodes.insert(dir, (attr.inode.file_type, attr.inode.nlink, attr.inode.parent));
            let mut cookie = 0;
            loop {
                let listing = namespace::readdir(&self.engine, self.volume_id, dir, cookie, 3, true).unwrap();
                for entry in &listing.entries {
                    let mut child = path.clone();
                    child.push(b'/');
                    child.extend_from_slice(&entry.name);
                    paths.insert(child.clone(), entry.ino);
                    let inode = entry.attr.as_ref().unwrap();
                    assert_eq!(inode.file_type, entry.file_type, "entry type disagrees with inode");
                    if entry.file_type == FileType::Directory {
                        stack.push((child, entry.ino));
                    } else {
                        inodes.insert(entry.ino, (inode.file_type, inode.nlink, 0));
                    }
                    cookie = entry.cookie;
                }
                if listing.end_of_directory {
                    break;
                }
            }
        }
        (paths, inodes)
    }
}

fn model_snapshot(model: &Model) -> TreeSnapshot {
    let mut paths = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    let mut stack = vec![(Vec::new(), ROOT_INO)];
    while let Some((path, dir)) = stack.pop() {
        let Node::Dir { entries, parent } = &model.nodes[&dir] else {
            unreachable!()
        };
        let subdirs = entries.values().filter(|ino| model.is_dir(**ino)).count() as u32;
        inodes.insert(dir, (FileType::Directory, 2 + subdirs, *parent));
        for (name, ino) in entries {
            let mut child = path.clone();
            child.push(b'/');
            child.extend_from_slice(name);
            paths.insert(child.clone(), *ino);
            match &model.nodes[ino] {
                Node::Dir { .. } => stack.push((child, *ino)),
                Node::File { nlink } => {
                    inodes.insert(*ino, (FileType::Regular, *nlink, 0));
                }
            }
        }
    }
    (paths, inodes)
}

fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut real = Real::new(dir.path());
    let mut model = Model::new();
    for (step, op) in ops.iter().enumerate() {
        let (expected, actual) = match op.clone() {
            Op::Create { parent, name } => {
                let parent = model.pick(parent);
                let name = NAMES[name];
                (
                    model.add(parent, name, false),
                    real.op(NamespaceOp::Create {
                        parent,
                        name: name.to_vec(),
                        file_type: FileType::Regular,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        rdev: 0,
                        exclusive: true,
                    }),
                )
            }
            Op::Mkdir { parent, name } => {
                let parent = model.pick(parent);
                let name = NAMES[name];
                (
                    model.add(parent, name, true),
                    real.op(NamespaceOp::Mkdir {
                        parent,
                        name: name.to_vec(),
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    }),
                )
            }
            Op::Unlink { parent, name } => {
                let parent = model.pick(parent);
                let name = NAMES[name];
                (
                    model.unlink(parent, name),
                    real.op(NamespaceOp::Unlink {
                        parent,
                        name: name.to_vec(),
                    }),
                )
            }
            Op::Rmdir { parent, name } => {
                let parent = model.pick(parent);
                let name = NAMES[name];
                (
                    model.rmdir(parent, name),
                    real.op(NamespaceOp::Rmdir {
                        parent,
                        name: name.to_vec(),
                    }),
                )
            }
            Op::Link { ino, parent, name } => {
                let ino = model.pick(ino);
                let parent = model.pick(parent);
                let name = NAMES[name];
                (
                    model.link(ino, parent, name),
                    real.op(NamespaceOp::Link {
                        ino,
                        new_parent: parent,
                        new_name: name.to_vec(),
                    }),
                )
            }
            Op::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => {
                let parent = model.pick(parent);
                let new_parent = model.pick(new_parent);
                let (name, new_name) = (NAMES[name], NAMES[new_name]);
                (
                    model.rename(parent, name, new_parent, new_name, flags),
                    real.op(NamespaceOp::Rename {
                        parent,
                        name: name.to_vec(),
                        new_parent,
                        new_name: new_name.to_vec(),
                        flags,
                    }),
                )
            }
        };
        prop_assert_eq!(&actual, &expected, "step {}: {:?}", step, op);
        let (real_paths, real_inodes) = real.snapshot();
        let (model_paths, model_inodes) = model_snapshot(&model);
        prop_assert_eq!(real_paths, model_paths, "tree differs after step {}: {:?}", step, op);
        prop_assert_eq!(real_inodes, model_inodes, "inodes differ after step {}: {:?}", step, op);
        let usage = shoal_registry::cluster::volume_info(&real.engine, real.volume_id)
            .unwrap()
            .usage;
        prop_assert_eq!(
            usage.used_inodes,
            model.nodes.len() as u64,
            "inode count after step {}",
            step
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 2000, .. ProptestConfig::default() })]

    #[test]
    fn namespace_matches_posix_model(ops in proptest::collection::vec(op_strategy(), 1..120)) {
        check(ops)?;
    }
}
