//! Who issues a command and under which ids.

use std::fmt;

use referral_domain::ids::{CommandId, PartnerId};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The marketplace side: submits RFIs, manages partner profiles.
    Intake,
    /// A partner's user: acts on that partner's own referrals only.
    Partner,
    /// Runs the engine: may do everything.
    Operator,
    /// Reads and replays history; issues no commands.
    Analyst,
    /// The engine itself (the expiry scheduler).
    System,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Intake => "intake",
            Role::Partner => "partner",
            Role::Operator => "operator",
            Role::Analyst => "analyst",
            Role::System => "system",
        }
    }

    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "intake" => Ok(Role::Intake),
            "partner" => Ok(Role::Partner),
            "operator" => Ok(Role::Operator),
            "analyst" => Ok(Role::Analyst),
            other => Err(format!("{other:?} is not a role; use intake, partner, operator or analyst")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Actor {
    pub role: Role,
    /// The partner a partner-role caller is bound to.
    pub partner: Option<PartnerId>,
    /// The token's or component's name, for the audit trail.
    pub name: String,
}

impl Actor {
    pub fn system(name: &str) -> Actor {
        Actor { role: Role::System, partner: None, name: name.to_string() }
    }

    /// Whether this actor may act on (or see) a referral of `partner`.
    pub fn may_access_partner(&self, partner: &PartnerId) -> bool {
        match self.role {
            Role::Partner => self.partner.as_ref() == Some(partner),
            Role::Intake | Role::Operator | Role::Analyst | Role::System => true,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.partner {
            Some(p) => write!(f, "{}:{}/{}", self.role, p, self.name),
            None => write!(f, "{}/{}", self.role, self.name),
        }
    }
}

/// The ids and the caller a command travels with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    pub command_id: CommandId,
    /// Ties together everything that followed from one request; defaults to the command id.
    pub correlation_id: String,
    /// What caused this command; defaults to the command id.
    pub causation_id: String,
    pub actor: Actor,
}

impl CommandContext {
    pub fn new(command_id: CommandId, actor: Actor) -> Self {
        let id = command_id.as_str().to_string();
        CommandContext { command_id, correlation_id: id.clone(), causation_id: id, actor }
    }

    pub fn with_correlation(mut self, correlation_id: Option<String>, causation_id: Option<String>) -> Self {
        if let Some(c) = correlation_id.filter(|c| !c.is_empty()) {
            self.correlation_id = c;
        }
        if let Some(c) = causation_id.filter(|c| !c.is_empty()) {
            self.causation_id = c;
        }
        self
    }
}
