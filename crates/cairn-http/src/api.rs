//! The Durable Functions management routes under `/runtime/webhooks/durabletask/`.
//!
//! Shapes and status codes follow the Durable Functions HTTP API: a start answers 202 with the
//! management URLs and a `Location` to poll; a status read answers 202 (with `Location` and
//! `Retry-After`) while the instance runs and 200 once it has ended; requests that no longer
//! apply to an ended instance answer 410. Errors carry `{"error", "message"}`.

use crate::json::{self, StatusView};
use crate::params::Params;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_core::RuntimeStatus;
use cairn_runtime::{
    EngineError, EntityQuery, ExistingPolicy, InstanceQuery, QueryFilter, StartOptions,
};
use serde_json::{json, Value};

pub const BASE: &str = "/runtime/webhooks/durabletask";
const CONTINUATION: &str = "x-ms-continuation-token";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(&format!("{BASE}/orchestrators/{{name}}"), post(start))
        .route(
            &format!("{BASE}/orchestrators/{{name}}/{{instance_id}}"),
            post(start_with_id),
        )
        .route(
            &format!("{BASE}/instances"),
            get(list_instances).delete(purge_many),
        )
        .route(
            &format!("{BASE}/instances/{{id}}"),
            get(get_instance).delete(purge_one),
        )
        .route(
            &format!("{BASE}/instances/{{id}}/raiseEvent/{{event}}"),
            post(raise_event),
        )
        .route(
            &format!("{BASE}/instances/{{id}}/{{operation}}"),
            post(operate),
        )
        .route(&format!("{BASE}/entities"), get(list_all_entities))
        .route(&format!("{BASE}/entities/{{name}}"), get(list_entities))
        .route(
            &format!("{BASE}/entities/{{name}}/{{key}}"),
            get(get_entity).post(signal_entity).delete(delete_entity),
        )
}

/// A request body within the size limit (an oversized one is a 413 with a clear message).
pub struct Body(Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(
                    "the request body exceeds the payload limit (cairn serve --max-payload-bytes)"
                        .into(),
                )
                } else {
                    ApiError::BadRequest(format!("cannot read the request body: {e}"))
                }
            })
    }
}

/// A request body that must be JSON (or empty: no payload), as payload text.
fn json_body(body: &Bytes, what: &str) -> Result<Option<String>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest(format!("{what} is not UTF-8 text")))?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| {
        ApiError::BadRequest(format!(
            "{what} is not valid JSON ({e}); send a JSON value, e.g. \"text\" with its quotes, or nothing"
        ))
    })?;
    Ok(Some(text.to_string()))
}

/// `http://host` (`https://` when this front serves TLS) from the configured public URL or the
/// request's `Host`.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(u) = &state.config.public_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if state.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

fn instance_url(base: &str, id: &str) -> String {
    format!("{base}{BASE}/instances/{}", urlencoding::encode(id))
}

/// The management URLs of an instance (the body of a start's 202).
pub fn management_payload(base: &str, id: &str) -> Value {
    let u = instance_url(base, id);
    json!({
        "id": id,
        "statusQueryGetUri": u,
        "sendEventPostUri": format!("{u}/raiseEvent/{{eventName}}"),
        "terminatePostUri": format!("{u}/terminate?reason={{text}}"),
        "rewindPostUri": format!("{u}/rewind?reason={{text}}"),
        "purgeHistoryDeleteUri": u,
        "restartPostUri": format!("{u}/restart"),
        "suspendPostUri": format!("{u}/suspend?reason={{text}}"),
        "resumePostUri": format!("{u}/resume?reason={{text}}"),
    })
}

fn accepted_start(state: &AppState, headers: &HeaderMap, id: &str) -> Response {
    let base = base_url(state, headers);
    let payload = management_payload(&base, id);
    let mut response = (StatusCode::ACCEPTED, Json(payload)).into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&instance_url(&base, id)) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    response
}

async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    start_instance(state, name, None, headers, body).await
}

