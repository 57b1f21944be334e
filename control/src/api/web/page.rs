//! The join page (control/web/): plain HTML, JavaScript and CSS compiled into the binary,
//! no build step and nothing loaded from elsewhere (the Content-Security-Policy says so).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{rest, WebApi};

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const APP_JS: &str = include_str!("../../../web/app.js");
const STYLE_CSS: &str = include_str!("../../../web/style.css");

/// Only this origin: scripts, styles, fetches and the WebSocket (`'self'` covers `ws:` and
/// `wss:` of the same host in CSP level 3).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; media-src 'self' blob:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /m/{id}`: the page; it reads the meeting id from its own path.
pub(super) async fn join_page(State(api): State<WebApi>, Path(id): Path<String>) -> Response {
    let response = match rest::meeting_id(&id) {
        Ok(_) => asset("text/html; charset=utf-8", INDEX_HTML),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{}\n", e.message)).into_response(),
    };
    api.inner.metrics.request("GET /m/{id}", response.status());
    response
}

/// `GET /web/app.js`.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /web/style.css`.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}
