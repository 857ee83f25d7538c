//! Plugin isolation with cgroup v2, where a subtree is delegated to the agent.
//!
//! ```text
//! <dir>/                      the agent's delegated cgroup (systemd Delegate=yes), or cgroup_dir
//! <dir>/agent/                the agent itself (moved here first: no internal processes)
//! <dir>/plugins/              +memory +cpu in cgroup.subtree_control when <dir> has them
//! <dir>/plugins/<name>/       one plugin and everything it starts; memory.max, cpu.max
//! ```
//!
//! [`Isolation::set_up`] finds the subtree (the `0::<path>` line of
//! `/proc/self/cgroup` under the cgroup2 mount of `/proc/self/mountinfo`,
//! unless `cgroup_dir` names it), moves the agent into its `agent` leaf,
//! enables the memory and cpu controllers it has for the plugins, and says
//! which mode is in force: `cgroup`, or `process_group` (and why). A plugin
//! joins its cgroup between `fork` and `exec` ([`join_in_child`]), so
//! nothing it starts can escape it; stopping it ends with `cgroup.kill`,
//! which also reaches daemons that left its process group with `setsid`,
//! and its cgroup is removed once empty. Cgroups a killed agent left under
//! `<dir>/plugins/` are killed and removed when the next one starts
//! ([`CgroupTree::clear_leftovers`]).
//!
//! A limit whose controller the subtree lacks is reported as not in force,
//! never claimed: see [`LimitState`].

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{PluginIsolation, PluginLimits};

/// The agent's own leaf under its cgroup directory.
const AGENT_LEAF: &str = "agent";
/// The parent of the plugins' cgroups under the agent's cgroup directory.
const PLUGINS_DIR: &str = "plugins";
/// `cpu.max` period, in microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// How often a killed cgroup is checked for being empty.
const EMPTY_POLL: Duration = Duration::from_millis(5);
const PROC_CGROUP: &str = "/proc/self/cgroup";
const MOUNTINFO: &str = "/proc/self/mountinfo";

// ---------------------------------------------------------------- limits

/// A configured limit value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting} {value:?}: {problem}")]
pub struct LimitError {
    /// `memory_max` or `cpu_max`.
    pub setting: &'static str,
    /// The value as given.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

fn limit_error(setting: &'static str, value: impl fmt::Display, problem: String) -> LimitError {
    LimitError {
        setting,
        value: value.to_string(),
        problem,
    }
}

/// A plugin's memory cap (`memory.max` of its cgroup), in bytes.
///
/// Configured as an integer number of bytes or as a string with a binary
/// suffix: `"250M"` = 250 MiB. At least 1 MiB.
///
/// ```
/// use herd_agent::MemoryMax;
///
/// assert_eq!("250M".parse::<MemoryMax>()?.bytes(), 250 * 1024 * 1024);
/// assert_eq!("1g".parse::<MemoryMax>()?.bytes(), 1 << 30);
/// assert!("250".parse::<MemoryMax>().is_err()); // 250 bytes: surely a mistake
/// # Ok::<(), herd_agent::LimitError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryMax(u64);

impl MemoryMax {
    /// The smallest accepted cap, in bytes.
    pub const MIN_BYTES: u64 = 1 << 20;

    /// A cap of `bytes`, at least [`Self::MIN_BYTES`].
    pub fn from_bytes(bytes: u64) -> Result<Self, LimitError> {
        if bytes < Self::MIN_BYTES {
            return Err(limit_error(
                "memory_max",
                bytes,
                format!(
                    "at least 1M ({} bytes); a number is bytes, write e.g. \"{bytes}M\" for MiB",
                    Self::MIN_BYTES
                ),
            ));
        }
        Ok(Self(bytes))
    }

    /// The cap in bytes (what `memory.max` is set to).
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for MemoryMax {
    type Err = LimitError;

    fn from_str(text: &str) -> Result<Self, LimitError> {
        let value = text.trim();
        let invalid = |problem: &str| limit_error("memory_max", text, problem.to_owned());
        let digits = value.bytes().take_while(u8::is_ascii_digit).count();
        let (number, suffix) = value.split_at(digits);
        if number.is_empty() {
            return Err(invalid(
                "expected bytes, or a number with K, M, G or T (binary: 1K = 1024) such as \"250M\"",
            ));
        }
        let unit: u64 = match suffix.to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KIB" => 1 << 10,
            "M" | "MIB" => 1 << 20,
            "G" | "GIB" => 1 << 30,
            "T" | "TIB" => 1 << 40,
            _ => {
                return Err(invalid(
                    "unknown unit; use K, M, G or T (binary: 1K = 1024), e.g. \"250M\"",
                ));
            }
        };
        let bytes = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .ok_or_else(|| invalid("too large"))?;
        Self::from_bytes(bytes).map_err(|e| LimitError {
            value: text.to_owned(),
            ..e
        })
    }
}

impl Serialize for MemoryMax {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for MemoryMax {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl Visitor<'_> for Bytes {
            type Value = MemoryMax;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a string such as \"250M\"")
            }
            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<MemoryMax, E> {
                MemoryMax::from_bytes(bytes).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<MemoryMax, E> {
                let bytes = u64::try_from(bytes).map_err(|_| {
                    E::custom(limit_error("memory_max", bytes, "negative".to_owned()))
                })?;
                self.visit_u64(bytes)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<MemoryMax, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Bytes)
    }
}

