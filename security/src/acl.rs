//! Permissions: who may do what to which resource.
//!
//! An entry names a principal (a user or a token's name; `*` is every authenticated
//! principal, `anonymous` the unauthenticated connections of `auth = "optional"`), an
//! effect, a resource type, a name pattern and actions. A request is allowed when an
//! allow entry matches it and no deny entry does: deny by default, deny overrides allow.
//! A pattern is a name, a prefix ending in `*` (`orders*`), or `*`.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
    Admin,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::Cluster,
        ResourceType::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::Cluster => "cluster",
            ResourceType::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<ResourceType> {
        ResourceType::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
    }

    /// The actions that apply to this resource type.
    pub fn actions(self) -> &'static [Action] {
        match self {
            ResourceType::Topic => &[Action::Publish, Action::Subscribe, Action::Describe],
            ResourceType::Group => &[Action::Consume, Action::Commit],
            ResourceType::Cluster => &[
                Action::Replicate,
                Action::Promote,
                Action::Register,
                Action::Controller,
            ],
            ResourceType::Admin => &[
                Action::CreateTopic,
                Action::DeleteTopic,
                Action::Lookup,
                Action::Stats,
                Action::Describe,
                Action::Security,
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Publish,
    Subscribe,
    /// Topic: see it exists and its queues (implied by publish and subscribe).
    /// Admin: list every topic.
    Describe,
    Consume,
    Commit,
    Replicate,
    Promote,
    Register,
    Controller,
    CreateTopic,
    DeleteTopic,
    Lookup,
    Stats,
    Security,
    /// Every action of the resource type.
    #[serde(rename = "*")]
    All,
}

impl Action {
    const NAMED: [Action; 15] = [
        Action::Publish,
        Action::Subscribe,
        Action::Describe,
        Action::Consume,
        Action::Commit,
        Action::Replicate,
        Action::Promote,
        Action::Register,
        Action::Controller,
        Action::CreateTopic,
        Action::DeleteTopic,
        Action::Lookup,
        Action::Stats,
        Action::Security,
        Action::All,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Describe => "describe",
            Action::Consume => "consume",
            Action::Commit => "commit",
            Action::Replicate => "replicate",
            Action::Promote => "promote",
            Action::Register => "register",
            Action::Controller => "controller",
            Action::CreateTopic => "create_topic",
            Action::DeleteTopic => "delete_topic",
            Action::Lookup => "lookup",
            Action::Stats => "stats",
            Action::Security => "security",
            Action::All => "*",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::NAMED
            .into_iter()
            .find(|action| action.name() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
}

/// One permission entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AclEntry {
    pub principal: String,
    pub effect: Effect,
    pub resource: ResourceType,
    pub pattern: String,
    pub actions: Vec<Action>,
}

impl fmt::Display for AclEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actions: Vec<&str> = self.actions.iter().map(|a| a.name()).collect();
        write!(
            f,
            "{} {} {}:{} {}",
            match self.effect {
                Effect::Allow => "allow",
                Effect::Deny => "deny",
            },
            self.principal,
            self.resource.name(),
            self.pattern,
            actions.join(",")
        )
    }
}

impl AclEntry {
    /// Refuses an entry that could not mean what its writer thinks: an action that does
    /// not apply to the resource type, no action, a pattern with `*` anywhere but at
    /// its end, an empty principal.
    pub fn validate(&self) -> Result<(), String> {
        if self.principal.is_empty() || self.principal.len() > 128 {
            return Err("the principal must be 1 to 128 bytes".into());
        }
        if self.actions.is_empty() {
            return Err("name at least one action".into());
        }
        for action in &self.actions {
            if *action != Action::All && !self.resource.actions().contains(action) {
                let allowed: Vec<&str> = self.resource.actions().iter().map(|a| a.name()).collect();
                return Err(format!(
                    "{} does not apply to a {} (its actions: {}, or *)",
                    action.name(),
                    self.resource.name(),
                    allowed.join(", ")
                ));
            }
        }
        if self.pattern.is_empty() || self.pattern.len() > 256 {
            return Err("the pattern must be 1 to 256 bytes (`*` for every name)".into());
        }
        if self.pattern[..self.pattern.len() - 1].contains('*') {
            return Err(format!(
                "pattern {:?}: `*` may only end a pattern (a prefix match)",
                self.pattern
            ));
        }
        if matches!(self.resource, ResourceType::Cluster | ResourceType::Admin)
            && self.pattern != "*"
        {
            return Err(format!(
                "a {} entry has no names: its pattern must be *",
                self.resource.name()
            ));
        }
        Ok(())
    }

