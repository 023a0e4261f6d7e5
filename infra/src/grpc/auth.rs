//! Bearer tokens. Tokens are stored hashed (SHA-256) in `tokens.json` in the
//! data directory; the plain token is shown once, when it is created.
//!
//! A running server notices tokens added later: when a token is unknown it
//! re-reads the file if the file changed since it was last read.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use rand::RngCore;
use referral_commands::{Actor, Role};
use referral_domain::ids::PartnerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

pub const TOKENS_FILE: &str = "tokens.json";
/// Where the first start writes the operator token it creates.
pub const BOOTSTRAP_TOKEN_FILE: &str = "operator.token";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid tokens file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    name: String,
    role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partner: Option<String>,
    sha256: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokensFile {
    tokens: Vec<TokenRecord>,
}

fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io { path: path.to_path_buf(), source }
}

fn read_file(path: &Path) -> Result<TokensFile, AuthError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| AuthError::Corrupt { path: path.to_path_buf(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokensFile::default()),
        Err(e) => Err(AuthError::Io { path: path.to_path_buf(), source: e }),
    }
}

/// Writes a file whole or not at all, readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    let tmp = path.with_extension("tmp");
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))
}

fn actor(record: &TokenRecord) -> Option<Actor> {
    let role = Role::parse(&record.role).ok()?;
    let partner = match &record.partner {
        Some(p) => Some(PartnerId::parse(p).ok()?),
        None => None,
    };
    Some(Actor { role, partner, name: record.name.clone() })
}

/// Creates a token and records its hash. Returns the plain token, which is
/// not stored anywhere.
pub fn add_token(data_dir: &Path, role: Role, partner: Option<&str>, name: &str) -> Result<String, AuthError> {
    if name.trim().is_empty() || name.len() > 64 {
        return Err(AuthError::Invalid("token name must be 1–64 characters".into()));
    }
    let partner = match (role, partner) {
        (Role::Partner, Some(p)) => Some(PartnerId::parse(p).map_err(AuthError::Invalid)?.to_string()),
        (Role::Partner, None) => {
            return Err(AuthError::Invalid("a partner token needs --partner <partner id>".into()));
        }
        (_, Some(_)) => {
            return Err(AuthError::Invalid(format!("only partner tokens are bound to a partner, not {role}")))
        }
        (_, None) => None,
    };
    if role == Role::System {
        return Err(AuthError::Invalid("system is the engine's own role; tokens cannot have it".into()));
    }
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let path = data_dir.join(TOKENS_FILE);
    let mut file = read_file(&path)?;
    if file.tokens.iter().any(|t| t.name == name) {
        return Err(AuthError::Invalid(format!("a token named {name:?} already exists")));
    }
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = format!("rfe_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    file.tokens.push(TokenRecord {
        name: name.to_string(),
        role: role.as_str().to_string(),
        partner,
        sha256: hash(&token),
        created_at: Utc::now(),
    });
    let json = serde_json::to_vec_pretty(&file).map_err(|e| AuthError::Invalid(e.to_string()))?;
    write_private(&path, &json)?;
    Ok(token)
}

/// On a data directory with no tokens, creates an operator token and writes
/// it to `operator.token` (owner-readable only). Returns that file's path
/// when it created one.
pub fn bootstrap_operator(data_dir: &Path) -> Result<Option<PathBuf>, AuthError> {
    let path = data_dir.join(TOKENS_FILE);
    if !read_file(&path)?.tokens.is_empty() {
        return Ok(None);
    }
    let token = add_token(data_dir, Role::Operator, None, "bootstrap-operator")?;
    let token_path = data_dir.join(BOOTSTRAP_TOKEN_FILE);
    write_private(&token_path, format!("{token}\n").as_bytes())?;
    Ok(Some(token_path))
}

struct Snapshot {
    modified: Option<SystemTime>,
    by_hash: HashMap<String, Actor>,
}

/// The tokens a server accepts.
pub struct TokenStore {
    path: PathBuf,
    snapshot: RwLock<Snapshot>,
}

impl TokenStore {
    pub fn open(data_dir: &Path) -> Result<TokenStore, AuthError> {
        let path = data_dir.join(TOKENS_FILE);
        let snapshot = Self::load(&path)?;
        Ok(TokenStore { path, snapshot: RwLock::new(snapshot) })
    }

