//! The launcher's integration tests: one target (one test binary to link, not seven).
//! `common` holds the helpers they share; fixtures live in `launcher/tests/fixtures`.

mod common;

mod cli;
mod deploy;
mod estimate;
mod experiments;
mod local;
mod local_docker;
mod local_e2e;
mod mocked;
mod moto;
mod registry;
