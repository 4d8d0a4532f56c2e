//! The `Allow` header of 405 answers (RFC 9110 §15.5.6: a 405 must list the methods the
//! resource supports), taken from the OpenAPI document so it cannot drift from the routes.

use std::sync::Arc;

use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, StatusCode},
};

/// Path templates and the methods each one serves, as ready `Allow` values.
#[derive(Debug, Default)]
pub struct AllowedMethods {
    routes: Vec<(Vec<Segment>, HeaderValue)>,
}

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
        let pattern = segments(template)
            .map(|segment| {
                if segment.starts_with('{') && segment.ends_with('}') {
                    Segment::Parameter
                } else {
                    Segment::Literal(segment.to_owned())
                }
            })
            .collect();
        self.routes.push((pattern, methods));
    }

    /// The methods served at `path`, as an `Allow` value.
    pub fn for_path(&self, path: &str) -> Option<&HeaderValue> {
        let wanted: Vec<&str> = segments(path).collect();
        self.routes.iter().find_map(|(pattern, methods)| {
            let matches = pattern.len() == wanted.len()
                && pattern
                    .iter()
                    .zip(&wanted)
                    .all(|(segment, part)| match segment {
                        Segment::Parameter => true,
                        Segment::Literal(literal) => literal == part,
                    });
            matches.then_some(methods)
        })
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
}
