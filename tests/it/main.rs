//! The integration tests: one test binary running the real `imgc` against real tools.
mod bad_input;
mod bearer;
mod cli;
mod golden;
mod independent;
mod ocispec;
mod proxy;
mod registry;
mod repro;
mod snapshots;
mod support;
mod tls;
