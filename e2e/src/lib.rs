//! End-to-end harness: starts a real crustd and hands tests a CRI client.
