//! Table locations: a plain path or a URL (`file://`, `s3://`, `s3a://`, `az://`, `abfss://`,
//! `gs://`, `hdfs://`) together with the object-store options that reach it.
//!
//! Options use the object store's own key names (`aws_endpoint`, `azure_storage_account_name`,
//! `google_service_account`, `allow_http`, `max_retries`…); keys the store does not know are
//! refused when the configuration is read, so a misspelt key is an error rather than a silently
//! ignored setting. Variables of the environment (`AWS_*`, `AZURE_*`, `GOOGLE_*`) fill in what the
//! options leave out. Option values are never printed: they may hold credentials.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Where a table lives and how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct Location {
    uri: String,
    options: BTreeMap<String, String>,
}

/// The kind of store behind a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Local,
    S3,
    Azure,
    Gcs,
    Hdfs,
    Other,
}

impl Scheme {
    pub fn of(uri: &str) -> Scheme {
        let Some((scheme, _)) = uri.split_once("://") else { return Scheme::Local };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => Scheme::Local,
            "s3" | "s3a" => Scheme::S3,
            "az" | "adl" | "azure" | "abfs" | "abfss" => Scheme::Azure,
            "gs" => Scheme::Gcs,
            "hdfs" | "viewfs" => Scheme::Hdfs,
            _ => Scheme::Other,
        }
    }

    /// The cargo feature that builds this store in, and whether this build has it.
    fn built_in(self) -> (&'static str, bool) {
        match self {
            Scheme::Local | Scheme::Other => ("delta", true),
            Scheme::S3 => ("s3", cfg!(feature = "s3")),
            Scheme::Azure => ("azure", cfg!(feature = "azure")),
            Scheme::Gcs => ("gcs", cfg!(feature = "gcs")),
            Scheme::Hdfs => ("hdfs", cfg!(feature = "hdfs")),
        }
    }
}

/// Options every cloud store accepts: request retries with backoff (delta-rs reads these).
const RETRY_KEYS: &[&str] = &[
    "max_retries",
    "retry_timeout",
    "init_backoff",
    "max_backoff",
    "base",
    "backoff_config.init_backoff",
    "backoff_config.max_backoff",
    "backoff_config.base",
];

/// delta-rs's own S3 keys (beside object_store's).
const DELTA_S3_KEYS: &[&str] = &[
    "aws_s3_allow_unsafe_rename",
    "aws_s3_locking_provider",
    "aws_force_credential_load",
    "aws_profile",
    "aws_iam_role_arn",
    "aws_iam_role_session_name",
    "aws_s3_pool_idle_timeout_seconds",
    "aws_sts_pool_idle_timeout_seconds",
    "aws_s3_get_internal_server_error_retries",
    "aws_ec2_metadata_disabled",
    "aws_ec2_metadata_timeout",
    "aws_s3_addressing_style",
];

/// Substrings of keys whose values are secrets (never shown, even in debug output).
const SECRET_HINTS: &[&str] = &["secret", "key", "token", "password", "sas", "credential", "signature"];

impl Location {
    /// A location without options (a local path, or a URL configured by the environment).
    pub fn new(uri: impl Into<String>) -> Location {
        Location { uri: uri.into(), options: BTreeMap::new() }
    }

    /// A location with object-store options; refuses keys the location's store does not know and
    /// schemes this build cannot reach.
    pub fn with_options(uri: impl Into<String>, options: BTreeMap<String, String>) -> Result<Location, String> {
        let uri = uri.into();
        let scheme = Scheme::of(&uri);
        let (feature, built) = scheme.built_in();
        if !built {
            return Err(format!(
                "{uri}: this build of protolake has no {feature} support (cargo feature \"{feature}\")"
            ));
        }
        let options: BTreeMap<String, String> =
            options.into_iter().map(|(k, v)| (k.trim().to_ascii_lowercase(), v)).collect();
        for key in options.keys() {
            check_key(scheme, key).map_err(|m| format!("{uri}: storage option \"{key}\": {m}"))?;
        }
        Ok(Location { uri, options })
    }

