//! The HTTP side: the route table and thin handlers that parse the request, run the resource
//! logic (`resources`) on a blocking thread, and shape the answer. One set of handlers serves
//! every collection of `resources::Kind`, so listing, paging and errors behave alike.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, put},
};
use rusqlite::Connection;
use serde_json::{Value, json};

use super::{
    ApiState, Ctx, discovery, input, observe,
    query::{self, next_link, parse_query, project},
    resources::{self, Cx, Kind},
};
use crate::model::Fault;

/// The router with every route; see `service` for the `.json` suffix handling.
pub fn router(state: ApiState) -> Router {
    let mut r = Router::new()
        .route("/", get(discovery::versions))
        .route("/v2.0", get(discovery::index))
        .route("/v2.0/", get(discovery::index))
        .route("/v2.0/extensions", get(discovery::extensions))
        .route("/v2.0/extensions/{alias}", get(discovery::extension));
    for kind in Kind::ALL {
        r = match kind.parent() {
            None => r
                .route(&format!("/v2.0/{}", kind.collection()), coll(kind))
                .route(&format!("/v2.0/{}/{{id}}", kind.collection()), item(kind)),
            Some(p) => {
                let base = format!("/v2.0/{}/{{parent}}/{}", p.collection(), kind.collection());
                r.route(&base, nested_coll(kind))
                    .route(&format!("{base}/{{id}}"), nested_item(kind))
            }
        };
    }
    for kind in Kind::ALL {
        if kind.standard_type().is_some() && kind.parent().is_none() {
            let base = format!("/v2.0/{}/{{id}}/tags", kind.collection());
            r = r
                .route(&base, tags_coll(kind))
                .route(&format!("{base}/{{tag}}"), tags_item(kind));
        }
    }
    r = observe::routes(r);
    r.route(
        "/v2.0/routers/{id}/add_router_interface",
        router_action(input::any_object, resources::change_interface, true),
    )
    .route(
        "/v2.0/routers/{id}/remove_router_interface",
        router_action(input::any_object, resources::change_interface, false),
    )
    .route(
        "/v2.0/routers/{id}/add_extraroutes",
        router_action(router_body, resources::change_extraroutes, true),
    )
    .route(
        "/v2.0/routers/{id}/remove_extraroutes",
        router_action(router_body, resources::change_extraroutes, false),
    )
    .fallback(|| async { Fault::new(404, "HTTPNotFound", "The resource could not be found.") })
    .method_not_allowed_fallback(|| async {
        Fault::new(
            405,
            "HTTPMethodNotAllowed",
            "The method is not allowed for this resource.",
        )
    })
    .layer(axum::middleware::map_response(super::neutron_errors))
    .with_state(state)
}

/// What a router action does to the router with the id (`add`: add, else remove) in one
/// mutation; its answer is the body of the response.
type RouterChange = fn(Cx, &str, &input::Obj, bool) -> Result<Value, Fault>;

/// `PUT` of a router action that adds or removes something (`add`): `change` gets the router
/// id and the body as `parse` reads it.
fn router_action(
    parse: fn(&[u8]) -> Result<input::Obj, Fault>,
    change: RouterChange,
    add: bool,
) -> MethodRouter<ApiState> {
    put(
        move |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>, body: Bytes| async move {
            let o = parse(&body)?;
            let v = s.mutate_as(ctx, move |cx| change(cx, &id, &o, add)).await?;
            Ok::<_, Fault>(Json(v))
        },
    )
}

/// The body of `add_extraroutes`/`remove_extraroutes`: `{"router": {"routes": [...]}}`.
fn router_body(body: &[u8]) -> Result<input::Obj, Fault> {
    input::resource_body(body, "router")
}

/// `GET` (list) and `POST` of a top-level collection.
fn coll(kind: Kind) -> MethodRouter<ApiState> {
    get(
        move |State(s): State<ApiState>, ctx: Ctx, uri: Uri, h: HeaderMap| {
            list(At(s, ctx, kind, None), uri, h)
        },
    )
    .post(move |State(s): State<ApiState>, ctx: Ctx, body: Bytes| {
        create(At(s, ctx, kind, None), body)
    })
}

