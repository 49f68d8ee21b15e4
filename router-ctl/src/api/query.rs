//! List queries, the same for every collection: `fields` (repeatable), equality filters,
//! `sort_key`/`sort_dir`, and `limit`/`marker` paging with a `next` link.

use std::collections::BTreeMap;

use axum::{extract::Query, http::Uri};
use serde_json::{Value, json};

use super::input;
use crate::model::Fault;

/// Query parameters: `fields` (repeatable), equality filters, sorting and pagination.
#[derive(Default)]
pub(super) struct ListQuery {
    pub(super) fields: Vec<String>,
    filters: BTreeMap<String, Vec<String>>,
    sort_key: Option<String>,
    descending: bool,
    limit: Option<usize>,
    marker: Option<String>,
}

const NON_FILTERS: &[&str] = &[
    "fields",
    "limit",
    "marker",
    "sort_key",
    "sort_dir",
    "page_reverse",
    "verbose",
];

/// Parses the query string of `uri`; 400 for a bad `sort_dir` or `limit`.
pub(super) fn parse_query(uri: &Uri) -> Result<ListQuery, Fault> {
    let Query(pairs): Query<Vec<(String, String)>> = Query::try_from_uri(uri)
        .map_err(|e| Fault::bad_request(format!("Malformed query string: {e}")))?;
    let mut q = ListQuery::default();
    for (k, v) in pairs {
        match k.as_str() {
            "fields" => q
                .fields
                .extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_string)),
            "sort_key" => q.sort_key = q.sort_key.or(Some(v)),
            "sort_dir" => match v.as_str() {
                "asc" => q.descending = false,
                "desc" => q.descending = true,
                _ => {
                    return Err(Fault::bad_request(format!(
                        "Invalid sort_dir '{v}': must be asc or desc"
                    )));
                }
            },
            "limit" => match v.parse::<usize>() {
                Ok(0) => q.limit = None,
                Ok(n) => q.limit = Some(n),
                Err(_) => {
                    return Err(Fault::bad_request(format!(
                        "Invalid limit '{v}': must be a non-negative integer"
                    )));
                }
            },
            "marker" => q.marker = Some(v),
            _ if NON_FILTERS.contains(&k.as_str()) => {}
            _ => q.filters.entry(k).or_default().push(v),
        }
    }
    Ok(q)
}

fn value_matches(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Bool(b) => input::parse_bool(want) == Some(*b),
        Value::Number(n) => n.to_string() == want,
        Value::Null => want.is_empty() || want == "None",
        Value::Array(items) => items.iter().any(|i| value_matches(i, want)),
        Value::Object(o) => {
            // `fixed_ips=ip_address=10.0.0.5` / `fixed_ips=subnet_id=...`
            let Some((k, w)) = want.split_once('=') else {
                return false;
            };
            o.get(k).is_some_and(|x| value_matches(x, w))
        }
    }
}

fn matches(item: &Value, filters: &BTreeMap<String, Vec<String>>) -> bool {
    filters.iter().all(|(k, wants)| match item.get(k) {
        // Filters on attributes this resource does not have are ignored, as Neutron did.
        None => true,
        Some(v) => wants.iter().any(|w| value_matches(v, w)),
    })
}

/// Keeps only the `fields` asked for (all when none).
pub(super) fn project(item: Value, fields: &[String]) -> Value {
    if fields.is_empty() {
        return item;
    }
    match item {
        Value::Object(o) => {
            Value::Object(o.into_iter().filter(|(k, _)| fields.contains(k)).collect())
        }
        other => other,
    }
}

fn sort_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One page of a list.
pub(super) struct Page {
    /// The items shown, projected to the fields asked for.
    pub(super) items: Vec<Value>,
    /// The query string of the next page (the same query with the marker moved to the last
    /// item shown), when items were left out by `limit`.
    pub(super) next: Option<String>,
}

/// Filters, sorts and pages `items` by `q`. `missing` is the 404 for a marker that names no
/// item; `query` is the request's query string, the base of the next page's.
pub(super) fn page(
    q: &ListQuery,
    items: Vec<Value>,
    query: Option<&str>,
    missing: impl FnOnce(&str) -> Fault,
) -> Result<Page, Fault> {
    let mut items: Vec<Value> = items
        .into_iter()
        .filter(|i| matches(i, &q.filters))
        .collect();
    if let Some(key) = &q.sort_key {
        items.sort_by_key(|i| sort_text(&i[key.as_str()]));
    }
    if q.descending {
        items.reverse();
    }
    if let Some(m) = &q.marker {
        let pos = items
            .iter()
            .position(|i| i["id"].as_str() == Some(m.as_str()))
            .ok_or_else(|| missing(m))?;
        items.drain(..=pos);
    }
    let mut next = None;
    if let Some(limit) = q.limit
        && items.len() > limit
    {
        items.truncate(limit);
        let last = items
            .last()
            .and_then(|i| i["id"].as_str())
            .unwrap_or_default();
        let mut parts: Vec<&str> = query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("marker="))
            .collect();
        let marker = format!("marker={last}");
        parts.push(&marker);
        next = Some(parts.join("&"));
    }
    let items = items.into_iter().map(|i| project(i, &q.fields)).collect();
    Ok(Page { items, next })
}

/// The `<collection>_links` value of a page with a next page at `href`.
pub(super) fn next_link(href: &str) -> Value {
    json!([{"rel": "next", "href": href}])
}
