//! Neutron's standard attributes on the API: `revision_number`, `created_at`, `updated_at` and
//! `tags` in every view of a kind that has them, the `/{collection}/{id}/tags` sub-resource
//! (Neutron's `tagging` extension), and `If-Match: revision_number=N`.

use std::collections::HashMap;

use rusqlite::Connection;
use serde_json::{Value, json};

use super::Kind;
use crate::{
    api::{
        Ctx,
        scope::{owned, visible},
    },
    model::{Fault, FloatingIp, Network, Port, Router, StandardAttrs, Subnet},
    store,
};

/// Neutron's `MAX_TAG_LEN`.
pub const MAX_TAG_LEN: usize = 255;
/// Neutron's `MAX_TAGS_COUNT`: tags one resource may carry.
pub const MAX_TAGS: usize = 50;

/// Adds the standard attributes to the view of one resource.
fn decorate(view: &mut Value, a: &StandardAttrs) {
    if let Value::Object(o) = view {
        o.insert("revision_number".into(), json!(a.revision_number));
        o.insert("created_at".into(), json!(a.created_at));
        o.insert("updated_at".into(), json!(a.updated_at));
        o.insert("tags".into(), json!(a.tags));
    }
}

/// Adds the standard attributes to `view` of resource `id` when `kind` has them.
pub(super) fn decorate_one(
    c: &Connection,
    kind: Kind,
    id: &str,
    view: &mut Value,
) -> Result<(), Fault> {
    if kind.standard_type().is_some()
        && let Some(a) = store::standard_attrs(c, id)?
    {
        decorate(view, &a);
    }
    Ok(())
}

/// Adds the standard attributes to every view of `items` (one query for all of them).
pub(super) fn decorate_all(c: &Connection, kind: Kind, items: &mut [Value]) -> Result<(), Fault> {
    let Some(table) = kind.standard_type() else {
        return Ok(());
    };
    let attrs: HashMap<String, StandardAttrs> = store::standard_attrs_of_type(c, table)?;
    for v in items {
        if let Some(a) = v["id"].as_str().and_then(|id| attrs.get(id)) {
            let a = a.clone();
            decorate(v, &a);
        }
    }
    Ok(())
}

/// The resource `id` of `kind` if the caller may see it (`change`: and change its tags, as
/// Neutron's `update_<resource>:tags` policy, owner or admin).
fn check(c: &Connection, ctx: &Ctx, kind: Kind, id: &str, change: bool) -> Result<(), Fault> {
    let action = format!("update_{}:tags", kind.singular());
    macro_rules! one {
        ($t:ty) => {
            if change {
                owned::<$t>(c, ctx, id, &action).map(drop)
            } else {
                visible::<$t>(c, ctx, id).map(drop)
            }
        };
    }
    match kind {
        Kind::Network => one!(Network),
        Kind::Subnet => one!(Subnet),
        Kind::Port => one!(Port),
        Kind::Router => one!(Router),
        Kind::FloatingIp => one!(FloatingIp),
        Kind::PortForwarding => Err(Fault::new(
            404,
            "HTTPNotFound",
            "The resource could not be found.",
        )),
    }
}

/// Neutron's `validate_tag`: a string of at most `MAX_TAG_LEN` characters.
fn validate_tag(tag: &Value) -> Result<String, Fault> {
    match tag {
        Value::String(s) if s.chars().count() <= MAX_TAG_LEN => Ok(s.clone()),
        Value::String(s) => Err(Fault::invalid(format!(
            "'{s}' exceeds maximum length of {MAX_TAG_LEN}"
        ))),
        v => Err(Fault::invalid(format!("'{v}' is not a valid string"))),
    }
}

/// Neutron's `validate_tags`: `{"tags": [unique strings]}`.
pub(super) fn parse_tags(body: Option<&Value>) -> Result<Vec<String>, Fault> {
    let Some(v) = body else {
        return Err(Fault::invalid("Invalid tags body"));
    };
    let Value::Array(items) = v else {
        return Err(Fault::invalid(format!("'{v}' is not a list")));
    };
    let tags = items
        .iter()
        .map(validate_tag)
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::BTreeSet::new();
    let dups: Vec<&str> = tags
        .iter()
        .filter(|t| !seen.insert(t.as_str()))
        .map(String::as_str)
        .collect();
    if !dups.is_empty() {
        return Err(Fault::invalid(format!(
            "Duplicate items in the list: '{}'",
            dups.join(", ")
        )));
    }
    Ok(tags)
}

fn limit(kind: Kind, count: usize) -> Result<(), Fault> {
    if count > MAX_TAGS {
        return Err(Fault::new(
            400,
            "BadRequest",
            format!(
                "Bad {} request: The number of tags exceed the per-resource limit of {MAX_TAGS}",
                kind.singular()
            ),
        ));
    }
    Ok(())
}

fn tag_not_found(tag: &str) -> Fault {
    Fault::new(404, "TagNotFound", format!("Tag {tag} could not be found."))
}

/// `GET …/{id}/tags`.
pub fn list_tags(c: &Connection, ctx: &Ctx, kind: Kind, id: &str) -> Result<Value, Fault> {
    check(c, ctx, kind, id, false)?;
    Ok(json!({"tags": store::tags(c, id)?}))
}

