//! The pinned versions of a table's contract: `schemas/<table>/v1.ddl`, `v2.ddl`, … Each version
//! must be an additive evolution of the one before; the newest is the one in force.

use std::path::{Path, PathBuf};

use super::ddl::Contract;
use super::diff::check_evolution;

#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("cannot read contract folder {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} is not an additive evolution of v{previous}:\n{reasons}")]
    NotAdditive { path: PathBuf, previous: u32, reasons: String },
}

/// All versions found in a contract folder, oldest first.
#[derive(Debug, Clone)]
pub struct PinnedContracts {
    pub dir: PathBuf,
    pub versions: Vec<(u32, Contract)>,
}

impl PinnedContracts {
    /// Reads `dir/v*.ddl`. A missing folder means no pinned version (an empty list).
    pub fn load(dir: &Path) -> Result<Self, PinnedError> {
        let mut found = Vec::new();
        match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(cause) => return Err(PinnedError::Read { path: dir.into(), cause }),
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|cause| PinnedError::Read { path: dir.into(), cause })?;
                    let name = entry.file_name().to_string_lossy().to_string();
                    let Some(n) = name.strip_prefix('v').and_then(|r| r.strip_suffix(".ddl")) else { continue };
                    let Ok(n) = n.parse::<u32>() else { continue };
                    found.push((n, entry.path()));
                }
            }
        }
        found.sort();
        let mut versions: Vec<(u32, Contract)> = Vec::new();
        for (n, path) in found {
            let text =
                std::fs::read_to_string(&path).map_err(|cause| PinnedError::Read { path: path.clone(), cause })?;
            let contract = Contract::parse(&text)
                .map_err(|e| PinnedError::Parse { path: path.clone(), message: e.to_string() })?;
            if let Some((previous, before)) = versions.last() {
                if let Err(reasons) = check_evolution(before, &contract) {
                    return Err(PinnedError::NotAdditive {
                        path,
                        previous: *previous,
                        reasons: reasons.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n"),
                    });
                }
            }
            versions.push((n, contract));
        }
        Ok(PinnedContracts { dir: dir.into(), versions })
    }

    /// The version in force: (number, contract).
    pub fn newest(&self) -> Option<&(u32, Contract)> {
        self.versions.last()
    }

    pub fn path_of(&self, version: u32) -> PathBuf {
        self.dir.join(format!("v{version}.ddl"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_load_in_order_and_must_only_add() {
        let dir = std::env::temp_dir().join(format!("pl-pinned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("v1.ddl"), "a STRING NOT NULL\n").unwrap();
        std::fs::write(dir.join("v2.ddl"), "a STRING NOT NULL,\nb INT\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let p = PinnedContracts::load(&dir).unwrap();
        assert_eq!(p.newest().unwrap().0, 2);
        std::fs::write(dir.join("v10.ddl"), "a BIGINT NOT NULL,\nb INT\n").unwrap();
        let e = PinnedContracts::load(&dir).unwrap_err().to_string();
        assert!(
            e.contains("v10.ddl is not an additive evolution of v2") && e.contains("a: changed from STRING to BIGINT"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(PinnedContracts::load(&dir).unwrap().newest().is_none());
    }
}
