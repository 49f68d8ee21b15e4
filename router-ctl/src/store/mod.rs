//! Desired state in SQLite (`<state-dir>/router.db`): versioned migrations, one transaction per
//! change, IP allocation that can never hand out an address twice.