/// `GET …/{id}/tags/{tag}`: Ok when the resource has it, else 404 `TagNotFound`.
pub fn show_tag(c: &Connection, ctx: &Ctx, kind: Kind, id: &str, tag: &str) -> Result<(), Fault> {
    validate_tag(&json!(tag))?;
    check(c, ctx, kind, id, false)?;
    if store::tags(c, id)?.iter().any(|t| t == tag) {
        Ok(())
    } else {
        Err(tag_not_found(tag))
    }
}

/// `PUT …/{id}/tags/{tag}`: adds one tag.
pub fn add_tag(c: &Connection, ctx: &Ctx, kind: Kind, id: &str, tag: &str) -> Result<(), Fault> {
    validate_tag(&json!(tag))?;
    check(c, ctx, kind, id, true)?;
    let mut tags = store::tags(c, id)?;
    if !tags.iter().any(|t| t == tag) {
        tags.push(tag.to_string());
    }
    limit(kind, tags.len())?;
    store::add_tag(c, id, tag)
}

/// `DELETE …/{id}/tags/{tag}`: 404 `TagNotFound` when the resource does not have it.
pub fn remove_tag(c: &Connection, ctx: &Ctx, kind: Kind, id: &str, tag: &str) -> Result<(), Fault> {
    validate_tag(&json!(tag))?;
    check(c, ctx, kind, id, true)?;
    if store::remove_tag(c, id, tag)? {
        Ok(())
    } else {
        Err(tag_not_found(tag))
    }
}

/// `PUT …/{id}/tags` (`replace`: the list becomes every tag) or `POST …/{id}/tags` (Neutron's
/// `tag-creation`: adds the tags the resource lacks), with `{"tags": [...]}`; returns the list
/// given.
pub fn set_tags(
    c: &Connection,
    ctx: &Ctx,
    kind: Kind,
    id: &str,
    body: &crate::api::input::Obj,
    replace: bool,
) -> Result<Value, Fault> {
    let tags = parse_tags(body.get("tags"))?;
    check(c, ctx, kind, id, true)?;
    if replace {
        limit(kind, tags.len())?;
        store::replace_tags(c, id, &tags)?;
    } else {
        let mut all = store::tags(c, id)?;
        all.extend(
            tags.iter()
                .filter(|t| !all.contains(t))
                .cloned()
                .collect::<Vec<_>>(),
        );
        limit(kind, all.len())?;
        for t in &tags {
            store::add_tag(c, id, t)?;
        }
    }
    Ok(json!({ "tags": tags }))
}

/// `DELETE …/{id}/tags`: removes every tag.
pub fn clear_tags(c: &Connection, ctx: &Ctx, kind: Kind, id: &str) -> Result<(), Fault> {
    check(c, ctx, kind, id, true)?;
    store::replace_tags(c, id, &[])
}

/// Tags given on create (Neutron takes them in a port's POST body; here on every kind with
/// tags, as `tag-creation` does), applied once the resource exists.
pub(super) fn tags_on_create(
    c: &Connection,
    kind: Kind,
    id: &str,
    tags: Option<Vec<String>>,
) -> Result<(), Fault> {
    let Some(tags) = tags else {
        return Ok(());
    };
    limit(kind, tags.len())?;
    store::replace_tags(c, id, &tags)
}

/// Parses an `If-Match` header value: the `revision_number=N` etag, None when there is none.
/// Neutron's `check_request_for_revision_constraint`, with its 400s.
pub fn if_match_revision(header: &str) -> Result<Option<i64>, Fault> {
    let bad = |msg: &str| Fault::new(400, "BadRequest", format!("Bad if-match request: {msg}"));
    let mut found = None;
    for etag in header.split(',') {
        let e = etag.trim();
        let e = e.strip_prefix("W/").unwrap_or(e);
        let e = e.trim_matches('"');
        let Some(n) = e.strip_prefix("revision_number=") else {
            continue;
        };
        if found.is_some() {
            return Err(bad("Multiple revision_number etags are not supported."));
        }
        found = Some(n.parse::<i64>().map_err(|_| {
            bad("Revision number etag must be in the format of revision_number=<int>")
        })?);
    }
    Ok(found)
}

/// Neutron's `RevisionNumberConstraintFailed` (412) unless resource `id` is at `expected`.
pub fn check_revision(
    c: &Connection,
    ctx: &Ctx,
    kind: Kind,
    id: &str,
    expected: i64,
) -> Result<(), Fault> {
    if kind.standard_type().is_none() {
        return Err(Fault::new(
            400,
            "BadRequest",
            format!(
                "Bad {} request: Revision matching not supported for this resource",
                kind.collection()
            ),
        ));
    }
    // Invisible resources answer their 404 before their revision is shown.
    check(c, ctx, kind, id, false)?;
    match store::standard_attrs(c, id)? {
        Some(a) if a.revision_number != expected => Err(Fault::new(
            412,
            "RevisionNumberConstraintFailed",
            format!(
                "Constrained to {expected}, but current revision is {}",
                a.revision_number
            ),
        )),
        _ => Ok(()),
    }
}
