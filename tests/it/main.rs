//! The integration tests: one test binary running the real `imgc` against real tools.
mod bad_input;
mod bearer;
mod cli;
mod golden;
mod hostile_base;
mod hostile_context;
mod hostile_output;
mod hostile_registry;
mod hostile_spec;
mod independent;
mod ocispec;
mod proxy;
mod registry;
mod repro;
mod snapshots;
mod support;
mod tls;
