//! Names or ids everywhere: a user may type either, as with the OpenStack client. An id that
//! exists wins; otherwise the name must match exactly one resource.

use anyhow::{Result, bail};
use serde_json::Value;

use super::client::Client;

/// The Neutron resources the CLI addresses by name or id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Network,
    Subnet,
    Router,
    Port,
}

impl Resource {
    /// The JSON member of a single resource (`"network"`).
    pub fn singular(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Subnet => "subnet",
            Self::Router => "router",
            Self::Port => "port",
        }
    }

    /// The JSON member of a list (`"networks"`).
    pub fn plural(self) -> &'static str {
        match self {
            Self::Network => "networks",
            Self::Subnet => "subnets",
            Self::Router => "routers",
            Self::Port => "ports",
        }
    }

    /// `/networks`
    pub fn collection(self) -> &'static str {
        match self {
            Self::Network => "/networks",
            Self::Subnet => "/subnets",
            Self::Router => "/routers",
            Self::Port => "/ports",
        }
    }

    /// `/networks/{id}`
    pub fn item(self, id: &str) -> String {
        format!("{}/{id}", self.collection())
    }
}

/// Whether `s` has the shape of a Neutron id (a UUID), so it is worth trying as one.
pub fn looks_like_id(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok()
}

/// Picks the one resource of `r` whose id is `wanted` or else whose name is `wanted` from
/// `candidates` (a list answer, filtered or not by the daemon).
pub fn pick(r: Resource, wanted: &str, candidates: &[Value]) -> Result<String> {
    let id_of = |v: &Value| v.get("id").and_then(Value::as_str).map(str::to_string);
    if let Some(id) = candidates.iter().filter_map(id_of).find(|id| id == wanted) {
        return Ok(id);
    }
    let named: Vec<String> = candidates
        .iter()
        .filter(|v| v.get("name").and_then(Value::as_str) == Some(wanted))
        .filter_map(id_of)
        .collect();
    match named.as_slice() {
        [] => bail!("no {} named or with id `{wanted}`", r.singular()),
        [one] => Ok(one.clone()),
        many => bail!(
            "{} {} are named `{wanted}`; use an id: {}",
            many.len(),
            r.plural(),
            many.join(", ")
        ),
    }
}

/// Resolves `name_or_id` to an id through the API: `GET /{r}/{id}` when it looks like an id,
/// then `GET /{r}?name=...`.
pub fn find(client: &Client, r: Resource, name_or_id: &str) -> Result<String> {
    if name_or_id.is_empty() {
        bail!("empty {} name", r.singular());
    }
    if looks_like_id(name_or_id)
        && let Ok(v) = client.get(&r.item(name_or_id))
        && let Some(id) = v
            .get(r.singular())
            .and_then(|x| x.get("id"))
            .and_then(Value::as_str)
    {
        return Ok(id.to_string());
    }
    let found = client.list(r, &[("name", name_or_id)])?;
    pick(r, name_or_id, &found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn items() -> Vec<Value> {
        vec![
            json!({"id": "11111111-1111-4111-8111-111111111111", "name": "web"}),
            json!({"id": "22222222-2222-4222-8222-222222222222", "name": "db"}),
            json!({"id": "33333333-3333-4333-8333-333333333333", "name": "db"}),
            json!({"id": "44444444-4444-4444-8444-444444444444", "name": "11111111-1111-4111-8111-111111111111"}),
        ]
    }

    #[test]
    fn unique_name_resolves() {
        assert_eq!(
            pick(Resource::Network, "web", &items()).unwrap(),
            "11111111-1111-4111-8111-111111111111"
        );
    }

    #[test]
    fn id_wins_over_a_name_equal_to_it() {
        assert_eq!(
            pick(
                Resource::Router,
                "11111111-1111-4111-8111-111111111111",
                &items()
            )
            .unwrap(),
            "11111111-1111-4111-8111-111111111111"
        );
    }

    #[test]
    fn ambiguous_name_lists_candidates() {
        let e = pick(Resource::Subnet, "db", &items())
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 subnets are named `db`"), "{e}");
        assert!(e.contains("22222222-2222-4222-8222-222222222222"), "{e}");
        assert!(e.contains("33333333-3333-4333-8333-333333333333"), "{e}");
    }

    #[test]
    fn unknown_name_is_an_error() {
        let e = pick(Resource::Port, "nope", &items())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "no port named or with id `nope`");
        // An unfiltered list answer is filtered here: a prefix is not a match.
        assert!(pick(Resource::Port, "we", &items()).is_err());
    }

    #[test]
    fn id_shape() {
        assert!(looks_like_id("11111111-1111-4111-8111-111111111111"));
        assert!(!looks_like_id("web"));
        assert!(!looks_like_id("../routers"));
    }

    #[test]
    fn paths() {
        assert_eq!(Resource::Router.item("x"), "/routers/x");
        assert_eq!(Resource::Subnet.collection(), "/subnets");
    }
}
