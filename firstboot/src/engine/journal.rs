//! The resumable first-boot journal (`/var/lib/ciab/firstboot.json`).
//!
//! The journal is the single source of truth for "how far did first boot get".
//! It is rewritten in full after every state transition, atomically:
//! write a temp file in the same directory, fsync it, rename it over the
//! journal, fsync the directory. A reader therefore only ever sees a complete
//! old or a complete new document, even across a power cut.
//!
//! [`Journal::load`] is the engine's entry point: it performs recovery
//! (corrupt file moved aside, interrupted steps reset to pending, stale temp
//! files removed). [`Journal::read`] is the side-effect-free reader used by
//! status displays.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

pub use ciab_core::atomic::{sync_dir, write_atomic};
use ciab_core::atomic::remove_stale_temps;
use serde::{Deserialize, Serialize};

/// Version of the on-disk schema written by this code.
pub const SCHEMA_VERSION: u32 = 1;

/// How many notes the journal keeps (oldest dropped first).
const MAX_NOTES: usize = 50;

/// State of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Failed => "failed",
        }
    }
}

/// State of the first-boot run as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverallState {
    Running,
    Failed,
    Done,
}

impl OverallState {
    pub fn as_str(self) -> &'static str {
        match self {
            OverallState::Running => "running",
            OverallState::Failed => "failed",
            OverallState::Done => "done",
        }
    }
}

/// One step's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    #[serde(default)]
    pub title: String,
    pub state: StepState,
    /// Attempts made in the current series (reset when a failed step is retried).
    #[serde(default)]
    pub attempts: u32,
    /// Times this step was found `running` at load time, i.e. cut off by a
    /// power loss or crash. Never reset; a high number hints at a reboot loop.
    #[serde(default)]
    pub interrupted: u32,
    /// Wall clock (unix seconds) when the current series started.
    #[serde(default)]
    pub started_at: Option<f64>,
    /// Wall clock (unix seconds) when the step reached done/failed.
    #[serde(default)]
    pub finished_at: Option<f64>,
    /// Seconds spent (monotonic clock), including retry back-off.
    #[serde(default)]
    pub duration: Option<f64>,
    /// `{:#}` of the last error, if the last attempt failed.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl StepRecord {
    pub fn new(name: &str, title: &str) -> Self {
        StepRecord {
            name: name.to_string(),
            title: title.to_string(),
            state: StepState::Pending,
            attempts: 0,
            interrupted: 0,
            started_at: None,
            finished_at: None,
            duration: None,
            last_error: None,
        }
    }

    /// Back to a fresh pending series (keeps `interrupted`, name and title).
    pub fn reset(&mut self) {
        self.state = StepState::Pending;
        self.attempts = 0;
        self.started_at = None;
        self.finished_at = None;
        self.duration = None;
        self.last_error = None;
    }
}

/// The whole journal document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    #[serde(default = "default_version")]
    pub version: u32,
    pub state: OverallState,
    /// Number of engine runs (service starts, including `retry`) so far.
    #[serde(default)]
    pub boot_count: u32,
    /// Wall clock (unix seconds) of the very first engine run.
    #[serde(default)]
    pub first_started_at: Option<f64>,
    /// Wall clock of the last write.
    #[serde(default)]
    pub updated_at: Option<f64>,
    /// Wall clock when the overall state became done or failed.
    #[serde(default)]
    pub finished_at: Option<f64>,
    /// Steps in execution order.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// Operator-visible notes about recovery events (corrupt journal,
    /// interrupted steps), newest last; at most 50 are kept.
    #[serde(default)]
    pub notes: Vec<String>,
}

fn default_version() -> u32 {
    SCHEMA_VERSION
}

impl Default for Journal {
    fn default() -> Self {
        Journal::new()
    }
}

