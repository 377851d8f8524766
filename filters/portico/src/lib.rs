//! `portico.wasm`: one module holding every Portico filter. Each plugin entry names its filter
//! with `root_id`, and every entry can share one `vm_id`, so a worker runs one VM for the
//! whole suite while each filter keeps its own place in the HTTP filter chain and its own
//! configuration.
//!
//! [`FILTERS`] is the one list of the filters in the module; scripts, tests and `portico
//! check` derive theirs from it. `portico-stages` ([`portico_host::stages`]) runs several of
//! them in one plugin entry, where no native filter has to sit between them.

#[cfg(feature = "echo")]
pub mod echo;

use portico_host::{entry, Entry};

/// Every filter of the module, by `root_id` (those whose cargo feature is on).
pub static FILTERS: &[Entry] = &[
    #[cfg(feature = "auth")]
    entry::<portico_auth::Auth>(),
    #[cfg(feature = "rate-limit")]
    entry::<portico_rate_limit::RateLimit>(),
    #[cfg(feature = "cache")]
    entry::<portico_cache::Cache>(),
    #[cfg(feature = "body-transform")]
    entry::<portico_body_transform::BodyTransform>(),
    #[cfg(feature = "echo")]
    entry::<echo::Echo<echo::One>>(),
    #[cfg(feature = "echo")]
    entry::<echo::Echo<echo::Twin>>(),
    #[cfg(feature = "header-routing")]
    entry::<portico_header_routing::HeaderRouting>(),
    #[cfg(feature = "stages")]
    portico_host::stages::entry::<Module>(),
];

/// This module, for `portico-stages`: its stages are the other filters of [`FILTERS`].
#[cfg(feature = "stages")]
struct Module;

#[cfg(feature = "stages")]
impl portico_host::stages::Registry for Module {
    fn filters() -> &'static [Entry] {
        FILTERS
    }
}

// The entry point exists only in the .wasm: native builds link this crate into tests.
#[cfg(target_arch = "wasm32")]
portico_host::main!(FILTERS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_ids_are_unique_and_portico_prefixed() {
        let mut ids: Vec<&str> = FILTERS.iter().map(Entry::root_id).collect();
        assert!(ids.iter().all(|id| id.starts_with("portico-")), "{ids:?}");
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), FILTERS.len());
    }
}
