pub mod config;
pub mod gcra;
pub mod headers;
pub mod plan;
pub mod slots;
pub mod usage;
