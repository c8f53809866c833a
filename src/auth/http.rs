//! `POST /api/v1/auth/{register,login,refresh}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::routing::post;
use std::net::IpAddr;

use super::{AuthService, Registration, TokenPair};
use crate::api_error::ApiError;
use crate::config::Network;
use crate::metrics::Metrics;

/// What the auth endpoints need of a node, and nothing more.
#[derive(Clone)]
pub struct AuthApi {
    pub auth: Arc<AuthService>,
    pub metrics: Arc<Metrics>,
    /// `http.trusted_proxies`: whose forwarding headers name the client.
    pub trusted_proxies: Arc<[Network]>,
    /// Told when a refresh replay revokes a family, to close its sessions.
    pub revocations: Arc<dyn Revocations>,
}

/// Whoever closes the sessions of a revoked refresh-token family (the
/// node's fan-out, on every node).
pub trait Revocations: Send + Sync {
    fn family_revoked(&self, user_id: &str, family: &str);
}

/// The client's address (see [`crate::peer`]), for the throttle.
struct ClientIp(IpAddr);

impl<S> FromRequestParts<S> for ClientIp
where
    AuthApi: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let api = AuthApi::from_ref(state);
        Ok(ClientIp(crate::peer::of_request(
            parts,
            &api.trusted_proxies,
        )))
    }
}

/// Holds a throttled request for `auth.throttle_delay` before its 429.
async fn tarpit(state: &AuthApi, e: &super::AuthError) {
    if matches!(e, super::AuthError::Throttled(_)) {
        tokio::time::sleep(state.auth.throttle_delay()).await;
    }
}

/// Counts and logs a refused password request.
fn refused(state: &AuthApi, op: &'static str, ip: IpAddr, e: &super::AuthError) {
    if let super::AuthError::Throttled(t) = e {
        state.metrics.auth(op, t.as_str());
        tracing::info!(
            event = "auth_throttled",
            op,
            client = %ip,
            cause = t.as_str(),
            retry_after_s = t.retry_after().as_secs_f64(),
            "password request refused before hashing"
        );
    } else {
        // 503s (hash queue full, store down) apart from the client's own
        // mistakes: operators alert on the first, not the second.
        let outcome = match e {
            super::AuthError::Busy => "busy",
            super::AuthError::Store(_) | super::AuthError::Hashing => "unavailable",
            _ => "refused",
        };
        state.metrics.auth(op, outcome);
        tracing::info!(event = if op == "login" { "login_failed" } else { "register_failed" }, client = %ip, cause = %e, "{op} refused");
    }
}

/// The three auth routes, for any state that can lend an [`AuthApi`].
pub fn router<S>() -> Router<S>
where
    AuthApi: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh))
}

async fn register(
    State(state): State<AuthApi>,
    ClientIp(ip): ClientIp,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let reg: Registration = serde_json::from_slice(&body).map_err(|_| {
        ApiError::Unprocessable(
            "expected JSON {email, password, username?, disability_type?}".into(),
        )
    })?;
    let user_id = match state.auth.register(reg, ip).await {
        Ok(id) => id,
        Err(e) => {
            refused(&state, "register", ip, &e);
            tarpit(&state, &e).await;
            return Err(e.into());
        }
    };
    state.metrics.auth("register", "ok");
    tracing::info!(event = "registered", user_id = %user_id, "account created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "user_id": user_id })),
    ))
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// Accepts the OAuth2 password form (`application/x-www-form-urlencoded`,
/// as FastAPI's `OAuth2PasswordRequestForm` and the reference's clients
/// send it) and the same fields as JSON.
async fn login(
    State(state): State<AuthApi>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenPair>, ApiError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form: LoginForm = if is_form {
        serde_urlencoded_form(&body)?
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| ApiError::Unprocessable("expected {username, password}".into()))?
    };
    match state.auth.login(&form.username, form.password, ip).await {
        Ok(pair) => {
            state.metrics.auth("login", "ok");
            Ok(Json(pair))
        }
        Err(e) => {
            refused(&state, "login", ip, &e);
            tarpit(&state, &e).await;
            Err(e.into())
        }
    }
}

fn serde_urlencoded_form(body: &[u8]) -> Result<LoginForm, ApiError> {
    serde_urlencoded::from_bytes::<LoginForm>(body)
        .map_err(|_| ApiError::Unprocessable("expected form fields username and password".into()))
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(State(state): State<AuthApi>, body: Bytes) -> Result<Json<TokenPair>, ApiError> {
    let req: RefreshBody = serde_json::from_slice(&body)
        .map_err(|_| ApiError::Unprocessable("expected {refresh_token}".into()))?;
    match state.auth.refresh(&req.refresh_token).await {
        Ok(pair) => {
            state.metrics.auth("refresh", "ok");
            Ok(Json(pair))
        }
        Err(e) => {
            if let super::AuthError::Revoked { user_id, family } = &e {
                state.revocations.family_revoked(user_id, family);
            }
            state.metrics.auth("refresh", "refused");
            tracing::info!(event = "refresh_failed", cause = %e, "refresh refused");
            Err(e.into())
        }
    }
}