async fn start_with_id(
    State(state): State<AppState>,
    Path((name, instance_id)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    start_instance(state, name, Some(instance_id), headers, body).await
}

async fn start_instance(
    state: AppState,
    name: String,
    instance_id: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input = json_body(&body, "the orchestration input")?;
    let options = StartOptions {
        instance_id,
        // An ended instance is replaced; a live one is a conflict.
        if_exists: ExistingPolicy::ReplaceIf(vec![
            RuntimeStatus::Completed,
            RuntimeStatus::Failed,
            RuntimeStatus::Terminated,
        ]),
        ..StartOptions::default()
    };
    let id = state.client.start_raw(&name, input, options).await?;
    Ok(accepted_start(&state, &headers, &id))
}

async fn get_instance(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = Params::parse(query.as_deref())?;
    let show_history = p.bool("showHistory", false)?;
    let view = StatusView {
        show_input: p.bool("showInput", true)?,
        show_history_output: p.bool("showHistoryOutput", false)?,
    };
    let fail_500 = p.bool("returnInternalServerErrorOnFailure", false)?;
    let Some(s) = state.client.get_status(&id, show_history).await? else {
        return Err(ApiError::NotFound(format!("instance '{id}' not found")));
    };
    let body = Json(json::status(&s, view));
    Ok(match s.status {
        RuntimeStatus::Failed if fail_500 => {
            (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
        }
        status if status.is_terminal() => (StatusCode::OK, body).into_response(),
        _ => {
            // Still going: poll this same URL again.
            let mut response = (StatusCode::ACCEPTED, body).into_response();
            let mut url = instance_url(&base_url(&state, &headers), &id);
            if let Some(q) = query.as_deref().filter(|q| !q.is_empty()) {
                url = format!("{url}?{q}");
            }
            if let Ok(v) = HeaderValue::from_str(&url) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    })
}

fn filter_from(p: &Params) -> Result<QueryFilter, ApiError> {
    Ok(QueryFilter {
        statuses: p.statuses("runtimeStatus")?,
        created_from: p.time("createdTimeFrom")?,
        created_to: p.time("createdTimeTo")?,
        instance_id_prefix: p
            .get("instanceIdPrefix")
            .filter(|s| !s.is_empty())
            .map(String::from),
        name: p.get("name").filter(|s| !s.is_empty()).map(String::from),
    })
}

fn continuation(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(CONTINUATION) {
        None => Ok(None),
        Some(v) => {
            let t = v.to_str().map_err(|_| {
                ApiError::BadRequest(format!("the {CONTINUATION} header is not valid text"))
            })?;
            Ok((!t.is_empty() && t != "null").then(|| t.to_string()))
        }
    }
}

fn page_response(items: Vec<Value>, next: Option<String>) -> Response {
    let mut response = Json(Value::Array(items)).into_response();
    if let Some(t) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert(CONTINUATION, t);
    }
    response
}

async fn list_instances(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = Params::parse(query.as_deref())?;
    let show_input = p.bool("showInput", true)?;
    let q = InstanceQuery {
        filter: filter_from(&p)?,
        page_size: p.usize("top", 100, 1000)?,
        continuation_token: continuation(&headers)?,
        fetch_inputs_and_outputs: show_input,
    };
    let page = state.client.query(&q).await?;
    let view = StatusView {
        show_input,
        show_history_output: false,
    };
    let items = page
        .instances
        .iter()
        .map(|s| json::status(s, view))
        .collect();
    Ok(page_response(items, page.continuation_token))
}

async fn purge_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(s) = state.client.get_status(&id, false).await? else {
        return Err(ApiError::NotFound(format!("instance '{id}' not found")));
    };
    if !s.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "instance '{id}' is {}; only completed, failed or terminated instances can be purged (terminate it first)",
            s.status
        )));
    }
    let deleted = state.client.purge(&id).await?;
    if deleted == 0 {
        // It was restarted (or purged) between the two reads.
        return Err(ApiError::Conflict(format!(
            "instance '{id}' changed while being purged; read its status and try again"
        )));
    }
    Ok(Json(json!({ "instancesDeleted": deleted })).into_response())
}

async fn purge_many(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(query.as_deref())?;
    let filter = filter_from(&p)?;
    if filter.created_from.is_none() {
        return Err(ApiError::BadRequest(
            "purging many instances needs createdTimeFrom (an RFC 3339 time; use 1970-01-01T00:00:00Z for all)"
                .into(),
        ));
    }
    let deleted = state.client.purge_by_filter(filter).await?;
    if deleted == 0 {
        return Err(ApiError::NotFound(
            "no completed, failed or terminated instance matched the filter".into(),
        ));
    }
    Ok(Json(json!({ "instancesDeleted": deleted })).into_response())
}