/// A plugin's CPU cap in percent of one CPU (`cpu.max` of its cgroup):
/// `"10%"` is `cpu.max` = `10000 100000`; above 100 % a plugin may use
/// several CPUs. From 1 % (the kernel's smallest quota, 1 ms per period) to
/// 100000 %, with at most three decimals.
///
/// ```
/// use herd_agent::CpuMax;
///
/// let cap: CpuMax = "10%".parse()?;
/// assert_eq!(cap.cpu_max_line(), "10000 100000");
/// assert_eq!("12.5%".parse::<CpuMax>()?.to_string(), "12.5%");
/// assert!("10".parse::<CpuMax>().is_err()); // say "10%"
/// # Ok::<(), herd_agent::LimitError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuMax {
    /// Microseconds of CPU time per [`CPU_PERIOD_US`].
    quota_us: u64,
}

impl CpuMax {
    /// The quota in microseconds per [`CPU_PERIOD_US`].
    pub fn quota_us(self) -> u64 {
        self.quota_us
    }

    /// What `cpu.max` is set to: `"<quota> <period>"`.
    pub fn cpu_max_line(self) -> String {
        format!("{} {CPU_PERIOD_US}", self.quota_us)
    }
}

impl FromStr for CpuMax {
    type Err = LimitError;

    fn from_str(text: &str) -> Result<Self, LimitError> {
        let invalid = |problem: &str| limit_error("cpu_max", text, problem.to_owned());
        let Some(percent) = text.trim().strip_suffix('%') else {
            return Err(invalid("expected a percentage of one CPU such as \"10%\""));
        };
        let (whole, fraction) = percent
            .trim()
            .split_once('.')
            .unwrap_or((percent.trim(), ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || fraction.len() > 3 {
            return Err(invalid(
                "expected a percentage of one CPU such as \"10%\" (at most three decimals)",
            ));
        }
        // 1 % of a 100 ms period is 1000 µs: the quota is the percentage × 1000.
        let milli: u64 = format!("{fraction:0<3}").parse().unwrap_or(0);
        let quota_us = whole
            .parse::<u64>()
            .ok()
            .and_then(|w| w.checked_mul(1000)?.checked_add(milli))
            .filter(|q| (1_000..=100_000_000).contains(q))
            .ok_or_else(|| invalid("must be from 1% to 100000%"))?;
        Ok(Self { quota_us })
    }
}

impl fmt::Display for CpuMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, milli) = (self.quota_us / 1000, self.quota_us % 1000);
        if milli == 0 {
            write!(f, "{whole}%")
        } else {
            let fraction = format!("{milli:03}");
            write!(f, "{whole}.{}%", fraction.trim_end_matches('0'))
        }
    }
}

impl Serialize for CpuMax {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuMax {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------- errors

/// What was being done when a cgroup operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupErrorKind {
    /// Reading a file.
    Read,
    /// Writing a file.
    Write,
    /// Creating a cgroup.
    Create,
    /// Removing a cgroup.
    Remove,
    /// The directory cannot serve (root cgroup, shared, not cgroup2, busy).
    Unusable,
}

impl fmt::Display for CgroupErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "cannot read",
            Self::Write => "cannot write",
            Self::Create => "cannot create",
            Self::Remove => "cannot remove",
            Self::Unusable => "cannot use",
        })
    }
}

/// A cgroup operation that failed: what, where, and the OS's reason (or
/// ours, for [`CgroupErrorKind::Unusable`]).
#[derive(Debug, thiserror::Error)]
#[error("{kind} {}: {source}", path.display())]
pub(crate) struct CgroupError {
    /// What was being done.
    pub(crate) kind: CgroupErrorKind,
    /// The file or directory.
    pub(crate) path: PathBuf,
    /// Why it failed.
    #[source]
    pub(crate) source: io::Error,
}

impl CgroupError {
    fn io(kind: CgroupErrorKind, path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self {
            kind,
            path: path.to_owned(),
            source,
        }
    }

    fn unusable(path: &Path, why: impl Into<String>) -> Self {
        Self {
            kind: CgroupErrorKind::Unusable,
            path: path.to_owned(),
            source: io::Error::other(why.into()),
        }
    }
}

fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(CgroupError::io(CgroupErrorKind::Read, path))
}

/// One `write(2)` of `text`, as cgroup files want it (no create).
fn write_file(path: &Path, text: &str) -> Result<(), CgroupError> {
    use std::io::Write as _;
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(CgroupError::io(CgroupErrorKind::Write, path))
}