    /// [`Location::with_options`] for an object store; a local location takes none, so the
    /// options (shared by every table of a config) are left out for it.
    pub fn placed(uri: impl Into<String>, options: &BTreeMap<String, String>) -> Result<Location, String> {
        let uri = uri.into();
        if Scheme::of(&uri) == Scheme::Local {
            Ok(Location::new(uri))
        } else {
            Location::with_options(uri, options.clone())
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn scheme(&self) -> Scheme {
        Scheme::of(&self.uri)
    }

    pub fn is_local(&self) -> bool {
        self.scheme() == Scheme::Local
    }

    /// The folder of a local location (a plain path, or a `file://` URL's path); None for
    /// object stores.
    pub fn local_path(&self) -> Option<&str> {
        self.is_local().then(|| self.uri.strip_prefix("file://").unwrap_or(&self.uri))
    }

    /// The same store, at `<uri><suffix>` (e.g. the dead-letter table beside a data table).
    pub fn sibling(&self, suffix: &str) -> Location {
        Location { uri: format!("{}{suffix}", self.uri.trim_end_matches('/')), options: self.options.clone() }
    }

    /// The option keys set (values are never exposed for display).
    pub fn option_keys(&self) -> impl Iterator<Item = &str> {
        self.options.keys().map(String::as_str)
    }

    /// The options handed to delta-rs. An `http://` endpoint turns on `allow_http` unless the
    /// options say otherwise: a plain-HTTP endpoint was asked for explicitly.
    pub fn storage_options(&self) -> HashMap<String, String> {
        let mut options: HashMap<String, String> = self.options.clone().into_iter().collect();
        let endpoint = ["aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url", "azure_storage_endpoint"]
            .iter()
            .find_map(|k| self.options.get(*k).cloned())
            .or_else(|| match self.scheme() {
                Scheme::S3 => std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok(),
                _ => None,
            });
        let http = endpoint.is_some_and(|e| e.trim().to_ascii_lowercase().starts_with("http://"));
        if http && !options.contains_key("allow_http") && !options.contains_key("aws_allow_http") {
            options.insert("allow_http".into(), "true".into());
        }
        options
    }

    /// What in this location's configuration makes it unsafe for two writers at once (empty
    /// when nothing does). Options win over the environment, as they do in delta-rs.
    pub fn concurrency_hazards(&self) -> Vec<String> {
        let value = |keys: &[&str], env: &str| {
            keys.iter()
                .find_map(|k| self.options.get(*k).cloned())
                .or_else(|| std::env::var(env).ok())
                .map(|v| v.trim().to_ascii_lowercase())
        };
        let mut hazards = Vec::new();
        if self.scheme() != Scheme::S3 {
            return hazards;
        }
        if value(&["aws_s3_allow_unsafe_rename"], "AWS_S3_ALLOW_UNSAFE_RENAME").as_deref() == Some("true") {
            hazards.push(
                "AWS_S3_ALLOW_UNSAFE_RENAME=true: commits are copied into place without a conditional write, \
                 so two writers can overwrite each other's commit; remove it (conditional writes are the default)"
                    .into(),
            );
        }
        if value(&["aws_conditional_put", "conditional_put"], "AWS_CONDITIONAL_PUT").as_deref() == Some("disabled") {
            hazards.push(
                "conditional_put=disabled: commits are written without If-None-Match, so two writers can \
                 overwrite each other's commit; remove it unless the store cannot do conditional writes, \
                 and then run one writer per table"
                    .into(),
            );
        }
        if value(&["aws_s3_locking_provider"], "AWS_S3_LOCKING_PROVIDER").as_deref() == Some("dynamodb") {
            hazards.push(
                "AWS_S3_LOCKING_PROVIDER=dynamodb is not used by this version of delta-rs; commits rely on \
                 the store's conditional writes (If-None-Match) instead"
                    .into(),
            );
        }
        hazards
    }
}

fn check_key(scheme: Scheme, key: &str) -> Result<(), String> {
    if RETRY_KEYS.contains(&key) {
        return Ok(());
    }
    match scheme {
        Scheme::Local => Err("a local path takes no storage options".into()),
        // The HDFS client takes Hadoop properties (dfs.*, fs.*), which have no fixed list.
        Scheme::Hdfs | Scheme::Other => Ok(()),
        Scheme::S3 => {
            if DELTA_S3_KEYS.contains(&key) {
                return Ok(());
            }
            known(parse_s3(key))
        }
        Scheme::Azure => known(parse_azure(key)),
        Scheme::Gcs => known(parse_gcs(key)),
    }
}

fn known(parsed: bool) -> Result<(), String> {
    if parsed {
        Ok(())
    } else {
        Err("not an option of this store (see docs/storage.md for the keys)".into())
    }
}

#[cfg(feature = "s3")]
fn parse_s3(key: &str) -> bool {
    key.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok()
}
#[cfg(not(feature = "s3"))]
fn parse_s3(_: &str) -> bool {
    true
}

#[cfg(feature = "azure")]
fn parse_azure(key: &str) -> bool {
    key.parse::<object_store::azure::AzureConfigKey>().is_ok()
}
#[cfg(not(feature = "azure"))]
fn parse_azure(_: &str) -> bool {
    true
}

#[cfg(feature = "gcs")]
fn parse_gcs(key: &str) -> bool {
    key.parse::<object_store::gcp::GoogleConfigKey>().is_ok()
}
#[cfg(not(feature = "gcs"))]
fn parse_gcs(_: &str) -> bool {
    true
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        map.entry(&"uri", &self.uri);
        for (k, v) in &self.options {
            let secret = SECRET_HINTS.iter().any(|h| k.contains(h));
            map.entry(k, &if secret { "<redacted>" } else { v.as_str() });
        }
        map.finish()
    }
}

impl From<&str> for Location {
    fn from(uri: &str) -> Self {
        Location::new(uri)
    }
}

impl From<String> for Location {
    fn from(uri: String) -> Self {
        Location::new(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn schemes() {
        assert_eq!(Scheme::of("/data/lake/events"), Scheme::Local);
        assert_eq!(Scheme::of("file:///data/lake"), Scheme::Local);
        assert_eq!(Scheme::of("s3://bucket/t"), Scheme::S3);
        assert_eq!(Scheme::of("S3A://bucket/t"), Scheme::S3);
        assert_eq!(Scheme::of("abfss://c@acct.dfs.core.windows.net/t"), Scheme::Azure);
        assert_eq!(Scheme::of("az://container/t"), Scheme::Azure);
        assert_eq!(Scheme::of("gs://bucket/t"), Scheme::Gcs);
        assert_eq!(Scheme::of("hdfs://namenode:9000/t"), Scheme::Hdfs);
    }

    #[test]
    fn unknown_keys_are_refused_with_the_key_named() {
        let err = Location::with_options("s3://b/t", opts(&[("aws_endpont", "http://x")])).unwrap_err();
        assert!(err.contains("\"aws_endpont\""), "{err}");
        let err = Location::with_options("/tmp/t", opts(&[("aws_region", "eu-west-1")])).unwrap_err();
        assert!(err.contains("local path takes no storage options"), "{err}");
        let err = Location::with_options("az://c/t", opts(&[("aws_region", "eu-west-1")])).unwrap_err();
        assert!(err.contains("not an option of this store"), "{err}");
    }

    #[test]
    fn known_keys_are_accepted_in_any_case() {
        let l = Location::with_options(
            "s3://b/t",
            opts(&[("AWS_ENDPOINT", "http://127.0.0.1:9000"), ("aws_region", "us-east-1"), ("max_retries", "3")]),
        )
        .unwrap();
        assert_eq!(l.option_keys().collect::<Vec<_>>(), ["aws_endpoint", "aws_region", "max_retries"]);
        Location::with_options("abfss://c@a.dfs.core.windows.net/t", opts(&[("azure_storage_use_emulator", "true")]))
            .unwrap();
        Location::with_options("gs://b/t", opts(&[("google_service_account", "/k.json")])).unwrap();
        Location::with_options("hdfs://nn:9000/t", opts(&[("dfs.ha.namenodes.ns", "nn1,nn2")])).unwrap();
    }

    #[test]
    fn http_endpoint_allows_http_unless_told_otherwise() {
        let l = Location::with_options("s3://b/t", opts(&[("aws_endpoint", "http://127.0.0.1:9000")])).unwrap();
        assert_eq!(l.storage_options().get("allow_http").map(String::as_str), Some("true"));
        let l = Location::with_options(
            "s3://b/t",
            opts(&[("aws_endpoint", "http://127.0.0.1:9000"), ("allow_http", "false")]),
        )
        .unwrap();
        assert_eq!(l.storage_options().get("allow_http").map(String::as_str), Some("false"));
        let l = Location::with_options("s3://b/t", opts(&[("aws_endpoint", "https://s3.example")])).unwrap();
        assert!(!l.storage_options().contains_key("allow_http"));
    }

    #[test]
    fn secrets_are_not_shown() {
        let l = Location::with_options(
            "s3://b/t",
            opts(&[("aws_secret_access_key", "hunter2"), ("aws_region", "us-east-1")]),
        )
        .unwrap();
        let shown = format!("{l:?} {l}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("us-east-1"), "{shown}");
    }

    #[test]
    fn unsafe_s3_settings_are_named() {
        let l = Location::with_options("s3://b/t", opts(&[("aws_conditional_put", "disabled")])).unwrap();
        let hazards = l.concurrency_hazards();
        assert!(hazards.iter().any(|h| h.contains("conditional_put=disabled")), "{hazards:?}");
        let l = Location::with_options("s3://b/t", opts(&[("aws_s3_allow_unsafe_rename", "true")])).unwrap();
        assert!(l.concurrency_hazards().iter().any(|h| h.contains("UNSAFE_RENAME")));
        let l = Location::with_options("s3://b/t", opts(&[("aws_conditional_put", "etag")])).unwrap();
        assert!(l.concurrency_hazards().iter().all(|h| !h.contains("conditional_put")));
    }
}
