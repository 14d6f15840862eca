//! Projects: which project keys a node accepts and how each is recorded.
//!
//! In: the `--projects` JSON file (an array of project objects), read once at start; or, when
//! there is none, a demo project whose key is generated once and kept in the data directory so
//! that a first run works with no set-up; or OpenReplay's `projects` table, which the loader
//! (`crate::db::projects`, its own thread) reads and replaces here whenever it changes. Out: a
//! [`Catalog`] the workers look keys up in, without ever waiting on a file or a database: a
//! lookup is a read lock and an `Arc` clone, and a replacement swaps one `Arc`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use serde::Deserialize;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Web,
    /// Mobile trackers (iOS and Android) use the `/v1/ios` and `/v1/mobile` routes.
    Ios,
    /// As `ios`: OpenReplay's `platform` enum tells the two mobile trackers apart.
    Android,
    All,
}

impl Platform {
    pub fn accepts_web(self) -> bool {
        matches!(self, Platform::Web | Platform::All)
    }

    pub fn accepts_mobile(self) -> bool {
        matches!(self, Platform::Ios | Platform::Android | Platform::All)
    }

    /// A label of OpenReplay's `platform` enum.
    pub fn from_label(label: &str) -> Option<Platform> {
        match label {
            "web" => Some(Platform::Web),
            "ios" => Some(Platform::Ios),
            "android" => Some(Platform::Android),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub project_key: String,
    #[serde(rename = "projectID")]
    pub project_id: u64,
    /// Percentage of new sessions recorded, 0-100.
    #[serde(default = "full_sample")]
    pub sample_rate: f64,
    /// Token lifetime from the session start, ms.
    #[serde(default = "two_hours")]
    pub max_session_duration: u64,
    /// `None`: the node's BEACON_SIZE_LIMIT.
    #[serde(default)]
    pub beacon_size_limit: Option<u64>,
    #[serde(default = "all_platforms")]
    pub platform: Platform,
    #[serde(default = "protocol_v2")]
    pub protocol_version: u8,
    #[serde(default)]
    pub tags: Vec<Value>,
    #[serde(default)]
    pub feature_flags: Vec<Value>,
    #[serde(default)]
    pub conditions: Vec<Value>,
}

fn full_sample() -> f64 {
    100.0
}
fn two_hours() -> u64 {
    7_200_000
}
fn all_platforms() -> Platform {
    Platform::All
}
fn protocol_v2() -> u8 {
    2
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectsError {
    #[error("cannot read projects file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("projects file {0}: {1}")]
    Parse(String, serde_json::Error),
    #[error("projects file: {0}")]
    Invalid(String),
}

/// The accepted projects, by key and by id.
#[derive(Debug, Default)]
pub struct Projects {
    by_key: HashMap<String, Arc<Project>>,
    by_id: HashMap<u64, Arc<Project>>,
}

impl Projects {
    pub fn from_json(text: &str, origin: &str) -> Result<Projects, ProjectsError> {
        let list: Vec<Project> =
            serde_json::from_str(text).map_err(|e| ProjectsError::Parse(origin.to_string(), e))?;
        Projects::from_list(list)
    }

    pub fn load(path: &Path) -> Result<Projects, ProjectsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProjectsError::Read(path.display().to_string(), e))?;
        Projects::from_json(&text, &path.display().to_string())
    }

    pub fn from_list(list: Vec<Project>) -> Result<Projects, ProjectsError> {
        let mut projects = Projects::default();
        for project in list {
            if project.project_key.is_empty() {
                return Err(ProjectsError::Invalid("empty projectKey".into()));
            }
            if !(0.0..=100.0).contains(&project.sample_rate) {
                return Err(ProjectsError::Invalid(format!(
                    "{}: sampleRate must be 0-100",
                    project.project_key
                )));
            }
            if !matches!(project.protocol_version, 1 | 2) {
                return Err(ProjectsError::Invalid(format!(
                    "{}: protocolVersion must be 1 or 2",
                    project.project_key
                )));
            }
            let project = Arc::new(project);
            if projects
                .by_key
                .insert(project.project_key.clone(), project.clone())
                .is_some()
            {
                return Err(ProjectsError::Invalid(format!(
                    "duplicate projectKey {}",
                    project.project_key
                )));
            }
            if projects
                .by_id
                .insert(project.project_id, project.clone())
                .is_some()
            {
                return Err(ProjectsError::Invalid(format!(
                    "duplicate projectID {}",
                    project.project_id
                )));
            }
        }
        Ok(projects)
    }

    /// The demo project of a node started without a projects file.
    /// The id of the demo project a node without a projects file serves.
    pub const DEMO_PROJECT_ID: u64 = 1;

    pub fn demo(key: String) -> Projects {
        let demo = Project {
            project_key: key,
            project_id: Self::DEMO_PROJECT_ID,
            sample_rate: 100.0,
            max_session_duration: two_hours(),
            beacon_size_limit: None,
            platform: Platform::All,
            protocol_version: 2,
            tags: Vec::new(),
            feature_flags: Vec::new(),
            conditions: Vec::new(),
        };
        Projects::from_list(vec![demo]).expect("one valid project")
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<Project>> {
        self.by_key.get(key)
    }

    pub fn by_id(&self, id: u64) -> Option<&Arc<Project>> {
        self.by_id.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The largest beacon limit any project announces, so that the batch routes accept what
    /// any start answer allowed.
    pub fn max_beacon_size_limit(&self) -> Option<u64> {
        self.by_key
            .values()
            .filter_map(|p| p.beacon_size_limit)
            .max()
    }
}

/// What a key lookup found.
#[derive(Debug)]
pub enum Lookup {
    Found(Arc<Project>),
    /// Not among the active projects, as their source is now.
    Unknown,
    /// Not among the projects known, and their source could not be consulted (the database is
    /// unreachable, or was never read): the key may exist.
    Unavailable,
}

/// The projects the workers serve, replaceable while they run.
pub struct Catalog {
    projects: RwLock<Arc<Projects>>,
    /// The largest beacon limit any project announces (0: none), for the batch routes.
    max_beacon: AtomicU64,
    /// Whether `projects` is the source as it is now: always for a file; for the database,
    /// since a read that is still followed by its change notifications.
    current: AtomicBool,
    /// Whether the source was ever read.
    loaded: AtomicBool,
}

impl Catalog {
    /// Projects that never change (a file, the demo project).
    pub fn fixed(projects: Projects) -> Catalog {
        let catalog = Catalog::pending();
        catalog.replace(projects);
        catalog
    }

    /// No projects until the loader reads them.
    pub fn pending() -> Catalog {
        Catalog {
            projects: RwLock::new(Arc::new(Projects::default())),
            max_beacon: AtomicU64::new(0),
            current: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
        }
    }

    /// Puts a fresh read of the source in place: current from now on.
    pub fn replace(&self, projects: Projects) {
        self.max_beacon.store(
            projects.max_beacon_size_limit().unwrap_or(0),
            Ordering::Relaxed,
        );
        *self.projects.write() = Arc::new(projects);
        self.loaded.store(true, Ordering::SeqCst);
        self.current.store(true, Ordering::SeqCst);
    }

    /// The source can no longer be consulted: keep serving what is known, but an unknown key
    /// is [`Lookup::Unavailable`] until the next [`Catalog::replace`].
    pub fn mark_stale(&self) {
        self.current.store(false, Ordering::SeqCst);
    }

    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::SeqCst)
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    pub fn by_key(&self, key: &str) -> Lookup {
        match self.projects.read().by_key(key) {
            Some(project) => Lookup::Found(Arc::clone(project)),
            None if self.is_current() => Lookup::Unknown,
            None => Lookup::Unavailable,
        }
    }

    pub fn by_id(&self, id: u64) -> Option<Arc<Project>> {
        self.projects.read().by_id(id).cloned()
    }

    /// The projects as they are now.
    pub fn snapshot(&self) -> Arc<Projects> {
        Arc::clone(&self.projects.read())
    }

    pub fn max_beacon_size_limit(&self) -> u64 {
        self.max_beacon.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields() {
        let p = Projects::from_json(r#"[{"projectKey":"k1","projectID":7}]"#, "t").unwrap();
        let k1 = p.by_key("k1").unwrap();
        assert_eq!(k1.project_id, 7);
        assert_eq!(k1.sample_rate, 100.0);
        assert_eq!(k1.max_session_duration, 7_200_000);
        assert_eq!(k1.platform, Platform::All);
        assert_eq!(k1.protocol_version, 2);
        assert!(p.by_id(7).is_some());
    }

    #[test]
    fn invalid_projects_are_refused() {
        for text in [
            r#"[{"projectKey":"k","projectID":1,"sampleRate":101}]"#,
            r#"[{"projectKey":"k","projectID":1,"protocolVersion":3}]"#,
            r#"[{"projectKey":"k","projectID":1},{"projectKey":"k","projectID":2}]"#,
            r#"[{"projectKey":"k","projectID":1},{"projectKey":"j","projectID":1}]"#,
            r#"[{"projectKey":"","projectID":1}]"#,
            r#"[{"projectKey":"k","projectID":1,"platform":"tv"}]"#,
            r#"{"projectKey":"k"}"#,
        ] {
            assert!(Projects::from_json(text, "t").is_err(), "{text}");
        }
    }

    #[test]
    fn an_unknown_key_is_unknown_only_while_the_source_is_current() {
        let catalog = Catalog::pending();
        assert!(matches!(catalog.by_key("k1"), Lookup::Unavailable));
        catalog.replace(
            Projects::from_json(
                r#"[{"projectKey":"k1","projectID":7,"beaconSizeLimit":500000}]"#,
                "t",
            )
            .unwrap(),
        );
        assert!(matches!(catalog.by_key("k1"), Lookup::Found(p) if p.project_id == 7));
        assert!(matches!(catalog.by_key("k2"), Lookup::Unknown));
        assert_eq!(catalog.max_beacon_size_limit(), 500_000);
        catalog.mark_stale();
        assert!(matches!(catalog.by_key("k1"), Lookup::Found(_)));
        assert!(matches!(catalog.by_key("k2"), Lookup::Unavailable));
        assert!(catalog.is_loaded() && !catalog.is_current());
    }
}