fn make_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(CgroupError::io(CgroupErrorKind::Create, path)(e))
        }
        _ => Ok(()),
    }
}

fn pids_in(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    Ok(read_file(&dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect())
}

// ---------------------------------------------------------------- detection

/// The cgroup v2 path of a process from its `/proc/<pid>/cgroup` (the
/// `0::<path>` line; a v1-only host has none).
pub(crate) fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim_end)
        .filter(|path| path.starts_with('/'))
}

/// A cgroup2 mount from `/proc/self/mountinfo`: the cgroup shown at its
/// mount point, and the mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cgroup2Mount {
    root: String,
    point: PathBuf,
}

/// The cgroup2 mounts of a `mountinfo` text, in its order.
pub(crate) fn parse_cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root point options [optional...] - fstype source super
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = 6 + fields.get(6..)?.iter().position(|f| *f == "-")?;
            (fields.get(separator + 1) == Some(&"cgroup2")).then(|| Cgroup2Mount {
                root: unescape_mountinfo(fields[3]),
                point: PathBuf::from(unescape_mountinfo(fields[4])),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` (octal).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(digits) = octal {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the v2 cgroup `path` is in the file system: under the mount whose
/// root is the longest prefix of it (the first such mount on a tie).
pub(crate) fn locate(path: &str, mounts: &[Cgroup2Mount]) -> Option<PathBuf> {
    let mut best: Option<(usize, PathBuf)> = None;
    for mount in mounts {
        let root = mount.root.trim_end_matches('/');
        let Some(rest) = path.strip_prefix(root) else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            continue;
        }
        if best.as_ref().is_none_or(|(len, _)| root.len() > *len) {
            best = Some((root.len(), mount.point.join(rest.trim_start_matches('/'))));
        }
    }
    best.map(|(_, dir)| dir)
}

/// The agent's delegated cgroup directory, from /proc. `exclusive`: refuse
/// a cgroup that holds other processes (a login session, a shell), which is
/// not delegated to the agent alone.
fn find_delegated(exclusive: bool) -> Result<PathBuf, CgroupError> {
    let text = read_file(Path::new(PROC_CGROUP))?;
    let path = parse_proc_cgroup(&text).ok_or_else(|| {
        CgroupError::unusable(
            Path::new(PROC_CGROUP),
            "no cgroup v2 entry (0::): the host uses cgroup v1 only",
        )
    })?;
    let mounts = parse_cgroup2_mounts(&read_file(Path::new(MOUNTINFO))?);
    let find = |path: &str| {
        locate(path, &mounts).ok_or_else(|| {
            CgroupError::unusable(
                Path::new(MOUNTINFO),
                format!("no cgroup2 mount shows cgroup {path}"),
            )
        })
    };
    let mut path = path.to_owned();
    // Already in our own layout (a restarted plugin manager, an exec): use
    // the directory above the agent's leaf.
    if let Some(parent) = path.strip_suffix(&format!("/{AGENT_LEAF}")) {
        let parent = if parent.is_empty() { "/" } else { parent };
        if find(parent).is_ok_and(|dir| dir.join(PLUGINS_DIR).is_dir()) {
            path = parent.to_owned();
        }
    }
    let dir = find(&path)?;
    if path == "/" {
        return Err(CgroupError::unusable(
            &dir,
            "the agent runs in the root cgroup, which is not a delegated subtree",
        ));
    }
    if exclusive {
        let me = std::process::id();
        let others: Vec<String> = pids_in(&dir)?
            .into_iter()
            .filter(|pid| *pid != me)
            .map(|pid| pid.to_string())
            .collect();
        if !others.is_empty() {
            return Err(CgroupError::unusable(
                &dir,
                format!(
                    "it holds other processes too (pids {}), so it is not delegated to the agent \
                     alone (set cgroup_dir to use it anyway)",
                    others.join(", ")
                ),
            ));
        }
    }
    Ok(dir)
}

// ---------------------------------------------------------------- the tree

/// Whether a controller serves the plugins' cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Controller {
    /// Enabled in `<dir>/plugins/cgroup.subtree_control`.
    Enabled,
    /// Not available; why.
    Missing(String),
}

impl Controller {
    fn limit(&self, configured: bool) -> LimitState {
        match (configured, self) {
            (false, _) => LimitState::Unset,
            (true, Self::Enabled) => LimitState::InForce,
            (true, Self::Missing(why)) => LimitState::NotInForce(why.clone()),
        }
    }
}

/// The agent's cgroup subtree, set up: the agent in `<dir>/agent`, the
/// plugins under `<dir>/plugins`.
#[derive(Debug)]
pub(crate) struct CgroupTree {
    dir: PathBuf,
    memory: Controller,
    cpu: Controller,
}

impl CgroupTree {
    /// Moves the agent into `<dir>/agent`, then enables the memory and cpu
    /// controllers `<dir>` has for `<dir>/plugins` and its children. A
    /// controller that cannot be enabled is recorded as missing (and the
    /// limits that need it are reported as not in force), not an error.
    fn set_up(dir: PathBuf) -> Result<Self, CgroupError> {
        if !dir.is_absolute() {
            return Err(CgroupError::unusable(
                &dir,
                "cgroup_dir must be an absolute path",
            ));
        }
        if !dir.join("cgroup.controllers").is_file() {
            return Err(CgroupError::unusable(
                &dir,
                "not a cgroup v2 directory (no cgroup.controllers)",
            ));
        }
        // No internal processes: the agent leaves <dir> before <dir> gets
        // controllers for its children.
        let leaf = dir.join(AGENT_LEAF);
        make_dir(&leaf)?;
        write_file(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
        let plugins = dir.join(PLUGINS_DIR);
        make_dir(&plugins)?;
        let available = read_file(&dir.join("cgroup.controllers"))?;
        let controller = |name: &str| {
            if !available.split_whitespace().any(|c| c == name) {
                return Controller::Missing(format!(
                    "no {name} controller in {}",
                    dir.join("cgroup.controllers").display()
                ));
            }
            match enable(&dir, name).and_then(|()| enable(&plugins, name)) {
                Ok(()) => Controller::Enabled,
                Err(e) => Controller::Missing(format!("the {name} controller: {e}")),
            }
        };
        let (memory, cpu) = (controller("memory"), controller("cpu"));
        Ok(Self { dir, memory, cpu })
    }

    /// The agent's cgroup directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The controllers enabled for the plugins, e.g. `["memory", "cpu"]`.
    pub(crate) fn controllers(&self) -> Vec<&'static str> {
        [("memory", &self.memory), ("cpu", &self.cpu)]
            .into_iter()
            .filter(|(_, c)| **c == Controller::Enabled)
            .map(|(name, _)| name)
            .collect()
    }

    fn plugin_path(&self, name: &str) -> PathBuf {
        self.dir.join(PLUGINS_DIR).join(name)
    }

    /// Creates the cgroup of plugin `name` (reusing, after killing what is
    /// in it, one an earlier start left) and writes its limits. Returns the
    /// cgroup and what is in force.
    pub(crate) fn plugin_cgroup(
        &self,
        name: &str,
        limits: &PluginLimits,
    ) -> Result<(PluginCgroup, LimitStatus), CgroupError> {
        let cgroup = PluginCgroup {
            path: self.plugin_path(name),
        };
        match fs::create_dir(&cgroup.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if cgroup.populated()? {
                    tracing::warn!(plugin = name, cgroup = %cgroup.path.display(),
                        "killing what an earlier start of the plugin left in its cgroup");
                    cgroup.kill()?;
                }
            }
            Err(e) => return Err(CgroupError::io(CgroupErrorKind::Create, &cgroup.path)(e)),
        }
        let apply = |controller: &Controller, file: &str, value: Option<String>| {
            let state = controller.limit(value.is_some());
            if *controller != Controller::Enabled {
                return state;
            }
            // "max" resets what an earlier configuration set in a reused cgroup.
            let text = value.as_deref().unwrap_or("max");
            match write_file(&cgroup.path.join(file), text) {
                Ok(()) => state,
                Err(e) if value.is_some() => LimitState::NotInForce(e.to_string()),
                Err(e) => {
                    tracing::warn!(plugin = name, error = %e, "cannot reset a cgroup limit");
                    state
                }
            }
        };
        let status = LimitStatus {
            memory: apply(
                &self.memory,
                "memory.max",
                limits.memory_max.map(|m| m.bytes().to_string()),
            ),
            cpu: apply(
                &self.cpu,
                "cpu.max",
                limits.cpu_max.map(CpuMax::cpu_max_line),
            ),
        };
        Ok((cgroup, status))
    }

    /// Kills and removes the plugin cgroups a previous agent left under
    /// `<dir>/plugins/` (it was killed: its plugins died of their
    /// parent-death signal, but what they started may live on, even outside
    /// their process groups). Returns how many held processes.
    pub(crate) async fn clear_leftovers(&self, bound: Duration) -> usize {
        let plugins = self.dir.join(PLUGINS_DIR);
        let Ok(entries) = fs::read_dir(&plugins) else {
            return 0;
        };
        let (mut cgroups, mut processes) = (0, 0);
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let cgroup = PluginCgroup { path: entry.path() };
            let pids = cgroup.all_pids();
            if !pids.is_empty() {
                cgroups += 1;
                processes += pids.len();
            }
            if let Err(error) = cgroup.kill_and_remove(bound).await {
                tracing::warn!(%error, "cannot clear a leftover plugin cgroup");
            }
        }
        if cgroups > 0 {
            tracing::warn!(cgroups, processes, dir = %plugins.display(),
                "killed what the plugins of a previous agent left running and removed their cgroups");
        }
        cgroups
    }
}

/// Enables controller `name` for the children of `dir` and checks that the
/// kernel says so.
fn enable(dir: &Path, name: &str) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = |text: &str| text.split_whitespace().any(|c| c == name);
    if enabled(&read_file(&file)?) {
        return Ok(());
    }
    write_file(&file, &format!("+{name}"))?;
    if enabled(&read_file(&file)?) {
        Ok(())
    } else {
        Err(CgroupError::unusable(
            &file,
            format!("{name} is not enabled after +{name}"),
        ))
    }
}

/// One plugin's cgroup, `<dir>/plugins/<name>`.
#[derive(Debug, Clone)]
pub(crate) struct PluginCgroup {
    path: PathBuf,
}

impl PluginCgroup {
    /// Its directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Its `cgroup.procs`, opened for writing (close-on-exec), for
    /// [`join_in_child`].
    pub(crate) fn open_procs(&self) -> Result<OwnedFd, CgroupError> {
        let path = self.path.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(CgroupError::io(CgroupErrorKind::Write, &path))
    }

    /// SIGKILLs every process in it and its descendants: `cgroup.kill`
    /// (Linux 5.14+), else each pid of `cgroup.procs`. Nothing can fork
    /// its way out of `cgroup.kill`.
    pub(crate) fn kill(&self) -> Result<(), CgroupError> {
        self.kill_once().map(drop)
    }

    /// [`kill`](Self::kill); says whether it fell back to signalling each pid (which
    /// misses what forks meanwhile, so it must be repeated).
    fn kill_once(&self) -> Result<bool, CgroupError> {
        match write_file(&self.path.join("cgroup.kill"), "1") {
            Err(e) if e.source.kind() == io::ErrorKind::NotFound && self.path.is_dir() => {
                for pid in self.all_pids() {
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                Ok(true)
            }
            Err(e) if e.source.kind() == io::ErrorKind::NotFound => Ok(false), // gone
            other => other.map(|()| false),
        }
    }

    /// Whether a live process is in it or below it.
    fn populated(&self) -> Result<bool, CgroupError> {
        let events = self.path.join("cgroup.events");
        match fs::read_to_string(&events) {
            Ok(text) => Ok(text
                .lines()
                .any(|line| line.split_whitespace().eq(["populated", "1"]))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CgroupError::io(CgroupErrorKind::Read, &events)(e)),
        }
    }

    /// The pids in it and below it.
    fn all_pids(&self) -> Vec<u32> {
        let mut pids = pids_in(&self.path).unwrap_or_default();
        for child in subdirs(&self.path) {
            pids.extend(PluginCgroup { path: child }.all_pids());
        }
        pids
    }

    /// Kills everything in it, waits (at most `bound`) until it is empty and
    /// removes it (and any cgroup the plugin made below it).
    pub(crate) async fn kill_and_remove(&self, bound: Duration) -> Result<(), CgroupError> {
        if !self.path.is_dir() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + bound;
        let per_pid = self.kill_once()?;
        while self.populated()? {
            if tokio::time::Instant::now() >= deadline {
                return Err(CgroupError::unusable(
                    &self.path,
                    format!(
                        "processes {:?} still in it {bound:?} after the kill",
                        self.all_pids()
                    ),
                ));
            }
            tokio::time::sleep(EMPTY_POLL).await;
            if per_pid {
                self.kill_once()?;
            }
        }
        remove_tree(&self.path)
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Removes an empty cgroup and the (empty) cgroups below it, deepest first.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for child in subdirs(dir) {
        remove_tree(&child)?;
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(CgroupError::io(CgroupErrorKind::Remove, dir)(e))
        }
        _ => Ok(()),
    }
}

/// In a plugin's process between `fork` and `exec`: moves it into the
/// cgroup whose `cgroup.procs` is `procs` ("0" means the writer), before it
/// can start anything. Async-signal-safe: one `write(2)`, no allocation.
pub(crate) fn join_in_child(procs: BorrowedFd<'_>) -> io::Result<()> {
    match nix::unistd::write(procs, b"0") {
        Ok(1) => Ok(()),
        Ok(_) => Err(io::Error::from_raw_os_error(nix::errno::Errno::EIO as i32)),
        Err(errno) => Err(io::Error::from_raw_os_error(errno as i32)),
    }
}

// ---------------------------------------------------------------- the mode

/// Whether a configured limit holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LimitState {
    /// None configured.
    Unset,
    /// Configured and written to the plugin's cgroup.
    InForce,
    /// Configured but not in force; why.
    NotInForce(String),
}

/// The state of a plugin's two limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LimitStatus {
    /// `memory_max`.
    pub(crate) memory: LimitState,
    /// `cpu_max`.
    pub(crate) cpu: LimitState,
}

impl LimitStatus {
    /// Nothing of `limits` in force, for reason `why`.
    pub(crate) fn none_in_force(limits: &PluginLimits, why: String) -> Self {
        let missing = Controller::Missing(why);
        Self {
            memory: missing.limit(limits.memory_max.is_some()),
            cpu: missing.limit(limits.cpu_max.is_some()),
        }
    }
}

/// How plugins are isolated on this agent; see the module docs.
#[derive(Debug)]
pub(crate) enum Isolation {
    /// Each plugin in its own cgroup under the agent's subtree (and in its
    /// own process group).
    Cgroup(CgroupTree),
    /// Process groups and the parent-death signal only; why not cgroups.
    ProcessGroup {
        /// Why (configured, or what auto-detection found).
        reason: String,
    },
    /// `plugin_isolation = "cgroup"` and no usable subtree: no plugin is
    /// started.
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl Isolation {
    /// Decides the mode for `mode` (and `cgroup_dir`) and sets the cgroup
    /// subtree up when it is used; logs the outcome (INFO, or ERROR when a
    /// required cgroup cannot be used).
    pub(crate) fn set_up(mode: PluginIsolation, cgroup_dir: Option<&Path>) -> Self {
        if mode == PluginIsolation::ProcessGroup {
            if let Some(dir) = cgroup_dir {
                tracing::info!(cgroup_dir = %dir.display(),
                    "cgroup_dir is ignored: plugin_isolation = \"process_group\"");
            }
            return Self::ProcessGroup {
                reason: "configured (plugin_isolation = \"process_group\")".to_owned(),
            };
        }
        let found = match cgroup_dir {
            Some(dir) => Ok(dir.to_owned()),
            None => find_delegated(mode == PluginIsolation::Auto),
        };
        match found.and_then(CgroupTree::set_up) {
            Ok(tree) => {
                let missing = [("memory", &tree.memory), ("cpu", &tree.cpu)]
                    .into_iter()
                    .filter_map(|(name, c)| match c {
                        Controller::Missing(why) => Some(format!("{name}: {why}")),
                        Controller::Enabled => None,
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::info!(dir = %tree.dir.display(), controllers = ?tree.controllers(),
                    missing = %missing, "plugins run in cgroups of their own");
                Self::Cgroup(tree)
            }
            Err(error) if mode == PluginIsolation::Auto => {
                tracing::info!(reason = %error,
                    "no delegated cgroup v2 subtree; plugins run in process groups of their own");
                Self::ProcessGroup {
                    reason: error.to_string(),
                }
            }
            Err(error) => {
                tracing::error!(%error,
                    "plugin_isolation = \"cgroup\" but no usable cgroup v2 subtree: plugins are not started");
                Self::Unavailable {
                    reason: format!("plugin_isolation = \"cgroup\" but {error}"),
                }
            }
        }
    }

    /// The mode's name as the heartbeat reports it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Cgroup(_) => "cgroup",
            Self::ProcessGroup { .. } => "process_group",
            Self::Unavailable { .. } => "unavailable",
        }
    }

    /// Why cgroups are not used ("" when they are).
    pub(crate) fn reason(&self) -> &str {
        match self {
            Self::Cgroup(_) => "",
            Self::ProcessGroup { reason } | Self::Unavailable { reason } => reason,
        }
    }

    /// The cgroup subtree, in cgroup mode.
    pub(crate) fn tree(&self) -> Option<&CgroupTree> {
        match self {
            Self::Cgroup(tree) => Some(tree),
            _ => None,
        }
    }

    /// What would be in force of `limits` (before anything is written).
    pub(crate) fn expected(&self, limits: &PluginLimits) -> LimitStatus {
        match self {
            Self::Cgroup(tree) => LimitStatus {
                memory: tree.memory.limit(limits.memory_max.is_some()),
                cpu: tree.cpu.limit(limits.cpu_max.is_some()),
            },
            Self::ProcessGroup { reason } | Self::Unavailable { reason } => {
                LimitStatus::none_in_force(
                    limits,
                    format!("plugins do not run in cgroups ({}): {reason}", self.name()),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_line_of_proc_self_cgroup() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/f32a\n1:cpu:/\n0::/system.slice/herd-agent.service\n";
        assert_eq!(
            parse_proc_cgroup(hybrid),
            Some("/system.slice/herd-agent.service")
        );
        assert_eq!(parse_proc_cgroup("0::/\n"), Some("/"));
        assert_eq!(parse_proc_cgroup("4:memory:/x\n1:cpu:/\n"), None);
        assert_eq!(parse_proc_cgroup(""), None);
    }

    const MOUNTINFO_SAMPLE: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
90 80 0:38 /system.slice /mnt/with\\040space rw master:3 - cgroup2 none rw,nsdelegate
";

    #[test]
    fn cgroup2_mounts_of_mountinfo() {
        let mounts = parse_cgroup2_mounts(MOUNTINFO_SAMPLE);
        assert_eq!(
            mounts,
            [
                Cgroup2Mount {
                    root: "/".into(),
                    point: "/sys/fs/cgroup/unified".into()
                },
                Cgroup2Mount {
                    root: "/system.slice".into(),
                    point: "/mnt/with space".into()
                },
            ]
        );
        assert!(parse_cgroup2_mounts("garbage\n1 2 3\n").is_empty());
        assert_eq!(unescape_mountinfo(r"a\134b\011c\zz"), "a\\b\tc\\zz");
    }

    #[test]
    fn a_cgroup_is_found_under_the_mount_with_the_longest_root() {
        let mounts = parse_cgroup2_mounts(MOUNTINFO_SAMPLE);
        assert_eq!(
            locate("/system.slice/herd.service", &mounts),
            Some(PathBuf::from("/mnt/with space/herd.service"))
        );
        assert_eq!(
            locate("/user.slice/u.scope", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified/user.slice/u.scope"))
        );
        assert_eq!(
            locate("/", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // "/system.slicer" is not under "/system.slice".
        assert_eq!(
            locate("/system.slicer", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified/system.slicer"))
        );
        assert_eq!(locate("/x", &[]), None);
    }

    #[test]
    fn memory_values() {
        let bytes = |text: &str| text.parse::<MemoryMax>().map(MemoryMax::bytes);
        assert_eq!(bytes("250M"), Ok(262_144_000));
        assert_eq!(bytes(" 250MiB "), Ok(262_144_000));
        assert_eq!(bytes("1024k"), Ok(1 << 20));
        assert_eq!(bytes("2G"), Ok(2 << 30));
        assert_eq!(bytes("1T"), Ok(1 << 40));
        assert_eq!(bytes("1048576"), Ok(1 << 20));
        for bad in ["", "M", "250MB", "2.5G", "-1M", "250", "99999999999T"] {
            let error = bytes(bad).unwrap_err();
            assert_eq!(error.setting, "memory_max");
            assert_eq!(error.value, bad);
            assert!(error.to_string().starts_with("memory_max "), "{error}");
        }
        assert!(bytes("250").unwrap_err().to_string().contains("\"250M\""));
        assert_eq!(
            MemoryMax::from_bytes(1 << 20).map(MemoryMax::bytes),
            Ok(1 << 20)
        );
        assert!(MemoryMax::from_bytes(4096).is_err());
    }

    #[test]
    fn cpu_values() {
        let quota = |text: &str| text.parse::<CpuMax>().map(CpuMax::quota_us);
        assert_eq!(quota("10%"), Ok(10_000));
        assert_eq!(quota(" 250 % "), Ok(250_000));
        assert_eq!(quota("12.5%"), Ok(12_500));
        assert_eq!(quota("1.001%"), Ok(1_001));
        assert_eq!(quota("1%"), Ok(1_000));
        for bad in [
            "10", "%", "0%", "0.5%", "1.0001%", "x%", "-5%", "100001%", ".5%",
        ] {
            let error = quota(bad).unwrap_err();
            assert_eq!(error.setting, "cpu_max", "{bad}");
            assert!(error.to_string().starts_with("cpu_max "), "{error}");
        }
        let cap: CpuMax = "10%".parse().unwrap();
        assert_eq!(cap.cpu_max_line(), "10000 100000");
        assert_eq!(cap.to_string(), "10%");
        assert_eq!("12.50%".parse::<CpuMax>().unwrap().to_string(), "12.5%");
        assert_eq!("0.125%".parse::<CpuMax>().ok(), None);
    }

    #[test]
    fn limits_deserialize_from_toml_with_clear_errors() {
        #[derive(Debug, Deserialize, Serialize)]
        struct Doc {
            memory: MemoryMax,
            cpu: CpuMax,
        }
        let doc: Doc = toml::from_str("memory = \"250M\"\ncpu = \"10%\"").unwrap();
        assert_eq!(doc.memory.bytes(), 262_144_000);
        assert_eq!(doc.cpu.quota_us(), 10_000);
        let doc: Doc = toml::from_str("memory = 2097152\ncpu = \"10%\"").unwrap();
        assert_eq!(doc.memory.bytes(), 2 << 20);
        assert_eq!(
            toml::to_string(&doc).unwrap(),
            "memory = 2097152\ncpu = \"10%\"\n"
        );
        let error = toml::from_str::<Doc>("memory = \"250X\"\ncpu = \"10%\"").unwrap_err();
        assert!(error.to_string().contains("unknown unit"), "{error}");
        let error = toml::from_str::<Doc>("memory = \"1M\"\ncpu = 10").unwrap_err();
        assert!(error.to_string().contains("cpu"), "{error}");
    }

    #[test]
    fn process_group_mode_claims_no_limit() {
        let isolation = Isolation::set_up(PluginIsolation::ProcessGroup, None);
        assert_eq!(isolation.name(), "process_group");
        assert!(isolation.tree().is_none());
        let limits = PluginLimits {
            memory_max: Some("250M".parse().unwrap()),
            cpu_max: None,
        };
        let status = isolation.expected(&limits);
        assert!(
            matches!(status.memory, LimitState::NotInForce(ref why) if why.contains("process_group"))
        );
        assert_eq!(status.cpu, LimitState::Unset);
    }

    /// Regular files stand in for the kernel's: writes "take" only where
    /// the test makes them.
    fn fake_files(dir: &Path, files: &[(&str, &str)]) {
        for (file, text) in files {
            let path = dir.join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn a_controller_counts_only_once_the_kernel_lists_it_as_enabled() {
        let dir = tempfile::tempdir().unwrap();
        fake_files(
            dir.path(),
            &[
                ("cgroup.controllers", "cpuset memory cpu pids\n"),
                ("cgroup.subtree_control", ""),
                ("agent/cgroup.procs", ""),
                ("plugins/cgroup.subtree_control", ""),
            ],
        );
        // "+memory" written to a plain file does not read back as "memory".
        let tree = CgroupTree::set_up(dir.path().to_owned()).unwrap();
        assert!(tree.controllers().is_empty());
        assert!(matches!(&tree.memory, Controller::Missing(why) if why.contains("not enabled")));
        let me = std::process::id().to_string();
        assert_eq!(
            fs::read_to_string(dir.path().join("agent/cgroup.procs")).unwrap(),
            me
        );

        fake_files(
            dir.path(),
            &[
                ("cgroup.subtree_control", "memory cpu\n"),
                ("plugins/cgroup.subtree_control", "cpu memory\n"),
            ],
        );
        let tree = CgroupTree::set_up(dir.path().to_owned()).unwrap();
        assert_eq!(tree.controllers(), ["memory", "cpu"]);
        let isolation = Isolation::Cgroup(tree);
        let limits = PluginLimits {
            memory_max: Some("250M".parse().unwrap()),
            cpu_max: None,
        };
        let expected = isolation.expected(&limits);
        assert_eq!(expected.memory, LimitState::InForce);
        assert_eq!(expected.cpu, LimitState::Unset);

        // Without the controller in cgroup.controllers it is missing, and
        // nothing is written.
        fake_files(
            dir.path(),
            &[
                ("cgroup.controllers", "pids\n"),
                ("cgroup.subtree_control", ""),
            ],
        );
        let tree = CgroupTree::set_up(dir.path().to_owned()).unwrap();
        assert!(matches!(&tree.cpu, Controller::Missing(why) if why.contains("no cpu controller")));
        assert_eq!(
            fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap(),
            ""
        );
    }

    #[test]
    fn limits_are_written_and_claimed_only_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let tree = CgroupTree {
            dir: dir.path().to_owned(),
            memory: Controller::Enabled,
            cpu: Controller::Missing("no cpu controller".to_owned()),
        };
        // A cgroup an earlier start left, empty: reused.
        let path = dir.path().join("plugins/p");
        fake_files(
            &path,
            &[
                ("cgroup.events", "populated 0\nfrozen 0\n"),
                ("memory.max", "max\n"),
                ("cpu.max", "max 100000\n"),
            ],
        );
        let limits = PluginLimits {
            memory_max: Some("250M".parse().unwrap()),
            cpu_max: Some("10%".parse().unwrap()),
        };
        let (cgroup, status) = tree.plugin_cgroup("p", &limits).unwrap();
        assert_eq!(cgroup.path(), path);
        assert_eq!(status.memory, LimitState::InForce);
        assert_eq!(
            status.cpu,
            LimitState::NotInForce("no cpu controller".to_owned())
        );
        let read = |file: &str| fs::read_to_string(path.join(file)).unwrap();
        assert_eq!(read("memory.max"), "262144000");
        assert_eq!(
            read("cpu.max"),
            "max 100000\n",
            "untouched without its controller"
        );

        // No cap configured: a reused cgroup's old cap is lifted.
        let (_, status) = tree.plugin_cgroup("p", &PluginLimits::default()).unwrap();
        assert_eq!(status.memory, LimitState::Unset);
        assert_eq!(read("memory.max"), "max");

        // A cap that cannot be written is not claimed.
        fs::remove_file(path.join("memory.max")).unwrap();
        let (_, status) = tree.plugin_cgroup("p", &limits).unwrap();
        assert!(
            matches!(&status.memory, LimitState::NotInForce(why) if why.contains("memory.max")),
            "{status:?}"
        );
    }

    #[test]
    fn a_directory_that_is_not_a_cgroup_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let auto = Isolation::set_up(PluginIsolation::Auto, Some(dir.path()));
        assert_eq!(auto.name(), "process_group");
        assert!(
            auto.reason().contains("not a cgroup v2 directory"),
            "{}",
            auto.reason()
        );
        let required = Isolation::set_up(PluginIsolation::Cgroup, Some(Path::new("relative")));
        assert_eq!(required.name(), "unavailable");
        assert!(
            required.reason().contains("absolute"),
            "{}",
            required.reason()
        );
        // Nothing was created in a directory that is not a cgroup.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
