//! The trainer's integration tests: one target, so the workspace links one test binary for them
//! (each module was its own target before; every target links the whole dependency tree again).
//! `common` holds the fixture helpers: tiny models written by code, `/opt/ml` trees, running `train`.

mod common;

mod container;
mod contract;
mod data_batch;
mod data_parallel;
mod data_read;
mod data_tokenize;
mod evaluation;
mod gpu_path;
mod grpo;
mod lora_grad;
mod parity;
mod qlora;
mod ranks;
mod readme;
mod resume;
mod rouge;
mod t5;
mod t5_job;
mod tracking;
mod try_model;
