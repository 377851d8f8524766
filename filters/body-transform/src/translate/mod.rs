//! Translation between the OpenAI Chat Completions API and the Anthropic Messages API.

pub mod request;
pub mod response;
pub mod stream;

/// A request field one API has and the other cannot express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslatable {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Untranslatable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.field, self.reason)
    }
}

#[cfg(test)]
mod tests;