/// `GET`, `PUT` and `DELETE` of one resource of a top-level collection.
fn item(kind: Kind) -> MethodRouter<ApiState> {
    get(
        move |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>, uri: Uri| {
            show(At(s, ctx, kind, None), id, uri)
        },
    )
    .put(
        move |State(s): State<ApiState>,
              ctx: Ctx,
              Path(id): Path<String>,
              h: HeaderMap,
              body: Bytes| { update(At(s, ctx, kind, None), id, h, body) },
    )
    .delete(
        move |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>, h: HeaderMap| {
            delete(At(s, ctx, kind, None), id, h)
        },
    )
}

/// `GET` (list) and `POST` of a collection under a parent resource.
fn nested_coll(kind: Kind) -> MethodRouter<ApiState> {
    get(
        move |State(s): State<ApiState>,
              ctx: Ctx,
              Path(parent): Path<String>,
              uri: Uri,
              h: HeaderMap| { list(At(s, ctx, kind, Some(parent)), uri, h) },
    )
    .post(
        move |State(s): State<ApiState>, ctx: Ctx, Path(parent): Path<String>, body: Bytes| {
            create(At(s, ctx, kind, Some(parent)), body)
        },
    )
}

/// `GET`, `PUT` and `DELETE` of one resource under a parent resource.
fn nested_item(kind: Kind) -> MethodRouter<ApiState> {
    type Ids = Path<(String, String)>;
    get(
        move |State(s): State<ApiState>, ctx: Ctx, Path((p, id)): Ids, uri: Uri| {
            show(At(s, ctx, kind, Some(p)), id, uri)
        },
    )
    .put(
        move |State(s): State<ApiState>,
              ctx: Ctx,
              Path((p, id)): Ids,
              h: HeaderMap,
              body: Bytes| { update(At(s, ctx, kind, Some(p)), id, h, body) },
    )
    .delete(
        move |State(s): State<ApiState>, ctx: Ctx, Path((p, id)): Ids, h: HeaderMap| {
            delete(At(s, ctx, kind, Some(p)), id, h)
        },
    )
}

/// The revision an `If-Match` header constrains a change to, if any.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, Fault> {
    let mut expected = None;
    for v in headers.get_all(axum::http::header::IF_MATCH) {
        let v = v
            .to_str()
            .map_err(|_| Fault::bad_request("Malformed If-Match header"))?;
        if let Some(n) = resources::if_match_revision(v)? {
            if expected.is_some() {
                return Err(Fault::new(
                    400,
                    "BadRequest",
                    "Bad if-match request: Multiple revision_number etags are not supported.",
                ));
            }
            expected = Some(n);
        }
    }
    Ok(expected)
}

/// `GET`, `PUT` (replace all), `POST` (add several) and `DELETE` (all) of
/// `/{collection}/{id}/tags`.
fn tags_coll(kind: Kind) -> MethodRouter<ApiState> {
    get(
        move |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>| async move {
            let tags = s
                .read(move |c| resources::list_tags(c, &ctx, kind, &id))
                .await?;
            Ok::<_, Fault>(Json(tags))
        },
    )
    .put(
        move |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>, body: Bytes| {
            set_tags(s, ctx, kind, id, body, true)
        },
    )
    .post(
        move |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>, body: Bytes| async move {
            let tags = set_tags(s, ctx, kind, id, body, false).await?;
            Ok::<_, Fault>((StatusCode::CREATED, tags))
        },
    )
    .delete(
        move |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>| {
            tag_change(s, StatusCode::NO_CONTENT, move |c| {
                resources::clear_tags(c, &ctx, kind, &id)
            })
        },
    )
}

/// `PUT` (`replace`) or `POST` of `/{collection}/{id}/tags`: the list given.
async fn set_tags(
    s: ApiState,
    ctx: Ctx,
    kind: Kind,
    id: String,
    body: Bytes,
    replace: bool,
) -> Result<Json<Value>, Fault> {
    let o = input::any_object(&body)?;
    let tags = s
        .mutate(move |c, _| resources::set_tags(c, &ctx, kind, &id, &o, replace))
        .await?;
    Ok(Json(tags))
}

/// `GET` (204 when present), `PUT` (add, 201) and `DELETE` (204) of one tag.
fn tags_item(kind: Kind) -> MethodRouter<ApiState> {
    type Ids = Path<(String, String)>;
    get(
        move |State(s): State<ApiState>, ctx: Ctx, Path((id, tag)): Ids| async move {
            s.read(move |c| resources::show_tag(c, &ctx, kind, &id, &tag))
                .await?;
            Ok::<_, Fault>(StatusCode::NO_CONTENT)
        },
    )
    .put(
        move |State(s): State<ApiState>, ctx: Ctx, Path((id, tag)): Ids| {
            tag_change(s, StatusCode::CREATED, move |c| {
                resources::add_tag(c, &ctx, kind, &id, &tag)
            })
        },
    )
    .delete(
        move |State(s): State<ApiState>, ctx: Ctx, Path((id, tag)): Ids| {
            tag_change(s, StatusCode::NO_CONTENT, move |c| {
                resources::remove_tag(c, &ctx, kind, &id, &tag)
            })
        },
    )
}

