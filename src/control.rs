//! Operating a running gateway: reload the configuration, suspend and resume partners, keep
//! suspensions in the state file, hold the admin token. Used by the admin API and by signals;
//! nothing here is on the request path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admission::Suspension;
use crate::config::{self, ConfigErrors};
use crate::proxy::Shared;
use crate::recent::Recent;

/// The environment variable the admin bearer token is read from.
pub const TOKEN_ENV: &str = "BILLGATE_ADMIN_TOKEN";

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    pub sha256: String,
    /// One line saying what changed.
    pub summary: String,
    /// The full change, partner by partner.
    pub diff: String,
}

/// Why a reload did not happen; the running configuration stays in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the configuration did not come from a file, so there is nothing to re-read")]
    NoFile,
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("the change trips {} guardrail(s); reload with force to apply it anyway:\n{}", .0.len(), .0.join("\n"))]
    Refused(Vec<String>),
}

/// Why a suspension could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no partner \"{0}\" in the running configuration")]
    UnknownPartner(String),
    #[error("could not write the state file {path}: {error}")]
    State { path: String, error: std::io::Error },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    #[serde(default)]
    suspended: std::collections::BTreeMap<String, Suspension>,
}

/// The handle operators act through.
pub struct Control {
    pub shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    /// SHA-256 of the admin token; `None` turns the mutating endpoints off.
    token: ArcSwapOption<[u8; 32]>,
    /// Reloads and state-file writes happen one at a time.
    serial: tokio::sync::Mutex<()>,
    /// The partners' request counters sampled for `GET /admin/partners/{id}`.
    pub recent: Recent,
}

impl Control {
    /// Wraps a running gateway's state; reads the admin token and the suspensions on file.
    pub fn new(shared: Arc<Shared>, config_path: Option<PathBuf>) -> Result<Control, String> {
        let control = Control {
            shared,
            config_path,
            token: ArcSwapOption::empty(),
            recent: Recent::default(),
            serial: tokio::sync::Mutex::new(()),
        };
        control.read_token()?;
        control.read_state()?;
        Ok(control)
    }

    /// Whether the admin token is set (the mutating endpoints are on).
    pub fn has_token(&self) -> bool {
        self.token.load().is_some()
    }

    /// Whether `presented` is the admin token.
    pub fn token_matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        self.token.load().as_deref().is_some_and(|t| *t == digest)
    }

    fn read_token(&self) -> Result<(), String> {
        let file = self
            .shared
            .snapshot()
            .config
            .server
            .admin_token_file
            .clone();
        let token = match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read admin_token_file {}: {e}", path.display()))?;
                Some(text.trim().to_owned())
            }
            None => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_owned()),
        };
        let digest = token
            .filter(|t| !t.is_empty())
            .map(|t| Arc::new(<[u8; 32]>::from(Sha256::digest(t.as_bytes()))));
        if digest.is_none() {
            tracing::warn!("no admin token ({TOKEN_ENV} or [server] admin_token_file): reload, suspend and resume over HTTP are off");
        }
        self.token.store(digest);
        Ok(())
    }

    fn state_path(&self) -> Option<PathBuf> {
        self.shared.snapshot().config.server.state_file.clone()
    }

    fn read_state(&self) -> Result<(), String> {
        let Some(path) = self.state_path() else {
            return Ok(());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read state file {}: {e}", path.display())),
        };
        let state: StateFile = serde_json::from_str(&text)
            .map_err(|e| format!("state file {} is not valid: {e}", path.display()))?;
        for (id, suspension) in state.suspended {
            tracing::warn!(partner = %id, reason = %suspension.reason, "partner suspended (from the state file)");
            self.shared.suspensions().suspend(&id, suspension);
        }
        Ok(())
    }

    fn write_state(&self) -> Result<(), ControlError> {
        let Some(path) = self.state_path() else {
            return Ok(());
        };
        let state = StateFile {
            suspended: self.shared.suspensions().list().into_iter().collect(),
        };
        write_atomically(&path, &state).map_err(|error| ControlError::State {
            path: path.display().to_string(),
            error,
        })
    }

    /// Re-reads the configuration file; applies it if valid in full and within the guardrails
    /// (or `force`). The outcome is logged and counted either way.
    pub async fn reload(&self, force: bool) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.serial.lock().await;
        let result = self.reload_inner(force).await;
        let metrics = self.shared.metrics();
        match &result {
            Ok(done) => {
                metrics.reload("ok");
                // One event a log file holds on one line: the diff's lines as a list.
                let diff: Vec<&str> = done.diff.lines().collect();
                tracing::info!(
                    sha256 = %done.sha256,
                    summary = %done.summary,
                    ?diff,
                    "configuration reloaded"
                );
            }
            Err(ReloadError::Refused(hits)) => {
                metrics.reload("refused");
                tracing::warn!(
                    guardrails = ?hits,
                    "reload refused by guardrails; the running configuration stays"
                );
            }
            Err(error) => {
                metrics.reload("error");
                let errors: Vec<String> = error.to_string().lines().map(str::to_owned).collect();
                tracing::error!(?errors, "reload failed; the running configuration stays");
            }
        }
        result
    }

    async fn reload_inner(&self, force: bool) -> Result<Reloaded, ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoFile)?;
        let loaded = tokio::task::spawn_blocking(move || config::load_file(&path))
            .await
            .map_err(|e| {
                ReloadError::Invalid(ConfigErrors(vec![config::ConfigError::whole_file(
                    "config",
                    e.to_string(),
                )]))
            })?;
        let next = loaded.map_err(ReloadError::Invalid)?;
        let running = self.shared.snapshot_full();
        let change = config::diff(&running.config, &next);
        let hits: Vec<String> = change
            .guardrails()
            .iter()
            .map(ToString::to_string)
            .collect();
        if !hits.is_empty() && !force {
            return Err(ReloadError::Refused(hits));
        }
        let done = Reloaded {
            sha256: next.source_sha256.clone(),
            summary: change.summary(),
            diff: change.to_string(),
        };
        self.shared.install(next);
        if let Err(error) = self.read_token() {
            tracing::error!("{error}; the previous admin token stays");
        }
        Ok(done)
    }

    /// Suspends a partner of the running configuration and records it in the state file.
    pub async fn suspend(&self, id: &str, reason: &str) -> Result<Suspension, ControlError> {
        let _serial = self.serial.lock().await;
        self.known(id)?;
        let since_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let suspension = Suspension {
            reason: reason.to_owned(),
            since_unix,
        };
        self.shared.suspensions().suspend(id, suspension.clone());
        tracing::warn!(partner = %id, %reason, "partner suspended");
        self.write_state()?;
        Ok(suspension)
    }

    /// Lifts a suspension; `Ok(false)` when the partner was not suspended.
    pub async fn resume(&self, id: &str) -> Result<bool, ControlError> {
        let _serial = self.serial.lock().await;
        self.known(id)?;
        let lifted = self.shared.suspensions().resume(id);
        if lifted {
            tracing::warn!(partner = %id, "partner resumed");
            self.write_state()?;
        }
        Ok(lifted)
    }

    fn known(&self, id: &str) -> Result<(), ControlError> {
        let snapshot = self.shared.snapshot();
        if snapshot.config.partners.iter().any(|p| p.id == id) {
            Ok(())
        } else {
            Err(ControlError::UnknownPartner(id.to_owned()))
        }
    }
}

/// Writes `value` as JSON next to `path` then renames it over `path`, so a crash never leaves a
/// half-written state file.
fn write_atomically(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