async fn raise_event(
    State(state): State<AppState>,
    Path((id, event)): Path<(String, String)>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let data = json_body(&body, "the event data")?;
    state.client.raise_event_raw(&id, &event, data).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `terminate`, `suspend`, `resume`, `rewind` and `restart`.
async fn operate(
    State(state): State<AppState>,
    Path((id, operation)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = Params::parse(query.as_deref())?;
    let reason = p.get("reason").filter(|r| !r.is_empty());
    let c = &state.client;
    match operation.to_ascii_lowercase().as_str() {
        "terminate" => {
            // The reason becomes the output, a JSON payload: plain text is stored as a string.
            let reason = reason.map(|r| json::payload(Some(r)).to_string());
            c.terminate_raw(&id, reason, false).await?
        }
        "suspend" => c.suspend(&id, reason).await?,
        "resume" => c.resume(&id, reason).await?,
        "rewind" => c.rewind(&id, reason).await.map_err(|e| match e {
            EngineError::WrongStatus { status, .. } => {
                ApiError::wrong_status(&id, status, "only Failed instances can be rewound")
            }
            e => e.into(),
        })?,
        "restart" => return restart(&state, &id, &p, &headers).await,
        other => {
            return Err(ApiError::NoSuchRoute(format!(
                "unknown instance operation '{other}'; use terminate, suspend, resume, rewind, restart or raiseEvent/{{name}}"
            )))
        }
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn restart(
    state: &AppState,
    id: &str,
    p: &Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let same_id = !p.bool("restartWithNewInstanceId", true)?;
    let started = state.client.restart(id, same_id).await?;
    Ok(accepted_start(state, headers, &started))
}

fn entity_page_query(
    p: &Params,
    name: Option<String>,
    headers: &HeaderMap,
) -> Result<EntityQuery, ApiError> {
    Ok(EntityQuery {
        name,
        key_prefix: None,
        page_size: p.usize("top", 100, 1000)?,
        continuation_token: continuation(headers)?,
        include_state: p.bool("fetchState", false)?,
    })
}

async fn list_entities_with(
    state: AppState,
    name: Option<String>,
    query: Option<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = Params::parse(query.as_deref())?;
    let q = entity_page_query(&p, name, &headers)?;
    let from = p.time("lastOperationTimeFrom")?;
    let to = p.time("lastOperationTimeTo")?;
    let page = state.client.query_entities(&q).await?;
    let items = page
        .entities
        .iter()
        .filter(|e| {
            from.is_none_or(|f| e.last_modified >= f) && to.is_none_or(|t| e.last_modified <= t)
        })
        .map(|e| json::entity(e, q.include_state))
        .collect();
    Ok(page_response(items, page.continuation_token))
}

async fn list_all_entities(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list_entities_with(state, None, query, headers).await
}

async fn list_entities(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list_entities_with(state, Some(name), query, headers).await
}

/// `$` stands for the empty key, as in Durable Functions.
fn entity_key(key: &str) -> &str {
    if key == "$" {
        ""
    } else {
        key
    }
}

async fn get_entity(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match state.client.get_entity(&name, entity_key(&key)).await? {
        Some(e) if e.state.is_some() => Ok(Json(json::payload(e.state.as_deref())).into_response()),
        _ => Err(ApiError::NotFound(format!(
            "entity '{name}' with key '{key}' has no state"
        ))),
    }
}

async fn signal_entity(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let p = Params::parse(query.as_deref())?;
    let Some(op) = p.get("op").filter(|o| !o.is_empty()) else {
        return Err(ApiError::BadRequest(
            "signalling an entity needs the operation name: ?op=<operation>".into(),
        ));
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("application/json"));
    // JSON bodies are the input as given; any other content type is passed as a string.
    let input = if is_json {
        json_body(&body, "the operation input")?
    } else {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::BadRequest("the operation input is not UTF-8 text".into()))?;
        (!text.is_empty()).then(|| Value::String(text.to_string()).to_string())
    };
    state
        .client
        .signal_entity_raw(&name, entity_key(&key), op, input, None)
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn delete_entity(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state
        .client
        .signal_entity_raw(&name, entity_key(&key), "delete", None, None)
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}
