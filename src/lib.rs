//! imgc: a declarative, reproducible, multi-platform OCI image composer.
//!
//! Data flows one way: [`spec`] → [`plan`] → [`layers`] → [`layout`]. The
//! [`build`] module drives that flow; the `imgc` binary's `cli` module is the
//! only place that prints or reads the process environment.

pub mod oci;
pub mod spec;
pub mod base;
pub mod progress;
pub mod layers;
pub mod plan;
pub mod build;
pub mod layout;

pub use build::{build, BuildOutput, Error};
