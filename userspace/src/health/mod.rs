//! Health checks (stub).
