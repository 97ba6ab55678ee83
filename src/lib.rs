//! imgc: a declarative, reproducible, multi-platform OCI image composer.
//!
//! Data flows one way: [`spec`] → [`plan`] → [`layers`] → [`layout`]. The
//! [`build`] module drives that flow; the `imgc` binary's `cli` module is the
//! only place that prints or reads the process environment.

pub mod base;
pub mod budget;
pub mod build;
pub mod cache;
pub mod fingerprint;
pub mod fsx;
pub mod inspect;
pub mod layers;
pub mod layout;
pub mod oci;
pub mod plan;
pub mod progress;
pub mod registry;
pub mod shared_cache;
pub mod sources;
pub mod spec;

pub use build::{build, BuildOptions, BuildOutput, Error};
