//! The body-transform filter's configuration parser (also `portico check`'s), and the request
//! after the NUL byte put through the matching rule's body operations and translation, as the
//! filter does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_body_transform::config::Config;
use portico_body_transform::translate::request::{anthropic_to_openai, openai_to_anthropic};
use portico_body_transform::{direction, ops, translated_path, Direction};
use portico_core::contract::{header, ApiFormat};
use portico_core::request::RequestSource;
use portico_fuzz::{check_config_errors, config_and_request};

fuzz_target!(|data: &[u8]| {
    let (config, (view, body)) = config_and_request(data);
    let config = match Config::from_bytes(config) {
        Ok(config) => config,
        Err(errors) => return check_config_errors(&errors),
    };
    let Some(found) = config.routes.find(&view) else {
        return;
    };
    let rule = found.rule;
    let backend = view.header(header::BACKEND_FORMAT).and_then(ApiFormat::parse);
    let way = direction(rule, view.path(), backend);
    if let Some(way) = way {
        translated_path(view.path_and_query(), way);
    }
    let Ok(mut value) = serde_json::from_slice(body) else {
        return;
    };
    for side in [&rule.request, &rule.response] {
        ops::apply(&side.body, &mut value, |name| view.header_str(name).map(str::to_owned));
    }
    let translated = match way {
        Some(Direction::OpenAiToAnthropic) => openai_to_anthropic(&value, config.default_max_tokens),
        Some(Direction::AnthropicToOpenAi) => anthropic_to_openai(&value),
        None => return,
    };
    if let Err(e) = translated {
        assert!(!e.code().is_empty() && !e.reason.is_empty());
    }
});
