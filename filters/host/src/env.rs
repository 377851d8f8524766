//! What any callback may use besides headers and bodies: the clock, properties, shared data
//! and metrics. [`Env`] is a borrowed handle to the host that offers only these.

use std::time::{SystemTime, UNIX_EPOCH};

use portico_core::shared::{HostError, SetOutcome, Store};

use crate::host::Host;

/// The host services of one callback.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    host: &'a dyn Host,
}

impl<'a> Env<'a> {
    pub(crate) fn new(host: &'a dyn Host) -> Self {
        Self { host }
    }

    pub(crate) fn host(&self) -> &'a dyn Host {
        self.host
    }

    /// The host's wall clock. Envoy always answers; were it ever not to, the Unix epoch
    /// stands in (logged), which every time-based decision treats as "long ago".
    pub fn now(&self) -> SystemTime {
        self.host.now().unwrap_or_else(|e| {
            log::error!("the host clock failed: status {}", e.0);
            UNIX_EPOCH
        })
    }

    /// A property such as `["metadata", "filter_metadata", "portico", "model"]` or
    /// `["source", "address"]`; `Ok(None)` when it does not exist.
    pub fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        self.host.property(path)
    }

    /// Sets filter state `key` (`%FILTER_STATE(wasm.<key>:PLAIN)%` in the access log) now.
    /// For the log callback, which records no effects: the other callbacks use
    /// [`crate::Effects::set_state`].
    pub fn set_state(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        self.host.set_property(&[key], value)
    }

    /// Envoy's shared data, for `portico_core::shared::update`.
    pub fn shared(&self) -> Shared<'a> {
        Shared { host: self.host }
    }
}

/// Shared data as a `portico_core::shared::Store`.
#[derive(Clone, Copy)]
pub struct Shared<'a> {
    host: &'a dyn Host,
}

impl Store for Shared<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        self.host.shared_get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, HostError> {
        self.host.shared_set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{MockHost, Mutation};

    #[test]
    fn filter_state_set_through_the_env_reaches_the_host() {
        let host = MockHost::new();
        let env = Env::new(&host);
        assert_eq!(env.set_state("portico_x", b"7"), Ok(()));
        assert_eq!(env.property(&["portico_x"]), Ok(Some(b"7".to_vec())));
        assert_eq!(
            host.mutations(),
            vec![Mutation::SetProperty(vec!["portico_x".to_owned()], b"7".to_vec())]
        );
    }
}
