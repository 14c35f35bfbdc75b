//! The one error type of the model: every input problem (a value on the command line, a
//! field of a scenario file, the file itself) names where it is, what is wrong and the
//! fix. The CLI maps it to exit code 2: nothing was changed.

use std::fmt;

/// An input problem, with where it is and its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: Location,
    pub problem: String,
    pub fix: String,
}

/// Where a problem is: nothing (a value on its own); a field (and the step it is in)
/// before the caller turns it into a flag name or a file position; a scenario file; or
/// a position in it (line and column from 1; line 0 when it is about the whole file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The field (a scenario key such as `probability`, `peers`, `nodes`), if known.
    pub field: &'static str,
    /// The index of the step the field is in, if it is in one.
    pub step: Option<usize>,
}

impl Problem {
    /// A problem with a value on its own (a command-line value, or one not yet located in
    /// its file).
    pub fn new(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { at: Location::default(), problem: problem.into(), fix: fix.into() }
    }

    /// A problem at a position of a file (line 0: the file as a whole).
    pub fn located(file: &str, line: usize, column: usize, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        let at = Location { file: file.into(), line, column, ..Location::default() };
        Self { at, problem: problem.into(), fix: fix.into() }
    }

    /// A problem with one field.
    pub fn field(field: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { at: Location { field, ..Location::default() }, problem: problem.into(), fix: fix.into() }
    }

    /// The same problem, in step `step`.
    pub fn in_step(mut self, step: usize) -> Self {
        self.at.step = Some(step);
        self
    }

    /// The same problem, in `file` (its line and column kept).
    pub fn in_file(mut self, file: &str) -> Self {
        self.at.file = file.into();
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Location { file, line, column, .. } = &self.at;
        match (file.is_empty(), *line) {
            (true, _) => write!(f, "{}\n  fix: {}", self.problem, self.fix),
            (false, 0) => write!(f, "{file}: {}\n  fix: {}", self.problem, self.fix),
            (false, _) => write!(f, "{file}:{line}:{column}: {}\n  fix: {}", self.problem, self.fix),
        }
    }
}

impl std::error::Error for Problem {}