/// A tag mutation with no body to answer: `status` once `change` is committed.
async fn tag_change(
    s: ApiState,
    status: StatusCode,
    change: impl FnOnce(&Connection) -> Result<(), Fault> + Send + 'static,
) -> Result<StatusCode, Fault> {
    s.mutate(move |c, _| change(c)).await?;
    Ok(status)
}

/// The collection a request addresses: the state it runs against, the caller, the kind, and
/// the parent's id for a nested collection.
struct At(ApiState, Ctx, Kind, Option<String>);

impl ApiState {
    /// `mutate` on behalf of `ctx`: `f` gets the request's `Cx`.
    async fn mutate_as<T: Send + 'static>(
        &self,
        ctx: Ctx,
        f: impl FnOnce(Cx) -> Result<T, Fault> + Send + 'static,
    ) -> Result<T, Fault> {
        self.mutate(move |c, fx| f(Cx::new(c, fx, &ctx))).await
    }
}

async fn list(at: At, uri: Uri, headers: HeaderMap) -> Result<Response, Fault> {
    let At(s, ctx, kind, parent) = at;
    let mut q = parse_query(&uri)?;
    query::check_filters(&mut q, kind.filters())?;
    let p = parent.clone();
    let items = s
        .read(move |c| resources::list(c, &ctx, kind, p.as_deref()))
        .await?;
    let page = query::page(&q, items, uri.query(), |m| {
        kind.not_found(parent.as_deref(), m)
    })?;
    let mut body = serde_json::Map::new();
    if let Some(next) = page.next {
        let href = format!("{}{}?{next}", discovery::base(&headers), uri.path());
        body.insert(format!("{}_links", kind.collection()), next_link(&href));
    }
    body.insert(kind.collection().to_string(), Value::Array(page.items));
    Ok(Json(Value::Object(body)).into_response())
}

async fn show(at: At, id: String, uri: Uri) -> Result<Response, Fault> {
    let At(s, ctx, kind, parent) = at;
    let q = parse_query(&uri)?;
    let item = s
        .read(move |c| resources::show(c, &ctx, kind, parent.as_deref(), &id))
        .await?;
    Ok(Json(json!({ kind.singular(): project(item, &q.fields) })).into_response())
}

async fn create(at: At, body: Bytes) -> Result<Response, Fault> {
    let At(s, ctx, kind, parent) = at;
    let o = input::resource_body(&body, kind.singular())?;
    // Non-admins get 403 for any provider attribute (resources::create).
    if kind == Kind::Network
        && ctx.admin
        && let Some(Value::String(p)) = o.get("provider:physical_network")
        && !s.inner.physical_networks.contains(p)
    {
        return Err(Fault::invalid(format!(
            "physical_network '{p}' unknown for flat provider network"
        )));
    }
    let item = s
        .mutate_as(ctx, move |cx| {
            resources::create(cx, kind, parent.as_deref(), o)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ kind.singular(): item }))).into_response())
}

async fn update(at: At, id: String, headers: HeaderMap, body: Bytes) -> Result<Response, Fault> {
    let At(s, ctx, kind, parent) = at;
    let o = input::resource_body(&body, kind.singular())?;
    let expected = if_match(&headers)?;
    let item = s
        .mutate_as(ctx, move |cx| {
            if let Some(n) = expected {
                resources::check_revision(cx.c, cx.ctx, kind, &id, n)?;
            }
            resources::update(cx, kind, parent.as_deref(), &id, o)
        })
        .await?;
    Ok(Json(json!({ kind.singular(): item })).into_response())
}

async fn delete(at: At, id: String, headers: HeaderMap) -> Result<Response, Fault> {
    let At(s, ctx, kind, parent) = at;
    let expected = if_match(&headers)?;
    s.mutate_as(ctx, move |cx| {
        if let Some(n) = expected {
            resources::check_revision(cx.c, cx.ctx, kind, &id, n)?;
        }
        resources::delete(cx, kind, parent.as_deref(), &id)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