/// Result of [`Journal::load`].
#[derive(Debug)]
pub struct Loaded {
    pub journal: Journal,
    /// Human-readable warnings produced by recovery; the caller must surface
    /// them loudly (the engine forwards them to its `Reporter`). They are also
    /// recorded in `journal.notes`.
    pub warnings: Vec<String>,
    /// Where an unreadable journal was moved, if that happened.
    pub corrupt_moved_to: Option<PathBuf>,
    /// Names of steps found `running` (interrupted) and reset to pending.
    pub interrupted: Vec<String>,
}

/// Current wall-clock time as unix seconds, rounded to milliseconds.
///
/// Note: on a box's first power-on the RTC may be wrong and there is no
/// network time; durations are therefore measured with the monotonic clock
/// and only these timestamps can be off.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| round_ms(d.as_secs_f64()))
        .unwrap_or(0.0)
}

/// Round seconds to milliseconds (keeps the JSON readable).
pub fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

impl Journal {
    /// A fresh journal: overall running, no steps, never started.
    pub fn new() -> Self {
        Journal {
            version: SCHEMA_VERSION,
            state: OverallState::Running,
            boot_count: 0,
            first_started_at: None,
            updated_at: None,
            finished_at: None,
            steps: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn step(&self, name: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name)
    }

    pub fn step_mut(&mut self, name: &str) -> Option<&mut StepRecord> {
        self.steps.iter_mut().find(|s| s.name == name)
    }

    /// Append an operator-visible note (bounded list).
    pub fn add_note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
        if self.notes.len() > MAX_NOTES {
            let excess = self.notes.len() - MAX_NOTES;
            self.notes.drain(..excess);
        }
    }

    /// Side-effect-free read: `Ok(None)` if the file does not exist, an error
    /// if it cannot be read or parsed. Used by status displays, which must
    /// never perform recovery themselves.
    pub fn read(path: &Path) -> anyhow::Result<Option<Journal>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let journal = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", path.display()))?;
        Ok(Some(journal))
    }

    /// Load for execution, with recovery:
    /// - missing file → fresh journal;
    /// - unreadable JSON → file renamed to `<name>.corrupt-<n>` (lowest free
    ///   n ≥ 1), fresh journal, loud warning;
    /// - any step in `running` was interrupted (power cut / crash) → reset to
    ///   `pending` (its `check()` runs before any `apply()`), warning;
    /// - stale temp files from an interrupted write are removed.
    ///
    /// An I/O error other than "not found" while reading is returned as an
    /// error rather than treated as corruption: the file may be fine and the
    /// disk merely sick, and discarding progress would be wrong.
    pub fn load(path: &Path) -> anyhow::Result<Loaded> {
        remove_stale_temps(path);
        let mut warnings = Vec::new();
        let mut corrupt_moved_to = None;
        let mut journal = match fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Journal>(&bytes) {
                Ok(j) => j,
                Err(parse_err) => {
                    let aside = move_aside(path)?;
                    let msg = format!(
                        "journal {} was unreadable ({parse_err}); moved it to {} and \
                         started a fresh journal: every step will be re-checked",
                        path.display(),
                        aside.display()
                    );
                    warnings.push(msg.clone());
                    corrupt_moved_to = Some(aside);
                    let mut fresh = Journal::new();
                    fresh.add_note(msg);
                    fresh
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Journal::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };

        let mut interrupted = Vec::new();
        let boot = journal.boot_count;
        for step in journal.steps.iter_mut() {
            if step.state == StepState::Running {
                step.interrupted += 1;
                step.reset();
                interrupted.push(step.name.clone());
            }
        }
        for name in &interrupted {
            let msg = format!(
                "step {name} was interrupted during run {boot} (power cut or crash); \
                 it will be re-checked and re-applied if needed"
            );
            warnings.push(msg.clone());
            journal.add_note(msg);
        }
        Ok(Loaded {
            journal,
            warnings,
            corrupt_moved_to,
            interrupted,
        })
    }

    /// Atomically replace the journal file with this journal's contents:
    /// temp file in the same directory, write, fsync, rename, fsync directory.
    /// Also stamps `updated_at`.
    pub fn save(&mut self, path: &Path) -> anyhow::Result<()> {
        self.updated_at = Some(now_unix());
        let mut bytes = serde_json::to_vec_pretty(self).context("serialising the journal")?;
        bytes.push(b'\n');
        write_atomic(path, &bytes)
    }
}

