//! The container lifecycle against the fake task runtime.
