//! HTTP/JSON on the gRPC paths, for clients without gRPC: the Connect protocol's unary form.
//! `POST /package.Service/Method` with `Content-Type: application/json` and the request message
//! in the protobuf JSON mapping (or `application/proto` and its wire bytes, Connect's binary
//! form); the answer is the response message in the same form, or a Connect error
//! (`{"code": "invalid_argument", "message": …, "details": [...]}`) whose details carry the same
//! `google.rpc.BadRequest` (and the others) as the gRPC status, each with a readable `debug` form.
//! The JSON is turned into the message's wire bytes and then checked exactly as a gRPC request.

use std::sync::Arc;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use serde_json::json;
use tonic::{Code, Status};

use super::{Method, Shared};

pub(super) async fn serve(
    method: Arc<Method>,
    shared: Arc<Shared>,
    request: http::Request<axum::body::Body>,
) -> Response {
    let started = Instant::now();
    let result = answer(&method, &shared, request).await;
    let code = result.as_ref().err().map_or(Code::Ok, |(s, _)| s.code());
    shared.metrics.observe_call(&method.name, code, started);
    match result {
        Ok((body, content_type)) => ([(http::header::CONTENT_TYPE, content_type)], body).into_response(),
        Err((status, debug)) => error_response(&status, debug),
    }
}

type Failure = (Status, Option<serde_json::Value>);

/// The reply's body and its content type.
type Answer = (Vec<u8>, &'static str);

async fn answer(method: &Method, shared: &Shared, request: http::Request<axum::body::Body>) -> Result<Answer, Failure> {
    let plain = |s: Status| (s, None);
    if request.method() != http::Method::POST {
        return Err(plain(Status::unimplemented(format!(
            "{} takes POST with Content-Type: application/json (or gRPC)",
            method.name
        ))));
    }
    let content_type = request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let binary = match essence {
        "application/json" => false,
        "application/proto" => true,
        _ => {
            return Err(plain(Status::unimplemented(format!(
                "Content-Type {content_type:?}: {} takes application/json, application/proto (Connect) or gRPC (application/grpc)",
                method.name
            ))))
        }
    };
    if method.client_streaming {
        return Err(plain(Status::unimplemented(format!(
            "{} is a client stream, served over gRPC only; send one event at a time to a unary method over JSON",
            method.name
        ))));
    }
    let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
    let body = axum::body::to_bytes(request.into_body(), shared.max_message_bytes).await.map_err(|_| {
        plain(Status::resource_exhausted(format!(
            "the request body is over gateway.max_message_bytes ({} bytes)",
            shared.max_message_bytes
        )))
    })?;
    // Authentication before the body is looked at: an unauthenticated caller learns nothing of
    // the contract.
    super::authorize(method, shared, &metadata).map_err(plain)?;
    let message = if binary { body } else { from_json(method, &body).map_err(plain)? };
    let request = tonic::Request::from_parts(metadata, tonic::Extensions::default(), message);
    let deadline = super::deadline_of(request.metadata());
    let response = super::with_deadline(deadline, super::unary(method, shared, request)).await.map_err(|status| {
        let debug = violations_debug(&status);
        (status, debug)
    })?;
    if binary {
        return Ok((response.into_inner().to_vec(), "application/proto"));
    }
    let reply = DynamicMessage::decode(method.reply.descriptor().clone(), response.into_inner())
        .map_err(|e| plain(Status::internal(format!("the reply does not encode: {e}"))))?;
    let json =
        serde_json::to_vec(&reply).map_err(|e| plain(Status::internal(format!("the reply is not JSON: {e}"))))?;
    Ok((json, "application/json"))
}

/// The request's JSON as the message's wire bytes.
fn from_json(method: &Method, body: &[u8]) -> Result<Bytes, Status> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let message = DynamicMessage::deserialize(method.input.clone(), &mut deserializer)
        .and_then(|m| deserializer.end().map(|()| m))
        .map_err(|e| {
            Status::invalid_argument(format!(
                "the body is not a {} in the protobuf JSON mapping: {e}; nothing was published",
                method.input.full_name()
            ))
        })?;
    Ok(message.encode_to_vec().into())
}

/// The BadRequest of a refusal as JSON, for the Connect error's `debug`.
fn violations_debug(status: &Status) -> Option<serde_json::Value> {
    let details = tonic_types::pb::Status::decode(status.details()).ok()?;
    let bad = details.details.iter().find(|a| a.type_url.ends_with("google.rpc.BadRequest"))?;
    let bad = tonic_types::pb::BadRequest::decode(bad.value.as_slice()).ok()?;
    Some(json!({
        "fieldViolations": bad.field_violations.iter().map(|v| json!({
            "field": v.field, "description": v.description, "reason": v.reason
        })).collect::<Vec<_>>()
    }))
}

/// A Connect error: the HTTP status of its code, `{"code", "message", "details"}`.
fn error_response(status: &Status, debug: Option<serde_json::Value>) -> Response {
    let (http, name) = connect_code(status.code());
    let mut details = Vec::new();
    if let Ok(decoded) = tonic_types::pb::Status::decode(status.details()) {
        for any in decoded.details {
            let kind = any.type_url.rsplit('/').next().unwrap_or("").to_string();
            let mut detail = json!({
                "type": kind,
                "value": base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
            });
            if kind == "google.rpc.BadRequest" {
                if let Some(d) = &debug {
                    detail["debug"] = d.clone();
                }
            }
            details.push(detail);
        }
    }
    let body = json!({ "code": name, "message": status.message(), "details": details });
    (http, [(http::header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The Connect protocol's HTTP status and name of a gRPC code.
fn connect_code(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::Ok => (StatusCode::OK, "ok"),
        Code::Cancelled => (StatusCode::REQUEST_TIMEOUT, "canceled"),
        Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "unknown"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
        Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "failed_precondition"),
        Code::Aborted => (StatusCode::CONFLICT, "aborted"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "out_of_range"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
        Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "data_loss"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
    }
}