    fn matches(&self, principal: &str, resource: ResourceType, name: &str, action: Action) -> bool {
        (self.principal == principal || (self.principal == "*" && principal != ANONYMOUS))
            && self.resource == resource
            && pattern_matches(&self.pattern, name)
            && self
                .actions
                .iter()
                .any(|granted| *granted == Action::All || *granted == action)
    }
}

/// The principal of connections that did not log in (`auth = "optional"` only).
pub const ANONYMOUS: &str = "anonymous";

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether `principal` may do `action` to the resource: some allow entry matches and no
/// deny entry does. A topic's `describe` is also granted by `publish` or `subscribe`.
pub fn permits(
    entries: &[AclEntry],
    principal: &str,
    resource: ResourceType,
    name: &str,
    action: Action,
) -> bool {
    let implied: &[Action] = match (resource, action) {
        (ResourceType::Topic, Action::Describe) => {
            &[Action::Describe, Action::Publish, Action::Subscribe]
        }
        _ => std::slice::from_ref(&action),
    };
    let denied = entries.iter().any(|entry| {
        entry.effect == Effect::Deny && entry.matches(principal, resource, name, action)
    });
    !denied
        && implied.iter().any(|&action| {
            entries.iter().any(|entry| {
                entry.effect == Effect::Allow && entry.matches(principal, resource, name, action)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        principal: &str,
        effect: Effect,
        resource: ResourceType,
        pattern: &str,
        actions: &[Action],
    ) -> AclEntry {
        AclEntry {
            principal: principal.into(),
            effect,
            resource,
            pattern: pattern.into(),
            actions: actions.to_vec(),
        }
    }

    #[test]
    fn deny_by_default_deny_overrides_allow_prefixes_match() {
        use Action::*;
        use Effect::*;
        use ResourceType::*;
        let entries = vec![
            entry("app", Allow, Topic, "orders*", &[Publish]),
            entry("app", Deny, Topic, "orders.secret", &[All]),
            entry("*", Allow, Topic, "public", &[Subscribe]),
            entry("ops", Allow, Admin, "*", &[All]),
        ];
        assert!(permits(&entries, "app", Topic, "orders", Publish));
        assert!(permits(&entries, "app", Topic, "orders.eu", Publish));
        assert!(!permits(&entries, "app", Topic, "orders.secret", Publish));
        assert!(!permits(&entries, "app", Topic, "orders", Subscribe));
        assert!(!permits(&entries, "app", Topic, "order", Publish));
        assert!(!permits(&entries, "nobody", Topic, "orders", Publish));
        assert!(permits(&entries, "nobody", Topic, "public", Subscribe));
        assert!(!permits(&entries, ANONYMOUS, Topic, "public", Subscribe));
        assert!(permits(&entries, "app", Topic, "orders", Describe));
        assert!(!permits(&entries, "app", Topic, "orders.secret", Describe));
        assert!(permits(&entries, "ops", Admin, "*", Security));
        assert!(!permits(&entries, "app", Admin, "*", Stats));
        assert!(!permits(&[], "app", Topic, "x", Publish));
    }

    #[test]
    fn entries_that_cannot_mean_what_they_say_are_refused() {
        use Action::*;
        use Effect::*;
        use ResourceType::*;
        assert!(entry("a", Allow, Topic, "x", &[Publish]).validate().is_ok());
        assert!(entry("a", Allow, Topic, "x", &[Commit]).validate().is_err());
        assert!(entry("a", Allow, Topic, "x", &[]).validate().is_err());
        assert!(entry("a", Allow, Topic, "a*b", &[Publish])
            .validate()
            .is_err());
        assert!(entry("a", Allow, Topic, "", &[Publish]).validate().is_err());
        assert!(entry("", Allow, Topic, "x", &[Publish]).validate().is_err());
        assert!(entry("a", Allow, Cluster, "x", &[Replicate])
            .validate()
            .is_err());
        assert!(entry("a", Allow, Cluster, "*", &[Replicate])
            .validate()
            .is_ok());
    }
}
