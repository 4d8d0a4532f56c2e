//! The routes the server serves, read from the OpenAPI document so they cannot drift: the
//! `Allow` header of 405 answers (RFC 9110 §15.5.6: a 405 must list the methods the resource
//! supports) and the bounded `route` label of the HTTP metrics.

use std::sync::Arc;

use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, StatusCode},
};

/// Path templates and the methods each one serves, as ready `Allow` values.
#[derive(Debug, Default)]
pub struct AllowedMethods {
    routes: Vec<KnownRoute>,
}

#[derive(Debug)]
struct KnownRoute {
    pattern: Vec<Segment>,
    methods: HeaderValue,
    /// The template as a metric label, every parameter written `{id}`.
    label: String,
}

/// The `route` label of a request whose path matches no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Debug, PartialEq)]
enum Segment {
    Literal(String),
    Parameter,
}

const OPERATION_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

impl AllowedMethods {
    /// Reads the operations of an OpenAPI document whose paths are mounted under `prefix`,
    /// plus the plain routes served beside it.
    pub fn from_spec(spec: &str, prefix: &str, plain_get_routes: &[&str]) -> Self {
        let mut allowed = Self::default();
        let document: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        if let Some(paths) = document.get("paths").and_then(|paths| paths.as_object()) {
            for (template, item) in paths {
                let methods: Vec<String> = OPERATION_METHODS
                    .iter()
                    .filter(|method| item.get(**method).is_some())
                    .map(|method| method.to_ascii_uppercase())
                    .collect();
                allowed.add(&format!("{prefix}{template}"), methods.join(", "));
            }
        }
        for route in plain_get_routes {
            allowed.add(route, "GET".to_owned());
        }
        allowed
    }

    fn add(&mut self, template: &str, methods: String) {
        // method names are always valid header text
        let Ok(methods) = HeaderValue::from_str(&methods) else {
            return;
        };
        let pattern: Vec<Segment> = segments(template)
            .map(|segment| {
                if segment.starts_with('{') && segment.ends_with('}') {
                    Segment::Parameter
                } else {
                    Segment::Literal(segment.to_owned())
                }
            })
            .collect();
        let label: String = pattern
            .iter()
            .map(|segment| match segment {
                Segment::Parameter => "/{id}".to_owned(),
                Segment::Literal(literal) => format!("/{literal}"),
            })
            .collect();
        self.routes.push(KnownRoute {
            pattern,
            methods,
            label,
        });
    }

    /// The route serving `path`: among matching templates, the one with most literal
    /// segments (`/events/batch` before `/events/{id}`).
    fn route(&self, path: &str) -> Option<&KnownRoute> {
        let wanted: Vec<&str> = segments(path).collect();
        self.routes
            .iter()
            .filter(|route| {
                route.pattern.len() == wanted.len()
                    && route
                        .pattern
                        .iter()
                        .zip(&wanted)
                        .all(|(segment, part)| match segment {
                            Segment::Parameter => true,
                            Segment::Literal(literal) => literal == part,
                        })
            })
            .max_by_key(|route| {
                route
                    .pattern
                    .iter()
                    .filter(|segment| matches!(segment, Segment::Literal(_)))
                    .count()
            })
    }

    /// The methods served at `path`, as an `Allow` value.
    pub fn for_path(&self, path: &str) -> Option<&HeaderValue> {
        self.route(path).map(|route| &route.methods)
    }

    /// The `route` label of `path`: its template with every parameter written `{id}`, or
    /// [`UNMATCHED_ROUTE`]. Requests choose their paths; this keeps the label set the size of
    /// the route table.
    pub fn route_label(&self, path: &str) -> &str {
        self.route(path)
            .map_or(UNMATCHED_ROUTE, |route| route.label.as_str())
    }
}

/// The `method` label: a standard method's name, else `other` (a request may invent one).
pub fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|segment| !segment.is_empty())
}

/// Adds `Allow` to every 405 answer whose path is a known route.
pub async fn add_allow_header<E: Endpoint>(
    endpoint: Arc<E>,
    request: Request,
    allowed: Arc<AllowedMethods>,
) -> poem::Result<Response> {
    // a reference-counted copy: every request passes here, few are answered 405
    let uri = request.uri().clone();
    let mut response = endpoint.call(request).await?.into_response();
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(methods) = allowed.for_path(uri.path())
    {
        response
            .headers_mut()
            .insert(poem::http::header::ALLOW, methods.clone());
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed_text<'a>(allowed: &'a AllowedMethods, path: &str) -> Option<&'a str> {
        allowed.for_path(path).map(|value| value.to_str().unwrap())
    }

    #[test]
    fn paths_match_their_templates() {
        let spec = r#"{"paths": {
            "/subscriptions": {"get": {}, "post": {}},
            "/subscriptions/{id}": {"get": {}, "patch": {}, "delete": {}, "parameters": []},
            "/subscriptions/{id}/rotate-secret": {"post": {}}
        }}"#;
        let allowed = AllowedMethods::from_spec(spec, "/api/v1", &["/health"]);
        assert_eq!(
            allowed_text(&allowed, "/api/v1/subscriptions"),
            Some("GET, POST")
        );
        assert_eq!(
            allowed_text(&allowed, "/api/v1/subscriptions/abc"),
            Some("GET, DELETE, PATCH")
        );
        assert_eq!(
            allowed_text(&allowed, "/api/v1/subscriptions/abc/rotate-secret"),
            Some("POST")
        );
        assert_eq!(allowed_text(&allowed, "/health"), Some("GET"));
        assert_eq!(allowed_text(&allowed, "/api/v1/nothing"), None);
    }

    #[test]
    fn route_labels_are_templates_or_unmatched() {
        let spec = r#"{"paths": {
            "/events/{id}": {"get": {}},
            "/events/batch": {"post": {}},
            "/admin/events/{event_id}/attempts": {"get": {}}
        }}"#;
        let routes = AllowedMethods::from_spec(spec, "/api/v1", &["/health"]);
        assert_eq!(
            routes.route_label("/api/v1/events/batch"),
            "/api/v1/events/batch"
        );
        assert_eq!(
            routes.route_label("/api/v1/events/xyz"),
            "/api/v1/events/{id}"
        );
        assert_eq!(
            routes.route_label("/api/v1/admin/events/1/attempts"),
            "/api/v1/admin/events/{id}/attempts"
        );
        assert_eq!(routes.route_label("/health"), "/health");
        assert_eq!(routes.route_label("/health/"), "/health");
        assert_eq!(routes.route_label("/wp-admin/x.php"), UNMATCHED_ROUTE);
        assert_eq!(routes.route_label("/"), UNMATCHED_ROUTE);
        assert_eq!(
            method_label(&poem::http::Method::from_bytes(b"FOO").unwrap()),
            "other"
        );
    }
}
