//! Errors callers branch on. Everything else travels as `anyhow::Error` with context.

use std::fmt;
use std::path::PathBuf;

/// Exit codes of the CLI contract (DESIGN.md §9).
pub const EXIT_OK: i32 = 0;
pub const EXIT_NODE_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
/// Stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// A problem with the project (ttv.yaml, references, environment) found before any work starts.
/// Always exit code 2, and always says where and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectError {
    /// The file the problem is in (ttv.yaml, a reference image, ...), as the user would type it.
    pub file: PathBuf,
    /// 1-based line in `file`, where it applies.
    pub line: Option<usize>,
    /// One sentence: what is wrong.
    pub message: String,
    /// One sentence: what to do about it.
    pub help: Option<String>,
}

impl ProjectError {
    pub fn new(file: impl Into<PathBuf>, line: Option<usize>, message: impl Into<String>) -> Self {
        ProjectError {
            file: file.into(),
            line,
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for ProjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProjectError {}

/// Several project errors found in one pass: the user fixes them all at once.
#[derive(Debug, Clone)]
pub struct ProjectErrors(pub Vec<ProjectError>);

impl fmt::Display for ProjectErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProjectErrors {}

impl From<ProjectError> for ProjectErrors {
    fn from(e: ProjectError) -> Self {
        ProjectErrors(vec![e])
    }
}

/// Usage errors (bad target name, bad flag combination): exit code 2.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    pub message: String,
}

impl UsageError {
    pub fn new(message: impl Into<String>) -> Self {
        UsageError {
            message: message.into(),
        }
    }
}

/// Maps an error that reached the top to the exit code of the CLI contract.
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<ProjectError>().is_some()
        || err.downcast_ref::<ProjectErrors>().is_some()
        || err.downcast_ref::<UsageError>().is_some()
    {
        EXIT_USAGE
    } else {
        EXIT_NODE_FAILED
    }
}
