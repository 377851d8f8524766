//! What routing does to a request, decided without the host: the headers this filter owns
//! removed, the decision, and the request shaped for the chosen backend (its credential
//! injected, its headers, authority, path and API format, the variant and flags, the cluster
//! header), recorded as effects. The shell only reads the request and the lifted body fields
//! and hands them here.

use portico_core::contract::{header, state};
use portico_core::request::RequestSource;
use portico_core::response::{ClientApi, ErrorResponse, ErrorType};
use portico_host::Effects;

use crate::analytics::Labels;
use crate::config::{self, Backend, Config};
use crate::decide::{self, Decision, Inputs, Routed};

/// What `json_to_metadata` lifted from the body into dynamic metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifted<'a> {
    pub model: Option<&'a str>,
    /// The body was not JSON.
    pub json_error: bool,
}

/// What the body callback does with the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyPhase {
    /// Not a model route: the body passes untouched.
    Pass,
    /// A model route: read the whole body strictly and, with `Some`, write this upstream
    /// model into it.
    Check(Option<String>),
}

/// A routed request: what the later callbacks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub labels: Labels,
    /// Headers echoed on the response.
    pub echo: Vec<(&'static str, String)>,
    pub body: BodyPhase,
}

/// The request headers this filter owns: a client never chooses a cluster, a backend format,
/// a variant or flags.
pub fn owned_headers(config: &Config) -> [&str; 4] {
    [
        config.cluster_header.as_str(),
        header::BACKEND_FORMAT,
        header::VARIANT,
        header::FLAGS,
    ]
}

/// Routes `view`: records the effects on `fx` and answers what the later callbacks need, or
/// `None` when the request is refused (the reply is in `fx`).
pub fn route(config: &Config, view: &dyn RequestSource, lifted: Lifted<'_>, fx: &mut Effects) -> Option<Routing> {
    let api = ClientApi::of_path(view.path());
    for name in owned_headers(config) {
        if view.header(name).is_some() {
            fx.remove_request_header(name.to_owned());
        }
    }
    let inputs = Inputs {
        view,
        model: lifted.model,
        json_error: lifted.json_error,
    };
    let refuse = |fx: &mut Effects, response: &ErrorResponse| {
        fx.refuse_with(response, api, format!("{} {}", view.method(), view.path()));
    };
    let routed = match decide::decide(config, &inputs) {
        Decision::Route(routed) => routed,
        Decision::Reject(response) => {
            refuse(fx, &response);
            return None;
        }
    };
    let Some(backend) = config.backend(routed.backend) else {
        refuse(
            fx,
            &ErrorResponse::new(500, ErrorType::Api, "internal_error", "routing failed"),
        );
        return None;
    };
    Some(shape(config, routed, backend, view, api, lifted.model, fx))
}

/// The backend's own request changes: its headers removed, its credential injected in place of
/// the client's, its headers added, its authority.
pub fn for_backend(backend: &Backend, fx: &mut Effects) {
    for name in &backend.remove_headers {
        fx.remove_request_header(name.clone());
    }
    if let Some((name, value)) = &backend.credential {
        // The client's gateway credential never reaches a provider; the provider's key never
        // reaches the client.
        fx.remove_request_header("authorization");
        fx.remove_request_header("x-api-key");
        fx.set_request_header(name.clone(), value);
    }
    for (name, value) in &backend.add_headers {
        fx.set_request_header(name.clone(), value);
    }
    if let Some(host) = &backend.host_rewrite {
        fx.set_request_header(":authority", host);
    }
}

/// The request shaped for `routed` on `backend`.
fn shape(
    config: &Config,
    routed: Routed,
    backend: &Backend,
    view: &dyn RequestSource,
    api: ClientApi,
    lifted_model: Option<&str>,
    fx: &mut Effects,
) -> Routing {
    for_backend(backend, fx);
    if let Some(path) = &routed.path {
        fx.set_path(path);
        if ClientApi::of_path(path) != api {
            // Envoy's own errors (timeouts, resets) are shaped by the path they see.
            fx.set_state(state::CLIENT_API, api.as_str());
        }
    }
    if let Some(format) = backend.format {
        fx.set_request_header(header::BACKEND_FORMAT, format.as_str());
    }
    let mut echo = Vec::new();
    if let Some(variant) = &routed.variant {
        fx.set_request_header(header::VARIANT, variant);
        echo.push((header::VARIANT, variant.clone()));
    }
    if !routed.flags.is_empty() {
        let flags = routed.flags.join(",");
        fx.set_request_header(header::FLAGS, &flags);
        echo.push((header::FLAGS, flags));
    }
    let route = config.routes.get(routed.route);
    if routed.model.is_some() {
        // The body changes size: Envoy sends it chunked instead.
        fx.remove_request_header("content-length");
    }
    let body = if route.is_some_and(|r| matches!(r.action, config::Action::Models(_))) {
        BodyPhase::Check(routed.model.clone())
    } else {
        BodyPhase::Pass
    };
    fx.set_request_header(config.cluster_header.clone(), &backend.cluster);
    let labels = Labels {
        route: route.map_or_else(String::new, |r| r.name.clone()),
        // Auth's header (it removes any copy a client sent), read without a host call.
        tier: view.header_str(header::TIER).unwrap_or_default().to_owned(),
        backend: backend.name.clone(),
        variant: routed.variant.unwrap_or_default(),
        model: routed
            .model
            .or_else(|| lifted_model.map(str::to_owned))
            .unwrap_or_default(),
    };
    for (key, value) in [
        (state::ROUTE, &labels.route),
        (state::BACKEND, &labels.backend),
        (state::VARIANT, &labels.variant),
        (state::MODEL, &labels.model),
    ] {
        if !value.is_empty() {
            fx.set_state(key, value);
        }
    }
    // Envoy 1.40 re-evaluates the route after a header change by itself; newer versions will
    // not, so say it explicitly.
    fx.clear_route_cache();
    Routing { labels, echo, body }
}

#[cfg(test)]
mod tests;
