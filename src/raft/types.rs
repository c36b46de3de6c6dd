//! The openraft types, kept under their old path: they live in [`crate::types`].

pub use crate::types::*;
