//! The admin listener: Prometheus metrics, health and readiness, and a
//! token-protected API over the policies and backends.
//!
//! - `GET /metrics`, `GET /healthz`, `GET /readyz`: open, for scrapers and
//!   orchestrators.
//! - `GET /admin/policies`, `GET /admin/backends`, `POST /admin/reload`:
//!   need `Authorization: Bearer <admin.token>`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::config::ConfigError;
use crate::contract::json::circuit_json;
use crate::error::GatewayError;
use crate::gateway::http::{constant_time_eq, error_response, json_response, Body};
use crate::gateway::Gateway;

/// Answers one admin request; `/admin/*` takes the `admin.token` serving now (none: off).
pub async fn handle(gateway: Arc<Gateway>, request: Request<Incoming>) -> Response<Body> {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    match (method, path.as_str()) {
        (Method::GET, "/metrics") => {
            let mut r = Response::new(crate::gateway::http::full_body(Bytes::from(gateway.metrics().render(&gateway))));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
            r
        }
        (Method::GET, "/healthz") => json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}")),
        (Method::GET, "/readyz") => {
            let missing = gateway.policies_missing();
            let draining = gateway.is_draining();
            let ready = missing.is_empty() && !draining;
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json_response(status, Bytes::from(json!({"ready": ready, "draining": draining, "policies_not_loaded": missing}).to_string()))
        }
        (method, "/metrics" | "/healthz" | "/readyz") => not_allowed(&method, &path, "GET"),
        (method, path) if path.starts_with("/admin/") => {
            // Read per request: a reloaded configuration's token applies at once.
            if let Err(e) = authorize(gateway.admin_token().as_deref(), &request) {
                return error_response(&e);
            }
            match (method, path) {
                (Method::GET, "/admin/policies") => json_response(StatusCode::OK, Bytes::from(policies(&gateway).to_string())),
                (Method::GET, "/admin/backends") => json_response(StatusCode::OK, Bytes::from(backends(&gateway).to_string())),
                (Method::POST, "/admin/reload") => reload(gateway).await,
                (Method::POST, path) if path.starts_with("/admin/policies/") => {
                    let query = request.uri().query().unwrap_or_default().to_owned();
                    policy_action(gateway, path.trim_start_matches("/admin/policies/"), &query).await
                }
                (method, "/admin/policies" | "/admin/backends") => not_allowed(&method, path, "GET"),
                (method, "/admin/reload") => not_allowed(&method, path, "POST"),
                (method, path) if path.starts_with("/admin/policies/") => not_allowed(&method, path, "POST"),
                (method, path) => error_response(&GatewayError::unknown_url(method.as_str(), path)),
            }
        }
        (method, path) => error_response(&GatewayError::unknown_url(method.as_str(), path)),
    }
}

/// `POST /admin/policies/NAME/promote` (the canary replaces NAME),
/// `/rollback` (the canary serves nothing until its file changes) and
/// `/activate?version=V` (a kept version of NAME serves again).
async fn policy_action(gateway: Arc<Gateway>, rest: &str, query: &str) -> Response<Body> {
    let Some((name, action)) = rest.rsplit_once('/') else {
        return error_response(&GatewayError::unknown_url("POST", &format!("/admin/policies/{rest}")));
    };
    let known = gateway.registry().get(name).is_some() || gateway.registry().statuses().iter().any(|s| s.name == name);
    if !known {
        let mut error = GatewayError::bad_request(format!("no policy `{name}` on this router (GET /admin/policies lists them)"), None);
        error.status = StatusCode::NOT_FOUND;
        return error_response(&error);
    }
    // The request's own mistakes are 404 and 400; a 409 is a refusal of the policy's state.
    let version = query.split('&').find_map(|kv| kv.strip_prefix("version=")).unwrap_or_default().to_owned();
    match action {
        "promote" | "rollback" => {}
        "activate" if !version.is_empty() => {}
        "activate" => return error_response(&GatewayError::bad_request("activate needs the version: activate?version=V", Some("version"))),
        other => {
            let mut error = GatewayError::bad_request(format!("unknown action `{other}`: promote, rollback or activate?version=V"), None);
            error.status = StatusCode::NOT_FOUND;
            return error_response(&error);
        }
    }
    let (name, action) = (name.to_owned(), action.to_owned());
    let result = tokio::task::spawn_blocking(move || match action.as_str() {
        "promote" => gateway.promote(&name).map(|v| json!({"promoted": name, "serving": v})),
        "rollback" => {
            let canary = crate::policy::Candidate::Canary.name_for(&name);
            gateway.roll_back(&canary, "rolled back through the admin API").map(|()| json!({"rolled_back": canary}))
        }
        _ => gateway.registry().activate(&name, &version).map(|p| json!({"activated": name, "serving": p.version()})),
    })
    .await;
    match result {
        Ok(Ok(body)) => json_response(StatusCode::OK, Bytes::from(body.to_string())),
        Ok(Err(message)) => {
            let mut error = GatewayError::bad_request(message, None);
            error.status = StatusCode::CONFLICT;
            error_response(&error)
        }
        Err(e) => error_response(&GatewayError::internal(format!("policy action failed: {e}"))),
    }
}