    fn load(path: &Path) -> Result<Snapshot, AuthError> {
        let modified = fs::metadata(path).and_then(|m| m.modified()).ok();
        let file = read_file(path)?;
        let by_hash = file.tokens.iter().filter_map(|t| actor(t).map(|a| (t.sha256.clone(), a))).collect();
        Ok(Snapshot { modified, by_hash })
    }

    /// The actor a token belongs to, if it is known.
    pub fn authenticate(&self, token: &str) -> Option<Actor> {
        let key = hash(token);
        if let Some(actor) = self.snapshot.read().expect("token lock poisoned").by_hash.get(&key) {
            return Some(actor.clone());
        }
        let modified = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut snapshot = self.snapshot.write().expect("token lock poisoned");
        if modified != snapshot.modified {
            match Self::load(&self.path) {
                Ok(fresh) => *snapshot = fresh,
                Err(e) => tracing::warn!(error = %e, "could not reload tokens"),
            }
        }
        snapshot.by_hash.get(&key).cloned()
    }
}

/// A tonic interceptor: checks `authorization: Bearer <token>` and puts the
/// caller's [`Actor`] into the request's extensions.
pub fn interceptor(tokens: Arc<TokenStore>) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing authorization metadata: send 'authorization: Bearer <token>'")
        })?;
        let text = header.to_str().map_err(|_| Status::unauthenticated("authorization metadata is not text"))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization metadata must be 'Bearer <token>'"))?;
        let actor = tokens.authenticate(token.trim()).ok_or_else(|| Status::unauthenticated("unknown token"))?;
        request.extensions_mut().insert(actor);
        Ok(request)
    }
}

/// The authenticated caller of a request that passed [`interceptor`].
pub fn caller<T>(request: &Request<T>) -> Result<Actor, Status> {
    request.extensions().get::<Actor>().cloned().ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// Refuses callers whose role is not among `allowed`.
pub fn require_role(actor: &Actor, allowed: &[Role], what: &str) -> Result<(), Status> {
    if allowed.contains(&actor.role) {
        Ok(())
    } else {
        let names: Vec<&str> = allowed.iter().map(Role::as_str).collect();
        Err(Status::permission_denied(format!(
            "{what} needs the {} role; this token has the {} role",
            names.join(" or "),
            actor.role
        )))
    }
}

/// Shared handle for the server.
pub type Tokens = Arc<TokenStore>;

/// The client side: an interceptor that sends `authorization: Bearer <token>`
/// (or nothing, for callers that test the refusal).
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

/// A client of `ReferralCommands` that sends a bearer token.
pub type CommandsClient = crate::grpc::pb::referral_commands_client::ReferralCommandsClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

/// A client of `ReferralQueries` that sends a bearer token.
pub type QueriesClient = crate::grpc::pb::referral_queries_client::ReferralQueriesClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

/// A client of `ProjectionAdmin` that sends a bearer token.
pub type AdminClient = crate::grpc::pb::projection_admin_client::ProjectionAdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

impl BearerToken {
    pub fn new(token: &str) -> Result<Self, String> {
        Self::raw_header(&format!("Bearer {token}"))
    }

    /// Sends `header` as the authorization metadata verbatim.
    pub fn raw_header(header: &str) -> Result<Self, String> {
        header
            .parse()
            .map(|v| BearerToken(Some(v)))
            .map_err(|_| "the token contains characters not allowed in a header".to_string())
    }

    /// Sends no authorization metadata at all.
    pub fn none() -> Self {
        BearerToken(None)
    }

    pub fn client(self, channel: tonic::transport::Channel) -> CommandsClient {
        crate::grpc::pb::referral_commands_client::ReferralCommandsClient::with_interceptor(channel, self)
    }

    pub fn queries_client(self, channel: tonic::transport::Channel) -> QueriesClient {
        crate::grpc::pb::referral_queries_client::ReferralQueriesClient::with_interceptor(channel, self)
    }

    pub fn admin_client(self, channel: tonic::transport::Channel) -> AdminClient {
        crate::grpc::pb::projection_admin_client::ProjectionAdminClient::with_interceptor(channel, self)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}
