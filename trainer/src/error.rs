//! The trainer's error type and its mapping to exit codes and the failure file.

use crate::sagemaker::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Contract(#[from] crate::sagemaker::ContractError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("evaluation: {0}")]
    Eval(#[from] crate::eval::EvalError),
    #[error("data parallelism: {0}")]
    Dist(#[from] crate::dist::DistError),
    /// A setting this build cannot honour (e.g. a method that has not landed yet).
    #[error("{0}")]
    Unsupported(String),
    /// Input is valid but cannot train (e.g. nothing left after filtering).
    #[error("{0}")]
    BadInput(String),
    #[error("training diverged: {0}")]
    Diverged(String),
    #[error("interrupted by a stop signal after step {step}; checkpoint saved in {checkpoint}; run the job again with the same checkpoint directory to resume")]
    Interrupted { step: u64, checkpoint: String },
    #[error("no space left on the job's volume writing {path}: raise volume_gb in the job file (SageMaker's VolumeSizeInGB)")]
    DiskFull { path: String },
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub fn exit_code(&self) -> ExitCode {
        let user = match self {
            TrainError::Spec(_)
            | TrainError::Unsupported(_)
            | TrainError::BadInput(_)
            | TrainError::DiskFull { .. } => true,
            TrainError::Contract(e) => e.is_user_error(),
            TrainError::Data(e) => e.is_user_error(),
            TrainError::Model(e) => e.is_user_error(),
            TrainError::Checkpoint(e) => e.is_user_error(),
            TrainError::Eval(e) => matches!(e, crate::eval::EvalError::Reward(_)),
            TrainError::Interrupted { .. } => return ExitCode::Interrupted,
            TrainError::Diverged(_) | TrainError::Io { .. } | TrainError::Candle(_) | TrainError::Dist(_) => false,
        };
        if user {
            ExitCode::BadInput
        } else {
            ExitCode::Internal
        }
    }

    /// The failure file's first line: what SageMaker shows as FailureReason.
    pub fn reason(&self) -> String {
        let kind = match self.exit_code() {
            ExitCode::BadInput => "Bad input",
            ExitCode::Interrupted => "Interrupted",
            _ => "Internal error",
        };
        format!("{kind}: {}", self.to_string().replace('\n', " "))
    }
}

pub fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| match source.kind() {
        std::io::ErrorKind::StorageFull => TrainError::DiskFull { path: path.display().to_string() },
        _ => TrainError::Io { path: path.display().to_string(), source },
    }
}