/// Reads the configuration file again (when there is one) and rescans the
/// policy directory. An invalid file answers 422 naming the file, key and
/// problem, and the configuration serving now stays.
async fn reload(gateway: Arc<Gateway>) -> Response<Body> {
    // Loading can compile policies for seconds: off the async workers.
    let result = tokio::task::spawn_blocking(move || {
        let from_file = gateway.reload_file()?;
        let mut report = gateway.registry().rescan();
        let config_reloaded = from_file.is_some();
        if let Some(first) = from_file {
            // New backends or policy configs reload policies too.
            report.loaded.extend(first.loaded);
            report.failed.extend(first.failed);
            report.unloaded.extend(first.unloaded);
        }
        Ok::<_, ConfigError>((config_reloaded, report))
    })
    .await;
    match result {
        Ok(Ok((config, report))) => {
            let body = json!({"config_reloaded": config, "loaded": report.loaded, "failed": report.failed, "unloaded": report.unloaded});
            json_response(StatusCode::OK, Bytes::from(body.to_string()))
        }
        Ok(Err(e)) => {
            let mut error = GatewayError::bad_request(format!("configuration not reloaded, the previous one keeps serving: {e}"), None);
            error.status = StatusCode::UNPROCESSABLE_ENTITY;
            error_response(&error)
        }
        Err(e) => error_response(&GatewayError::internal(format!("reload failed: {e}"))),
    }
}

/// 405 for a known path asked with another method, with the `Allow` header
/// RFC 9110 asks for.
fn not_allowed(method: &Method, path: &str, allow: &'static str) -> Response<Body> {
    let mut response = error_response(&GatewayError::method_not_allowed(method.as_str(), path));
    response.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    response
}

fn authorize(token: Option<&str>, request: &Request<Incoming>) -> Result<(), GatewayError> {
    let Some(token) = token else {
        let mut e = GatewayError::unauthorized();
        e.status = StatusCode::FORBIDDEN;
        e.message = "the admin API is off: set admin.token in the configuration".into();
        return Err(e);
    };
    // The scheme's name is case-insensitive (RFC 9110, 11.1).
    let sent = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim_start());
    match sent {
        Some(sent) if constant_time_eq(sent.as_bytes(), token.as_bytes()) => Ok(()),
        _ => {
            let mut e = GatewayError::unauthorized();
            e.code = Some("invalid_admin_token");
            e.message = "missing or invalid admin token: send `Authorization: Bearer <admin.token>`".into();
            Err(e)
        }
    }
}

fn unix(t: Option<std::time::SystemTime>) -> serde_json::Value {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(serde_json::Value::Null, |d| json!(d.as_secs()))
}

fn policies(gateway: &Gateway) -> serde_json::Value {
    let registry = gateway.registry();
    let list: Vec<serde_json::Value> = registry
        .statuses()
        .into_iter()
        .map(|s| {
            let calls = registry.get(&s.name).map(|p| {
                let c = p.call_stats();
                let failures: serde_json::Map<String, serde_json::Value> = c.failures.iter().map(|(k, n)| (k.as_str().to_owned(), json!(n))).collect();
                json!({"calls": c.calls, "failures": failures, "instances_created": c.instances_created, "fuel_used": c.fuel_used, "log_lines_dropped": c.log_lines_dropped, "quarantined": c.quarantined,
                    "observed": c.observed, "observe_failures": c.observe_failures, "observe_dropped": c.observe_dropped})
            });
            let world = registry.get(&s.name).map(|p| p.world());
            json!({
                "name": s.name,
                "file": s.file.display().to_string(),
                "version": s.version,
                "digest": s.digest,
                "signed_by": s.signed_by,
                "signature_refusals": s.signature_refusals,
                "world": world,
                "loaded_at": unix(s.loaded_at),
                "loads": s.loads,
                "failed_loads": s.failed_loads,
                "last_error": s.last_error.map(|e| json!({"kind": e.kind().as_str(), "message": e.message()})),
                "failed_at": unix(s.failed_at),
                "stats": calls,
                "kept_versions": s.kept,
                "activated_by_hand": s.activated_by_hand,
                "candidates": crate::gateway::candidates::admin_json(gateway.candidates(), registry, &s.name),
            })
        })
        .collect();
    let origin = gateway.origin().map(|o| {
        let st = o.status();
        json!({
            "sources": o.sources().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "poll_interval_ms": o.interval().as_millis() as u64,
            "polls": {"unchanged": st.unchanged, "changed": st.changed, "failed": st.failed},
            "last_poll_at": unix(st.last_poll_at),
            "last_success_at": unix(st.last_success_at),
            "last_change_at": unix(st.last_change_at),
            "last_error": st.last_error.map(|(e, at)| json!({"source": e.source, "kind": e.kind.as_str(), "message": e.problem, "at": unix(Some(at))})),
            "errors": st.errors.iter().map(|e| json!({"source": e.source, "kind": e.kind.as_str(), "message": e.problem})).collect::<Vec<_>>(),
            "listed": st.listed,
        })
    });
    json!({"policies": list, "origin": origin})
}

fn backends(gateway: &Gateway) -> serde_json::Value {
    let state = gateway.state();
    let list: Vec<serde_json::Value> = state
        .upstreams
        .iter()
        .map(|u| {
            let v = u.stats.view_now();
            json!({
                "name": u.name(), "provider": u.config.provider.as_str(), "model": u.config.model(), "tags": u.config.tags,
                "circuit": circuit_json(v.circuit), "in_flight": v.in_flight, "latency_p50_ms": v.latency_p50_ms, "latency_p95_ms": v.latency_p95_ms,
                "ttft_ms": v.ttft_ms, "error_rate": v.error_rate, "samples": v.samples,
            })
        })
        .collect();
    json!({"backends": list})
}
