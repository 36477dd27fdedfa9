//! Maglev (stub).