/// Parent directory of `path` ("." for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name_lossy(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "journal".to_string())
}

/// Rename an unreadable journal to `<name>.corrupt-<n>` with the lowest free n.
fn move_aside(path: &Path) -> anyhow::Result<PathBuf> {
    let dir = parent_dir(path);
    let base = file_name_lossy(path);
    for n in 1..10_000u32 {
        let candidate = dir.join(format!("{base}.corrupt-{n}"));
        if fs::symlink_metadata(&candidate).is_ok() {
            continue;
        }
        fs::rename(path, &candidate).with_context(|| {
            format!(
                "moving unreadable journal {} aside to {}",
                path.display(),
                candidate.display()
            )
        })?;
        sync_dir(&dir)?;
        return Ok(candidate);
    }
    anyhow::bail!(
        "too many {base}.corrupt-* files in {}; clean them up",
        dir.display()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Journal {
        let mut j = Journal::new();
        j.boot_count = 2;
        j.first_started_at = Some(1_700_000_000.25);
        let mut a = StepRecord::new("plan", "compute the plan");
        a.state = StepState::Done;
        a.attempts = 1;
        a.started_at = Some(1_700_000_001.0);
        a.finished_at = Some(1_700_000_001.5);
        a.duration = Some(0.5);
        let mut b = StepRecord::new("storage", "claim the disk");
        b.state = StepState::Failed;
        b.attempts = 3;
        b.last_error = Some("mkfs: <oops> \"quoted\"\nsecond line".into());
        j.steps = vec![a, b, StepRecord::new("network", "bring up links")];
        j.state = OverallState::Failed;
        j.add_note("hello");
        j
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn missing_file_gives_fresh_journal() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = Journal::load(&dir.path().join("firstboot.json")).unwrap();
        assert_eq!(loaded.journal, Journal::new());
        assert!(loaded.warnings.is_empty());
        assert!(Journal::read(&dir.path().join("firstboot.json"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let mut j = sample();
        // Full-precision floats must read back bit-identical.
        j.steps[2].started_at = Some(1_795_434_861.977_130_7);
        j.save(&path).unwrap();
        let back = Journal::read(&path).unwrap().unwrap();
        assert_eq!(back, j);
        let loaded = Journal::load(&path).unwrap();
        assert_eq!(loaded.journal, j);
        assert!(loaded.warnings.is_empty());
        // The on-disk states are the lowercase words the status tools expect.
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"state\": \"failed\""), "{text}");
        assert!(text.contains("\"state\": \"pending\""), "{text}");
    }

    #[test]
    fn atomic_write_leaves_no_temp_files_and_creates_dir() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("var/lib/ciab");
        let path = sub.join("firstboot.json");
        let mut j = sample();
        for i in 0..5 {
            j.boot_count = i;
            j.save(&path).unwrap();
        }
        assert_eq!(dir_entries(&sub), vec!["firstboot.json".to_string()]);
        assert_eq!(Journal::read(&path).unwrap().unwrap().boot_count, 4);
    }

    #[test]
    fn stale_temp_files_are_cleaned_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        sample().save(&path).unwrap();
        // A write cut short by a power loss leaves a partial temp file.
        fs::write(dir.path().join(".firstboot.json.tmp-123-0"), b"{\"state\":").unwrap();
        fs::write(dir.path().join("unrelated"), b"x").unwrap();
        let loaded = Journal::load(&path).unwrap();
        assert_eq!(loaded.journal.boot_count, 2);
        assert_eq!(dir_entries(dir.path()), vec!["firstboot.json", "unrelated"]);
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_journal_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        fs::write(&path, b"{\"state\": \"runn").unwrap();
        // An earlier corrupt file already exists: the next free number is used.
        fs::write(dir.path().join("firstboot.json.corrupt-1"), b"old").unwrap();

        let loaded = Journal::load(&path).unwrap();
        let aside = dir.path().join("firstboot.json.corrupt-2");
        assert_eq!(loaded.corrupt_moved_to.as_deref(), Some(aside.as_path()));
        assert_eq!(fs::read(&aside).unwrap(), b"{\"state\": \"runn");
        assert_eq!(
            fs::read(dir.path().join("firstboot.json.corrupt-1")).unwrap(),
            b"old"
        );
        assert!(!path.exists(), "the corrupt file must not stay in place");
        assert!(loaded.journal.steps.is_empty());
        assert_eq!(loaded.journal.state, OverallState::Running);
        assert_eq!(loaded.warnings.len(), 1);
        let w = &loaded.warnings[0];
        assert!(w.contains("unreadable"), "{w}");
        assert!(w.contains("firstboot.json.corrupt-2"), "{w}");
        // The warning is also kept in the journal for the status page.
        assert_eq!(loaded.journal.notes, loaded.warnings);

        // Valid JSON of the wrong shape is just as unreadable.
        fs::write(&path, b"[1,2,3]").unwrap();
        let loaded = Journal::load(&path).unwrap();
        assert!(dir.path().join("firstboot.json.corrupt-3").exists());
        assert_eq!(loaded.warnings.len(), 1);
    }

    #[test]
    fn read_reports_corruption_without_touching_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        fs::write(&path, b"nonsense").unwrap();
        let err = Journal::read(&path).unwrap_err();
        assert!(format!("{err:#}").contains("parsing"), "{err:#}");
        assert!(path.exists());
    }

    #[test]
    fn interrupted_running_step_resumes_as_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let mut j = sample();
        j.state = OverallState::Running;
        j.steps[1].state = StepState::Running;
        j.steps[1].attempts = 1;
        j.steps[1].started_at = Some(5.0);
        j.steps[1].last_error = None;
        j.save(&path).unwrap();

        let loaded = Journal::load(&path).unwrap();
        assert_eq!(loaded.interrupted, vec!["storage".to_string()]);
        let s = loaded.journal.step("storage").unwrap();
        assert_eq!(s.state, StepState::Pending);
        assert_eq!(s.attempts, 0);
        assert_eq!(s.interrupted, 1);
        assert_eq!(s.started_at, None);
        // Other steps untouched.
        assert_eq!(loaded.journal.step("plan").unwrap().state, StepState::Done);
        assert_eq!(
            loaded.journal.step("network").unwrap().state,
            StepState::Pending
        );
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("storage"));
        assert!(loaded.warnings[0].contains("interrupted"));
    }

    #[test]
    fn unknown_fields_and_missing_optional_fields_are_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        fs::write(
            &path,
            br#"{"state":"done","future_field":1,
                "steps":[{"name":"plan","state":"done","also_new":true}]}"#,
        )
        .unwrap();
        let loaded = Journal::load(&path).unwrap();
        assert!(loaded.warnings.is_empty());
        assert_eq!(loaded.journal.version, SCHEMA_VERSION);
        assert_eq!(loaded.journal.state, OverallState::Done);
        assert_eq!(loaded.journal.steps[0].attempts, 0);
    }

    #[test]
    fn notes_are_bounded() {
        let mut j = Journal::new();
        for i in 0..(MAX_NOTES + 7) {
            j.add_note(format!("n{i}"));
        }
        assert_eq!(j.notes.len(), MAX_NOTES);
        assert_eq!(j.notes[0], "n7");
    }
}
