//! List queries, the same for every collection: `fields` (repeatable), equality filters on the
//! attributes a collection allows (Neutron's filter validation: any other is a 400), the tag
//! filters (`tags`, `tags-any`, `not-tags`, `not-tags-any`), `changed_since`,
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

/// The tag filters: each takes comma-separated tags, repeated parameters adding to the list.
pub(super) const TAG_FILTERS: [&str; 4] = ["tags", "tags-any", "not-tags", "not-tags-any"];

/// Whether the tags of `item` pass tag filter `key` with `wants` (Neutron's semantics: `tags`
/// all of them, `tags-any` at least one, `not-tags` not all of them, `not-tags-any` none).
fn tags_match(item: &Value, key: &str, wants: &[String]) -> bool {
    let have: Vec<&str> = item["tags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut wanted = wants
        .iter()
        .flat_map(|w| w.split(','))
        .filter(|t| !t.is_empty())
        .peekable();
    if wanted.peek().is_none() {
        return true;
    }
    match key {
        "tags" => wanted.all(|t| have.contains(&t)),
        "tags-any" => wanted.any(|t| have.contains(&t)),
        "not-tags" => !wanted.all(|t| have.contains(&t)),
        _ => !wanted.any(|t| have.contains(&t)),
    }
}

fn matches(item: &Value, filters: &BTreeMap<String, Vec<String>>) -> bool {
    filters.iter().all(|(k, wants)| {
        if TAG_FILTERS.contains(&k.as_str()) {
            return tags_match(item, k, wants);
        }
        if k == "changed_since" {
            // Both sides are `YYYY-MM-DDTHH:MM:SSZ` (checked by `validate`): text order is
            // time order.
            return wants
                .iter()
                .all(|w| item["updated_at"].as_str().is_some_and(|u| u >= w.as_str()));
        }
        match item.get(k) {
            // An attribute Neutron filters on that this view does not show (a subnet's
            // `shared`): the filter does not narrow.
            None => true,
            Some(v) => wants.iter().any(|w| value_matches(v, w)),
        }
    })
}

/// `changed_since` in Neutron's accepted forms, as `YYYY-MM-DDTHH:MM:SSZ` (UTC only: a
/// `Z`, `+00:00` or no zone).
fn normalise_time(s: &str) -> Option<String> {
    let base = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+00:00"))
        .unwrap_or(s);
    let base = base.split('.').next().unwrap_or(base);
    let b = base.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let ok = b.len() == 19
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    ok.then(|| format!("{base}Z"))
}

/// Neutron's filter validation: every filter must be one `allowed` (the collection's
/// filterable attributes); the tag filters and `changed_since` only where `tagged`.
fn validate(q: &mut ListQuery, allowed: &[&str], tagged: bool) -> Result<(), Fault> {
    let invalid: Vec<String> = q
        .filters
        .keys()
        .filter(|k| {
            let k = k.as_str();
            !(allowed.contains(&k) || tagged && (TAG_FILTERS.contains(&k) || k == "changed_since"))
        })
        .map(|k| format!("'{k}'"))
        .collect();
    if !invalid.is_empty() {
        return Err(Fault::bad_request(format!(
            "[{}] is invalid attribute for filtering",
            invalid.join(", ")
        )));
    }
    if let Some(times) = q.filters.get_mut("changed_since") {
        for t in times.iter_mut() {
            *t = normalise_time(t).ok_or_else(|| {
                Fault::invalid(
                    "The input changed_since must be in the following format: YYYY-MM-DDTHH:MM:SS",
                )
            })?;
        }
    }
    Ok(())
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
    /// item shown), whenever the page is full (as Neutron: a full last page links to an
    /// empty one).
    pub(super) next: Option<String>,
}

/// Which filters a collection accepts: its filterable attributes, and whether it has tags
/// (then the tag filters and `changed_since` too).
pub(super) struct Filters {
    pub(super) attributes: Vec<&'static str>,
    pub(super) tagged: bool,
}

/// Checks the filters of `q` against `filters` (400 for any other, before anything is read).
pub(super) fn check_filters(q: &mut ListQuery, filters: Filters) -> Result<(), Fault> {
    validate(q, &filters.attributes, filters.tagged)
}

/// Filters, sorts and pages `items` by `q` (its filters already checked by `check_filters`).
/// `missing` is the 404 for a marker that names no item; `query` is the request's query
/// string, the base of the next page's.
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
        && items.len() >= limit
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
