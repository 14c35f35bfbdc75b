//! Exit codes, in one place: 0 success; 1 the experiment failed or was interrupted
//! (faults reverted); 2 bad input (a model `Problem`) or an environment that cannot do
//! what was asked (a datapath `Error::Unsupported`): nothing was changed.

/// A run that failed or was aborted after it started changing things.
pub const FAILED: i32 = 1;
/// Bad input or an unsuitable environment; nothing was changed.
pub const USAGE: i32 = 2;

/// The exit code of an error that reached `main`.
pub fn code(error: &anyhow::Error) -> i32 {
    let named = error.chain().any(|e| {
        e.downcast_ref::<chaos_model::Problem>().is_some() || e.downcast_ref::<chaos_datapath::Error>().is_some()
    });
    if named {
        USAGE
    } else {
        FAILED
    }
}
