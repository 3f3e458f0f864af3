//! oxtune launcher: estimate, price, submit, follow, stop and locally run SageMaker
//! fine-tuning jobs for the oxtune trainer. The `oxtune` binary is a thin layer over this
//! library (see [`cli`]).

pub mod aws;
pub mod calibration;
pub mod catalogue;
pub mod cli;
pub mod clock;
pub mod deploy;
pub mod error;
pub mod estimate;
pub mod format;
pub mod jobfile;
pub mod jobs;
pub mod limits;
pub mod local;
pub mod plan;
pub mod prepare;
pub mod prices;
pub mod redact;
pub mod registry;
pub mod request;
pub mod tokens;
pub mod upload;

pub use error::Error;
